"""`python -m node keys ...`: init, status, rotate-data (resumable), rotate-master, offline checks."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from node import keys_cli
from node.crypto.envelope import EnvelopeCodec, key_id_of
from node.crypto.keyfile import load_master_key
from node.crypto.keyring import Keyring, open_keyring
from node.crypto.reencrypt import DEFAULT_CURSOR_KEY, Keyspace, ReEncryptor

ROOT = Path(__file__).resolve().parents[2]
N_VALUES = 1_200


@pytest.fixture(autouse=True)
def whole_db_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write their own keys: re-encrypt the whole DB whatever the node layout."""
    monkeypatch.setattr(keys_cli, "node_layout", _whole_db)


def _whole_db() -> keys_cli.Layout:
    return keys_cli.Layout([b""], DEFAULT_CURSOR_KEY)


@pytest.fixture
def node_dir(data_dir: Path, key_file: Path) -> dict[bytes, bytes]:
    """A stopped node's data dir: keyring plus DATA_DIR/db holding sealed values."""
    codec = EnvelopeCodec(open_keyring(data_dir, key_file, create=True))
    model = {b"k/%05d" % i: os.urandom(100) for i in range(N_VALUES)}
    db = plyvel.DB(str(data_dir / "db"), create_if_missing=True)
    with db.write_batch(sync=True) as wb:
        for k, v in model.items():
            wb.put(k, codec.seal(k, v))
    db.close()
    return model


def _run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = keys_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _read_all(data_dir: Path, key_file: Path) -> tuple[dict[bytes, bytes], set[int]]:
    codec = EnvelopeCodec(open_keyring(data_dir, key_file))
    db = plyvel.DB(str(data_dir / "db"))
    try:
        items = [(k, v) for k, v in db.iterator() if k != DEFAULT_CURSOR_KEY]
        return {k: codec.open(k, v) for k, v in items}, {key_id_of(v) for _, v in items}
    finally:
        db.close()


def test_init_creates_a_private_key_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cluster.key"
    rc, out, _ = _run(capsys, "init", "--key-file", path)
    master = load_master_key(path)
    assert rc == 0 and master.key_id in out and "every host" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64encode(master.key).decode() not in out
    rc, _, err = _run(capsys, "init", "--key-file", path)
    assert rc == 1 and "already exists" in err
    assert load_master_key(path) == master


def test_the_node_entry_point_dispatches_keys(tmp_path: Path) -> None:
    path = tmp_path / "via-main.key"
    proc = subprocess.run(
        [sys.executable, "-m", "node", "keys", "init", "--key-file", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_master_key(path).key_id in proc.stdout


def test_a_world_readable_key_file_is_refused_with_the_fix(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    key_file.chmod(0o644)
    rc, _, err = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir)
    assert rc == 1 and f"chmod 600 {key_file}" in err and "0644" in err


def test_status_table_and_json(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir)
    master = load_master_key(key_file)
    assert rc == 0
    assert master.key_id in out and "DATA KEY" in out
    assert any(line.split()[:2] == ["1", "active"] and line.endswith(f"{N_VALUES:,}")
               for line in out.splitlines())
    rc, out, _ = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir, "--json")
    info = json.loads(out)
    assert info["keyring_master_key_id"] == master.key_id and info["active_data_key_id"] == 1
    assert info["data_keys"] == [
        {"id": 1, "created": info["data_keys"][0]["created"], "active": True, "values": N_VALUES}
    ]
    assert info["database_state"] == "open" and info["reencryption"] is None


def test_rotate_data_then_reencrypt_retires_the_old_key(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(capsys, "rotate-data", "--key-file", key_file, "--data-dir", data_dir)
    assert rc == 0 and "new active data key 2" in out
    rc, out, err = _run(capsys, "rotate-data", "--key-file", key_file, "--data-dir", data_dir,
                        "--reencrypt")
    assert rc == 0, err
    assert "new active data key 3" in out and "retired data keys: 1, 2" in out
    assert f"{N_VALUES:,}/{N_VALUES:,} values (100%)" in err  # progress on stderr
    values, ids = _read_all(data_dir, key_file)
    assert values == node_dir and ids == {3}
    rc, out, _ = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir, "--json")
    info = json.loads(out)
    assert [k["id"] for k in info["data_keys"]] == [3]
    assert info["reencryption"]["finished"] and info["reencryption"]["done"] == N_VALUES


class _DiesAfterTwoSteps(ReEncryptor):
    def step(self):  # type: ignore[no-untyped-def]
        steps = getattr(self, "_steps", 0)
        if steps == 2:
            raise KeyboardInterrupt("simulated crash")
        self._steps = steps + 1
        return super().step()


def test_reencrypt_resumes_after_a_crash_without_rotating_again(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keys_cli, "ReEncryptor", _DiesAfterTwoSteps)
    with pytest.raises(KeyboardInterrupt):
        keys_cli.main(["rotate-data", "--key-file", str(key_file), "--data-dir", str(data_dir),
                       "--reencrypt"])
    monkeypatch.undo()
    monkeypatch.setattr(keys_cli, "node_layout", _whole_db)
    rc, out, err = _run(capsys, "rotate-data", "--key-file", key_file, "--data-dir", data_dir,
                        "--reencrypt")
    assert rc == 0, err
    assert "resuming re-encryption to data key 2 (1,000/1,200 values done)" in out
    assert "retired data keys: 1;" in out
    assert open_keyring(data_dir, key_file).data_key_ids == [2]  # no extra rotation
    values, ids = _read_all(data_dir, key_file)
    assert values == node_dir and ids == {2}


def test_a_crash_between_planning_and_adding_the_key_adds_it_once(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(self: Keyring) -> int:
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Keyring, "rotate_data", crash)
    with pytest.raises(KeyboardInterrupt):
        keys_cli.main(["rotate-data", "--key-file", str(key_file), "--data-dir", str(data_dir),
                       "--reencrypt"])
    monkeypatch.undo()
    monkeypatch.setattr(keys_cli, "node_layout", _whole_db)
    rc, out, err = _run(capsys, "rotate-data", "--key-file", key_file, "--data-dir", data_dir,
                        "--reencrypt")
    assert rc == 0, err
    assert "new active data key 2" in out
    assert open_keyring(data_dir, key_file).data_key_ids == [2]
    assert _read_all(data_dir, key_file) == (node_dir, {2})


@pytest.fixture
def running_node(data_dir: Path, node_dir: dict[bytes, bytes]) -> Iterator[None]:
    """Holds the LevelDB lock, as a running node does."""
    db = plyvel.DB(str(data_dir / "db"))
    try:
        yield
    finally:
        db.close()


def test_offline_commands_refuse_while_the_node_runs(
    data_dir: Path, key_file: Path, running_node: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["rotate-master"], ["rotate-data"], ["rotate-data", "--reencrypt"]):
        rc, _, err = _run(capsys, *argv, "--key-file", key_file, "--data-dir", data_dir)
        assert rc == 1 and "locked" in err and "Stop the node first" in err, argv
    assert open_keyring(data_dir, key_file).data_key_ids == [1]  # nothing changed
    assert load_master_key(key_file).key_id == open_keyring(data_dir, key_file).master_key_id
    rc, out, _ = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir)
    assert rc == 0 and "locked (node running)" in out


def test_rotate_master_keeps_every_value_readable(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_master_key(key_file)
    rc, out, err = _run(capsys, "rotate-master", "--key-file", key_file, "--data-dir", data_dir)
    new = load_master_key(key_file)
    assert rc == 0, err
    assert new.key_id != old.key_id and f"3/3 installed: {key_file} now holds master key id {new.key_id}" in out
    assert base64.b64encode(new.key).decode() not in out + err
    assert _read_all(data_dir, key_file) == (node_dir, {1})
    rc, out, _ = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir, "--json")
    info = json.loads(out)
    assert info["keyring_master_key_id"] == new.key_id
    assert info["previous_master_key_id"] == old.key_id


def _fake_layout(monkeypatch: pytest.MonkeyPatch, **names: object) -> None:
    monkeypatch.undo()  # drop the autouse override: exercise the real lookup
    fake = types.ModuleType("node.storage_layout")
    for name, value in names.items():
        setattr(fake, name, value)
    monkeypatch.setitem(sys.modules, "node.storage_layout", fake)


def test_the_layout_modules_keyspaces_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    spaces = [Keyspace(b"r"), Keyspace(b"s", codec_sees_prefix=False)]
    _fake_layout(monkeypatch, REENCRYPT_KEYSPACES=spaces, REENCRYPT_CURSOR_KEY=b"\x00meta",
                 VALUE_PREFIXES=(b"r", b"s"))
    assert keys_cli.node_layout() == keys_cli.Layout(spaces, b"\x00meta")


def test_a_layout_that_does_not_say_how_values_were_sealed_blocks_reencryption(
    data_dir: Path, key_file: Path, node_dir: dict[bytes, bytes],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_layout(monkeypatch, VALUE_PREFIXES=(b"k",))
    rc, _, err = _run(capsys, "rotate-data", "--key-file", key_file, "--data-dir", data_dir,
                      "--reencrypt")
    assert rc == 1 and "REENCRYPT_KEYSPACES" in err
    assert open_keyring(data_dir, key_file).data_key_ids == [1]  # refused before rotating
    rc, out, _ = _run(capsys, "status", "--key-file", key_file, "--data-dir", data_dir, "--json")
    assert rc == 0 and json.loads(out)["data_keys"][0]["values"] == N_VALUES


def test_values_written_through_a_prefixed_db_are_reencrypted(
    data_dir: Path, key_file: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As node.storage_layout stores them: the Raft log under b"r" with full keys,
    the state machine through db.prefixed_db(b"s") (the codec never sees the b"s")."""
    codec = EnvelopeCodec(open_keyring(data_dir, key_file, create=True))
    db = plyvel.DB(str(data_dir / "db"), create_if_missing=True)
    state = db.prefixed_db(b"s")
    for i in range(300):
        db.put(b"r%04d" % i, codec.seal(b"r%04d" % i, b"log %d" % i))
        state.put(b"%04d" % i, codec.seal(b"%04d" % i, b"record %d" % i))
    db.close()
    _fake_layout(monkeypatch, REENCRYPT_KEYSPACES=[b"r", Keyspace(b"s", codec_sees_prefix=False)],
                 REENCRYPT_CURSOR_KEY=b"\x00meta/cursor")
    rc, out, err = _run(capsys, "rotate-data", "--key-file", key_file, "--data-dir", data_dir,
                        "--reencrypt")
    assert rc == 0, err
    assert "retired data keys: 1;" in out
    codec = EnvelopeCodec(open_keyring(data_dir, key_file))
    db = plyvel.DB(str(data_dir / "db"))
    try:
        state = db.prefixed_db(b"s")
        for i in range(300):
            assert codec.open(b"r%04d" % i, db.get(b"r%04d" % i)) == b"log %d" % i
            assert codec.open(b"%04d" % i, state.get(b"%04d" % i)) == b"record %d" % i
    finally:
        db.close()
