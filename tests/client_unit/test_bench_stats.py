"""client/bench's arithmetic and accounting: percentiles, /proc CPU figures,
the measured window of the load generator, the comparison's ratios. No
timing assertions: every check holds however slow the machine is."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.bench import report
from client.bench.load import Point, describe_error, run_point
from client.bench.local import is_local, listening_pids
from client.bench.stats import (
    CLOCK_TICKS,
    LatencySummary,
    cpu_snapshot,
    cpu_used,
    parse_proc_stat,
    per_op,
    percentile,
    process_cpu_seconds,
)

# ---------------------------------------------------------------- percentiles


def test_percentile_nearest_rank_of_one_to_hundred() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0


def test_percentile_of_few_samples_is_a_sample() -> None:
    assert percentile([7.0], 0.5) == 7.0
    assert percentile([1.0, 2.0], 0.5) == 1.0
    assert percentile([1.0, 2.0], 0.51) == 2.0
    assert percentile([], 0.99) == 0.0


@pytest.mark.parametrize("p", [-0.01, 1.01, math.nan])
def test_percentile_refuses_out_of_range(p: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], p)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300),
       st.floats(0.0, 1.0))
def test_percentile_is_the_nearest_rank(values: list[float], p: float) -> None:
    values.sort()
    got = percentile(values, p)
    rank = max(1, math.ceil(p * len(values)))
    assert got in values
    assert sum(v <= got for v in values) >= rank  # at least rank samples at or below
    assert sum(v < got for v in values) < rank  # and fewer strictly below


def test_latency_summary_in_milliseconds() -> None:
    lat = LatencySummary.of([0.001 * i for i in range(1, 1001)])  # 1..1000 ms
    assert lat.p50 == pytest.approx(500.0)
    assert lat.p99 == pytest.approx(990.0)
    assert lat.p999 == pytest.approx(999.0)
    assert lat.max == pytest.approx(1000.0)
    assert lat.mean == pytest.approx(500.5)
    assert LatencySummary.of([]) == LatencySummary(0.0, 0.0, 0.0, 0.0, 0.0)


# ------------------------------------------------------------ CPU accounting


def _stat_line(comm: str, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return (f"4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 "
            "3 0 12345 1000000 500 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


@pytest.mark.parametrize("comm", ["python", "my proc", "a) b (c", ")"])
def test_parse_proc_stat_counts_fields_after_the_last_paren(comm: str) -> None:
    assert parse_proc_stat(_stat_line(comm, 150, 50)) == pytest.approx(200 / CLOCK_TICKS)


def test_parse_proc_stat_refuses_garbage() -> None:
    for garbage in ("no parenthesis here", "1 (x) S 1 2"):
        with pytest.raises(ValueError):
            parse_proc_stat(garbage)


def test_process_cpu_seconds_of_a_busy_child_and_a_dead_one() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen([sys.executable, "-c", busy + "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        seconds: float | None = 0.0
        for _ in range(200):  # until the child has burnt its 0.3 s (bounded)
            seconds = process_cpu_seconds(child.pid)
            if seconds is not None and seconds >= 0.3:
                break
            time.sleep(0.05)
        assert seconds is not None and seconds >= 0.3
        assert cpu_snapshot([child.pid, os.getpid()]).keys() == {child.pid, os.getpid()}
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert process_cpu_seconds(child.pid) is None  # reaped: gone from /proc


def test_cpu_used_sums_processes_present_in_both_snapshots() -> None:
    before = {1: 10.0, 2: 5.0, 3: 1.0}
    after = {1: 10.5, 2: 5.25, 4: 99.0}  # 3 died, 4 is new: neither counts
    assert cpu_used(before, after) == pytest.approx(0.75)
    assert cpu_used({1: 2.0}, {1: 1.0}) == 0.0  # a reused pid never counts negative
    assert cpu_used({1: 1.0}, {2: 1.0}) is None
    assert cpu_used({}, {}) is None


def test_per_op() -> None:
    assert per_op(1.5, 1000) == pytest.approx(0.0015)
    assert per_op(None, 1000) is None
    assert per_op(1.0, 0) is None


# ------------------------------------------------------------ load generator


def test_run_point_accounts_calls_records_errors_and_cpu() -> None:
    """A fake operation: every 5th call fails (with a message holding a key),
    the others carry 3 records. Whatever the timing, the point's figures
    must agree with each other."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)

    async def op(w: int, seq: int) -> int:
        await asyncio.sleep(0.001)
        if seq % 5 == 4:
            raise KeyError("patient-secret-17")
        return 3

    try:
        point = asyncio.run(run_point(op, system="fake", workload="batch", concurrency=4,
                                      warmup=0.05, duration=0.3, server_pids=[child.pid]))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert point.calls > 0 and point.records == 3 * point.calls
    assert point.errors > 0 and point.first_error == "KeyError"
    assert point.seconds >= 0.3
    assert point.ops_per_s == pytest.approx(point.records / point.seconds)
    assert 0 < point.latency.p50 <= point.latency.p99 <= point.latency.p999 <= point.latency.max
    assert point.server_pids == [child.pid] and point.server_cpu_s is not None
    assert point.loadgen_cpu_s is not None and point.loadgen_cpu_s >= 0  # 10 ms ticks
    assert point.loadgen_cpu_per_op == pytest.approx(point.loadgen_cpu_s / point.records)
    d = point.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert "patient-secret" not in json.dumps(d)
    assert d["ops"] == point.records and d["calls"] == point.calls


def test_run_point_without_servers_reports_unknown_server_cpu() -> None:
    async def op(w: int, seq: int) -> int:
        await asyncio.sleep(0)
        return 1

    point = asyncio.run(run_point(op, system="fake", workload="put", concurrency=1,
                                  warmup=0.0, duration=0.05))
    assert point.server_cpu_s is None and point.server_cpu_per_op is None
    assert point.as_dict()["cpu"]["server_ms_per_op"] is None


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"duration": 0.0}])
def test_run_point_refuses_nonsense(bad: dict[str, float]) -> None:
    async def op(w: int, seq: int) -> int:
        return 1

    kwargs = {"concurrency": 1, "warmup": 0.0, "duration": 0.1, **bad}
    with pytest.raises(ValueError):
        asyncio.run(run_point(op, system="x", workload="put", **kwargs))  # type: ignore[arg-type]


def test_describe_error_never_quotes_the_message() -> None:
    class FakeRpcError(Exception):
        def code(self) -> str:
            return "StatusCode.UNAVAILABLE"

    assert describe_error(FakeRpcError("patient-17 gone")) == "FakeRpcError(StatusCode.UNAVAILABLE)"
    assert describe_error(ValueError("patient-17")) == "ValueError"


# ------------------------------------------------------------- local helpers


def test_listening_pids_finds_this_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert os.getpid() in listening_pids([port])
    assert os.getpid() not in listening_pids([port])  # closed: nobody listens


def test_is_local() -> None:
    assert is_local("127.0.0.1:7101") and is_local("localhost:1") and is_local("[::1]:5")
    assert not is_local("10.0.0.5:7101")


# ------------------------------------------------------------------- report


def _point(system: str, workload: str, c: int, records: int, p50: float, cpu: float) -> Point:
    lat = LatencySummary(p50, p50 * 2, p50 * 3, p50, p50 * 4)
    return Point(system=system, workload=workload, concurrency=c, seconds=2.0, calls=records,
                 records=records, errors=0, latency=lat, server_cpu_s=cpu, loadgen_cpu_s=cpu / 2,
                 server_pids=[1, 2, 3])


def test_comparison_ratios_and_echo_columns() -> None:
    points = [
        _point("medkv", "put", 16, 1000, 8.0, 1.0),
        _point("etcd", "put", 16, 4000, 2.0, 0.4),
        _point("medkv", "batch", 16, 20000, 50.0, 2.0),
        _point("etcd", "batch", 16, 40000, 10.0, 1.0),
        _point("medkv", "get-follower", 16, 100, 1.0, 0.1),  # no etcd figure: no row
        _point("echo", "echo-tls", 16, 6000, 1.0, 0.5),
        _point("echo", "echo-plain", 16, 8000, 0.8, 0.5),
    ]
    rows = report.comparison(points)
    assert [(r["workload"], r["concurrency"]) for r in rows] == [("put", 16), ("batch", 16)]
    put = rows[0]
    assert put["medkv"]["ops_per_s"] == 500.0 and put["etcd"]["ops_per_s"] == 2000.0
    assert put["ratio"]["ops_per_s"] == pytest.approx(0.25)
    assert put["ratio"]["p50"] == pytest.approx(4.0)
    assert put["ratio"]["server_cpu_per_op"] == pytest.approx((1.0 / 1000) / (0.4 / 4000))
    assert put["echo_tls_ops_per_s"] == 3000.0 and put["echo_plain_ops_per_s"] == 4000.0
    assert rows[1]["echo_tls_ops_per_s"] is None  # calls/s is no ceiling for records/s
    md = report.comparison_table(rows)
    assert "| put | 16 | 500 (8.0 / 16.0) | 2,000 (2.0 / 4.0) | 0.25 | 4.00 |" in md
    text = report.table(points)
    assert text.count("\n") == len(points) + 1
    doc = report.document(points, machine={"cpus": 2}, config={}, systems={})
    assert json.loads(json.dumps(doc))["comparison"][0]["workload"] == "put"
    assert len(doc["points"]) == len(points)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    points = [_point(s, w, c, 100 * c, 1.0 + c, 0.1) for s in ("medkv", "etcd")
              for w in ("put", "batch") for c in (1, 4)]
    points += [_point("echo", "echo-tls", c, 500 * c, 0.5, 0.1) for c in (1, 4)]
    out = tmp_path / "bench.png"
    assert report.plot(points, out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------- command line


def test_command_line_defaults_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    from client.bench.cli import build_parser, main
    from client.bench.targets import WORKLOADS

    args = build_parser().parse_args([])
    assert args.concurrency == [1, 16, 64] and args.workloads == list(WORKLOADS)
    assert (args.warmup, args.duration, args.value_size, args.batch_size) == (2.0, 6.0, 200, 100)
    args = build_parser().parse_args(["--concurrency", "4, 2", "--workloads", "batch,put"])
    assert args.concurrency == [4, 2] and args.workloads == ["batch", "put"]
    for bad in (["--concurrency", "0"], ["--concurrency", "x"], ["--workloads", "scan"],
                ["--compare", "redis"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
    assert main(["--duration", "0"]) == 2  # refused before any cluster starts
    assert "--duration" in capsys.readouterr().err
