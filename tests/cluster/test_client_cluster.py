"""The client and the cluster scripts against real node processes on 127.0.0.1.

Each cluster is started with `scripts/cluster up` on free ports in a temporary
directory and always torn down with `scripts/cluster down`; the teardown then
checks that no node process of that directory is left. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client, RetryPolicy, VersionConflict
from tests.cluster.harness import (
    PARTITIONS,
    LocalCluster,
    leader_of,
    patients_per_partition,
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("medkv-cluster"))
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture
def kv(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.addresses, timeout=20.0) as client:
        yield client


def test_routing_reaches_every_partition_leader_and_follows_redirects(kv: Client) -> None:
    patients = patients_per_partition(kv, 1, "route")
    for partition, (pid,) in patients.items():
        version = kv.put(pid, "r", b"v")
        record = kv.get(pid, "r")
        assert record.version == version and record.from_leader
        assert record.partition == partition
        assert record.served_by == leader_of(kv, partition)
    # Poison the leader cache: every partition "led" by a replica that is not
    # its leader. Each write is redirected by the hint and the cache repaired.
    router = kv.router
    assert router is not None
    for partition, (pid,) in patients.items():
        leader = leader_of(kv, partition)
        wrong = next(n for n in router.replicas(partition) if n != leader)
        router.note_leader(partition, wrong)
        kv.put(pid, "r", b"w")
        assert router.leader(partition) == leader_of(kv, partition)


def test_follower_and_bounded_reads_state_their_staleness(kv: Client) -> None:
    pid = "reader-1"
    version = kv.put(pid, "r", b"fresh")
    replicas = set(kv.routing_table().replicas[kv.routing_table().partition_of(pid)])
    served = set()
    for _ in range(12):
        record = kv.get(pid, "r", consistency="follower", min_version=version)
        assert record.value == b"fresh" and record.version == version
        assert record.served_by in replicas
        assert record.applied_index >= version and record.lag >= 0
        served.add(record.served_by)
    assert len(served) > 1, "follower reads must spread over the replicas"
    bounded = kv.get(pid, "r", consistency="bounded", max_staleness=5.0, min_version=version)
    assert bounded.value == b"fresh" and 0.0 <= bounded.staleness <= 5.0
    tight = kv.get(pid, "r", consistency="bounded", max_staleness=0.001)
    assert tight.from_leader or 0.0 <= tight.staleness <= 0.001


def test_scan_returns_every_record_exactly_once(kv: Client) -> None:
    written: dict[tuple[str, str], bytes] = {}
    for i in range(120):
        pid = f"scan-{i % 40}"
        key = (pid, f"rec-{i}")
        kv.put(*key, f"value-{i}".encode())
        written[key] = f"value-{i}".encode()
    # Linearizable: exactly the records written (others' tests wrote other prefixes).
    pages = list(kv.scan_pages(consistency="linearizable", page_size=7))
    got = [(r.patient_id, r.record_id) for p in pages for r in p.records]
    mine = [k for k in got if k[0].startswith("scan-")]
    assert sorted(mine) == sorted(written) and len(mine) == len(set(mine))
    assert {p.partition for p in pages if p.done} == set(range(PARTITIONS))
    assert all(p.read_state.from_leader for p in pages)
    # Follower scans: never a duplicate; complete once the followers caught up.
    deadline = time.monotonic() + 15
    while True:
        records = list(kv.scan())
        keys = [(r.patient_id, r.record_id) for r in records]
        assert len(keys) == len(set(keys))
        if set(written) <= set(keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(written) <= set(keys)
    assert all(
        written[(r.patient_id, r.record_id)] == r.value
        for r in records
        if r.patient_id.startswith("scan-")
    )


def test_retries_across_a_killed_leader_never_apply_a_write_twice(
    cluster: LocalCluster, kv: Client
) -> None:
    """Per-patient append-only lists, each append a compare-and-set on the last version.

    A write applied twice would make its retry fail the version check (a
    VersionConflict) or put an element in the list twice; a lost write would
    leave a gap. The leader of the first patient's partition is killed while
    the writers run.
    """
    table = kv.routing_table()
    patients = [f"append-{i}" for i in range(3)]
    victim = leader_of(kv, table.partition_of(patients[0]))
    appends = 30
    errors: list[BaseException] = []
    progress = [0] * len(patients)

    def writer(index: int, pid: str) -> None:
        try:
            with Client(cluster.addresses, retry=RetryPolicy(timeout=30.0)) as own:
                items: list[int] = []
                version = 0
                for n in range(appends):
                    items.append(n)
                    version = own.cas(pid, "list", json.dumps(items).encode(), version)
                    progress[index] = n + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i, p)) for i, p in enumerate(patients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while min(progress) < 5 and time.monotonic() < deadline and not errors:
        time.sleep(0.02)
    killed = cluster.run("kill-node", str(victim), timeout=30)
    assert killed.returncode == 0, killed.stderr
    try:
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a writer did not finish in time"
        assert not errors, f"writers failed: {errors!r}"
        assert not any(isinstance(e, VersionConflict) for e in errors)
        for pid in patients:
            record = kv.get(pid, "list")
            assert json.loads(record.value) == list(range(appends))
            history = kv.history(pid, "list")
            lengths = [len(json.loads(r.value)) for r in history]
            assert lengths == sorted(lengths, reverse=True)
            assert len(lengths) == len(set(lengths)), "one append was applied twice"
    finally:
        restarted = cluster.run("restart-node", str(victim), timeout=60)
        assert restarted.returncode == 0, restarted.stderr


def test_cluster_scripts_end_to_end(tmp_path: Path) -> None:
    c = start_cluster(tmp_path / "lifecycle")
    try:
        assert c.status()["cluster"]["partitions"] == PARTITIONS
        assert c.states() == {
            1: "running",
            2: "running",
            3: "running",
        }
        table = c.run("status", timeout=30)
        assert table.returncode == 0 and "medkv cluster: OK" in table.stdout
        for n in (1, 2, 3):
            toml = (c.data_dir / f"node-{n}" / "node.toml").read_text()
            assert f"node_id = {n}" in toml and toml.count("[[peers]]") == 3
            assert (c.data_dir / f"node-{n}" / "node.log").exists()

        assert c.run("pause-node", "2").returncode == 0
        states = c.states()
        assert states[2] == "paused"
        assert c.run("resume-node", "2").returncode == 0

        assert c.run("kill-node", "1").returncode == 0
        states = c.states()
        assert states[1] == "stopped"
        with Client(c.addresses, timeout=20.0) as kv:
            assert kv.put("lifecycle-patient", "r", b"written with node 1 down") > 0
        assert c.run("kill-node", "1").returncode != 0  # not running: a clear failure

        restarted = c.run("restart-node", "1", timeout=60)
        assert restarted.returncode == 0, restarted.stderr
        states = c.states()
        assert states[1] == "running"
        with Client(c.addresses[0], timeout=20.0) as kv:
            assert kv.get("lifecycle-patient", "r").value == b"written with node 1 down"

        # A paused node must not survive `down` either.
        assert c.run("pause-node", "3").returncode == 0
    finally:
        stop_cluster(c)
    assert not any(os.path.exists(c.data_dir / f"node-{n}" / "node.pid") for n in (1, 2, 3))
