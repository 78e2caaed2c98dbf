"""The cluster grows and shrinks under a client workload (issue 12's tests).

A real secure cluster goes 3 -> 5 nodes (`scripts/cluster add-node` twice)
and back to 3 (`medkv node decommission` twice) while a client thread writes
unique records and reads some back; then a node dies for good and is
replaced (`scripts/cluster kill-node`, `add-node`, `medkv node remove ID
--dead`). Afterwards every acknowledged write reads back linearizably and
through the follower reads of every node holding its partition (with the
write's version as min_version, so a lagging replica waits rather than
passing a stale answer), and every partition has R=3 replicas, on active
members only. A write lost in a move, a replica left behind on a removed
node, or a replacement that never catches up fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from client import MedkvError
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import ROOT, LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

PARTITIONS = 8
REPLICAS = 3
MOVE_BOUND_S = 180.0


def wait_for(predicate: Callable[[], bool], what: str, bound: float) -> None:
    deadline = time.monotonic() + bound
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except MedkvError as exc:  # a node leaving may answer UNAVAILABLE once
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


@dataclass
class Workload:
    """Unique puts and reads of acknowledged ones, in a thread, until stopped.

    `acked` holds what the cluster acknowledged (value, version); `failed`
    counts puts that raised (their outcome is unknown: they are not required
    to be present, but unique values mean a present one must be the one sent).
    """

    cluster: LocalCluster
    acked: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    failed: int = 0
    reads: int = 0
    read_errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    crashed: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.cluster.client(timeout=15.0) as kv:
                i = 0
                hard_stop = time.monotonic() + 900  # bounded even if never stopped
                while not self.stop.is_set() and time.monotonic() < hard_stop:
                    pid = f"wl-{i:05d}"
                    value = f"value-{i}".encode()
                    i += 1
                    try:
                        version = kv.put(pid, "r", value, timeout=10.0)
                    except MedkvError:
                        self.failed += 1
                        time.sleep(0.1)
                        continue
                    self.acked[pid] = (value, version)
                    if i % 5 == 0:
                        old = f"wl-{(i * 7919) % i:05d}"
                        if old in self.acked:
                            try:
                                got = kv.get(old, "r", timeout=10.0).value
                            except MedkvError:
                                continue
                            self.reads += 1
                            if got != self.acked[old][0]:
                                self.read_errors.append(f"{old}: read a different value")
                    time.sleep(0.02)
        except BaseException as exc:  # surfaced by finish()
            self.crashed = exc

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive(), "the workload thread did not stop"
        if self.crashed is not None:
            raise AssertionError(f"the workload crashed: {self.crashed!r}")


def test_grow_shrink_and_replace_under_a_workload(tmp_path: Path) -> None:
    c = start_cluster(tmp_path / "m", nodes=3, partitions=PARTITIONS)
    base = int(c.addresses[0].rsplit(":", 1)[1]) - 1
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    timings: dict[str, float] = {}

    def address(node: int) -> str:
        return f"127.0.0.1:{base + node}"

    def medkv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client.cli", "--addr", address(1), "--timeout", "30", *args],
            capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=ROOT,
        )

    def settled(active: set[int]) -> bool:
        """Members as expected, R replicas per partition, all on active nodes,
        every active node holding some, and no epoch change for 2 s."""
        with c.client(address(1)) as kv:
            nodes = kv.list_nodes()
            table = kv.routing_table()
        states = {m.node_id: m.state for m in nodes.members}
        if {n for n, s in states.items() if s == "active"} != active:
            return False
        if any(s not in ("active", "removed") for s in states.values()):
            return False
        holders = {n for reps in table.replicas for n in reps}
        if not all(len(set(r)) == REPLICAS and set(r) <= active for r in table.replicas):
            return False
        if holders != active:
            return False
        time.sleep(2.0)
        with c.client(address(1)) as kv:
            return bool(kv.routing_table().epoch == table.epoch)

    def step(name: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        fn()
        timings[name] = round(time.monotonic() - t0, 1)

    def add_node() -> None:
        done = c.run("add-node", "--timeout", "120", timeout=180)
        assert done.returncode == 0, done.stderr

    def decommission(node: int) -> None:
        done = medkv("node", "decommission", str(node))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "removed", done.stdout

    work = Workload(c)
    try:
        work.start()
        wait_for(lambda: len(work.acked) >= 20, "the workload's first writes", 60)

        # 3 -> 5
        step("add node 4", add_node)
        step("add node 5", add_node)
        step("settle on 5", lambda: wait_for(
            lambda: settled({1, 2, 3, 4, 5}), "replicas spread over 5 nodes", MOVE_BOUND_S))
        # 5 -> 3
        step("decommission 2", lambda: decommission(2))
        step("decommission 3", lambda: decommission(3))
        step("settle on 3", lambda: wait_for(
            lambda: settled({1, 4, 5}), "replicas on nodes 1, 4, 5", MOVE_BOUND_S))
        # Node 5 dies for good; node 6 replaces it (added first: with three
        # active nodes for R=3, removing a dead one is refused).
        assert c.run("kill-node", "5").returncode == 0
        step("add node 6", add_node)
        gone = medkv("node", "remove", "5", "--dead")
        assert gone.returncode == 0, gone.stderr
        step("replace 5 by 6", lambda: wait_for(
            lambda: settled({1, 4, 6}), "replicas on nodes 1, 4, 6", MOVE_BOUND_S))
        time.sleep(2.0)  # a few writes after the last move
        work.finish()

        print(f"workload: {len(work.acked)} acknowledged puts, {work.failed} failed, "
              f"{work.reads} reads; steps (s): {timings}")
        assert not work.read_errors, work.read_errors[:5]
        assert len(work.acked) >= 100, "the workload barely ran"

        with c.client(address(1)) as kv:
            table = kv.routing_table()
            assert all(len(set(r)) == REPLICAS and set(r) <= {1, 4, 6} for r in table.replicas)
            states = {m.node_id: m.state for m in kv.list_nodes().members}
            assert states == {1: "active", 2: "removed", 3: "removed", 4: "active",
                              5: "removed", 6: "active"}, states
            # Every acknowledged write, linearizably.
            lost = [pid for pid, (value, _v) in work.acked.items()
                    if kv.get(pid, "r", timeout=20.0).value != value]
            assert not lost, f"{len(lost)} acknowledged writes lost or changed: {lost[:5]}"

        # ... and through each remaining node's own replicas (a raw stub: this
        # very node answers, a follower read at least as new as the write):
        # node 6 caught up on old records too.
        for node in (1, 4, 6):
            mine = [pid for pid in work.acked if node in table.replicas[table.partition_of(pid)]]
            assert mine, f"node {node} holds none of the records"
            with c.channel(address(node)) as channel:
                stub = kv_pb2_grpc.KVStub(channel)
                deadline = time.monotonic() + 60
                for pid in mine:
                    value, version = work.acked[pid]
                    while True:
                        try:
                            got = stub.Get(kv_pb2.GetRequest(
                                patient_id=pid, record_id="r",
                                read=common_pb2.ReadOptions(
                                    consistency=common_pb2.FOLLOWER, min_version=version),
                            ), timeout=5).record.value
                        except grpc.RpcError:
                            got = None
                        if got is not None:
                            break
                        assert time.monotonic() < deadline, f"node {node} did not catch up"
                        time.sleep(0.2)
                    assert got == value, f"node {node}: {pid} differs"
        # scripts/cluster still lists every node it ever started (ids are never
        # reused), the dead one stopped, and answers through the live ones.
        status = c.run("status", "--json", timeout=60)
        assert status.returncode == 0, status.stderr
        processes = {p["node"]: p["state"] for p in json.loads(status.stdout)["processes"]}
        assert sorted(processes) == [1, 2, 3, 4, 5, 6] and processes[5] == "stopped", processes
        assert all(processes[n] == "running" for n in (1, 4, 6)), processes
        print(f"scripts/cluster status: {processes}")
        old = [pid for pid in work.acked if pid < "wl-00020"]
        assert any(6 in table.replicas[table.partition_of(pid)] for pid in old), \
            "node 6 holds none of the first records: the catch-up check proves nothing"

        # The whole cluster stops and starts again: `up` starts the members
        # only (down remembered which nodes the cluster removed) and finds
        # the cluster (cluster init skips removed initial members).
        assert c.run("down", timeout=120).returncode == 0
        again = c.run("up", "--nodes", "6", "--base-port", str(base), "--partitions",
                      str(PARTITIONS), "--timeout", "60", timeout=180)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().split(",") == [address(n) for n in (1, 4, 6)]
        with c.client([address(n) for n in (1, 4, 6)]) as kv:
            sample = sorted(work.acked)[:: max(1, len(work.acked) // 50)]
            for pid in sample:
                assert kv.get(pid, "r", timeout=30.0).value == work.acked[pid][0]
    finally:
        work.stop.set()
        stop_cluster(c)
