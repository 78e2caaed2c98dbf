"""Cluster settings as cluster state, on real node processes (issue 12:
"settings changed once, applied identically by every replica").

`medkv settings set` is one change of the cluster state; the system leader
then carries the new generation into every partition's log. Here one
partition's leader is killed just before the change: the partition elects
another leader and applies it; the killed node's replicas catch up from
their logs once it is back. Every replica of every partition then holds the
same generation, the same values, set by the entry at the same index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from proto.medkv.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster.harness import LocalCluster, leader_of, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

PARTITIONS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("medkv-settings"), partitions=PARTITIONS)
    try:
        yield c
    finally:
        stop_cluster(c)


def replica_settings(
    cluster: LocalCluster, node: int, partition: int
) -> admin_pb2.GetSettingsResponse | None:
    """One replica's applied settings (GetSettings answers from local state)."""
    with cluster.channel(cluster.addresses[node - 1]) as channel:
        try:
            return admin_pb2_grpc.AdminStub(channel).GetSettings(
                admin_pb2.GetSettingsRequest(partition=partition), timeout=5)
        except grpc.RpcError:
            return None


def wait_all_replicas(
    cluster: LocalCluster, nodes: list[int], generation: int, timeout: float = 30.0
) -> dict[tuple[int, int], admin_pb2.GetSettingsResponse]:
    """Every replica on `nodes` at `generation`, within a bounded wait."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple[int, int], admin_pb2.GetSettingsResponse] = {}
    while True:
        for node in nodes:
            for p in range(PARTITIONS):
                s = replica_settings(cluster, node, p)
                if s is not None:
                    seen[(node, p)] = s
        behind = sorted(k for k in ((n, p) for n in nodes for p in range(PARTITIONS))
                        if k not in seen or seen[k].cluster_generation_applied < generation)
        if not behind:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"(node, partition) not at generation {generation}: {behind}")
        time.sleep(0.2)


def test_one_change_is_applied_by_every_replica_even_where_the_leader_was_down(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    nodes = [1, 2, 3]
    with cluster.client(timeout=30.0) as kv:
        # The initial settings (generation 1, from `cluster init`) reach every partition.
        deadline = time.monotonic() + 30
        while kv.settings_behind(1, timeout=5) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert kv.settings_behind(1, timeout=5) == []
        victim = leader_of(kv, 0)
        killed = cluster.run("kill-node", str(victim), timeout=30)
        assert killed.returncode == 0, killed.stderr
        try:
            done = kv.set_settings(max_sessions=77, history_retention=9, timeout=60)
            generation = done.generation
            assert generation >= 2 and done.settings.max_sessions == 77
            # Once more with the same values: no new generation.
            again = kv.set_settings(max_sessions=77, timeout=30)
            assert again.generation == generation
            got = kv.get_settings(timeout=30)
            assert {r.cluster_generation_applied for r in got} == {generation}
            assert all(r.cluster_generation == generation for r in got)
            live = [n for n in nodes if n != victim]
            wait_all_replicas(cluster, live, generation)
        finally:
            restarted = cluster.run("restart-node", str(victim), timeout=90)
            assert restarted.returncode == 0, restarted.stderr
        seen = wait_all_replicas(cluster, nodes, generation, timeout=60)
    for p in range(PARTITIONS):
        replicas = [seen[(n, p)] for n in nodes]
        assert {r.cluster_generation_applied for r in replicas} == {generation}
        # The same entry (the same index of the partition's log) set them everywhere.
        assert len({r.generation for r in replicas}) == 1, [r.generation for r in replicas]
        assert {(r.settings.max_sessions, r.settings.history_retention) for r in replicas} == {
            (77, 9)
        }


def test_status_shows_member_states_and_no_move(cluster: LocalCluster) -> None:
    """`medkv status --json`: every node's member state from the cluster state;
    nothing moving in a cluster at rest."""
    deadline = time.monotonic() + 30
    while True:
        done = cluster.run("status", "--json", timeout=30)
        data = json.loads(done.stdout)["cluster"]
        if (data and data["health"] == "OK") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert data is not None and data["health"] == "OK", data and data["reasons"]
    assert {n["node"]["node_id"]: n["member_state"] for n in data["nodes"]} == {
        1: "active", 2: "active", 3: "active"}
    assert data["moving"] == []
    assert all(not p["moving"] and p["learners"] == [] for p in data["partition_info"])
