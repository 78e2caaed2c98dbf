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


def test_member_states_and_moves_from_the_cluster_state() -> None:
    """Node 4 is being decommissioned (and is down), node 5 is joining: every
    partition holding node 4 is moving, at quorum, so the cluster is OK."""
    from client.status_table import moving_partitions, render_status
    from node.cluster import state as cs

    state = cs.initial_state("c", {n: (f"127.0.0.1:71{n:02d}", "") for n in (1, 2, 3, 4)},
                             partitions=4, replication=3, virtual_nodes=16)
    state, _ = cs.apply(state, cs.set_member_state(4, cs.DECOMMISSIONING))
    state, _ = cs.apply(state, cs.add_member(5, "127.0.0.1:7105"))
    peers = {n: f"127.0.0.1:71{n:02d}" for n in (1, 2, 3, 4)}
    cfg = NodeConfig(node_id=2, listen=peers[2], data_dir=Path("/nonexistent"), peers=peers,
                     partitions=4, replication=3)
    views = {}
    for nid in (1, 2, 3, 5):  # node 4 does not answer
        v = admin_pb2.ClusterStatusResponse(answered_by=nid, partitions=4, replication_factor=3)
        v.nodes.add(node=admin_pb2.NodeInfo(node_id=nid, address=f"127.0.0.1:71{nid:02d}"),
                    up=True)
        for p, reps in enumerate(state.replicas):
            leader = next(n for n in reps if n != 4)
            if nid not in reps:
                continue
            info = v.partition_info.add(partition=p, replicas=list(reps), leader=leader, term=3,
                                        commit_index=9, applied_index=9)
            if nid == leader:
                info.learners.append(5)  # a learner on its way in (partition 0's leader says)
                for n in reps:
                    info.replica_status.add(node_id=n, term=3 if n == nid else 0,
                                            reachable=n != 4)
            else:
                info.replica_status.add(node_id=nid, term=3, reachable=True)
        views[nid] = v
    merged = merge_views(cfg, views, state.placement, state)
    assert {n.node.node_id: n.member_state for n in merged.nodes} == {
        1: "active", 2: "active", 3: "active", 4: "decommissioning", 5: "joining"}
    assert next(n for n in merged.nodes if n.node.node_id == 5).node.address == "127.0.0.1:7105"
    on_4 = [p for p, reps in enumerate(state.replicas) if 4 in reps]
    assert on_4 and [p.partition for p in merged.partition_info if p.moving] == on_4
    assert moving_partitions(merged) == list(range(4))  # learners everywhere, too
    assert assess(merged) == (OK, [])  # moves at quorum; the down node is leaving
    text = render_status(merged)
    assert "moving 4" in text.splitlines()[0]
    assert "(1 decommissioning, 1 joining)" in text.splitlines()[0]
