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
import contextlib
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client import TlsConfig  # noqa: E402
from client.bench.load import run_point  # noqa: E402
from client.bench.local import LocalMedkv  # noqa: E402
from client.bench.targets import MedkvTarget  # noqa: E402

# This script's workload names -> client/bench's.
WORKLOADS = {"put": "put", "get linearizable": "get-linearizable", "get follower": "get-follower"}


def target_for(local: LocalMedkv, args: argparse.Namespace) -> MedkvTarget:
    """TLS and the clinician token on the secure cluster, neither on the insecure one."""
    tls = TlsConfig.from_dir(local.certs_dir) if local.certs_dir else None
    return MedkvTarget(local.addresses, value_size=args.value_size, keys=args.patients, tls=tls,
                       token=local.token_ref, pids=local.pids())


async def run(args: argparse.Namespace, clusters: dict[str, LocalMedkv]) -> list[dict[str, Any]]:
    targets = {name: target_for(local, args) for name, local in clusters.items()}
    try:
        for target in targets.values():
            await target.prepare(list(WORKLOADS.values()))
        rows = []
        for kind, workload in WORKLOADS.items():
            for c in [int(x) for x in args.concurrency.split(",")]:
                got: dict[str, list[Any]] = {"secure": [], "insecure": []}
                for r in range(args.rounds):
                    order = ("secure", "insecure") if r % 2 == 0 else ("insecure", "secure")
                    for name in order:
                        t = targets[name]
                        got[name].append(await run_point(
                            t.operation(workload), system=name, workload=workload,
                            concurrency=c, warmup=0.0, duration=args.seconds,
                            server_pids=t.server_pids()))
                row: dict[str, Any] = {"op": kind, "concurrency": c}
                for name, results in got.items():
                    row[name] = {
                        "ops_per_s": statistics.median(x.ops_per_s for x in results),
                        "p50_ms": statistics.median(x.latency.p50 for x in results),
                        "rounds": [round(x.ops_per_s) for x in results],
                        "errors": sum(x.errors for x in results),
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
        for t in targets.values():
            await t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    for var in ("MEDKV_TOKEN", "MEDKV_TLS_DIR"):  # each client here is given its own
        os.environ.pop(var, None)
    machine = (f"{os.cpu_count()} cpus, {platform.platform()}, Python {platform.python_version()}; "
               "two 3-node clusters + load generator on the same machine")
    print(f"machine: {machine}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        clusters: dict[str, LocalMedkv] = {}
        for name in ("secure", "insecure"):
            extra = ("--insecure",) if name == "insecure" else ()
            clusters[name] = stack.enter_context(
                LocalMedkv(nodes=3, partitions=args.partitions, extra=extra))
        rows = asyncio.run(run(args, clusters))
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
