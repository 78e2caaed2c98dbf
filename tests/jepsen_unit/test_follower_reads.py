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


# ---- staleness claims (issue 10 item 3) -----------------------------------------

S = 1_000_000_000  # one second in the history's nanoseconds


def sread(
    h: Hist,
    value: Any,
    version: int,
    staleness: float | None,
    t0: float,
    bound: float | None = None,
    key: str = "k",
) -> Op:
    output: dict[str, Any] = {
        "value": value, "version": version, "applied_index": version, "lag": 0,
    }
    if staleness is not None:
        output["staleness"] = staleness
    return h.add(
        9, "follower_read", int(t0 * S), int(t0 * S) + 1000, key=key,
        value={"max_staleness": bound} if bound is not None else None, output=output,
    )


def timed() -> Hist:
    """Writes a (version 5) acked at 1 s, b (version 9) acked at 10 s."""
    h = Hist()
    h.add(1, "write", int(0.5 * S), 1 * S, value="a", output={"version": 5})
    h.add(1, "write", int(9.5 * S), 10 * S, value="b", output={"version": 9})
    return h


def test_a_read_that_reflects_what_its_claim_requires_is_valid() -> None:
    h = timed()
    sread(h, "a", 5, 2.5, t0=12.0)  # must reflect writes acked before 9.5 s: a
    sread(h, "b", 9, 0.1, t0=12.0)
    sread(h, "a", 5, -1.0, t0=30.0)  # unknown: claims nothing
    sread(h, "a", 5, None, t0=30.0)  # no staleness recorded (a NOT_FOUND): nothing
    sread(h, None, 0, 0.5, t0=1.2)  # a acked at 1 s is within the claimed 0.5 s
    result = check_follower_reads(h.ops, clock_error_s=0.05)
    assert result.valid, result.violations


def test_a_planted_stale_read_beyond_its_claim_is_found() -> None:
    """The bug of issue 10: a follower 20 s behind claims 0.3 s."""
    h = timed()
    planted = sread(h, "a", 5, 0.3, t0=30.0)
    result = check_follower_reads(h.ops, clock_error_s=0.05)
    assert result.counts == {"stale_beyond_claim": 1}
    v = result.violations[0]
    assert v["op"]["id"] == planted.id and v["missed_version"] == 9 and v["staleness"] == 0.3


def test_the_stated_clock_error_is_allowed_and_no_more() -> None:
    h = timed()
    sread(h, "a", 5, 1.96, t0=12.0)  # b acked 2.0 s before: 0.04 s beyond the claim
    assert check_follower_reads(h.ops, clock_error_s=0.05).valid
    assert check_follower_reads(h.ops, clock_error_s=0.0).counts == {"stale_beyond_claim": 1}


def test_a_read_of_an_erased_or_deleted_record_reflects_the_delete() -> None:
    h = timed()
    h.add(1, "delete", 11 * S, 12 * S, output={"version": 12})
    sread(h, None, 0, 1.0, t0=20.0)
    assert check_follower_reads(h.ops).valid
    sread(h, None, 0, 1.0, t0=11.5)  # absent before the delete: misses b
    assert check_follower_reads(h.ops).counts == {"stale_beyond_claim": 1}


def test_a_bounded_read_served_beyond_its_bound_is_found() -> None:
    h = timed()
    sread(h, "b", 9, 0.8, t0=12.0, bound=1.0)  # within
    sread(h, "b", 9, 3.0, t0=12.0, bound=1.0)  # honest, but beyond its bound
    sread(h, "b", 9, -1.0, t0=12.0, bound=2.0)  # unknown is beyond any bound
    result = check_follower_reads(h.ops)
    assert result.counts == {"over_bound": 2}


def _honest_staleness(ops: list[Op], read: Op) -> float:
    """The least honest claim for a simulated read: the age, at its invoke,
    of the earliest acknowledged write (of any key) it did not apply."""
    applied = int(read.output["applied_index"])
    missed = [
        w.complete_ns
        for w in ops
        if w.kind == "write" and w.outcome == "ok" and w.complete_ns is not None
        and int(w.output["version"]) > applied and w.complete_ns < read.invoke_ns
    ]
    return 0.0 if not missed else (read.invoke_ns - min(missed)) / S


def _with_claims(ops: list[Op], extra: float) -> list[Op]:
    out = copy.deepcopy(ops)
    for op in out:
        if op.kind == "follower_read" and op.outcome == "ok":
            op.output = {**op.output, "staleness": _honest_staleness(ops, op) + extra}
    return out


@given(params, st.sampled_from([0.0, 1e-9, 5.0]))
def test_simulated_honest_claims_are_valid(p: dict[str, int], extra: float) -> None:
    result = check_follower_reads(_with_claims(simulate_follower_reads(**p), extra))
    assert result.valid, result.violations


@given(params, st.data())
def test_a_claim_fresher_than_the_truth_is_found(p: dict[str, int], data: st.DataObject) -> None:
    ops = _with_claims(simulate_follower_reads(**p), 0.0)
    # Reads that missed an acknowledged write of their own key, acked before they began.
    acked = [o for o in ops if o.kind == "write" and o.outcome == "ok"]
    candidates = [
        (r, w)
        for r in ops
        if r.kind == "follower_read" and r.outcome == "ok"
        for w in acked
        if w.key == r.key and w.output["version"] > r.output["version"]
        and w.complete_ns is not None and w.complete_ns < r.invoke_ns
    ]
    if not candidates:
        return
    victim, missed = data.draw(st.sampled_from(candidates))
    # Claim less than the age of the write it missed: a lie.
    claim = (victim.invoke_ns - missed.complete_ns) / S / 2
    ops[victim.id].output = {**victim.output, "staleness": claim}
    result = check_follower_reads(ops)
    assert result.counts == {"stale_beyond_claim": 1}
