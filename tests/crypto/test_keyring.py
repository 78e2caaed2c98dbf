"""Keyring: wrapped data keys, rotation of data and master keys, crash safety."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plyvel
import pytest

from node.crypto import KeyringError
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import MasterKey, create_key_file, generate_master_key, load_master_key
from node.crypto.keyring import (
    Keyring,
    MasterRotation,
    keyring_path,
    open_keyring,
    staged_key_path,
)

VALUES = {b"v/%04d" % i: os.urandom(40) for i in range(200)}


def _fill(db_dir: Path, codec: EnvelopeCodec) -> None:
    db = plyvel.DB(str(db_dir), create_if_missing=True)
    with db.write_batch(sync=True) as wb:
        for k, v in VALUES.items():
            wb.put(k, codec.seal(k, v))
    db.close()


def _all_readable(db_dir: Path, keyring: Keyring) -> bool:
    codec = EnvelopeCodec(keyring)
    db = plyvel.DB(str(db_dir))
    try:
        return {k: codec.open(k, v) for k, v in db.iterator()} == VALUES
    finally:
        db.close()


def test_keyring_reopens_with_the_same_keys(data_dir: Path, key_file: Path, keyring: Keyring) -> None:
    sealed = EnvelopeCodec(keyring).seal(b"k", b"value")
    again = open_keyring(data_dir, key_file)
    assert EnvelopeCodec(again).open(b"k", sealed) == b"value"
    assert again.active_key_id == 1 and again.master_key_id == load_master_key(key_file).key_id
    assert stat.S_IMODE(keyring_path(data_dir).stat().st_mode) == 0o600


def test_keyring_file_holds_no_raw_key_material(data_dir: Path, keyring: Keyring) -> None:
    keyring.rotate_data()
    text = keyring_path(data_dir).read_text()
    for dk in keyring._state.keys.values():
        assert dk.key.hex() not in text and base64.b64encode(dk.key).decode() not in text
    assert keyring.master.key.hex() not in text


def test_the_index_key_is_per_node_and_survives_every_rotation(
    tmp_path: Path, data_dir: Path, key_file: Path, keyring: Keyring
) -> None:
    index_key = keyring.index_key
    assert len(index_key) == 32
    keyring.rotate_data()
    MasterRotation(key_file, data_dir).run()
    assert open_keyring(data_dir, key_file).index_key == index_key
    other = Keyring.create(tmp_path / "other", load_master_key(key_file))
    assert other.index_key != index_key
    assert index_key.hex() not in keyring_path(data_dir).read_text()


def test_create_refuses_to_replace(data_dir: Path, key_file: Path, keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(data_dir, load_master_key(key_file))


def test_missing_keyring(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(KeyringError, match="no keyring at"):
        open_keyring(tmp_path / "empty", key_file)


def test_another_master_is_refused_naming_both_ids(data_dir: Path, keyring: Keyring) -> None:
    stranger = generate_master_key()
    with pytest.raises(KeyringError) as exc:
        Keyring.open(data_dir, [stranger])
    assert keyring.master_key_id in str(exc.value) and stranger.key_id in str(exc.value)


def test_a_forged_master_with_the_right_id_fails_the_integrity_check(
    data_dir: Path, keyring: Keyring
) -> None:
    forged = MasterKey(key_id=keyring.master_key_id, key=os.urandom(32))
    with pytest.raises(KeyringError, match="failed its integrity check"):
        Keyring.open(data_dir, [forged])


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(active_data_key_id=2),
        lambda d: d["data_keys"][0].update(id=7),
        lambda d: d["data_keys"][0].update(wrapped=base64.b64encode(os.urandom(60)).decode()),
        lambda d: d.update(next_data_key_id=1),
        lambda d: d.update(previous_master_key_id="00" * 8),
        lambda d: d.pop("mac"),
    ],
)
def test_an_edited_keyring_is_refused(
    data_dir: Path, key_file: Path, keyring: Keyring, edit: Callable[[dict[str, Any]], object]
) -> None:
    path = keyring_path(data_dir)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="integrity check"):
        open_keyring(data_dir, key_file)


def test_a_garbled_keyring_is_refused(data_dir: Path, key_file: Path, keyring: Keyring) -> None:
    keyring_path(data_dir).write_bytes(b"\x00garbage")
    with pytest.raises(KeyringError, match="not valid JSON"):
        open_keyring(data_dir, key_file)


def test_rotate_data_is_durable_and_ids_are_never_reused(
    data_dir: Path, key_file: Path, keyring: Keyring
) -> None:
    assert keyring.rotate_data() == 2
    assert keyring.retire_data_keys([1]) == [1]
    assert keyring.rotate_data() == 3
    assert keyring.retire_data_keys([2]) == [2]
    again = open_keyring(data_dir, key_file)
    assert again.data_key_ids == [3] and again.active_key_id == 3 and again.next_data_key_id == 4
    assert again.rotate_data() == 4


def test_the_active_key_cannot_be_retired(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="is active"):
        keyring.retire_data_keys([keyring.active_key_id])


def test_rotate_master_then_reopen_reads_everything(
    data_dir: Path, key_file: Path, keyring: Keyring, codec: EnvelopeCodec
) -> None:
    keyring.rotate_data()
    _fill(data_dir / "db", codec)
    old = load_master_key(key_file)
    new = MasterRotation(key_file, data_dir).run()
    assert load_master_key(key_file) == new and not staged_key_path(key_file).exists()
    reopened = open_keyring(data_dir, key_file)
    assert reopened.master_key_id == new.key_id
    assert reopened.previous_master_key_id == old.key_id
    assert reopened.data_key_ids == [1, 2] and reopened.active_key_id == 2
    assert _all_readable(data_dir / "db", reopened)
    assert old.key_id in reopened.known_masters()  # for Raft entries wrapped before
    with pytest.raises(KeyringError, match="wrapped by master key id"):
        Keyring.open(data_dir, [old])  # the old master alone no longer opens it
    assert reopened.forget_old_masters() == [old.key_id]
    assert open_keyring(data_dir, key_file).old_master_key_ids == []


STEPS = ["stage", "rewrap", "install"]


@pytest.mark.parametrize("crash_after", range(len(STEPS) + 1))
def test_master_rotation_survives_a_crash_between_any_two_steps(
    data_dir: Path, key_file: Path, keyring: Keyring, codec: EnvelopeCodec, crash_after: int
) -> None:
    _fill(data_dir / "db", codec)
    old = load_master_key(key_file)
    rotation = MasterRotation(key_file, data_dir)
    for name in STEPS[:crash_after]:
        getattr(rotation, name)()
    # "Crash": the process is gone; a fresh one opens what is on disk.
    assert _all_readable(data_dir / "db", open_keyring(data_dir, key_file))
    new = MasterRotation(key_file, data_dir).run()  # running again finishes the job
    if 0 < crash_after < len(STEPS):
        assert new.key_id != old.key_id and new == load_master_key(key_file)
    assert not staged_key_path(key_file).exists()
    final = open_keyring(data_dir, key_file)
    assert final.master_key_id == load_master_key(key_file).key_id
    assert _all_readable(data_dir / "db", final)


@pytest.mark.parametrize("failing_step", ["rewrap", "install"])
def test_master_rotation_survives_a_crash_inside_a_step(
    data_dir: Path, key_file: Path, keyring: Keyring, codec: EnvelopeCodec,
    monkeypatch: pytest.MonkeyPatch, failing_step: str,
) -> None:
    """The rename that commits a step fails (as a crash just before it would):
    the temporary file is written, the old file is still in place."""
    _fill(data_dir / "db", codec)
    rotation = MasterRotation(key_file, data_dir)
    rotation.stage()
    if failing_step == "install":
        rotation.rewrap()

    def crash(*_args: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        getattr(rotation, failing_step)()
    monkeypatch.undo()
    assert _all_readable(data_dir / "db", open_keyring(data_dir, key_file))
    new = MasterRotation(key_file, data_dir).run()
    assert load_master_key(key_file) == new
    assert _all_readable(data_dir / "db", open_keyring(data_dir, key_file))
    assert not (data_dir / ".keyring.tmp").exists()


def test_a_stale_temporary_keyring_is_ignored_and_replaced(
    data_dir: Path, key_file: Path, keyring: Keyring
) -> None:
    (data_dir / ".keyring.tmp").write_bytes(b"half-written")
    assert open_keyring(data_dir, key_file).active_key_id == 1
    keyring.rotate_data()
    assert open_keyring(data_dir, key_file).active_key_id == 2
    assert not (data_dir / ".keyring.tmp").exists()


def test_cluster_rotation_to_a_shared_new_master(tmp_path: Path) -> None:
    """Two nodes share a master; both rotate to the same new key file."""
    shared = generate_master_key()
    nodes = []
    for name in ("n1", "n2"):
        (tmp_path / name / "data").mkdir(parents=True)
        kf = tmp_path / name / "master.key"
        create_key_file(kf, shared)
        k = open_keyring(tmp_path / name / "data", kf, create=True)
        _fill(tmp_path / name / "data" / "db", EnvelopeCodec(k))
        nodes.append((kf, tmp_path / name / "data"))
    new_file = tmp_path / "new.key"
    new = create_key_file(new_file)
    for kf, data in nodes:
        assert MasterRotation(kf, data, new_file).run() == new
        assert load_master_key(kf) == new
        assert _all_readable(data / "db", open_keyring(data, kf))


def test_a_staged_rotation_cannot_be_silently_replaced(
    tmp_path: Path, data_dir: Path, key_file: Path, keyring: Keyring
) -> None:
    MasterRotation(key_file, data_dir).stage()
    other = tmp_path / "other.key"
    create_key_file(other)
    with pytest.raises(KeyringError, match="already staged"):
        MasterRotation(key_file, data_dir, other).stage()


def test_a_staged_master_is_known_for_unwrapping_before_rotation(
    data_dir: Path, key_file: Path, keyring: Keyring
) -> None:
    staged = MasterRotation(key_file, data_dir).stage()
    k = open_keyring(data_dir, key_file)
    assert k.master_key_id != staged.key_id
    assert set(k.known_masters()) == {k.master_key_id, staged.key_id}
