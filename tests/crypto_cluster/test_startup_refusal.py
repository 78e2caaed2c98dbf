"""A node refuses to start, with a clear message naming the path, when its
master key file is missing or readable by others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.crypto.keyfile import create_key_file
from tests.cluster.harness import ROOT, free_base_port

pytestmark = pytest.mark.cluster


def _config(tmp_path: Path, key_file: Path) -> Path:
    port = free_base_port(1) + 1
    q = json.dumps
    text = "\n".join([
        "node_id = 1",
        f"listen = {q(f'127.0.0.1:{port}')}",
        f"data_dir = {q(str(tmp_path / 'node-1'))}",
        "partitions = 4",
        "replication = 1",
        f"key_file = {q(str(key_file))}",
        "insecure = true  # the key checks come first; access control is tested elsewhere",
        "",
        "[[peers]]",
        "id = 1",
        f"address = {q(f'127.0.0.1:{port}')}",
        "",
    ])
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "node", "--config", str(config)],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_missing_key_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "master.key"
    done = _start(_config(tmp_path, key_file))
    assert done.returncode == 2, done.stderr
    assert f"master key file {key_file} does not exist" in done.stderr
    assert "keys init" in done.stderr
    assert not (tmp_path / "node-1" / "keyring").exists()


def test_key_file_readable_by_others_is_refused_naming_the_path(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    create_key_file(key_file)
    key_file.chmod(0o644)
    secret = key_file.read_text().splitlines()[2].split(": ", 1)[1]
    done = _start(_config(tmp_path, key_file))
    assert done.returncode == 2, done.stderr
    assert f"master key file {key_file} has mode 0644" in done.stderr
    assert f"chmod 600 {key_file}" in done.stderr
    assert secret not in done.stderr and secret not in done.stdout
    assert not (tmp_path / "node-1" / "keyring").exists()
