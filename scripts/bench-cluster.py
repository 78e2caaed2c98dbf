"""Throughput and latency of a real local cluster, for anyone to rerun.

Starts a cluster with scripts/cluster on 127.0.0.1, drives it with asyncio
clients at several concurrency levels for a fixed time per phase, and prints
a table: operations per second, p50/p99/max latency, errors; then the nodes'
memory (RSS). Servers and load generator share this machine's cores, so the
figures are a floor for what the servers alone could do.

    scripts/bench-cluster [--nodes 3] [--seconds 8] [--concurrency 1,16,64]
                          [--value-size 200] [--multiplex on|off|both] [--json]

--multiplex both runs every point twice on the same cluster, unary calls
(off) then the client's BatchCommands streams (on), for a comparison in
one run.

A benchmark: it reports figures and never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client import AsyncClient, MedkvError  # noqa: E402

CLUSTER = ROOT / "scripts" / "cluster"


def cluster(*args: str) -> str:
    proc = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
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


def rss_mib(data_dir: Path, nodes: int) -> list[float]:
    out = []
    for n in range(1, nodes + 1):
        try:
            pid = int((data_dir / f"node-{n}" / "node.pid").read_text())
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            out.append(float("nan"))
    return out


async def phase(
    kv: AsyncClient, kind: str, concurrency: int, seconds: float, value: bytes, patients: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds
    rng = random.Random(concurrency)

    async def worker(w: int) -> None:
        nonlocal errors
        n = 0
        while time.monotonic() < stop_at:
            pid = f"bench-{rng.randrange(patients)}"
            rid = f"r{w}-{n % 8}"
            n += 1
            t0 = time.perf_counter()
            try:
                if kind == "put":
                    await kv.put(pid, rid, value)
                elif kind == "get linearizable":
                    await kv.get(pid, "seed")
                else:
                    await kv.get(pid, "seed", consistency="follower")
            except MedkvError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0

    return {
        "op": kind, "concurrency": concurrency, "ops": len(latencies),
        "ops_per_s": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else 0,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0, "errors": errors,
    }


async def run(args: argparse.Namespace, addresses: list[str], data_dir: Path) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.multiplex]
    value = os.urandom(args.value_size)
    results = []
    clients = {m: AsyncClient(addresses, timeout=20.0, multiplex=m) for m in modes}
    try:
        kv = clients[modes[0]]
        for i in range(args.patients):  # records the read phases fetch
            await kv.put(f"bench-{i}", "seed", value)
        for kind in ("put", "get linearizable", "get follower"):
            for c in levels:
                for m in modes:
                    r = await phase(clients[m], kind, c, args.seconds, value, args.patients)
                    r["multiplex"] = m
                    results.append(r)
                    print(f"  {kind:<17} c={c:<4} mux={'on ' if m else 'off'} "
                          f"{r['ops_per_s']:>8.0f} ops/s  p50 {r['p50_ms']:6.2f} ms"
                          f"  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}", file=sys.stderr)
    finally:
        for client in clients.values():
            await client.close()
    return {"results": results, "rss_mib": rss_mib(data_dir, args.nodes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--base-port", type=int, default=7500)
    ap.add_argument("--multiplex", choices=("on", "off", "both"), default="on",
                    help="client requests on BatchCommands streams (on), unary (off), or both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="medkv-bench-"))
    machine = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
    }
    print(f"machine: {machine['cpus']} cpus, {machine['platform']}, Python {machine['python']}; "
          f"{args.nodes} nodes + load generator on the same machine", file=sys.stderr)
    try:
        addresses = cluster(
            "up", "--nodes", str(args.nodes), "--data-dir", str(data_dir),
            "--base-port", str(args.base_port), "--partitions", str(args.partitions),
        ).split(",")
        use_cluster_credentials(data_dir, "clinician")
        out = asyncio.run(run(args, addresses, data_dir))
    finally:
        subprocess.run([str(CLUSTER), "down", "--data-dir", str(data_dir)], capture_output=True,
                       check=False)
        shutil.rmtree(data_dir, ignore_errors=True)
    out["machine"] = machine
    out["config"] = vars(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"\n{'operation':<17} {'conc':>4} {'mux':>3} {'ops/s':>8} {'p50 ms':>7} "
              f"{'p99 ms':>8} {'max ms':>8} {'errors':>6}")
        for r in out["results"]:
            print(f"{r['op']:<17} {r['concurrency']:>4} {'on' if r['multiplex'] else 'off':>3} "
                  f"{r['ops_per_s']:>8.0f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>6}")
        print("node RSS (MiB): " + ", ".join(f"{x:.0f}" for x in out["rss_mib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
