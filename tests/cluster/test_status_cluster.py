"""`medkv status` against a real (secure) cluster: the header tells the truth.

A healthy cluster reads OK on every look (no live follower marked '!'
because its leader's recent_active was just cleared by a quorum check); a
killed node turns it DEGRADED and names the under-replicated partitions;
after the node's restart it is OK again. The exit status follows the
verdict, in the table and in --json (0 OK, 5 DEGRADED), so a probe can act
on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import ROOT, LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

PARTITIONS = 6
BOUND_S = 20.0


def medkv(cluster: LocalCluster, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "--addr", address, *args],
        capture_output=True, text=True, timeout=30, check=False, env=env, cwd=ROOT,
    )


EXIT_BY_HEALTH = {"OK": 0, "DEGRADED": 5, "UNAVAILABLE": 6}


def status_json(cluster: LocalCluster, address: str) -> dict:  # type: ignore[type-arg]
    done = medkv(cluster, address, "--json", "status")
    assert done.returncode in EXIT_BY_HEALTH.values(), done.stderr
    doc = json.loads(done.stdout)
    assert done.returncode == EXIT_BY_HEALTH[doc["health"]], (done.returncode, doc["health"])
    return doc  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_status_leaves_ok_when_a_node_dies_and_returns_after_restart(tmp_path: Path) -> None:
    c = start_cluster(tmp_path / "status", partitions=PARTITIONS)
    try:
        first = c.addresses[0]
        wait_for(lambda: status_json(c, first)["health"] == "OK", "a healthy cluster")
        # Healthy and idle: OK on every look, across several quorum checks.
        for _ in range(8):
            text = medkv(c, first, "status")
            assert text.returncode == 0, text.stderr
            header = text.stdout.splitlines()[0]
            assert header.startswith("medkv cluster: OK"), text.stdout
            assert "!" not in text.stdout.split("PART", 1)[1].split("* leader")[0], text.stdout
            time.sleep(0.25)

        victim = 3
        held = [
            p["partition"]
            for p in status_json(c, first)["partition_info"]
            if victim in p["replicas"]
        ]
        assert held
        assert c.run("kill-node", str(victim)).returncode == 0
        seen: dict = {}  # type: ignore[type-arg]

        def degraded() -> bool:
            seen.update(status_json(c, first))
            return seen["health"] != "OK" and any(
                r.startswith("under-replicated") for r in seen["reasons"]
            )

        wait_for(degraded, "the header to leave OK")
        under = next(r for r in seen["reasons"] if r.startswith("under-replicated"))
        for p in held:
            assert f" {p} (2/3)" in under, under
        assert "node(s) down: 3" in seen["reasons"]
        table = medkv(c, first, "status")
        text = table.stdout
        header, *rest = text.splitlines()
        assert not header.startswith("medkv cluster: OK"), text
        assert table.returncode == EXIT_BY_HEALTH[header.split()[2]] != 0, table.returncode
        assert any(line.startswith("  - under-replicated") for line in rest[:5]), text

        assert c.run("restart-node", str(victim), timeout=60).returncode == 0
        wait_for(lambda: status_json(c, first)["health"] == "OK", "OK after the restart")
        table = medkv(c, first, "status")
        assert table.stdout.startswith("medkv cluster: OK") and table.returncode == 0
    finally:
        stop_cluster(c)
