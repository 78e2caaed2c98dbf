"""Throughput and latency of a real local cluster, for anyone to rerun.

Starts a cluster with scripts/cluster on 127.0.0.1, drives it with asyncio
clients at several concurrency levels for a fixed time per phase, and prints
a table: operations per second, p50/p99/max latency, errors; then the nodes'
memory (RSS). Servers and load generator share this machine's cores, so the
figures are a floor for what the servers alone could do.

    scripts/bench-cluster [--nodes 3] [--seconds 8] [--concurrency 1,16,64]
                          [--value-size 200] [--json]

The load generator and the cluster handling are client/bench's, which
scripts/bench (more workloads, CPU per operation, etcd beside it) also uses.
A benchmark: it reports figures and never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client import TlsConfig  # noqa: E402
from client.bench.load import run_point  # noqa: E402
from client.bench.local import LocalMedkv, rss_mib  # noqa: E402
from client.bench.targets import MedkvTarget  # noqa: E402

# This script's phase names -> client/bench workloads.
PHASES = {"put": "put", "get linearizable": "get-linearizable", "get follower": "get-follower"}


def legacy_row(kind: str, point: Any) -> dict[str, Any]:
    """A client/bench Point in this script's (and bench-access's) row format."""
    return {
        "op": kind, "concurrency": point.concurrency, "ops": point.calls,
        "ops_per_s": point.ops_per_s, "p50_ms": point.latency.p50, "p99_ms": point.latency.p99,
        "max_ms": point.latency.max, "mean_ms": point.latency.mean, "errors": point.errors,
    }


async def phase(target: MedkvTarget, kind: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """One workload at one concurrency for `seconds`, no warm-up (as this script always ran)."""
    point = await run_point(target.operation(PHASES[kind]), system="medkv", workload=PHASES[kind],
                            concurrency=concurrency, warmup=0.0, duration=seconds,
                            server_pids=target.server_pids())
    return legacy_row(kind, point)


async def run(args: argparse.Namespace, local: LocalMedkv) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    tls = TlsConfig.from_dir(local.certs_dir) if local.certs_dir else None
    target = MedkvTarget(local.addresses, value_size=args.value_size, keys=args.patients, tls=tls,
                         token=local.token_ref, pids=local.pids())
    results = []
    try:
        await target.prepare(list(PHASES.values()))
        for kind in PHASES:
            for c in levels:
                r = await phase(target, kind, c, args.seconds)
                results.append(r)
                print(f"  {kind:<17} c={c:<4} {r['ops_per_s']:>8.0f} ops/s  p50 {r['p50_ms']:6.2f} ms"
                      f"  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}", file=sys.stderr)
    finally:
        await target.close()
    return {"results": results, "rss_mib": rss_mib(local.pids())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--base-port", type=int, default=None, help="default: free ports")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    machine = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
    }
    print(f"machine: {machine['cpus']} cpus, {machine['platform']}, Python {machine['python']}; "
          f"{args.nodes} nodes + load generator on the same machine", file=sys.stderr)
    with LocalMedkv(nodes=args.nodes, partitions=args.partitions, base_port=args.base_port) as local:
        out = asyncio.run(run(args, local))
    out["machine"] = machine
    out["config"] = vars(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"\n{'operation':<17} {'conc':>4} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>8} "
              f"{'max ms':>8} {'errors':>6}")
        for r in out["results"]:
            print(f"{r['op']:<17} {r['concurrency']:>4} {r['ops_per_s']:>8.0f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>6}")
        print("node RSS (MiB): " + ", ".join(f"{x:.0f}" for x in out["rss_mib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
