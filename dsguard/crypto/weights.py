"""Model weights at rest: encrypting a bundle's graphs and external data, and loading them into memory only.

``dsguard model encrypt`` turns each ONNX graph and each external data file it references into
``<name>.dsenc`` (:mod:`dsguard.crypto.envelope`, context = the path inside the bundle); tokenizer and
configuration files stay readable. The runner checks the signed manifest before it reads anything
(:func:`check_manifest`), then decrypts the graph and its external data into memory
(:func:`load_encrypted_graph`): no plaintext weights are ever written to disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import onnx

from dsguard.crypto.envelope import Progress, decrypt_file, decrypt_to_memory, encrypt_file
from dsguard.crypto.errors import EnvelopeError, ManifestError
from dsguard.crypto.keys import Wrapper, open_wrapper
from dsguard.crypto.manifest import MANIFEST_NAME, TrustedKeys, VerifiedManifest, verify_bundle
from dsguard.runner.graph import graph_tensors

ENCRYPTED_SUFFIX = ".dsenc"


class WeightsPolicy(Protocol):
    """What the runner is told about a bundle's protection (``[runner]`` provides these keys)."""

    @property
    def manifest_public_key(self) -> Path | None: ...

    @property
    def require_manifest(self) -> bool: ...

    @property
    def decryption_key(self) -> str | None: ...


class MemoryGraph:
    """A decrypted graph and the external data files it references, held in memory only until a session has
    copied them (:meth:`release`)."""

    def __init__(self, graph: bytes, external: dict[str, bytearray]) -> None:
        self._graph: bytes | None = graph
        self.external = external

    @property
    def graph(self) -> bytes:
        if self._graph is None:
            raise RuntimeError("the decrypted graph was released once its session was built")
        return self._graph

    def model(self) -> onnx.ModelProto:
        """The graph without its external tensors loaded (they stay in ``external``)."""
        return onnx.load_model_from_string(self.graph)

    def add_to(self, options: Any) -> None:
        """Hand the external data files to ONNX Runtime session ``options`` (which copies them at session start)."""
        names = list(self.external)
        options.add_external_initializers_from_files_in_memory(
            names, [self.external[name] for name in names], [len(self.external[name]) for name in names])

    def release(self) -> None:
        """Drop the plaintext: ONNX Runtime holds its own copy once the session exists."""
        self._graph = None
        self.external.clear()


def weight_files(bundle: Path) -> list[str]:
    """Relative paths of every ONNX graph of ``bundle`` and of the external data files the graphs reference."""
    found: set[str] = set()
    for graph in sorted(bundle.rglob("*.onnx")):
        if not graph.is_file() or graph.is_symlink():
            continue
        found.add(graph.relative_to(bundle).as_posix())
        try:
            model = onnx.load(str(graph), load_external_data=False)
        except Exception as error:  # onnx raises DecodeError, OSError and others for a damaged file
            raise EnvelopeError(f"not a readable ONNX model: {error}", reason="format", file=graph) from None
        for location in external_locations(model):
            data = _inside(bundle, graph.parent, location, graph)
            if data.is_file():
                found.add(data.relative_to(bundle).as_posix())
    return sorted(found)


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The ``location`` of every external tensor of ``model``, each once."""
    locations: dict[str, None] = {}
    for tensor in graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations[entry.value] = None
    return list(locations)


def _inside(bundle: Path, folder: Path, location: str, referrer: Path) -> Path:
    pure = PurePosixPath(location)
    target = (folder / location).resolve()
    if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(bundle.resolve()):
        raise EnvelopeError(f"external data location {location!r} leaves the bundle", reason="format",
                            file=referrer)
    return folder / location


def encrypt_bundle(source: Path, wrapper: Wrapper, target: Path | None = None, *,
                   progress: Progress | None = None) -> list[Path]:
    """Encrypt the weights of ``source`` into ``target`` (other files copied as they are), or in place without
    ``target`` (each plaintext file removed once its encrypted copy is complete). The source's manifest no longer
    matches and is dropped: sign the result. Returns the encrypted files."""
    weights = weight_files(source)
    output = _prepare(source, target, skip=weights)
    written = []
    for relative in weights:
        destination = output / (relative + ENCRYPTED_SUFFIX)
        if destination.exists():
            raise EnvelopeError("already exists", reason="format", file=destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        encrypt_file(source / relative, destination, wrapper, context=relative, progress=progress)
        if target is None:
            (source / relative).unlink()
        written.append(destination)
    return written


def decrypt_bundle(source: Path, wrapper: Wrapper, target: Path | None = None, *,
                   progress: Progress | None = None) -> list[Path]:
    """Decrypt every ``*.dsenc`` of ``source`` into ``target`` (other files copied) or in place. Returns the
    decrypted files."""
    encrypted = encrypted_files(source)
    output = _prepare(source, target, skip=encrypted)
    written = []
    for relative in encrypted:
        plain = relative.removesuffix(ENCRYPTED_SUFFIX)
        destination = output / plain
        destination.parent.mkdir(parents=True, exist_ok=True)
        decrypt_file(source / relative, destination, wrapper, context=plain, progress=progress)
        if target is None:
            (source / relative).unlink()
        written.append(destination)
    return written


def encrypted_files(bundle: Path) -> list[str]:
    return [path.relative_to(bundle).as_posix() for path in sorted(bundle.rglob("*" + ENCRYPTED_SUFFIX))
            if path.is_file()]


def total_size(bundle: Path, relatives: list[str]) -> int:
    return sum(os.stat(bundle / relative).st_size for relative in relatives)


def _prepare(source: Path, target: Path | None, *, skip: list[str]) -> Path:
    """The output directory: ``target`` holding copies of the files not in ``skip``, or ``source`` (in place)
    without its now stale manifest."""
    if target is None:
        (source / MANIFEST_NAME).unlink(missing_ok=True)
        return source
    if target.resolve() == source.resolve():
        raise EnvelopeError("the output is the bundle itself; leave the output out to work in place",
                            reason="format", file=target)
    skipped = {*skip, MANIFEST_NAME}
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if path.is_file() and relative not in skipped:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
    target.mkdir(parents=True, exist_ok=True)
    return target


def check_manifest(directory: Path, policy: WeightsPolicy | None) -> VerifiedManifest | None:
    """Verify the bundle against its signed manifest when the policy names a trusted key (before anything else
    of the bundle is read); raises ManifestError naming the file at fault."""
    if policy is None or policy.manifest_public_key is None:
        if policy is not None and policy.require_manifest:
            raise ManifestError("require_manifest is set but manifest_public_key is not: nothing can verify the "
                                "bundle's manifest", reason="unsigned", file=directory)
        return None
    return verify_bundle(directory, TrustedKeys.from_file(policy.manifest_public_key))


def encrypted_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ENCRYPTED_SUFFIX)


def load_encrypted_graph(directory: Path, model_path: Path, policy: WeightsPolicy | None,
                         manifest: VerifiedManifest | None) -> MemoryGraph:
    """Decrypt ``model_path``'s graph and its external data into memory; each encrypted file must be the one the
    verified manifest pinned (when there is one)."""
    sealed = encrypted_path(model_path)
    if policy is None or policy.decryption_key is None:
        raise EnvelopeError("the graph is encrypted; set [runner] decryption_key to the URL of its key-encryption "
                            "key", reason="no-key", file=sealed)
    wrapper = open_wrapper(policy.decryption_key)
    read = _reader(directory, wrapper, manifest)
    graph = bytes(read(sealed))
    model = onnx.load_model_from_string(graph)
    external = {}
    for location in external_locations(model):
        data = _inside(directory, model_path.parent, location, sealed)
        data_sealed = encrypted_path(data)
        if not data_sealed.is_file():
            raise EnvelopeError(f"external data {location!r} of an encrypted graph must be encrypted too",
                                reason="format", file=data)
        external[location] = read(data_sealed)
    return MemoryGraph(graph, external)


def _reader(directory: Path, wrapper: Wrapper, manifest: VerifiedManifest | None) -> Callable[[Path], bytearray]:
    def read(sealed: Path) -> bytearray:
        relative = sealed.relative_to(directory).as_posix()
        pinned = manifest.files.get(relative) if manifest is not None else None
        if manifest is not None and pinned is None:
            raise ManifestError(f"{relative} is not listed in the signed manifest: nothing pins its digest",
                                reason="file-extra", file=sealed)
        return decrypt_to_memory(sealed, wrapper, context=relative.removesuffix(ENCRYPTED_SUFFIX),
                                 expected_sha256=pinned.sha256 if pinned else None)

    return read
