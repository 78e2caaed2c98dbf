"""What access control and audit cost on a real cluster, measured in one run.

Starts two local 3-node clusters with scripts/cluster: one as `up` makes it
(mutual TLS, a bearer token on every call, the policy, an audit entry per
access) and one `up --insecure` (plaintext, none of it). Both get the same
records; then each workload (put, linearizable get, follower get) at each
concurrency runs on one cluster and then the other, for several alternating
rounds, so drift on a shared machine hits both alike. Prints ops/s and
latency for each, and the cost: 1 - secure/insecure throughput (median of
the rounds).

    python scripts/bench-access.py [--seconds 5] [--rounds 3] [--concurrency 16,64]
                                   [--json FILE]

A benchmark: it reports figures and never passes or fails on time. The
servers and the load generator share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client import AsyncClient, TlsConfig  # noqa: E402

CLUSTER = ROOT / "scripts" / "cluster"
WORKLOADS = ("put", "get linearizable", "get follower")


def cluster(*args: str) -> str:
    proc = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"scripts/cluster {args[0]} failed")
    return proc.stdout.strip()


def client_for(data_dir: Path, addresses: list[str], secure: bool) -> AsyncClient:
    if not secure:
        return AsyncClient(addresses, timeout=20.0, tls=None, token=None)
    return AsyncClient(addresses, timeout=20.0, tls=TlsConfig.from_dir(data_dir / "certs"),
                       token=f"@{data_dir / 'tokens' / 'clinician.token'}")


def _bench_cluster() -> Any:
    """scripts/bench-cluster.py as a module: its load phase is the one measured here."""
    spec = importlib.util.spec_from_file_location("bench_cluster", ROOT / "scripts" / "bench-cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


phase = _bench_cluster().phase


async def run(args: argparse.Namespace, clusters: dict[str, tuple[Path, list[str]]]) -> list[dict[str, Any]]:
    value = os.urandom(args.value_size)
    clients = {name: client_for(d, a, name == "secure") for name, (d, a) in clusters.items()}
    try:
        for kv in clients.values():
            for i in range(args.patients):
                await kv.put(f"bench-{i}", "seed", value)
        rows = []
        for kind in WORKLOADS:
            for c in [int(x) for x in args.concurrency.split(",")]:
                got: dict[str, list[dict[str, Any]]] = {"secure": [], "insecure": []}
                for r in range(args.rounds):
                    order = ("secure", "insecure") if r % 2 == 0 else ("insecure", "secure")
                    for name in order:
                        got[name].append(await phase(clients[name], kind, c, args.seconds, value,
                                                     args.patients))
                row: dict[str, Any] = {"op": kind, "concurrency": c}
                for name, results in got.items():
                    row[name] = {
                        "ops_per_s": statistics.median(x["ops_per_s"] for x in results),
                        "p50_ms": statistics.median(x["p50_ms"] for x in results),
                        "rounds": [round(x["ops_per_s"]) for x in results],
                        "errors": sum(x["errors"] for x in results),
                    }
                row["cost_pct"] = 100 * (1 - row["secure"]["ops_per_s"] / row["insecure"]["ops_per_s"])
                rows.append(row)
                print(f"  {kind:<17} c={c:<3} secure {row['secure']['ops_per_s']:7.0f} ops/s "
                      f"(p50 {row['secure']['p50_ms']:5.1f} ms)  insecure "
                      f"{row['insecure']['ops_per_s']:7.0f} ops/s (p50 "
                      f"{row['insecure']['p50_ms']:5.1f} ms)  cost {row['cost_pct']:5.1f}%",
                      file=sys.stderr, flush=True)
        return rows
    finally:
        for kv in clients.values():
            await kv.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--base-port", type=int, default=7600)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    for var in ("MEDKV_TOKEN", "MEDKV_TLS_DIR"):  # each client here is given its own
        os.environ.pop(var, None)
    machine = (f"{os.cpu_count()} cpus, {platform.platform()}, Python {platform.python_version()}; "
               "two 3-node clusters + load generator on the same machine")
    print(f"machine: {machine}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="medkv-bench-access-"))
    clusters: dict[str, tuple[Path, list[str]]] = {}
    try:
        for i, name in enumerate(("secure", "insecure")):
            d = root / name
            extra = ("--insecure",) if name == "insecure" else ()
            addrs = cluster("up", "--nodes", "3", "--data-dir", str(d), "--base-port",
                            str(args.base_port + 10 * i), "--partitions", str(args.partitions),
                            *extra).split(",")
            clusters[name] = (d, addrs)
        rows = asyncio.run(run(args, clusters))
    finally:
        for d, _ in clusters.values():
            subprocess.run([str(CLUSTER), "down", "--data-dir", str(d)], capture_output=True,
                           check=False)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'operation':<17} {'conc':>4} {'secure ops/s':>12} {'insecure ops/s':>14} "
          f"{'secure p50':>10} {'insecure p50':>12} {'cost':>6}")
    for r in rows:
        print(f"{r['op']:<17} {r['concurrency']:>4} {r['secure']['ops_per_s']:>12.0f} "
              f"{r['insecure']['ops_per_s']:>14.0f} {r['secure']['p50_ms']:>8.1f}ms "
              f"{r['insecure']['p50_ms']:>10.1f}ms {r['cost_pct']:>5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "config": vars(args),
                                               "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
