"""Command line of the fault-injection suite.

    python -m jepsen_like run --workload registers --nemesis partition-random-halves,kill \\
        --time 60 --nodes 5 --concurrency 5 --seed 1 --out out/run1 [--partitions 8] [--keep]
    python -m jepsen_like soak --out out/soak [--time 60] [--workloads all] [--nemeses all]
    python -m jepsen_like list

`run` exits 0 only when every checker proved the history valid (an "unknown"
verdict exits 2, an invalid one 1). `soak` runs the matrix of workloads x
nemeses, one `run` per cell in its own process, writes index.md / index.json
with one row per run, and exits non-zero if any run was not valid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# gRPC's C core logs connection churn at INFO; faults make plenty of it.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from jepsen_like.nemesis import NEMESES, STANDARD_NEMESES
from jepsen_like.runner import Run, RunConfig
from jepsen_like.workloads import WORKLOADS
from jepsen_like.workloads.registers import PLANTED_BUGS

EXIT_INVALID = 1
EXIT_UNKNOWN = 2
EXIT_INTERRUPTED = 130


def _pair(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    a = float(lo)
    b = float(hi) if sep else a
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError("expected MIN:MAX seconds with 0 <= MIN <= MAX")
    return a, b


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument(
        "--nemesis", default="none",
        help="comma-separated nemeses, alternated (none: no faults); see `list`",
    )
    p.add_argument("--time", type=float, default=30.0, help="seconds of workload under faults")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="directory for the run's results")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    p.add_argument("--quiet", type=_pair, default=(2.0, 4.0), metavar="MIN:MAX",
                   help="seconds without fault before each fault window")
    p.add_argument("--fault", type=_pair, default=(3.0, 6.0), metavar="MIN:MAX",
                   help="seconds each fault holds")
    p.add_argument("--op-timeout", type=float, default=4.0)
    p.add_argument("--recovery-timeout", type=float, default=60.0)
    p.add_argument(
        "--planted-bug", choices=PLANTED_BUGS, default=None,
        help="TEST ONLY: make the client lie, to prove the checkers catch it",
    )


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        workload=args.workload,
        out=args.out,
        nemesis=args.nemesis,
        time_s=args.time,
        nodes=args.nodes,
        concurrency=args.concurrency,
        seed=args.seed,
        partitions=args.partitions,
        replicas=args.replicas,
        keep=args.keep,
        planted_bug=args.planted_bug,
        quiet_s=args.quiet,
        fault_s=args.fault,
        op_timeout=args.op_timeout,
        recovery_timeout=args.recovery_timeout,
    )


def _echo(message: str) -> None:
    print(message, flush=True)


async def _run_main(cfg: RunConfig) -> int:
    loop = asyncio.get_running_loop()
    the_run = Run(cfg, _echo)
    main = asyncio.current_task()

    def interrupt() -> None:
        # Ctrl-C and SIGTERM tear down alike: the run's finally stops every node.
        # The flag is set first, so the run ends as interrupted even if some
        # await deep inside swallows the cancellation.
        the_run.interrupt()
        if main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    result = await the_run.execute()
    if result.verdict == "valid":
        return 0
    return EXIT_UNKNOWN if result.verdict == "unknown" else EXIT_INVALID


def cmd_run(args: argparse.Namespace) -> int:
    if args.nodes < 3 or args.concurrency < 1 or args.time <= 0:
        print("need --nodes >= 3, --concurrency >= 1, --time > 0", file=sys.stderr)
        return 2
    try:
        cfg = _config(args)
        return asyncio.run(_run_main(cfg))
    except ValueError as exc:
        print(f"jepsen_like: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the cluster was torn down", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_list(_args: argparse.Namespace) -> int:
    print("workloads: " + ", ".join(sorted(WORKLOADS)))
    print("nemeses:   " + ", ".join(STANDARD_NEMESES) + ", none")
    planted = [n for n, cls in NEMESES.items() if cls.planted]
    print("planted (test-only, outside the failure model): nemeses " + ", ".join(planted)
          + "; --planted-bug " + ", ".join(PLANTED_BUGS))
    return 0


# -- soak --------------------------------------------------------------------------


def _names(text: str, known: list[str], what: str) -> list[str]:
    if text == "all":
        return list(known)
    names = [s.strip() for s in text.split(",") if s.strip()]
    for n in names:
        if n not in known and not (what == "nemesis" and n == "none"):
            raise ValueError(f"unknown {what} {n!r}")
    return names


def _cells(spec: str) -> list[tuple[str, str]]:
    """"registers:kill,append:partition-leader+kill" -> [(workload, "n1,n2"), ...]."""
    cells = []
    for item in spec.split(","):
        workload, sep, nemesis = item.strip().partition(":")
        if not sep or workload not in WORKLOADS:
            raise ValueError(f"a cell is WORKLOAD:NEMESIS[+NEMESIS...], not {item!r}")
        names = nemesis.split("+")
        for n in names:
            if n not in NEMESES and n != "none":
                raise ValueError(f"unknown nemesis {n!r}")
        cells.append((workload, ",".join(names)))
    return cells


def _row(workload: str, nemesis: str, out: Path, code: int | None, wall: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "workload": workload,
        "nemesis": nemesis,
        "dir": out.name,
        "ops": 0,
        "ok": 0,
        "info": 0,
        "fault_windows": 0,
        "verdict": "error",
        "exit": code,
        "wall_s": round(wall, 1),
        "failing": "",
    }
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        row["verdict"] = "timeout" if code is None else "error"
        return row
    counts = summary.get("counts", {})
    row["ops"] = sum(sum(c.values()) for c in counts.values())
    row["ok"] = sum(c.get("ok", 0) for c in counts.values())
    row["info"] = sum(c.get("info", 0) for c in counts.values())
    row["fault_windows"] = len(summary.get("schedule", []))
    row["verdict"] = summary.get("verdict", "unknown")
    row["failing"] = ", ".join(
        f"{name}: {res.get('verdict')}"
        for name, res in summary.get("checkers", {}).items()
        if res.get("verdict") != "valid"
    )
    return row


def _write_index(out: Path, rows: list[dict[str, Any]]) -> str:
    cols = ["workload", "nemesis", "ops", "ok", "info", "fault_windows", "verdict", "wall_s", "failing"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    table = "\n".join(lines)
    (out / "index.md").write_text(
        "# jepsen_like soak\n\nOne row per run; each run's report is DIR/report.html.\n\n"
        + table + "\n"
    )
    (out / "index.json").write_text(json.dumps(rows, indent=2))
    return table


def _child_env() -> dict[str, str]:
    """This process's environment, with the repository importable from anywhere."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cmd_soak(args: argparse.Namespace) -> int:
    try:
        if args.cells:
            cells = _cells(args.cells)
        else:
            workloads = _names(args.workloads, sorted(WORKLOADS), "workload")
            nemeses = _names(args.nemeses, STANDARD_NEMESES, "nemesis")
            cells = [(w, n) for w in workloads for n in nemeses]
    except ValueError as exc:
        print(f"jepsen_like soak: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for i, (workload, nemesis) in enumerate(cells):
        out = args.out / f"{i + 1:02d}-{workload}-{nemesis.replace(',', '+')}"
        if args.budget and time.monotonic() - started + args.time + 30 > args.budget:
            rows.append({**_row(workload, nemesis, out, None, 0.0), "verdict": "skipped"})
            continue
        cmd = [
            sys.executable, "-m", "jepsen_like", "run",
            "--workload", workload, "--nemesis", nemesis, "--time", str(args.time),
            "--nodes", str(args.nodes), "--concurrency", str(args.concurrency),
            "--seed", str(args.seed + i), "--partitions", str(args.partitions),
            "--out", str(out),
        ]
        print(f"== [{i + 1}/{len(cells)}] {workload} x {nemesis}", flush=True)
        t0 = time.monotonic()
        code: int | None
        with open(args.out / f"{out.name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
            try:
                code = proc.wait(timeout=args.time + args.run_slack)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # the run tears its cluster down
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = None
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=120)
                raise
        row = _row(workload, nemesis, out, code, time.monotonic() - t0)
        rows.append(row)
        print(f"   {row['verdict']}: {row['ops']} ops, {row['fault_windows']} faults, "
              f"{row['wall_s']}s {row['failing']}", flush=True)
        _write_index(args.out, rows)
    table = _write_index(args.out, rows)
    print(table)
    bad = [r for r in rows if r["verdict"] not in ("valid", "skipped")]
    print(f"{len(rows) - len(bad)}/{len(rows)} runs valid or skipped; index: {args.out / 'index.md'}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jepsen_like", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one workload under nemeses against a fresh cluster")
    _add_run_args(r)
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("soak", help="every workload x every nemesis, one run each")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--time", type=float, default=60.0, help="seconds per run")
    s.add_argument("--workloads", default="all", help="comma-separated, or all")
    s.add_argument("--nemeses", default="all", help="comma-separated (none allowed), or all")
    s.add_argument(
        "--cells", default="",
        help="instead of the matrix: WORKLOAD:NEMESIS[+NEMESIS] pairs, comma-separated "
        "(+ combines nemeses in one run)",
    )
    s.add_argument("--nodes", type=int, default=5)
    s.add_argument("--concurrency", type=int, default=5)
    s.add_argument("--partitions", type=int, default=8)
    s.add_argument("--seed", type=int, default=1, help="run i uses seed + i")
    s.add_argument("--budget", type=float, default=0.0,
                   help="total seconds; runs that would not fit are skipped (0: no limit)")
    s.add_argument("--run-slack", type=float, default=420.0,
                   help="seconds a run may take beyond --time before it is stopped")
    s.set_defaults(func=cmd_soak)
    ls = sub.add_parser("list", help="the workloads and nemeses")
    ls.set_defaults(func=cmd_list)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
