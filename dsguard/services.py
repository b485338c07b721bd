"""What the guard shares with the checks and components it builds: storage, readiness, telemetry."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .config import Config
from .storage import Storage
from .telemetry.health import Readiness

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .telemetry.provider import TelemetryProviders


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    storage: Storage
    readiness: Readiness = dataclasses.field(default_factory=Readiness)
    """Probes ``/readyz`` runs: ``services.readiness.register("model", probe)``."""
    telemetry: TelemetryProviders | None = None

    @property
    def meter_provider(self) -> MeterProvider:
        """The guard's meter provider with ``[telemetry]``, else OpenTelemetry's global one."""
        if self.telemetry is not None:
            return self.telemetry.meter_provider
        from opentelemetry.metrics import get_meter_provider

        return get_meter_provider()

    @property
    def tracer_provider(self) -> TracerProvider:
        """The guard's tracer provider with ``[telemetry]``, else OpenTelemetry's global one."""
        if self.telemetry is not None:
            return self.telemetry.tracer_provider
        from opentelemetry.trace import get_tracer_provider

        return get_tracer_provider()
