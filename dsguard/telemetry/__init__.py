"""Metrics, traces, health endpoints and the Server-Timing header of ``[telemetry]``.

- :mod:`.provider`: the OpenTelemetry SDK meter and tracer providers, Prometheus registry, OTLP.
- :mod:`.instruments`: dsguard's own metrics (and the audit log's counters).
- :mod:`.observer`: the after-response hook recording each call, and the endpoints served.
- :mod:`.tracing`: a span per call with a child span per check, from the checks' timings.
- :mod:`.health`: ``/healthz`` and ``/readyz``, and the readiness probes components register.
- :mod:`.timing`: the pipeline stamping the call's start and adding ``Server-Timing``.

The SDK and the Prometheus client are needed only when ``[telemetry]`` is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Config
from ..errors import ConfigError
from .health import Readiness

if TYPE_CHECKING:
    from .provider import TelemetryProviders

SDK_PACKAGES = ("opentelemetry", "prometheus_client")


def open_telemetry(config: Config) -> TelemetryProviders | None:
    """The providers of ``[telemetry]`` (``None`` without it); a missing SDK is a configuration error."""
    if config.telemetry is None:
        return None
    try:
        from .provider import open_providers
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in SDK_PACKAGES:
            raise
        raise ConfigError("needs opentelemetry-sdk, opentelemetry-exporter-prometheus and "
                          "prometheus-client (pip install 'dsguard[telemetry]')", file=config.source,
                          line=config.line_of("telemetry"), key="[telemetry]") from None
    return open_providers(config)


__all__ = ["Readiness", "open_telemetry"]
