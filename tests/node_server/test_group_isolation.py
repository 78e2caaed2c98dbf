"""One group's failure never fails another group's turn (node.group_persist).

A group is poisoned the way a hostile heartbeat poisoned it before the guard
existed: its core adopts term 2^64-1, and its next election's term no longer
fits the disk encoding. Before, that failed the one shared write of every
turn, so every partition of the node stopped; now that group alone is out of
service, the others go on writing, and at the next start the poisoned group
is out of service with a message naming the problem instead of failing every
turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from consensus.leveldb_storage import GroupUpdate, LevelDBLogStore
from consensus.types import Entry, HardState, Message, MessageType
from node import commands as cmd
from node.config import parse_config
from node.errors import DataLoss, NodeError
from node.host import MultiRaftHost
from node.storage_layout import StorageLayout, plaintext_codec_for_tests
from tests.host_writes import open_session, propose_write

BIG = (1 << 64) - 1


def _open(tmp_path: Path) -> tuple[MultiRaftHost, StorageLayout]:
    cfg = parse_config(
        {
            "node_id": 1, "listen": "127.0.0.1:1", "data_dir": "n1",
            "partitions": 2, "replication": 1,
            "peers": [{"id": 1, "address": "127.0.0.1:1"}],
            "insecure": True,  # the host alone: access control is tested elsewhere
        },
        tmp_path,
    )
    layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
    return MultiRaftHost(cfg, layout.log_store, layout.state_machine, lambda msgs: None), layout


async def _put(host: MultiRaftHost, partition: int, seq: int) -> int:
    """One write in a fresh registered session (writes outside one are refused)."""
    cid = os.urandom(16)
    session = await open_session(host, partition, cid, nonce=seq)
    res = await propose_write(host, partition, cmd.Put(
        client_id=cid, session=session, seq=1, ack_below=0, ts_ms=0,
        patient_id="p", record_id="r", value=b"v",
    ))
    assert res.ok, res
    return res.version


async def _leaders(host: MultiRaftHost) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not all(r.is_leader for r in host.replicas.values()):
        assert loop.time() < deadline, "no leaders"
        await asyncio.sleep(0.05)


def test_a_group_that_cannot_be_persisted_is_disabled_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def poison_and_write() -> None:
        host, layout = _open(tmp_path)
        fatal = asyncio.Event()
        host.start(on_fatal=fatal.set)
        try:
            await _leaders(host)
            r0 = host.replicas[0]
            # What an unguarded heartbeat with term 2^64-1 did: straight into the
            # core (the guard would refuse it, tests/node_server/test_raft_guard.py).
            forged = Message(MessageType.HEARTBEAT, to=1, frm=2, term=BIG, commit=0)
            host._enqueue(lambda: r0.raw.step(forged))
            # The core follows term 2^64-1, times out, and its election's term
            # 2^64 cannot be encoded: group 0 is disabled, alone.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not r0.broken:
                assert loop.time() < deadline, "group 0 was never disabled"
                await asyncio.sleep(0.05)
            # Group 1 goes on: writes commit and apply.
            for seq in range(1, 4):
                assert await _put(host, 1, seq) > 0
            with pytest.raises(DataLoss):
                host.replica(0)
            assert host._task is not None and not host._task.done()
            assert not fatal.is_set()
        finally:
            await host.stop()
            layout.close()

    with caplog.at_level(logging.ERROR, logger="medkv.host"):
        asyncio.run(poison_and_write())
    lines = [r.getMessage() for r in caplog.records if r.name == "medkv.host"]
    assert any(
        "partition 0: its Raft output could not be persisted (OverflowError" in x
        for x in lines
    ), lines
    assert not any("raft turn failed" in x for x in lines), lines

    async def restart() -> None:
        host, layout = _open(tmp_path)
        host.start()
        try:
            # The stored term 2^64-1 is impossible: out of service at open,
            # named; the other partition elects and serves.
            assert 0 in host.broken_at_start
            assert "impossible Raft state" in host.broken_at_start[0]
            await asyncio.wait_for(_until_leader(host, 1), 15)
            assert await _put(host, 1, 1) > 0
            with pytest.raises(NodeError) as e:
                host.replica(0)
            assert "impossible Raft state" in e.value.message
        finally:
            await host.stop()
            layout.close()

    asyncio.run(restart())


async def _until_leader(host: MultiRaftHost, p: int) -> None:
    while not host.replicas[p].is_leader:
        await asyncio.sleep(0.05)


def test_write_isolated_writes_the_good_groups_in_one_batch(tmp_path: Path) -> None:
    import plyvel

    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    store = LevelDBLogStore(db)
    failed = store.write_isolated(
        [
            GroupUpdate(1, HardState(2, 1, 0), [Entry(1, 2, b"a"), Entry(2, 2, b"b")]),
            GroupUpdate(2, HardState(BIG + 1, 0, 0)),  # cannot be encoded
            GroupUpdate(3, entries=[Entry(5, 1, b"gap")]),  # breaks the log's invariants
            GroupUpdate(4, HardState(7, 0, 0)),
        ]
    )
    assert sorted(failed) == [2, 3]
    assert isinstance(failed[2], OverflowError)
    assert "gap" in str(failed[3])
    db.close()
    db = plyvel.DB(str(tmp_path / "db"))
    store = LevelDBLogStore(db)
    assert store.group(1).last_index() == 2
    assert store.group(1).initial_state()[0] == HardState(2, 1, 0)
    assert store.group(4).initial_state()[0] == HardState(7, 0, 0)
    assert not store.has_group(2) and not store.has_group(3)
    db.close()
