"""What the guard shares with the checks it builds (storage today; HTTP clients, metrics later)."""

from __future__ import annotations

import dataclasses

from .config import Config
from .storage import Storage


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    storage: Storage
