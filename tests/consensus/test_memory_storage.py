"""MemoryStorage: the read interface and the write side."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.memory_storage import MemoryStorage, SnapshotOutOfDateError
from consensus.storage import Storage
from consensus.types import (
    CompactedError,
    ConfState,
    ConsensusError,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)

CS = ConfState(voters=(1, 2, 3))


def _filled(n: int = 5) -> MemoryStorage:
    s = MemoryStorage(conf_state=CS)
    s.append([Entry(i, 1 + i // 3, b"d%d" % i) for i in range(1, n + 1)])
    return s


def test_is_a_storage_and_bootstraps_membership() -> None:
    s = MemoryStorage(conf_state=CS)
    assert isinstance(s, Storage)
    hs, cs = s.initial_state()
    assert hs == HardState() and cs == CS
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    assert s.entries(1, 1) == []


def test_entries_and_term_bounds() -> None:
    s = _filled(5)
    assert [e.index for e in s.entries(2, 5)] == [2, 3, 4]
    assert s.term(3) == 2
    with pytest.raises(UnavailableError):
        s.entries(2, 7)
    with pytest.raises(UnavailableError):
        s.term(6)
    s.compact(2)
    with pytest.raises(CompactedError):
        s.entries(2, 4)
    with pytest.raises(CompactedError):
        s.term(1)
    assert s.term(2) == 1  # the compaction point's term stays answerable
    assert s.first_index() == 3


def test_entries_size_limit_returns_at_least_one() -> None:
    s = MemoryStorage(conf_state=CS)
    s.append([Entry(i, 1, b"x" * 10) for i in range(1, 6)])
    assert len(s.entries(1, 6, max_size=25)) == 2
    assert len(s.entries(1, 6, max_size=5)) == 1
    assert len(s.entries(1, 6, max_size=0)) == 1
    assert len(s.entries(1, 6, max_size=1000)) == 5


def test_append_truncates_conflicting_suffix() -> None:
    s = _filled(5)
    s.append([Entry(3, 9, b"new3"), Entry(4, 9, b"new4")])
    assert s.last_index() == 4
    assert [(e.index, e.term) for e in s.entries(1, 5)] == [(1, 1), (2, 1), (3, 9), (4, 9)]


def test_append_skips_compacted_prefix_and_rejects_gaps() -> None:
    s = _filled(5)
    s.compact(3)
    s.append([Entry(i, 5) for i in range(2, 8)])
    assert s.first_index() == 4 and s.last_index() == 7
    assert s.term(3) == 2  # the compaction point itself is untouched
    with pytest.raises(ConsensusError):
        s.append([Entry(10, 5)])
    s.append([Entry(1, 1)])  # entirely compacted: ignored
    assert s.last_index() == 7


def test_create_snapshot_and_compact() -> None:
    s = _filled(5)
    snap = s.create_snapshot(4, CS, b"state")
    assert snap.meta == SnapshotMeta(index=4, term=2, conf_state=CS)
    assert s.snapshot() == snap
    with pytest.raises(SnapshotOutOfDateError):
        s.create_snapshot(3, CS, b"older")
    with pytest.raises(UnavailableError):
        s.create_snapshot(9, CS, b"future")
    s.compact(4)
    assert s.first_index() == 5 and s.last_index() == 5
    with pytest.raises(CompactedError):
        s.compact(4)
    with pytest.raises(UnavailableError):
        s.compact(6)


def test_apply_snapshot_replaces_log() -> None:
    s = _filled(5)
    snap = Snapshot(meta=SnapshotMeta(index=10, term=4, conf_state=CS), data=b"s")
    s.apply_snapshot(snap)
    assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 4)
    assert s.initial_state()[1] == CS
    with pytest.raises(SnapshotOutOfDateError):
        s.apply_snapshot(Snapshot(meta=SnapshotMeta(index=9, term=4)))


def test_blank_storage_accepts_bootstrap_snapshot_once() -> None:
    s = MemoryStorage()
    boot = Snapshot(meta=SnapshotMeta(index=0, term=0, conf_state=CS))
    s.apply_snapshot(boot)
    assert s.initial_state()[1] == CS
    with pytest.raises(SnapshotOutOfDateError):
        s.apply_snapshot(boot)


def test_hard_state_round_trip() -> None:
    s = MemoryStorage(conf_state=CS)
    s.set_hard_state(HardState(term=3, vote=2, commit=0))
    assert s.initial_state()[0] == HardState(term=3, vote=2, commit=0)


@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 8), st.integers(1, 5)), max_size=25))
def test_append_matches_a_list_model(ops: list[tuple[int, int, int]]) -> None:
    """Appending a run of entries at index i truncates everything from i on."""
    s = MemoryStorage(conf_state=CS)
    model: list[tuple[int, int]] = []  # (index, term), index = position + 1
    for start, n, term in ops:
        start = min(start, len(model) + 1)  # no gaps
        ents = [Entry(start + k, term) for k in range(n)]
        s.append(ents)
        model = model[: start - 1] + [(e.index, e.term) for e in ents]
    assert s.last_index() == len(model)
    assert [(e.index, e.term) for e in s.entries(1, s.last_index() + 1)] == model
