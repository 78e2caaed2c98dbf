"""Erasure obligations and the background purger, on real LevelDB.

Store level: an erasure that deleted anything records its obligation in the
same WriteBatch as the deletion and the applied index; an erasure of an
unknown patient records none; a snapshot restore keeps pending obligations
and records its own in the same write.

Node level (one node, one partition, its own Raft group; plaintext codec so
the files can be searched for the values directly): a burst of erasures is
coalesced into one purge; an unknown patient costs no purge; a purge held at
the moment of a stop is completed after the restart; the purge rewrites the
files so the erased values leave the disk while kept ones stay; an open scan
snapshot that would pin erased versions is interrupted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import plyvel
import pytest

from node.commands import ErasePatient, Put, RegisterSession, encode_command
from node.config import NodeConfig, parse_config
from node.erasure import HOLD_ENV, ErasurePurger, PurgeSettings
from node.host import MultiRaftHost
from node.read_snapshots import ReadSnapshotRegistry, SnapshotInterrupted
from node.record_store import (
    OBLIGATION_ERASE,
    OBLIGATION_SNAPSHOT_INSTALL,
    Obligation,
    PartitionMeta,
    RecordStore,
    blake2b_key_hasher,
)
from node.state_machine import PartitionStateMachine
from node.storage_layout import StorageLayout, plaintext_codec_for_tests
from tests.host_writes import open_session, propose_write
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec

ERASED = "patient-to-erase"
KEPT = "patient-to-keep"


# ---- store and state machine -------------------------------------------------


class RecordingDB:
    """A real prefixed LevelDB whose write batches are recorded (keys per batch)."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.batches: list[set[bytes]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def write_batch(self, **kw: Any) -> Any:
        inner = self._db.write_batch(**kw)
        keys: set[bytes] = set()
        self.batches.append(keys)

        class Batch:
            def put(self, k: bytes, v: bytes) -> None:
                keys.add(k)
                inner.put(k, v)

            def delete(self, k: bytes) -> None:
                keys.add(k)
                inner.delete(k)

            def __enter__(self) -> Batch:
                return self

            def __exit__(self, *exc: object) -> None:
                inner.__exit__(*exc)

        return Batch()


SESSION = 1  # every state machine here registers the writers' session at index 1


def _sm(db: Any, partition: int = 3) -> PartitionStateMachine:
    store = RecordStore(db, partition, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY))
    sm = PartitionStateMachine(store)
    sm.apply([(SESSION, 1, encode_command(
        RegisterSession(ts_ms=1000, client_id=b"c" * 16, nonce=1)
    ))])
    return sm


def _cmds(*cmds: Any) -> Iterator[bytes]:
    for c in cmds:
        yield encode_command(c)


_seq = itertools.count(1)


def _head(patient: str) -> dict[str, Any]:
    return {"client_id": b"c" * 16, "session": SESSION, "seq": next(_seq), "ack_below": 0,
            "ts_ms": 1000, "patient_id": patient}


def test_obligation_is_recorded_in_the_same_write_as_the_erasure(db: plyvel.DB) -> None:
    spy = RecordingDB(db.prefixed_db(b"sm/"))
    sm = _sm(spy)
    entries = list(_cmds(Put(**_head(ERASED), record_id="a", value=b"v1"),
                         Put(**_head(ERASED), record_id="a", value=b"v2"),
                         Put(**_head(KEPT), record_id="a", value=b"k")))
    sm.apply([(i + 2, 1, e) for i, e in enumerate(entries)])
    assert sm.store.obligations() == [] and not sm.purge_due
    spy.batches.clear()
    erase = encode_command(ErasePatient(**_head(ERASED)))
    sm.apply([(5, 1, erase)])
    assert sm.purge_due
    assert sm.store.obligations() == [Obligation(5, OBLIGATION_ERASE)]
    # One write: the patient's deletions, the obligation and the applied index.
    assert len(spy.batches) == 1
    ob_key = sm.store._obligation_key(Obligation(5, OBLIGATION_ERASE))
    meta_key = (3).to_bytes(4, "big") + b"mapplied"
    current, history = sm.store._record_keys(ERASED, "a")
    assert {ob_key, meta_key, current} <= spy.batches[0]
    assert any(k.startswith(history) for k in spy.batches[0])
    # The obligation key names no patient: partition, kind, index, kind byte.
    assert ob_key == (3).to_bytes(4, "big") + b"e" + (5).to_bytes(8, "big") + b"e"


def test_an_erasure_of_an_unknown_patient_records_no_obligation(db: plyvel.DB) -> None:
    sm = _sm(db.prefixed_db(b"sm/"))
    sm.apply([(2, 1, encode_command(Put(**_head(KEPT), record_id="a", value=b"k")))])
    sm.apply([(3, 1, encode_command(ErasePatient(**_head("nobody-by-this-id"))))])
    assert sm.store.obligations() == [] and not sm.purge_due
    # A put and its erasure in one apply round: the put never reached the
    # files, but its command is in the Raft log, so the purge is still owed.
    sm.apply([(4, 1, encode_command(Put(**_head(ERASED), record_id="a", value=b"x"))),
              (5, 1, encode_command(ErasePatient(**_head(ERASED))))])
    assert sm.store.obligations() == [Obligation(5, OBLIGATION_ERASE)] and sm.purge_due


def test_a_restore_keeps_pending_obligations_and_records_its_own(db: plyvel.DB) -> None:
    src = _sm(db.prefixed_db(b"src/"))
    src.apply([(i, 1, encode_command(Put(**_head(KEPT), record_id=f"r{i}", value=b"k")))
               for i in range(2, 12)])
    spy = RecordingDB(db.prefixed_db(b"dst/"))
    dst = _sm(spy)
    dst.apply([(2, 1, encode_command(Put(**_head(ERASED), record_id="a", value=b"x"))),
               (3, 1, encode_command(ErasePatient(**_head(ERASED))))])
    assert dst.store.obligations() == [Obligation(3, OBLIGATION_ERASE)]
    dst.purge_due = False
    spy.batches.clear()
    dst.restore(src.snapshot())
    assert dst.purge_due and dst.applied_index == 11
    assert dst.store.obligations() == [
        Obligation(3, OBLIGATION_ERASE), Obligation(11, OBLIGATION_SNAPSHOT_INSTALL),
    ]
    install_key = dst.store._obligation_key(Obligation(11, OBLIGATION_SNAPSHOT_INSTALL))
    assert len(spy.batches) == 1 and install_key in spy.batches[0]
    dst.store.complete_obligations(dst.store.obligations())
    assert dst.store.obligations() == []


def test_an_interrupted_read_snapshot_refuses_further_reads(db: plyvel.DB) -> None:
    registry = ReadSnapshotRegistry()
    store = RecordStore(db.prefixed_db(b"sm/"), 1, TaggedXorCodec(),
                        blake2b_key_hasher(HASH_KEY), registry)
    stage = store.begin()
    for i in range(5):
        store.write_version(stage, KEPT, f"r{i}", i + 1, b"v", False, 4)
    store.put_meta(stage, PartitionMeta(5, 1, 0))
    store.commit(stage)

    async def scenario() -> None:
        old = store.read_snapshot()
        page = old.scan(b"", 2)
        cutoff = registry.cutoff()
        new = store.read_snapshot()  # opened after the cutoff: left alone
        assert await registry.end_older_than(cutoff, grace=0.1) == 1
        with pytest.raises(SnapshotInterrupted, match="resume from the last resume_token"):
            old.scan(page.resume_token, 2)
        old.close()  # idempotent after an interruption
        assert len(new.scan(b"", 10).records) == 5
        new.close()
        assert len(registry) == 0

    asyncio.run(scenario())


# ---- one node: host + purger ---------------------------------------------------


FAST = PurgeSettings(settle_s=0.3, retry_s=0.5, snapshot_grace_s=0.3, slices=4,
                     slice_pause_s=0.0)


def _cfg(tmp_path: Path) -> NodeConfig:
    return parse_config(
        {
            "node_id": 1, "listen": "127.0.0.1:1", "data_dir": "n1",
            "partitions": 1, "replication": 1,
            "peers": [{"id": 1, "address": "127.0.0.1:1"}],
            "insecure": True,  # the host alone: access control is tested elsewhere
            "raft": {"tick_ms": 20},
        },
        tmp_path,
    )


class OneNode:
    """A one-replica partition: its host, purger and layout, started on the running loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.cfg = _cfg(tmp_path)
        self.layout = StorageLayout.open(self.cfg, codec=plaintext_codec_for_tests())
        self.purger: ErasurePurger | None = None
        self.host = MultiRaftHost(self.cfg, self.layout.log_store, self.layout.state_machine,
                                  lambda msgs: None, on_purge_due=self._due)
        self.purger = ErasurePurger(self.host, self.layout, FAST)
        self.slices = 0
        self.logs_dropped = 0
        compact_slice, compact_log = self.layout.compact_slice, self.host.compact_log

        def counting_slice(start: bytes, stop: bytes) -> None:
            self.slices += 1
            compact_slice(start, stop)

        async def counting_log(*a: Any) -> bool:
            self.logs_dropped += 1
            return await compact_log(*a)

        self.layout.compact_slice = counting_slice  # type: ignore[method-assign]
        self.host.compact_log = counting_log  # type: ignore[method-assign]
        self._seq = itertools.count(1)
        self._session = 0

    def _due(self, partition: int) -> None:
        assert self.purger is not None
        self.purger.notify(partition)

    async def start(self) -> None:
        self.host.start()
        assert self.purger is not None
        self.purger.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not self.host.replicas[0].is_leader:
            assert loop.time() < deadline, "no leader"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        assert self.purger is not None
        await self.purger.stop()
        await self.host.stop()
        self.layout.close()

    async def write(self, command: Any) -> int:
        if self._session == 0:
            self._session = await open_session(self.host, 0, b"n" * 16)
        res = await propose_write(self.host, 0, replace(command, session=self._session))
        assert res.ok, res.message
        return res.version

    def head(self, patient: str) -> dict[str, Any]:
        # The session is filled in by write() (opened on first use).
        return {"client_id": b"n" * 16, "session": 0, "seq": next(self._seq), "ack_below": 0,
                "ts_ms": 1000, "patient_id": patient}

    async def put(self, patient: str, record: str, value: bytes) -> int:
        return await self.write(Put(**self.head(patient), record_id=record, value=value))

    async def erase(self, patient: str) -> int:
        return await self.write(ErasePatient(**self.head(patient)))

    async def settled(self, timeout: float = 20.0) -> None:
        """Until every obligation is completed (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        store = self.host.replicas[0].sm.store
        await asyncio.sleep(FAST.settle_s)
        while store.obligations() or (self.purger is not None and self.purger._due):
            assert loop.time() < deadline, "purge did not complete"
            await asyncio.sleep(0.05)


def _files_hold(data_dir: Path, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in data_dir.rglob("*") if p.is_file())


def _value(tag: str) -> bytes:
    return f"<{tag}:{os.urandom(8).hex()}>".encode()


def test_a_burst_of_erasures_costs_one_purge_and_the_bytes_leave_the_disk(tmp_path: Path) -> None:
    erased = [(f"{ERASED}-{i}", _value(f"e{i}")) for i in range(12)]
    kept = _value("kept")

    async def scenario() -> None:
        node = OneNode(tmp_path)
        await node.start()
        try:
            await node.put(KEPT, "a", kept)
            for patient, value in erased:
                await node.put(patient, "a", value)
                await node.put(patient, "a", value + b"-v2")  # history too
            for i in range(40):  # filler: the log and the files hold more than the patients
                await node.put(f"filler-{i}", "a", b"f" * 100)
            await asyncio.gather(*(node.erase(p) for p, _ in erased))
            await node.settled()
            assert node.purger is not None and node.purger.rounds == 1  # coalesced
            assert node.logs_dropped == 1
            per_round = len(node.layout.purge_slices(0, 1, FAST.slices))
            assert node.slices >= per_round and node.purger.completed == len(erased)
            r = node.host.replicas[0]
            assert r.storage.first_index() > 60  # the log was dropped through the erasures
        finally:
            await node.stop()
        for _, value in erased:
            assert not _files_hold(node.cfg.data_dir, value), "an erased value is still on disk"
        assert _files_hold(node.cfg.data_dir, kept), "control: kept data must be on disk"

    asyncio.run(scenario())


def test_an_erasure_of_an_unknown_patient_costs_no_purge(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = OneNode(tmp_path)
        await node.start()
        try:
            await node.put(KEPT, "a", b"k")
            version = await node.erase("no-such-patient")
            assert version > 0
            await asyncio.sleep(FAST.settle_s * 3)
            assert node.purger is not None and node.purger.rounds == 0
            assert node.slices == 0 and node.logs_dropped == 0
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_purge_pending_at_a_stop_is_completed_after_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = _value("held")

    async def first_life() -> None:
        node = OneNode(tmp_path)
        assert node.purger is not None and node.purger.held
        await node.start()
        try:
            await node.put(ERASED, "a", value)
            await node.erase(ERASED)
            await asyncio.sleep(FAST.settle_s * 3)
            assert node.purger.rounds == 0  # held
            assert node.host.replicas[0].sm.store.obligations() != []
        finally:
            await node.stop()

    async def second_life() -> None:
        node = OneNode(tmp_path)
        assert node.purger is not None and not node.purger.held
        await node.start()
        try:
            await node.settled()
            assert node.purger.rounds == 1 and node.purger.completed == 1
        finally:
            await node.stop()

    monkeypatch.setenv(HOLD_ENV, "1")
    asyncio.run(first_life())
    assert _files_hold(tmp_path / "n1", value), "control: the held purge left the value on disk"
    monkeypatch.delenv(HOLD_ENV)
    asyncio.run(second_life())
    assert not _files_hold(tmp_path / "n1", value)


def test_a_scan_snapshot_opened_before_the_erasure_is_interrupted(tmp_path: Path) -> None:
    value = _value("pinned")

    async def scenario() -> None:
        node = OneNode(tmp_path)
        await node.start()
        try:
            await node.put(ERASED, "a", value)
            for i in range(20):
                await node.put(f"filler-{i}", "a", b"f")
            sm = node.host.replicas[0].sm
            scan = sm.read_snapshot()  # a slow analytics scan, between two pages
            page = scan.scan(b"", 5)
            assert not page.done
            await node.erase(ERASED)
            await node.settled()
            assert not _files_hold(node.cfg.data_dir, value), "the scan's snapshot pinned it"
            with pytest.raises(SnapshotInterrupted):
                scan.scan(page.resume_token, 5)
            scan.close()
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_replica_out_of_service_keeps_its_obligation_until_it_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica disabled (integrity failure) when its erasure applied cannot
    drop its log: the obligation stays on disk, and the next life of the node,
    with the replica in service, completes it."""
    value = _value("disabled")

    async def disabled_life() -> None:
        node = OneNode(tmp_path)
        assert node.purger is not None and node.purger.held
        await node.start()
        try:
            await node.put(ERASED, "a", value)
            for i in range(10):
                await node.put(f"filler-{i}", "a", b"f")
            await node.erase(ERASED)
            r = node.host.replicas[0]
            node.host.mark_broken(r, ValueError("planted integrity failure"))
            node.purger.held = False  # now let it try: the replica is out of service
            assert await node.purger.purge({0}) == set()
            assert r.sm.store.obligations() == [Obligation(r.applied, OBLIGATION_ERASE)]
            assert node.logs_dropped == 0 and node.purger.completed == 0
            assert node.slices > 0  # its files were compacted all the same
            assert r.storage.first_index() <= 2  # its log, writes included, is still there
        finally:
            await node.stop()

    async def repaired_life() -> None:
        node = OneNode(tmp_path)
        await node.start()
        try:
            await node.settled()
            assert node.purger is not None and node.purger.completed == 1
            assert node.host.replicas[0].storage.first_index() > 10
        finally:
            await node.stop()

    monkeypatch.setenv(HOLD_ENV, "1")
    asyncio.run(disabled_life())
    monkeypatch.delenv(HOLD_ENV)
    asyncio.run(repaired_life())
    assert not _files_hold(tmp_path / "n1", value)


def test_a_failed_purge_is_retried_and_the_obligation_kept_until_it_succeeds(
    tmp_path: Path,
) -> None:
    value = _value("retried")

    async def scenario() -> None:
        node = OneNode(tmp_path)
        fail_once = [True]
        slice_ = node.layout.compact_slice

        def flaky(start: bytes, stop: bytes) -> None:
            if fail_once[0]:
                fail_once[0] = False
                raise RuntimeError("planted compaction failure")
            slice_(start, stop)

        node.layout.compact_slice = flaky  # type: ignore[method-assign]
        await node.start()
        try:
            await node.put(ERASED, "a", value)
            await node.erase(ERASED)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            assert node.purger is not None
            while node.purger.rounds < 1 or fail_once[0]:
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            # The failed round kept the obligation.
            assert node.host.replicas[0].sm.store.obligations() != []
            await node.settled()
            assert node.purger.rounds == 2 and node.purger.completed == 1
        finally:
            await node.stop()
        assert not _files_hold(node.cfg.data_dir, value)

    asyncio.run(scenario())


def test_the_log_is_dropped_even_when_a_snapshot_at_the_erasure_is_stored_already(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A periodic snapshot taken right at the erasure's index keeps log entries
    behind it for slow followers: the purge must still drop them (it once gave
    up on "snapshot out of date" and left the patient's writes in the log)."""
    value = _value("periodic")

    async def scenario() -> None:
        node = OneNode(tmp_path)
        assert node.purger is not None and node.purger.held
        await node.start()
        try:
            await node.put(ERASED, "a", value)
            at = await node.erase(ERASED)
            r = node.host.replicas[0]
            assert r.applied == at
            conf = r.raw.status().conf_state
            data = r.sm.snapshot()
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Any] = loop.create_future()
            # What SnapshotPolicy.maybe_snapshot stores, between two turns, without compacting.
            node.host._turn_jobs.append(
                (lambda: node.layout.log_store.create_snapshot(0, at, conf, data), done)
            )
            node.host._wake.set()
            await done
            assert r.storage.first_index() <= at - 1  # the patient's entries are still there
            node.purger.held = False
            node.purger.notify(0)
            await node.settled()
            assert node.logs_dropped == 1 and r.storage.first_index() == at + 1
        finally:
            await node.stop()
        assert not _files_hold(node.cfg.data_dir, value)

    monkeypatch.setenv(HOLD_ENV, "1")
    asyncio.run(scenario())
