"""Every shell and Python example of README.md and docs/*.md, run against a
live local secure cluster (3 nodes, 16 partitions, as the README's
`scripts/cluster up --nodes 3` makes it), in page order. How a block is run,
what is substituted, and how a block is marked not-run: tests/docs/examples.py.

Before each block the cluster is brought up again with the same command
(idempotent: it starts only the nodes that are not running), because the
README's own example kills a node and takes the cluster down at its end,
and the test waits until `medkv status` exits 0 (OK), as a reader would
before following the next page.
Bounded: each block 60 s, the whole test DEADLINE_S."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.harness import ROOT, free_base_port, node_processes, script
from tests.docs.examples import Context, Result, block_env, collect, report, run_block

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DEADLINE_S = 170.0


def _reader_env(data_dir: Path) -> dict[str, str]:
    """What `eval "$(scripts/cluster env --data-dir DIR)"` exports."""
    done = script("env", "--data-dir", str(data_dir), timeout=30)
    assert done.returncode == 0, done.stderr
    env = {}
    for line in done.stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            env[key] = value.strip("'")
    assert set(env) == {"MEDKV_ADDR", "MEDKV_TLS_DIR", "MEDKV_TOKEN"}, done.stdout
    return env


def _wait_ok(ctx: Context, deadline: float) -> None:
    env = block_env(ctx)
    env["MEDKV_TOKEN"] = "@" + str(ctx.data_dir / "tokens" / "admin.token")
    last = None
    while time.monotonic() < deadline:
        last = subprocess.run([sys.executable, "-m", "client.cli", "status"], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        if last.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the cluster did not become OK: {last.stdout if last else ''}")


def test_every_doc_example_runs_against_a_live_cluster(tmp_path: Path) -> None:
    started = time.monotonic()
    data_dir = tmp_path / "medkv"
    base = free_base_port(3)
    up = ("up", "--nodes", "3", "--data-dir", str(data_dir), "--base-port", str(base),
          "--timeout", "60")
    blocks = collect(ROOT)
    runnable = [b for b in blocks if b.runnable]
    skipped = [b for b in blocks if b.not_run is not None]
    assert runnable, "no runnable example found"
    results: list[Result] = []
    try:
        first = script(*up)
        assert first.returncode == 0, first.stderr
        ctx = Context(root=ROOT, data_dir=data_dir, base_port=base, venv=Path(sys.prefix),
                      scratch=tmp_path / "work", env=_reader_env(data_dir))
        for block in runnable:
            left = DEADLINE_S - (time.monotonic() - started)
            assert left > 5, "over the time bound:\n" + report(results, skipped, ROOT)
            again = script(*up)
            assert again.returncode == 0, f"before {block.where(ROOT)}: {again.stderr}"
            _wait_ok(ctx, time.monotonic() + min(20.0, left - 5))
            results.append(run_block(block, ctx, timeout=min(60.0, left)))
    finally:
        script("down", "--data-dir", str(data_dir), timeout=120)
        leaked = node_processes(data_dir)
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
    text = report(results, skipped, ROOT)
    print(text)
    assert leaked == [], f"node processes outlived the test: {leaked}"
    assert all(r.ok for r in results), text

