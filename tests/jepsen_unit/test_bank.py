"""The bank checker: every snapshot of a patient's accounts totals the constant."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jepsen_like.checkers.bank import check_bank
from jepsen_like.history import Op

from .helpers import Hist, simulate_bank


def read_all(h: Hist, balances: dict[str, int], t0: int, key: str = "p0") -> Op:
    return h.add(1, "read_all", t0, t0 + 5, key=key, output={"balances": balances})


def test_constant_totals_are_valid_and_wrong_totals_are_reported_with_the_read() -> None:
    h = Hist()
    h.add(2, "transfer", 0, 10, key="p0", value={"from": "a", "to": "b", "amount": 3})
    read_all(h, {"a": 7, "b": 13}, 20)
    assert check_bank(h.ops, 20).valid
    bad = read_all(h, {"a": 7, "b": 16}, 30)  # the credit applied without the debit
    result = check_bank(h.ops, 20)
    assert not result.valid and result.counts == {"wrong_total": 1}
    v = result.violations[0]
    assert v["read"]["id"] == bad.id and v["total"] == 23 and v["expected"] == 20
    assert result.to_json()["verdict"] == "invalid"


def test_per_patient_totals_accounts_and_negative_balances() -> None:
    h = Hist()
    read_all(h, {"a": 5, "b": 5}, 0, key="p0")
    read_all(h, {"a": 50, "b": 50}, 0, key="p1")
    assert check_bank(h.ops, {"p0": 10, "p1": 100}, accounts={"a", "b"}).valid
    read_all(h, {"a": -5, "b": 15}, 10, key="p0")
    read_all(h, {"a": 100}, 10, key="p1")
    result = check_bank(h.ops, {"p0": 10, "p1": 100}, accounts={"p0": {"a", "b"}, "p1": {"a", "b"}})
    assert result.counts == {"negative": 1, "accounts": 1}
    assert check_bank(h.ops, {"p0": 10, "p1": 100}, allow_negative=True).valid
    with pytest.raises(ValueError):
        check_bank(h.ops, {"p0": 10})


def test_failed_and_info_reads_are_not_checked() -> None:
    h = Hist()
    h.add(1, "read_all", 0, 5, key="p0", outcome="info")
    h.add(1, "read_all", 10, 15, key="p0", outcome="fail", output={"error": "x"})
    assert check_bank(h.ops, 10).reads == 0


params = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "n_ops": st.integers(1, 200),
        "keys": st.integers(1, 3),
        "accounts": st.integers(2, 5),
        "total": st.integers(10, 100),
        "concurrency": st.integers(1, 6),
        "info_rate": st.sampled_from([0.0, 0.1]),
    }
)


@given(params)
def test_simulated_atomic_transfers_are_valid(p: dict[str, int]) -> None:
    result = check_bank(simulate_bank(**p), p["total"])
    assert result.valid, result.violations


@given(params, st.data(), st.integers(-3, 3).filter(bool))
def test_a_read_with_a_changed_balance_is_rejected(
    p: dict[str, int], data: st.DataObject, delta: int
) -> None:
    ops = simulate_bank(**p)
    reads = [o for o in ops if o.kind == "read_all" and o.outcome == "ok"]
    if not reads:
        return
    victim = data.draw(st.sampled_from(reads))
    account = data.draw(st.sampled_from(sorted(victim.output["balances"])))
    mutated = copy.deepcopy(ops)
    mutated[victim.id].output["balances"][account] += delta
    result = check_bank(mutated, p["total"], allow_negative=True)
    assert result.counts == {"wrong_total": 1}
    assert result.violations[0]["read"]["id"] == victim.id
