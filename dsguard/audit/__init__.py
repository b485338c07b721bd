"""The tamper-evident audit log and the compliance reports drawn from it.

- :mod:`.record`: what is recorded of each call (prompts only as SHA-256 and length).
- :mod:`.chain`: the hash chain over canonical JSON; :mod:`.signing`: signed checkpoints.
- :mod:`.writer`: the bounded queue and the thread appending JSON lines; :mod:`.segment`: the files;
  :mod:`.receipt`: the writer's answer to a call waiting on its record (``durability = "written"``).
- :mod:`.log`: the guard's hooks; :mod:`.verify`: ``dsguard audit verify``.
- :mod:`.controls`, :mod:`.standards`, :mod:`.report`: ``dsguard audit report``.
"""

from __future__ import annotations

from ..errors import DSGuardError


class AuditError(DSGuardError):
    """The audit log cannot be opened: another writer holds it, it is not writable, or its end is unreadable."""


__all__ = ["AuditError"]
