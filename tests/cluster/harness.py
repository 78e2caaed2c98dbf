"""Real medkv clusters for tests: started with `scripts/cluster up` on free
127.0.0.1 ports in a temporary directory, always stopped with `scripts/cluster
down`, which must leave no node process behind. Every wait is bounded.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import Client

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster"
PARTITIONS = 8


def free_base_port(nodes: int) -> int:
    """A base port whose node ports base+1..base+nodes are all free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        ok = True
        for port in range(base + 1, base + nodes + 1):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range found")


def script(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def node_processes(data_dir: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names the data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(data_dir).encode() in cmdline and b"node" in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@dataclass
class LocalCluster:
    data_dir: Path
    addresses: list[str]

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return script(*args, "--data-dir", str(self.data_dir), timeout=timeout)

    def status(self) -> dict[str, Any]:
        done = self.run("status", "--json", timeout=30)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def states(self) -> dict[int, str]:
        """Node id -> process state (running, paused, stopped) from `status --json`."""
        return {p["node"]: p["state"] for p in self.status()["processes"]}


def start_cluster(
    data_dir: Path, nodes: int = 3, partitions: int = PARTITIONS, extra: tuple[str, ...] = ()
) -> LocalCluster:
    base = free_base_port(nodes)
    up = script(
        "up",
        "--nodes",
        str(nodes),
        "--data-dir",
        str(data_dir),
        "--base-port",
        str(base),
        "--partitions",
        str(partitions),
        "--timeout",
        "60",
        *extra,
    )
    if up.returncode != 0:
        script("down", "--data-dir", str(data_dir))
        raise AssertionError(f"cluster up failed:\n{up.stderr}")
    addresses = up.stdout.strip().split(",")
    assert addresses == [f"127.0.0.1:{base + i}" for i in range(1, nodes + 1)]
    return LocalCluster(data_dir, addresses)


def stop_cluster(cluster: LocalCluster) -> None:
    down = cluster.run("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert node_processes(cluster.data_dir) == [], "a node process outlived `scripts/cluster down`"


def leader_of(kv: Client, partition: int) -> int:
    status = kv.cluster_status()
    return next(p.leader for p in status.partition_info if p.partition == partition)


def patients_per_partition(kv: Client, per_partition: int, prefix: str) -> dict[int, list[str]]:
    table = kv.routing_table()
    out: dict[int, list[str]] = {p: [] for p in range(table.partitions)}
    i = 0
    while any(len(v) < per_partition for v in out.values()):
        pid = f"{prefix}-{i}"
        p = table.partition_of(pid)
        if len(out[p]) < per_partition:
            out[p].append(pid)
        i += 1
    return out


