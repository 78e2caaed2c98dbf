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


def test_nodes_join_a_running_cluster_and_the_system_group_grows_to_five_voters(
    tmp_path: Path,
) -> None:
    """`scripts/cluster add-node` starts node 4 (which waits, belonging to no
    cluster) and adds it: the members hand it the cluster state, it replays
    the system log and turns active. With four members the system group keeps
    three voters (an even count tolerates no more failures); the fifth member
    makes it five. A joined node restarts from its own disk."""
    c = start_cluster(tmp_path / "grow", partitions=PARTITIONS)
    try:
        def members(address: str) -> dict[int, tuple[str, bool]]:
            with c.client(address) as kv:
                return {m.node_id: (m.state, m.system_voter) for m in kv.list_nodes().members}

        assert c.run("add-node", "--timeout", "60").returncode == 0
        base = int(c.addresses[0].rsplit(":", 1)[1]) - 1
        four = f"127.0.0.1:{base + 4}"
        view = members(c.addresses[0])
        assert view[4] == ("active", False), view
        assert [n for n, (_s, v) in view.items() if v] == [1, 2, 3]
        # Node 4 answers from its own replica of the same state.
        wait_for(lambda: members(four).get(4, ("", False))[0] == "active", "node 4's own view")
        with c.client(four) as kv4, c.client() as kv:
            assert kv4.list_nodes().cluster_id == kv.list_nodes().cluster_id

        assert c.run("add-node", "--timeout", "60").returncode == 0
        wait_for(lambda: [n for n, (_s, v) in members(c.addresses[0]).items() if v]
                 == [1, 2, 3, 4, 5], "five system voters")

        # Writes still work, and a joined node restarts from its own disk.
        with c.client() as kv:
            assert kv.put("p-grow", "r", b"v") > 0
        c.run("restart-node", "4")
        wait_for(lambda: members(four).get(5, ("", False))[0] == "active", "node 4 after restart")
    finally:
        stop_cluster(c)


def test_replicas_move_to_a_new_node_and_off_decommissioned_and_dead_ones(
    tmp_path: Path,
) -> None:
    """The cluster grows and shrinks online and nothing written is lost:
    a fifth node receives about R*P/N replicas (learner, catch-up, joint
    change), a decommissioned node is emptied and removed, a node killed for
    good is removed with --dead and its replicas re-created on the others.
    Clients follow the placement epochs; every acknowledged record reads back."""
    partitions = 8
    c = start_cluster(tmp_path / "move", nodes=4, partitions=partitions)
    base = int(c.addresses[0].rsplit(":", 1)[1]) - 1
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def medkv(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client.cli", "--addr", c.addresses[0], *args],
            capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=ROOT,
        )

    # A client that keeps the table it fetched first: it must follow the
    # placement epochs on its own (precise answers from the old holders).
    stale = c.client()
    try:
        written: dict[str, bytes] = {}
        with c.client() as kv:
            for i in range(40):
                pid = f"patient-{i}"
                written[pid] = f"v{i}".encode()
                kv.put(pid, "r", written[pid])
            before = kv.routing_table()
        assert stale.get("patient-0", "r").value == written["patient-0"]
        assert stale.router is not None and stale.router.epoch == before.epoch

        assert c.run("add-node", "--timeout", "60").returncode == 0  # node 5

        def converged() -> bool:
            with c.client() as kv:
                nodes = kv.list_nodes()
                table = kv.routing_table()
            held = {m.node_id: m.replicas for m in nodes.members}
            return held.get(5, 0) > 0 and all(
                len(table.replicas[p]) == 3 for p in range(partitions)) and sum(held.values()) == 3 * partitions

        wait_for(converged, "replicas on node 5", bound=120)
        # Let the moves settle, then count what moved.
        wait_for(lambda: _stable(c), "no move in flight", bound=120)
        with c.client() as kv:
            after = kv.routing_table()
            moved = sum(len(set(after.replicas[p]) - set(before.replicas[p]))
                        for p in range(partitions))
            assert after.epoch > before.epoch
            assert 1 <= moved <= 3 * partitions * 2 // 5 + 2, moved  # about R*P/N = 4.8
            for pid, value in written.items():
                assert kv.get(pid, "r").value == value
            with c.client(f"127.0.0.1:{base + 5}") as kv5:
                on5 = [p for p in range(partitions) if 5 in after.replicas[p]]
                pid = next(x for x in written if after.partition_of(x) in on5)
                assert kv5.get(pid, "r", consistency="follower").value == written[pid]

        done = medkv("node", "decommission", "2")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "removed"
        with c.client() as kv:
            wait_for(lambda: all(2 not in t for t in kv.routing_table().replicas),
                     "node 2 out of every replica set", bound=30)
            # Any member answers: one may not have applied the removal yet.
            wait_for(lambda: {m.node_id: m.state for m in kv.list_nodes().members}[2]
                     == "removed", "every member's view of node 2 removed", bound=20)
            kv.put("after-decommission", "r", b"x")
            for pid, value in written.items():
                assert kv.get(pid, "r").value == value

        # Node 3 dies for good: its replicas are re-created on 1, 4 and 5.
        c.run("kill-node", "3")
        gone = medkv("node", "remove", "3", "--dead")
        assert gone.returncode == 0, gone.stderr
        with c.client() as kv:
            # Each node reports the configuration its replicas applied: a
            # follower may be a moment behind the joint change's end.
            wait_for(lambda: all(
                3 not in t and len(t) == 3 for t in kv.routing_table().replicas),
                "node 3 out of every replica set", bound=30)
            for pid, value in written.items():
                assert kv.get(pid, "r").value == value
            assert kv.get("after-decommission", "r").value == b"x"
        # The stale client reads everything, refreshing when a node says its
        # table is old, and ends on the current epoch.
        for pid, value in written.items():
            assert stale.get(pid, "r").value == value
        with c.client() as kv:
            assert stale.router is not None and stale.router.epoch == kv.routing_table().epoch
        # Three active nodes hold three replicas each: none may leave now.
        refused = medkv("node", "decommission", "4")
        assert refused.returncode != 0 and "add a node first" in refused.stderr
    finally:
        stale.close()
        stop_cluster(c)


def _stable(c: object) -> bool:
    with c.client() as kv:  # type: ignore[attr-defined]
        a = kv.routing_table().epoch
    time.sleep(2.0)
    with c.client() as kv:  # type: ignore[attr-defined]
        return bool(kv.routing_table().epoch == a)
