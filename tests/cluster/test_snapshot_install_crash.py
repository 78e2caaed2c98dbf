"""A replica killed at each step of installing a snapshot restarts and serves
the right data (issue 10 item 4), on a real 3-node cluster.

Node 3 is stopped while one partition takes enough writes that its log is
compacted past what node 3 holds, so only a snapshot can catch it up. It is
restarted with the test-only crash point armed, receives the snapshot and
exits (code 86) at that step of the install; restarted without it, it
finishes the install before serving, and a follower read on node 3 returns
what the leader returns for every record.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest

from client import Client
from node.snapshots import CRASH_ENV, CRASH_POINTS
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import (
    SCRIPT,
    LocalCluster,
    patients_per_partition,
    raw_channel,
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.cluster]

VICTIM = 3
RECORDS = 40
WRITES = 300  # with snapshot_every=100 and keep_after_snapshot=20: far past node 3's log


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def follower_get(address: str, pid: str, rid: str) -> kv_pb2.GetResponse | None:
    with raw_channel(address) as ch:
        try:
            return kv_pb2_grpc.KVStub(ch).Get(
                kv_pb2.GetRequest(
                    patient_id=pid, record_id=rid,
                    read=common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER),
                ),
                timeout=5,
            )
        except grpc.RpcError:
            return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(
        tmp_path_factory.mktemp("snapcrash"),
        partitions=4,
        extra=("--raft", "snapshot_every=100", "--raft", "keep_after_snapshot=20"),
    )
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_each_step_of_a_snapshot_install_restarts_serving_the_right_data(
    cluster: LocalCluster, point: str
) -> None:
    log_path = cluster.data_dir / f"node-{VICTIM}" / "node.log"
    address = cluster.addresses[VICTIM - 1]
    others = [a for i, a in enumerate(cluster.addresses) if i != VICTIM - 1]
    assert cluster.run("kill-node", str(VICTIM)).returncode == 0
    with Client(others, timeout=20.0) as kv:
        pid = patients_per_partition(kv, 1, f"crash-{point}")[0][0]
        for i in range(WRITES):
            kv.put(pid, f"rec-{i % RECORDS}", b"%s %d" % (point.encode(), i))
        expected = {f"rec-{j}": kv.get(pid, f"rec-{j}") for j in range(RECORDS)}

    seen = len(log_path.read_text())
    armed = dict(os.environ, **{CRASH_ENV: point})
    # The node may crash before or after it first answers: either way the
    # restart command's own outcome says nothing here; the log does.
    subprocess.run(
        [str(SCRIPT), "restart-node", str(VICTIM), "--data-dir", str(cluster.data_dir)],
        env=armed, capture_output=True, text=True, timeout=120, check=False,
    )
    crash_line = f"TEST ONLY: {CRASH_ENV}={point}: the process exits now (code 86)"
    wait_until(lambda: crash_line in log_path.read_text()[seen:], 60,
               f"node {VICTIM} to crash at {point}")
    wait_until(lambda: cluster.states()[VICTIM] == "stopped", 20, f"node {VICTIM} to exit")

    restarted = cluster.run("restart-node", str(VICTIM))
    assert restarted.returncode == 0, restarted.stderr

    last = max(r.version for r in expected.values())
    got = wait_until(
        lambda: (r := follower_get(address, pid, "rec-0")) is not None
        and r.read_state.node_id == VICTIM
        and r.read_state.applied_index >= last and r,
        30, f"node {VICTIM} to serve partition data at index {last}",
    )
    assert got.read_state.node_id == VICTIM
    for rid, rec in expected.items():
        mine = follower_get(address, pid, rid)
        assert mine is not None and mine.read_state.node_id == VICTIM
        assert (mine.record.value, mine.record.version) == (rec.value, rec.version), rid
    after = log_path.read_text()[seen:].split(crash_line, 1)[1]
    assert CRASH_ENV not in after  # restarted unarmed
    assert "did not finish" in after and "installed at start" in after, after[-3000:]
    assert "cannot be opened" not in after and "disabled on this node" not in after
