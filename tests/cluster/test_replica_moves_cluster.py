"""Replica moves on a real secure 4-node cluster (issue 12): the node-side
primitives the control plane's mover calls, PrepareReplica, ChangeReplicas and
DropReplica, driven here by hand the way the mover drives them.

For a partition whose configured replicas are {a, b, c} and that node d does
not hold: records written, PrepareReplica on d, ChangeReplicas(add=[d],
remove=[c]) on the leader; d then serves every record (follower reads) and
new writes, c is out of the configuration, DropReplica on c deletes its data
(its key ranges are empty in its LevelDB once it stopped), a restarted c does
not reopen the replica and a restarted d keeps it. Then the leader itself is
removed (it hands over first), and a ChangeReplicas that times out on a paused
learner (DEADLINE_EXCEEDED) is retried to completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import plyvel
import pytest

from node.errors import LEADER_METADATA_KEY
from node.replica_catalog import ReplicaCatalog
from node.storage_layout import RAFT_PREFIX, STATE_PREFIX
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import LocalCluster, patients_per_partition, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

NODES = 4
RECORDS = 12
_used: set[int] = set()  # partitions a test moved already


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("moves"), nodes=NODES, partitions=8)
    try:
        yield c
    finally:
        stop_cluster(c)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def admin(cluster: LocalCluster, node: int, as_node: int | None = 1) -> Any:
    """An Admin stub on node `node` (ids from 1), under a node certificate: replica
    moves are the control plane's calls (an admin's token is refused)."""
    ch = cluster.channel(cluster.addresses[node - 1], as_node=as_node)
    return admin_pb2_grpc.AdminStub(ch)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, str]:
    try:
        call()
    except grpc.RpcError as e:
        hint = dict(e.trailing_metadata() or ()).get(LEADER_METADATA_KEY, "")
        return e.code(), e.details() or "", hint
    return grpc.StatusCode.OK, "", ""


def leader_of(cluster: LocalCluster, p: int) -> int:
    def find() -> int:
        with cluster.client() as kv:
            info = next(i for i in kv.cluster_status().partition_info if i.partition == p)
            return info.leader

    return int(wait_until(find, 30, f"a leader of partition {p}"))


def change(cluster: LocalCluster, p: int, add: list[int], remove: list[int],
           timeout: float = 60.0) -> admin_pb2.ChangeReplicasResponse:
    """ChangeReplicas as a mover calls it: at the leader, retried at the hinted one."""
    deadline = time.monotonic() + timeout
    node = leader_of(cluster, p)
    while True:
        try:
            return admin(cluster, node).ChangeReplicas(
                admin_pb2.ChangeReplicasRequest(partition=p, add=add, remove=remove),
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise
            hint = dict(e.trailing_metadata() or ()).get(LEADER_METADATA_KEY, "")
            time.sleep(0.2)
            node = int(hint.split("@")[0]) if hint else leader_of(cluster, p)


def follower_get(cluster: LocalCluster, node: int, pid: str, rid: str) -> Any:
    with cluster.channel(cluster.addresses[node - 1]) as ch:
        try:
            return kv_pb2_grpc.KVStub(ch).Get(
                kv_pb2.GetRequest(patient_id=pid, record_id=rid,
                                  read=common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER)),
                timeout=5,
            )
        except grpc.RpcError as e:
            return e


def moving_case(cluster: LocalCluster, taken: set[int]) -> tuple[int, list[int], int]:
    """A partition not used yet whose replicas node d lacks: (partition, replicas, d)."""
    with cluster.client() as kv:
        table = kv.routing_table()
    for p, replicas in enumerate(table.replicas):
        missing = [n for n in range(1, NODES + 1) if n not in replicas]
        if p not in taken and missing:
            taken.add(p)
            return p, list(replicas), missing[0]
    raise AssertionError("no partition left to move")


def write(cluster: LocalCluster, p: int, prefix: str, n: int) -> tuple[str, dict[str, Any]]:
    with cluster.client(timeout=20.0) as kv:
        pid = patients_per_partition(kv, 1, prefix)[p][0]
        for i in range(n):
            kv.put(pid, f"rec-{i}", b"%s-%d" % (prefix.encode(), i))
        return pid, {f"rec-{i}": kv.get(pid, f"rec-{i}") for i in range(n)}


def assert_serves(cluster: LocalCluster, node: int, pid: str, expected: dict[str, Any]) -> None:
    last = max(r.version for r in expected.values())
    wait_until(lambda: not isinstance(r := follower_get(cluster, node, pid, "rec-0"), grpc.RpcError)
               and r.read_state.applied_index >= last, 60,
               f"node {node} to serve the partition at index {last}")
    for rid, rec in expected.items():
        got = follower_get(cluster, node, pid, rid)
        assert not isinstance(got, grpc.RpcError), (rid, got)
        assert got.read_state.node_id == node
        assert (got.record.value, got.record.version) == (rec.value, rec.version), rid


def drop(cluster: LocalCluster, node: int, p: int) -> admin_pb2.DropReplicaResponse:
    """DropReplica on a removed node: without force unless it never learnt its removal."""
    stub = admin(cluster, node)
    try:
        return stub.DropReplica(admin_pb2.DropReplicaRequest(partition=p), timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert "still in partition" in (e.details() or "")
        return stub.DropReplica(admin_pb2.DropReplicaRequest(partition=p, force=True), timeout=30)


def local_partitions(cluster: LocalCluster, node: int) -> set[int]:
    resp = admin(cluster, node).ClusterStatus(
        admin_pb2.ClusterStatusRequest(local_only=True), timeout=10)
    return {i.partition for i in resp.partition_info}


def test_a_replica_moves_and_the_old_one_is_deleted(cluster: LocalCluster) -> None:
    p, replicas, d = moving_case(cluster, _used)
    pid, expected = write(cluster, p, "move", RECORDS)
    leader = leader_of(cluster, p)
    c = next(n for n in replicas if n != leader)

    # d, called with a node certificate as the control plane calls it.
    prep = admin(cluster, d, as_node=1).PrepareReplica(
        admin_pb2.PrepareReplicaRequest(partition=p), timeout=10)
    assert prep.created and prep.node_id == d
    blank = follower_get(cluster, d, pid, "rec-0")
    assert isinstance(blank, grpc.RpcError) and blank.code() == grpc.StatusCode.UNAVAILABLE
    assert "has not received its data" in (blank.details() or "")

    # Only the leader changes replicas; elsewhere UNAVAILABLE with its hint.
    code, details, hint = code_of(lambda: admin(cluster, c).ChangeReplicas(
        admin_pb2.ChangeReplicasRequest(partition=p, add=[d], remove=[c]), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE and hint.startswith(f"{leader}@"), (details, hint)
    code, details, _ = code_of(lambda: admin(cluster, leader).ChangeReplicas(
        admin_pb2.ChangeReplicasRequest(partition=p, add=[99]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "node 99" in details

    resp = change(cluster, p, [d], [c])
    want = (set(replicas) - {c}) | {d}
    assert set(resp.voters) == want
    assert_serves(cluster, d, pid, expected)
    with cluster.client(timeout=20.0) as kv:
        kv.put(pid, "after-move", b"new")
        new = kv.get(pid, "after-move")
    wait_until(lambda: not isinstance(r := follower_get(cluster, d, pid, "after-move"),
                                      grpc.RpcError) and r.record.version == new.version,
               30, "the new write on node d")
    with cluster.client() as kv:
        info = next(i for i in kv.cluster_status().partition_info if i.partition == p)
        assert set(info.replicas) == want and c not in info.replicas
    # Idempotent: the group is at the target already.
    assert set(change(cluster, p, [d], [c]).voters) == want

    # A member refuses to drop its replica; the removed one deletes it.
    code, details, _ = code_of(lambda: admin(cluster, d).DropReplica(
        admin_pb2.DropReplicaRequest(partition=p), timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "still in partition" in details
    assert drop(cluster, c, p).dropped
    assert p not in local_partitions(cluster, c)
    gone = follower_get(cluster, c, pid, "rec-0")
    assert isinstance(gone, grpc.RpcError) and gone.code() == grpc.StatusCode.UNAVAILABLE

    assert cluster.run("kill-node", str(c)).returncode == 0
    wait_until(lambda: cluster.states()[c] == "stopped", 20, f"node {c} to stop")
    db = plyvel.DB(str(cluster.data_dir / f"node-{c}" / "db"))
    try:
        for start, stop in ReplicaCatalog(None, None, STATE_PREFIX, RAFT_PREFIX).partition_ranges(p):
            with db.iterator(start=start, stop=stop, include_value=False) as it:
                assert next(it, None) is None, f"node {c} still has keys of partition {p}"
    finally:
        db.close()
    assert cluster.run("restart-node", str(c)).returncode == 0
    assert p not in local_partitions(cluster, c)

    # d keeps the replica it was given over a restart (the placement lacks it).
    assert cluster.run("restart-node", str(d)).returncode == 0
    assert p in local_partitions(cluster, d)
    expected["after-move"] = new
    assert_serves(cluster, d, pid, expected)


def test_the_leader_is_removed_after_handing_over(cluster: LocalCluster) -> None:
    """The leader is one of the removed: it hands over, the new leader finishes."""
    p, replicas, d = moving_case(cluster, _used)
    pid, expected = write(cluster, p, "lead", RECORDS)
    leader = leader_of(cluster, p)
    assert leader in replicas
    # No PrepareReplica here: the leader asks d to prepare before it adds d.
    code, details, hint = code_of(lambda: admin(cluster, leader).ChangeReplicas(
        admin_pb2.ChangeReplicasRequest(partition=p, add=[d], remove=[leader]), timeout=30))
    assert code == grpc.StatusCode.UNAVAILABLE and "handed leadership" in details, details
    assert hint and not hint.startswith(f"{leader}@")
    resp = change(cluster, p, [d], [leader])
    assert leader not in resp.voters and d in resp.voters
    assert resp.leader != leader
    assert_serves(cluster, d, pid, expected)
    assert drop(cluster, leader, p).dropped


def test_a_deadline_exceeded_change_is_retried_to_completion(cluster: LocalCluster) -> None:
    p, replicas, d = moving_case(cluster, _used)
    pid, expected = write(cluster, p, "retry", RECORDS)
    leader = leader_of(cluster, p)
    c = next(n for n in replicas if n != leader)
    admin(cluster, d).PrepareReplica(admin_pb2.PrepareReplicaRequest(partition=p), timeout=10)
    assert cluster.run("pause-node", str(d)).returncode == 0
    try:
        def attempt(at: int, out: int) -> Callable[[], Any]:
            return lambda: admin(cluster, at).ChangeReplicas(
                admin_pb2.ChangeReplicasRequest(partition=p, add=[d], remove=[out]), timeout=4)

        for _ in range(5):  # leader balancing may hand the partition over meanwhile
            code, details, _ = code_of(attempt(leader, c))
            if code != grpc.StatusCode.UNAVAILABLE or "not the leader" not in details:
                break
            leader = leader_of(cluster, p)
            c = next(n for n in replicas if n != leader)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    finally:
        assert cluster.run("resume-node", str(d)).returncode == 0
    resp = change(cluster, p, [d], [c], timeout=90)
    assert set(resp.voters) == (set(replicas) - {c}) | {d}
    assert_serves(cluster, d, pid, expected)
    assert drop(cluster, c, p).dropped

