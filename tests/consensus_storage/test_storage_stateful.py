"""Stateful property tests: MemoryStorage and LevelDBGroupStorage against a list model.

Both implementations must answer every read of consensus.storage.Storage
exactly as a plain Python list of entries would, through appends, conflicting
appends (truncation), compaction, applied and created snapshots and hard
state changes. The LevelDB machine also closes and reopens the database at
random (everything written must survive) and keeps several groups in one
database, so a key-range slip between neighbouring groups shows up too.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Protocol

import hypothesis.strategies as st
import plyvel
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from consensus import leveldb_storage
from consensus.leveldb_storage import GroupUpdate, LevelDBLogStore
from consensus.storage import NO_LIMIT, Storage
from consensus.types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)

# --- the model -------------------------------------------------------------------


@dataclass
class LogModel:
    """What a group's stable storage should hold, as plain lists."""

    log_start: int = 0
    log_start_term: int = 0
    entries: list[Entry] = field(default_factory=list)  # indexes log_start+1 ..
    hard_state: HardState = field(default_factory=HardState)
    snap_meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    snap_data: bytes = b""

    @property
    def last_index(self) -> int:
        return self.log_start + len(self.entries)

    def term(self, index: int) -> int:
        if index == self.log_start:
            return self.log_start_term
        return self.entries[index - self.log_start - 1].term

    def append(self, ents: list[Entry]) -> None:
        ents = [e for e in ents if e.index > self.log_start]
        if not ents:
            return
        keep = ents[0].index - self.log_start - 1
        self.entries = self.entries[:keep] + ents

    def apply_snapshot(self, snap: Snapshot) -> None:
        self.log_start = snap.meta.index
        self.log_start_term = snap.meta.term
        self.entries = []
        self.snap_meta = snap.meta
        self.snap_data = snap.data

    def compact(self, index: int) -> None:
        self.log_start_term = self.term(index)
        self.entries = self.entries[index - self.log_start :]
        self.log_start = index


# --- backends: the two implementations behind one small interface ---------------


class Backend(Protocol):
    def storage(self, gid: int) -> Storage: ...

    def write(self, updates: list[GroupUpdate]) -> None: ...

    def create_snapshot(self, gid: int, index: int, cs: ConfState, data: bytes) -> Snapshot: ...

    def compact(self, gid: int, index: int) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class LevelDBBackend:
    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="medkv-logstore-")
        self.db = plyvel.DB(self.path, create_if_missing=True)
        self.store = LevelDBLogStore(self.db)

    def storage(self, gid: int) -> Storage:
        return self.store.group(gid)

    def write(self, updates: list[GroupUpdate]) -> None:
        self.store.write(updates)

    def create_snapshot(self, gid: int, index: int, cs: ConfState, data: bytes) -> Snapshot:
        return self.store.create_snapshot(gid, index, cs, data)

    def compact(self, gid: int, index: int) -> None:
        self.store.compact(gid, index)

    def reopen(self) -> None:
        self.db.close()
        self.db = plyvel.DB(self.path)
        self.store = LevelDBLogStore(self.db)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


class MemoryBackend:
    def __init__(self) -> None:
        from consensus.memory_storage import MemoryStorage

        self._cls = MemoryStorage
        self.groups: dict[int, MemoryStorage] = {}

    def storage(self, gid: int) -> Storage:
        if gid not in self.groups:
            self.groups[gid] = self._cls()
        return self.groups[gid]

    def write(self, updates: list[GroupUpdate]) -> None:
        for up in updates:
            ms = self.groups.setdefault(up.group_id, self._cls())
            if up.snapshot is not None:
                ms.apply_snapshot(up.snapshot)
            if up.entries:
                ms.append(up.entries)
            if up.hard_state is not None:
                ms.set_hard_state(up.hard_state)

    def create_snapshot(self, gid: int, index: int, cs: ConfState, data: bytes) -> Snapshot:
        return self.groups.setdefault(gid, self._cls()).create_snapshot(index, cs, data)

    def compact(self, gid: int, index: int) -> None:
        self.groups.setdefault(gid, self._cls()).compact(index)

    def reopen(self) -> None:
        """Memory has nothing to reopen."""

    def close(self) -> None:
        self.groups.clear()


# --- the machine -----------------------------------------------------------------

datas = st.binary(max_size=24)
confs = st.builds(
    ConfState,
    voters=st.lists(st.integers(1, 9), max_size=3, unique=True).map(tuple),
    learners=st.lists(st.integers(10, 12), max_size=2, unique=True).map(tuple),
)


class StorageMachine(RuleBasedStateMachine):
    """Drives one backend and one LogModel per group; every read must agree."""

    GROUPS: tuple[int, ...] = (1,)

    def make_backend(self) -> Backend:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.backend = self.make_backend()
        self.models = {gid: LogModel() for gid in self.GROUPS}
        self.term_hint = 1

    def teardown(self) -> None:
        self.backend.close()

    # -- helpers

    def _entries(self, start: int, n: int, bump: list[bool], payloads: list[bytes]) -> list[Entry]:
        out = []
        term = self.term_hint
        for k in range(n):
            if bump[k % len(bump)]:
                term += 1
            etype = EntryType.CONF_CHANGE if payloads[k % len(payloads)][:1] == b"\x01" else 0
            out.append(
                Entry(index=start + k, term=term, data=payloads[k % len(payloads)], type=etype)
            )
        self.term_hint = term
        return out

    # -- writes

    @rule(
        gi=st.integers(0, 8),
        back=st.integers(0, 6),
        n=st.integers(1, 12),
        bump=st.lists(st.booleans(), min_size=1, max_size=4),
        payloads=st.lists(datas, min_size=1, max_size=4),
        hard=st.booleans(),
    )
    def append(
        self, gi: int, back: int, n: int, bump: list[bool], payloads: list[bytes], hard: bool
    ) -> None:
        """Append at last+1 (back=0) or overlapping the tail (a conflicting append
        truncates), sometimes reaching below the compacted prefix."""
        gid = self.GROUPS[gi % len(self.GROUPS)]
        model = self.models[gid]
        start = max(1, model.last_index + 1 - back)
        ents = self._entries(start, n, bump, payloads)
        hs = None
        if hard:
            hs = HardState(term=self.term_hint, vote=gi % 4, commit=min(model.last_index, start))
            model.hard_state = hs
        self.backend.write([GroupUpdate(group_id=gid, hard_state=hs, entries=ents)])
        model.append(ents)

    @rule(
        gi=st.integers(0, 8),
        ahead=st.integers(1, 20),
        conf=confs,
        data=datas,
        with_log=st.booleans(),
    )
    def apply_snapshot(
        self, gi: int, ahead: int, conf: ConfState, data: bytes, with_log: bool
    ) -> None:
        """A snapshot from the leader replaces the log; entries may follow in the same update."""
        gid = self.GROUPS[gi % len(self.GROUPS)]
        model = self.models[gid]
        index = max(model.snap_meta.index, model.last_index - 5) + ahead
        self.term_hint += 1
        snap = Snapshot(SnapshotMeta(index=index, term=self.term_hint, conf_state=conf), data)
        ents = self._entries(index + 1, 3, [False], [b"after"]) if with_log else []
        hs = HardState(term=self.term_hint, vote=0, commit=index)
        self.backend.write([GroupUpdate(gid, hard_state=hs, entries=ents, snapshot=snap)])
        model.apply_snapshot(snap)
        model.append(ents)
        model.hard_state = hs

    @precondition(lambda self: any(m.last_index > m.snap_meta.index for m in self.models.values()))
    @rule(gi=st.integers(0, 8), pick=st.integers(0, 1000), conf=confs, data=datas)
    def create_snapshot(self, gi: int, pick: int, conf: ConfState, data: bytes) -> None:
        gid = self.GROUPS[gi % len(self.GROUPS)]
        model = self.models[gid]
        lo = max(model.snap_meta.index + 1, model.log_start)
        if lo > model.last_index:
            return
        index = lo + pick % (model.last_index - lo + 1)
        snap = self.backend.create_snapshot(gid, index, conf, data)
        assert snap.meta == SnapshotMeta(index=index, term=model.term(index), conf_state=conf)
        assert snap.data == data
        model.snap_meta = snap.meta
        model.snap_data = data

    @rule(gi=st.integers(0, 8), pick=st.integers(0, 1000))
    def compact(self, gi: int, pick: int) -> None:
        gid = self.GROUPS[gi % len(self.GROUPS)]
        model = self.models[gid]
        if model.last_index == model.log_start:
            return
        index = model.log_start + 1 + pick % (model.last_index - model.log_start)
        self.backend.compact(gid, index)
        model.compact(index)

    @rule(
        gi=st.integers(0, 8), ids=st.lists(st.integers(0, 8), min_size=2, max_size=4, unique=True)
    )
    def write_several_groups(self, gi: int, ids: list[int]) -> None:
        """One write() carrying hard states and entries for several groups."""
        updates = []
        for k in ids:
            gid = self.GROUPS[k % len(self.GROUPS)]
            if any(u.group_id == gid for u in updates):
                continue
            model = self.models[gid]
            ents = self._entries(model.last_index + 1, 2, [k % 2 == 0], [bytes([gi, k])])
            hs = HardState(term=self.term_hint, vote=k, commit=model.log_start)
            updates.append(GroupUpdate(gid, hard_state=hs, entries=ents))
            model.append(ents)
            model.hard_state = hs
        self.backend.write(updates)

    @rule()
    def reopen(self) -> None:
        self.backend.reopen()

    # -- reads

    @rule(gi=st.integers(0, 8), offset=st.integers(-3, 3), pick=st.integers(0, 1000))
    def term_lookup(self, gi: int, offset: int, pick: int) -> None:
        gid = self.GROUPS[gi % len(self.GROUPS)]
        model = self.models[gid]
        span = model.last_index - model.log_start + 1
        index = model.log_start + pick % span + offset
        s = self.backend.storage(gid)
        if index < model.log_start:
            with pytest.raises(CompactedError):
                s.term(index)
        elif index > model.last_index:
            with pytest.raises(UnavailableError):
                s.term(index)
        else:
            assert s.term(index) == model.term(index)

    @rule(
        gi=st.integers(0, 8),
        a=st.integers(0, 1000),
        b=st.integers(0, 1000),
        max_size=st.one_of(st.just(NO_LIMIT), st.integers(0, 60)),
        oob=st.sampled_from(["none", "low", "high"]),
    )
    def entries_lookup(self, gi: int, a: int, b: int, max_size: int, oob: str) -> None:
        gid = self.GROUPS[gi % len(self.GROUPS)]
        model = self.models[gid]
        s = self.backend.storage(gid)
        first, last = model.log_start + 1, model.last_index
        if oob == "low" and model.log_start > 0:
            with pytest.raises(CompactedError):
                s.entries(model.log_start, last + 1, max_size)
            return
        if oob == "high":
            with pytest.raises(UnavailableError):
                s.entries(first, last + 2, max_size)
            return
        if last < first:
            assert s.entries(first, first, max_size) == []
            return
        lo = first + a % (last - first + 1)
        hi = lo + 1 + b % (last + 1 - lo)
        got = s.entries(lo, hi, max_size)
        want: list[Entry] = []
        size = 0
        for e in model.entries[lo - first : hi - first]:
            size += len(e.data)
            if want and size > max_size:
                break
            want.append(e)
        assert got == want

    @invariant()
    def bounds_and_small_state_agree(self) -> None:
        for gid, model in self.models.items():
            s = self.backend.storage(gid)
            assert s.first_index() == model.log_start + 1
            assert s.last_index() == model.last_index
            assert s.term(model.log_start) == model.log_start_term
            hs, cs = s.initial_state()
            assert hs == model.hard_state
            assert cs == model.snap_meta.conf_state
            snap = s.snapshot()
            assert snap.meta == model.snap_meta
            if model.snap_meta.index > 0:
                assert snap.data == model.snap_data


class LevelDBMachine(StorageMachine):
    # Adjacent and extreme group ids share one database: a key-range slip shows.
    GROUPS = (0, 1, 2**64 - 1)

    def make_backend(self) -> Backend:
        return LevelDBBackend()

    @initialize()
    def small_term_cache(self) -> None:
        """Tiny term and entry caches make the disk fallbacks for older terms
        and entries run too, and lookups that straddle the cache's edge."""
        self._saved = (
            leveldb_storage.TERM_CACHE_SIZE,
            leveldb_storage.ENTRY_CACHE_ENTRIES,
            leveldb_storage.ENTRY_CACHE_BYTES,
        )
        leveldb_storage.TERM_CACHE_SIZE = 4
        leveldb_storage.ENTRY_CACHE_ENTRIES = 3
        leveldb_storage.ENTRY_CACHE_BYTES = 40

    def teardown(self) -> None:
        saved = getattr(self, "_saved", None)
        if saved is not None:
            (
                leveldb_storage.TERM_CACHE_SIZE,
                leveldb_storage.ENTRY_CACHE_ENTRIES,
                leveldb_storage.ENTRY_CACHE_BYTES,
            ) = saved
        super().teardown()


class MemoryMachine(StorageMachine):
    GROUPS = (1,)

    def make_backend(self) -> Backend:
        return MemoryBackend()


TestLevelDBStorageModel = LevelDBMachine.TestCase
TestLevelDBStorageModel.settings = settings(stateful_step_count=40)

TestMemoryStorageModel = MemoryMachine.TestCase
TestMemoryStorageModel.settings = settings(stateful_step_count=40)
