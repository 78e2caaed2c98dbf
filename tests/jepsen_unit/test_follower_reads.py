"""Follower reads, checked against the known writes replayed to their version."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from jepsen_like.checkers.follower_reads import check_follower_reads
from jepsen_like.history import Op

from .helpers import Hist, simulate_follower_reads


def fread(
    h: Hist,
    value: Any,
    version: int,
    applied: int,
    lag: int = 0,
    t0: int = 100,
    min_version: int = 0,
    key: str = "k",
) -> Op:
    return h.add(
        9,
        "follower_read",
        t0,
        t0 + 5,
        key=key,
        value={"min_version": min_version} if min_version else None,
        output={"value": value, "version": version, "applied_index": applied, "lag": lag},
    )


def base() -> Hist:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vw(1, "b", 9, 20, 30)
    h.vw(2, "x", None, 40, 50, outcome="info")
    return h


def counts(h: Hist, **kw: Any) -> dict[str, int]:
    return check_follower_reads(h.ops, **kw).counts


def test_reads_of_any_applied_prefix_are_valid() -> None:
    h = base()
    fread(h, None, 0, 3, lag=6)  # before the first write applied
    fread(h, "a", 5, 7, lag=2)  # a lagging replica
    fread(h, "b", 9, 9)
    fread(h, "x", 12, 12)  # the info write applied, at an index we learn here
    fread(h, "b", 9, 11, min_version=9)
    assert counts(h) == {}


def test_a_value_never_written_is_rejected() -> None:
    h = base()
    fread(h, "zzz", 7, 8)
    fread(h, "zzz", 0, 3)
    assert counts(h) == {"never_written": 2}


def test_a_wrong_value_at_a_known_version_is_rejected() -> None:
    h = base()
    fread(h, "b", 5, 8)
    assert counts(h) == {"wrong_value_at_version": 1}


def test_an_older_value_than_the_applied_index_implies_is_rejected() -> None:
    h = base()
    fread(h, "a", 5, 9)  # applied 9 means the write of b (version 9) is applied
    result = check_follower_reads(h.ops)
    assert result.counts == {"stale_for_applied_index": 1}
    assert result.violations[0]["newer_version"] == 9


def test_version_above_applied_index_and_min_version_and_lag() -> None:
    h = base()
    fread(h, "b", 9, 8)
    fread(h, "a", 5, 6, min_version=9)
    fread(h, "a", 5, 6, lag=-1)
    assert counts(h) == {"version_above_applied": 1, "below_min_version": 1, "negative_lag": 1}


def test_claimed_commit_index_beyond_the_log_is_rejected() -> None:
    h = base()
    # Highest acknowledged version 9, one info write: the log holds at most 10.
    fread(h, "b", 9, 9, lag=1)
    assert counts(h, index_slack=0) == {}
    fread(h, "b", 9, 9, lag=2)
    assert counts(h, index_slack=0) == {"beyond_log": 1}
    assert counts(h, index_slack=1) == {}
    assert counts(h, index_slack=None) == {}


def test_groups_bound_each_log_separately() -> None:
    h = Hist()
    h.add(1, "write", 0, 10, key="g1", value="a", output={"version": 50})
    h.add(1, "write", 0, 10, key="g2", value="b", output={"version": 4})
    fread(h, "b", 4, 40, key="g2")
    assert counts(h, index_slack=0) == {}
    group = {"g1": 1, "g2": 2}
    assert counts(h, index_slack=0, group_of=lambda k: group[k or ""]) == {"beyond_log": 1}


def test_two_writes_with_one_version_are_rejected() -> None:
    h = base()
    h.vw(3, "c", 9, 60, 70)
    assert counts(h) == {"version_reused": 1}


params = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "n_ops": st.integers(1, 200),
        "keys": st.integers(1, 3),
        "concurrency": st.integers(1, 6),
        "info_rate": st.sampled_from([0.0, 0.1]),
    }
)


@given(params)
def test_simulated_replica_reads_are_valid(p: dict[str, int]) -> None:
    result = check_follower_reads(simulate_follower_reads(**p))
    assert result.valid, result.violations


@given(params, st.data())
def test_a_read_made_older_than_its_applied_prefix_is_rejected(
    p: dict[str, int], data: st.DataObject
) -> None:
    ops = simulate_follower_reads(**p)
    # Reads whose key had an acknowledged write at or below their applied index.
    acked = [o for o in ops if o.kind == "write" and o.outcome == "ok"]
    candidates = [
        r
        for r in ops
        if r.kind == "follower_read"
        and r.outcome == "ok"
        and any(w.key == r.key and w.output["version"] <= r.output["applied_index"] for w in acked)
    ]
    if not candidates:
        return
    victim = data.draw(st.sampled_from(candidates))
    mutated = copy.deepcopy(ops)
    # Serve the initial (absent) state while claiming the same applied index.
    mutated[victim.id].output = {**victim.output, "value": None, "version": 0}
    result = check_follower_reads(mutated)
    assert result.counts == {"stale_for_applied_index": 1}
