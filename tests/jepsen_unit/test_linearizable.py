"""The linearizability checker rejects known anomalies and accepts correct runs."""

from __future__ import annotations

import copy
import time

from hypothesis import given
from hypothesis import strategies as st

from jepsen_like.checkers.linearizable import check_key, check_linearizable
from jepsen_like.checkers.models import (
    RegisterModel,
    SimConfig,
    VersionedRegisterModel,
    simulate_register_history,
)
from jepsen_like.history import Op

from .helpers import Hist

REG = RegisterModel()
VREG = VersionedRegisterModel()


def verdict(ops: list[Op], model: object = REG) -> str:
    return check_linearizable(ops, model).verdict  # type: ignore[arg-type]


# ---------------------------------------------------------------- rejected


def test_stale_read_is_rejected() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(1, 2, 20, 30)
    h.r(2, 1, 40, 50)  # the write of 2 completed before this read began
    assert verdict(h.ops) == "invalid"


def test_lost_write_is_rejected() -> None:
    h = Hist()
    h.w(1, "a", 0, 10)
    h.w(2, "b", 15, 25)  # acknowledged...
    h.r(3, "a", 30, 40)  # ...but never visible
    h.r(1, "a", 50, 60)
    h.r(2, "a", 70, 80)
    assert verdict(h.ops) == "invalid"


def test_double_applied_cas_is_rejected() -> None:
    h = Hist()
    h.w(1, 0, 0, 10)
    h.cas(1, 0, 1, 20, 40)
    h.cas(2, 0, 2, 25, 45)  # both claim to have seen 0: one must have seen the other's value
    assert verdict(h.ops) == "invalid"


def test_info_write_counted_as_visible_then_undone_is_rejected() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(2, 2, 20, 30, outcome="info")
    h.r(3, 2, 40, 50)  # the info write took effect...
    h.r(3, 1, 60, 70)  # ...so the older value cannot come back
    assert verdict(h.ops) == "invalid"


def test_reads_going_back_in_time_during_a_write_are_rejected() -> None:
    h = Hist()
    h.w(1, 1, 0, 100)
    h.r(2, 1, 10, 20)
    h.r(2, None, 30, 40)
    assert verdict(h.ops) == "invalid"


def test_precondition_failure_that_contradicts_the_state_is_rejected() -> None:
    h = Hist()
    h.w(1, 5, 0, 10)
    h.cas(2, 5, 6, 20, 30, outcome="fail")  # claims the register did not hold 5
    assert verdict(h.ops) == "invalid"


def test_a_violation_is_reported_on_its_key_only_with_an_explanation() -> None:
    h = Hist()
    h.w(1, 1, 0, 10, key="good")
    h.r(2, 1, 20, 30, key="good")
    h.w(1, 1, 0, 10, key="bad")
    h.w(1, 2, 20, 30, key="bad")
    stale = h.r(2, 1, 40, 50, key="bad")
    result = check_linearizable(h.ops, REG)
    assert not result.valid and result.verdict == "invalid"
    assert [k.key for k in result.invalid] == ["bad"]
    explanation = result.invalid[0].explanation
    assert explanation is not None
    assert explanation["stuck_op"]["id"] == stale.id
    assert (
        explanation["stuck_op"]["invoke_ns"] == 40 and explanation["stuck_op"]["complete_ns"] == 50
    )
    assert explanation["state_before"] == {"value": 2}
    assert result.to_json()["invalid"][0]["key"] == "bad"


# ---------------------------------------------------------------- accepted


def test_concurrent_write_seen_by_overlapping_reads_is_accepted() -> None:
    h = Hist()
    h.w(1, 1, 0, 100)
    h.r(2, None, 5, 15)
    h.r(3, 1, 20, 30)
    h.r(2, 1, 40, 50)
    assert verdict(h.ops) == "valid"


def test_reads_ordered_by_linearization_not_invocation_are_accepted() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(1, 2, 20, 100)
    h.r(2, 2, 30, 90)
    h.r(3, 1, 25, 95)  # overlaps the read of 2: may take effect before the write
    assert verdict(h.ops) == "valid"


def test_touching_intervals_count_as_concurrent() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.r(2, None, 10, 20)  # invoked the instant the write returned
    assert verdict(h.ops) == "valid"


def test_info_write_that_took_effect_is_accepted() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(2, 2, 20, 30, outcome="info")
    h.r(3, 1, 40, 50)  # not yet...
    h.r(3, 2, 500, 510)  # ...and then it applied, long after the client gave up
    assert verdict(h.ops) == "valid"


def test_info_write_that_never_took_effect_is_accepted() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(2, 2, 20, 30, outcome="info")
    h.r(3, 1, 40, 50)
    h.r(3, 1, 500, 510)
    assert verdict(h.ops) == "valid"


def test_failed_ops_are_dropped_and_info_reads_constrain_nothing() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(2, 9, 20, 30, outcome="fail")
    h.add(3, "read", 35, 45, outcome="info")
    h.r(3, 1, 50, 60)
    h.cas(1, 7, 8, 70, 80, outcome="fail")  # a true precondition failure
    assert verdict(h.ops) == "valid"


def test_info_cas_may_apply_or_not() -> None:
    h = Hist()
    h.w(1, 0, 0, 10)
    h.cas(2, 0, 1, 20, 30, outcome="info")
    h.r(3, 1, 40, 50)
    assert verdict(h.ops) == "valid"
    h2 = Hist()
    h2.w(1, 0, 0, 10)
    h2.cas(2, 0, 1, 20, 30, outcome="info")
    h2.r(3, 0, 40, 50)
    assert verdict(h2.ops) == "valid"


# ---------------------------------------------------------- versioned register


def test_versioned_stale_read_and_version_regression_are_rejected() -> None:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vw(1, "b", 7, 20, 30)
    h.vr(2, "a", 5, 40, 50)
    assert verdict(h.ops, VREG) == "invalid"
    h2 = Hist()
    h2.vw(1, "a", 5, 0, 10)
    h2.vw(1, "b", 3, 20, 30)  # a later write with a lower version
    assert verdict(h2.ops, VREG) == "invalid"


def test_versioned_read_with_wrong_version_is_rejected() -> None:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vr(2, "a", 6, 20, 30)
    assert verdict(h.ops, VREG) == "invalid"


def test_versioned_cas_applied_twice_on_one_version_is_rejected() -> None:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vcas(1, 5, "b", 7, 20, 30)
    h.vcas(2, 5, "c", 8, 25, 40)
    assert verdict(h.ops, VREG) == "invalid"


def test_versioned_info_write_pins_its_version_through_a_read() -> None:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vw(2, "b", None, 20, 30, outcome="info")
    h.vr(3, "b", 9, 40, 50)
    h.vcas(3, 9, "c", 12, 60, 70)
    h.vr(1, "c", 12, 80, 90)
    assert verdict(h.ops, VREG) == "valid"
    h.vw(1, "d", 8, 100, 110)  # below the version the read pinned
    assert verdict(h.ops, VREG) == "invalid"


def test_versioned_precondition_failures() -> None:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vcas(2, 4, "x", None, 20, 30, outcome="fail")
    h.vcas(2, 0, "x", None, 40, 50, outcome="fail")  # present, so "must be absent" fails
    assert verdict(h.ops, VREG) == "valid"
    h.vcas(2, 5, "x", None, 60, 70, outcome="fail")
    assert verdict(h.ops, VREG) == "invalid"


def test_versioned_delete_and_recreate() -> None:
    h = Hist()
    h.vw(1, "a", 3, 0, 10)
    h.add(1, "delete", 20, 30, output={"version": 6})
    h.vr(2, None, 0, 40, 50)  # NOT_FOUND carries no version
    h.vcas(2, 0, "b", 9, 60, 70)
    h.vr(3, "b", 9, 80, 90)
    assert verdict(h.ops, VREG) == "valid"


# ------------------------------------------- indeterminacy, handled cheaply


def test_an_unread_info_write_still_explains_a_precondition_failure() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.w(2, 2, 20, 30, outcome="info")  # nobody reads 2...
    h.cas(3, 1, 5, 40, 50, outcome="fail")  # ...but only it explains "not 1"
    assert verdict(h.ops) == "valid"


def test_an_unread_versioned_info_write_still_explains_a_cas_on_its_version() -> None:
    h = Hist()
    h.vw(1, "a", 5, 0, 10)
    h.vw(2, "b", None, 20, 30, outcome="info")
    h.vcas(3, 8, "c", 11, 40, 50)  # version 8 is the info write's
    h.vr(1, "c", 11, 60, 70)
    assert verdict(h.ops, VREG) == "valid"


def test_many_unobserved_info_writes_do_not_hide_a_stale_read() -> None:
    h = Hist()
    h.w(1, "a", 0, 10)
    for i in range(60):  # each may apply at any time, or never
        h.w(100 + i, f"lost-{i}", 20 + i, 25 + i, outcome="info")
    h.w(1, "b", 200, 210)
    h.r(2, "a", 300, 310)
    result = check_linearizable(h.ops, REG, max_steps_per_key=100_000)
    assert result.verdict == "invalid"


def test_a_read_proves_an_info_write_applied_before_the_read_returned() -> None:
    h = Hist()
    h.w(1, "a", 0, 10)
    h.w(2, "b", 20, 30, outcome="info")
    h.r(3, "b", 40, 50)
    h.w(1, "c", 60, 70)
    h.r(3, "c", 80, 90)
    assert verdict(h.ops) == "valid"
    h.r(3, "b", 100, 110)  # b cannot come back: its only write already applied
    assert verdict(h.ops) == "invalid"


# ----------------------------------------------------------------- budget


def test_step_budget_gives_unknown_not_a_hang() -> None:
    cfg = SimConfig(ops=300, keys=1, concurrency=30, info_rate=0.15, values=3)
    ops = simulate_register_history(cfg, seed=3)
    started = time.monotonic()
    result = check_linearizable(ops, REG, max_steps_per_key=20_000)
    assert time.monotonic() - started < 30
    assert result.verdict == "unknown" and not result.valid
    assert result.unknown[0].steps == 20_000


def test_pending_ops_are_refused() -> None:
    h = Hist()
    h.w(1, 1, 0, 10)
    h.ops[0].outcome = None
    try:
        check_linearizable(h.ops, REG)
    except ValueError as e:
        assert "pending" in str(e)
    else:
        raise AssertionError("a pending op was accepted")


def test_empty_and_irrelevant_histories_are_valid() -> None:
    assert check_key([], REG).verdict == "valid"
    h = Hist()
    h.add(1, "append", 0, 10, value=1)
    result = check_linearizable(h.ops, REG)
    assert result.valid and result.keys == 0


# -------------------------------------------------------------- properties

sim_params = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "ops": st.integers(1, 200),
        "keys": st.integers(1, 3),
        "concurrency": st.integers(1, 6),
        "info_rate": st.sampled_from([0.0, 0.03, 0.08]),
        "values": st.integers(2, 5),
        "unique_values": st.booleans(),
        "versioned": st.booleans(),
    }
)


def _simulate(p: dict[str, object]) -> list[Op]:
    cfg = {k: v for k, v in p.items() if k != "seed"}
    return simulate_register_history(SimConfig(**cfg), seed=p["seed"])  # type: ignore[arg-type]


@given(sim_params)
def test_histories_of_an_atomic_register_are_accepted(p: dict[str, object]) -> None:
    model = VREG if p["versioned"] else REG
    ops = _simulate(p)
    result = check_linearizable(ops, model, max_steps_per_key=2_000_000)
    assert result.verdict == "valid", result.to_json()


@given(sim_params, st.data())
def test_a_read_of_a_never_written_value_is_rejected(
    p: dict[str, object], data: st.DataObject
) -> None:
    model = VREG if p["versioned"] else REG
    ops = _simulate(p)
    reads = [o for o in ops if o.kind == "read" and o.outcome == "ok"]
    if not reads:
        return
    victim = data.draw(st.sampled_from(reads))
    mutated = copy.deepcopy(ops)
    mutated[victim.id].output = {**victim.output, "value": "never-written"}
    result = check_linearizable(mutated, model, max_steps_per_key=2_000_000)
    assert result.verdict == "invalid"
    assert [k.key for k in result.invalid] == [victim.key]


# ------------------------------------------- agreement with brute force


def brute_force_linearizable(ops: list[Op], model: object) -> bool:
    """Try every subset of info ops and every order of the chosen ops that
    respects real time. Exponential: for histories of a handful of ops."""
    m = model  # a Model
    prepared = [(op, m.prepare(op)) for op in ops]  # type: ignore[attr-defined]
    kept = [(op, p) for op, p in prepared if p is not None]
    must = [(op, p) for op, p in kept if op.outcome != "info"]
    maybe = [(op, p) for op, p in kept if op.outcome == "info"]

    def search(state: object, remaining: list[tuple[Op, object]], done_end: float) -> bool:
        if not any(op.outcome != "info" for op, _ in remaining):
            return True
        for i, (op, p) in enumerate(remaining):
            # op may go next only if no other remaining op ended before it began.
            if any(o.end_ns < op.invoke_ns for j, (o, _) in enumerate(remaining) if j != i):
                continue
            ok, new_state = m.step(state, p)  # type: ignore[attr-defined]
            if ok and search(new_state, remaining[:i] + remaining[i + 1 :], done_end):
                return True
        return False

    return search(m.init(), must + maybe, 0.0)  # type: ignore[attr-defined]


@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 7),
    st.integers(1, 4),
    st.booleans(),
    st.data(),
)
def test_agrees_with_brute_force_on_small_mutated_histories(
    seed: int, n: int, concurrency: int, versioned: bool, data: st.DataObject
) -> None:
    cfg = SimConfig(
        ops=n, keys=1, concurrency=concurrency, info_rate=0.3, values=3, versioned=versioned
    )
    ops = simulate_register_history(cfg, seed=seed)
    model = VREG if versioned else REG
    # Mutate: a read returns some other value (and version), which may or may
    # not still be linearizable.
    reads = [o for o in ops if o.kind == "read" and o.outcome == "ok"]
    mutate: bool = data.draw(st.booleans())
    if reads and mutate:
        victim = data.draw(st.sampled_from(reads))
        value = data.draw(st.sampled_from([None, 0, 1, 2]))
        out = {**victim.output, "value": value}
        if versioned:
            out["version"] = data.draw(st.sampled_from([None, 0, 2, 3, 5, 7, 9]))
        victim.output = out
    expected = brute_force_linearizable(ops, model)
    got = check_linearizable(ops, model).verdict
    assert got == ("valid" if expected else "invalid"), [o.to_json() for o in ops]
