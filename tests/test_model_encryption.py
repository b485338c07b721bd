"""Model weights at rest: encrypted bundles round-trip, and the runner serves an encrypted, signed bundle from
memory only, after checking its manifest, while tampered, unsigned or keyless bundles are refused."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dsguard.config import RunnerConfig
from dsguard.crypto.errors import EnvelopeError, ManifestError
from dsguard.crypto.keys import LocalSigner, open_wrapper
from dsguard.crypto.manifest import MANIFEST_NAME, TrustedKeys, sign_bundle, verify_bundle
from dsguard.crypto.weights import decrypt_bundle, encrypt_bundle, load_encrypted_graph
from dsguard.runner.api import create_app
from dsguard.runner.bundle import open_bundle
from dsguard.runner.engine import Engine
from dsguard.runner.session import DecoderSession
from dsguard.runner.tiny import write_bundle

from .conftest import run_uvicorn

PROMPT = [1, 2, 3, 4, 5]
DTYPES = ("fp32", "q4")
NEEDLE_BYTES = 48
SCAN_LIMIT = 256 << 20


@dataclasses.dataclass(frozen=True)
class Sealed:
    """A signed, encrypted tiny bundle, its keys, and what its plaintext looked like before it was deleted."""

    directory: Path
    kek_url: str
    public_key: Path
    signer: LocalSigner
    plaintext_logits: dict[str, npt.NDArray[np.float32]]
    needles: tuple[bytes, ...]

    def policy(self, **changes: object) -> RunnerConfig:
        settings: dict[str, object] = {"model": str(self.directory), "manifest_public_key": self.public_key,
                                       "require_manifest": True, "decryption_key": self.kek_url, **changes}
        return RunnerConfig(**settings)  # type: ignore[arg-type]

    def copy(self, target: Path) -> Path:
        return Path(shutil.copytree(self.directory, target))


def needles_of(path: Path) -> list[bytes]:
    """Byte windows of the plaintext that the encrypted file and any leak would be searched for."""
    data = path.read_bytes()
    middle = len(data) // 2
    return [data[middle:middle + NEEDLE_BYTES], data[-NEEDLE_BYTES - 64:-64]]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    root = tmp_path_factory.mktemp("sealed")
    plain = write_bundle(root / "plain", dtypes=DTYPES)
    logits = {dtype: DecoderSession(open_bundle(plain, dtype)).prefill(PROMPT)[0].copy() for dtype in DTYPES}
    needles = [needle for name in ("model.onnx", "model.onnx_data", "model_q4.onnx")
               for needle in needles_of(plain / "onnx" / name)]
    (root / "kek.bin").write_bytes(os.urandom(32))
    key = ed25519.Ed25519PrivateKey.generate()
    (root / "signer.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    signer = LocalSigner(key)
    kek_url = f"file:{root / 'kek.bin'}"
    encrypt_bundle(plain, open_wrapper(kek_url), root / "bundle")
    sign_bundle(root / "bundle", signer)
    shutil.rmtree(plain)
    return Sealed(root / "bundle", kek_url, root / "signer.pub.pem", signer, logits, tuple(needles))


def test_encryption_leaves_no_readable_weights_in_the_bundle(sealed: Sealed) -> None:
    names = sorted(p.relative_to(sealed.directory).as_posix() for p in sealed.directory.rglob("*") if p.is_file())
    assert [name for name in names if name.startswith("onnx/")] == [
        "onnx/model.onnx.dsenc", "onnx/model.onnx_data.dsenc", "onnx/model_q4.onnx.dsenc"]
    assert {"config.json", "tokenizer.json", MANIFEST_NAME} <= set(names)
    assert leaks(sealed.directory, sealed.needles) == []


def test_decrypting_restores_the_weights_byte_for_byte(sealed: Sealed, tmp_path: Path) -> None:
    decrypt_bundle(sealed.directory, open_wrapper(sealed.kek_url), tmp_path / "restored")
    for dtype in DTYPES:
        logits, _ = DecoderSession(open_bundle(tmp_path / "restored", dtype)).prefill(PROMPT)
        assert np.array_equal(logits, sealed.plaintext_logits[dtype])


def test_in_place_encryption_removes_the_plaintext_and_the_stale_manifest(sealed: Sealed, tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", dtypes=("q4",))
    sign_bundle(bundle, sealed.signer)
    encrypt_bundle(bundle, open_wrapper(sealed.kek_url))
    assert not (bundle / "onnx" / "model_q4.onnx").exists()
    assert not (bundle / MANIFEST_NAME).exists()
    assert (bundle / "onnx" / "model_q4.onnx.dsenc").is_file()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "as-exported"])
def test_runner_loads_the_encrypted_bundle_into_memory(sealed: Sealed, dtype: str, fuse: bool) -> None:
    session = DecoderSession(open_bundle(sealed.directory, dtype, policy=sealed.policy()), fuse=fuse)
    logits, _ = session.prefill(PROMPT)
    np.testing.assert_allclose(logits, sealed.plaintext_logits[dtype], rtol=1e-4, atol=1e-4)


def test_runner_serves_an_encrypted_signed_bundle_without_writing_plaintext(sealed: Sealed) -> None:
    roots = outermost([Path(tempfile.gettempdir()), sealed.directory.parent.parent])
    before = snapshot(roots)
    bundle = open_bundle(sealed.directory, "q4", policy=sealed.policy())
    engine = Engine(DecoderSession(bundle), bundle.tokenizer, model_id="sealed-tiny", max_concurrency=1,
                    max_queue=4)
    with run_uvicorn(create_app(engine, owns_engine=True)) as url:
        response = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "sealed-tiny", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0
    written = [path for path, stamp in snapshot(roots).items() if before.get(path) != stamp]
    assert leaks_in(written, sealed.needles) == []


def test_the_leak_search_finds_plaintext_weights(sealed: Sealed, tmp_path: Path) -> None:
    decrypt_bundle(sealed.directory, open_wrapper(sealed.kek_url), tmp_path / "restored")
    assert leaks(tmp_path / "restored", sealed.needles) == sorted([
        tmp_path / "restored" / "onnx" / "model.onnx", tmp_path / "restored" / "onnx" / "model.onnx_data",
        tmp_path / "restored" / "onnx" / "model_q4.onnx"])


def test_a_tampered_encrypted_graph_is_refused_before_loading(sealed: Sealed, tmp_path: Path) -> None:
    bundle = sealed.copy(tmp_path / "bundle")
    target = bundle / "onnx" / "model_q4.onnx.dsenc"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x04
    target.write_bytes(data)
    with pytest.raises(ManifestError) as caught:
        open_bundle(bundle, "q4", policy=sealed.policy(model=str(bundle)))
    assert caught.value.reason == "file-changed"
    assert str(caught.value) == f"{target}: does not match its signed SHA-256 digest"


def test_a_tampered_encrypted_graph_is_refused_by_decryption_without_a_manifest_key(sealed: Sealed,
                                                                                      tmp_path: Path) -> None:
    bundle = sealed.copy(tmp_path / "bundle")
    target = bundle / "onnx" / "model.onnx_data.dsenc"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0x01
    target.write_bytes(data)
    with pytest.raises(EnvelopeError) as caught:
        open_bundle(bundle, "fp32", policy=sealed.policy(manifest_public_key=None, require_manifest=False))
    assert caught.value.reason == "tampered" and caught.value.file == str(target)


def test_an_encrypted_file_the_verified_manifest_does_not_list_is_refused(sealed: Sealed, tmp_path: Path) -> None:
    bundle = sealed.copy(tmp_path / "bundle")
    verified = verify_bundle(bundle, TrustedKeys.from_file(sealed.public_key))
    data = "onnx/model.onnx_data.dsenc"
    unlisted = dataclasses.replace(verified, files={k: v for k, v in verified.files.items() if k != data})
    with pytest.raises(ManifestError) as caught:
        load_encrypted_graph(bundle, bundle / "onnx" / "model.onnx", sealed.policy(model=str(bundle)), unlisted)
    assert (caught.value.reason, caught.value.file) == ("file-extra", str(bundle / data))
    assert data in str(caught.value)


def test_a_swapped_tokenizer_is_refused_although_it_is_not_encrypted(sealed: Sealed, tmp_path: Path) -> None:
    bundle = sealed.copy(tmp_path / "bundle")
    (bundle / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ManifestError, match=r"tokenizer_config\.json: does not match its signed SHA-256 digest"):
        open_bundle(bundle, "q4", policy=sealed.policy(model=str(bundle)))


def test_an_unsigned_bundle_is_refused_when_a_manifest_key_is_set(sealed: Sealed, tmp_path: Path) -> None:
    bundle = sealed.copy(tmp_path / "bundle")
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError) as caught:
        open_bundle(bundle, "q4", policy=sealed.policy(model=str(bundle)))
    assert caught.value.reason == "unsigned"


def test_require_manifest_without_a_public_key_is_refused(sealed: Sealed) -> None:
    with pytest.raises(ManifestError, match="manifest_public_key is not"):
        open_bundle(sealed.directory, "q4", policy=sealed.policy(manifest_public_key=None))


def test_an_encrypted_bundle_without_a_decryption_key_names_the_setting(sealed: Sealed) -> None:
    with pytest.raises(EnvelopeError, match=r"set \[runner\] decryption_key") as caught:
        open_bundle(sealed.directory, "q4", policy=sealed.policy(decryption_key=None))
    assert caught.value.file == str(sealed.directory / "onnx" / "model_q4.onnx.dsenc")


def test_an_encrypted_bundle_with_another_kek_is_refused(sealed: Sealed, tmp_path: Path) -> None:
    (tmp_path / "other.bin").write_bytes(os.urandom(32))
    with pytest.raises(EnvelopeError) as caught:
        open_bundle(sealed.directory, "q4", policy=sealed.policy(decryption_key=f"file:{tmp_path / 'other.bin'}"))
    assert caught.value.reason == "wrong-key"


def outermost(paths: list[Path]) -> list[Path]:
    resolved = {path.resolve() for path in paths}
    return sorted(path for path in resolved if not any(other != path and path.is_relative_to(other)
                                                       for other in resolved))


def snapshot(roots: list[Path]) -> dict[Path, tuple[int, int]]:
    """Size and modification time of every regular file under ``roots``."""
    found: dict[Path, tuple[int, int]] = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                try:
                    stat = path.lstat()
                except OSError:
                    continue
                found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def leaks(root: Path, needles: tuple[bytes, ...]) -> list[Path]:
    return leaks_in([path for path in root.rglob("*") if path.is_file()], needles)


def leaks_in(paths: list[Path], needles: tuple[bytes, ...]) -> list[Path]:
    """The files holding any of ``needles``, read in overlapping blocks."""
    return sorted(path for path in paths if _holds(path, needles))


def _holds(path: Path, needles: tuple[bytes, ...]) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > SCAN_LIMIT:
            return False
        with path.open("rb") as reader:
            tail = b""
            while block := reader.read(1 << 20):
                window = tail + block
                if any(needle in window for needle in needles):
                    return True
                tail = block[-NEEDLE_BYTES:]
    except OSError:
        return False
    return False
