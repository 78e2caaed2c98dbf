"""The clients against real gRPC servers (tests/client_unit/kvserver.py).

Redirects, retries, WriteId reuse, replica fallback and scans are observed
through the requests the servers actually received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from client import (
    AsyncClient,
    Client,
    InvalidArgument,
    MedkvError,
    NotFound,
    RetryPolicy,
    SessionExpired,
    TooStale,
    Unavailable,
    VersionConflict,
    async_client,
    ops,
)
from client.errors import DeadlineExceeded, PermissionDenied, ResourceExhausted
from tests.client_unit.kvserver import Fault, TestCluster

FAST = RetryPolicy(timeout=3.0, attempt_timeout=1.0, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def cluster() -> Iterator[TestCluster]:
    with TestCluster(nodes=3, partitions=4) as c:
        yield c


@pytest.fixture
def kv(cluster: TestCluster) -> Iterator[Client]:
    with Client(cluster.seeds(), retry=FAST) as client:
        yield client


def test_basic_operations_round_trip(
    cluster: TestCluster, kv: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two versions per History request, so a three-version history takes pages.
    monkeypatch.setattr(async_client, "HISTORY_PAGE", 2)
    pid = cluster.patient_in(0)
    v1 = kv.put(pid, "allergies", b"penicillin")
    record = kv.get(pid, "allergies")
    assert (record.value, record.version, record.deleted) == (b"penicillin", v1, False)
    assert record.from_leader and record.served_by == cluster.state.leaders[0]
    assert record.partition == 0 and record.applied_index >= v1

    v2 = kv.cas(pid, "allergies", b"none", v1)
    assert v2 > v1
    with pytest.raises(VersionConflict) as conflict:
        kv.cas(pid, "allergies", b"stale", v1)
    assert (conflict.value.expected, conflict.value.actual) == (v1, v2)
    assert conflict.value.code == grpc.StatusCode.FAILED_PRECONDITION

    v3 = kv.delete(pid, "allergies", expected_version=v2)
    with pytest.raises(NotFound):
        kv.get(pid, "allergies")
    assert kv.get(pid, "allergies", at_version=v1).value == b"penicillin"
    # History pages are stitched, newest first.
    cluster.clear_calls()
    history = kv.history(pid, "allergies")
    assert len(cluster.calls("History")) == 2
    assert [r.version for r in history] == [v3, v2, v1]
    assert history[0].deleted and history[2].value == b"penicillin"
    assert [r.version for r in kv.history(pid, "allergies", limit=2)] == [v3, v2]


def test_batch_is_atomic_and_accepts_helpers_and_tuples(cluster: TestCluster, kv: Client) -> None:
    pid = cluster.patient_in(1)
    v1 = kv.put(pid, "a", b"1")
    version = kv.batch(pid, [ops.check("a", v1), ops.put("b", b"2"), ("put", "c", b"3")])
    assert kv.get(pid, "b").version == version == kv.get(pid, "c").version
    with pytest.raises(VersionConflict):
        kv.batch(pid, [("check", "a", v1 + 100), ops.delete("b")])
    assert kv.get(pid, "b").value == b"2"  # the failed batch changed nothing
    with pytest.raises(InvalidArgument):
        kv.batch(pid, [("frobnicate", "b")])
    with pytest.raises(InvalidArgument):
        kv.batch(pid, [])


def test_stale_leader_cache_follows_the_hint_in_one_hop(cluster: TestCluster, kv: Client) -> None:
    pid = cluster.patient_in(2)
    kv.put(pid, "r", b"x")
    old = cluster.state.leaders[2]
    new = cluster.follower_of(2)
    cluster.state.leaders[2] = new  # leadership moved; the client's cache still says `old`
    cluster.clear_calls()
    kv.put(pid, "r", b"y")
    puts = cluster.calls("Put")
    assert [c.node for c in puts] == [old, new]
    # The cache learned the new leader: the next write goes straight there.
    cluster.clear_calls()
    kv.put(pid, "r", b"z")
    assert [c.node for c in cluster.calls("Put")] == [new]


def test_lost_reply_is_retried_with_the_same_write_id_and_applied_once(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(0)
    cluster.script(Fault("lost_reply", method="Put", times=2))
    version = kv.put(pid, "r", b"once")
    puts = cluster.calls("Put")
    assert len(puts) == 3
    # one WriteId for every attempt
    assert len({(c.client_id, c.session, c.seq) for c in puts}) == 1
    assert cluster.state.applied.count((0, puts[0].session, puts[0].seq)) == 1
    assert [r.version for r in kv.history(pid, "r")] == [version]


def test_write_ids_increase_and_ack_below_trails_in_flight_writes(
    cluster: TestCluster,
) -> None:
    async def scenario() -> None:
        async with AsyncClient(cluster.seeds(), retry=FAST) as kv:
            pid = cluster.patient_in(3)
            # The first write hangs once, so the second runs while it is in flight.
            cluster.script(Fault("hang", method="Put", times=1, arg=0.3))
            first = asyncio.create_task(kv.put(pid, "a", b"1"))
            await asyncio.sleep(0.1)
            await kv.put(pid, "b", b"2")
            await first
            await kv.put(pid, "c", b"3")

    asyncio.run(scenario())
    puts = cluster.calls("Put")
    assert [c.seq for c in puts] == [1, 2, 3]
    # While seq 1 was in flight, seq 2 could not acknowledge it.
    assert [c.ack_below for c in puts] == [1, 1, 3]


def test_each_partition_has_its_own_write_sequence(cluster: TestCluster, kv: Client) -> None:
    # Every partition keeps its own session table, so each one sees a client's
    # sequence start at 1 (a first write with ack_below > 1 reads as an
    # expired session, which the test server enforces as the nodes do).
    for round_ in range(2):
        for partition in range(4):
            kv.put(cluster.patient_in(partition), "r", b"v")
        puts = [c for c in cluster.calls("Put") if c.client_id == kv.client_id]
        assert sorted((c.partition, c.seq) for c in puts[-4:]) == [
            (p, round_ + 1) for p in range(4)
        ]
        assert all(c.ack_below == c.seq for c in puts)


def test_an_expired_session_is_renewed_when_nothing_was_applied(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(2)
    kv.put(pid, "r", b"1")
    cluster.clear_calls()
    cluster.script(Fault("forget", method="Put"))  # the partition forgets the session
    version = kv.put(pid, "r", b"2")
    first, second = cluster.calls("Put")
    assert (first.client_id, first.seq, first.ack_below) == (kv.client_id, 2, 2)
    # Refused before applying: sent again in a newly opened session, from seq 1.
    assert second.client_id == kv.client_id and second.session != first.session
    assert (second.seq, second.ack_below) == (1, 1)
    assert (2, second.session) in cluster.state.open_sessions
    assert kv.history(pid, "r")[0].version == version
    kv.put(pid, "r", b"3")  # the new session carries on
    assert cluster.calls("Put")[-1].session == second.session


def test_an_expired_session_after_a_lost_reply_is_reported(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(2)
    kv.put(pid, "r", b"1")
    # The first attempt applies but its reply is lost; before the retry the
    # partition forgets the session: the retry cannot be told apart from a new
    # write, so the client must not send it again under another id.
    cluster.script(Fault("lost_reply", method="Put"), Fault("forget", method="Put"))
    cluster.clear_calls()
    with pytest.raises(SessionExpired) as raised:
        kv.put(pid, "r", b"2")
    assert raised.value.attempts >= 2 and raised.value.kind == "session-expired"
    assert "may have been applied" in raised.value.message
    # Never sent again in a new session: every attempt named the old one.
    assert len({c.session for c in cluster.calls("Put")}) == 1
    assert cluster.calls("OpenSession") == []
    assert [r.value for r in kv.history(pid, "r")] == [b"2", b"1"]  # applied exactly once


def test_unavailable_without_hint_retries_until_a_leader_appears(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(1)
    leader = cluster.state.leaders[1]
    cluster.script(
        Fault("unavailable", node=leader, method="Put", times=3),
        Fault("exhausted", node=leader, method="Put", times=1),
    )
    assert kv.put(pid, "r", b"v") > 0
    puts = [c for c in cluster.calls("Put") if c.node == leader]
    assert len(puts) == 5
    assert cluster.state.applied.count((1, puts[0].session, 1)) == 1


def test_total_deadline_is_respected(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    cluster.script(Fault("unavailable", method="Put", times=10_000))
    policy = RetryPolicy(timeout=0.8, attempt_timeout=0.5, initial_backoff=0.01, max_backoff=0.1)
    with Client(cluster.seeds(), retry=policy) as kv:
        kv.connect()
        started = time.monotonic()
        with pytest.raises(Unavailable) as failure:
            kv.put(pid, "r", b"v")
        elapsed = time.monotonic() - started
    assert 0.7 <= elapsed < 1.5
    assert "may or may not have been applied" in failure.value.message
    assert len(cluster.calls("Put")) > 3


def test_per_call_timeout_overrides_the_client_default(cluster: TestCluster, kv: Client) -> None:
    pid = cluster.patient_in(0)
    cluster.script(Fault("hang", method="Get", times=10, arg=2.0))
    kv.put(pid, "r", b"v")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        kv.get(pid, "r", timeout=0.4)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, VersionConflict),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    ],
)
def test_final_codes_are_never_retried(
    cluster: TestCluster, kv: Client, code: grpc.StatusCode, error: type[MedkvError]
) -> None:
    pid = cluster.patient_in(0)
    kv.connect()
    cluster.script(Fault("code", method="Put", times=5, arg=(code, "refused")))
    with pytest.raises(error) as raised:
        kv.put(pid, "r", b"v")
    assert len(cluster.calls("Put")) == 1
    assert raised.value.message == "refused"


def test_resource_exhausted_is_retried_then_surfaces(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    cluster.script(Fault("exhausted", method="Get", times=10_000))
    policy = RetryPolicy(timeout=0.3, attempt_timeout=0.2, initial_backoff=0.01, max_backoff=0.02)
    with Client(cluster.seeds(), retry=policy) as kv, pytest.raises(ResourceExhausted):
        kv.get(pid, "r")
    assert len(cluster.calls("Get")) > 2


def test_follower_reads_spread_over_replicas_and_skip_a_dead_one(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "r", b"v")
        cluster.clear_calls()
        for _ in range(6):
            record = kv.get(pid, "r", consistency="follower")
            assert record.value == b"v"
        served = {c.node for c in cluster.calls("Get")}
        assert served == set(cluster.placement.replicas(0))
        # A replica dies: follower reads keep working through the others.
        victim = cluster.follower_of(0)
        cluster.stop_node(victim)
        for _ in range(4):
            assert kv.get(pid, "r", consistency="follower").served_by != victim


def test_bounded_read_falls_back_to_the_leader_when_replicas_are_stale(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(1)
    kv.put(pid, "r", b"v")
    for node in cluster.placement.replicas(1):
        cluster.state.staleness[node] = 5.0
    record = kv.get(pid, "r", consistency="bounded", max_staleness=1.0)
    assert record.from_leader and record.staleness == 0.0
    # A fresh follower serves within the bound itself, stating its staleness.
    follower = cluster.follower_of(1)
    cluster.state.staleness[follower] = 0.25
    served = {
        kv.get(pid, "r", consistency="bounded", max_staleness=1.0).served_by for _ in range(6)
    }
    assert follower in served
    with pytest.raises(InvalidArgument):
        kv.get(pid, "r", consistency="bounded")


def test_bounded_read_reports_too_stale_when_the_leader_refuses_too(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(1)
    kv.put(pid, "r", b"v")
    cluster.script(
        Fault("code", method="Get", times=10, arg=(grpc.StatusCode.FAILED_PRECONDITION, "lag 9"))
    )
    with pytest.raises(TooStale):
        kv.get(pid, "r", consistency="bounded", max_staleness=0.5)
    assert len(cluster.calls("Get")) == 2  # one replica, then the leader


def test_hint_naming_an_unknown_node_refreshes_the_table(cluster: TestCluster, kv: Client) -> None:
    pid = cluster.patient_in(2)
    kv.connect()
    refreshes = len(cluster.calls("RoutingTable"))
    leader = cluster.state.leaders[2]
    # The hint names node 9 at node `leader`'s address: unknown to the client's table.
    cluster.state.extra_nodes[9] = cluster.addresses[leader]
    cluster.script(Fault("hint", method="Put", times=1, arg=(9, cluster.addresses[leader])))
    assert kv.put(pid, "r", b"v") > 0
    assert len(cluster.calls("RoutingTable")) == refreshes + 1


def test_a_newer_epoch_on_a_reply_refreshes_the_table(cluster: TestCluster) -> None:
    # Per reply: unary calls (a BatchCommands stream states it once, when it
    # opens: tests/client_unit/test_client_mux.py).
    kv = Client(cluster.seeds(), retry=FAST, multiplex=False)
    pid = cluster.patient_in(0)
    kv.put(pid, "r", b"v")
    before = len(cluster.calls("RoutingTable"))
    cluster.state.send_epoch = True
    cluster.state.epoch = 7
    kv.get(pid, "r")
    assert len(cluster.calls("RoutingTable")) == before + 1
    kv.get(pid, "r")  # same epoch now: no further refresh
    assert len(cluster.calls("RoutingTable")) == before + 1
    assert kv.routing_table().epoch == 7
    kv.close()


def test_any_reachable_seed_is_enough(cluster: TestCluster) -> None:
    cluster.stop_node(1)
    seeds = [cluster.addresses[1], cluster.addresses[2]]
    with Client(seeds, retry=FAST) as kv:
        table = kv.routing_table()
        assert set(table.nodes) == {1, 2, 3}
        status = kv.cluster_status()
        assert status.partitions == 4


def test_scan_returns_every_record_once_across_a_broken_stream(cluster: TestCluster) -> None:
    written = set()
    with Client(cluster.seeds(), retry=FAST) as kv:
        for i in range(40):
            pid = f"scan-patient-{i}"
            kv.put(pid, "r", str(i).encode())
            written.add((pid, "r"))
        # Every replica breaks one stream after its first page; the scan resumes elsewhere.
        cluster.script(*(Fault("scan_break", node=n, method="Scan", arg=1) for n in (1, 2, 3)))
        pages = list(kv.scan_pages(page_size=3))
        seen = [(r.patient_id, r.record_id) for p in pages for r in p.records]
    assert sorted(seen) == sorted(written)
    assert len(seen) == len(set(seen))
    assert {p.partition for p in pages if p.done} == {0, 1, 2, 3}
    assert all(p.read_state.partition == p.partition for p in pages)
    resumed = [c for c in cluster.calls("Scan") if c.resume_token]
    assert resumed, "a broken stream must resume from its token"


def test_scan_of_chosen_partitions_and_records_iterator(cluster: TestCluster, kv: Client) -> None:
    pids = [cluster.patient_in(p, prefix=f"s{p}") for p in range(4)]
    for pid in pids:
        kv.put(pid, "r", b"v")
    records = list(kv.scan(partitions=[1, 3]))
    assert sorted(r.patient_id for r in records) == sorted([pids[1], pids[3]])
    assert all(r.partition in (1, 3) and r.served_by > 0 for r in records)
    with pytest.raises(InvalidArgument):
        list(kv.scan(partitions=[4]))


def test_abandoned_scan_stops_cleanly(cluster: TestCluster, kv: Client) -> None:
    for i in range(20):
        kv.put(f"p{i}", "r", b"v")
    iterator = kv.scan(page_size=1, parallelism=2)
    first = next(iterator)
    assert first.value == b"v"
    iterator.close()  # type: ignore[attr-defined]
    assert kv.get("p0", "r").value == b"v"  # the client is still usable


def test_async_client_has_the_same_behaviour(cluster: TestCluster) -> None:
    async def scenario() -> list[str]:
        async with AsyncClient(cluster.seeds(), retry=FAST) as kv:
            pid = cluster.patient_in(3)
            await kv.put_json(pid, "obs", {"resourceType": "Observation", "status": "final"})
            resource = await kv.get_json(pid, "obs", resource_type="Observation")
            assert resource == {"resourceType": "Observation", "status": "final"}
            await kv.put(pid, "raw", b"x")
            return [r.record_id async for r in kv.scan(partitions=[3])]

    assert sorted(asyncio.run(scenario())) == ["obs", "raw"]


def test_close_releases_channels_and_rejects_calls(cluster: TestCluster) -> None:
    kv = Client(cluster.seeds(), retry=FAST)
    kv.put(cluster.patient_in(0), "r", b"v")
    kv.close()
    kv.close()  # idempotent
    assert kv._async._channels == {}
    with pytest.raises(Exception, match="closed"):
        kv.get(cluster.patient_in(0), "r")


def test_share_patient_goes_to_the_leader_and_is_retried_as_idempotent(
    cluster: TestCluster, kv: Client
) -> None:
    pid = cluster.patient_in(1)
    got = kv.share_patient(pid, "north")
    assert got.clinics == ("north",) and got.index > 0
    assert pid not in repr(got)
    old, new = cluster.state.leaders[1], cluster.follower_of(1)
    cluster.state.leaders[1] = new
    cluster.clear_calls()
    assert kv.share_patient(pid, "east").clinics == ("east", "north")
    assert [c.node for c in cluster.calls("SharePatient")] == [old, new]
    # a lost reply is simply sent again: sharing twice changes nothing
    cluster.state.faults.append(Fault("unavailable", method="SharePatient"))
    assert kv.share_patient(pid, "east").clinics == ("east", "north")
    assert kv.share_patient(pid, "north", True).clinics == ("east",)
    cluster.clear_calls()  # FAILED_PRECONDITION is final, never retried
    with pytest.raises(MedkvError) as e:
        kv.share_patient(pid, "east", revoke=True)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(cluster.calls("SharePatient")) == 1
    with pytest.raises(InvalidArgument):
        kv.share_patient(pid, "")

    async def via_async() -> tuple[str, ...]:
        async with AsyncClient(cluster.seeds(), retry=FAST) as akv:
            return (await akv.share_patient(pid, "west")).clinics

    assert asyncio.run(via_async()) == ("east", "west")
