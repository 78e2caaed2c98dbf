"""The database node on real processes: 3- and 5-node clusters on 127.0.0.1.

Raw gRPC stubs are used where a test must aim at one particular node or
resend one exact request; the client is used everywhere else.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import Client, NotFound, PermissionDenied, VersionConflict
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import (
    LocalCluster,
    leader_of,
    patients_per_partition,
    raw_channel,
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.cluster]

ELECTION_BOUND_S = 10.0  # election timeout is 1-2 s (10 ticks of 100 ms, randomized)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kv_stub(address: str) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(raw_channel(address))


def follower_get(address: str, pid: str, rid: str) -> kv_pb2.GetResponse:
    return kv_stub(address).Get(
        kv_pb2.GetRequest(
            patient_id=pid, record_id=rid,
            read=common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER),
        ),
        timeout=5,
    )


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(
        tmp_path_factory.mktemp("node3"),
        extra=("--raft", "snapshot_every=100", "--raft", "keep_after_snapshot=20"),
    )
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture
def kv(cluster3: LocalCluster) -> Iterator[Client]:
    with Client(cluster3.addresses, timeout=20.0) as client:
        yield client


def test_every_partition_serves_writes_and_every_read_mode(
    cluster3: LocalCluster, kv: Client
) -> None:
    patients = patients_per_partition(kv, 1, "modes")
    for partition, (pid,) in patients.items():
        version = kv.put(pid, "vitals", b"bp=120/80")
        lin = kv.get(pid, "vitals")
        assert (lin.value, lin.version, lin.partition) == (b"bp=120/80", version, partition)
        assert lin.from_leader and lin.applied_index >= version
        # Every replica sees the write eventually and states its lag truthfully.
        for address in cluster3.addresses:
            got = wait_until(
                lambda a=address, v=version, p=pid: (r := _try_follower_get(a, p, "vitals"))
                and r.record.version == v and r,
                10, f"the write on {address}",
            )
            rs = got.read_state
            assert rs.applied_index >= version
            # Lag counts against the leader's announced commit index, which may
            # be ahead of the commit index this replica has heard of.
            assert rs.lag_entries >= max(0, rs.commit_index - rs.applied_index)
        bounded = kv.get(pid, "vitals", consistency="bounded", max_staleness=5.0)
        assert bounded.version == version
        ryw = kv.get(pid, "vitals", consistency="follower", min_version=version)
        assert ryw.version >= version


def _cas_race(addresses: list[str], pid: str, expected: int, writers: int) -> tuple[list[int], list[str]]:
    """`writers` clients CAS the same record from the same version at once."""
    winners: list[int] = []
    losers: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def attempt(n: int) -> None:
        with Client(addresses, timeout=20.0) as c:
            c.connect()
            start.wait(timeout=20)
            try:
                v = c.cas(pid, "chart", b"writer-%d" % n, expected)
                with lock:
                    winners.append(v)
            except VersionConflict as e:
                with lock:
                    losers.append(e.message)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return winners, losers


def test_cas_races_have_exactly_one_winner_per_version(
    cluster3: LocalCluster, kv: Client
) -> None:
    pid = "cas-race"
    previous = kv.put(pid, "chart", b"v0")
    for _ in range(5):
        current = kv.get(pid, "chart").version
        winners, losers = _cas_race(cluster3.addresses, pid, current, 4)
        assert len(winners) == 1, (winners, losers)
        assert len(losers) == 3
        assert all("version" in m for m in losers), losers
        assert kv.get(pid, "chart").version == winners[0] > previous
        previous = winners[0]


def test_a_retried_request_is_applied_once(cluster3: LocalCluster, kv: Client) -> None:
    pid = "retry-once"
    partition = kv.routing_table().partition_of(pid)
    leader = leader_of(kv, partition)
    stub = kv_stub(cluster3.addresses[leader - 1])
    client_id = os.urandom(16)
    session = stub.OpenSession(
        kv_pb2.OpenSessionRequest(client_id=client_id, partition=partition), timeout=5
    ).session
    wid = common_pb2.WriteId(client_id=client_id, session=session, seq=1)
    req = kv_pb2.PutRequest(write_id=wid, patient_id=pid, record_id="note", value=b"first")
    first = stub.Put(req, timeout=5)
    again = stub.Put(req, timeout=5)  # the same (session, seq): a retry
    assert again.version == first.version
    history = kv.history(pid, "note")
    assert [h.version for h in history] == [first.version]


def test_leader_kill_elects_a_new_leader_and_loses_nothing(
    cluster3: LocalCluster, kv: Client
) -> None:
    patients = patients_per_partition(kv, 4, "failover")
    acked = {}
    for pids in patients.values():
        for pid in pids:
            acked[pid] = kv.put(pid, "record", pid.encode())
    victim = leader_of(kv, 0)
    led = [p.partition for p in kv.cluster_status().partition_info if p.leader == victim]
    killed = time.monotonic()
    assert cluster3.run("kill-node", str(victim)).returncode == 0

    def new_leaders() -> bool:
        status = kv.cluster_status()
        return all(
            p.leader not in (0, victim) for p in status.partition_info if p.partition in led
        )

    wait_until(new_leaders, ELECTION_BOUND_S, "new leaders for the killed node's partitions")
    took = time.monotonic() - killed
    assert took < ELECTION_BOUND_S
    for pid, version in acked.items():
        rec = kv.get(pid, "record")
        assert rec.version == version and rec.value == pid.encode()
    # Writes go on with one node down, and the node rejoins afterwards.
    kv.put(patients[0][0], "after-kill", b"x")
    assert cluster3.run("restart-node", str(victim)).returncode == 0


def test_a_restarted_node_catches_up_through_a_snapshot(
    cluster3: LocalCluster, kv: Client
) -> None:
    victim = 3
    assert cluster3.run("kill-node", str(victim)).returncode == 0
    # With snapshot_every=100 and keep_after_snapshot=20, 300 writes to one
    # partition compact its log past what node 3 holds: only a snapshot helps.
    pid = patients_per_partition(kv, 1, "snapcatch")[0][0]
    last = 0
    for i in range(300):
        last = kv.put(pid, f"obs-{i % 50}", b"%d" % i)
    assert cluster3.run("restart-node", str(victim)).returncode == 0
    address = cluster3.addresses[victim - 1]
    got = wait_until(
        lambda: (r := _try_follower_get(address, pid, "obs-49")) is not None
        and r.record.version >= last - 50 and r,
        30, "node 3 to catch up",
    )
    assert got.read_state.node_id == victim
    log = (cluster3.data_dir / f"node-{victim}" / "node.log").read_text()
    assert re.search(r"partition 0: caught up from a snapshot at index \d+", log), log[-2000:]
    for i in range(50):
        rec = follower_get(address, pid, f"obs-{i}")
        assert rec.record.value == kv.get(pid, f"obs-{i}").value


def _try_follower_get(address: str, pid: str, rid: str) -> kv_pb2.GetResponse | None:
    try:
        return follower_get(address, pid, rid)
    except grpc.RpcError:
        return None


# ---- bad input --------------------------------------------------------------

def _snapshot_of_data(kv: Client) -> list[tuple[str, str, int]]:
    return sorted((r.patient_id, r.record_id, r.version) for r in kv.scan(consistency="follower"))


garbage_text = st.one_of(
    st.just(""),
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1, max_size=5),
    st.binary(min_size=257, max_size=400).map(lambda b: b.hex()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    pid=garbage_text,
    rid=garbage_text,
    value=st.one_of(st.binary(max_size=64), st.just(b"x" * ((1 << 20) + 1))),
    client_id=st.binary(max_size=20),
    seq=st.integers(min_value=0, max_value=3),
    consistency=st.integers(min_value=-1, max_value=9),
)
def test_garbage_requests_are_refused_precisely_and_change_nothing(
    cluster3: LocalCluster, pid: str, rid: str, value: bytes, client_id: bytes, seq: int,
    consistency: int,
) -> None:
    stub = kv_stub(cluster3.addresses[0])
    with Client(cluster3.addresses, timeout=20.0) as kv:
        before = _snapshot_of_data(kv)
        valid_ids = 0 < len(pid.encode("utf-8", "surrogatepass")) <= 256 and 0 < len(rid.encode("utf-8", "surrogatepass")) <= 256
        valid_write = len(client_id) == 16 and seq > 0 and len(value) <= 1 << 20
        calls = [
            lambda: stub.Put(kv_pb2.PutRequest(
                write_id=common_pb2.WriteId(client_id=client_id, seq=seq),
                patient_id=pid, record_id=rid, value=value), timeout=5),
            lambda: stub.Get(kv_pb2.GetRequest(
                patient_id=pid, record_id=rid,
                read=common_pb2.ReadOptions(consistency=max(0, consistency))), timeout=5),
            lambda: stub.Scan(kv_pb2.ScanRequest(partition=1000 + seq), timeout=5).next(),
        ]
        for call in calls:
            try:
                call()
            except grpc.RpcError as e:
                assert e.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                    # A read of a patient no clinic registered (these never are),
                    # refused as another clinic's patient would be.
                    grpc.StatusCode.PERMISSION_DENIED,
                ), (e.code(), e.details())
                if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                    assert "permission record.read denied" in e.details(), e.details()
                    if pid and len(pid) > 3:
                        assert pid not in e.details()
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    assert ":" in e.details()  # names the field or the problem
                    if pid and len(pid) > 3:
                        assert pid not in e.details()  # never echoes patient data
        if not (valid_ids and valid_write):
            assert _snapshot_of_data(kv) == before
        # The node is still up and serving.
        health = admin_pb2_grpc.AdminStub(raw_channel(cluster3.addresses[0]))
        assert health.ClusterStatus(admin_pb2.ClusterStatusRequest(local_only=True), timeout=5)


def test_unknown_record_is_not_found_and_unknown_patient_is_refused(kv: Client) -> None:
    kv.put("written-once", "a", b"1")  # registers the patient to the ops token's clinic
    with pytest.raises(NotFound) as e:
        kv.get("written-once", "x")
    assert "written-once" not in e.value.message
    # Nobody registered this patient: refused exactly like another clinic's
    # patient, so the answer does not tell whether it exists.
    with pytest.raises(PermissionDenied) as denied:
        kv.get("never-written", "x")
    assert "never-written" not in denied.value.message


# ---- process lifecycle ------------------------------------------------------

def test_sigterm_stops_cleanly_and_kill9_restarts(cluster3: LocalCluster, kv: Client) -> None:
    node = 2
    pid_file = cluster3.data_dir / f"node-{node}" / "node.pid"
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 15, "SIGTERM exit")
    log = (cluster3.data_dir / f"node-{node}" / "node.log").read_text()
    assert "node 2 stopped cleanly" in log
    assert cluster3.run("restart-node", str(node)).returncode == 0
    v = kv.put("lifecycle", "r", b"1")
    assert cluster3.run("kill-node", str(node)).returncode == 0
    assert cluster3.run("restart-node", str(node)).returncode == 0
    address = cluster3.addresses[node - 1]
    got = wait_until(lambda: (r := _try_follower_get(address, "lifecycle", "r")) and r, 20,
                     "node 2 serving after kill -9")
    assert got.record.version >= v


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_logs_hold_no_patient_data(cluster3: LocalCluster, kv: Client) -> None:
    canary = "Canary-Patient-7Q2X"
    kv.put(canary, "note", b"Canary-Note-Z9")
    kv.put(canary, "other", b"x")
    with contextlib.suppress(NotFound):
        kv.get(canary, "missing")
    with contextlib.suppress(PermissionDenied):  # unregistered: the refusal path logs no id
        kv.get(canary + "-missing", "note")
    for n in (1, 2, 3):
        log = (cluster3.data_dir / f"node-{n}" / "node.log").read_text()
        assert "Canary" not in log


# ---- five nodes ---------------------------------------------------------------

def test_five_nodes_survive_two_failures(tmp_path: Path) -> None:
    # Five replicas per partition, so two dead nodes are a minority of every
    # group (with three replicas, two dead nodes can hold a group's majority).
    c = start_cluster(tmp_path / "five", nodes=5, extra=("--replicas", "5"))
    try:
        with Client(c.addresses, timeout=20.0) as kv:
            patients = patients_per_partition(kv, 2, "five")
            acked = {pid: kv.put(pid, "r", pid.encode()) for pids in patients.values() for pid in pids}
            for n in (1, 2):
                assert c.run("kill-node", str(n)).returncode == 0
            for pid, version in acked.items():
                assert kv.get(pid, "r").version == version
            for pid in list(acked)[:8]:
                acked[pid] = kv.put(pid, "r", b"after")
            assert c.run("restart-node", "1").returncode == 0
            assert c.run("restart-node", "2").returncode == 0
            for pid, version in acked.items():
                assert kv.get(pid, "r").version == version
    finally:
        stop_cluster(c)
