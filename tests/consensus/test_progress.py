"""Follower progress: states, flow control window, decrements, tracker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.inflights import Inflights
from consensus.progress import Progress, ProgressState, ProgressTracker, TrackerConfig
from consensus.quorum import JointConfig


def _pr(next_index: int = 5, match: int = 0, max_count: int = 4, max_bytes: int = 0) -> Progress:
    return Progress(next_index, Inflights(max_count, max_bytes), match=match)


def test_inflights_count_limit() -> None:
    inf = Inflights(3)
    for i in (1, 2, 3):
        assert not inf.full()
        inf.add(i, 10)
    assert inf.full()
    with pytest.raises(OverflowError):
        inf.add(4, 10)
    inf.free_le(1)
    assert not inf.full() and inf.count() == 2
    inf.free_le(10)
    assert inf.count() == 0 and inf.total_bytes == 0


def test_inflights_byte_limit() -> None:
    inf = Inflights(100, max_bytes=250)
    inf.add(1, 100)
    inf.add(2, 100)
    assert not inf.full()
    inf.add(3, 100)
    assert inf.full() and inf.total_bytes == 300
    inf.free_le(2)
    assert not inf.full() and inf.total_bytes == 100


@given(st.lists(st.integers(0, 50), max_size=40), st.integers(0, 60))
def test_inflights_free_le_model(sizes: list[int], upto: int) -> None:
    inf = Inflights(1000, 0)
    for i, s in enumerate(sizes, start=1):
        inf.add(i, s)
    inf.free_le(upto)
    remaining = [(i, s) for i, s in enumerate(sizes, start=1) if i > upto]
    assert inf.count() == len(remaining)
    assert inf.total_bytes == sum(s for _, s in remaining)


def test_probe_sends_one_append_then_pauses() -> None:
    pr = _pr()
    assert not pr.is_paused()
    pr.sent_entries(3, 30)
    assert pr.is_paused()
    assert pr.next == 5  # probing does not advance next optimistically
    assert pr.maybe_update(6)
    assert not pr.is_paused()
    assert (pr.match, pr.next) == (6, 7)


def test_replicate_pipelines_until_window_full() -> None:
    pr = _pr(match=4, max_count=2)
    pr.become_replicate()
    assert pr.next == 5
    pr.sent_entries(3, 30)
    assert pr.next == 8 and not pr.is_paused()
    pr.sent_entries(2, 20)
    assert pr.next == 10 and pr.is_paused()
    pr.maybe_update(7)
    pr.inflights.free_le(7)
    assert pr.inflights.count() == 1


def test_maybe_decr_to_in_replicate() -> None:
    pr = _pr(match=5)
    pr.become_replicate()
    pr.sent_entries(10, 100)
    assert not pr.maybe_decr_to(5, 5)  # stale: at or below match
    assert pr.maybe_decr_to(10, 3)
    assert pr.next == 6  # back to match + 1


def test_maybe_decr_to_in_probe_uses_hint_but_not_below_match() -> None:
    pr = _pr(next_index=10, match=2)
    assert not pr.maybe_decr_to(5, 1)  # not the outstanding probe (next - 1 = 9)
    assert pr.maybe_decr_to(9, 6)
    assert pr.next == 7
    assert pr.maybe_decr_to(6, 0)
    assert pr.next == 3  # never below match + 1


def test_snapshot_state_pauses_and_probe_resumes_after_it() -> None:
    pr = _pr(match=2)
    pr.become_snapshot(20)
    assert pr.state == ProgressState.SNAPSHOT and pr.is_paused()
    pr.become_probe()
    assert pr.next == 21
    assert pr.state.name == "PROBE"


def test_tracker_committed_and_quorum_active() -> None:
    trk = ProgressTracker(10, 0)
    trk.config = TrackerConfig(JointConfig({1, 2, 3}), learners=frozenset({4}))
    for i, m in ((1, 10), (2, 7), (3, 2), (4, 100)):
        pr = Progress(m + 1, trk.new_inflights(), is_learner=(i == 4), match=m)
        trk.progress[i] = pr
    assert trk.committed() == 7  # the learner's 100 does not count
    for pr in trk.progress.values():
        pr.recent_active = False
    trk.progress[1].recent_active = True
    trk.progress[4].recent_active = True
    assert not trk.quorum_active()
    trk.progress[3].recent_active = True
    assert trk.quorum_active()


def test_tracker_votes_first_answer_counts() -> None:
    trk = ProgressTracker(10, 0)
    trk.config = TrackerConfig(JointConfig({1, 2, 3}))
    trk.record_vote(1, True)
    trk.record_vote(2, False)
    trk.record_vote(2, True)  # ignored: 2 already answered
    granted, rejected, _ = trk.tally_votes()
    assert (granted, rejected) == (1, 1)
    trk.record_vote(3, True)
    assert trk.tally_votes()[0] == 2
