"""Hostile or broken Raft input against a real 3-node cluster (issue 10, item 6).

A test process speaks the Raft transport to a node, as a peer with a bug
would: a heartbeat with term 2^64-1, an append whose entries are not
contiguous, bytes that are no Raft message, a group that does not exist.
Each is refused with a precise status naming the problem (node.raft_guard),
and the partition keeps (or regains) a leader and serves writes, with a sane
term, on every node and after the node that received them restarts.

Before the guard, the heartbeat was adopted and persisted: the next election's
term no longer fit the wire, so every Raft turn of the partition failed on
every node, for good, restarts included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from client import Client
from consensus.codec import encode_message
from consensus.types import Entry, Message, MessageType
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, raft_pb2, raft_pb2_grpc
from tests.cluster.harness import (
    LocalCluster,
    patients_per_partition,
    raw_channel,
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.cluster]

PARTITIONS = 4
TWO64_1 = (1 << 64) - 1
SANE_TERM = 1 << 20  # no test cluster runs a million elections


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("hostile"), partitions=PARTITIONS)
    try:
        yield c
    finally:
        stop_cluster(c)


def _admin(address: str) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(raw_channel(address))


def _local(address: str, partition: int) -> admin_pb2.PartitionInfo:
    resp = _admin(address).PartitionStatus(
        admin_pb2.PartitionStatusRequest(partition=partition), timeout=5
    )
    return resp.info


def _send(address: str, batch: raft_pb2.RaftBatch) -> grpc.RpcError | None:
    """Send one batch on a Raft stream; the stream's error, None if it ended OK."""
    # As the node the batch names: the transport takes only node certificates,
    # each speaking for itself, so the hostile content is what gets judged.
    stub = raft_pb2_grpc.RaftTransportStub(raw_channel(address, as_node=batch.from_node))
    try:
        for _ in stub.Stream(iter([batch]), timeout=10):
            pass
    except grpc.RpcError as e:
        return e
    return None


def _assert_refused(err: grpc.RpcError | None, code: grpc.StatusCode, words: str) -> None:
    assert err is not None, "the node accepted a message no correct peer sends"
    assert err.code() == code, (err.code(), err.details())
    assert words in (err.details() or ""), err.details()


def _healthy(cluster: LocalCluster, kv: Client, patients: dict[int, list[str]], tag: str) -> None:
    """Every partition has a leader on every node's view, with a sane term,
    and takes a write that every replica then applies."""
    deadline = time.monotonic() + 30
    while True:
        try:
            versions = {p: kv.put(pids[0], "hostile", tag.encode()) for p, pids in patients.items()}
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for pids in patients.values():
        assert kv.get(pids[0], "hostile").value == tag.encode()
    for address in cluster.addresses:
        for p in patients:
            while True:
                info = _local(address, p)
                if info.leader and info.applied_index >= 1 and info.term < SANE_TERM:
                    got = kv.get(patients[p][0], "hostile")
                    assert got.version == versions[p]
                    break
                assert time.monotonic() < deadline, (address, p, info)
                time.sleep(0.2)
            assert info.term < SANE_TERM, (address, p, info.term)


def test_hostile_raft_messages_are_refused_and_the_partition_keeps_serving(
    cluster: LocalCluster,
) -> None:
    with Client(cluster.addresses, timeout=20.0) as kv:
        patients = patients_per_partition(kv, 1, "hostile")
        _healthy(cluster, kv, patients, "before")
        target_partition = 0
        info = _local(cluster.addresses[0], target_partition)
        leader, term = info.leader, info.term
        followers = [n for n in info.replicas if n != leader]

        # Term 2^64-1 on a heartbeat, to every node, claiming to come from another member.
        for to in (*followers, leader):
            frm = leader if to != leader else followers[0]
            batch = raft_pb2.RaftBatch(
                from_node=frm, to_node=to,
                heartbeats=[raft_pb2.CoalescedHeartbeat(group=target_partition, term=TWO64_1)],
            )
            _assert_refused(
                _send(cluster.addresses[to - 1], batch),
                grpc.StatusCode.INVALID_ARGUMENT, "term is out of range",
            )

        victim = followers[0]
        address = cluster.addresses[victim - 1]
        # An append whose entries skip an index.
        gap = Message(
            MessageType.APP, to=victim, frm=leader, term=term, log_term=term, index=1,
            entries=[Entry(3, term, b"x")], commit=0,
        )
        # An append claiming to come from a node other than the stream's sender.
        spoofed = Message(MessageType.APP, to=victim, frm=leader, term=term, index=0)
        for batch, code, words in (
            (
                raft_pb2.RaftBatch(from_node=leader, to_node=victim, messages=[
                    raft_pb2.GroupMessage(group=target_partition, message=encode_message(gap))]),
                grpc.StatusCode.INVALID_ARGUMENT, "not contiguous",
            ),
            (
                raft_pb2.RaftBatch(from_node=leader, to_node=victim, messages=[
                    raft_pb2.GroupMessage(group=target_partition, message=b"\xc1garbage")]),
                grpc.StatusCode.INVALID_ARGUMENT, "not a valid Raft message",
            ),
            (
                raft_pb2.RaftBatch(from_node=leader, to_node=victim, messages=[
                    raft_pb2.GroupMessage(group=PARTITIONS + 7, message=encode_message(spoofed))]),
                grpc.StatusCode.INVALID_ARGUMENT, "does not exist",
            ),
            (
                raft_pb2.RaftBatch(
                    from_node=next(n for n in (1, 2, 3) if n not in (leader, victim)),
                    to_node=victim,
                    messages=[raft_pb2.GroupMessage(
                        group=target_partition, message=encode_message(spoofed))],
                ),
                grpc.StatusCode.INVALID_ARGUMENT, "claims to come from",
            ),
        ):
            _assert_refused(_send(address, batch), code, words)

        # A follower acknowledging entries its leader never had: counted, it
        # would make a quorum for entries only the leader holds.
        ack = Message(MessageType.APP_RESP, to=leader, frm=victim, term=term, index=1 << 40)
        _assert_refused(
            _send(cluster.addresses[leader - 1], raft_pb2.RaftBatch(
                from_node=victim, to_node=leader,
                messages=[raft_pb2.GroupMessage(group=target_partition, message=encode_message(ack))],
            )),
            grpc.StatusCode.FAILED_PRECONDITION, "beyond this replica's last index",
        )

        # Each node answered and still serves: the partition has a leader on
        # every node's view, with a sane term, and takes writes.
        _healthy(cluster, kv, patients, "after")

        # The forged term left nothing on disk: after a restart of the node
        # that received the most, the partition still works everywhere.
        done = cluster.run("restart-node", str(victim), timeout=120)
        assert done.returncode == 0, done.stderr
        _healthy(cluster, kv, patients, "restarted")
        assert _local(address, target_partition).term < SANE_TERM


def test_a_refusal_leaves_one_log_line_not_a_flood(cluster: LocalCluster) -> None:
    """A hundred identical forged heartbeats: the receiving node logs the
    refusal, rate-limited (one line, then a count), with no traceback."""
    to, frm = 1, 2
    time.sleep(10.5)  # past the rate limit's interval of any earlier refusal
    log_file = cluster.data_dir / f"node-{to}" / "node.log"
    before = log_file.read_text(errors="replace") if log_file.exists() else ""
    batch = raft_pb2.RaftBatch(
        from_node=frm, to_node=to,
        heartbeats=[raft_pb2.CoalescedHeartbeat(group=1, term=TWO64_1)],
    )
    started = time.monotonic()
    for _ in range(100):
        _assert_refused(
            _send(cluster.addresses[to - 1], batch),
            grpc.StatusCode.INVALID_ARGUMENT, "term is out of range",
        )
    intervals = 1 + int((time.monotonic() - started) / 10.0)
    time.sleep(0.5)
    new = log_file.read_text(errors="replace")[len(before):]
    lines = [ln for ln in new.splitlines() if "refused a Raft message from node 2" in ln]
    assert 1 <= len(lines) <= intervals, lines
    assert "Traceback" not in new
