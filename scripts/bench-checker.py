#!/usr/bin/env python3
"""Benchmark the linearizability checker on simulated linearizable histories.

Generates a history from random concurrent clients against atomic registers
(jepsen_like.checkers.models.simulate_register_history: linearizable by
construction, with some indeterminate ops), times the checker on it, and
prints ops/s and the machine. A benchmark reports figures: it fails only if
the checker gets the verdict wrong, never on time.

    .venv/bin/python scripts/bench-checker.py                 # 10,000 ops, 100 keys, 10 clients
    .venv/bin/python scripts/bench-checker.py --ops 50000 --keys 10 --model versioned-register
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepsen_like.checkers.linearizable import check_linearizable
from jepsen_like.checkers.models import SimConfig, model_for, simulate_register_history


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores visible; {platform.system()} {platform.release()}; "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--info-rate", type=float, default=0.02)
    ap.add_argument("--model", default="register", choices=["register", "versioned-register"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--unique-values", action="store_true", help="a fresh value per write (default: 5 values)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    args = ap.parse_args()

    cfg = SimConfig(
        ops=args.ops,
        keys=args.keys,
        concurrency=args.concurrency,
        info_rate=args.info_rate,
        versioned=args.model == "versioned-register",
        unique_values=args.unique_values,
    )
    history = simulate_register_history(cfg, seed=args.seed)
    model = model_for(args.model)()
    outcomes: dict[str, int] = {}
    for op in history:
        outcomes[op.outcome or "pending"] = outcomes.get(op.outcome or "pending", 0) + 1
    print(f"machine: {machine()}")
    print(
        f"history: {len(history)} ops, {args.keys} keys, {args.concurrency} concurrent clients, "
        f"model {args.model}, {'unique' if args.unique_values else '5'} values, outcomes {dict(sorted(outcomes.items()))}"
    )

    best = float("inf")
    result = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        result = check_linearizable(history, model)
        best = min(best, time.perf_counter() - t0)
    assert result is not None
    print(
        f"valid history:   verdict {result.verdict}, {result.steps} search steps, "
        f"{best:.3f} s, {len(history) / best:,.0f} ops/s"
    )

    # The same history with one read made stale: the checker must say so.
    corrupted = copy.deepcopy(history)
    victim = next((o for o in reversed(corrupted) if o.kind == "read" and o.outcome == "ok"), None)
    bad_verdict = "skipped (no read)"
    if victim is not None:
        victim.output = {**victim.output, "value": "never-written"}
        t0 = time.perf_counter()
        bad = check_linearizable(corrupted, model)
        elapsed = time.perf_counter() - t0
        bad_verdict = bad.verdict
        print(
            f"corrupted copy:  verdict {bad.verdict} on key(s) {[k.key for k in bad.invalid]}, "
            f"{elapsed:.3f} s, {len(corrupted) / elapsed:,.0f} ops/s"
        )
    # "unknown" (search budget spent) is an honest answer; a wrong one is not.
    ok = result.verdict != "invalid" and bad_verdict != "valid"
    if not ok:
        print("WRONG VERDICT: the checker disagrees with the simulation", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
