"""The core install serves the embedded default without any optional extra installed."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("redis", "pkcs11", "onnxruntime_genai", "opentelemetry.sdk", "prometheus_client", "sklearn", "skl2onnx")

PROGRAM = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # import fails as if the package were absent
from dsguard.config import default_config
from dsguard.guard import Guard
guard = Guard(default_config())
print(sorted(check.name for check in guard.pipeline.checks))
"""


def test_embedded_default_builds_its_guard_without_optional_packages() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "policy" in result.stdout
