"""Erasure is a durable obligation of every replica, completed even when the
replica was away, or crashed, at the moment it applied.

(a) A replica cut off (its links reset by fault proxies) while erase-patient runs, and for a while
    after, while the others purge and go on writing, is healed. Their logs
    now start past the erasure, so it catches up from a snapshot (asserted
    from its log), which replaces the state it held, the patient included.
    Then the cluster is stopped and every file of every node is decrypted
    with the node's keys, live values and every envelope left anywhere in
    the files alike: none of the patient's data, while the same scans find a
    kept patient's data on every node.
(b) Every node's purge is held (test-only switch), the erasure applies
    everywhere, one node is killed with SIGKILL between the apply and its
    purge and restarted without the switch: it completes the purge (the
    obligation was on disk), and its files hold none of the patient's data,
    while a node still holding its purge does (the control: without the
    obligation the bytes would stay).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from client import AsyncClient, Client
from jepsen_like.cluster import ClusterSpec, ProxiedCluster
from node.erasure import HOLD_ENV
from tests.crypto_cluster.canaries import Patient, decrypting_scan, keystream_scan, scan_files
from tests.crypto_cluster.helpers import (
    node_get,
    purged_through,
    running_cluster,
    wait_until,
)

pytestmark = pytest.mark.cluster

NODES = (1, 2, 3)


def _write(kv: Client, patients: list[Patient], filler: int, tag: str) -> None:
    """Several versions per record (history), a tombstone, then filler writes
    spread over every partition, so each takes snapshots and compacts its log."""
    for p in patients:
        for n in range(6):
            kv.put(p.patient_id, f"obs-{n % 3}", p.record(n))
        kv.delete(p.patient_id, "obs-2")
    for i in range(filler):
        kv.put(f"{tag}-{i}", "obs", b"x" * 64)


def _serves(address: str, p: Patient, min_version: int = 0) -> grpc.StatusCode:
    return node_get(address, p.patient_id, "obs-0", min_version=min_version)[0]


def _leaks(node_dir: Path, key_file: Path, erased: Patient, kept: Patient) -> tuple[list[str], set[str]]:
    """(erased canaries found, kept canaries found) by both decrypting scans."""
    wanted = erased.canaries + kept.canaries
    live = decrypting_scan(node_dir, key_file, wanted)
    assert live.values > 100 and live.undecryptable == 0
    raw, opened = keystream_scan(node_dir, key_file, wanted)
    assert opened > 20  # envelopes really were decrypted (the kept canaries are the control)
    hits = live.hits + raw
    leaked = sorted({h.canary for h in hits if h.canary in erased.canaries})
    found = {h.canary for h in hits if h.canary in kept.canaries}
    return leaked, found


def _purged(data_dir: Path, node: int, partition: int) -> int:
    """The highest index node's log says it purged partition's data through (0: none)."""
    text = (data_dir / f"node-{node}" / "node.log").read_text(errors="replace")
    found = re.findall(rf"partition {partition}: purged log and files through index (\d+)", text)
    return max((int(i) for i in found), default=0)


async def _await(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.2)


async def _awrite(kv: AsyncClient, patients: list[Patient], filler: int, tag: str) -> None:
    for p in patients:
        for n in range(6):
            await kv.put(p.patient_id, f"obs-{n % 3}", p.record(n))
        await kv.delete(p.patient_id, "obs-2")
    for i in range(filler):
        await kv.put(f"{tag}-{i}", "obs", b"x" * 64)


def test_a_replica_cut_off_during_the_erasure_purges_after_catching_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 3's links to the other nodes are cut with TCP resets (nothing is
    held back to arrive later), so the erasure can only reach it through a
    snapshot: the others dropped their logs through the erasure."""
    erased, kept = Patient.new(), Patient.new()
    spec = ClusterSpec(nodes=3, partitions=8, replicas=3,
                       raft={"snapshot_every": 25, "keep_after_snapshot": 5})
    cluster = ProxiedCluster(tmp_path / "cluster", spec, seed=7)
    data_dir = cluster.data_dir

    async def get(node: int, p: Patient, min_version: int = 0) -> grpc.StatusCode:
        address = cluster.direct_address(node)
        return (await asyncio.to_thread(node_get, address, p.patient_id, "obs-0",
                                        min_version=min_version))[0]

    async def scenario() -> tuple[int, int]:
        await cluster.start()
        for name, value in cluster.env().items():  # node_get's raw stubs
            monkeypatch.setenv(name, value)
        try:
            async with cluster.client(timeout=30) as kv:
                await _awrite(kv, [erased, kept], filler=120, tag="before")

                async def everywhere() -> bool:
                    codes = [await get(n, p) for n in NODES for p in (erased, kept)]
                    return all(c == grpc.StatusCode.OK for c in codes)

                await _await(everywhere, 30, "every replica applied the writes")
                partition = (await kv.routing_table()).partition_of(erased.patient_id)
                cluster.network.isolate(3, mode="reset")
                try:
                    version = await kv.erase_patient(erased.patient_id)

                    async def others_purged() -> bool:
                        return all(_purged(data_dir, n, partition) >= version for n in (1, 2))

                    await _await(others_purged, 60, "the replicas that were there purged")
                    assert await get(3, erased) == grpc.StatusCode.OK  # really cut off
                    await _awrite(kv, [], filler=120, tag="after")  # the others go on
                finally:
                    cluster.network.heal()

                async def caught_up() -> bool:
                    return await get(3, erased, version) == grpc.StatusCode.NOT_FOUND

                await _await(caught_up, 60, "node 3 caught up past the erasure")

                async def node3_purged() -> bool:
                    return _purged(data_dir, 3, partition) >= version

                await _await(node3_purged, 60, "node 3 purged after catching up")
                assert await get(3, kept) == grpc.StatusCode.OK
                return partition, version
        finally:
            await cluster.stop()

    partition, _ = asyncio.run(scenario())
    node3_log = (data_dir / "node-3" / "node.log").read_text()
    assert re.search(rf"partition {partition}: caught up from a snapshot at index", node3_log)
    key_file = data_dir / "master.key"
    hits, _ = scan_files(data_dir, erased.canaries + kept.canaries)
    assert hits == []
    for node in NODES:
        leaked, found = _leaks(data_dir / f"node-{node}", key_file, erased, kept)
        assert leaked == [], f"node {node}: the erased patient's data is still in its files"
        assert found == set(kept.canaries), f"node {node}: control, kept data must be found"


def test_a_crash_between_apply_and_purge_is_completed_at_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    erased, kept = Patient.new(), Patient.new()
    monkeypatch.setenv(HOLD_ENV, "1")  # inherited by every node of `scripts/cluster up`
    with running_cluster(tmp_path / "cluster") as cluster, Client(
        cluster.addresses, timeout=30
    ) as kv:
        _write(kv, [erased, kept], filler=120, tag="f")
        partition = kv.routing_table().partition_of(erased.patient_id)
        version = kv.erase_patient(erased.patient_id)
        wait_until(
            lambda: all(_serves(a, erased, version) == grpc.StatusCode.NOT_FOUND
                        for a in cluster.addresses),
            30, "every replica applied the erasure",
        )
        for n in NODES:
            text = (cluster.data_dir / f"node-{n}" / "node.log").read_text()
            assert "TEST ONLY" in text and HOLD_ENV in text  # loud
        assert cluster.run("kill-node", "3").returncode == 0
        monkeypatch.delenv(HOLD_ENV)
        restarted = cluster.run("restart-node", "3")
        assert restarted.returncode == 0, restarted.stderr
        wait_until(lambda: purged_through(cluster, 3, partition) >= version, 60,
                   "the restarted node completed the purge it owed")
        assert purged_through(cluster, 1, partition) == 0  # still held there
    key_file = cluster.data_dir / "master.key"
    leaked, found = _leaks(cluster.data_dir / "node-3", key_file, erased, kept)
    assert leaked == [], "node 3: the erased patient's data is still in its files"
    assert found == set(kept.canaries)
    # Control: a node whose purge is still held has the bytes, so the restart did the work.
    leaked, _ = _leaks(cluster.data_dir / "node-1", key_file, erased, kept)
    assert leaked, "control: node 1's held purge should have left the data on disk"
