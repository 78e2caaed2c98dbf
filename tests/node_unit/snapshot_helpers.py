"""Shared pieces of the snapshot stream and recovery tests: state machines on
real LevelDB, a stand-in for the host (the writer thread and replica table
node.snapshots uses), and the sender/receiver plumbing without gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import plyvel

from consensus.codec import encode_message
from consensus.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from node.commands import Delete, Put, RegisterSession, encode_command
from node.record_store import RecordStore, blake2b_key_hasher
from node.snapshots import STAGING_KIND, SnapshotManager
from node.state_machine import PartitionStateMachine
from proto.medkv.v1 import raft_pb2
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec

PARTITION = 5
STATE_PREFIX = b"s"
CONF = ConfState(voters=(1, 2, 3))


def open_sm(db: plyvel.DB, hash_key: bytes = HASH_KEY) -> PartitionStateMachine:
    store = RecordStore(
        db.prefixed_db(STATE_PREFIX), PARTITION, TaggedXorCodec(), blake2b_key_hasher(hash_key)
    )
    return PartitionStateMachine(store)


Write = tuple[str, str, bytes, bool]  # patient, record, value, delete


def apply_writes(sm: PartitionStateMachine, writes: Sequence[Write], term: int = 2) -> None:
    """Apply writes as committed entries: a few client sessions are registered
    first (each call opens its own), so sessions exist in snapshots too."""
    entries = []
    index = sm.applied_index
    sessions: dict[bytes, int] = {}
    for n in range(3):
        cid = bytes([1 + n]) * 16
        index += 1
        sessions[cid] = index  # a session's id is the index of its registration
        entries.append((index, term, encode_command(
            RegisterSession(ts_ms=1_000, client_id=cid, nonce=index)
        )))
    for i, (p, r, v, delete) in enumerate(writes):
        index += 1
        cid = bytes([1 + i % 3]) * 16
        head: dict[str, Any] = {
            "client_id": cid, "session": sessions[cid], "seq": 1 + i, "ack_below": 1 + i,
            "ts_ms": 1_000 + i, "patient_id": p,
        }
        cmd = Delete(**head, record_id=r) if delete else Put(**head, record_id=r, value=v)
        entries.append((index, term, encode_command(cmd)))
    if writes:
        sm.apply(entries)


def staging_keys(sm: PartitionStateMachine) -> list[bytes]:
    store = sm.store
    with store.db.iterator(prefix=store.key_prefix + STAGING_KIND, include_value=False) as it:
        return list(it)


@dataclass
class FakeReplica:
    sm: PartitionStateMachine
    broken: str = ""
    installing: bool = False
    raw: Any = None

    @property
    def applied(self) -> int:
        return self.sm.applied_index


@dataclass
class _Status:
    conf_state: ConfState = CONF


class _Raw:
    def status(self) -> _Status:
        return _Status()


@dataclass
class FakeHost:
    """What SnapshotManager uses of MultiRaftHost: node id, writer, replicas."""

    node_id: int
    sms: Iterable[PartitionStateMachine]
    writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="test-writer")
    )
    replicas: dict[int, FakeReplica] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sm in self.sms:
            self.replicas[sm.store.partition] = FakeReplica(sm, raw=_Raw())

    def check_inbound(self, group: int, m: Message, sender: int) -> None:
        """The Raft guard (node.raft_guard) is tested on its own; here every
        sender passes."""

    def close(self, mgr: SnapshotManager) -> None:
        mgr.drain()  # the discards of refused streams run in the background
        mgr.close()
        self.writer.shutdown(wait=True)


def snap_message(index: int, term: int, to: int = 2) -> Message:
    return Message(
        MessageType.SNAP, to=to, frm=1, term=term,
        snapshot=Snapshot(meta=SnapshotMeta(index=index, term=term, conf_state=CONF)),
    )


async def send_side(mgr: SnapshotManager) -> tuple[Message, int, bytes]:
    """What the sender streams: (relabelled message, declared bound, data)."""
    out = mgr.outgoing(PARTITION, snap_message(1, 1))
    assert out is not None
    try:
        declared = await out.declared_size()
        data = b"".join([c async for c in out.chunks()])
    finally:
        out.close()
    return out.message, declared, data


def chunks_of(
    message: Message, declared: int, data: bytes, piece: int, last: bool = True,
    to: int = 2,
) -> list[raft_pb2.SnapshotChunk]:
    header = encode_message(message)
    out = []
    for off in range(0, len(data), piece):
        out.append(raft_pb2.SnapshotChunk(
            from_node=1, to_node=to, group=PARTITION, header=header if off == 0 else b"",
            offset=off, data=data[off : off + piece], total_size=declared if off == 0 else 0,
        ))
    if last:
        out.append(raft_pb2.SnapshotChunk(
            from_node=1, to_node=to, group=PARTITION, offset=len(data), last=True,
            header=b"" if out else header, total_size=0 if out else declared,
        ))
    return out


async def stream(chunks: list[raft_pb2.SnapshotChunk]) -> AsyncIterator[raft_pb2.SnapshotChunk]:
    for c in chunks:
        yield c
        await asyncio.sleep(0)
