"""A replica catching up a large partition through a snapshot, for anyone to rerun.

Starts a 3-node cluster with one partition (scripts/cluster on 127.0.0.1),
stops node 3, writes --size-mb of records into the partition (its Raft log
is compacted far past node 3's), restarts node 3 and measures, on node 3:

  catch-up     seconds from its restart until a follower read on it returns
               the last record written (applied index reaches the leader's);
  peak heap    the largest RssAnon sampled every 50 ms (anonymous memory:
               what the process allocated), and peak RSS, VmHWM, which also
               counts the pages of LevelDB's files it maps while reading;
  loop stall   the longest event-loop stall: measured from outside (the
               longest answer time of a health check sent every 20 ms while
               it catches up: any tree) and, where the node has the probe
               (node/loop_lag.py), the longest stall it logged.

    scripts/bench-snapshot [--size-mb 1024] [--value-kb 16] [--tree PATH] [--json]

MEDKV_BENCH_KEEP=1 keeps the (stopped) cluster's directory for its logs.
--tree runs another checkout's nodes (e.g. a worktree of main) with this
checkout's client, to compare before and after. A benchmark: it reports
figures and never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from client import AsyncClient, Client, SessionExpired  # noqa: E402
from client.bench.local import use_cluster_credentials  # noqa: E402
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc  # noqa: E402

VICTIM = 3


def run_cluster(tree: Path, *args: str, timeout: float = 300) -> str:
    env = dict(os.environ)
    env.setdefault("MEDKV_VENV", str(Path(sys.executable).resolve().parents[1]))
    proc = subprocess.run(
        [str(tree / "scripts" / "cluster"), *args], capture_output=True, text=True,
        check=False, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"scripts/cluster {args[0]} failed")
    return proc.stdout.strip()


def node_pid(data_dir: Path, node: int) -> int:
    return int((data_dir / f"node-{node}" / "node.pid").read_text())


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmHWM:")


class HeapSampler(threading.Thread):
    """Samples the node's anonymous resident memory (RssAnon: its heap, not
    the LevelDB files it maps, which VmHWM counts too) every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, _status_mib(self.pid, "RssAnon:"))
            except OSError:
                return


def open_channel(address: str) -> grpc.Channel:
    """A raw channel with the credentials use_cluster_credentials put in the environment."""
    from client.auth import secure_channel_credentials, token_source
    from client.tls import TlsConfig

    tls = TlsConfig.from_env()
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, secure_channel_credentials(tls.credentials(), token_source()))


async def load(addresses: list[str], size: int, value_size: int, concurrency: int) -> int:
    """Write `size` bytes of values as distinct records; the last version
    written. One client per worker; a write refused as a session problem is
    retried from a new client (the figure is the catch-up, not the load)."""
    count = max(1, size // value_size)
    value = os.urandom(value_size)
    last = 0
    nxt = iter(range(count))

    async def worker() -> None:
        nonlocal last
        kv = AsyncClient(addresses, timeout=60.0)
        try:
            for i in nxt:
                for _ in range(5):
                    try:
                        v = await kv.put(f"bench-patient-{i % 997}", f"rec-{i}",
                                         value[i % 64:] + value[: i % 64])
                        last = max(last, v)
                        break
                    except SessionExpired:
                        await kv.close()
                        kv = AsyncClient(addresses, timeout=60.0)
        finally:
            await kv.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    async with AsyncClient(addresses, timeout=60.0) as kv:
        # One last write everyone can look for.
        return await kv.put("bench-patient-last", "last", b"last")


def follower_version(address: str) -> int:
    with open_channel(address) as ch:
        try:
            r = kv_pb2_grpc.KVStub(ch).Get(
                kv_pb2.GetRequest(
                    patient_id="bench-patient-last", record_id="last",
                    read=common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER),
                ),
                timeout=2,
            )
        except grpc.RpcError:
            return 0
        return int(r.record.version) if r.read_state.node_id == VICTIM else 0


class HealthProbe(threading.Thread):
    """Checks the node's health every 20 ms; the longest answer is a bound on
    its event loop's longest stall (the gRPC server answers on that loop)."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.longest = 0.0
        self.answered = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with open_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                    self.answered += 1
                    if self.answered > 5:  # past the first connection set-up
                        self.longest = max(self.longest, time.monotonic() - t0)
                except grpc.RpcError:
                    pass
                self.stop.wait(max(0.0, 0.02 - (time.monotonic() - t0)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--value-kb", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose nodes run")
    ap.add_argument("--timeout", type=float, default=1800, help="catch-up limit (s)")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    tree = ns.tree.resolve()
    data_dir = Path(tempfile.mkdtemp(prefix="medkv-bench-snapshot-"))
    result: dict[str, Any] = {
        "tree": str(tree),
        "size_mb": ns.size_mb,
        "value_kb": ns.value_kb,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
    }
    try:
        import random

        base = random.Random().randrange(20_000, 40_000)
        addresses = run_cluster(
            tree, "up", "--nodes", "3", "--partitions", "1", "--data-dir", str(data_dir),
            "--base-port", str(base), "--timeout", "60",
            "--raft", "snapshot_every=1000", "--raft", "keep_after_snapshot=100",
        ).split(",")
        use_cluster_credentials(data_dir, "clinician")
        run_cluster(tree, "kill-node", str(VICTIM), "--data-dir", str(data_dir))
        t0 = time.monotonic()
        last = asyncio.run(load(addresses[:2], ns.size_mb << 20, ns.value_kb << 10, ns.concurrency))
        result["load_s"] = round(time.monotonic() - t0, 1)
        result["last_index"] = last
        admin = data_dir / "tokens" / "admin.token"  # cluster status is an admin's call
        with Client(addresses[:2], token=f"@{admin}" if admin.exists() else None) as kv:
            kv.cluster_status()
        log_path = data_dir / f"node-{VICTIM}" / "node.log"
        seen = len(log_path.read_bytes())
        probe = HealthProbe(addresses[VICTIM - 1])
        t0 = time.monotonic()
        run_cluster(tree, "restart-node", str(VICTIM), "--data-dir", str(data_dir))
        probe.start()
        pid = node_pid(data_dir, VICTIM)
        deadline = t0 + ns.timeout
        heap = HeapSampler(pid)
        heap.start()
        while follower_version(addresses[VICTIM - 1]) < last:
            if time.monotonic() > deadline:
                raise SystemExit(f"node {VICTIM} did not catch up within {ns.timeout:g}s")
            time.sleep(0.25)
        result["catch_up_s"] = round(time.monotonic() - t0, 1)
        probe.stop.set()
        probe.join(35)
        heap.stop.set()
        heap.join(5)
        result["peak_heap_mib"] = round(heap.peak, 0)
        result["peak_rss_mib_incl_mapped_files"] = round(peak_rss_mib(pid), 0)
        result["longest_health_check_ms"] = round(probe.longest * 1000, 0)
        text = log_path.read_bytes()[seen:].decode(errors="replace")
        stalls = [float(m) for m in re.findall(r"event loop stalled for (\d+) ms", text)]
        has_probe = (tree / "node" / "loop_lag.py").exists()
        result["longest_loop_stall_ms"] = (max(stalls, default=0.0) if has_probe else None)
        result["du_mib"] = round(
            sum(f.stat().st_size for f in (data_dir / f"node-{VICTIM}").rglob("*") if f.is_file())
            / 2**20, 0,
        )
    finally:
        try:
            run_cluster(tree, "down", "--data-dir", str(data_dir), timeout=120)
        finally:
            if not os.environ.get("MEDKV_BENCH_KEEP"):
                shutil.rmtree(data_dir, ignore_errors=True)
    if ns.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:26} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
