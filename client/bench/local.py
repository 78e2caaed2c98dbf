"""Local servers for benchmarks: a medkv cluster through scripts/cluster (the
public operator command, so nothing here imports node internals), free
ports, and the pids behind local listening ports (for CPU accounting).

scripts/bench-cluster.py and scripts/bench-access.py use these too.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "scripts" / "cluster.py"


class BenchError(Exception):
    """The benchmark cannot go on; the message says why and what to do."""


def note(message: str) -> None:
    """Progress for people, on stderr (stdout stays for what a script prints as data)."""
    print(message, file=sys.stderr, flush=True)


def cluster(*args: str, timeout: float = 180.0) -> str:
    """Run `scripts/cluster ARGS` with this interpreter; its stdout, stripped."""
    if not CLUSTER_SCRIPT.is_file():
        raise BenchError(
            f"{CLUSTER_SCRIPT} is missing: starting a local cluster needs a medkv source "
            "checkout (or point --addr at a running cluster)"
        )
    proc = subprocess.run(
        [sys.executable, str(CLUSTER_SCRIPT), *args],
        capture_output=True, text=True, check=False, timeout=timeout,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise BenchError(f"scripts/cluster {args[0]} failed (exit {proc.returncode})")
    return proc.stdout.strip()


def ports_free(ports: Iterable[int], host: str = "127.0.0.1") -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_base_port(count: int, low: int = 20_000, high: int = 40_000) -> int:
    """A base port whose base+1..base+count are all free on 127.0.0.1 now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high)
        if ports_free(range(base + 1, base + count + 1)):
            return base
    raise BenchError("no free port range found on 127.0.0.1")


def use_cluster_credentials(data_dir: Path, token: str) -> None:
    """A cluster is secure by default: the clients of this process read its TLS
    directory and the token DIR/tokens/TOKEN.token from the environment.
    (A tree from before access control made no DIR/certs: plaintext then.)"""
    if (data_dir / "certs" / "ca.pem").exists():
        os.environ["MEDKV_TLS_DIR"] = str(data_dir / "certs")
        os.environ["MEDKV_TOKEN"] = "@" + str(data_dir / "tokens" / f"{token}.token")
    else:
        os.environ.pop("MEDKV_TLS_DIR", None)
        os.environ.pop("MEDKV_TOKEN", None)


def node_pids(data_dir: Path, nodes: int) -> list[int]:
    """The pids scripts/cluster recorded for nodes 1..nodes (live ones only)."""
    out = []
    for n in range(1, nodes + 1):
        try:
            pid = int((data_dir / f"node-{n}" / "node.pid").read_text())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
    return out


def rss_mib(pids: Iterable[int]) -> list[float]:
    """Resident memory of each process, MiB (nan for one that is gone)."""
    out = []
    for pid in pids:
        value = float("nan")
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    value = int(line.split()[1]) / 1024
        except OSError:
            pass
        out.append(value)
    return out


def _listening_inodes(ports: set[int]) -> set[str]:
    """Socket inodes listening (state 0A) on any of `ports`, IPv4 and IPv6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                inodes.add(fields[9])
    return inodes


def listening_pids(ports: Iterable[int]) -> list[int]:
    """The local processes listening on these TCP ports (those this user may
    inspect): how `--addr` to a cluster on this machine still gets the
    servers' CPU. Empty for a remote cluster."""
    inodes = _listening_inodes(set(ports))
    if not inodes:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    found.append(int(entry.name))
                    break
        except OSError:
            continue
    return sorted(found)


def is_local(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class LocalMedkv:
    """A secure N-node medkv cluster in a temporary directory (or data_dir),
    for one run: `scripts/cluster up` on free loopback ports (or base_port+i);
    `down` and the directory removed on exit, whatever happened.
    extra=("--insecure",) starts a plaintext one without tokens."""

    def __init__(self, nodes: int = 3, partitions: int = 16, token: str = "clinician",
                 extra: tuple[str, ...] = (), base_port: int | None = None,
                 data_dir: Path | None = None) -> None:
        self.nodes = nodes
        self.base_port = base_port
        self.partitions = partitions
        self.token = token
        self.extra = extra
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="medkv-bench-"))
        self.addresses: list[str] = []

    def __enter__(self) -> LocalMedkv:
        try:
            base = self.base_port or free_base_port(self.nodes)
            self.addresses = cluster(
                "up", "--nodes", str(self.nodes), "--data-dir", str(self.data_dir),
                "--base-port", str(base), "--partitions", str(self.partitions), *self.extra,
            ).split(",")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def certs_dir(self) -> Path | None:
        d = self.data_dir / "certs"
        return d if (d / "ca.pem").exists() and "--insecure" not in self.extra else None

    @property
    def token_ref(self) -> str | None:
        """`@FILE` of the token the load generator calls with (None: insecure)."""
        if self.certs_dir is None:
            return None
        return "@" + str(self.data_dir / "tokens" / f"{self.token}.token")

    def pids(self) -> list[int]:
        return node_pids(self.data_dir, self.nodes)

    def close(self) -> None:
        if (self.data_dir / "cluster.json").exists():
            try:
                cluster("down", "--data-dir", str(self.data_dir))
            except (BenchError, subprocess.TimeoutExpired) as exc:
                note(f"bench: stopping the local cluster failed ({exc}); its files stay for "
                     f"`scripts/cluster down --data-dir {self.data_dir}`")
                return
        shutil.rmtree(self.data_dir, ignore_errors=True)
