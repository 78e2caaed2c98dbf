"""Honest staleness on a real 3-node cluster (issue 10 item 3, DESIGN invariant 8).

Every message into one follower of a partition is delayed by 6 s (the fault
proxies of jepsen_like sit on every node-to-node link) while writes go on
through the leader. The follower keeps hearing from the leader, six seconds
late, so it is always about six seconds behind; it used to compare its
applied index with the commit index those late messages carried and claim
to be current. Now:

- every follower read it serves states a staleness at least its real lag:
  a read claiming staleness s at time t reflects every write acknowledged
  before t - s (one machine, one wall clock: no clock error to allow for);
- a bounded read with a 1 s bound is refused with FAILED_PRECONDITION
  naming the staleness, never served stale.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from client import RetryPolicy
from jepsen_like.cluster import ClusterSpec, ProxiedCluster
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc

pytestmark = [pytest.mark.cluster]

DELAY_S = 6.0
LAGGING_PHASE_S = 12.0  # writes go on this long with the follower's links delayed
BOUND_MS = 1000


def _get(
    stub: kv_pb2_grpc.KVStub, pid: str, read: common_pb2.ReadOptions
) -> grpc.aio.UnaryUnaryCall[kv_pb2.GetRequest, kv_pb2.GetResponse]:
    return stub.Get(kv_pb2.GetRequest(patient_id=pid, record_id="r", read=read), timeout=5)


async def _scenario(data_dir: Path) -> dict[str, Any]:
    cluster = ProxiedCluster(data_dir, ClusterSpec(nodes=3, partitions=2), seed=7)
    try:
        await cluster.start()
        kv = cluster.client(retry=RetryPolicy(timeout=20.0))
        pid = "staleness-patient"
        first = await kv.put(pid, "r", b"v0")
        table = await kv.routing_table()
        partition = table.partition_of(pid)
        leader = None
        for _ in range(100):  # bounded: the leader is known within seconds
            leader = await cluster.leader_of(partition, via=1)
            if leader:
                break
            await asyncio.sleep(0.1)
        assert leader, "the partition has no leader"
        follower = next(n for n in table.replicas[partition] if n != leader)
        others = [n for n in cluster.node_ids if n != follower]
        channel = grpc.aio.secure_channel(cluster.direct_address(follower), cluster.credentials())
        stub = kv_pb2_grpc.KVStub(channel)
        follower_read = common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER)

        # Healthy: the follower knows its staleness, and it is small.
        healthy = -1.0
        for _ in range(100):
            got = await _get(
                stub, pid,
                common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER, min_version=first),
            )
            healthy = got.read_state.staleness_seconds
            if 0 <= healthy < 2.0:
                break
            await asyncio.sleep(0.1)
        assert 0 <= healthy < 2.0, f"a healthy follower states staleness {healthy}"

        cluster.network.slow([(n, follower) for n in others], DELAY_S * 1000)
        writes: list[tuple[int, float]] = []  # (version, acknowledged at, wall clock)
        reads: list[tuple[float, int, float]] = []  # (invoked at, version, staleness)
        refusals: list[str] = []
        served_bounded: list[tuple[float, int, float]] = []
        stop = time.monotonic() + LAGGING_PHASE_S

        async def writer() -> None:
            k = 0
            while time.monotonic() < stop:
                k += 1
                version = await kv.put(pid, "r", f"v{k}".encode())
                writes.append((version, time.time()))
                await asyncio.sleep(0.02)

        async def reader() -> None:
            while time.monotonic() < stop:
                t = time.time()
                got = await _get(stub, pid, follower_read)
                reads.append((t, got.record.version, got.read_state.staleness_seconds))
                if time.monotonic() > stop - LAGGING_PHASE_S + DELAY_S + 1.0:
                    # Five-plus seconds behind now: a 1 s bound must be refused.
                    bounded = common_pb2.ReadOptions(
                        consistency=common_pb2.BOUNDED, max_staleness_ms=BOUND_MS
                    )
                    t = time.time()
                    try:
                        got = await _get(stub, pid, bounded)
                        served_bounded.append(
                            (t, got.record.version, got.read_state.staleness_seconds)
                        )
                    except grpc.aio.AioRpcError as e:
                        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                        refusals.append(e.details() or "")
                await asyncio.sleep(0.25)

        await asyncio.gather(writer(), reader())
        cluster.network.heal()
        await channel.close()
        await kv.close()
        return {"writes": writes, "reads": reads, "refusals": refusals, "served": served_bounded}
    finally:
        await cluster.stop()


def _unreflected_since(
    writes: list[tuple[int, float]], t: float, version: int
) -> float | None:
    """When the earliest acknowledged write the read did not reflect was acked."""
    missed = [at for v, at in writes if v > version and at < t]
    return min(missed) if missed else None


def test_a_follower_behind_a_slow_link_states_its_real_staleness(tmp_path: Path) -> None:
    out = asyncio.run(_scenario(tmp_path / "cluster"))
    writes = out["writes"]
    reads = out["reads"]
    refusals = out["refusals"]
    served = out["served"]
    assert len(writes) > 20 and len(reads) > 10
    dishonest = []
    worst_real_lag = 0.0
    for t, version, staleness in reads + served:
        since = _unreflected_since(writes, t, version)
        real_lag = 0.0 if since is None else t - since
        worst_real_lag = max(worst_real_lag, real_lag)
        # Honest: unknown (-1), or at least the real lag (every write acked
        # before t - staleness is reflected).
        if staleness >= 0 and real_lag > staleness:
            dishonest.append((round(real_lag, 3), round(staleness, 3)))
    assert worst_real_lag >= DELAY_S - 1.0, f"the follower never fell behind: {worst_real_lag:.2f}s"
    assert not dishonest, f"(real lag, stated staleness) of dishonest reads: {dishonest[:10]}"
    assert not served, f"bounded reads served beyond their bound: {served[:5]}"
    assert len(refusals) >= 3
    for msg in refusals:
        assert "too stale" in msg and "staleness" in msg and "bound 1000ms" in msg, msg
