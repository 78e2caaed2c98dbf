"""What an erasure costs the node: event-loop stalls, ack latency, other writes.

Starts a local cluster, fills one partition with `--records` records (100 per
patient, in batches), then erases one patient of that partition and
measures, until every replica logged that it purged the partition:

  * the longest event-loop stall of each node: every node runs with a
    monitor task on its own event loop (sleep 5 ms, note how late it woke),
    so a stall is time during which nothing else on that loop ran (gRPC
    handlers, the Raft loop's ticks and heartbeats);
  * the erasure's ack latency, as the client sees it;
  * the latency of writes to the OTHER partitions meanwhile (one every
    20 ms): they stop when the Raft loop is frozen, whatever the cause;
  * the same stall and write figures for an equally long quiet window
    before the erasure, for comparison.

    scripts/bench-erasure.py [--records 100000] [--nodes 3] [--partitions 4]
                             [--tree DIR] [--json] [--keep]

--tree runs the same measurement against another checkout (e.g. a worktree
of an older commit, for a before/after): its client, scripts/cluster and
node code are used. A benchmark: it reports figures, it never passes or
fails on time. Servers and load generator share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECORDS_PER_PATIENT = 100
STALL_PERIOD = 0.005
STALL_NOTE = 0.010  # lags above this are written to the stall log


# ---- inside a node process ---------------------------------------------------


def serve_node(config: str, stall_log: str) -> int:
    """Run one node like `python -m node`, plus the loop-stall monitor."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from node.config import load_config
    from node.server import serve

    async def monitor() -> None:
        with open(stall_log, "a", buffering=1) as f:
            while True:
                t = time.monotonic()
                await asyncio.sleep(STALL_PERIOD)
                lag = time.monotonic() - t - STALL_PERIOD
                if lag > STALL_NOTE:
                    # Wall time of the stall's end, so the harness can window it.
                    f.write(f"{time.time():.3f} {lag * 1000:.1f}\n")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(monitor())
        try:
            await serve(load_config(config))
        finally:
            task.cancel()

    asyncio.run(main())
    return 0


# ---- the harness ---------------------------------------------------------------


def run_cluster_script(root: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "cluster.py"), *args],
        capture_output=True, text=True, check=False, cwd=str(root), timeout=300,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"scripts/cluster {args[0]} failed")
    return proc.stdout.strip()


def use_cluster_credentials(data_dir: Path, token: str) -> None:
    """A cluster is secure by default: the clients of this process read its TLS
    directory and the token DIR/tokens/TOKEN.token from the environment.
    (A tree from before access control made no DIR/certs: plaintext then.)"""
    if (data_dir / "certs" / "ca.pem").exists():
        os.environ["MEDKV_TLS_DIR"] = str(data_dir / "certs")
        os.environ["MEDKV_TOKEN"] = "@" + str(data_dir / "tokens" / f"{token}.token")
    else:
        os.environ.pop("MEDKV_TLS_DIR", None)
        os.environ.pop("MEDKV_TOKEN", None)


def start_nodes(root: Path, data_dir: Path, nodes: int) -> list[subprocess.Popen[bytes]]:
    """Start every node through this script's monitor wrapper (stopped by
    stop_nodes: scripts/cluster down only stops the processes it started)."""
    procs = []
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    for n in range(1, nodes + 1):
        node_dir = data_dir / f"node-{n}"
        with open(node_dir / "node.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve-node",
                 str(node_dir / "node.toml"), "--stall-log", str(node_dir / "stall.log")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(root), env=env, start_new_session=True,
            )
        procs.append(proc)
    return procs


def stop_nodes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stalls(path: Path, start: float, end: float) -> list[float]:
    out: list[float] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        t, lag = (float(x) for x in line.split())
        # A stall that ended inside the window (or began in it).
        if start <= t <= end or start <= t - lag / 1000 <= end:
            out.append(lag)
    return out


def purged(data_dir: Path, node: int, partition: int) -> bool:
    text = (data_dir / f"node-{node}" / "node.log").read_text(errors="replace")
    return re.search(rf"partition {partition}: purged log and files through index", text) is not None


async def measure(args: argparse.Namespace, addresses: list[str], data_dir: Path) -> dict[str, Any]:
    from client import AsyncClient, MedkvError, ops

    value = os.urandom(100)
    async with AsyncClient(addresses, timeout=60.0) as kv:
        deadline = time.monotonic() + 60
        while True:  # every partition has a leader that takes writes
            try:
                table = await kv.routing_table()
                for p in range(table.partitions):
                    pid = next(f"warm-{i}" for i in range(10_000) if table.partition_of(f"warm-{i}") == p)
                    await kv.put(pid, "w", b"w", timeout=5)
                break
            except MedkvError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        target = 0
        patients: list[str] = []
        others: list[str] = []
        i = 0
        want = max(1, args.records // RECORDS_PER_PATIENT)
        while len(patients) < want or len(others) < 32:
            pid = f"bench-{i}"
            i += 1
            if table.partition_of(pid) == target:
                if len(patients) < want:
                    patients.append(pid)
            elif len(others) < 32:
                others.append(pid)
        victim = patients[len(patients) // 2]
        print(f"loading {len(patients) * RECORDS_PER_PATIENT} records into partition {target} "
              f"({len(patients)} patients x {RECORDS_PER_PATIENT})", file=sys.stderr)
        t_load = time.monotonic()
        queue = list(patients)

        async def loader() -> None:
            while queue:
                pid = queue.pop()
                batch = [ops.put(f"obs-{r:03d}", value) for r in range(RECORDS_PER_PATIENT)]
                for _ in range(5):
                    try:
                        await kv.batch(pid, batch, timeout=60)
                        break
                    except MedkvError:
                        await asyncio.sleep(0.5)

        await asyncio.gather(*(loader() for _ in range(8)))
        load_s = time.monotonic() - t_load
        print(f"loaded in {load_s:.0f}s", file=sys.stderr)
        await asyncio.sleep(5)  # followers finish applying

        probe: list[tuple[float, float, bool]] = []  # (wall invoke, latency s, ok)
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                pid = others[n % len(others)]
                n += 1
                t, t0 = time.time(), time.perf_counter()
                ok = True
                try:
                    await kv.put(pid, "probe", b"p", timeout=30)
                except MedkvError:
                    ok = False
                probe.append((t, time.perf_counter() - t0, ok))
                await asyncio.sleep(0.02)

        probe_task = asyncio.create_task(writer())
        quiet = args.quiet
        q0 = time.time()
        await asyncio.sleep(quiet)
        t0 = time.time()
        p0 = time.perf_counter()
        version = await kv.erase_patient(victim, timeout=120)
        ack_ms = (time.perf_counter() - p0) * 1000
        deadline = time.monotonic() + args.purge_timeout
        while not all(purged(data_dir, n, target) for n in range(1, args.nodes + 1)):
            if time.monotonic() > deadline:
                print("the purge did not complete on every node in time", file=sys.stderr)
                break
            await asyncio.sleep(0.1)
        purge_s = time.time() - t0
        await asyncio.sleep(1.0)
        t1 = time.time()
        stop.set()
        await probe_task

    def window(start: float, end: float) -> dict[str, Any]:
        per_node = {
            n: max(stalls(data_dir / f"node-{n}" / "stall.log", start, end), default=0.0)
            for n in range(1, args.nodes + 1)
        }
        lat = [lat for t, lat, _ in probe if start <= t <= end]
        return {
            "seconds": round(end - start, 2),
            "max_loop_stall_ms_per_node": per_node,
            "max_loop_stall_ms": max(per_node.values()),
            "other_writes": len(lat),
            "other_writes_failed": sum(1 for t, _, ok in probe if start <= t <= end and not ok),
            "other_write_max_ms": round(max(lat, default=0.0) * 1000, 1),
        }

    return {
        "records_in_partition": len(patients) * RECORDS_PER_PATIENT,
        "load_seconds": round(load_s, 1),
        "erase_version": version,
        "erase_ack_ms": round(ack_ms, 1),
        "purge_done_on_every_node_s": round(purge_s, 2),
        "quiet": window(q0, t0),
        "erasure": window(t0, t1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--base-port", type=int, default=7600)
    ap.add_argument("--quiet", type=float, default=5.0, help="seconds of the quiet window")
    ap.add_argument("--purge-timeout", type=float, default=180.0)
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout whose node, client and scripts/cluster are measured")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--serve-node", help=argparse.SUPPRESS)
    ap.add_argument("--stall-log", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_node:
        return serve_node(args.serve_node, args.stall_log)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # tear the cluster down
    root = args.tree.resolve()
    sys.path.insert(0, str(root))
    data_dir = Path(tempfile.mkdtemp(prefix="medkv-bench-erasure-"))
    machine = f"{os.cpu_count()} cpus, {platform.machine()}, {platform.platform()}, Python {platform.python_version()}"
    print(f"machine: {machine}; tree {root}; {args.nodes} nodes + load generator on this machine",
          file=sys.stderr)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        out = run_cluster_script(
            root, "up", "--nodes", str(args.nodes), "--data-dir", str(data_dir),
            "--base-port", str(args.base_port), "--partitions", str(args.partitions),
            "--replicas", str(args.nodes),
        )
        addresses = out.splitlines()[-1].split(",")
        if (data_dir / "auth").exists():  # one client writes and erases: both roles
            run_cluster_script(root, "token", "bench", "--data-dir", str(data_dir),
                               "--role", "clinician", "--role", "admin", "--clinic", "bench")
        use_cluster_credentials(data_dir, "bench")
        run_cluster_script(root, "down", "--data-dir", str(data_dir))
        procs = start_nodes(root, data_dir, args.nodes)
        result = asyncio.run(measure(args, addresses, data_dir))
    finally:
        try:
            stop_nodes(procs)
        finally:
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
    result = {"machine": machine, "tree": str(root), **result}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        e, q = result["erasure"], result["quiet"]
        print(f"records in the partition      {result['records_in_partition']}")
        print(f"erase ack latency             {result['erase_ack_ms']} ms")
        print(f"purge done on every node      {result['purge_done_on_every_node_s']} s after the erase")
        print(f"longest event-loop stall      {e['max_loop_stall_ms']} ms during the erasure "
              f"(per node {e['max_loop_stall_ms_per_node']}); {q['max_loop_stall_ms']} ms in "
              f"a quiet window of {q['seconds']} s")
        print(f"writes to other partitions    max {e['other_write_max_ms']} ms during the erasure "
              f"({e['other_writes']} writes, {e['other_writes_failed']} failed); max "
              f"{q['other_write_max_ms']} ms in the quiet window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
