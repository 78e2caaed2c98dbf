"""Partition snapshots that stream: built, sent, staged and installed in
bounded pieces, off the event loop, and installed crash-safely.

A Raft snapshot in the consensus log is metadata only (index, term,
membership). Its data is the partition's state itself, so nothing is ever
materialized whole:

Sender. When Raft asks to send a snapshot, `SnapshotManager.outgoing` takes
a LevelDB snapshot of the partition on the event loop (where it matches the
applied index exactly) and re-labels the message with that applied index
and term: the data is at least as new as the snapshot Raft chose, and every
applied entry is committed, so this is safe (TiKV does the same). Worker
threads walk the LevelDB snapshot and yield ~1 MB chunks of the logical
stream (RecordStore.snapshot_stream). The first chunk declares an upper
bound of the stream's size: the partition's stored bytes, which bound the
logical stream because each logical item is smaller than its sealed
records.

Receiver. A `StagingSink` checks every chunk as it arrives (SnapshotParser:
header, items, counts, end marker) and writes it, sealed by the node's
codec, to a staging key range of the partition (P "t" "c" gen seq) in synced
~4 MB batches. More bytes than declared, a bad chunk, or a stream that ends
without its last chunk is refused and its staging discarded; only a
complete, checked stream gets a staging descriptor (P "t" "d" gen) and is
handed to Raft. Each stream stages under its own generation, so a second
stream never disturbs a staged one that is being installed.

Install (after Raft persisted the snapshot metadata and truncated its log):
  1. write the install marker (P "t" "m": generation, index, term), synced;
  2. delete the partition's old keys, in batches;
  3. re-key and seal the staged items into the partition, in ~4 MB batches;
  4. write the partition's applied index/term last, synced;
  5. clear the marker and the staging, synced.
A kill -9 anywhere leaves either the stored Raft snapshot ahead of the
applied index (crash before 1) or the marker (crash in 1..5); `recover_on_open`
sees either and finishes the install from the staging before the replica
serves (as etcd and TiKV do on start). Steps 2..4 are idempotent, so
finishing is redoing.

Every LevelDB write runs on the host's writer thread (one batch per job, so
Raft log writes interleave): the node keeps exactly two writers, which key
re-encryption relies on (node.key_rotation). Parsing, sealing and reading
run in this module's small thread pool.

Test-only crash points: MEDKV_TEST_ONLY_CRASH_AT=snapshot-after-persist |
snapshot-mid-install | snapshot-before-marker-clear makes the process exit
with code 86 at that step (logged loudly; never a config key).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack

from consensus.codec import decode_message
from consensus.types import Message, MessageType, Snapshot, SnapshotMeta
from node.errors import FailedPrecondition, InvalidArgument, Unavailable
from node.record_store import (
    PartitionMeta,
    RecordStore,
    SnapshotFormatError,
    SnapshotParser,
    WriteStage,
)
from node.sessions import check_session_blob
from node.settings import check_state_blob

if TYPE_CHECKING:
    from consensus.leveldb_storage import LevelDBGroupStorage
    from node.host import MultiRaftHost
    from node.state_machine import PartitionStateMachine
    from proto.medkv.v1 import raft_pb2

log = logging.getLogger("medkv.snapshots")

T = TypeVar("T")

CHUNK_BYTES = 1 << 20  # one SnapshotChunk's data
BATCH_BYTES = 4 << 20  # one staging or install write
DELETE_BATCH_KEYS = 20_000
# Header and end marker, which have no stored counterpart; and per stored
# value, the few bytes of framing a logical item may have beyond it (only
# without encryption, which adds more than that to every stored value).
_DECLARED_SLACK = 4096
_PER_KEY_SLACK = 8

STAGING_KIND = b"t"  # P "t" ...: staging and the install marker (see the module doc)
_CHUNK = b"c"
_DESCRIPTOR = b"d"
_MARKER = b"m"
_GEN = struct.Struct(">Q")
_SEQ = struct.Struct(">I")

CRASH_ENV = "MEDKV_TEST_ONLY_CRASH_AT"
CRASH_POINTS = (
    "snapshot-after-persist",
    "snapshot-mid-install",
    "snapshot-before-marker-clear",
)
CRASH_EXIT_CODE = 86


def crash_point(name: str) -> None:
    """Exit at once, as a kill -9 would, when the test-only env var names this step."""
    if os.environ.get(CRASH_ENV) == name:
        log.critical("TEST ONLY: %s=%s: the process exits now (code %d)", CRASH_ENV, name,
                     CRASH_EXIT_CODE)
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def announce_crash_points() -> None:
    """Say loudly, at start, that a test-only crash point is armed."""
    at = os.environ.get(CRASH_ENV)
    if at:
        known = at in CRASH_POINTS
        log.warning(
            "TEST ONLY: %s=%s is set: this node will exit with code %d at that step of a "
            "snapshot install%s", CRASH_ENV, at, CRASH_EXIT_CODE,
            "" if known else " (no such step: it never fires)",
        )


class SnapshotMissing(Exception):
    """The Raft snapshot is ahead of the state machine and no staged data matches it."""


# --- staging keys --------------------------------------------------------------


def _staging(store: RecordStore) -> bytes:
    return store.key_prefix + STAGING_KIND


def _chunk_prefix(store: RecordStore, gen: int) -> bytes:
    return _staging(store) + _CHUNK + _GEN.pack(gen)


def _chunk_key(store: RecordStore, gen: int, seq: int) -> bytes:
    return _chunk_prefix(store, gen) + _SEQ.pack(seq)


def _descriptor_key(store: RecordStore, gen: int) -> bytes:
    return _staging(store) + _DESCRIPTOR + _GEN.pack(gen)


def _marker_key(store: RecordStore) -> bytes:
    return _staging(store) + _MARKER


def _get_obj(store: RecordStore, key: bytes) -> Any | None:
    sealed = store.db.get(key)
    if sealed is None:
        return None
    return msgpack.unpackb(store.codec.open(key, sealed), raw=False, use_list=True)


def _put_obj(wb: Any, store: RecordStore, key: bytes, obj: Any) -> None:
    wb.put(key, store.codec.seal(key, msgpack.packb(obj, use_bin_type=True)))


def _descriptors(store: RecordStore) -> dict[int, list[int]]:
    """Staged generation -> [index, term, bytes, chunks], for complete streams."""
    prefix = _staging(store) + _DESCRIPTOR
    out: dict[int, list[int]] = {}
    with store.db.iterator(prefix=prefix, include_value=False) as it:
        keys = list(it)
    for key in keys:
        gen = _GEN.unpack_from(key, len(prefix))[0]
        obj = _get_obj(store, key)
        if type(obj) is list and len(obj) == 4 and all(type(v) is int for v in obj):
            out[gen] = obj
    return out


def _generations(store: RecordStore) -> set[int]:
    """Every generation with anything staged (complete or not)."""
    out: set[int] = set()
    for kind in (_CHUNK, _DESCRIPTOR):
        prefix = _staging(store) + kind
        key = prefix
        stop = prefix[:-1] + bytes([prefix[-1] + 1])
        while True:  # one seek per generation, not one step per chunk
            with store.db.iterator(start=key, stop=stop, include_value=False) as it:
                nxt = next(it, None)
            if nxt is None:
                break
            gen = _GEN.unpack_from(nxt, len(prefix))[0]
            out.add(gen)
            if gen == (1 << 64) - 1:
                break
            key = prefix + _GEN.pack(gen + 1)
    return out


# --- the install (synchronous; a worker thread, or the node's start) -------------

Writer = Callable[[Callable[[], None]], None]


def _direct(fn: Callable[[], None]) -> None:
    fn()


def _delete_generations(store: RecordStore, gens: set[int], write: Writer,
                        marker: bool = False) -> None:
    """Delete staged generations (and the marker). The marker and descriptors
    go first, in one synced write: a generation without its descriptor is
    never installed, so a crash while its chunks are deleted cannot leave a
    half-deleted one that looks complete."""
    heads = [_descriptor_key(store, g) for g in sorted(gens)]
    if marker:
        heads.insert(0, _marker_key(store))
    chunks: list[bytes] = []
    for gen in sorted(gens):
        with store.db.iterator(prefix=_chunk_prefix(store, gen), include_value=False) as it:
            chunks.extend(it)
    parts = [heads] + [
        chunks[i : i + DELETE_BATCH_KEYS] for i in range(0, len(chunks), DELETE_BATCH_KEYS)
    ]
    for part in parts:
        if not part:
            continue

        def delete(part: list[bytes] = part) -> None:
            with store.db.write_batch(sync=True) as wb:
                for k in part:
                    wb.delete(k)

        write(delete)


def _find_staged(store: RecordStore, index: int, term: int) -> int:
    matching = [g for g, d in _descriptors(store).items() if d[0] == index and d[1] == term]
    if not matching:
        raise SnapshotMissing(
            f"partition {store.partition}: no staged snapshot data for index {index}"
        )
    return max(matching)


def install_staged(store: RecordStore, index: int, term: int, write: Writer) -> None:
    """Replace the partition's state with the staged snapshot (index, term);
    see the module doc for the steps and why each is crash-safe."""
    gen = _find_staged(store, index, term)
    crash_point("snapshot-after-persist")

    def mark() -> None:
        with store.db.write_batch(sync=True) as wb:
            _put_obj(wb, store, _marker_key(store), [gen, index, term])

    write(mark)
    _replace_state(store, gen, index, term, write)
    crash_point("snapshot-before-marker-clear")
    stale = {g for g in _generations(store) if g <= gen}
    _delete_generations(store, stale, write, marker=True)


def _replace_state(store: RecordStore, gen: int, index: int, term: int, write: Writer) -> None:
    snap = store.db.snapshot()
    try:
        # Staging is what is being installed; erasure obligations are owed by
        # this replica's files and old log whatever the new state is.
        kept = (STAGING_KIND, RecordStore.OBLIGATION_KIND)
        for keys in store.keys_outside(kept, snap, DELETE_BATCH_KEYS):

            def delete(keys: list[bytes] = keys) -> None:
                with store.db.write_batch() as wb:
                    for k in keys:
                        wb.delete(k)

            write(delete)
    finally:
        snap.close()
    parser = SnapshotParser(store.partition, check_session_blob, check_state_blob)
    stage = WriteStage()
    size = 0
    mid_point_passed = False

    def commit(stage: WriteStage, sync: bool) -> None:
        write(lambda: store.commit(stage, sync=sync))

    with store.db.iterator(prefix=_chunk_prefix(store, gen)) as it:
        for key, sealed in it:
            for item in parser.feed(store.codec.open(key, sealed)):
                size += store.stage_item(stage, item)
                if size >= BATCH_BYTES:
                    commit(stage, False)
                    stage, size = WriteStage(), 0
                    if not mid_point_passed:
                        crash_point("snapshot-mid-install")
                        mid_point_passed = True
    meta = parser.finish()
    if (meta.applied_index, meta.applied_term) != (index, term):
        raise SnapshotFormatError("staged snapshot data does not match its Raft snapshot")
    if not mid_point_passed:
        commit(stage, False)
        stage = WriteStage()
        crash_point("snapshot-mid-install")
    store.put_meta(stage, meta)
    # The replaced state and log may hold data the sender had erased since:
    # the purge this owes is recorded in the same (last, synced) write.
    store.stage_snapshot_install_obligation(stage, meta.applied_index)
    commit(stage, True)


def recover_on_open(storage: LevelDBGroupStorage, sm: PartitionStateMachine) -> bool:
    """At open, before Raft reads anything: finish a snapshot install that a
    crash interrupted. True if one was finished. Raises SnapshotMissing when
    the log needs a snapshot that was never staged (the replica is damaged)."""
    store = sm.store
    marker = _get_obj(store, _marker_key(store))
    log_start = storage.first_index() - 1
    if marker is None and sm.applied_index >= log_start:
        stale = _generations(store)
        if stale:  # streams that were refused, superseded or cut by a crash
            _delete_generations(store, stale, _direct)
        return False
    if marker is not None:
        _, index, term = marker
    else:
        meta = storage.snapshot_meta()
        index, term = meta.index, meta.term
    log.warning(
        "partition %d: a snapshot install at index %d did not finish (applied index %d); "
        "finishing it before serving", store.partition, index, sm.applied_index,
    )
    install_staged(store, index, term, _direct)
    sm.reload()
    log.info("partition %d: snapshot at index %d installed at start", store.partition, index)
    return True


# --- sending ------------------------------------------------------------------------


class OutgoingSnapshot:
    """One snapshot being sent: a pinned LevelDB snapshot, read in worker threads."""

    def __init__(self, pool: Executor, store: RecordStore, snap: Any, message: Message) -> None:
        self._pool = pool
        self._store = store
        self._snap = snap
        self.message = message
        self._lock = threading.Lock()
        self._gen: Iterator[bytes] | None = None
        self._closed = False

    async def declared_size(self) -> int:
        """An upper bound of the stream: the partition's stored bytes."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._size)

    def _size(self) -> int:
        skip = self._store.key_prefix + STAGING_KIND
        total = _DECLARED_SLACK
        with self._lock, self._snap.iterator(prefix=self._store.key_prefix) as it:
            for key, value in it:
                if not key.startswith(skip):
                    total += len(key) + len(value) + _PER_KEY_SLACK
        return total

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            piece = await loop.run_in_executor(self._pool, self._next)
            if piece is None:
                return
            yield piece

    def _next(self) -> bytes | None:
        with self._lock:
            if self._closed:
                return None
            if self._gen is None:
                self._gen = self._store.snapshot_stream(self._snap, CHUNK_BYTES)
            return next(self._gen, None)

    def close(self) -> None:
        """Release the LevelDB snapshot (in a worker, after any read in flight)."""

        def close() -> None:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                if self._gen is not None:
                    self._gen.close()  # type: ignore[attr-defined]
                self._snap.close()

        try:
            self._pool.submit(close)
        except RuntimeError:  # the node is stopping: no read is in flight any more
            close()


# --- receiving ----------------------------------------------------------------------


class StagingSink:
    """One incoming snapshot stream, checked and staged as it arrives."""

    def __init__(
        self, mgr: SnapshotManager, store: RecordStore, gen: int, message: Message, declared: int
    ) -> None:
        self._mgr = mgr
        self._store = store
        self.gen = gen
        self.message = message
        self.declared = declared
        self.received = 0
        self.started = time.monotonic()
        self._parser = SnapshotParser(store.partition, check_session_blob, check_state_blob)
        self._seq = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0

    @property
    def group(self) -> int:
        return self._store.partition

    async def feed(self, data: bytes) -> None:
        if self.received + len(data) > self.declared:
            raise InvalidArgument(
                f"snapshot of partition {self.group} sent more than the {self.declared} bytes "
                "it declared"
            )
        self.received += len(data)
        if data:
            await self._mgr.run(self._feed, data)

    def _feed(self, data: bytes) -> None:
        for _ in self._parser.feed(data):
            pass  # checked now; re-keyed and sealed into the partition at install
        key = _chunk_key(self._store, self.gen, self._seq)
        self._seq += 1
        self._pending.append((key, self._store.codec.seal(key, data)))
        self._pending_bytes += len(data)
        if self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self, extra: tuple[bytes, Any] | None = None) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        store = self._store

        def write() -> None:
            with store.db.write_batch(sync=True) as wb:
                for k, v in pending:
                    wb.put(k, v)
                if extra is not None:
                    _put_obj(wb, store, extra[0], extra[1])

        self._mgr.write(write)

    async def finish(self) -> None:
        await self._mgr.run(self._finish)

    def _finish(self) -> None:
        meta = self._parser.finish()
        snap = self.message.snapshot
        assert snap is not None
        if (meta.applied_index, meta.applied_term) != (snap.meta.index, snap.meta.term):
            raise SnapshotFormatError(
                f"snapshot data is at index {meta.applied_index}, its header says {snap.meta.index}"
            )
        # The descriptor makes the generation complete: written last, with the rest.
        self._flush((_descriptor_key(self._store, self.gen),
                     [snap.meta.index, snap.meta.term, self.received, self._seq]))

    def discard(self) -> None:
        """Drop what this stream staged (never raises; runs in the background)."""

        def drop() -> None:
            try:
                _delete_generations(self._store, {self.gen}, self._mgr.write)
            except Exception as e:  # a later start or install cleans up anyway
                log.warning("partition %d: discarding a refused snapshot failed: %s",
                            self.group, type(e).__name__)

        self._mgr.submit(drop)


class SnapshotManager:
    """The host's snapshot side: outgoing streams, staging, installs."""

    def __init__(self, host: MultiRaftHost, workers: int = 2) -> None:
        self._host = host
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medkv-snap")
        self._receiving: set[int] = set()
        self._installing: set[int] = set()
        self._gens = itertools.count(1)
        self._gen_floor: dict[int, int] = {}
        self._closing = threading.Event()
        announce_crash_points()

    # -- plumbing

    def write(self, fn: Callable[[], None]) -> None:
        """Run one LevelDB write on the host's writer thread and wait for it
        (from a worker thread: the event loop never waits here). Once the
        node is stopping, refused: an install cut short between two writes is
        finished at the next start (the marker says so)."""
        if self._closing.is_set():
            raise RuntimeError("the node is stopping")
        self._host.writer.submit(fn).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def submit(self, fn: Callable[[], None]) -> None:
        self._pool.submit(fn)

    def drain(self) -> None:
        """Wait for every queued job (refused streams' discards included), then stop."""
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Stop: work in flight ends at its next write (at most one batch)."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def busy(self, group: int) -> bool:
        """Whether a snapshot of the group is being received or installed here."""
        return group in self._receiving or group in self._installing

    # -- sending

    def outgoing(self, group: int, m: Message) -> OutgoingSnapshot | None:
        """The data for a SNAP message Raft wants sent, pinned now (on the loop,
        where it matches the applied index); None if this replica cannot send."""
        r = self._host.replicas.get(group)
        if r is None or r.broken or r.installing or m.snapshot is None:
            return None
        store = r.sm.store
        snap = store.db.snapshot()
        meta: PartitionMeta = store.read_meta(snap)
        if meta.applied_index < m.snapshot.meta.index or meta.applied_index == 0:
            snap.close()
            return None
        conf = r.raw.status().conf_state
        msg = dataclasses.replace(
            m,
            snapshot=Snapshot(
                meta=SnapshotMeta(index=meta.applied_index, term=meta.applied_term,
                                  conf_state=conf)
            ),
        )
        return OutgoingSnapshot(self._pool, store, snap, msg)

    # -- receiving

    async def receive(
        self,
        chunks: AsyncIterator[raft_pb2.SnapshotChunk],
        max_bytes: int,
    ) -> tuple[int, Message]:
        """Check and stage an incoming stream; (group, SNAP message) to hand
        to Raft once it is complete. Raises NodeError to refuse it (and then
        nothing of it stays on disk)."""
        sink: StagingSink | None = None
        ended = False
        try:
            async for c in chunks:
                if sink is None:
                    sink = self._begin(c, max_bytes)
                if c.offset != sink.received:
                    raise InvalidArgument(
                        f"snapshot chunk at offset {c.offset}, expected {sink.received}"
                    )
                try:
                    await sink.feed(c.data)
                except SnapshotFormatError as e:
                    raise InvalidArgument(f"snapshot of partition {sink.group}: {e}") from None
                if c.last:
                    ended = True
                    break
            if sink is None:
                raise InvalidArgument("empty snapshot stream")
            if not ended:
                raise InvalidArgument(
                    f"snapshot stream of partition {sink.group} ended without its last chunk "
                    f"after {sink.received} of at most {sink.declared} bytes; nothing installed"
                )
            try:
                await sink.finish()
            except SnapshotFormatError as e:
                raise InvalidArgument(f"snapshot of partition {sink.group}: {e}") from None
            log.info("partition %d: snapshot staged (%.1f MB in %.1f s)", sink.group,
                     sink.received / 1e6, time.monotonic() - sink.started)
            return sink.group, sink.message
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        finally:
            if sink is not None:
                self._receiving.discard(sink.group)

    def _begin(self, c: raft_pb2.SnapshotChunk, max_bytes: int) -> StagingSink:
        host = self._host
        if not c.header:
            raise InvalidArgument("snapshot stream does not start with a header")
        if c.to_node != host.node_id:
            raise InvalidArgument(
                f"snapshot addressed to node {c.to_node} reached node {host.node_id}"
            )
        try:
            msg = decode_message(c.header)
        except Exception:
            raise InvalidArgument("snapshot header does not decode") from None
        if msg.type != MessageType.SNAP or msg.snapshot is None:
            raise InvalidArgument("snapshot header is not a snapshot message")
        group = c.group
        r = host.replicas.get(group)
        if r is None:
            raise FailedPrecondition(f"node {host.node_id} holds no replica of partition {group}")
        if r.broken:
            raise FailedPrecondition(r.broken)
        if c.from_node != msg.frm:
            raise InvalidArgument(
                f"snapshot stream from node {c.from_node} carries a header from node {msg.frm}"
            )
        host.check_inbound(group, msg, msg.frm)
        if c.total_size == 0 or c.total_size > max_bytes:
            raise InvalidArgument(
                f"snapshot of partition {group} declares {c.total_size} bytes; the limit is "
                f"1..{max_bytes}"
            )
        if group in self._receiving or r.installing:
            raise Unavailable(
                f"node {host.node_id} is already receiving or installing a snapshot of "
                f"partition {group}"
            )
        if msg.snapshot.meta.index <= r.applied:
            raise FailedPrecondition(
                f"partition {group} on node {host.node_id} has applied index {r.applied}, "
                f"not behind the snapshot at {msg.snapshot.meta.index}"
            )
        self._receiving.add(group)
        log.info("partition %d: receiving a snapshot at index %d from node %d (at most %.1f MB)",
                 group, msg.snapshot.meta.index, msg.frm, c.total_size / 1e6)
        return StagingSink(self, r.sm.store, self._next_gen(r.sm.store), msg, c.total_size)

    def _next_gen(self, store: RecordStore) -> int:
        """A generation above any on disk (a restarted node continues past them)."""
        floor = self._gen_floor.get(store.partition)
        if floor is None:
            floor = max(_generations(store), default=0)
            self._gen_floor[store.partition] = floor
        gen = max(next(self._gens), floor + 1)
        self._gen_floor[store.partition] = gen
        return gen

    # -- installing

    async def install(self, sm: PartitionStateMachine, meta: SnapshotMeta) -> None:
        """Install the staged snapshot Raft just persisted; returns once the
        state machine reflects it and the staging is gone."""
        p = sm.store.partition
        self._installing.add(p)
        started = time.monotonic()
        try:
            await self.run(install_staged, sm.store, meta.index, meta.term, self.write)
            sm.reload()
        finally:
            self._installing.discard(p)
        log.info("partition %d: snapshot at index %d installed in %.1f s", p, meta.index,
                 time.monotonic() - started)


__all__ = [
    "CRASH_ENV",
    "CRASH_EXIT_CODE",
    "CRASH_POINTS",
    "OutgoingSnapshot",
    "SnapshotManager",
    "SnapshotMissing",
    "StagingSink",
    "crash_point",
    "install_staged",
    "recover_on_open",
]
