"""Envelope encryption: round trips at chunk edges, bounded memory on a large file, and each tampering refused."""

from __future__ import annotations

import hashlib
import os
import struct
import tracemalloc
from pathlib import Path

import pytest

from dsguard.crypto.envelope import CHUNK_SIZE, TAG_BYTES, decrypt_file, decrypt_to_memory, encrypt_file
from dsguard.crypto.errors import EnvelopeError
from dsguard.crypto.keys import LocalWrapper

KEK = LocalWrapper(os.urandom(32), "test-kek")
SMALL_CHUNK = 4096
LARGE_FILE = 256 << 20
MEMORY_BOUND = 8 << 20


def encrypted(tmp_path: Path, data: bytes, *, name: str = "weights.bin", context: str = "onnx/model.onnx_data",
              wrapper: LocalWrapper = KEK, chunk_size: int = SMALL_CHUNK) -> Path:
    plain = tmp_path / name
    plain.write_bytes(data)
    target = tmp_path / (name + ".dsenc")
    encrypt_file(plain, target, wrapper, context=context, chunk_size=chunk_size)
    plain.unlink()
    return target


def layout(path: Path) -> tuple[bytearray, int]:
    """The encrypted file's bytes and where its first chunk starts."""
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack(">H", data[5:7])
    return data, 7 + header_length + 32


def chunk_span(start: int, index: int, chunk_size: int = SMALL_CHUNK) -> slice:
    size = chunk_size + TAG_BYTES
    return slice(start + index * size, start + (index + 1) * size)


def refused(path: Path, reason: str, **options: object) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as caught:
        decrypt_to_memory(path, KEK, **options)  # type: ignore[arg-type]
    assert caught.value.reason == reason, str(caught.value)
    assert caught.value.file == str(path)
    return caught.value


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1],
                         ids=["empty", "one-byte", "chunk-minus-one", "one-chunk", "chunk-plus-one"])
def test_round_trip_through_a_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    sealed = encrypted(tmp_path, data, chunk_size=CHUNK_SIZE)
    decrypt_file(sealed, tmp_path / "restored.bin", KEK, context="onnx/model.onnx_data")
    assert (tmp_path / "restored.bin").read_bytes() == data
    assert sealed.stat().st_size == len(layout(sealed)[0])


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1],
                         ids=["empty", "one-byte", "chunk-minus-one", "one-chunk", "chunk-plus-one"])
def test_round_trip_into_memory(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    assert decrypt_to_memory(encrypted(tmp_path, data, chunk_size=CHUNK_SIZE), KEK) == data


def test_the_ciphertext_does_not_contain_the_plaintext(tmp_path: Path) -> None:
    data = os.urandom(64) * 200
    assert data[:64] not in encrypted(tmp_path, data).read_bytes()


def test_a_large_file_is_encrypted_and_decrypted_in_bounded_memory(tmp_path: Path) -> None:
    plain = tmp_path / "sparse.onnx_data"
    with plain.open("wb") as writer:
        writer.truncate(LARGE_FILE)
    tracemalloc.start()
    try:
        encrypt_file(plain, tmp_path / "sealed", KEK)
        plain.unlink()
        decrypt_file(tmp_path / "sealed", tmp_path / "restored", KEK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"peak {peak} bytes while streaming {LARGE_FILE} bytes"
    zeros = hashlib.sha256()
    digest = hashlib.sha256()
    with (tmp_path / "restored").open("rb") as reader:
        while block := reader.read(CHUNK_SIZE):
            digest.update(block)
            zeros.update(bytes(len(block)))
    assert (tmp_path / "restored").stat().st_size == LARGE_FILE
    assert digest.digest() == zeros.digest()


def test_bit_flip_in_a_chunk_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK))
    data, start = layout(path)
    data[start + SMALL_CHUNK + 100] ^= 0x01
    path.write_bytes(data)
    assert "chunk 2 of 3" in refused(path, "tampered").message


def test_truncated_last_chunk_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(2 * SMALL_CHUNK + 10))
    path.write_bytes(path.read_bytes()[:-5])
    refused(path, "truncated")


def test_dropping_whole_final_chunks_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK))
    data, start = layout(path)
    path.write_bytes(data[:chunk_span(start, 1).stop])
    refused(path, "truncated")


def test_chunk_reordered_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK))
    data, start = layout(path)
    first, second = chunk_span(start, 0), chunk_span(start, 1)
    data[first], data[second] = data[second], data[first]
    path.write_bytes(data)
    refused(path, "tampered")


def test_chunk_from_another_file_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK))
    other = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK), name="other.bin")
    data, start = layout(path)
    other_data, other_start = layout(other)
    data[chunk_span(start, 1)] = other_data[chunk_span(other_start, 1)]
    path.write_bytes(data)
    refused(path, "tampered")


def test_wrong_kek_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(100), wrapper=LocalWrapper(os.urandom(32), "other-kek"))
    error = refused(path, "wrong-key")
    assert KEK.key_id in error.message


def test_header_edited_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK))
    path.write_bytes(path.read_bytes().replace(b'"chunk":4096', b'"chunk":8192', 1))
    refused(path, "header")


def test_header_with_another_files_wrapped_key_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(SMALL_CHUNK))
    other = encrypted(tmp_path, os.urandom(SMALL_CHUNK), name="other.bin")
    wrapped = layout(path)[0].split(b'"wrapped":"')[1].split(b'"')[0]
    other_wrapped = layout(other)[0].split(b'"wrapped":"')[1].split(b'"')[0]
    path.write_bytes(path.read_bytes().replace(wrapped, other_wrapped))
    refused(path, "header")


def test_bytes_appended_after_the_final_chunk_are_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(SMALL_CHUNK + 1))
    path.write_bytes(path.read_bytes() + b"\x00")
    refused(path, "trailing-data")


def test_file_swapped_for_another_of_the_bundle_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(100), context="onnx/model.onnx")
    error = refused(path, "context", context="onnx/model.onnx_data")
    assert "'onnx/model.onnx'" in error.message


def test_a_file_that_is_not_encrypted_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx.dsenc"
    path.write_bytes(b"\x08\x08\x12\x07pytorch" + os.urandom(100))
    refused(path, "format")


def test_a_file_other_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(100))
    refused(path, "changed", expected_sha256=hashlib.sha256(b"the signed file").hexdigest())


def test_no_plaintext_is_left_when_a_late_chunk_is_tampered(tmp_path: Path) -> None:
    path = encrypted(tmp_path, os.urandom(3 * SMALL_CHUNK))
    data, start = layout(path)
    data[chunk_span(start, 2).start + 5] ^= 0x80
    path.write_bytes(data)
    with pytest.raises(EnvelopeError):
        decrypt_file(path, tmp_path / "restored.bin", KEK)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
