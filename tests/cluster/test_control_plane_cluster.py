"""The control plane on a real (secure) cluster: every node reads the same
replicated cluster state, and an operator's TransferLeader sticks.

The system Raft group (node/cluster) replicates members and placement to
every node; `medkv node list` shows what a node has applied. Leader
balancing used to hand a transferred leadership back to the placement's
preferred replica within 3 s; the transfer now pins the leader in the
cluster state and balancing respects it (and transferring back unpins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client import MedkvError
from tests.cluster.harness import ROOT, leader_of, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

PARTITIONS = 4
BOUND_S = 20.0


def wait_for(predicate: Callable[[], bool], what: str, bound: float = BOUND_S) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_node_reads_one_cluster_state_and_a_transfer_sticks(tmp_path: Path) -> None:
    c = start_cluster(tmp_path / "cp", partitions=PARTITIONS)
    try:
        views = []
        for address in c.addresses:
            with c.client(address) as kv:
                wait_for(lambda kv=kv: kv.list_nodes().system_leader != 0, "a system leader")
                views.append(kv.list_nodes())
        assert len({v.cluster_id for v in views}) == 1
        assert {v.answered_by for v in views} == {1, 2, 3}
        for v in views:
            assert v.epoch == 1
            assert [(m.node_id, m.state, m.system_voter) for m in v.members] == [
                (1, "active", True), (2, "active", True), (3, "active", True)]
            assert sum(m.replicas for m in v.members) == PARTITIONS * 3

        # The CLI shows the same, as a table and as JSON.
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "client.cli", "node", "list", "--addr", c.addresses[1], "--json"],
            capture_output=True, text=True, timeout=30, check=False, env=env, cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["cluster_id"] == views[0].cluster_id and len(doc["members"]) == 3
        table = subprocess.run(
            [sys.executable, "-m", "client.cli", "--addr", c.addresses[0], "node", "list"],
            capture_output=True, text=True, timeout=30, check=False, env=env, cwd=ROOT,
        )
        assert table.returncode == 0, table.stderr
        assert "placement epoch 1" in table.stdout and "NODE" in table.stdout

        with c.client() as kv:
            table_ = kv.routing_table()
            reps = table_.replicas[0]
            wait_for(lambda: leader_of(kv, 0) == reps[0], "the preferred leader of partition 0")
            target = reps[1]
            assert kv.transfer_leader(0, target) == target
            # Balancing runs every 3 s: three rounds later the leader is still there.
            time.sleep(10)
            assert leader_of(kv, 0) == target, "leader balancing undid the operator's transfer"
            # Transferring back to the placement's choice clears the pin.
            assert kv.transfer_leader(0, reps[0]) == reps[0]
            time.sleep(4)
            assert leader_of(kv, 0) == reps[0]
            assert kv.routing_table().epoch == 1  # a leader choice is not a placement change

        # The state is on disk: a restarted node answers from it at once.
        c.run("restart-node", "2")
        with c.client(c.addresses[1]) as kv:
            wait_for(lambda: kv.list_nodes().system_applied >= views[1].system_applied,
                     "the restarted node's cluster state")
            assert kv.list_nodes().cluster_id == views[0].cluster_id
    finally:
        stop_cluster(c)


def test_nodes_wait_for_cluster_init_and_init_is_idempotent(tmp_path: Path) -> None:
    """Started with --no-init, nodes found no cluster of their own: they answer
    UNAVAILABLE saying what to do. `medkv cluster init` creates one cluster on
    every member; run again, it finds it (same id) and changes nothing."""
    c = start_cluster(tmp_path / "init", partitions=PARTITIONS, extra=("--no-init",))
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def medkv(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "client.cli", "--addr", c.addresses[0], "--timeout", "20",
                 *args],
                capture_output=True, text=True, timeout=60, check=False, env=env, cwd=ROOT,
            )

        with c.client(c.addresses[2]) as kv, \
                pytest.raises(MedkvError, match=r"not part of a cluster yet.*cluster init"):
            kv.put("p-1", "r", b"v", timeout=2)
        before = medkv("status")
        assert before.returncode != 0 and "not part of a cluster yet" in before.stderr

        first = medkv("--json", "cluster", "init")
        assert first.returncode == 0, first.stderr
        doc = json.loads(first.stdout)
        assert not doc["already_initialized"] and doc["partitions"] == PARTITIONS
        assert [(n["node"], n["ok"]) for n in doc["nodes"]] == [(1, True), (2, True), (3, True)]

        with c.client() as kv:
            wait_for(lambda: all(
                p.leader for p in kv.cluster_status().partition_info), "leaders", bound=30)
            assert kv.put("p-1", "r", b"v") > 0
            assert kv.list_nodes().cluster_id == doc["cluster_id"]

        again = medkv("cluster", "init")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == doc["cluster_id"]
        assert "was initialized already" in again.stderr
    finally:
        stop_cluster(c)
