"""A real node started with --log-format json writes nothing but JSON lines
with the stable fields, including for a garbled client request (a refusal,
never a traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from node.crypto.keyfile import create_key_file
from tests.cluster.harness import ROOT, free_base_port

pytestmark = pytest.mark.cluster


def _config(tmp_path: Path, port: int) -> Path:
    q = json.dumps
    key_file = tmp_path / "master.key"
    create_key_file(key_file)
    path = tmp_path / "node.toml"
    path.write_text("\n".join([
        "node_id = 1",
        f"listen = {q(f'127.0.0.1:{port}')}",
        f"data_dir = {q(str(tmp_path / 'node-1'))}",
        "partitions = 2",
        "replication = 1",
        f"key_file = {q(str(key_file))}",
        "insecure = true  # only the log format is under test",
        "",
        "[[peers]]",
        "id = 1",
        f"address = {q(f'127.0.0.1:{port}')}",
        "",
    ]))
    return path


def _garbled_get(proc: subprocess.Popen[str], port: int, deadline: float) -> grpc.RpcError:
    """Send bytes that are not a GetRequest until the node answers."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/medkv.v1.KV/Get")
        while True:
            try:
                call(b"\xff\xff\xff", timeout=2)
            except grpc.RpcError as e:
                if (e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline
                        or proc.poll() is not None):
                    return e
            time.sleep(0.2)


def test_every_log_line_is_json_with_the_stable_fields(tmp_path: Path) -> None:
    port = free_base_port(1) + 1
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MEDKV_LOG_FORMAT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "--config", str(_config(tmp_path, port)),
         "--log-format", "json"],
        cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        err = _garbled_get(proc, port, time.monotonic() + 60)
        code = err.code()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, stderr
    lines = stderr.splitlines()
    assert lines, "the node logged nothing"
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
    for r in records:
        assert {"time", "level", "logger", "node", "event"} <= set(r), r
        assert r["time"].endswith("Z")
        assert "exc_info" not in r, r  # a garbled request is a refusal, not a traceback
    assert any(r["node"] == 1 for r in records)
    assert any("INSECURE" in r["event"] for r in records)
    refusals = [r for r in records if r["event"].startswith("refused")]
    assert refusals and "INVALID_ARGUMENT" in refusals[0]["event"], records


def test_a_startup_refusal_is_a_json_line_too(tmp_path: Path) -> None:
    """A node that refuses to start (here: its master key file is gone) says
    why in the same JSON form, so a log shipper parses that line as well."""
    config = _config(tmp_path, free_base_port(1) + 1)
    (tmp_path / "master.key").unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEDKV_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-m", "node", "--config", str(config)],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    last = records[-1]
    assert last["level"] == "CRITICAL" and last["node"] == 1, records
    assert "master key file" in last["event"] and "does not exist" in last["event"]
