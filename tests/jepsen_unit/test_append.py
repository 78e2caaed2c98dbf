"""The append checker: lost, duplicated, phantom and reordered elements."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from jepsen_like.checkers.append import check_append
from jepsen_like.history import Op

from .helpers import Hist, simulate_append


def append(
    h: Hist, p: int, element: int, t0: int, t1: int | None, outcome: str = "ok", key: str = "p"
) -> Op:
    return h.add(p, "append", t0, t1, key=key, value=element, outcome=outcome)  # type: ignore[arg-type]


def read(h: Hist, p: int, elements: list[int], t0: int, t1: int, key: str = "p") -> Op:
    return h.add(p, "read", t0, t1, key=key, output={"value": elements})


def types(ops: list[Op]) -> set[str]:
    return set(check_append(ops).counts)


def test_a_correct_history_with_concurrency_and_info_is_valid() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10)
    append(h, 2, 2, 5, 30)
    append(h, 3, 3, 12, 20, outcome="info")  # may or may not appear
    read(h, 4, [1], 11, 13)
    read(h, 4, [1, 3, 2], 40, 50)
    append(h, 1, 4, 60, 70, outcome="info")  # never appears: fine
    read(h, 2, [1, 3, 2], 80, 90)
    result = check_append(h.ops)
    assert result.valid and result.counts == {}
    assert result.to_json()["verdict"] == "valid"


def test_a_lost_acknowledged_element_is_rejected() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10)
    append(h, 1, 2, 20, 30)
    read(h, 2, [1], 40, 50)  # element 2 was acknowledged before this read began
    result = check_append(h.ops)
    assert not result.valid and set(result.counts) == {"lost"}
    assert result.violations[0]["element"] == 2


def test_a_duplicate_is_rejected() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10)
    read(h, 2, [1, 1], 20, 30)
    assert "duplicate" in types(h.ops)


def test_divergent_orders_are_rejected() -> None:
    h = Hist()
    append(h, 1, 1, 0, 100)
    append(h, 2, 2, 0, 100)
    read(h, 3, [1, 2], 110, 120)
    read(h, 4, [2, 1], 130, 140)
    assert types(h.ops) == {"divergent"}


def test_phantom_and_failed_elements_are_rejected() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10)
    append(h, 1, 2, 20, 30, outcome="fail")
    append(h, 1, 7, 20, 30, key="other")
    read(h, 2, [1, 2, 9, 7], 40, 50)
    result = check_append(h.ops)
    assert set(result.counts) == {"phantom", "failed_appeared"}
    phantoms = [v for v in result.violations if v["type"] == "phantom"]
    assert {(v["element"], v["appended_to_other_key"]) for v in phantoms} == {(9, False), (7, True)}


def test_an_element_seen_before_its_append_is_rejected() -> None:
    h = Hist()
    read(h, 2, [5], 0, 10)
    append(h, 1, 5, 20, 30)
    assert types(h.ops) == {"premature"}


def test_a_read_that_shrinks_is_rejected_even_for_info_elements() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10, outcome="info")
    read(h, 2, [1], 20, 30)
    read(h, 3, [], 40, 50)
    assert types(h.ops) == {"shrunk"}


def test_real_time_order_of_appends_is_enforced() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10)
    append(h, 1, 2, 20, 30)
    read(h, 2, [2, 1], 40, 50)
    assert types(h.ops) == {"order"}


def test_appending_one_element_twice_is_a_workload_error() -> None:
    h = Hist()
    append(h, 1, 1, 0, 10)
    append(h, 2, 1, 20, 30)
    try:
        check_append(h.ops)
    except ValueError as e:
        assert "unique" in str(e)
    else:
        raise AssertionError("duplicate appends accepted")


params = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "n_ops": st.integers(1, 200),
        "keys": st.integers(1, 3),
        "concurrency": st.integers(1, 6),
        "info_rate": st.sampled_from([0.0, 0.05, 0.2]),
    }
)


@given(params)
def test_simulated_correct_runs_are_valid(p: dict[str, int]) -> None:
    result = check_append(simulate_append(**p))
    assert result.valid, result.violations


def _final_reads(ops: list[Op]) -> list[Op]:
    return [o for o in ops if o.process == "final"]


@given(params, st.data())
def test_dropping_an_acknowledged_element_is_rejected(
    p: dict[str, int], data: st.DataObject
) -> None:
    ops = simulate_append(**p)
    acked = [o for o in ops if o.kind == "append" and o.outcome == "ok"]
    if not acked:
        return
    victim = data.draw(st.sampled_from(acked))
    mutated = copy.deepcopy(ops)
    for r in _final_reads(mutated):
        if r.key == victim.key:
            r.output["value"].remove(victim.value)
    result = check_append(mutated)
    assert "lost" in result.counts


@given(params, st.data())
def test_duplicating_an_element_is_rejected(p: dict[str, int], data: st.DataObject) -> None:
    ops = simulate_append(**p)
    nonempty = [o for o in ops if o.kind == "read" and o.outcome == "ok" and o.output["value"]]
    if not nonempty:
        return
    victim = data.draw(st.sampled_from(nonempty))
    mutated = copy.deepcopy(ops)
    elements = mutated[victim.id].output["value"]
    elements.insert(data.draw(st.integers(0, len(elements))), data.draw(st.sampled_from(elements)))
    assert "duplicate" in check_append(mutated).counts


@given(params, st.data())
def test_reordering_one_reader_is_rejected(p: dict[str, int], data: st.DataObject) -> None:
    ops = simulate_append(**p)
    finals = [o for o in _final_reads(ops) if len(o.output["value"]) >= 2]
    if not finals:
        return
    victim = data.draw(st.sampled_from(finals))
    elements = victim.output["value"]
    i = data.draw(st.integers(0, len(elements) - 2))
    mutated = copy.deepcopy(ops)
    swapped = mutated[victim.id].output["value"]
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    assert "divergent" in check_append(mutated).counts
