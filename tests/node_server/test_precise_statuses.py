"""Every status precise (issue 10, item 9), each case on a real cluster.

3 nodes, 2 replicas per partition (so some node holds no replica of a
partition), [raft] max_uncommitted_bytes small enough to reach, and
[limits] max_in_flight_per_stream small enough to reach.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from client import Client
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import LocalCluster, raw_channel, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

PARTITIONS = 4
IN_FLIGHT_CAP = 4
UNCOMMITTED_CAP = 1000
CID = b"\x05" * 16
# gRPC's code numbers in a multiplexed BatchCommands status.
OK, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 4, 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(
        tmp_path_factory.mktemp("precise"), partitions=PARTITIONS,
        extra=("--replicas", "2", "--raft", f"max_uncommitted_bytes={UNCOMMITTED_CAP}",
               "--limits", f"max_in_flight_per_stream={IN_FLIGHT_CAP}"),
    )
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="module")
def kv(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.addresses, timeout=20.0) as client:
        yield client


def _admin(address: str) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(raw_channel(address))


def _kv(address: str) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(raw_channel(address))


def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _partition(kv: Client, pid: str) -> admin_pb2.PartitionInfo:
    table = kv.routing_table()
    p = table.partition_of(pid)
    return next(i for i in kv.cluster_status().partition_info if i.partition == p)


def _leader_address(cluster: LocalCluster, kv: Client, pid: str) -> tuple[str, admin_pb2.PartitionInfo]:
    deadline = time.monotonic() + 20
    while True:
        info = _partition(kv, pid)
        if info.leader:
            return cluster.addresses[info.leader - 1], info
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.2)


def test_erase_patient_with_a_bad_id_is_invalid_argument(cluster: LocalCluster) -> None:
    admin = _admin(cluster.addresses[0])
    for req, field in (
        (admin_pb2.ErasePatientRequest(patient_id="", client_id=CID, seq=1), "patient_id"),
        (admin_pb2.ErasePatientRequest(patient_id="x" * 300, client_id=CID, seq=1), "patient_id"),
        (admin_pb2.ErasePatientRequest(patient_id="p", client_id=b"short", seq=1), "client_id"),
        (admin_pb2.ErasePatientRequest(patient_id="p", client_id=CID, seq=0), "seq"),
    ):
        code, details = _status(lambda req=req: admin.ErasePatient(req, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert field in details, details


def test_transfer_leader_to_a_node_without_a_replica_is_failed_precondition(
    cluster: LocalCluster, kv: Client
) -> None:
    p, outsider = next(
        (i.partition, n) for i in kv.cluster_status().partition_info
        for n in (1, 2, 3) if n not in i.replicas
    )
    for address in cluster.addresses:  # whichever node is asked
        admin = _admin(address)
        code, details = _status(lambda admin=admin: admin.TransferLeader(
            admin_pb2.TransferLeaderRequest(partition=p, target_node=outsider), timeout=15))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
        assert f"node {outsider} holds no replica of partition {p}" in details
        code, details = _status(lambda admin=admin: admin.TransferLeader(
            admin_pb2.TransferLeaderRequest(partition=p, target_node=99), timeout=15))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "not a member of the cluster" in details


def test_ack_below_above_seq_is_refused_before_replication(
    cluster: LocalCluster, kv: Client
) -> None:
    pid = "ack-below"
    kv.put(pid, "r", b"v")
    address, info = _leader_address(cluster, kv, pid)
    before = _admin(address).PartitionStatus(
        admin_pb2.PartitionStatusRequest(partition=info.partition), timeout=5).info.commit_index
    req = kv_pb2.PutRequest(
        write_id=common_pb2.WriteId(client_id=CID, seq=5, ack_below=9),
        patient_id=pid, record_id="r", value=b"w",
    )
    code, details = _status(lambda: _kv(address).Put(req, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "write_id.ack_below" in details
    after = _admin(address).PartitionStatus(
        admin_pb2.PartitionStatusRequest(partition=info.partition), timeout=5).info.commit_index
    assert after == before, "the refused write went through the Raft log"
    assert kv.get(pid, "r").value == b"v"


def test_too_many_uncommitted_bytes_is_resource_exhausted(
    cluster: LocalCluster, kv: Client
) -> None:
    pid = "uncommitted"
    kv.put(pid, "r", b"v")

    sessions: dict[bytes, int] = {}

    def put(attempt: int, seq: int) -> kv_pb2.PutRequest:
        cid = bytes([attempt, seq]) * 8
        return kv_pb2.PutRequest(
            write_id=common_pb2.WriteId(client_id=cid, session=sessions[cid], seq=1),
            patient_id=pid, record_id=f"r{seq}", value=b"x" * 600,
        )

    # The follower is stopped by SIGSTOP (not through scripts/cluster: no
    # start-up delay). The leader steps down (check_quorum) one or two
    # election timeouts (1-2 s) after it last heard the follower, so both
    # writes must reach it before that; on a loaded machine a step-down may
    # come first (UNAVAILABLE, not the point here): then try again, boundedly.
    seen: list[tuple[grpc.StatusCode, str]] = []
    for attempt in range(1, 4):
        address, info = _leader_address(cluster, kv, pid)
        follower = next(n for n in info.replicas if n != info.leader)
        stub = _kv(address)
        stub.Get(kv_pb2.GetRequest(patient_id=pid, record_id="r"), timeout=10)  # connected
        for seq in (1, 2):  # writes need a registered session, opened while all is well
            cid = bytes([attempt, seq]) * 8
            sessions[cid] = stub.OpenSession(
                kv_pb2.OpenSessionRequest(client_id=cid, partition=info.partition), timeout=10
            ).session
        follower_pid = int((cluster.data_dir / f"node-{follower}" / "node.pid").read_text())
        os.kill(follower_pid, signal.SIGSTOP)
        try:
            # The first write is appended but cannot commit without the
            # follower; the next would put the leader over max_uncommitted_bytes.
            first = stub.Put.future(put(attempt, 1), timeout=3)
            time.sleep(0.1)
            second = put(attempt, 2)
            seen.append(_status(lambda s=stub, r=second: s.Put(r, timeout=3)))
            with contextlib.suppress(grpc.RpcError):
                first.result()
        finally:
            os.kill(follower_pid, signal.SIGCONT)
        code, details = seen[-1]
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert "max_uncommitted_bytes" in details, details
            break
        assert code == grpc.StatusCode.UNAVAILABLE, seen  # a step-down beat the writes
    assert seen[-1][0] == grpc.StatusCode.RESOURCE_EXHAUSTED, seen
    # Back-pressure, not a fault: once the follower is back, writes go through.
    deadline = time.monotonic() + 30
    while True:
        try:
            kv.put(pid, "after", b"ok")
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.5)


def _gets(pid: str, n: int, **read: Any) -> kv_pb2.BatchCommandsRequest:
    return kv_pb2.BatchCommandsRequest(requests=[
        kv_pb2.KVRequest(request_id=k, get=kv_pb2.GetRequest(
            patient_id=pid, record_id="r", read=common_pb2.ReadOptions(**read)))
        for k in range(1, n + 1)
    ])


def test_batch_commands_caps_requests_in_flight_per_stream(
    cluster: LocalCluster, kv: Client
) -> None:
    pid = "in-flight"
    kv.put(pid, "r", b"v")
    address, _ = _leader_address(cluster, kv, pid)
    n = 3 * IN_FLIGHT_CAP
    replies = [
        r for resp in _kv(address).BatchCommands(iter([_gets(pid, n)]), timeout=15)
        for r in resp.responses
    ]
    assert sorted(r.request_id for r in replies) == list(range(1, n + 1))
    codes = [r.status.code for r in replies]
    assert codes.count(OK) == IN_FLIGHT_CAP, codes
    assert codes.count(RESOURCE_EXHAUSTED) == n - IN_FLIGHT_CAP, codes
    refused = next(r for r in replies if r.status.code == RESOURCE_EXHAUSTED)
    assert "max_in_flight_per_stream" in refused.status.message
    assert all(r.get.record.value == b"v" for r in replies if r.status.code == OK)


def test_batch_commands_garbage_ends_the_stream_with_invalid_argument(
    cluster: LocalCluster, kv: Client
) -> None:
    pid = "garbage-stream"
    kv.put(pid, "r", b"v")
    address, _ = _leader_address(cluster, kv, pid)
    call = raw_channel(address).stream_stream(
        "/medkv.v1.KV/BatchCommands",
        request_serializer=lambda b: b,
        response_deserializer=kv_pb2.BatchCommandsResponse.FromString,
    )
    sent = [_gets(pid, 1).SerializeToString(), b"\xff\xff\xff garbage", b"\x0a\x05\xff"]
    started = time.monotonic()
    replies: list[kv_pb2.BatchCommandsResponse] = []
    with pytest.raises(grpc.RpcError) as e:
        for resp in call(iter(sent), timeout=15):
            replies.append(resp)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "not a valid protobuf encoding of medkv.v1.BatchCommandsRequest" in (
        e.value.details() or ""
    )
    assert time.monotonic() - started < 10, "the stream did not end promptly"


def test_batch_commands_honours_the_stream_deadline(cluster: LocalCluster, kv: Client) -> None:
    """A request that cannot be served in time (it waits for a version no
    write has made) is answered DEADLINE_EXCEEDED inside the stream, before
    the stream's own deadline, not left hanging for the node's timeout."""
    pid = "deadline"
    kv.put(pid, "r", b"v")
    address, _ = _leader_address(cluster, kv, pid)
    stream_deadline = 2.0
    started = time.monotonic()
    got: list[kv_pb2.KVResponse] = []
    with contextlib.suppress(grpc.RpcError):
        for resp in _kv(address).BatchCommands(
            iter([_gets(pid, 1, consistency=common_pb2.FOLLOWER, min_version=1 << 40)]),
            timeout=stream_deadline,
        ):
            got += resp.responses
    took = time.monotonic() - started
    assert [r.status.code for r in got] == [DEADLINE_EXCEEDED], got
    assert took < stream_deadline + 0.5


def test_batch_commands_honours_each_request_timeout(cluster: LocalCluster, kv: Client) -> None:
    """A request's own timeout_ms bounds it like a unary call's deadline (the
    multiplexing client's streams have none): answered DEADLINE_EXCEEDED
    before it, while a request without one on the same stream is served."""
    pid = "request-deadline"
    kv.put(pid, "r", b"v")
    address, _ = _leader_address(cluster, kv, pid)
    batch = _gets(pid, 2, consistency=common_pb2.FOLLOWER)
    batch.requests[0].get.read.min_version = 1 << 40  # a version no write has made
    batch.requests[0].timeout_ms = 1000
    started = time.monotonic()
    got: dict[int, tuple[kv_pb2.KVResponse, float]] = {}
    for resp in _kv(address).BatchCommands(iter([batch]), timeout=30):
        for r in resp.responses:
            got[r.request_id] = (r, time.monotonic() - started)
    assert got[2][0].status.code == OK and got[2][0].get.record.value == b"v"
    slow, took = got[1]
    assert slow.status.code == DEADLINE_EXCEEDED, slow
    assert took < 1.5, took


def test_garbage_on_a_unary_method_logs_one_line_without_a_traceback(
    cluster: LocalCluster,
) -> None:
    node = 1
    log_file = cluster.data_dir / f"node-{node}" / "node.log"
    before = len(log_file.read_bytes())
    time.sleep(10.5)  # past the rate limit's interval of any earlier refusal
    put = raw_channel(cluster.addresses[node - 1]).unary_unary(
        "/medkv.v1.KV/Put", request_serializer=lambda b: b,
        response_deserializer=kv_pb2.PutResponse.FromString,
    )
    bad_utf8 = b"\x12\x02\xff\xfe"  # patient_id (field 2) holding bytes that are not UTF-8
    started = time.monotonic()
    for raw in [b"\xff\xff garbage"] * 20 + [bad_utf8] * 20:
        code, details = _status(lambda raw=raw: put(raw, timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    code, details = _status(lambda: put(bad_utf8, timeout=5))
    assert "not valid UTF-8" in details, details
    intervals = 1 + int((time.monotonic() - started) / 10.0)
    time.sleep(0.5)
    new = log_file.read_bytes()[before:].decode(errors="replace")
    lines = [ln for ln in new.splitlines() if "refused medkv.v1.KV/Put" in ln]
    assert 1 <= len(lines) <= intervals, lines
    assert "Traceback" not in new


def test_cli_partition_and_transfer_leader_on_a_real_cluster(kv: Client) -> None:
    """`medkv partition` and `medkv transfer-leader` against real nodes (the
    parsing and output are tested in tests/client_unit/test_cli.py)."""
    import io
    import json

    from client.cli import _Out, build_parser, run

    def invoke(*argv: str) -> str:
        args = build_parser().parse_args(list(argv))
        out = io.StringIO()
        assert run(args, kv, _Out(out, io.StringIO(), args.json), io.BytesIO(), io.BytesIO()) == 0
        return out.getvalue()

    p = 1
    doc = json.loads(invoke("partition", str(p), "--json"))
    info = doc["info"]
    assert info["partition"] == p and len(info["replicas"]) == 2
    # The leader balancer hands leadership back to the preferred (first)
    # replica, so move it there when it is elsewhere, else to the other one
    # and only check the answer (which waits until the transfer completed).
    preferred, other = info["replicas"]
    target = preferred if info["leader"] != preferred else other
    assert invoke("transfer-leader", str(p), str(target)) == f"{target}\n"
    table = invoke("partition", str(p)).splitlines()
    assert table[0].startswith(f"partition {p}: leader ")
    assert table[1].split()[:2] == ["NODE", "ROLE"] and len(table) == 4
