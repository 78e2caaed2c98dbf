"""etcd for `--compare etcd`: the binary (Debian's etcd-server, installed
when missing), three members on loopback, and a load-generator target.

The members run with etcd's defaults: a WAL fsync per write batch on every
member (the same durability as medkv's synced Raft log), plaintext HTTP/2
without authentication (medkv runs mutual TLS and a token check per call:
the comparison charges medkv for its security, never etcd).

The client is `aetcd` (asyncio, grpc.aio, protobuf >= 4: it runs with the
project's grpc and protobuf). Workers call:
  put               KV.Put on the leader
  get-linearizable  KV.Range on the leader (etcd's default: a ReadIndex round)
  get-follower      KV.Range serializable=true, spread over all three members
  mixed             90 % linearizable Range, 10 % Put
  batch             KV.Txn of 100 Puts on the leader (etcd's max-txn-ops is 128)
Puts and linearizable reads go straight to the leader, as medkv's client
sends them to each partition's leader: etcd's best case, with no forwarding.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from client.bench.load import Operation
from client.bench.local import BenchError, free_base_port, note
from client.bench.targets import (
    MIXED_WRITE_SHARE,
    READ_WORKLOADS,
    RECORDS_PER_PATIENT,
    bounded_gather,
)

DEBIAN_PACKAGE = "etcd-server"
MEMBERS = 3


def find_etcd(binary: str | None = None) -> str | None:
    if binary:
        return binary if Path(binary).is_file() else None
    return shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None)


def ensure_etcd(binary: str | None = None, install: bool = True) -> str:
    """The etcd binary; installs Debian's etcd-server first when there is none."""
    found = find_etcd(binary)
    if found:
        return found
    if binary:
        raise BenchError(f"--etcd-bin {binary}: no such file")
    how = f"apt-get install -y {DEBIAN_PACKAGE}"
    if not install:
        raise BenchError(f"etcd is not installed: `{how}` (or --etcd-bin PATH)")
    if shutil.which("apt-get") is None:
        raise BenchError("etcd is not installed and this is no Debian system: install etcd 3.x "
                         "and pass --etcd-bin PATH")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise BenchError(f"etcd is not installed: run `sudo {how}` (needs root)")
        prefix = ["sudo", "-n"]
    note(f"bench: etcd is not installed: installing the Debian package {DEBIAN_PACKAGE} ({how})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*prefix, "apt-get", "install", "-y", "-q", DEBIAN_PACKAGE]
    if subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode != 0:
        note("bench: that failed; refreshing the package lists (apt-get update) and trying again")
        subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, check=False,
                       stdout=subprocess.DEVNULL)
        if subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode != 0:
            raise BenchError(f"`{how}` failed; install etcd 3.x and pass --etcd-bin PATH")
    found = find_etcd()
    if not found:
        raise BenchError(f"{DEBIAN_PACKAGE} installed but no etcd binary found; pass --etcd-bin")
    return found


def etcd_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in out.splitlines():
        if line.lower().startswith("etcd version:"):
            return line.split(":", 1)[1].strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


class LocalEtcd:
    """Three etcd members on 127.0.0.1 in a temporary directory, default
    durability; stopped (SIGTERM, then SIGKILL) and removed on exit."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="medkv-bench-etcd-"))
        base = free_base_port(20)
        self.client_ports = [base + i for i in range(1, MEMBERS + 1)]
        self.peer_ports = [base + 10 + i for i in range(1, MEMBERS + 1)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def __enter__(self) -> LocalEtcd:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports, 1))
        token = f"medkv-bench-{os.urandom(4).hex()}"
        for i, (cport, pport) in enumerate(zip(self.client_ports, self.peer_ports, strict=True), 1):
            curl, purl = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
            args = [
                self.binary, "--name", f"m{i}", "--data-dir", str(self.dir / f"m{i}"),
                "--listen-client-urls", curl, "--advertise-client-urls", curl,
                "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                "--initial-cluster", initial, "--initial-cluster-token", token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
            ]
            with open(self.dir / f"m{i}.log", "wb") as log:
                self.processes.append(subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    def close(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdTarget:
    """etcd through aetcd: one client (one channel) per member."""

    system = "etcd"

    def __init__(self, endpoints: Sequence[str], *, value_size: int = 200, keys: int = 1000,
                 batch_size: int = 100, pids: Sequence[int] = (), seed: int | None = None) -> None:
        try:
            import aetcd
        except ImportError:
            raise BenchError("--compare etcd needs the `aetcd` package: scripts/bench installs "
                             "it (pip install -e '.[bench]')") from None
        self._aetcd = aetcd
        self.clients: list[Any] = []
        for ep in endpoints:
            host, port = ep.rsplit(":", 1)
            self.clients.append(aetcd.Client(host, int(port), timeout=20))
        self.leader: Any = None
        self.value = os.urandom(value_size)
        self.keys = keys
        self.batch_size = batch_size
        self.prefix = f"bench-{os.urandom(3).hex()}"
        self.rng = random.Random(seed)
        self._pids = list(pids)

    def key(self, i: int, record: str) -> bytes:
        return f"{self.prefix}/{i}/{record}".encode()

    async def wait_for_leader(self, timeout: float = 60.0) -> None:
        """Until every member answers Status and one of them is the leader."""
        rpc = self._aetcd.rpc
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                leader = None
                for c in self.clients:
                    await c.connect()
                    status = await c.maintenancestub.Status(rpc.StatusRequest(), timeout=2)
                    if status.leader and status.leader == status.header.member_id:
                        leader = c
                    elif not status.leader:
                        raise BenchError("no leader yet")
                if leader is not None:
                    self.leader = leader
                    return
            except Exception as exc:
                last = exc
            await asyncio.sleep(0.2)
        raise BenchError(f"etcd elected no leader within {timeout:.0f} s ({type(last).__name__})")

    async def prepare(self, workloads: Sequence[str]) -> None:
        await self.wait_for_leader()
        if any(w in READ_WORKLOADS for w in workloads):
            await bounded_gather(self.keys, lambda i: self.leader.put(self.key(i, "seed"),
                                                                      self.value))

    def server_pids(self) -> list[int]:
        return list(self._pids)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    def operation(self, workload: str) -> Operation:
        rng, value, keys, clients = self.rng, self.value, self.keys, self.clients
        leader = self.leader
        if leader is None:
            raise BenchError("prepare() first: the leader is not known")

        async def put(w: int, seq: int) -> int:
            await leader.put(self.key(rng.randrange(keys), f"w{w}-{seq % RECORDS_PER_PATIENT}"),
                             value)
            return 1

        async def get_linearizable(w: int, seq: int) -> int:
            if await leader.get(self.key(rng.randrange(keys), "seed")) is None:
                raise LookupError("a preloaded key is missing")
            return 1

        async def get_follower(w: int, seq: int) -> int:
            client = clients[w % len(clients)]
            if await client.get(self.key(rng.randrange(keys), "seed"), serializable=True) is None:
                raise LookupError("a preloaded key is missing")
            return 1

        async def mixed(w: int, seq: int) -> int:
            if rng.random() < MIXED_WRITE_SHARE:
                return await put(w, seq)
            return await get_linearizable(w, seq)

        txn_put = self._aetcd.client.transactions.Put

        async def batch(w: int, seq: int) -> int:
            i = rng.randrange(keys)
            puts = [txn_put(self.key(i, f"b{j}"), value) for j in range(self.batch_size)]
            ok, _ = await leader.transaction(compare=[], success=puts, failure=[])
            if not ok:
                raise RuntimeError("an unconditional transaction failed")
            return self.batch_size

        table = {"put": put, "get-linearizable": get_linearizable, "get-follower": get_follower,
                 "mixed": mixed, "batch": batch}
        if workload not in table:
            raise ValueError(f"unknown workload {workload!r}")
        return table[workload]
