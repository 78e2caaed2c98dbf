"""The arithmetic of a benchmark point: latency percentiles and CPU accounting.

Kept apart from the load generator and free of IO except reading
/proc/PID/stat, so the unit tests can check every figure the report prints
against a hand-computed one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in [0, 1]) of already sorted values.

    Nearest rank, not interpolation: p99 of 100 samples is the 99th smallest,
    a latency some request really saw. 0.0 for no samples (a point where
    nothing completed reports ops = 0, which the reader sees first).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"percentile {p} is outside [0, 1]")
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(p * n))  # 1-based
    return float(sorted_values[rank - 1])


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds, from per-call latencies in seconds."""

    p50: float
    p99: float
    p999: float
    mean: float
    max: float

    @classmethod
    def of(cls, latencies_s: Iterable[float]) -> LatencySummary:
        values = sorted(latencies_s)
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        ms = 1000.0
        return cls(
            p50=percentile(values, 0.50) * ms,
            p99=percentile(values, 0.99) * ms,
            p999=percentile(values, 0.999) * ms,
            mean=sum(values) / len(values) * ms,
            max=values[-1] * ms,
        )


def parse_proc_stat(text: str) -> float:
    """utime + stime, in seconds, from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces or
    parentheses itself, so the fields are counted after the *last* ')':
    state is field 3, utime field 14 and stime field 15 (proc(5)).
    """
    head, paren, tail = text.rpartition(")")
    if not paren or "(" not in head:
        raise ValueError("not a /proc/PID/stat line")
    rest = tail.split()
    if len(rest) < 13:
        raise ValueError("a /proc/PID/stat line with too few fields")
    utime, stime = int(rest[11]), int(rest[12])  # fields 14, 15; rest[0] is field 3
    return (utime + stime) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a live process has used; None if gone."""
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError):
        return None


def cpu_snapshot(pids: Iterable[int]) -> dict[int, float]:
    """pid -> CPU seconds now, for the pids that are alive."""
    out = {}
    for pid in pids:
        seconds = process_cpu_seconds(pid)
        if seconds is not None:
            out[pid] = seconds
    return out


def cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float | None:
    """CPU seconds the processes used between two snapshots, summed.

    Only processes present in both count (one that died or restarted in
    between has no meaningful difference); None when there is none, so a
    report can say "unknown" rather than a misleading 0.
    """
    common = [pid for pid in before if pid in after]
    if not common:
        return None
    return sum(max(0.0, after[pid] - before[pid]) for pid in common)


def per_op(cpu_seconds: float | None, ops: int) -> float | None:
    """CPU seconds per operation (None when unknown or nothing completed)."""
    if cpu_seconds is None or ops <= 0:
        return None
    return cpu_seconds / ops
