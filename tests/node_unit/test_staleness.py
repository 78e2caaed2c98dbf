"""The staleness tracker (node.staleness): confirmed pairs, applied thresholds,
unknown, and a model check (hypothesis) that it never claims to be fresher
than the pairs it was given allow, and is exactly as fresh when nothing was
thinned."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.staleness import UNKNOWN, ConfirmedPairs, ReplicaFreshness


def test_no_pair_is_unknown() -> None:
    p = ConfirmedPairs(0.25)
    assert p.staleness(100.0) == UNKNOWN
    p.advance(50)
    assert p.staleness(100.0) == UNKNOWN  # applied much, but nothing confirmed


def test_pair_counts_only_once_applied() -> None:
    p = ConfirmedPairs(0.25)
    p.observe(10, at=100.0)
    assert p.staleness(101.0) == UNKNOWN  # C=10 not applied yet
    p.advance(9)
    assert p.staleness(101.0) == UNKNOWN
    p.advance(10)
    assert p.staleness(101.0) == pytest.approx(1.25)
    assert p.staleness(130.0) == pytest.approx(30.25)  # grows while nothing new arrives


def test_behind_follower_uses_the_older_pair_it_has_applied() -> None:
    """The bug of issue 10: a follower applied up to its own (low) commit
    index looked current. With pairs, it is as stale as the last pair it has
    fully applied, however recent the newer pairs are."""
    p = ConfirmedPairs(0.0)
    p.observe(100, at=10.0)
    p.advance(100)
    for k in range(1, 40):  # the leader moves on; this replica applies nothing
        p.observe(100 + 50 * k, at=10.0 + k)
    assert p.staleness(50.0) == pytest.approx(40.0)
    assert p.lag(own_commit=100) == 1950  # against the leader's announced commit
    p.advance(1000)  # catches up partly: pair (1000, 28) is applied
    assert p.staleness(50.0) == pytest.approx(22.0)
    assert p.lag(own_commit=1000) == 1950 - 900


def test_already_applied_pair_counts_at_once() -> None:
    p = ConfirmedPairs(0.0)
    p.advance(20)
    p.observe(5, at=3.0)
    assert p.staleness(4.0) == pytest.approx(1.0)
    p.observe(4, at=2.0)  # older: changes nothing
    assert p.staleness(4.0) == pytest.approx(1.0)


def test_lag_counts_against_latest_announced_not_max() -> None:
    p = ConfirmedPairs(0.0)
    p.observe(30, at=5.0)
    p.observe(20, at=4.0)  # arrives late, older: not the latest
    assert p.lag(own_commit=0) == 30


def test_pending_is_bounded_and_thinning_only_makes_it_staler() -> None:
    p = ConfirmedPairs(0.0, max_pending=8)
    for k in range(1, 1000):
        p.observe(k, at=float(k))
    assert len(p.pending) <= 8
    p.advance(999)
    assert p.staleness(1000.0) == pytest.approx(1.0)  # the newest pair is always kept


def test_freshness_leader_own_clock_and_announcement() -> None:
    f = ReplicaFreshness(max_clock_offset_s=0.25)
    assert f.staleness(mono=1.0, wall=1000.0) == UNKNOWN
    assert f.closed_due(mono=1.0, interval_s=0.3, give_up_s=2.0)
    f.issue(b"c1", mono=1.0, wall=1000.0, closed=True)
    assert not f.closed_due(mono=1.1, interval_s=0.3, give_up_s=2.0)  # one at a time
    f.issue(b"r1", mono=1.05, wall=1000.05)
    assert f.confirm(b"r1", 7) is False  # a client read: not the periodic round
    assert f.confirm(b"c1", 7) is True
    assert f.newest == (7, 1000.05)  # the newest pair is announced
    f.advance(7)
    # Own monotonic clock: no offset; the min of the two honest bounds.
    assert f.staleness(mono=1.5, wall=1000.5) == pytest.approx(0.45)
    assert f.lag(own_commit=9) == 2


def test_freshness_abandons_unanswered_round() -> None:
    f = ReplicaFreshness(0.25)
    f.issue(b"c1", mono=1.0, wall=1.0, closed=True)
    assert not f.closed_due(mono=2.0, interval_s=0.3, give_up_s=2.0)
    assert f.closed_due(mono=3.5, interval_s=0.3, give_up_s=2.0)
    assert f.issued == {}
    assert f.confirm(b"c1", 5) is False  # a late answer to an abandoned round


def test_follower_hears_announcements() -> None:
    f = ReplicaFreshness(0.25)
    f.heard(10, wall=100.0)
    assert f.staleness(mono=0.0, wall=100.5) == UNKNOWN
    f.advance(10)
    assert f.staleness(mono=0.0, wall=100.5) == pytest.approx(0.75)


# ---- model check ------------------------------------------------------------

_events = st.lists(
    st.one_of(
        st.tuples(st.just("pair"), st.integers(0, 60), st.integers(0, 200)),
        st.tuples(st.just("apply"), st.integers(0, 60), st.just(0)),
        st.tuples(st.just("ask"), st.just(0), st.integers(0, 300)),
    ),
    max_size=80,
)


@given(_events, st.sampled_from([2, 3, 4, 128]))
def test_never_fresher_than_the_model(events: list[tuple[str, int, int]], cap: int) -> None:
    """Model: all pairs ever observed; the staleness at `now` is now minus the
    latest t of a pair whose index is applied. The tracker must never state
    less, and states exactly as much when its front was never thinned."""
    p = ConfirmedPairs(0.0, max_pending=cap)
    pairs: list[tuple[int, float]] = []
    applied = 0
    thinned = False
    for kind, a, b in events:
        if kind == "pair":
            pairs.append((a, float(b)))
            p.observe(a, float(b))
            thinned = thinned or len(pairs) > cap
        elif kind == "apply":
            applied = max(applied, a)
            p.advance(a)
        else:
            now = float(b)
            usable = [t for c, t in pairs if c <= applied]
            want = UNKNOWN if not usable else max(0.0, now - max(usable))
            got = p.staleness(now)
            if want == UNKNOWN:
                assert got == UNKNOWN
            else:
                assert got != UNKNOWN or thinned
                if got != UNKNOWN:
                    assert got >= want - 1e-9
                    if not thinned:
                        assert got == pytest.approx(want)
            assert p.lag(0) >= 0
