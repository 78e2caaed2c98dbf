"""scripts/bench: throughput, latency and CPU per operation of medkv, and
optionally of etcd and a bare Python gRPC echo, measured in one run by one
asyncio load generator. Documented in docs/benchmarks.md.

    scripts/bench [--workloads put,get-linearizable,get-follower,mixed,batch]
                  [--concurrency 1,16,64] [--warmup 2] [--duration 6]
                  [--addr HOST:PORT,...] [--compare etcd] [--echo]
                  [--json FILE] [--plot FILE | --no-plot]

A benchmark: it reports figures and never passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client import TlsConfig
from client.auth import token_source
from client.bench import report
from client.bench.echo import LocalEcho
from client.bench.load import Point, run_point
from client.bench.local import BenchError, LocalMedkv, is_local, listening_pids, note, rss_mib
from client.bench.targets import WORKLOADS, EchoTarget, MedkvTarget, Target
from client.tls import TLS_DIR_ENV


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of integers") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("concurrency levels are integers >= 1")
    return levels


def _workloads(text: str) -> list[str]:
    chosen = _csv(text)
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(WORKLOADS)}"
        )
    return chosen


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", type=_workloads, default=list(WORKLOADS),
                    help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)")
    ap.add_argument("--concurrency", type=_levels, default=[1, 16, 64],
                    help="concurrent calls in flight, comma-separated (default 1,16,64)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per point")
    ap.add_argument("--duration", type=float, default=6.0, help="measured seconds per point")
    ap.add_argument("--value-size", type=int, default=200, help="bytes per record value")
    ap.add_argument("--keys", type=int, default=1000,
                    help="patients (keys) the workloads spread over (default 1000)")
    ap.add_argument("--batch-size", type=int, default=100, help="records per batch call")
    ap.add_argument("--addr", help="HOST:PORT,... of a running cluster (credentials from "
                    "$MEDKV_TLS_DIR / $MEDKV_TOKEN) instead of a local 3-node one")
    ap.add_argument("--token", help="with --addr: the token (a JWT or @FILE) instead of "
                    "$MEDKV_TOKEN")
    ap.add_argument("--nodes", type=int, default=3, help="nodes of the local cluster")
    ap.add_argument("--partitions", type=int, default=16, help="partitions of the local cluster")
    ap.add_argument("--compare", choices=["etcd"], help="also run etcd (and the echo) in this run")
    ap.add_argument("--echo", action="store_true",
                    help="also measure a one-hop Python gRPC echo (implied by --compare)")
    ap.add_argument("--etcd-bin", help="the etcd binary (default: etcd on PATH, else install "
                    "Debian's etcd-server)")
    ap.add_argument("--no-install", action="store_true",
                    help="never apt-get install etcd-server; fail instead")
    ap.add_argument("--json", metavar="FILE", type=Path, help="write every figure as JSON here")
    ap.add_argument("--plot", metavar="FILE", type=Path, default=Path("medkv-bench.png"),
                    help="the PNG plot (default %(default)s)")
    ap.add_argument("--no-plot", action="store_true", help="write no plot")
    return ap


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "loadavg_before": list(os.getloadavg()),
    }


async def measure(target: Target, workloads: Sequence[str], levels: Sequence[int],
                  args: argparse.Namespace, out: list[Point]) -> None:
    """Every (workload, concurrency) point of one target, printed as it lands."""
    try:
        await target.prepare(workloads)
        for workload in workloads:
            op = target.operation(workload)
            for c in levels:
                point = await run_point(op, system=target.system, workload=workload,
                                        concurrency=c, warmup=args.warmup,
                                        duration=args.duration, server_pids=target.server_pids())
                out.append(point)
                note(report.progress_line(point))
    finally:
        await target.close()


def _token_value(ref: str | None) -> str | None:
    source = token_source(ref)
    return source.token() if source is not None else None


async def run(args: argparse.Namespace, systems: dict[str, Any]) -> list[Point]:
    points: list[Point] = []
    common = {"value_size": args.value_size, "keys": args.keys, "batch_size": args.batch_size}
    tls_dir: Path | None = None
    token: str | None = None
    echo: LocalEcho | None = None
    if args.addr:
        addresses = _csv(args.addr)
        pids = []
        if all(is_local(a) for a in addresses):
            pids = listening_pids(int(a.rsplit(":", 1)[1]) for a in addresses)
        systems["medkv"] = {"cluster": "--addr", "addresses": addresses, "server_pids": pids}
        if not pids:
            note("bench: no local process listens on those addresses: server CPU is not measured")
        note(f"medkv at {args.addr} ({len(pids)} local server processes)")
        await measure(MedkvTarget(addresses, token=args.token, pids=pids, **common),
                      args.workloads, args.concurrency, args, points)
        if os.environ.get(TLS_DIR_ENV):
            tls_dir = Path(os.environ[TLS_DIR_ENV])
        token = _token_value(args.token or os.environ.get("MEDKV_TOKEN"))
    else:
        note(f"medkv: starting a local secure {args.nodes}-node cluster "
             f"({args.partitions} partitions) with scripts/cluster")
        with LocalMedkv(nodes=args.nodes, partitions=args.partitions) as local:
            pids = local.pids()
            tls = TlsConfig.from_dir(local.certs_dir) if local.certs_dir else None
            await measure(MedkvTarget(local.addresses, tls=tls, token=local.token_ref, pids=pids,
                                      **common), args.workloads, args.concurrency, args, points)
            systems["medkv"] = {"cluster": "local", "nodes": args.nodes,
                                "partitions": args.partitions, "transport": "mutual TLS + JWT",
                                "rss_mib_after": [round(x, 1) for x in rss_mib(pids)]}
            token = _token_value(local.token_ref)
            # The echo serves with a copy of these certificates after the cluster is down.
            echo = LocalEcho(local.certs_dir) if (args.echo or args.compare) else None
    try:
        await _others(args, systems, points, common, echo, tls_dir, token)
    finally:
        if echo is not None:
            echo.close()
    return points


async def _others(args: argparse.Namespace, systems: dict[str, Any], points: list[Point],
                  common: dict[str, Any], echo: LocalEcho | None, tls_dir: Path | None,
                  token: str | None) -> None:
    """etcd and the echo, after medkv's cluster is down."""
    if args.compare == "etcd":
        from client.bench.etcd import EtcdTarget, LocalEtcd, ensure_etcd, etcd_version

        binary = ensure_etcd(args.etcd_bin, install=not args.no_install)
        version = etcd_version(binary)
        note(f"etcd {version}: starting 3 members on 127.0.0.1 (default durability, plaintext)")
        with LocalEtcd(binary) as etcd:
            systems["etcd"] = {"version": version, "members": 3, "transport": "plaintext",
                               "client": "aetcd"}
            await measure(EtcdTarget(etcd.endpoints, pids=etcd.pids(), **common),
                          args.workloads, args.concurrency, args, points)
            systems["etcd"]["rss_mib_after"] = [round(x, 1) for x in rss_mib(etcd.pids())]
    if args.echo or args.compare:
        if echo is None:
            echo = LocalEcho(tls_dir)
        with echo:
            transports = "plaintext" + (" and mutual TLS" if echo.tls_dir else "")
            note(f"echo: one-hop Python gRPC echo server ({transports})")
            creds = TlsConfig.from_dir(echo.tls_dir).credentials() if echo.tls_dir else None
            target = EchoTarget(echo.address, value_size=args.value_size,
                                tls_address=echo.tls_address, credentials=creds, token=token,
                                pids=echo.pids())
            systems["echo"] = {"workloads": target.workloads, "payload_bytes": args.value_size}
            await measure(target, target.workloads, args.concurrency, args, points)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.warmup < 0 or args.duration <= 0:
        note("bench: --warmup must be >= 0 and --duration > 0")
        return 2
    if args.batch_size < 1 or args.keys < 1 or args.value_size < 0:
        note("bench: --batch-size and --keys must be >= 1, --value-size >= 0")
        return 2
    machine = machine_info()
    note(f"machine: {machine['cpus']} cpus, {machine['platform']}, Python {machine['python']}, "
         f"load average {' '.join(f'{x:.2f}' for x in machine['loadavg_before'])}; servers and "
         "the load generator share these cores")
    systems: dict[str, Any] = {}
    started = time.time()
    try:
        points = asyncio.run(run(args, systems))
    except BenchError as exc:
        note(f"bench: {exc}")
        return 1
    machine["loadavg_after"] = list(os.getloadavg())
    config = {
        "workloads": args.workloads, "concurrency": args.concurrency, "warmup_s": args.warmup,
        "duration_s": args.duration, "value_size": args.value_size, "keys": args.keys,
        "batch_size": args.batch_size, "compare": args.compare,
        "echo": bool(args.echo or args.compare), "load_generator": "one asyncio process",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
    }
    print()
    print(report.table(points))
    rows = report.comparison(points)
    if rows:
        print()
        print(report.comparison_table(rows))
    if args.json:
        import json

        doc = report.document(points, machine=machine, config=config, systems=systems)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        note(f"bench: wrote {args.json}")
    if not args.no_plot:
        title = (f"medkv bench, {machine['cpus']} cpus, load {machine['loadavg_before'][0]:.1f}, "
                 f"{args.value_size} B values, {args.duration:g} s per point")
        if report.plot(points, args.plot, title):
            note(f"bench: wrote {args.plot}")
        else:
            note("bench: no plot: matplotlib is missing (scripts/bench installs it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
