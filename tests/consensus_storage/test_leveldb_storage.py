"""LevelDBLogStore: group commit, key layout, value codec, bootstrap, lifecycle.

Runs against a real LevelDB in tmp_path. The stateful model test lives in
test_storage_stateful.py; these pin the properties a model cannot see.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import plyvel
import pytest

from consensus.leveldb_storage import (
    GroupUpdate,
    LevelDBLogStore,
    SnapshotOutOfDateError,
    StorageCorruptError,
)
from consensus.storage import IdentityCodec, Storage, ValueCodec
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

MARKER = b"PATIENT-7f3a9c1e-DATA"


class ReversingCodec:
    """A reversible stand-in for AES-GCM: XOR + reverse, with a key-bound tag so a
    value moved to another key fails to open (as associated data would)."""

    def _tag(self, key: bytes) -> bytes:
        return hashlib.sha256(key).digest()[:8]

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        return self._tag(key) + bytes(b ^ 0x5A for b in reversed(plaintext))

    def open(self, key: bytes, sealed: bytes) -> bytes:
        if sealed[:8] != self._tag(key):
            raise ValueError("value does not belong to this key")
        return bytes(b ^ 0x5A for b in reversed(sealed[8:]))


class CountingDB:
    """A real plyvel.DB that counts the batches written through it."""

    def __init__(self, db: plyvel.DB) -> None:
        self._db = db
        self.batch_writes: list[bool] = []  # sync flag of each written batch

    def write_batch(self, sync: bool = False) -> Any:
        outer = self
        batch = self._db.write_batch(sync=sync)

        class _Batch:
            def put(self, k: bytes, v: bytes) -> None:
                batch.put(k, v)

            def delete(self, k: bytes) -> None:
                batch.delete(k)

            def write(self) -> None:
                batch.write()
                outer.batch_writes.append(sync)

        return _Batch()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def ents(start: int, n: int, term: int, data: bytes = b"x") -> list[Entry]:
    return [Entry(index=start + k, term=term, data=data + bytes([k])) for k in range(n)]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "raftlog"


def open_store(path: Path, codec: ValueCodec | None = None) -> tuple[plyvel.DB, LevelDBLogStore]:
    db = plyvel.DB(str(path), create_if_missing=True)
    return db, LevelDBLogStore(db, codec=codec)


def test_storage_protocol(db_path: Path) -> None:
    db, store = open_store(db_path)
    assert isinstance(store.group(1), Storage)
    db.close()


def test_one_write_of_many_groups_is_one_synced_batch(db_path: Path) -> None:
    db, _ = open_store(db_path)
    spy = CountingDB(db)
    store = LevelDBLogStore(spy)  # type: ignore[arg-type]
    updates = [
        GroupUpdate(g, hard_state=HardState(term=g, vote=g, commit=0), entries=ents(1, 3, g))
        for g in (3, 4, 5)
    ]
    store.write(updates)
    assert spy.batch_writes == [True]
    store.write([GroupUpdate(3, entries=ents(4, 1, 3))], sync=False)
    assert spy.batch_writes == [True, False]
    db.close()

    db, store = open_store(db_path)
    for g in (3, 4, 5):
        s = store.group(g)
        assert s.initial_state()[0] == HardState(term=g, vote=g, commit=0)
        assert [e.term for e in s.entries(1, s.last_index() + 1)] == [g] * (4 if g == 3 else 3)
    db.close()


def test_rejected_write_changes_nothing_for_any_group(db_path: Path) -> None:
    db, store = open_store(db_path)
    store.write([GroupUpdate(1, entries=ents(1, 2, 1))])
    bad = [
        GroupUpdate(1, hard_state=HardState(2, 1, 0), entries=ents(3, 2, 2)),
        GroupUpdate(2, entries=ents(5, 1, 1)),  # a gap: group 2 is empty
    ]
    with pytest.raises(ValueError, match="gap"):
        store.write(bad)
    assert store.group(1).last_index() == 2
    assert store.group(1).initial_state()[0] == HardState()
    db.close()
    db, store = open_store(db_path)
    assert store.group(1).last_index() == 2
    assert not store.has_group(2)
    db.close()


def test_key_layout_is_fixed_width_and_carries_no_data(db_path: Path) -> None:
    db, store = open_store(db_path)
    store.bootstrap(7, ConfState(voters=(1, 2, 3)))
    store.write([GroupUpdate(7, HardState(1, 1, 0), [Entry(1, 1, MARKER), Entry(2, 1, MARKER)])])
    keys = list(db.iterator(include_value=False))
    assert keys
    for key in keys:
        assert len(key) == 1 + 8 + 1 + 8
        assert key[:1] == b"r"
        assert struct.unpack(">Q", key[1:9])[0] == 7
        assert key[9:10] in (b"e", b"h", b"l", b"s", b"d")
        assert MARKER not in key
    entry_keys = [k for k in keys if k[9:10] == b"e"]
    assert [struct.unpack(">Q", k[10:])[0] for k in entry_keys] == [1, 2]
    db.close()


def test_codec_round_trips_and_no_plaintext_reaches_disk(db_path: Path) -> None:
    db, store = open_store(db_path, ReversingCodec())
    store.bootstrap(1, ConfState(voters=(1, 2, 3)))
    store.write(
        [
            GroupUpdate(
                1,
                hard_state=HardState(4, 2, 1),
                entries=[
                    Entry(1, 4, MARKER + b"-1"),
                    Entry(2, 4, MARKER + b"-2", EntryType.CONF_CHANGE),
                ],
            )
        ]
    )
    store.create_snapshot(1, 1, ConfState(voters=(1, 2, 3)), MARKER + b"-snap")
    for key, value in db.iterator():
        assert MARKER not in value, key
    db.close()
    on_disk = b"".join(p.read_bytes() for p in db_path.iterdir() if p.is_file())
    assert MARKER not in on_disk

    db, store = open_store(db_path, ReversingCodec())
    s = store.group(1)
    assert s.entries(1, 3) == [
        Entry(1, 4, MARKER + b"-1"),
        Entry(2, 4, MARKER + b"-2", EntryType.CONF_CHANGE),
    ]
    assert s.initial_state() == (HardState(4, 2, 1), ConfState(voters=(1, 2, 3)))
    assert s.snapshot().data == MARKER + b"-snap"
    db.close()


def test_plaintext_check_can_fail_without_a_codec(db_path: Path) -> None:
    """The disk scan above is meaningful: with the identity codec the marker shows."""
    db, store = open_store(db_path, IdentityCodec())
    store.write([GroupUpdate(1, entries=[Entry(1, 1, MARKER)])])
    db.close()
    on_disk = b"".join(p.read_bytes() for p in db_path.iterdir() if p.is_file())
    assert MARKER in on_disk


def test_codec_binds_value_to_key(db_path: Path) -> None:
    db, store = open_store(db_path, ReversingCodec())
    store.write([GroupUpdate(1, entries=ents(1, 2, 1))])
    k1, k2 = (k for k in db.iterator(include_value=False) if k[9:10] == b"e")
    v1, v2 = db.get(k1), db.get(k2)
    db.put(k1, v2)
    db.put(k2, v1)
    db.close()
    db, store = open_store(db_path, ReversingCodec())
    with pytest.raises(ValueError, match="belong"):
        store.group(1).entries(1, 3)
    db.close()


def test_bootstrap_only_when_new_and_survives_reopen(db_path: Path) -> None:
    db, store = open_store(db_path)
    cs = ConfState(voters=(1, 2, 3), learners=(4,))
    assert not store.has_group(9)
    store.bootstrap(9, cs)
    assert store.has_group(9)
    s = store.group(9)
    assert s.initial_state() == (HardState(), cs)
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    store.write([GroupUpdate(9, HardState(1, 1, 0), ents(1, 1, 1))])
    store.bootstrap(9, ConfState(voters=(5,)))  # a restart's bootstrap is a no-op
    assert s.initial_state()[1] == cs
    db.close()
    db, store = open_store(db_path)
    store.bootstrap(9, ConfState(voters=(5,)))
    s = store.group(9)
    assert s.initial_state() == (HardState(1, 1, 0), cs)
    assert s.last_index() == 1
    db.close()


def test_entries_max_size_returns_at_least_one(db_path: Path) -> None:
    db, store = open_store(db_path)
    big = [Entry(i, 1, bytes(100)) for i in range(1, 6)]
    store.write([GroupUpdate(1, entries=big)])
    s = store.group(1)
    assert len(s.entries(1, 6, max_size=0)) == 1
    assert len(s.entries(1, 6, max_size=250)) == 2
    assert len(s.entries(2, 6, max_size=400)) == 4
    assert s.entries(3, 3) == []
    with pytest.raises(UnavailableError):
        s.entries(1, 7)
    db.close()


class _NoEntryReads:
    """Fails the test if the store reads a log entry back from LevelDB."""

    def __init__(self, store: LevelDBLogStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        def refuse(*_args: Any) -> Any:
            raise AssertionError("log entries were read back from LevelDB")

        self.saved = (self.store._read_entries, self.store._read_entry)
        self.store._read_entries = refuse  # type: ignore[method-assign]
        self.store._read_entry = refuse  # type: ignore[method-assign]

    def __exit__(self, *_exc: object) -> None:
        self.store._read_entries, self.store._read_entry = self.saved  # type: ignore[method-assign]


def test_recent_entries_come_from_memory_and_match_the_disk(db_path: Path) -> None:
    """What the host applies right after persisting it is not read back,
    decrypted and decoded again; after a restart the same entries come from disk."""
    db, store = open_store(db_path, ReversingCodec())
    written = ents(1, 5, 1) + ents(6, 3, 2)
    store.write([GroupUpdate(1, entries=written)])
    s = store.group(1)
    with _NoEntryReads(store):
        assert s.entries(1, 9) == written
        assert s.entries(3, 6, max_size=4) == written[2:4]  # 2 bytes each
    db.close()
    db, store = open_store(db_path, ReversingCodec())
    assert store.group(1).entries(1, 9) == written
    db.close()


def test_entry_cache_follows_truncation_compaction_and_snapshots(db_path: Path) -> None:
    db, store = open_store(db_path)
    store.write([GroupUpdate(1, entries=ents(1, 6, 1))])
    # A conflicting append replaces the suffix from 4: entry 6 is gone.
    store.write([GroupUpdate(1, entries=ents(4, 1, 2, b"new"))])
    s = store.group(1)
    with _NoEntryReads(store):
        assert s.entries(1, 5) == ents(1, 3, 1) + ents(4, 1, 2, b"new")
    with pytest.raises(UnavailableError):
        s.entries(1, 6)
    store.compact(1, 2)
    with pytest.raises(CompactedError):
        s.entries(2, 4)
    with _NoEntryReads(store):
        assert s.entries(3, 5) == [ents(1, 3, 1)[2], *ents(4, 1, 2, b"new")]
    meta = SnapshotMeta(index=10, term=3, conf_state=ConfState(voters=(1,)))
    store.write([GroupUpdate(1, snapshot=Snapshot(meta=meta, data=b"s"), entries=ents(11, 2, 3))])
    with _NoEntryReads(store):
        assert s.entries(11, 13) == ents(11, 2, 3)
    with pytest.raises(CompactedError):
        s.entries(10, 12)
    # An append that starts below the cache (a leader overwriting a longer
    # uncommitted suffix) replaces the cache from there.
    store.write([GroupUpdate(1, entries=ents(11, 1, 4, b"z"))])
    assert s.entries(11, 12) == ents(11, 1, 4, b"z")
    with pytest.raises(UnavailableError):
        s.entries(11, 13)
    db.close()


def test_entry_cache_is_bounded_and_falls_back_to_the_disk(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consensus import leveldb_storage

    monkeypatch.setattr(leveldb_storage, "ENTRY_CACHE_ENTRIES", 4)
    monkeypatch.setattr(leveldb_storage, "ENTRY_CACHE_BYTES", 250)
    db, store = open_store(db_path)
    written = [Entry(i, 1, bytes([i]) * 100) for i in range(1, 11)]
    for k in range(0, 10, 3):
        store.write([GroupUpdate(1, entries=written[k : k + 3])])
    st = store._state(1)
    assert len(st.ents) == 2 and st.ents_bytes == 200  # the byte bound is the tighter
    assert st.ents == written[-2:]
    s = store.group(1)
    with _NoEntryReads(store):
        assert s.entries(9, 11) == written[8:]
    assert s.entries(1, 11) == written  # straddles the cache: read from disk
    db.close()


def test_snapshot_replaces_log_and_rejects_stale(db_path: Path) -> None:
    db, store = open_store(db_path)
    store.write([GroupUpdate(1, entries=ents(1, 10, 1))])
    snap = Snapshot(SnapshotMeta(20, 3, ConfState(voters=(1, 2, 3))), b"state")
    store.write([GroupUpdate(1, entries=ents(21, 2, 3), snapshot=snap)])
    s = store.group(1)
    assert (s.first_index(), s.last_index(), s.term(20)) == (21, 22, 3)
    with pytest.raises(CompactedError):
        s.term(19)
    with pytest.raises(SnapshotOutOfDateError):
        store.write([GroupUpdate(1, snapshot=Snapshot(SnapshotMeta(20, 3), b""))])
    with pytest.raises(SnapshotOutOfDateError):
        store.create_snapshot(1, 20, ConfState(), b"")
    assert [k for k in db.iterator(include_value=False) if k[9:10] == b"e"] == [
        b"r" + struct.pack(">Q", 1) + b"e" + struct.pack(">Q", i) for i in (21, 22)
    ]
    db.close()


def test_compact_keeps_term_and_deletes_keys(db_path: Path) -> None:
    db, store = open_store(db_path)
    store.write([GroupUpdate(1, entries=ents(1, 3, 1) + ents(4, 3, 2))])
    store.compact(1, 4)
    s = store.group(1)
    assert (s.first_index(), s.term(4)) == (5, 2)
    with pytest.raises(CompactedError):
        store.compact(1, 4)
    with pytest.raises(UnavailableError):
        store.compact(1, 7)
    assert len([k for k in db.iterator(include_value=False) if k[9:10] == b"e"]) == 2
    db.close()
    db, store = open_store(db_path)
    s = store.group(1)
    assert (s.first_index(), s.last_index(), s.term(4), s.term(6)) == (5, 6, 2, 2)
    db.close()


def test_destroy_group_leaves_neighbours(db_path: Path) -> None:
    db, store = open_store(db_path)
    for g in (1, 2, 3):
        store.bootstrap(g, ConfState(voters=(1,)))
        store.write([GroupUpdate(g, HardState(1, 1, 1), ents(1, 2, 1))])
    held = store.group(2)
    store.destroy_group(2)
    assert held.last_index() == 0
    assert not store.has_group(2)
    assert store.group_ids() == [1, 3]
    db.close()
    db, store = open_store(db_path)
    assert store.group_ids() == [1, 3]
    assert store.group(3).last_index() == 2
    assert store.group(2).initial_state() == (HardState(), ConfState())
    db.close()


def test_hole_in_log_is_reported(db_path: Path) -> None:
    db, store = open_store(db_path)
    store.write([GroupUpdate(1, entries=ents(1, 5, 1))])
    db.delete(b"r" + struct.pack(">Q", 1) + b"e" + struct.pack(">Q", 3))
    db.close()
    db, store = open_store(db_path)
    with pytest.raises(StorageCorruptError):
        store.group(1)
    db.close()


def test_prefixes_separate_stores_in_one_db(db_path: Path) -> None:
    db = plyvel.DB(str(db_path), create_if_missing=True)
    a, b = LevelDBLogStore(db, prefix=b"ra"), LevelDBLogStore(db, prefix=b"rb")
    a.write([GroupUpdate(1, entries=ents(1, 3, 1))])
    b.write([GroupUpdate(1, entries=ents(1, 1, 5))])
    assert (a.group(1).last_index(), b.group(1).last_index()) == (3, 1)
    assert b.group(1).term(1) == 5
    db.close()


def test_index_zero_snapshot_bootstraps_only_a_blank_replica(db_path: Path) -> None:
    """A joining replica learns the bootstrap membership from an index-0 snapshot."""
    db, store = open_store(db_path)
    cs = ConfState(voters=(1, 2, 3))
    boot = Snapshot(SnapshotMeta(0, 0, cs), b"")
    store.write([GroupUpdate(4, snapshot=boot, entries=ents(1, 2, 1))])
    s = store.group(4)
    assert s.initial_state()[1] == cs
    assert (s.first_index(), s.last_index()) == (1, 2)
    with pytest.raises(SnapshotOutOfDateError):
        store.write([GroupUpdate(4, snapshot=Snapshot(SnapshotMeta(0, 0, ConfState()), b""))])
    store.bootstrap(5, cs)
    with pytest.raises(SnapshotOutOfDateError):
        store.write([GroupUpdate(5, snapshot=boot)])
    db.close()


# --- a real Raft group on LevelDB ------------------------------------------------


class _Replica:
    """One node hosting several groups in one LevelDB, persisting with group commit."""

    def __init__(self, node_id: int, path: Path, groups: tuple[int, ...]) -> None:
        self.id = node_id
        self.path = path
        self.groups = groups
        self.applied: dict[int, list[bytes]] = {g: [] for g in groups}
        self.open()

    def open(self) -> None:
        import random

        from consensus.raft import Config
        from consensus.rawnode import RawNode

        self.db = plyvel.DB(str(self.path), create_if_missing=True)
        self.store = LevelDBLogStore(self.db, codec=ReversingCodec())
        self.raw: dict[int, RawNode] = {}
        for g in self.groups:
            self.store.bootstrap(g, ConfState(voters=(1, 2, 3)))
            rng = random.Random(self.id * 1000 + g)
            self.raw[g] = RawNode(Config(id=self.id, storage=self.store.group(g), rng=rng))
            self.applied[g] = []  # the state machine is rebuilt by replay

    def close(self) -> None:
        self.db.close()

    def handle_ready(self) -> list[tuple[int, Any]]:
        """Persist every group's Ready in ONE write, then send, apply, advance."""
        readies = {g: r.ready() for g, r in self.raw.items() if r.has_ready()}
        if not readies:
            return []
        self.store.write(
            [
                GroupUpdate(g, hard_state=rd.hard_state, entries=rd.entries, snapshot=rd.snapshot)
                for g, rd in readies.items()
            ]
        )
        out: list[tuple[int, Any]] = []
        for g, rd in readies.items():
            out.extend((g, m) for m in rd.messages)
            self.applied[g].extend(e.data for e in rd.committed_entries if e.data)
            self.raw[g].advance(rd)
        return out


def _pump(replicas: dict[int, _Replica], rounds: int, tick: bool = True) -> None:
    for _ in range(rounds):
        msgs: list[tuple[int, Any]] = []
        for r in replicas.values():
            if tick:
                for raw in r.raw.values():
                    raw.tick()
            msgs.extend(r.handle_ready())
        while msgs:
            g, m = msgs.pop(0)
            replicas[m.to].raw[g].step(m)
            msgs.extend(replicas[m.to].handle_ready())


def test_raft_groups_run_on_leveldb_and_survive_restart(tmp_path: Path) -> None:
    groups = (1, 2)
    reps = {i: _Replica(i, tmp_path / f"n{i}", groups) for i in (1, 2, 3)}
    for g in groups:
        reps[g].raw[g].campaign()  # node 1 leads group 1, node 2 leads group 2
    _pump(reps, 3, tick=False)
    for g in groups:
        leader = reps[g].raw[g]
        for k in range(20):
            leader.propose(b"g%d-%d" % (g, k))
        _pump(reps, 5)
        assert all(r.applied[g] == [b"g%d-%d" % (g, k) for k in range(20)] for r in reps.values())

    # A follower restarts from its disk alone and replays the same history.
    reps[3].close()
    reps[3].open()
    _pump(reps, 5)
    for g in groups:
        assert reps[3].applied[g] == reps[g].applied[g]
        s = reps[3].store.group(g)
        hs, cs = s.initial_state()
        assert cs == ConfState(voters=(1, 2, 3))
        assert hs.commit == s.last_index() >= 21
    for r in reps.values():
        r.close()
