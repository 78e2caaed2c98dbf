"""Exactly-once without holes against real node processes (issue 10, item 7).

What the LRU session table got wrong, each tried on a real 3-node cluster:
  * a spray of new clients evicted live sessions, so a retry of an early write
    applied twice: now opening beyond max_sessions is refused
    (RESOURCE_EXHAUSTED), and the early retry gets its first result;
  * the session clock was the max of the leaders' wall clocks, so one node
    with a fast clock expired every session: now a node thirty days fast
    (MEDKV_TEST_ONLY_CLOCK_OFFSET_S) leads and writes, and nothing expires;
  * TTL came from each node's configuration: now it is a cluster setting
    (`medkv settings set`, applied through every partition's log), and a retry after its session expired by that TTL
    is refused with FAILED_PRECONDITION / session-expired and never applied.

Writes whose retries the test controls go through raw KV stubs with explicit
WriteIds (the client library numbers its own). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from client import Client
from node.test_clock import ENV as CLOCK_OFFSET_ENV
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import (
    ROOT,
    SCRIPT,
    LocalCluster,
    leader_of,
    patients_per_partition,
    raw_channel,
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.cluster]

PARTITIONS = 2
THIRTY_DAYS_S = 30 * 86_400
RPC_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("medkv-sessions"), partitions=PARTITIONS)
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="module")
def kv(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.addresses, timeout=20.0) as client:
        yield client


def address_of(cluster: LocalCluster, node: int) -> str:
    return cluster.addresses[node - 1]


def kv_stub(address: str) -> tuple[grpc.Channel, kv_pb2_grpc.KVStub]:
    channel = raw_channel(address)
    return channel, kv_pb2_grpc.KVStub(channel)


def on_leader(cluster: LocalCluster, kv: Client, partition: int, call: str, request: object) -> object:
    """One raw KV call on the partition's leader, retried (bounded) while leadership moves.

    Only UNAVAILABLE is retried: a node refusing as a non-leader applied nothing."""
    deadline = time.monotonic() + 30.0
    while True:
        address = address_of(cluster, leader_of(kv, partition))
        channel, stub = kv_stub(address)
        try:
            with channel:
                return getattr(stub, call)(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def open_session(cluster: LocalCluster, kv: Client, partition: int, client_id: bytes) -> int:
    req = kv_pb2.OpenSessionRequest(client_id=client_id, partition=partition)
    reply = on_leader(cluster, kv, partition, "OpenSession", req)
    assert isinstance(reply, kv_pb2.OpenSessionResponse) and reply.session > 0
    return int(reply.session)


def put_request(
    client_id: bytes, session: int, seq: int, pid: str, value: bytes, ack_below: int = 1
) -> kv_pb2.PutRequest:
    # ack_below 1 by default: the session keeps every result, so a retry of
    # seq 1 stays answerable however many writes follow it.
    wid = common_pb2.WriteId(client_id=client_id, session=session, seq=seq, ack_below=ack_below)
    return kv_pb2.PutRequest(write_id=wid, patient_id=pid, record_id="r", value=value)


def error_kind(e: grpc.RpcError) -> str:
    return dict(e.trailing_metadata() or ()).get("medkv-error", "")


def settings_cli(
    cluster: LocalCluster, *args: str, json_out: bool = True
) -> subprocess.CompletedProcess[str]:
    """`medkv settings ...` as an operator runs it, against the running nodes."""
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "--addr", ",".join(cluster.addresses),
         *(["--json"] if json_out else []), "--timeout", "20", "settings", *args],
        capture_output=True, text=True, timeout=60, cwd=str(ROOT), check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_cli_sets_replicated_settings_that_every_replica_applies(
    cluster: LocalCluster, kv: Client
) -> None:
    done = settings_cli(cluster, "set", "--max-sessions", "30", "--session-ttl", "3600")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    generation = doc["generation"]
    assert doc["max_sessions"] == 30 and doc["session_ttl_ms"] == 3_600_000
    assert generation >= 2 and doc["behind"] == []  # 1: the seed from `cluster init`
    got = settings_cli(cluster, "get")
    assert got.returncode == 0, got.stderr
    view = json.loads(got.stdout)
    assert view["cluster"]["generation"] == generation and view["behind"] == []
    assert [(r["partition"], r["max_sessions"], r["generation"]) for r in view["partitions"]] == [
        (p, 30, generation) for p in range(PARTITIONS)
    ]
    # Every replica, not just the leaders, applied the same entry (bounded wait).
    deadline = time.monotonic() + 15.0
    for p in range(PARTITIONS):
        for address in cluster.addresses:
            with raw_channel(address) as channel:
                admin = admin_pb2_grpc.AdminStub(channel)
                while True:
                    s = admin.GetSettings(admin_pb2.GetSettingsRequest(partition=p), timeout=5)
                    if s.cluster_generation_applied == generation or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            assert s.cluster_generation_applied == generation and s.settings.max_sessions == 30
    table = settings_cli(cluster, "get", "--partition", "1", json_out=False)
    assert table.returncode == 0, table.stderr
    first, applied, _, header, row = table.stdout.splitlines()[:5]
    assert first.startswith(f"cluster settings generation {generation}: session TTL 3600s")
    assert applied.startswith("applied by 1/1 partition(s)")
    assert header.split()[:3] == ["PARTITION", "TTL_S", "RETENTION"]
    assert row.split()[:2] == ["1", "3600"] and row.split()[3] == "30"
    assert row.split()[5] == str(generation)
    bad = settings_cli(cluster, "set", "--max-sessions", "0")
    assert bad.returncode != 0 and "max_sessions" in bad.stderr


def test_a_spray_of_new_clients_evicts_no_session_and_a_fast_clock_expires_none(
    cluster: LocalCluster, kv: Client
) -> None:
    partition = 0
    kv.set_settings(max_sessions=30, session_ttl_ms=3_600_000)
    (pid,) = patients_per_partition(kv, 1, f"early-{uuid.uuid4().hex[:6]}")[partition]
    early = os.urandom(16)
    session = open_session(cluster, kv, partition, early)
    write = put_request(early, session, 1, pid, b"early")
    first = on_leader(cluster, kv, partition, "Put", write)
    assert isinstance(first, kv_pb2.PutResponse) and first.version > 0

    # The spray: many new clients. Some open a session (up to the cap); the
    # rest are refused, precisely, and no open session is evicted for them.
    refused: list[grpc.RpcError] = []
    sprayed: list[tuple[bytes, int]] = []
    started = time.monotonic()
    for _ in range(60):
        client_id = os.urandom(16)
        try:
            sprayed.append((client_id, open_session(cluster, kv, partition, client_id)))
        except grpc.RpcError as e:
            refused.append(e)
    assert time.monotonic() - started < 60
    status = kv.get_settings(partitions=[partition])[0]
    assert status.open_sessions == 30 and 0 < len(sprayed) < 30
    assert refused and {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("max_sessions" in (e.details() or "") for e in refused)

    # The early write's retry, after the spray: its first result, not a second write.
    again = on_leader(cluster, kv, partition, "Put", write)
    assert isinstance(again, kv_pb2.PutResponse) and again.version == first.version
    assert [r.version for r in kv.history(pid, "r")] == [first.version]

    # A node whose wall clock is thirty days fast leads the partition and writes
    # (in a sprayed client's session: the early session stays idle meanwhile,
    # so a fast clock reaching log time would expire it and the retry below
    # would be refused).
    fast = next(n for n in range(1, len(cluster.addresses) + 1) if n != leader_of(kv, partition))
    restart = subprocess.run(
        [str(SCRIPT), "restart-node", str(fast), "--data-dir", str(cluster.data_dir), "--timeout", "60"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, CLOCK_OFFSET_ENV: str(THIRTY_DAYS_S)},
    )
    assert restart.returncode == 0, restart.stderr
    node_log = (cluster.data_dir / f"node-{fast}" / "node.log").read_text()
    assert f"TEST ONLY: {CLOCK_OFFSET_ENV}" in node_log  # loudly logged
    fast_writer, fast_session = sprayed[0]
    wrote_on_fast = 0
    deadline = time.monotonic() + 60.0
    with raw_channel(address_of(cluster, fast)) as channel:
        stub = kv_pb2_grpc.KVStub(channel)
        admin = admin_pb2_grpc.AdminStub(channel)
        while wrote_on_fast < 3 and time.monotonic() < deadline:
            try:
                if leader_of(kv, partition) != fast:
                    leader = address_of(cluster, leader_of(kv, partition))
                    with raw_channel(leader) as lc:
                        admin_pb2_grpc.AdminStub(lc).TransferLeader(
                            admin_pb2.TransferLeaderRequest(partition=partition, target_node=fast),
                            timeout=RPC_TIMEOUT,
                        )
                seq = 1 + wrote_on_fast
                # Sent to the fast node itself: only a leader proposes, so a
                # success means the fast node stamped this entry.
                stub.Put(put_request(fast_writer, fast_session, seq, pid, b"fast"), timeout=RPC_TIMEOUT)
                wrote_on_fast += 1
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                time.sleep(0.3)
        on_fast = admin.GetSettings(admin_pb2.GetSettingsRequest(partition=partition), timeout=5)
    assert wrote_on_fast == 3, "the fast node never led the partition in 60 s"
    # Nothing expired: every session is still open, on the fast node too, and
    # the early write's retry still gets its first result.
    assert on_fast.open_sessions == 30
    again = on_leader(cluster, kv, partition, "Put", write)
    assert isinstance(again, kv_pb2.PutResponse) and again.version == first.version
    assert [r.value for r in kv.history(pid, "r")].count(b"early") == 1


def wait_until_only_open(kv: Client, partition: int, keep_alive: object) -> None:
    """Bounded: write in the keep-alive session until it is the partition's only
    open one (log time advances only with stamped entries; leadership moving
    meanwhile does not count the idle time, so this waits rather than sleeps)."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        time.sleep(0.4)
        keep_alive_write = keep_alive()
        assert keep_alive_write is not None
        if kv.get_settings(partitions=[partition])[0].open_sessions == 1:
            return
    raise AssertionError("the idle session did not expire within 30 s")


def test_a_retry_after_its_session_expired_by_the_replicated_ttl_is_refused(
    cluster: LocalCluster, kv: Client
) -> None:
    partition = 1
    ttl_ms = 1_500
    kv.set_settings(session_ttl_ms=ttl_ms, max_sessions=30)  # every partition: one change
    # Two patients of the partition: sessions are per partition.
    pid, other_pid = patients_per_partition(kv, 2, f"late-{uuid.uuid4().hex[:6]}")[partition]
    late = os.urandom(16)
    session = open_session(cluster, kv, partition, late)
    write = put_request(late, session, 1, pid, b"once")
    first = on_leader(cluster, kv, partition, "Put", write)
    assert isinstance(first, kv_pb2.PutResponse)
    # Another client stays active while `late` idles past the TTL.
    other = os.urandom(16)
    other_session = open_session(cluster, kv, partition, other)
    seqs = iter(range(1, 1_000))

    def keep_alive() -> object:
        seq = next(seqs)
        return on_leader(
            cluster, kv, partition, "Put", put_request(other, other_session, seq, other_pid, b"x", seq)
        )

    wait_until_only_open(kv, partition, keep_alive)
    with pytest.raises(grpc.RpcError) as refused:
        on_leader(cluster, kv, partition, "Put", write)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_kind(refused.value) == "session-expired"
    assert f"session {session} is not open" in (refused.value.details() or "")
    assert [r.version for r in kv.history(pid, "r")] == [first.version]  # never applied again

    # The client library, idle past the TTL: its next write meets the expiry at
    # its first attempt (nothing applied), so it opens a new session by itself.
    v1 = kv.put(pid, "lib", b"1")
    wait_until_only_open(kv, partition, keep_alive)
    v2 = kv.put(pid, "lib", b"2")
    assert [(r.version, r.value) for r in kv.history(pid, "lib")] == [(v2, b"2"), (v1, b"1")]
    kv.set_settings(session_ttl_ms=3_600_000)
