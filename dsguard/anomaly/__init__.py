"""Behaviour anomaly detection: per-caller features, online baselines, a score with reasons.

- :mod:`.features`: what one call contributes, and a caller's window turned into feature values;
- :mod:`.baseline`: robust exponentially weighted baselines, for the population and per caller;
- :mod:`.scorer`: deviations from both baselines combined into a score (or a trained model's);
- :mod:`.model`: an IsolationForest trained offline, exported to ONNX, run on onnxruntime;
- :mod:`.store` / :mod:`.redis`: state in this process or shared by replicas through Redis.

The checks that act on scores are in :mod:`dsguard.checks.anomaly` (``[anomaly]``).
"""
