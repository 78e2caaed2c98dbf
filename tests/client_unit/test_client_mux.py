"""The multiplexed transport (client/mux.py) against real grpc.aio servers.

tests/client_unit/kvserver.py serves BatchCommands through the same handlers
as the unary methods, so what is checked here is the stream itself: many
requests per message on one stream per node, replies matched by request id
whatever their order, each caller's deadline, per-request errors mapped as
the unary path maps statuses, a broken stream failing over to the retry
loop, and the fallback to unary calls when a node refuses the stream.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from client import (
    AsyncClient,
    Client,
    NotFound,
    RetryPolicy,
    TooStale,
    VersionConflict,
)
from client import mux as client_mux
from client.errors import DeadlineExceeded
from tests.client_unit.kvserver import Fault, TestCluster

FAST = RetryPolicy(timeout=3.0, attempt_timeout=1.0, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture(autouse=True)
def _multiplex_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the stream: on whatever $MEDKV_MULTIPLEX says."""
    monkeypatch.setenv("MEDKV_MULTIPLEX", "1")


@pytest.fixture
def cluster() -> Iterator[TestCluster]:
    with TestCluster(nodes=3, partitions=4) as c:
        yield c


def streamed(cluster: TestCluster, method: str) -> list[bool]:
    return [c.streamed for c in cluster.calls(method)]


def test_concurrent_requests_share_one_stream_per_node_and_get_their_own_replies(
    cluster: TestCluster,
) -> None:
    pids = [cluster.patient_in(p % 4, prefix=f"p{p}") for p in range(40)]

    async def scenario() -> tuple[list[int], list[bytes], int]:
        async with AsyncClient(cluster.seeds(), retry=FAST) as kv:
            assert kv.multiplexed
            versions = await asyncio.gather(
                *(kv.put(pid, "r", f"value of {pid}".encode()) for pid in pids)
            )
            # Replies out of order: the first get of each partition hangs a while.
            cluster.script(Fault("hang", method="Get", times=4, arg=0.2))
            records = await asyncio.gather(*(kv.get(pid, "r") for pid in pids))
            assert kv._mux is not None
            return list(versions), [r.value for r in records], len(kv._mux.streams())

    versions, values, streams = asyncio.run(scenario())
    assert values == [f"value of {pid}".encode() for pid in pids]
    assert len(set(versions)) == len(pids)
    assert all(streamed(cluster, "Put")) and all(streamed(cluster, "Get"))
    assert len(streamed(cluster, "Put")) == len(pids)  # no retries were needed
    # One stream per leader node, several requests per message.
    leaders = set(cluster.state.leaders.values())
    assert streams == len(leaders)
    assert len(cluster.calls("BatchCommands")) == len(leaders)
    assert max(cluster.state.batch_sizes) > 1
    # OpenSession stays unary (the node authorizes it only as a unary call).
    assert not any(streamed(cluster, "OpenSession"))


def test_ops_per_message_are_capped(cluster: TestCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mux, "MAX_OPS_PER_MESSAGE", 3)
    pid = cluster.patient_in(0)

    async def scenario() -> None:
        async with AsyncClient(cluster.seeds(), retry=FAST) as kv:
            await kv.put(pid, "r", b"v")
            await asyncio.gather(*(kv.get(pid, "r") for _ in range(20)))

    asyncio.run(scenario())
    assert max(cluster.state.batch_sizes) == 3
    assert sum(cluster.state.batch_sizes) == 21


def test_a_timed_out_request_gets_deadline_exceeded_and_its_late_reply_is_dropped(
    cluster: TestCluster,
) -> None:
    pid = cluster.patient_in(0)
    slow = RetryPolicy(timeout=0.3, attempt_timeout=0.3, initial_backoff=0.01, max_backoff=0.05)

    async def scenario() -> tuple[bytes, bytes]:
        async with AsyncClient(cluster.seeds(), retry=slow) as kv:
            await kv.put(pid, "r", b"v1")
            cluster.script(Fault("hang", method="Get", times=1, arg=0.6))
            with pytest.raises(DeadlineExceeded):
                await kv.get(pid, "r")
            # Others on the same stream are unaffected, before and after the late reply.
            first = (await kv.get(pid, "r")).value
            await asyncio.sleep(0.5)  # the hung request answers now, to nobody
            await kv.put(pid, "r", b"v2")
            second = (await kv.get(pid, "r")).value
            assert kv._mux is not None
            (stream,) = kv._mux.streams().values()
            assert not stream.pending and stream.broken is None
            return first, second

    assert asyncio.run(scenario()) == (b"v1", b"v2")
    assert len(cluster.calls("BatchCommands")) == 1  # the stream outlived the timeout


def test_a_slow_attempt_is_retried_within_the_call_deadline(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    policy = RetryPolicy(timeout=3.0, attempt_timeout=0.2, initial_backoff=0.01, max_backoff=0.05)
    with Client(cluster.seeds(), retry=policy) as kv:
        kv.put(pid, "r", b"v")
        cluster.script(Fault("hang", method="Get", times=1, arg=0.5))
        assert kv.get(pid, "r").value == b"v"
    assert len(cluster.calls("Get")) >= 2 and all(streamed(cluster, "Get"))


def test_per_request_errors_map_as_on_the_unary_path(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    follower = cluster.follower_of(0)
    cluster.state.staleness[follower] = 5.0
    with Client(cluster.seeds(), retry=FAST) as kv:
        with pytest.raises(NotFound):
            kv.get(pid, "absent")
        v1 = kv.put(pid, "r", b"v")
        v2 = kv.cas(pid, "r", b"w", v1)
        with pytest.raises(VersionConflict) as conflict:
            kv.cas(pid, "r", b"x", v1)
        assert (conflict.value.expected, conflict.value.actual) == (v1, v2)
        with pytest.raises(VersionConflict):
            kv.delete(pid, "r", expected_version=v1)
        with pytest.raises(NotFound):
            kv.delete(pid, "absent")
        # Bounded read at the stale follower: TOO_STALE there, then the leader serves it.
        assert kv.router is not None
        kv.router.note_leader(0, cluster.state.leaders[0])
        rec = kv.get(pid, "r", consistency="bounded", max_staleness=1.0)
        assert rec.value == b"w"
        # Overload is retried.
        cluster.script(Fault("exhausted", method="Put", times=2))
        assert kv.put(pid, "r2", b"v") > v2
    assert all(streamed(cluster, m) for m in ("Put", "Get", "CompareAndSet", "Delete"))


def test_a_stale_bounded_read_is_too_stale_when_no_replica_can_serve(
    cluster: TestCluster,
) -> None:
    pid = cluster.patient_in(0)
    cluster.state.leaders[0] = 3 if cluster.state.leaders[0] != 3 else 2
    for n in cluster.placement.replicas(0):
        cluster.state.staleness[n] = 9.0
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "r", b"v")
        cluster.script(Fault("code", method="Get", times=10, arg=(
            grpc.StatusCode.FAILED_PRECONDITION, "replica is 9s behind, over the bound")))
        with pytest.raises(TooStale):
            kv.get(pid, "r", consistency="bounded", max_staleness=1.0)


def test_not_leader_hints_redirect_streamed_writes(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "r", b"v1")
        old = cluster.state.leaders[0]
        new = cluster.follower_of(0)
        cluster.state.leaders[0] = new  # the client still believes `old`
        cluster.clear_calls()
        kv.put(pid, "r", b"v2")
        assert kv.get(pid, "r").value == b"v2"
    puts = cluster.calls("Put")
    assert [c.node for c in puts] == [old, new]
    assert puts[0].seq == puts[1].seq and all(c.streamed for c in puts)
    assert not cluster.calls("RoutingTable")  # the hint sufficed


def test_a_broken_stream_fails_its_requests_over_to_the_retry_loop(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    leader = cluster.state.leaders[0]

    async def scenario() -> list[int]:
        async with AsyncClient(cluster.seeds(), retry=FAST) as kv:
            await kv.put(pid, "warm", b"v")
            cluster.script(Fault("break_stream", node=leader, method="BatchCommands"))
            return list(await asyncio.gather(
                *(kv.put(pid, f"r{i}", b"v") for i in range(5))
            ))

    versions = asyncio.run(scenario())
    assert len(set(versions)) == 5
    # The stream was opened again; every write applied exactly once although
    # the replies of the broken stream's requests were lost and sent again.
    assert len(cluster.calls("BatchCommands")) >= 2
    applied = [a for a in cluster.state.applied if a[0] == 0]
    assert len(applied) == len(set(applied)) == 6
    assert len(cluster.calls("Put")) > 6


def test_the_stream_reconnects_after_the_node_restarts(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    leader = cluster.state.leaders[0]
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "r", b"v1")
        cluster.stop_node(leader)
        cluster.restart_node(leader)
        assert kv.put(pid, "r", b"v2") > 0
        assert kv.get(pid, "r").value == b"v2"
    assert len([c for c in cluster.calls("BatchCommands") if c.node == leader]) == 2


def test_a_node_down_is_unavailable_then_its_partition_is_served_elsewhere(
    cluster: TestCluster,
) -> None:
    pid = cluster.patient_in(0)
    leader = cluster.state.leaders[0]
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "r", b"v1")
        cluster.stop_node(leader)
        cluster.state.leaders[0] = next(
            n for n in cluster.placement.replicas(0) if n != leader
        )
        assert kv.get(pid, "r").value == b"v1"
        assert kv.put(pid, "r", b"v2") > 0


@pytest.mark.parametrize("code", [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED])
def test_a_node_that_refuses_the_stream_is_called_unary(
    cluster: TestCluster, code: grpc.StatusCode
) -> None:
    pid = cluster.patient_in(0)
    cluster.script(Fault("code", method="BatchCommands", times=99, arg=(code, "not here")))
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "r", b"v1")
        assert kv.get(pid, "r").value == b"v1"
        asked = len(cluster.calls("BatchCommands"))
        cluster.clear_calls()
        kv.put(pid, "r", b"v2")
        assert kv.get(pid, "r").value == b"v2"
    # Once refused, that node is called unary without asking again.
    assert not cluster.calls("BatchCommands")
    assert [c.streamed for c in cluster.calls("Put")] == [False]
    # Usually the stream is asked for once; when the first write races the
    # refusal, grpc may end the stream INTERNAL instead, and that attempt is
    # retried like any broken stream (each write still applies once).
    assert 1 <= asked <= 6
    assert len(cluster.state.applied) == 2


def test_multiplex_off_sends_unary_calls(
    cluster: TestCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = cluster.patient_in(0)
    with Client(cluster.seeds(), retry=FAST, multiplex=False) as kv:
        kv.put(pid, "r", b"v")
        kv.get(pid, "r")
    monkeypatch.setenv("MEDKV_MULTIPLEX", "off")
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.get(pid, "r")
    assert not cluster.calls("BatchCommands")
    assert not any(streamed(cluster, "Put")) and not any(streamed(cluster, "Get"))


def test_large_requests_go_unary(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put(pid, "small", b"v")
        kv.put(pid, "big", b"x" * (client_mux.MAX_STREAMED_REQUEST_BYTES + 1))
        assert len(kv.get(pid, "big").value) == client_mux.MAX_STREAMED_REQUEST_BYTES + 1
    assert streamed(cluster, "Put") == [True, False]


def test_a_stream_states_the_routing_epoch_once(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.connect()
        cluster.state.send_epoch = True
        cluster.state.epoch = 7
        kv.put(pid, "r", b"v")  # a new stream says epoch 7: the table is fetched again
        kv.get(pid, "r")
        assert kv.router is not None and kv.router.epoch == 7
    assert len(cluster.calls("RoutingTable")) == 2


def test_an_old_stream_is_replaced_and_drained(
    cluster: TestCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = cluster.patient_in(0)
    monkeypatch.setattr(client_mux, "STREAM_MAX_AGE_S", 0.2)

    async def scenario() -> None:
        async with AsyncClient(cluster.seeds(), retry=FAST) as kv:
            await kv.put(pid, "r", b"v")
            assert kv._mux is not None
            (old,) = kv._mux.streams().values()
            cluster.script(Fault("hang", method="Get", times=1, arg=0.4))
            slow = asyncio.ensure_future(kv.get(pid, "r"))  # on the old stream
            await asyncio.sleep(0.25)
            assert (await kv.get(pid, "r")).value == b"v"  # on a new one
            (new,) = kv._mux.streams().values()
            assert new is not old and old.retiring
            assert (await slow).value == b"v"  # the old stream drained, then closed
            await asyncio.wait_for(old.reader, 2)
            assert not old.pending

    asyncio.run(scenario())
    assert len(cluster.calls("BatchCommands")) == 2


def test_close_fails_waiting_requests_and_leaves_no_task(cluster: TestCluster) -> None:
    pid = cluster.patient_in(0)

    async def scenario() -> None:
        kv = AsyncClient(cluster.seeds(), retry=FAST)
        await kv.put(pid, "r", b"v")
        cluster.script(Fault("hang", method="Get", times=1, arg=5.0))
        pending = asyncio.ensure_future(kv.get(pid, "r"))
        await asyncio.sleep(0.1)
        await kv.close()
        with pytest.raises(Exception):  # noqa: B017 - closed under it: any MedkvError
            await pending
        await asyncio.sleep(0)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not others

    asyncio.run(scenario())


def test_blocking_client_threads_share_the_stream(cluster: TestCluster) -> None:
    pids = [cluster.patient_in(0, prefix=f"t{i}") for i in range(8)]
    errors: list[BaseException] = []
    with Client(cluster.seeds(), retry=FAST) as kv:
        for pid in pids:
            kv.put(pid, "r", pid.encode())

        def reader(pid: str) -> None:
            try:
                for _ in range(20):
                    assert kv.get(pid, "r").value == pid.encode()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(pid,)) for pid in pids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(cluster.calls("Get")) == 160 and all(streamed(cluster, "Get"))
    assert len(cluster.calls("BatchCommands")) == 1  # partition 0's leader only
