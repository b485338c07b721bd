"""The prompt guard's parts: which texts of a request are prompts (:mod:`.messages`), prompt-injection
heuristics (:mod:`.injection`, with :mod:`.normalize`, :mod:`.encodings` and the rules of :mod:`.rules`),
an optional ONNX classifier (:mod:`.classifier`), PII and secret detection (:mod:`.pii`) and response
redaction (:mod:`.stream`). The check that puts them in the request path is :mod:`dsguard.checks.prompt`.
"""
