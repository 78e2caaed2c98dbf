"""Node-to-node Raft transport over gRPC.

One long-lived client stream per peer carries a RaftBatch per event-loop
turn: every group's messages to that peer, with heartbeats coalesced into
small fixed records instead of encoded messages (as CockroachDB does), so an
idle cluster of many groups costs one small batch per tick per peer.

Raft tolerates lost messages, so the transport never blocks the host: when a
peer is down or slow, batches beyond a bounded queue are dropped and the
groups concerned are told the peer is unreachable. Snapshots travel on their
own RPC in chunks, so a large one never stalls the message stream; their data
is read from a LevelDB snapshot as it is sent (node.snapshots), never held whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import grpc

from consensus.codec import CodecError, decode_message, encode_message
from consensus.types import Message, MessageType
from node.rate_log import RateLimitedLog
from node.tls import TlsSettings
from proto.medkv.v1 import raft_pb2, raft_pb2_grpc

if TYPE_CHECKING:
    from node.snapshots import OutgoingSnapshot

log = logging.getLogger("medkv.transport")
_refused = RateLimitedLog(log)
_REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)

# A snapshot stream may take this long per MB declared, plus a fixed minute.
_SNAPSHOT_SECONDS_PER_MB = 0.25
_QUEUE_BATCHES = 256
_HEARTBEATS = (MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP)

# (group, message) pairs: the unit the host hands to and receives from the transport.
GroupMessages = list[tuple[int, Message]]


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def open_channel(address: str, tls: TlsSettings | None, max_message_bytes: int) -> grpc.aio.Channel:
    """A channel to a peer: mutual TLS when configured, else plaintext."""
    opts = grpc_options(max_message_bytes)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=opts)


def encode_batch(from_node: int, to_node: int, msgs: GroupMessages) -> raft_pb2.RaftBatch:
    batch = raft_pb2.RaftBatch(from_node=from_node, to_node=to_node)
    for group, m in msgs:
        if m.type in _HEARTBEATS:
            batch.heartbeats.append(
                raft_pb2.CoalescedHeartbeat(
                    group=group,
                    term=m.term,
                    commit=m.commit,
                    context=m.context,
                    response=m.type == MessageType.HEARTBEAT_RESP,
                    reject=m.reject,
                )
            )
        else:
            batch.messages.append(raft_pb2.GroupMessage(group=group, message=encode_message(m)))
    return batch


def decode_batch(batch: raft_pb2.RaftBatch) -> GroupMessages:
    """Every message of the batch; raises CodecError if one does not decode."""
    out, bad = decode_batch_items(batch)
    if bad:
        raise CodecError(f"partition {bad[0][0]}: {bad[0][1]}")
    return out


def decode_batch_items(batch: raft_pb2.RaftBatch) -> tuple[GroupMessages, list[tuple[int, str]]]:
    """The messages of the batch that decode, and (group, problem) for each
    that does not: one garbled message must not hide the others."""
    out: GroupMessages = []
    bad: list[tuple[int, str]] = []
    for hb in batch.heartbeats:
        out.append(
            (
                hb.group,
                Message(
                    type=MessageType.HEARTBEAT_RESP if hb.response else MessageType.HEARTBEAT,
                    to=batch.to_node,
                    frm=batch.from_node,
                    term=hb.term,
                    commit=hb.commit,
                    context=hb.context,
                    reject=hb.reject,
                ),
            )
        )
    for gm in batch.messages:
        try:
            out.append((gm.group, decode_message(gm.message)))
        except CodecError as e:
            bad.append((gm.group, f"not a valid Raft message ({e})"))
    return out, bad


# (peer, group, term, index, time_ms): a leader's confirmed pair for a follower.
ClosedPairs = list[tuple[int, int, int, int, int]]


def decode_closed(batch: raft_pb2.RaftBatch) -> list[tuple[int, int, int, int]]:
    """The batch's confirmed pairs as (group, term, index, time_ms)."""
    return [(c.group, c.term, c.index, c.time_ms) for c in batch.closed]


class _PeerLink:
    """The outbound stream to one peer, reconnecting with backoff."""

    def __init__(self, transport: PeerTransport, peer_id: int, address: str) -> None:
        self.t = transport
        self.peer_id = peer_id
        self.address = address
        # None is the stop sentinel: it ends the request stream so that
        # closing the channel does not wait on a generator parked in get().
        self.queue: asyncio.Queue[raft_pb2.RaftBatch | None] = asyncio.Queue(_QUEUE_BATCHES)
        self.channel: grpc.aio.Channel | None = None
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def stub(self) -> raft_pb2_grpc.RaftTransportStub:
        if self.channel is None:
            self.channel = open_channel(self.address, self.t.tls, self.t.max_message_bytes)
        return raft_pb2_grpc.RaftTransportStub(self.channel)

    async def _outbound(self) -> AsyncIterator[raft_pb2.RaftBatch]:
        while (batch := await self.queue.get()) is not None:
            yield batch

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                call = self.stub().Stream(self._outbound())
                await call.wait_for_connection()
                if not self.connected:
                    log.info("connected to node %d", self.peer_id)
                self.connected = True
                backoff = 0.05
                async for _ack in call:
                    pass
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() in _REFUSALS:
                    # The peer's guard refused something we sent (node.raft_guard):
                    # a bug on one side or the other, worth a line, not a flood.
                    _refused.warning(
                        (self.peer_id, e.code()), "node %d refused our Raft messages (%s): %s",
                        self.peer_id, e.code().name, e.details(),
                    )
                elif self.connected:  # log the change of state, not every retry
                    log.info("lost node %d: %s", self.peer_id, e.code().name)
            except Exception:  # keep the link alive whatever one attempt hit
                log.exception("stream to node %d failed", self.peer_id)
            self.connected = False
            self._drop_queued()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def _drop_queued(self) -> None:
        groups: set[int] = set()
        while not self.queue.empty():
            b = self.queue.get_nowait()
            if b is not None:
                groups.update(gm.group for gm in b.messages)
        if groups:
            self.t.on_unreachable(self.peer_id, sorted(groups))

    def enqueue(self, batch: raft_pb2.RaftBatch) -> None:
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.t.on_unreachable(self.peer_id, sorted({gm.group for gm in batch.messages}))

    async def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 1.0)
        if self.channel is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.channel.close(), 1.0)


class PeerTransport:
    """Sends the host's messages to peers; snapshots on a separate chunked RPC."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        on_unreachable: Callable[[int, Sequence[int]], None],
        on_snapshot_done: Callable[[int, int, bool], None],
        max_message_bytes: int = 8 << 20,
        tls: TlsSettings | None = None,
        snapshot_source: Callable[[int, Message], OutgoingSnapshot | None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.tls = tls
        self.on_unreachable = on_unreachable
        self.on_snapshot_done = on_snapshot_done
        self.snapshot_source = snapshot_source
        self.max_message_bytes = max_message_bytes
        self.links = {
            pid: _PeerLink(self, pid, addr) for pid, addr in peers.items() if pid != node_id
        }
        self._snapshot_tasks: set[asyncio.Task[None]] = set()
        self._started = False

    def start(self) -> None:
        self._started = True
        for link in self.links.values():
            link.task = asyncio.get_running_loop().create_task(link.run())

    def set_peers(self, peers: dict[int, str]) -> None:
        """Follow the cluster's membership (node.cluster): a link to each new
        member, none to a removed one, a new link where an address changed."""
        for pid in [p for p in self.links if p not in peers]:
            link = self.links.pop(pid)
            asyncio.get_running_loop().create_task(link.close())
        for pid, addr in peers.items():
            if pid == self.node_id:
                continue
            old = self.links.get(pid)
            if old is not None and old.address == addr:
                continue
            if old is not None:
                asyncio.get_running_loop().create_task(old.close())
            link = self.links[pid] = _PeerLink(self, pid, addr)
            if self._started:
                link.task = asyncio.get_running_loop().create_task(link.run())

    def send(self, msgs: GroupMessages) -> None:
        """Queue one batch per peer; never blocks."""
        per_peer: dict[int, GroupMessages] = {}
        for group, m in msgs:
            if m.type == MessageType.SNAP:
                self._send_snapshot(group, m)
            else:
                per_peer.setdefault(m.to, []).append((group, m))
        for peer, pm in per_peer.items():
            link = self.links.get(peer)
            if link is not None:
                link.enqueue(encode_batch(self.node_id, peer, pm))

    def announce(self, pairs: ClosedPairs) -> None:
        """Queue one batch per peer of confirmed pairs (node/staleness.py);
        never blocks, and a dropped batch only leaves a follower staler."""
        per_peer: dict[int, list[raft_pb2.ClosedTimestamp]] = {}
        for peer, group, term, index, time_ms in pairs:
            per_peer.setdefault(peer, []).append(
                raft_pb2.ClosedTimestamp(group=group, term=term, index=index, time_ms=time_ms)
            )
        for peer, closed in per_peer.items():
            link = self.links.get(peer)
            if link is not None:
                link.enqueue(raft_pb2.RaftBatch(from_node=self.node_id, to_node=peer, closed=closed))

    def _send_snapshot(self, group: int, m: Message) -> None:
        link = self.links.get(m.to)
        if link is None:
            return
        task = asyncio.get_running_loop().create_task(self._stream_snapshot(link, group, m))
        self._snapshot_tasks.add(task)
        task.add_done_callback(self._snapshot_tasks.discard)

    async def _stream_snapshot(self, link: _PeerLink, group: int, m: Message) -> None:
        # Pinned now, on the loop, so the data matches the applied index it claims.
        out = self.snapshot_source(group, m) if self.snapshot_source is not None else None
        if out is None:
            self.on_snapshot_done(group, m.to, False)
            return
        ok = False
        try:
            total = await out.declared_size()
            header = encode_message(out.message)

            async def chunks() -> AsyncIterator[raft_pb2.SnapshotChunk]:
                offset = 0
                async for piece in out.chunks():
                    yield raft_pb2.SnapshotChunk(
                        from_node=self.node_id, to_node=m.to, group=group,
                        header=header if offset == 0 else b"", offset=offset, data=piece,
                        total_size=total if offset == 0 else 0,
                    )
                    offset += len(piece)
                # The last chunk says the stream is complete: one that ends
                # without it is refused, never installed.
                yield raft_pb2.SnapshotChunk(
                    from_node=self.node_id, to_node=m.to, group=group, offset=offset, last=True
                )

            timeout = 60.0 + total / 1e6 * _SNAPSHOT_SECONDS_PER_MB
            ack = await link.stub().Snapshot(chunks(), timeout=timeout)
            ok = ack.accepted
            if not ok:
                log.warning("node %d refused a snapshot of partition %d: %s", m.to, group, ack.message)
        except grpc.aio.AioRpcError as e:
            log.warning(
                "snapshot of partition %d to node %d failed: %s %s",
                group, m.to, e.code().name, e.details() if e.code() in _REFUSALS else "",
            )
        finally:
            out.close()
        self.on_snapshot_done(group, m.to, ok)

    async def close(self) -> None:
        for t in list(self._snapshot_tasks):
            t.cancel()
        for link in self.links.values():
            await link.close()
