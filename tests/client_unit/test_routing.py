"""Routing: partition math agrees with proto.placement; leader cache and targets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from client.routing import (
    LeaderHint,
    Mode,
    Router,
    RoutingTable,
    TargetPicker,
    parse_epoch,
    parse_leader_hint,
)
from proto.medkv.v1 import admin_pb2
from proto.placement import make_placement


def table_reply(
    nodes: int = 5,
    partitions: int = 16,
    replication: int = 3,
    leaders: dict[int, int] | None = None,
) -> admin_pb2.RoutingTableResponse:
    reply = admin_pb2.RoutingTableResponse(
        epoch=3, partitions=partitions, replication_factor=replication, virtual_nodes=64
    )
    for n in range(1, nodes + 1):
        reply.nodes.add(node_id=n, address=f"10.0.0.{n}:7101")
    for p, leader in (leaders or {}).items():
        placement = make_placement(range(1, nodes + 1), partitions, replication, 64)
        reply.partition_info.add(partition=p, replicas=placement.replicas(p), leader=leader)
    return reply


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50))
def test_partition_and_replicas_agree_with_placement(patients: list[str]) -> None:
    table = RoutingTable.from_proto(table_reply())
    placement = make_placement(range(1, 6), 16, 3, 64)
    for pid in patients:
        p = table.partition_of(pid)
        assert p == placement.partition_of(pid)
        assert table.replicas[p] == placement.replicas(p)


def test_table_takes_leaders_and_replicas_from_the_reply() -> None:
    placement = make_placement(range(1, 6), 16, 3, 64)
    leader = placement.replicas(4)[2]
    table = RoutingTable.from_proto(table_reply(leaders={4: leader}))
    router = Router(table)
    assert router.leader(4) == leader
    assert router.leader(5) is None
    assert router.address(leader) == f"10.0.0.{leader}:7101"
    assert table.epoch == 3 and table.virtual_nodes == 64


def test_leader_hints_parse_strictly() -> None:
    assert parse_leader_hint("3@10.0.0.3:7101") == LeaderHint(3, "10.0.0.3:7101")
    assert parse_leader_hint("12@[::1]:7101") == LeaderHint(12, "[::1]:7101")
    for bad in (None, "", "3", "@host:1", "x@host:1", "0@host:1", "3@"):
        assert parse_leader_hint(bad) is None
    assert parse_epoch("7") == 7 and parse_epoch(None) is None and parse_epoch("x") is None


def test_leader_mode_prefers_the_cache_then_walks_the_replicas() -> None:
    router = Router(RoutingTable.from_proto(table_reply()))
    reps = router.replicas(0)
    picker = TargetPicker(router, 0, Mode.LEADER)
    # No leader known: placement order, never the same node twice in a row.
    first = picker.next()
    assert first == reps[0]
    picker.failed(first)
    second = picker.next()
    assert second != first and second in reps
    # A hint: the next attempt goes there and the cache learns it.
    picker.redirect(reps[2])
    assert picker.next() == reps[2]
    assert router.leader(0) == reps[2]
    assert TargetPicker(router, 0, Mode.LEADER).next() == reps[2]
    # The leader fails: it is forgotten, the others are tried.
    picker.failed(reps[2])
    assert router.leader(0) is None
    assert picker.next() != reps[2]


def test_forget_leader_keeps_a_newer_cache_entry() -> None:
    router = Router(RoutingTable.from_proto(table_reply()))
    reps = router.replicas(1)
    router.note_leader(1, reps[1])
    router.forget_leader(1, reps[0])  # a stale failure report about another node
    assert router.leader(1) == reps[1]


def test_replica_mode_round_robins_across_calls() -> None:
    router = Router(RoutingTable.from_proto(table_reply()))
    firsts = [TargetPicker(router, 2, Mode.REPLICA).next() for _ in range(6)]
    assert set(firsts) == set(router.replicas(2))
    assert firsts[:3] != firsts[1:4]  # rotates
    picker = TargetPicker(router, 2, Mode.REPLICA)
    walk = [picker.next() for _ in range(3)]
    assert sorted(walk) == sorted(router.replicas(2))  # one call falls back through all


def test_to_leader_switches_a_replica_read() -> None:
    router = Router(RoutingTable.from_proto(table_reply()))
    reps = router.replicas(3)
    router.note_leader(3, reps[1])
    picker = TargetPicker(router, 3, Mode.REPLICA)
    picker.to_leader()
    assert picker.next() == reps[1]


def test_install_keeps_cached_leaders_that_still_hold_the_partition() -> None:
    router = Router(RoutingTable.from_proto(table_reply()))
    reps = router.replicas(0)
    router.note_leader(0, reps[1])
    router.install(RoutingTable.from_proto(table_reply()))
    assert router.leader(0) == reps[1]
    # A node's own report of the leader wins over the cache.
    router.install(RoutingTable.from_proto(table_reply(leaders={0: reps[2]})))
    assert router.leader(0) == reps[2]


def test_hints_for_unknown_nodes_become_dialable() -> None:
    router = Router(RoutingTable.from_proto(table_reply()))
    known = LeaderHint(2, "10.0.0.2:7101")
    moved = LeaderHint(2, "10.9.9.9:7101")
    new = LeaderHint(9, "10.0.0.9:7101")
    assert router.knows(known) and not router.knows(moved) and not router.knows(new)
    router.learn(new)
    assert router.address(9) == "10.0.0.9:7101"
