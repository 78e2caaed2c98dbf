"""The master key file: safe creation, strict loading, messages without key material."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.crypto import KeyFileError
from node.crypto import keyfile as keyfile_mod
from node.crypto.keyfile import (
    KEY_BYTES,
    MasterKey,
    create_key_file,
    encode_key_file,
    generate_master_key,
    load_master_key,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret_forms(master: MasterKey) -> list[str]:
    return [master.key.hex(), base64.b64encode(master.key).decode(), repr(master.key)]


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_init_creates_a_0600_file_that_loads_back(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "master.key"
    created = create_key_file(path)
    assert _mode(path) == 0o600  # even with umask 0
    loaded = load_master_key(path)
    assert loaded == created
    assert len(loaded.key) == KEY_BYTES and len(loaded.key_id) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]  # no temp left behind


def test_every_file_is_created_exclusive_with_mode_0600_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if flags & os.O_CREAT:
            created.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", recording_open)
    create_key_file(tmp_path / "master.key")
    assert created, "the key file was not created through os.open"
    for _path, flags, mode in created:
        assert flags & os.O_EXCL, "a file holding key material was opened without O_EXCL"
        assert mode == 0o600


def test_init_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = create_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    assert load_master_key(path) == first


def test_two_keys_differ() -> None:
    a, b = generate_master_key(), generate_master_key()
    assert a.key != b.key and a.key_id != b.key_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_load_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    master = create_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as exc:
        load_master_key(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"{mode:04o}" in msg
    assert f"chmod 600 {path}" in msg
    assert not any(s in msg for s in _secret_forms(master))


def test_load_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as exc:
        load_master_key(path)
    assert str(path) in str(exc.value) and "does not exist" in str(exc.value)
    assert "keys init" in str(exc.value)


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_master_key(path)


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _with_line(master: MasterKey, index: int, line: str) -> bytes:
    lines = encode_key_file(master).decode().splitlines()
    lines[index] = line
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda m: b"", "first line"),
        (lambda m: b"\xff\xfe binary", "non-ASCII"),
        (lambda m: encode_key_file(m)[:-20], "checksum|expected 4 lines|malformed"),
        (lambda m: encode_key_file(m).replace(b"checksum: ", b"checksum: 0"), "checksum mismatch"),
        (lambda m: _with_line(m, 2, "key: not*base64"), "not valid base64"),
        (lambda m: _with_line(m, 1, "id: xyz"), "id is not 16"),
        (lambda m: _with_line(m, 1, "name: x"), "line 2 should start with 'id: '"),
        (lambda m: _with_line(m, 0, "medkv-master-key v9"), "format version '9'"),
        (lambda m: encode_key_file(m) + b"extra: line\n", "expected 4 lines"),
        (lambda m: encode_key_file(m) + b"#" * 5000, "larger than 4096 bytes"),
    ],
)
def test_load_refuses_malformed_files_without_echoing_key_material(
    tmp_path: Path, mutate: Any, expected: str
) -> None:
    master = generate_master_key()
    path = tmp_path / "master.key"
    _write_private(path, mutate(master))
    with pytest.raises(KeyFileError, match=expected) as exc:
        load_master_key(path)
    assert str(path) in str(exc.value)
    assert not any(s in str(exc.value) for s in _secret_forms(master))


def test_a_corrupted_key_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    master = generate_master_key()
    other = bytes([master.key[0] ^ 1]) + master.key[1:]
    data = encode_key_file(master).replace(
        base64.b64encode(master.key), base64.b64encode(other)
    )
    path = tmp_path / "master.key"
    _write_private(path, data)
    with pytest.raises(KeyFileError, match="checksum mismatch"):
        load_master_key(path)


@pytest.mark.parametrize("size", [16, 24, 31, 33, 64])
def test_load_refuses_a_key_of_the_wrong_size(tmp_path: Path, size: int) -> None:
    key = os.urandom(size)
    key_id = os.urandom(8).hex()
    text = (
        "medkv-master-key v1\n"
        f"id: {key_id}\n"
        f"key: {base64.b64encode(key).decode()}\n"
        f"checksum: {keyfile_mod._checksum(key_id, key)}\n"
    )
    path = tmp_path / "master.key"
    _write_private(path, text.encode())
    with pytest.raises(KeyFileError) as exc:
        load_master_key(path)
    assert f"{size}-byte" in str(exc.value) and "32-byte" in str(exc.value)
    assert str(path) in str(exc.value)
    assert key.hex() not in str(exc.value)


def test_repr_and_str_never_show_the_key() -> None:
    master = generate_master_key()
    for text in (repr(master), str(master)):
        assert master.key_id in text
        assert not any(s in text for s in _secret_forms(master))


def test_derived_subkeys_are_distinct_per_purpose_and_stable() -> None:
    master = generate_master_key()
    a, b = master.derive(b"purpose a"), master.derive(b"purpose b")
    assert a != b and a != master.key and len(a) == KEY_BYTES
    assert master.derive(b"purpose a") == a


def test_leftovers_of_a_crashed_creation_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".master.key.new-123-deadbeef"
    stale.write_bytes(encode_key_file(generate_master_key()))
    stale.chmod(0o600)
    create_key_file(tmp_path / "master.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]
