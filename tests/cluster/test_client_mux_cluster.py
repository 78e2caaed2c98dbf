"""The multiplexed client (client/mux.py) against a real secure 3-node cluster.

Mutual TLS and bearer tokens on, so every request inside a BatchCommands
stream is authorized and audited by the node as its unary method would be.
Many concurrent requests per node share one stream; a leader is SIGKILLed
while compare-and-set chains run, so in-flight requests on its stream fail
over through the client's retry loop (same WriteId), and the stream to it
reconnects once it is back. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from client import AsyncClient, NotFound, RetryPolicy, VersionConflict
from tests.cluster.harness import LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("medkv-mux"))
    try:
        yield c
    finally:
        stop_cluster(c)


def client(cluster: LocalCluster, timeout: float = 30.0) -> AsyncClient:
    kv = cluster.async_client(retry=RetryPolicy(timeout=timeout), multiplex=True)
    assert kv.multiplexed
    return kv


def test_concurrent_writes_reads_and_cas_share_one_stream_per_node(cluster: LocalCluster) -> None:
    patients = [f"mux-{i}" for i in range(64)]

    async def scenario() -> tuple[int, int]:
        async with client(cluster) as kv:
            versions = await asyncio.gather(
                *(kv.put(pid, "r", f"first {pid}".encode()) for pid in patients)
            )
            records = await asyncio.gather(*(kv.get(pid, "r") for pid in patients))
            assert [r.value for r in records] == [f"first {pid}".encode() for pid in patients]
            assert [r.version for r in records] == list(versions)
            assert all(r.from_leader for r in records)
            # cas on the version just read: every one applies once.
            new = await asyncio.gather(*(
                kv.cas(pid, "r", f"second {pid}".encode(), v)
                for pid, v in zip(patients, versions, strict=True)
            ))
            assert all(n > v for n, v in zip(new, versions, strict=True))
            # The old version again: a conflict naming both versions, for each.
            conflicts = await asyncio.gather(
                *(kv.cas(pid, "r", b"stale", v) for pid, v in zip(patients, versions, strict=True)),
                return_exceptions=True,
            )
            assert all(isinstance(c, VersionConflict) for c in conflicts)
            assert [c.actual for c in conflicts if isinstance(c, VersionConflict)] == list(new)
            follower = await asyncio.gather(
                *(kv.get(pid, "r", consistency="follower", min_version=n)
                  for pid, n in zip(patients, new, strict=True))
            )
            assert [r.value for r in follower] == [f"second {pid}".encode() for pid in patients]
            with pytest.raises(NotFound):
                await kv.get(patients[0], "absent")
            history = await kv.history(patients[0], "r")
            assert [r.version for r in history] == [new[0], versions[0]]
            await kv.batch(patients[1], [("put", "a", b"1"), ("put", "b", b"2")])
            assert (await kv.get(patients[1], "b")).value == b"2"
            assert kv._mux is not None
            return len(kv._mux.streams()), len(cluster.addresses)

    streams, nodes = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert 1 <= streams <= nodes


def test_cas_chains_survive_a_killed_leader_with_no_write_applied_twice(
    cluster: LocalCluster,
) -> None:
    """Per-patient append-only lists, each append a compare-and-set on the last
    version, 24 chains at once on one client. A write applied twice would fail
    its own retry's version check or repeat an element; a lost one leaves a
    gap. The leader of most partitions is killed mid-way; then it comes back
    and the client's stream to it must work again."""
    patients = [f"mux-append-{i}" for i in range(24)]
    appends = 15

    async def chains(kv: AsyncClient, progress: list[int]) -> None:
        async def chain(index: int, pid: str) -> None:
            items: list[int] = []
            version = 0
            for n in range(appends):
                items.append(n)
                version = await kv.cas(pid, "list", json.dumps(items).encode(), version)
                progress[index] = n + 1

        await asyncio.gather(*(chain(i, p) for i, p in enumerate(patients)))

    async def scenario() -> int:
        async with client(cluster, timeout=60.0) as kv:
            table = await kv.routing_table()
            status = await kv.cluster_status()
            leaders = [p.leader for p in status.partition_info]
            victim = max(set(leaders), key=leaders.count)
            victim_address = table.nodes[victim]
            progress = [0] * len(patients)
            run = asyncio.ensure_future(chains(kv, progress))
            deadline = time.monotonic() + 60
            while min(progress) < 3 and time.monotonic() < deadline and not run.done():
                await asyncio.sleep(0.02)
            assert kv._mux is not None
            before = kv._mux.streams().get(victim_address)
            assert before is not None and before.pending  # requests in flight on it
            assert min(progress) < appends and not run.done()
            killed = await asyncio.to_thread(cluster.run, "kill-node", str(victim), timeout=30)
            assert killed.returncode == 0, killed.stderr
            try:
                await asyncio.wait_for(run, 120)
                assert before.broken is not None  # its requests went through the retry loop
                for pid in patients:
                    record = await kv.get(pid, "list")
                    assert json.loads(record.value) == list(range(appends))
                    lengths = [len(json.loads(r.value)) for r in await kv.history(pid, "list")]
                    assert lengths == sorted(lengths, reverse=True)
                    assert len(lengths) == len(set(lengths)), "one append was applied twice"
            finally:
                restarted = await asyncio.to_thread(
                    cluster.run, "restart-node", str(victim), timeout=90
                )
                assert restarted.returncode == 0, restarted.stderr
            # The restarted node serves this client's stream again (follower
            # reads at it until one succeeds, within a bound).
            assert kv._mux is not None
            deadline = time.monotonic() + 30
            served = 0
            while time.monotonic() < deadline and not served:
                for pid in patients:
                    rec = await kv.get(pid, "list", consistency="follower")
                    if rec.served_by == victim:
                        served += 1
                        break
                else:
                    await asyncio.sleep(0.2)
            stream = kv._mux.streams().get(victim_address)
            assert stream is not None and stream is not before and stream.broken is None
            return served

    assert asyncio.run(scenario()) == 1
