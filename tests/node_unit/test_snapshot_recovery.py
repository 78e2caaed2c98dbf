"""recover_on_open on a real LevelDB laid out as a node's (Raft log under "r",
state machines under "s"): whatever step of a snapshot install a crash cuts,
reopening the database and recovering leaves the replica holding exactly
the snapshot's state, with the install marker and staging gone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

from consensus.leveldb_storage import GroupUpdate, LevelDBLogStore
from consensus.types import Entry, HardState, Snapshot
from node import snapshots
from node.snapshots import (
    CRASH_ENV,
    CRASH_EXIT_CODE,
    CRASH_POINTS,
    SnapshotManager,
    SnapshotMissing,
    install_staged,
    recover_on_open,
)
from node.state_machine import PartitionStateMachine
from tests.node_unit.conftest import TaggedXorCodec
from tests.node_unit.snapshot_helpers import (
    CONF,
    PARTITION,
    FakeHost,
    apply_writes,
    chunks_of,
    open_sm,
    send_side,
    staging_keys,
    stream,
)

ROOT = Path(__file__).resolve().parents[2]
WRITES = [
    (f"patient-{i % 7}", f"rec-{i % 11}", f"value {i} ".encode() * (1 + i % 5), i % 13 == 0)
    for i in range(120)
]


class Crash(Exception):
    """Stands for the process dying at one write of the install."""


def _direct(fn: Callable[[], None]) -> None:
    fn()


def crash_at(n: int) -> Callable[[Callable[[], None]], None]:
    count = [0]

    def write(fn: Callable[[], None]) -> None:
        if count[0] == n:
            raise Crash(f"write {n}")
        count[0] += 1
        fn()

    return write


def _open(path: Path) -> tuple[plyvel.DB, LevelDBLogStore, PartitionStateMachine]:
    db = plyvel.DB(str(path), create_if_missing=True)
    return db, LevelDBLogStore(db, prefix=b"r", codec=TaggedXorCodec()), open_sm(db)


def prepare(root: Path) -> tuple[bytes, int, int]:
    """A follower far behind (applied 3 of a longer log) that received and
    staged a snapshot at index S and persisted it in Raft, as the host does,
    before the install. Returns (the snapshot's logical bytes, S, term)."""
    src_db = plyvel.DB(str(root / "src"), create_if_missing=True)
    src = open_sm(src_db)
    apply_writes(src, WRITES, term=3)
    db, log_store, sm = _open(root / "dst")
    log_store.bootstrap(PARTITION, CONF)
    ents = [Entry(index=i, term=1, data=b"") for i in range(1, 6)]
    log_store.write([GroupUpdate(PARTITION, HardState(term=1, commit=5), ents)])
    apply_writes(sm, WRITES[:3], term=1)  # stale state the snapshot replaces
    src_host, dst_host = FakeHost(1, [src]), FakeHost(2, [sm])
    src_mgr = SnapshotManager(src_host)  # type: ignore[arg-type]
    dst_mgr = SnapshotManager(dst_host)  # type: ignore[arg-type]
    try:

        async def go() -> Snapshot:
            msg, declared, data = await send_side(src_mgr)
            _, got = await dst_mgr.receive(stream(chunks_of(msg, declared, data, 700)), 1 << 30)
            assert got.snapshot is not None
            return got.snapshot

        snap = asyncio.run(go())
        log_store.write([GroupUpdate(PARTITION, HardState(term=3, commit=snap.meta.index),
                                     snapshot=snap)])
        expected = src.store.snapshot_bytes()
    finally:
        src_host.close(src_mgr)
        dst_host.close(dst_mgr)
        src_db.close()
        db.close()
    return expected, snap.meta.index, snap.meta.term


def reopen_and_recover(path: Path) -> tuple[bool, bytes, int, list[bytes]]:
    db, log_store, sm = _open(path)
    try:
        finished = recover_on_open(log_store.group(PARTITION), sm)
        return finished, sm.store.snapshot_bytes(), sm.applied_index, staging_keys(sm)
    finally:
        db.close()


def test_a_crash_right_after_raft_persisted_the_snapshot_is_finished_on_open(
    tmp_path: Path,
) -> None:
    expected, index, _ = prepare(tmp_path)
    finished, state, applied, staged = reopen_and_recover(tmp_path / "dst")
    assert finished and applied == index and state == expected and staged == []
    # A second open finds nothing to do.
    assert reopen_and_recover(tmp_path / "dst") == (False, expected, index, [])


@pytest.mark.parametrize("batch_bytes", [1 << 22, 300])
def test_a_crash_at_every_write_of_the_install_is_finished_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int
) -> None:
    monkeypatch.setattr(snapshots, "BATCH_BYTES", batch_bytes)
    monkeypatch.setattr(snapshots, "DELETE_BATCH_KEYS", 2)
    n = 0
    while True:
        root = tmp_path / f"crash-{n}"
        root.mkdir()
        expected, index, term = prepare(root)
        db, _, sm = _open(root / "dst")
        try:
            install_staged(sm.store, index, term, crash_at(n))
            completed = True
        except Crash:
            completed = False
        finally:
            marked = db.get(b"s" + snapshots._marker_key(sm.store)) is not None
            behind = sm.store.read_meta().applied_index < index
            db.close()
        finished, state, applied, staged = reopen_and_recover(root / "dst")
        assert (state, applied, staged) == (expected, index, []), f"crash at write {n}"
        # Until the marker is cleared, the open finishes the install (the
        # marker, or before it the stored Raft snapshot, says so); after
        # that only leftover staging is dropped.
        assert finished == (marked or behind), f"crash at write {n}"
        assert not (completed and finished)
        if completed:
            break
        n += 1
        assert n < 200
    assert n > (8 if batch_bytes == 300 else 3)  # the crash points covered the steps


def test_a_stale_staging_is_dropped_and_nothing_else_changes(tmp_path: Path) -> None:
    expected, index, term = prepare(tmp_path)
    db, _, sm = _open(tmp_path / "dst")
    install_staged(sm.store, index, term, _direct)
    sm.reload()
    # A later stream that Raft never took: staged, complete, not installed.
    store = sm.store
    with store.db.write_batch() as wb:
        snapshots._put_obj(wb, store, snapshots._descriptor_key(store, 99), [index, term, 1, 1])
        wb.put(snapshots._chunk_key(store, 99, 0), store.codec.seal(
            snapshots._chunk_key(store, 99, 0), b"\x01"))
    db.close()
    assert reopen_and_recover(tmp_path / "dst") == (False, expected, index, [])


def test_a_log_ahead_of_the_state_without_staged_data_is_refused(tmp_path: Path) -> None:
    _, index, _ = prepare(tmp_path)
    db, log_store, sm = _open(tmp_path / "dst")
    try:
        snapshots._delete_generations(sm.store, snapshots._generations(sm.store), _direct)
        with pytest.raises(SnapshotMissing, match=f"no staged snapshot data for index {index}"):
            recover_on_open(log_store.group(PARTITION), sm)
    finally:
        db.close()


_CHILD = """
import sys
from pathlib import Path
from tests.node_unit.test_snapshot_recovery import _open
from node.snapshots import install_staged
db, _, sm = _open(Path(sys.argv[1]))
install_staged(sm.store, int(sys.argv[2]), int(sys.argv[3]), lambda fn: fn())
print("install completed")
"""


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_the_test_only_crash_points_exit_86_and_the_reopen_finishes(
    tmp_path: Path, point: str
) -> None:
    expected, index, term = prepare(tmp_path)
    env = dict(os.environ, **{CRASH_ENV: point}, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "dst"), str(index), str(term)],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(ROOT),
    )
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    assert f"TEST ONLY: {CRASH_ENV}={point}" in done.stderr
    assert "install completed" not in done.stdout
    finished, state, applied, staged = reopen_and_recover(tmp_path / "dst")
    assert finished and (state, applied, staged) == (expected, index, [])
