"""A real full disk under one node of a 3-node cluster (a small tmpfs).

The node whose LevelDB cannot write exits naming the cause (fail-stop); the
other two keep the cluster available and nothing acknowledged is lost. Needs
root for the mount (as in CI); skipped, saying why, where mounting fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from client import Client, MedkvError
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import node_processes, raw_channel, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TMPFS_MB = 24


def _mount_tmpfs(where: Path) -> None:
    where.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(where)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _fill(where: Path) -> None:
    """Take every free byte of the filesystem (unbuffered: nothing left to flush)."""
    fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)


def _node_alive(data_dir: Path, node: int) -> bool:
    node_dir = str(data_dir / f"node-{node}")
    for pid in node_processes(data_dir):
        with contextlib.suppress(OSError):
            if node_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


def test_a_node_on_a_full_disk_stops_and_the_cluster_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "c"
    db = data_dir / "node-3" / "db"  # LevelDB only: the node's log stays writable
    _mount_tmpfs(db)
    try:
        cluster = start_cluster(data_dir, nodes=3, partitions=4)
        acked: dict[tuple[str, str], bytes] = {}
        try:
            with Client(cluster.addresses, timeout=15.0) as kv:
                for i in range(20):
                    key = (f"fd-patient-{i % 7}", f"rec-{i}")
                    kv.put(*key, b"before-%d" % i)
                    acked[key] = b"before-%d" % i
                _fill(db)
                deadline = time.monotonic() + 60
                i = 0
                while _node_alive(data_dir, 3):
                    assert time.monotonic() < deadline, "the node on the full disk kept running"
                    key = (f"fd-patient-{i % 7}", f"during-{i}")
                    with contextlib.suppress(MedkvError):
                        kv.put(*key, b"during-%d" % i)
                        acked[key] = b"during-%d" % i
                    i += 1
                log = (data_dir / "node-3" / "node.log").read_text(errors="replace")
                assert "storage failed" in log and "No space left on device" in log, log[-2000:]
                assert "Traceback" not in log.split("storage failed")[-1]
                # The other two go on: new writes are acknowledged...
                for j in range(10):
                    key = (f"fd-patient-{j % 7}", f"after-{j}")
                    kv.put(*key, b"after-%d" % j)
                    acked[key] = b"after-%d" % j
                # ...and every acknowledged write is there, linearizably.
                for (pid, rid), value in acked.items():
                    assert kv.get(pid, rid).value == value
            assert _node_alive(data_dir, 1) and _node_alive(data_dir, 2)
            # Space freed, the node restarts and catches up from its intact log.
            (db / "filler").unlink()
            restarted = cluster.run("restart-node", "3", timeout=120)
            assert restarted.returncode == 0, restarted.stderr
            # Raw stub: this very node must answer, from its own replica.
            stub = kv_pb2_grpc.KVStub(raw_channel(cluster.addresses[2]))
            deadline = time.monotonic() + 60
            for (pid, rid), value in acked.items():
                while True:
                    try:
                        got = stub.Get(
                            kv_pb2.GetRequest(
                                patient_id=pid, record_id=rid,
                                read=common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER),
                            ),
                            timeout=5,
                        ).record.value
                    except grpc.RpcError:
                        got = None
                    if got == value:
                        break
                    assert time.monotonic() < deadline, "node 3 did not catch up"
                    time.sleep(0.2)
        finally:
            stop_cluster(cluster)
    finally:
        subprocess.run(["umount", "-l", str(db)], capture_output=True, timeout=30, check=False)
