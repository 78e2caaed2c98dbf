"""The erasure checker: an erased patient's data never comes back after the erasure.

Hand-written histories show each rule and the cases it must allow (a stale
follower that has not applied the erasure yet, a read racing the erasure, a
write landing after it); planted reappearances (a linearizable read after the
ack, a follower / scan / direct replica read that applied the erasure) are
flagged. A property test drives a simulated replicated log: with correct
replicas no history is flagged, and with a replica that resurrects erased data
the checker flags exactly the histories where such a read happened.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jepsen_like.checkers.erasure import check_erasure
from jepsen_like.history import Op

from .helpers import Hist

P = "p0"


def write(h: Hist, value: str, version: int | None, t0: int, t1: int, outcome: Any = "ok",
          key: str = P) -> Op:
    out = None if version is None else {"version": version}
    return h.add(1, "write", t0, t1, key=key, value=value, outcome=outcome, output=out)


def erase(h: Hist, version: int | None, t0: int, t1: int, outcome: Any = "ok", key: str = P) -> Op:
    out = None if version is None else {"version": version}
    return h.add(2, "erase", t0, t1, key=key, outcome=outcome, output=out)


def read(h: Hist, mode: str, found: list[tuple[str, int, int]], t0: int, t1: int,
         key: str | None = P, min_version: int | None = None, patient: str = P) -> Op:
    value: dict[str, Any] = {"mode": mode}
    if min_version is not None:
        value["min_version"] = min_version
    rows = [{"patient": patient, "value": v, "version": ver, "applied_index": a}
            for v, ver, a in found]
    return h.add(3, "read", t0, t1, key=key, value=value, output={"found": rows})


def base() -> Hist:
    """v1 at 5, v2 at 8, erased at 10 (acknowledged at t=40)."""
    h = Hist()
    write(h, "v1", 5, 0, 10)
    write(h, "v2", 8, 10, 20)
    erase(h, 10, 30, 40)
    return h


def test_reads_that_may_still_see_the_patient_are_allowed() -> None:
    h = base()
    read(h, "linearizable", [("v2", 8, 9)], 35, 45)  # concurrent with the erasure
    read(h, "follower", [("v2", 8, 9)], 50, 55)  # a follower that has not applied it
    read(h, "history-follower", [("v2", 8, 9), ("v1", 5, 9)], 60, 65)
    read(h, "linearizable", [], 70, 75)  # after: nothing
    read(h, "follower", [], 70, 75, min_version=10)
    write(h, "late", 12, 32, 80)  # a write racing the erasure lands after it
    read(h, "linearizable", [("late", 12, 13)], 90, 95)
    read(h, "follower", [("late", 12, 13)], 90, 95, min_version=10)
    result = check_erasure(h.ops)
    assert result.valid, result.violations
    assert result.erasures == 1 and result.reads == 7
    assert result.to_json()["verdict"] == "valid"


def test_a_linearizable_read_after_the_ack_that_sees_old_data_is_flagged() -> None:
    h = base()
    bad = read(h, "linearizable", [("v2", 8, 11)], 50, 55)
    result = check_erasure(h.ops)
    assert not result.valid and result.counts == {"reappeared": 1}
    v = result.violations[0]
    assert v["read"]["id"] == bad.id and v["erased_at"] == 10 and v["origin"] == 8
    assert "linearizable read began after the erasure was acknowledged" in v["why"]


def test_a_follower_that_applied_the_erasure_and_shows_old_data_is_flagged() -> None:
    h = base()
    read(h, "follower", [("v1", 5, 10)], 32, 33)  # claims applied 10, even before the ack
    result = check_erasure(h.ops)
    assert result.counts == {"reappeared": 1}
    assert result.violations[0]["why"] == ["served by a replica that had applied the erasure"]


def test_a_token_at_the_erasure_is_enough_even_without_an_applied_index() -> None:
    h = base()
    read(h, "replica-3", [("v2", 8, 0)], 100, 101, min_version=10)
    assert check_erasure(h.ops).counts == {"reappeared": 1}


def test_a_scan_page_is_judged_per_patient_and_per_page() -> None:
    h = base()
    write(h, "other", 3, 0, 5, key="p1")
    read(h, "scan", [("other", 3, 12)], 50, 60, key=None, patient="p1")  # never erased
    read(h, "scan", [("v2", 8, 9)], 50, 60, key=None)  # a page from before the erasure
    assert check_erasure(h.ops).valid
    read(h, "scan", [("v2", 8, 12)], 50, 60, key=None)
    result = check_erasure(h.ops)
    assert result.counts == {"reappeared": 1} and result.violations[0]["patient"] == P


def test_an_old_value_under_a_new_version_is_still_old_data() -> None:
    h = base()
    read(h, "follower", [("v1", 15, 15)], 50, 55)  # resurrected by a replay with a new index
    result = check_erasure(h.ops)
    assert result.counts == {"reappeared": 1} and result.violations[0]["origin"] == 5


def test_unknown_values_and_unknown_erasures() -> None:
    h = base()
    read(h, "follower", [("ghost", 9, 12)], 50, 55)
    assert check_erasure(h.ops).counts == {"never_written": 1}
    h2 = Hist()
    write(h2, "v1", 5, 0, 10)
    erase(h2, None, 30, 40, outcome="info")
    erase(h2, None, 30, 40, outcome="fail", key="p9")
    read(h2, "linearizable", [("v1", 5, 50)], 60, 65)
    result = check_erasure(h2.ops)
    assert result.valid and result.unchecked_erasures == 1 and result.erasures == 0
    # An info write's value is placed at the version the read reports.
    h3 = base()
    write(h3, "maybe", None, 25, 26, outcome="info")
    read(h3, "follower", [("maybe", 9, 11)], 50, 55)
    assert check_erasure(h3.ops).counts == {"reappeared": 1}
    h4 = base()
    write(h4, "maybe", None, 25, 26, outcome="info")
    read(h4, "follower", [("maybe", 11, 11)], 50, 55)
    assert check_erasure(h4.ops).valid


# ---- property: a simulated replicated log ----------------------------------------


def simulate(seed: int, n_ops: int, resurrecting: bool) -> tuple[list[Op], bool]:
    """Sequential clients over one log of puts and erasures of a few patients.
    Reads are served at a random applied prefix (follower, history, scan, a
    direct replica read with a token) or at the commit index (linearizable).
    A resurrecting replica ignores erasures when it serves a follower read.
    Returns the history and whether any read really showed erased data."""
    rng = random.Random(seed)
    h = Hist()
    log: list[tuple[str, str, str | None]] = []  # (kind, patient, value), index = position + 1
    patients = ["a", "b", "c"]
    erased_at: dict[str, int] = {}
    leaked = False
    t = 0

    def state(applied: int, ignore_erasure: bool) -> dict[str, list[tuple[str, int]]]:
        s: dict[str, list[tuple[str, int]]] = {p: [] for p in patients}
        for i, (kind, p, v) in enumerate(log[:applied], 1):
            if kind == "put":
                s[p].append((v or "", i))
            elif not ignore_erasure:
                s[p] = []
        return s

    for n in range(n_ops):
        t += 10
        p = rng.choice(patients)
        r = rng.random()
        if r < 0.35:
            log.append(("put", p, f"v{n}"))
            write(h, f"v{n}", len(log), t, t + 5, key=p)
        elif r < 0.45 and p not in erased_at:
            log.append(("erase", p, None))
            erased_at[p] = len(log)
            erase(h, len(log), t, t + 5, key=p)
        else:
            commit = len(log)
            mode = rng.choice(["linearizable", "follower", "scan", "replica"])
            token = erased_at.get(p) if mode == "replica" else None
            applied = commit if mode == "linearizable" else rng.randint(token or 0, commit)
            bad = resurrecting and mode != "linearizable"
            shown = state(applied, ignore_erasure=bad)[p]
            truth = state(applied, ignore_erasure=False)[p]
            if shown != truth:
                leaked = True
            found = [(v, ver, applied) for v, ver in shown]
            read(h, mode, found, t, t + 5, key=None if mode == "scan" else p,
                 min_version=token, patient=p)
    return h.ops, leaked


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 120))
def test_correct_replicas_are_never_flagged(seed: int, n_ops: int) -> None:
    ops, leaked = simulate(seed, n_ops, resurrecting=False)
    assert not leaked
    result = check_erasure(ops)
    assert result.valid, result.violations[:3]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 120))
def test_a_resurrecting_replica_is_flagged_exactly_when_it_showed_erased_data(
    seed: int, n_ops: int
) -> None:
    ops, leaked = simulate(seed, n_ops, resurrecting=True)
    result = check_erasure(ops)
    assert result.valid == (not leaked), (leaked, result.counts)
    if leaked:
        assert set(result.counts) == {"reappeared"}
