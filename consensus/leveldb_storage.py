"""Raft log storage for many groups in one LevelDB database, with group commit.

Why one database for every group: a node hosts many Raft groups, and the
persistence contract (storage.py) wants each Ready durable before its messages
leave. One synced WriteBatch per event-loop turn, holding every group's new
entries and hard states, turns N fsyncs into one (``LevelDBLogStore.write``).

Key layout (all integers big-endian, fixed width, so LevelDB's byte order is
numeric order and a group's log is one contiguous key range)::

    prefix | group id (8 bytes) | kind (1 byte) | index (8 bytes)

Keys carry no patient data; every value goes through ``codec.seal(key, v)``
on write and ``codec.open(key, v)`` on read, so the node can bind each
AES-GCM ciphertext to its key. Values are msgpack.

Kinds: ``e`` log entry (index = its log index); ``h`` hard state, ``l`` log
start (index and term of first_index()-1), ``s`` snapshot metadata and ``d``
snapshot data (index 0 for those four singletons).

Raft asks ``term()``/``last_index()`` on nearly every step, so each group
keeps its bounds, hard state, snapshot metadata and the terms of its most
recent entries in memory. The newest entries themselves stay in memory too
(ENTRY_CACHE_ENTRIES / ENTRY_CACHE_BYTES per group), once written: the
committed entries the host applies a turn or two after persisting them, and
the entries a leader sends to a follower that is slightly behind, are served
from memory instead of being read back, decrypted and decoded again (as
etcd's raft serves them from its MemoryStorage). Older entries and older
terms read LevelDB. A restart starts with an empty cache, so recovery reads
(and authenticates) what is on disk.

Not thread-safe: the node serialises every call (one writer thread, or the
event loop) — in-memory caches are updated only after a batch is written.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import plyvel

from consensus.storage import NO_LIMIT, IdentityCodec, ValueCodec
from consensus.types import (
    CompactedError,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)

__all__ = [
    "GroupUpdate",
    "LevelDBGroupStorage",
    "LevelDBLogStore",
    "SnapshotOutOfDateError",
    "StorageCorruptError",
]

_U64 = struct.Struct(">Q")

KIND_ENTRY = b"e"
KIND_HARD_STATE = b"h"
KIND_LOG_START = b"l"
KIND_SNAP_META = b"s"
KIND_SNAP_DATA = b"d"

_ENTRY_TYPES = {int(t): t for t in EntryType}

# How many of a group's most recent terms stay in memory. Raft's hot-path
# lookups (append matching, last term, commit checks) fall near the tail; a
# lookup further back costs one LevelDB get.
TERM_CACHE_SIZE = 1024

# Bounds on a group's cache of its newest written entries: enough for what is
# persisted but not yet applied and what a follower a few turns behind needs;
# a lookup outside the cache reads LevelDB, so the bounds only trade memory
# (at most ENTRY_CACHE_BYTES of entry data per group) for reads.
ENTRY_CACHE_ENTRIES = 512
ENTRY_CACHE_BYTES = 1 << 20


class SnapshotOutOfDateError(ConsensusError):
    """A snapshot at or below the one already stored was applied or created."""


class StorageCorruptError(ConsensusError):
    """A stored record is missing or malformed (the codec may also raise on tampering)."""


@dataclass
class GroupUpdate:
    """What one group's Ready asks to persist: applied snapshot first, then
    hard state and entries, all in the store's single batch."""

    group_id: int
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None


class _OpList:
    """One group's staged puts and deletes, replayed into the shared batch once
    the whole group staged without error (write_isolated)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def replay(self, batch: Any) -> None:
        for key, value in self.ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)


@dataclass(slots=True)
class _GroupState:
    """The in-memory mirror of a group's small records plus the recent-term cache.

    Invariant: entries log_start+1 .. last_index exist on disk; tail_terms[k]
    is the term of entry tail_start + k, and the cache covers a suffix of the
    log (tail_start + len(tail_terms) == last_index + 1). ents[k] is the entry
    at ents_start + k, exactly as written to disk; when not empty it too is a
    suffix of the log (ents_start + len(ents) == last_index + 1), never
    reaching below log_start + 1; ents_bytes is the sum of its data sizes.
    """

    hard_state: HardState = field(default_factory=HardState)
    snap_meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    log_start: int = 0  # == first_index() - 1
    log_start_term: int = 0
    last_index: int = 0
    tail_start: int = 1
    tail_terms: list[int] = field(default_factory=list)
    exists: bool = False  # has any record on disk
    ents: list[Entry] = field(default_factory=list)
    ents_start: int = 1
    ents_bytes: int = 0

    def copy(self) -> _GroupState:
        return _GroupState(
            hard_state=self.hard_state,
            snap_meta=self.snap_meta,
            log_start=self.log_start,
            log_start_term=self.log_start_term,
            last_index=self.last_index,
            tail_start=self.tail_start,
            tail_terms=list(self.tail_terms),
            exists=self.exists,
            ents=list(self.ents),
            ents_start=self.ents_start,
            ents_bytes=self.ents_bytes,
        )

    def cached_term(self, index: int) -> int | None:
        if index == self.log_start:
            return self.log_start_term
        k = index - self.tail_start
        if 0 <= k < len(self.tail_terms):
            return self.tail_terms[k]
        return None

    def trim_cache(self) -> None:
        excess = len(self.tail_terms) - TERM_CACHE_SIZE
        if excess > 0:
            del self.tail_terms[:excess]
            self.tail_start += excess
        ents = self.ents
        drop = max(0, len(ents) - ENTRY_CACHE_ENTRIES)
        size = self.ents_bytes - sum(len(e.data) for e in ents[:drop])
        while size > ENTRY_CACHE_BYTES and drop < len(ents):
            size -= len(ents[drop].data)
            drop += 1
        if drop:
            del ents[:drop]
            self.ents_start += drop
            self.ents_bytes = size

    def clear_entry_cache(self, start: int) -> None:
        self.ents = []
        self.ents_start = start
        self.ents_bytes = 0

    def cache_appended(self, entries: list[Entry]) -> None:
        """Entries first..new_last were just written (replacing any suffix from first)."""
        first = entries[0].index
        ents = self.ents
        end = self.ents_start + len(ents)
        if not ents or first < self.ents_start or first > end:
            self.ents = list(entries)
            self.ents_start = first
            self.ents_bytes = sum(len(e.data) for e in entries)
            return
        k = first - self.ents_start
        if k < len(ents):
            self.ents_bytes -= sum(len(e.data) for e in ents[k:])
            del ents[k:]
        ents.extend(entries)
        self.ents_bytes += sum(len(e.data) for e in entries)

    def cached_entries(self, lo: int, hi: int, max_size: int) -> list[Entry] | None:
        """Entries [lo, hi) from the cache, size-limited as _read_entries does
        (at least one; stop before the running size exceeds max_size), or None
        when the cache does not hold all of them."""
        k = lo - self.ents_start
        n = hi - lo
        ents = self.ents
        if k < 0 or k + n > len(ents):
            return None
        out = ents[k : k + n]
        size = 0
        for i, e in enumerate(out):
            size += len(e.data)
            if i and size > max_size:
                return out[:i]
        return out


# --- value encodings (msgpack; plain lists keep them compact) -------------------


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, use_list=True)


def _conf_to_obj(cs: ConfState) -> list[Any]:
    return [
        list(cs.voters),
        list(cs.learners),
        list(cs.voters_outgoing),
        list(cs.learners_next),
        cs.auto_leave,
    ]


def _conf_from_obj(obj: list[Any]) -> ConfState:
    voters, learners, outgoing, learners_next, auto_leave = obj
    return ConfState(
        voters=tuple(voters),
        learners=tuple(learners),
        voters_outgoing=tuple(outgoing),
        learners_next=tuple(learners_next),
        auto_leave=bool(auto_leave),
    )


def _snap_meta_to_obj(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, _conf_to_obj(meta.conf_state)]


def _snap_meta_from_obj(obj: list[Any]) -> SnapshotMeta:
    index, term, conf = obj
    return SnapshotMeta(index=index, term=term, conf_state=_conf_from_obj(conf))


class LevelDBGroupStorage:
    """One group's read side (consensus.storage.Storage) over the shared store.

    Bounds, hard state and recent terms come from memory; entries and old
    terms from LevelDB. Writes go through LevelDBLogStore.write().
    """

    __slots__ = ("_gid", "_state", "_store")

    def __init__(self, store: LevelDBLogStore, group_id: int, state: _GroupState) -> None:
        self._store = store
        self._gid = group_id
        self._state = state

    @property
    def group_id(self) -> int:
        return self._gid

    def initial_state(self) -> tuple[HardState, ConfState]:
        st = self._state
        return st.hard_state, st.snap_meta.conf_state

    def first_index(self) -> int:
        return self._state.log_start + 1

    def last_index(self) -> int:
        return self._state.last_index

    def term(self, index: int) -> int:
        st = self._state
        cached = st.cached_term(index)
        if cached is not None:
            return cached
        if index < st.log_start:
            raise CompactedError(f"term({index}): compacted, first index {st.log_start + 1}")
        if index > st.last_index:
            raise UnavailableError(f"term({index}): past last index {st.last_index}")
        return self._store._read_entry(self._gid, index).term

    def entries(self, lo: int, hi: int, max_size: int = NO_LIMIT) -> list[Entry]:
        st = self._state
        if lo <= st.log_start:
            raise CompactedError(f"entries from {lo}: compacted, first index {st.log_start + 1}")
        if hi > st.last_index + 1:
            raise UnavailableError(f"entries to {hi}: past last index {st.last_index}")
        if lo >= hi:
            return []
        cached = st.cached_entries(lo, hi, max_size)
        if cached is not None:
            return cached
        return self._store._read_entries(self._gid, lo, hi, max_size)

    def snapshot(self) -> Snapshot:
        meta = self._state.snap_meta
        if meta.index == 0:
            return Snapshot(meta=meta)
        return Snapshot(meta=meta, data=self._store._read_snapshot_data(self._gid))

    def hard_state(self) -> HardState:
        return self._state.hard_state

    def snapshot_meta(self) -> SnapshotMeta:
        """The stored snapshot's metadata, without reading its data."""
        return self._state.snap_meta


class LevelDBLogStore:
    """Every Raft group's log, hard state and snapshot in one LevelDB database.

    ``write()`` is the only writer of logs and hard states: one WriteBatch for
    all groups, one (synced) write, caches updated only once it succeeded.
    """

    def __init__(
        self, db: plyvel.DB, prefix: bytes = b"r", codec: ValueCodec | None = None
    ) -> None:
        self._db = db
        self._prefix = prefix
        self._codec: ValueCodec = codec if codec is not None else IdentityCodec()
        self._groups: dict[int, LevelDBGroupStorage] = {}

    # --- keys ---------------------------------------------------------------

    def _group_prefix(self, group_id: int) -> bytes:
        if not 0 <= group_id < 1 << 64:
            raise ValueError("group id out of range")
        return self._prefix + _U64.pack(group_id)

    def _key(self, group_id: int, kind: bytes, index: int = 0) -> bytes:
        return self._group_prefix(group_id) + kind + _U64.pack(index)

    # --- raw record access (sealed/opened through the codec) ----------------

    def _get(self, key: bytes) -> Any | None:
        raw = self._db.get(key)
        if raw is None:
            return None
        return _unpack(self._codec.open(key, raw))

    def _put(self, batch: Any, key: bytes, obj: Any) -> None:
        batch.put(key, self._codec.seal(key, _pack(obj)))

    def _decode_entry(self, key: bytes, raw: bytes) -> Entry:
        index = _U64.unpack_from(key, len(key) - 8)[0]
        term, etype, data = _unpack(self._codec.open(key, raw))
        kind = _ENTRY_TYPES.get(etype)
        if kind is None:
            raise StorageCorruptError(f"log entry {index}: unknown entry type")
        return Entry(index=index, term=term, data=data, type=kind)

    def _read_entry(self, group_id: int, index: int) -> Entry:
        key = self._key(group_id, KIND_ENTRY, index)
        raw = self._db.get(key)
        if raw is None:
            raise StorageCorruptError(f"group {group_id}: log entry {index} missing")
        return self._decode_entry(key, raw)

    def _read_entries(self, group_id: int, lo: int, hi: int, max_size: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        start = self._key(group_id, KIND_ENTRY, lo)
        stop = self._key(group_id, KIND_ENTRY, hi)
        limited = False
        with self._db.iterator(start=start, stop=stop) as it:
            for key, raw in it:
                ent = self._decode_entry(key, raw)
                size += len(ent.data)
                if out and size > max_size:
                    limited = True
                    break
                out.append(ent)
        # The cached bounds promised these entries: a short or holed read is damage.
        want_last = out[-1].index if limited else hi - 1
        if (
            not out
            or out[0].index != lo
            or out[-1].index != want_last
            or (len(out) != want_last - lo + 1)
        ):
            raise StorageCorruptError(f"group {group_id}: log entries {lo}..{hi - 1} missing")
        return out

    def _read_snapshot_data(self, group_id: int) -> bytes:
        data = self._get(self._key(group_id, KIND_SNAP_DATA))
        if not isinstance(data, bytes):
            raise StorageCorruptError(f"group {group_id}: snapshot data missing")
        return data

    def _load(self, group_id: int) -> _GroupState:
        """Rebuild a group's in-memory state from disk (first touch after open)."""
        st = _GroupState()
        hs = self._get(self._key(group_id, KIND_HARD_STATE))
        if hs is not None:
            st.hard_state = HardState(term=hs[0], vote=hs[1], commit=hs[2])
            st.exists = True
        meta = self._get(self._key(group_id, KIND_SNAP_META))
        if meta is not None:
            st.snap_meta = _snap_meta_from_obj(meta)
            st.exists = True
        start = self._get(self._key(group_id, KIND_LOG_START))
        if start is not None:
            st.log_start, st.log_start_term = start
            st.exists = True
        st.last_index = st.log_start
        # The newest TERM_CACHE_SIZE entries, newest first, fill the term cache.
        terms: list[int] = []
        entry_prefix = self._group_prefix(group_id) + KIND_ENTRY
        with self._db.iterator(prefix=entry_prefix, reverse=True) as it:
            for key, raw in it:
                ent = self._decode_entry(key, raw)
                if not terms:
                    st.last_index = ent.index
                    st.exists = True
                elif ent.index != st.last_index - len(terms):
                    raise StorageCorruptError(
                        f"group {group_id}: hole in the log at {ent.index + 1}"
                    )
                terms.append(ent.term)
                if len(terms) >= TERM_CACHE_SIZE:
                    break
        terms.reverse()
        st.tail_terms = terms
        st.tail_start = st.last_index + 1 - len(terms)
        return st

    def _state(self, group_id: int) -> _GroupState:
        return self.group(group_id)._state

    # --- public API ---------------------------------------------------------

    def group(self, group_id: int) -> LevelDBGroupStorage:
        """The group's Storage (created empty if the group has no state)."""
        gs = self._groups.get(group_id)
        if gs is None:
            gs = LevelDBGroupStorage(self, group_id, self._load(group_id))
            self._groups[group_id] = gs
        return gs

    def has_group(self, group_id: int) -> bool:
        """Whether the group has any state on disk."""
        return self._state(group_id).exists

    def bootstrap(self, group_id: int, conf_state: ConfState) -> None:
        """Give a new group its initial membership at index 0, term 0.

        A no-op when the group already has state, so a restarting node may
        call it for every group it hosts.
        """
        st = self._state(group_id)
        if st.exists:
            return
        new = st.copy()
        new.snap_meta = SnapshotMeta(index=0, term=0, conf_state=conf_state)
        new.exists = True
        batch = self._db.write_batch(sync=True)
        self._put(batch, self._key(group_id, KIND_SNAP_META), _snap_meta_to_obj(new.snap_meta))
        self._put(batch, self._key(group_id, KIND_LOG_START), [0, 0])
        batch.write()
        self.group(group_id)._state = new

    def write(self, updates: Sequence[GroupUpdate], sync: bool = True) -> None:
        """Persist several groups' Readys in one WriteBatch and one write.

        All or nothing: a validation error stages nothing, and the in-memory
        state changes only after LevelDB accepted the batch.
        """
        staged: dict[int, _GroupState] = {}
        batch = self._db.write_batch(sync=sync)
        for up in updates:
            self._stage_update(batch, staged, up)
        if not staged:
            return
        batch.write()
        for gid, st in staged.items():
            self.group(gid)._state = st

    def write_isolated(
        self, updates: Sequence[GroupUpdate], sync: bool = True
    ) -> dict[int, Exception]:
        """Like write(), but a group whose update cannot be staged (it breaks the
        log's invariants, or a value cannot be encoded) is left out alone: the
        other groups' updates are written in the one batch, and the refused
        groups come back with their error, unchanged on disk and in memory.

        Errors of the write itself (the disk) still raise: they are no group's.
        """
        failed: dict[int, Exception] = {}
        per_group: dict[int, tuple[_OpList, dict[int, _GroupState]]] = {}
        for up in updates:
            gid = up.group_id
            if gid in failed:
                continue
            ops, staged = per_group.setdefault(gid, (_OpList(), {}))
            try:
                self._stage_update(ops, staged, up)
            except (ConsensusError, ValueError, TypeError, OverflowError) as e:
                failed[gid] = e
                del per_group[gid]
        if not per_group:
            return failed
        batch = self._db.write_batch(sync=sync)
        for ops, _ in per_group.values():
            ops.replay(batch)
        batch.write()
        for _, staged in per_group.values():
            for gid, st in staged.items():
                self.group(gid)._state = st
        return failed

    def _stage_update(self, batch: Any, staged: dict[int, _GroupState], up: GroupUpdate) -> None:
        st = staged.get(up.group_id)
        if st is None:
            st = self._state(up.group_id).copy()
            staged[up.group_id] = st
        if up.snapshot is not None:
            self._stage_snapshot(batch, up.group_id, st, up.snapshot)
        if up.entries:
            self._stage_entries(batch, up.group_id, st, up.entries)
        if up.hard_state is not None:
            st.hard_state = up.hard_state
            hs = up.hard_state
            self._put(batch, self._key(up.group_id, KIND_HARD_STATE), [hs.term, hs.vote, hs.commit])
            st.exists = True

    def _stage_snapshot(self, batch: Any, gid: int, st: _GroupState, snap: Snapshot) -> None:
        meta = snap.meta
        cur = st.snap_meta
        # An index-0 snapshot carries the bootstrap membership to a blank replica.
        blank = cur.index == 0 and cur.conf_state == ConfState() and st.last_index == 0
        if meta.index < cur.index or (meta.index == cur.index and not blank):
            raise SnapshotOutOfDateError(
                f"group {gid}: snapshot {meta.index} not newer than {st.snap_meta.index}"
            )
        for index in range(st.log_start + 1, st.last_index + 1):
            batch.delete(self._key(gid, KIND_ENTRY, index))
        st.snap_meta = meta
        st.log_start = meta.index
        st.log_start_term = meta.term
        st.last_index = meta.index
        st.tail_start = meta.index + 1
        st.tail_terms = []
        st.clear_entry_cache(meta.index + 1)
        st.exists = True
        self._put(batch, self._key(gid, KIND_SNAP_META), _snap_meta_to_obj(meta))
        self._put(batch, self._key(gid, KIND_SNAP_DATA), snap.data)
        self._put(batch, self._key(gid, KIND_LOG_START), [meta.index, meta.term])

    def _stage_entries(self, batch: Any, gid: int, st: _GroupState, entries: list[Entry]) -> None:
        first = entries[0].index
        if any(ent.index != first + k for k, ent in enumerate(entries)):
            raise ValueError(f"group {gid}: entries not contiguous")
        if first > st.last_index + 1:
            raise ValueError(f"group {gid}: entries from {first} leave a gap after {st.last_index}")
        # Entries at or below log_start are already covered by a snapshot/compaction.
        skip = max(0, st.log_start + 1 - first)
        entries = entries[skip:]
        if not entries:
            return
        first = entries[0].index
        new_last = entries[-1].index
        # A conflicting append truncates the old suffix; overwritten keys need no delete.
        for index in range(new_last + 1, st.last_index + 1):
            batch.delete(self._key(gid, KIND_ENTRY, index))
        for ent in entries:
            self._put(
                batch, self._key(gid, KIND_ENTRY, ent.index), [ent.term, int(ent.type), ent.data]
            )
        if first < st.tail_start:
            st.tail_start = first
            st.tail_terms = []
        else:
            del st.tail_terms[first - st.tail_start :]
        st.tail_terms.extend(ent.term for ent in entries)
        st.cache_appended(entries)
        st.last_index = new_last
        st.trim_cache()
        st.exists = True

    def create_snapshot(
        self, group_id: int, index: int, conf_state: ConfState, data: bytes
    ) -> Snapshot:
        """Record the application's state as of applied index `index` (written at once).

        The log is left as it is (compact() trims it); initial_state() reports
        conf_state from now on.
        """
        st = self._state(group_id)
        if index <= st.snap_meta.index:
            raise SnapshotOutOfDateError(
                f"group {group_id}: snapshot {index} not newer than {st.snap_meta.index}"
            )
        if index > st.last_index:
            raise UnavailableError(f"group {group_id}: snapshot {index} past last index")
        meta = SnapshotMeta(
            index=index, term=self.group(group_id).term(index), conf_state=conf_state
        )
        new = st.copy()
        new.snap_meta = meta
        new.exists = True
        batch = self._db.write_batch(sync=True)
        self._put(batch, self._key(group_id, KIND_SNAP_META), _snap_meta_to_obj(meta))
        self._put(batch, self._key(group_id, KIND_SNAP_DATA), data)
        batch.write()
        self.group(group_id)._state = new
        return Snapshot(meta=meta, data=data)

    def compact(self, group_id: int, index: int) -> None:
        """Drop entries <= index; term(index) stays answerable.

        Raises CompactedError when index is already compacted and
        UnavailableError past the last index. Callers compact only up to a
        snapshot they have stored, or a restarted replica cannot catch up.
        """
        st = self._state(group_id)
        if index <= st.log_start:
            raise CompactedError(f"group {group_id}: compact({index}) already compacted")
        if index > st.last_index:
            raise UnavailableError(f"group {group_id}: compact({index}) past last index")
        term = self.group(group_id).term(index)
        new = st.copy()
        batch = self._db.write_batch(sync=True)
        for i in range(st.log_start + 1, index + 1):
            batch.delete(self._key(group_id, KIND_ENTRY, i))
        self._put(batch, self._key(group_id, KIND_LOG_START), [index, term])
        new.log_start = index
        new.log_start_term = term
        if new.tail_start <= index:
            del new.tail_terms[: index + 1 - new.tail_start]
            new.tail_start = index + 1
        if new.ents_start <= index:
            drop = index + 1 - new.ents_start
            if drop >= len(new.ents):
                new.clear_entry_cache(index + 1)
            else:
                new.ents_bytes -= sum(len(e.data) for e in new.ents[:drop])
                del new.ents[:drop]
                new.ents_start = index + 1
        batch.write()
        self.group(group_id)._state = new

    def destroy_group(self, group_id: int) -> None:
        """Delete every record of the group (after it was removed from this node)."""
        batch = self._db.write_batch(sync=True)
        for key in self._db.iterator(prefix=self._group_prefix(group_id), include_value=False):
            batch.delete(key)
        batch.write()
        # Anyone still holding the group's Storage now sees an empty group.
        self.group(group_id)._state = _GroupState()

    def group_ids(self) -> list[int]:
        """The ids of every group with state on disk, ascending.

        Assumes the prefix is this store's alone (no other key starts with it).
        """
        out: list[int] = []
        plen = len(self._prefix)
        key = self._prefix
        stop = self._prefix + b"\xff" * 9
        while True:
            with self._db.iterator(start=key, stop=stop, include_value=False) as it:
                nxt = next(it, None)
            if nxt is None:
                return out
            gid = _U64.unpack_from(nxt, plen)[0]
            out.append(gid)
            if gid == (1 << 64) - 1:
                return out
            key = self._prefix + _U64.pack(gid + 1)
