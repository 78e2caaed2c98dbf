"""Real fault-injection runs: `python -m jepsen_like run` against 5 real node
processes behind the fault proxies, one short run per workload family with a
different nemesis each, plus runs against deliberately broken setups that the
suite must call invalid, and a run interrupted mid-way that must still leave
no process behind.

Each run is bounded by the runner itself (time, op timeouts, recovery and
final-read deadlines) and again here by a subprocess timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jepsen_like.cluster import node_processes

pytestmark = [pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 240.0


def jepsen_run(out: Path, *args: str, seconds: float = 15.0) -> tuple[int, dict[str, Any], str]:
    """Run the CLI; returns (exit code, summary.json, output)."""
    done = subprocess.run(
        [
            sys.executable, "-m", "jepsen_like", "run",
            "--time", str(seconds), "--nodes", "5", "--concurrency", "4",
            "--quiet", "1:2", "--fault", "3:4", "--out", str(out), *args,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    summary = json.loads((out / "summary.json").read_text())
    return done.returncode, summary, done.stdout + done.stderr


def assert_clean(out: Path) -> None:
    assert node_processes(out / "cluster") == [], "a node process outlived the run"
    assert not (out / "cluster").exists(), "the data directory is removed without --keep"
    assert sorted(p.name for p in (out / "logs").iterdir()) == [f"node-{i}.log" for i in range(1, 6)]


@pytest.mark.parametrize(
    ("workload", "nemesis", "checkers"),
    [
        ("registers", "partition-random-halves", {"linearizable"}),
        ("append", "kill", {"append"}),
        ("follower-reads", "pause", {"follower_reads", "linearizable"}),
        ("bank", "lossy-disk", {"bank"}),
        ("erasure", "kill", {"erasure"}),
    ],
)
def test_a_short_run_under_faults_is_valid(
    tmp_path: Path, workload: str, nemesis: str, checkers: set[str]
) -> None:
    out = tmp_path / "run"
    code, summary, output = jepsen_run(out, "--workload", workload, "--nemesis", nemesis, "--seed", "7")
    assert code == 0, output[-3000:]
    assert "verdict: VALID" in output
    assert summary["verdict"] == "valid" and summary["seed"] == 7
    assert checkers | {"recovery", "final_reads"} <= set(summary["checkers"])
    assert all(c["verdict"] == "valid" for c in summary["checkers"].values())
    # The faults really happened, and the workload really ran through them.
    windows = summary["schedule"]
    assert len(windows) >= 2 and all(w["nemesis"] == nemesis for w in windows)
    # Counted by what happened, not by how fast: client operations (not the
    # setup) succeeded after the first fault began.
    first_fault_ns = windows[0]["start_s"] * 1e9
    ran_through = [
        op for op in map(json.loads, (out / "history.jsonl").read_text().splitlines())
        if op["process"] != "setup" and op["outcome"] == "ok" and op["invoke_ns"] > first_fault_ns
    ]
    assert len(ran_through) >= 10, len(ran_through)
    assert summary["checkers"]["final_reads"]["read"] == summary["checkers"]["final_reads"]["keys"] > 0
    if nemesis == "lossy-disk":
        assert summary["cluster"]["lossy_unsynced_writes"] is True
    if workload == "erasure":  # erased patients were read back, on every replica too
        erasure = summary["checkers"]["erasure"]
        assert erasure["erasures"] > 0 and erasure["observations"] > 0
    ops = (out / "history.jsonl").read_text().splitlines()
    assert len(ops) == summary["history_stats"]["ops"]
    assert (out / "report.html").stat().st_size > 1000
    assert_clean(out)


@pytest.mark.skip(reason="flaky in CI (2026-12-02): a membership window that begins just before "
                  "the run ends adds a node that the recovery check then cannot reach; "
                  "issue 12 stays open until the nemesis stops at the run's end")
def test_a_run_through_membership_changes_is_valid(tmp_path: Path) -> None:
    """Nemesis membership: nodes are added (scripts/cluster add-node), one is
    decommissioned and one killed for good, removed with --dead and replaced,
    all while the workload runs; the history stays linearizable, every
    acknowledged write reads back, and the cluster recovers on its new members."""
    out = tmp_path / "run"
    started = time.monotonic()
    code, summary, output = jepsen_run(
        out, "--workload", "registers", "--nemesis", "membership", "--seed", "7",
        "--quiet", "1:1", "--fault", "3:3", seconds=25,
    )
    assert code == 0, output[-3000:]
    assert summary["verdict"] == "valid", summary["notes"]
    assert all(c["verdict"] == "valid" for c in summary["checkers"].values())
    details = [w["detail"] for w in summary["schedule"]]
    assert any(d.startswith("added node 6") for d in details), details
    assert any(d.startswith("decommissioning node") and "removed (decommission)" in d
               for d in details), details
    assert any("for good" in d and "removed (remove --dead)" in d for d in details), details
    assert not any("NOT removed" in d for d in details), details
    assert summary["checkers"]["final_reads"]["read"] == summary["checkers"]["final_reads"]["keys"] > 0
    assert node_processes(out / "cluster") == [], "a node process outlived the run"
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert {f"node-{i}.log" for i in range(1, 8)} <= set(logs), logs  # 5 + added + replacement
    assert time.monotonic() - started < 120


def test_a_client_that_passes_off_follower_reads_as_linearizable_is_caught(tmp_path: Path) -> None:
    """Planted bug: reads served by any replica, recorded as linearizable, during
    partitions (an isolated replica keeps answering with what it had)."""
    out = tmp_path / "run"
    code, summary, output = jepsen_run(
        out, "--workload", "registers", "--planted-bug", "stale-reads",
        "--nemesis", "partition-random-halves", "--seed", "3", seconds=12,
    )
    assert code == 1, output[-3000:]
    assert "verdict: INVALID" in output
    lin = summary["checkers"]["linearizable"]
    assert lin["verdict"] == "invalid" and lin["invalid"]
    stuck = lin["invalid"][0]["explanation"]["stuck_op"]
    assert stuck["kind"] == "read" and stuck["outcome"] == "ok"
    assert_clean(out)


def test_acknowledged_writes_lost_by_a_disk_that_travels_back_in_time_are_caught(
    tmp_path: Path,
) -> None:
    """Planted storage fault, outside medkv's failure model: every node's disk
    is restored to an image taken seconds earlier. The final reads must
    expose the acknowledged writes that vanished."""
    out = tmp_path / "run"
    code, summary, output = jepsen_run(
        out, "--workload", "registers", "--nemesis", "planted-disk-rollback",
        "--seed", "5", "--quiet", "2:2", "--fault", "4:4", seconds=8,
    )
    assert code == 1, output[-3000:]
    assert summary["checkers"]["linearizable"]["verdict"] == "invalid"
    assert summary["checkers"]["final_reads"]["verdict"] == "valid"  # it was seen, not guessed
    assert "rolled back" in summary["schedule"][0]["detail"]
    assert_clean(out)


def test_a_missing_fsync_is_caught_by_the_lossy_disk(tmp_path: Path) -> None:
    """Planted bug: the nodes never fsync their Raft log (a test-only switch).
    A plain kill -9 cannot show this (the OS keeps the data); on the lossy
    disk, killing every node loses the unsynced, acknowledged writes, and the
    checkers must say so."""
    out = tmp_path / "run"
    code, summary, output = jepsen_run(
        out, "--workload", "registers", "--nemesis", "planted-skip-fsync",
        "--seed", "5", "--quiet", "3:3", "--fault", "3:3", seconds=10,
    )
    assert code == 1, output[-3000:]
    assert summary["checkers"]["linearizable"]["verdict"] == "invalid"
    assert summary["cluster"]["lossy_unsynced_writes"] is True
    assert summary["cluster"]["unsafe_skip_raft_fsync"] is True
    assert_clean(out)


def test_an_interrupted_run_tears_its_cluster_down(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jepsen_like", "run", "--workload", "append",
            "--nemesis", "pause", "--time", "60", "--out", str(out), "--seed", "1",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        for line in proc.stdout:
            if "running" in line and "workers" in line:
                break
            assert time.monotonic() < deadline, "the run never started its workers"
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)  # drains the pipe while it tears down
        code = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130
    assert node_processes(out / "cluster") == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "unknown" and "interrupted" in summary["notes"]
