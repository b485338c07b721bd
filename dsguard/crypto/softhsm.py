"""Development tokens in SoftHSM2 (Debian's ``softhsm2``): a token directory of its own, never the system one."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from dsguard.crypto.errors import KeyProviderError
from dsguard.crypto.rfc7512 import MODULE_DIRS

MODULE_NAME = "libsofthsm2.so"


def softhsm_module() -> str | None:
    """Path of SoftHSM2's PKCS#11 module, or None when it is not installed."""
    for directory in MODULE_DIRS:
        path = Path(directory) / MODULE_NAME
        if path.is_file():
            return str(path)
    return None


@dataclasses.dataclass(frozen=True)
class SoftHSMToken:
    """An initialised token: its ``SOFTHSM2_CONF`` file, module and label."""

    config: Path
    module: str
    label: str

    def url(self, label: str, *, pin_source: str) -> str:
        """The key URL of the object ``label`` in this token."""
        return (f"pkcs11:token={quote(self.label, safe='')};object={quote(label, safe='')}"
                f"?module-path={quote(self.module, safe='/')}&pin-source={quote(pin_source, safe=':/')}")


def create_token(directory: Path, label: str, pin: str, so_pin: str | None = None) -> SoftHSMToken:
    """Initialise a token labelled ``label`` under ``directory`` (configuration and token files both there).

    Use it by setting ``SOFTHSM2_CONF`` to the returned ``config`` before the module is first loaded
    (or call :func:`dsguard.crypto.pkcs11.close_all` so that the next use reads it)."""
    module = softhsm_module()
    utility = shutil.which("softhsm2-util")
    if module is None or utility is None:
        raise KeyProviderError("SoftHSM2 is not installed (Debian package softhsm2)", reason="unavailable")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    config = directory / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tokens.resolve()}\nobjectstore.backend = file\nlog.level = ERROR\n")
    result = subprocess.run([utility, "--init-token", "--free", "--label", label, "--pin", pin,
                             "--so-pin", so_pin or pin], env={**os.environ, "SOFTHSM2_CONF": str(config)},
                            capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise KeyProviderError(f"softhsm2-util could not initialise the token {label!r}: "
                               f"{result.stderr.strip() or result.stdout.strip()}", reason="unavailable")
    return SoftHSMToken(config.resolve(), module, label)
