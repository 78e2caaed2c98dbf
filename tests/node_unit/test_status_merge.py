"""node.admin_service.merge_views: the cluster picture `medkv status` renders."""

from __future__ import annotations

from pathlib import Path

from client.status_table import DEGRADED, OK, assess
from node.admin_service import merge_views
from node.config import NodeConfig
from proto.medkv.v1 import admin_pb2


def config(node_id: int = 2) -> NodeConfig:
    peers = {n: f"127.0.0.1:71{n:02d}" for n in (1, 2, 3)}
    return NodeConfig(
        node_id=node_id, listen=peers[node_id], data_dir=Path("/nonexistent"), peers=peers,
        partitions=1, replication=3,
    )


def view(nid: int, *, leader: int, term: int = 5, reachable: bool = True,
         out_of_service: str = "") -> admin_pb2.ClusterStatusResponse:
    v = admin_pb2.ClusterStatusResponse(answered_by=nid, partitions=1, replication_factor=3)
    v.nodes.add(node=admin_pb2.NodeInfo(node_id=nid, address=f"127.0.0.1:71{nid:02d}"), up=True)
    info = v.partition_info.add(partition=0, replicas=[1, 2, 3], leader=leader, term=term,
                                commit_index=10, applied_index=10)
    if nid == leader:
        for n in (1, 2, 3):
            info.replica_status.add(node_id=n, term=term if n == nid else 0,
                                    reachable=True if n == nid else reachable)
    else:
        info.replica_status.add(node_id=nid, term=term, reachable=True,
                                out_of_service=out_of_service)
    return v


def test_answering_node_is_reachable_even_if_the_leader_has_not_heard_it_lately() -> None:
    views = {1: view(1, leader=1, reachable=False), 2: view(2, leader=1), 3: view(3, leader=1)}
    merged = merge_views(config(2), views)
    rs = {r.node_id: r.reachable for r in merged.partition_info[0].replica_status}
    assert rs[2] is True  # it answered this very status
    assert rs[3] is False  # the leader's judgement of another node stands


def test_out_of_service_replica_is_reported_and_never_describes_the_partition() -> None:
    forged = 2**64 - 1
    views = {
        1: view(1, leader=1),
        2: view(2, leader=0, term=forged, out_of_service="partition 0 failed a check"),
        3: view(3, leader=1),
    }
    merged = merge_views(config(2), views)
    p = merged.partition_info[0]
    assert p.leader == 1 and p.term == 5  # the healthy leader's view, not the forged term
    own = next(r for r in p.replica_status if r.node_id == 2)
    assert own.out_of_service
    verdict, reasons = assess(merged)
    assert verdict == DEGRADED
    assert "out of service (DATA_LOSS): partition 0 on node 2" in reasons
    assert any(r.startswith("impossible term: partition 0 on node 2") for r in reasons)


def test_all_answering_in_service_is_ok() -> None:
    views = {n: view(n, leader=1) for n in (1, 2, 3)}
    assert assess(merge_views(config(2), views)) == (OK, [])
