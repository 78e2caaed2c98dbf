"""The log (stable + unstable): appends, conflicts, term lookups, commit rules."""

from __future__ import annotations

import pytest

from consensus.memory_storage import MemoryStorage
from consensus.raft_log import RaftLog
from consensus.types import (
    CompactedError,
    ConfState,
    ConsensusError,
    Entry,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)


def _log(terms: list[int], stable: int | None = None) -> RaftLog:
    """A log whose first `stable` entries are in storage, the rest unstable."""
    st = MemoryStorage(conf_state=ConfState(voters=(1,)))
    ents = [Entry(i + 1, t, b"%d" % (i + 1)) for i, t in enumerate(terms)]
    k = len(ents) if stable is None else stable
    st.append(ents[:k])
    log = RaftLog(st)
    log.append(ents[k:])
    return log


def test_term_across_stable_and_unstable() -> None:
    log = _log([1, 1, 2, 3, 3], stable=2)
    assert [log.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 3, 3]
    with pytest.raises(UnavailableError):
        log.term(6)
    assert log.term_or_zero(6) == 0
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 5, 3)


def test_find_conflict() -> None:
    log = _log([1, 2, 3])
    assert log.find_conflict([Entry(1, 1), Entry(2, 2)]) == 0  # all present
    assert log.find_conflict([Entry(2, 2), Entry(3, 3), Entry(4, 4)]) == 4  # new
    assert log.find_conflict([Entry(2, 2), Entry(3, 4)]) == 3  # term conflict
    assert log.find_conflict([Entry(7, 4)]) == 7


def test_maybe_append_truncates_conflicts_and_commits() -> None:
    log = _log([1, 2, 3])
    assert log.maybe_append(1, 1, 3, [Entry(2, 4), Entry(3, 4)]) == 3
    assert [log.term(i) for i in (1, 2, 3)] == [1, 4, 4]
    assert log.committed == 3
    assert log.maybe_append(3, 9, 3, []) is None  # (3, 9) is not in the log


def test_maybe_append_commit_is_bounded_by_new_entries() -> None:
    log = _log([1, 1, 1])
    assert log.maybe_append(1, 1, 10, [Entry(2, 1)]) == 2
    assert log.committed == 2  # not 10: only what this message proved


def test_conflict_with_committed_entry_is_an_error() -> None:
    log = _log([1, 1, 1])
    log.commit_to(2)
    with pytest.raises(ConsensusError):
        log.maybe_append(1, 1, 2, [Entry(2, 5)])


def test_find_conflict_by_term() -> None:
    # Index:  1  2  3  4  5  6  7
    log = _log([1, 1, 2, 2, 2, 4, 4])
    assert log.find_conflict_by_term(7, 3) == (5, 2)  # skip the whole term-4 run
    assert log.find_conflict_by_term(7, 4) == (7, 4)
    assert log.find_conflict_by_term(4, 1) == (2, 1)
    assert log.find_conflict_by_term(3, 0) == (0, 0)


def test_maybe_commit_only_current_term() -> None:
    log = _log([1, 1, 2])
    assert not log.maybe_commit(2, 2)  # entry 2 is of term 1
    assert log.committed == 0
    assert log.maybe_commit(3, 2)
    assert log.committed == 3


def test_committed_entries_only_once_persisted() -> None:
    log = _log([1, 1, 1], stable=1)
    log.commit_to(3)
    assert [e.index for e in log.next_committed_ents()] == [1]
    ents = log.next_unstable_ents()
    assert [e.index for e in ents] == [2, 3]
    log.accept_unstable()
    assert log.next_unstable_ents() == []  # handed out already
    log.storage.append(ents)  # type: ignore[attr-defined]
    log.stable_to(3, 1)
    assert [e.index for e in log.next_committed_ents()] == [1, 2, 3]
    log.accept_applying(3)
    assert not log.has_next_committed_ents()
    log.applied_to(3)
    assert log.applied == 3


def test_stable_to_ignores_replaced_entries() -> None:
    log = _log([1, 1], stable=0)
    log.accept_unstable()
    log.append([Entry(2, 5)])  # replaces entry 2 while 1..2 are being persisted
    log.stable_to(2, 1)  # the old entry 2 (term 1) was persisted: not the new one
    assert log.unstable.offset == 1
    assert [e.term for e in log.next_unstable_ents()] == [5]


def test_slice_size_limit_spans_stable_and_unstable() -> None:
    st = MemoryStorage(conf_state=ConfState(voters=(1,)))
    st.append([Entry(i, 1, b"x" * 10) for i in (1, 2, 3)])
    log = RaftLog(st)
    log.append([Entry(i, 1, b"x" * 10) for i in (4, 5, 6)])
    assert len(log.slice(1, 7)) == 6
    assert [e.index for e in log.slice(2, 7, max_size=45)] == [2, 3, 4, 5]
    assert [e.index for e in log.slice(2, 7, max_size=25)] == [2, 3]
    assert [e.index for e in log.slice(5, 7, max_size=1)] == [5]
    with pytest.raises(UnavailableError):
        log.slice(5, 8)


def test_restore_snapshot() -> None:
    log = _log([1, 1, 1])
    snap = Snapshot(meta=SnapshotMeta(index=10, term=3, conf_state=ConfState(voters=(1,))))
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.committed) == (11, 10, 10)
    assert log.term(10) == 3
    with pytest.raises(CompactedError):
        log.term(9)
    assert log.next_committed_ents() == []  # the snapshot is applied first
    assert log.next_unstable_snapshot() == snap


def test_is_up_to_date() -> None:
    log = _log([1, 2, 2])
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(10, 1)
