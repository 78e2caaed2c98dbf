"""The load generator: N asyncio workers in this one process drive one
operation for a warm-up and then a fixed measured window.

The window is opened and closed by one monitor task, which also takes the
CPU snapshots of the servers and of this process at those same two moments;
a call counts when it *completes* inside the window. So ops/s, latencies and
CPU per op all describe the same interval, and calls still in flight when
the window closes (drained afterwards) count nowhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.bench.stats import LatencySummary, cpu_snapshot, cpu_used, per_op

# One call of a workload: (worker index, the worker's call number) -> how
# many records the call wrote or read (1, or a batch's size).
Operation = Callable[[int, int], Awaitable[int]]

# After a failed call a worker pauses this long, so a refusing server is not
# hammered in a tight loop (errors are counted, not retried).
ERROR_PAUSE_S = 0.01


@dataclass
class Point:
    """One (system, workload, concurrency) measurement."""

    system: str
    workload: str
    concurrency: int
    seconds: float  # the measured window
    calls: int  # completed calls in the window
    records: int  # records they carried (== calls but for batch)
    errors: int
    latency: LatencySummary  # per call
    server_cpu_s: float | None  # the servers' CPU seconds in the window
    loadgen_cpu_s: float | None  # this process's
    server_pids: list[int] = field(default_factory=list)
    first_error: str | None = None  # an exception type and gRPC code, never a message
    loadavg: tuple[float, float, float] | None = None

    @property
    def ops_per_s(self) -> float:
        """Records per second: what a reader compares (calls/s but for batch)."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_cpu_per_op(self) -> float | None:
        return per_op(self.server_cpu_s, self.records)

    @property
    def loadgen_cpu_per_op(self) -> float | None:
        return per_op(self.loadgen_cpu_s, self.records)

    def as_dict(self) -> dict[str, Any]:
        lat = self.latency
        return {
            "system": self.system,
            "workload": self.workload,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 4),
            "calls": self.calls,
            "records": self.records,
            "ops": self.records,
            "ops_per_s": round(self.ops_per_s, 2),
            "calls_per_s": round(self.calls / self.seconds, 2) if self.seconds > 0 else 0.0,
            "errors": self.errors,
            "first_error": self.first_error,
            "latency_ms": {
                "p50": round(lat.p50, 4), "p99": round(lat.p99, 4), "p999": round(lat.p999, 4),
                "mean": round(lat.mean, 4), "max": round(lat.max, 4),
            },
            "cpu": {
                "server_s": _round(self.server_cpu_s),
                "loadgen_s": _round(self.loadgen_cpu_s),
                "server_ms_per_op": _ms(self.server_cpu_per_op),
                "loadgen_ms_per_op": _ms(self.loadgen_cpu_per_op),
                "server_pids": list(self.server_pids),
            },
            "loadavg": list(self.loadavg) if self.loadavg else None,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 5)


def describe_error(exc: BaseException) -> str:
    """The exception's type and, for gRPC errors, the status code: never the
    message, which may quote a key (a patient id) from the request."""
    name = type(exc).__name__
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return f"{name}({code()})"
        except Exception:
            return name
    return name


async def run_point(
    op: Operation,
    *,
    system: str,
    workload: str,
    concurrency: int,
    warmup: float,
    duration: float,
    server_pids: Sequence[int] = (),
) -> Point:
    """Run `op` from `concurrency` workers: `warmup` seconds unmeasured, then
    `duration` seconds measured. Returns when every worker has finished its
    last call (so nothing of this point leaks into the next)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if duration <= 0:
        raise ValueError("duration must be positive")
    latencies: list[float] = []
    counts = {"calls": 0, "records": 0, "errors": 0}
    first_error: list[str] = []
    state = {"measuring": False, "stop": False}
    me = os.getpid()
    pids = [p for p in server_pids if p != me]

    async def worker(w: int) -> None:
        seq = 0
        while not state["stop"]:
            started = time.perf_counter()
            try:
                records = await op(w, seq)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if state["measuring"]:
                    counts["errors"] += 1
                    if not first_error:
                        first_error.append(describe_error(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            finally:
                seq += 1
            if state["measuring"]:
                latencies.append(time.perf_counter() - started)
                counts["calls"] += 1
                counts["records"] += records

    window: dict[str, Any] = {}

    async def monitor() -> None:
        try:
            if warmup > 0:
                await asyncio.sleep(warmup)
            window["servers0"] = cpu_snapshot(pids)
            window["me0"] = cpu_snapshot([me])
            window["t0"] = time.perf_counter()
            state["measuring"] = True
            await asyncio.sleep(duration)
            state["measuring"] = False
            window["t1"] = time.perf_counter()
            window["servers1"] = cpu_snapshot(pids)
            window["me1"] = cpu_snapshot([me])
        finally:
            state["measuring"] = False
            state["stop"] = True

    await asyncio.gather(monitor(), *(worker(w) for w in range(concurrency)))
    return Point(
        system=system,
        workload=workload,
        concurrency=concurrency,
        seconds=window["t1"] - window["t0"],
        calls=counts["calls"],
        records=counts["records"],
        errors=counts["errors"],
        latency=LatencySummary.of(latencies),
        server_cpu_s=cpu_used(window["servers0"], window["servers1"]) if pids else None,
        loadgen_cpu_s=cpu_used(window["me0"], window["me1"]),
        server_pids=pids,
        first_error=first_error[0] if first_error else None,
        loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )
