"""Model weights at rest: envelope encryption and decryption throughput, and the memory they hold.

A file of ``--size`` MiB of random bytes (the shape of an ONNX external-data file) is encrypted
with ``dsguard.crypto.envelope`` under a ``file:`` key-encryption key (AES-256-GCM, a fresh data
key per file, 1 MiB chunks), decrypted back to a file, and decrypted into memory, as the runner
does. Printed: MB/s for each, the Python heap peak while streaming (tracemalloc), and the same
file copied with ``shutil.copyfile`` as the floor (the disk's own speed).

    python benchmarks/weights.py --size 512 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from _harness import environment, median, positive_int, table

from dsguard.crypto.envelope import decrypt_file, decrypt_to_memory, encrypt_file
from dsguard.crypto.keys import open_wrapper


def timed(action: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``action`` and its largest Python heap peak in MiB."""
    seconds, peaks = [], []
    for _ in range(repeats):
        tracemalloc.start()
        started = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - started)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
        del result
    return median(seconds), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=positive_int, default=256, help="MiB of plaintext (default 256)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    print("\n".join(environment(["cryptography"])))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        kek = root / "kek.bin"
        kek.write_bytes(os.urandom(32))
        wrapper = open_wrapper(f"file:{kek}")
        plain = root / "model.onnx_data"
        with plain.open("wb") as out:
            for _ in range(args.size):
                out.write(os.urandom(2**20))
        sealed, opened, copied = root / "model.onnx_data.dsenc", root / "opened", root / "copied"
        megabytes = args.size * 2**20 / 1e6
        rows = []
        for name, action in (
            ("copy (floor)", lambda: shutil.copyfile(plain, copied)),
            ("encrypt to file", lambda: encrypt_file(plain, sealed, wrapper)),
            ("decrypt to file", lambda: decrypt_file(sealed, opened, wrapper)),
            ("decrypt into memory", lambda: decrypt_to_memory(sealed, wrapper)),
        ):
            seconds, peak = timed(action, args.repeats)
            rows.append((name, f"{megabytes / seconds:.0f}", f"{peak:.1f}"))
        assert opened.read_bytes() == plain.read_bytes(), "round trip changed the file"
    print(f"\n{args.size} MiB, median of {args.repeats}")
    print(table(("operation", "MB/s", "Python heap peak MiB"), rows))


if __name__ == "__main__":
    main()
