"""A real medkv cluster behind a network of fault proxies, for one run.

The nodes are separate processes started through `scripts/cluster` (the
operator's own tool, so the suite tests what operators run); this module adds
the `ProxyNet` that sits on every link: node i dials node j through its own
proxy, and every client dials node j through a client proxy, so the nemeses
can cut, slow or break any link without root. The proxies run on the event
loop of the runner's process, which is why every script call here is an
asyncio subprocess: the loop must keep forwarding while `up` waits for
leaders.

Everything is bounded: every script call has a timeout, and `stop()` (which
the runner calls on every exit path, Ctrl-C included) stops every node,
SIGKILLs any node process of this data directory that survived, and stops the
proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from client import AsyncClient, MedkvError, RetryPolicy
from client.auth import secure_channel_credentials, token_source
from client.status_table import down_nodes, has_live_leader
from client.tls import TlsConfig
from jepsen_like.proxy import ProxyNet
from proto.medkv.v1 import admin_pb2

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "scripts" / "cluster.py"
HOST = "127.0.0.1"

# The run's identity (DIR/tokens/jepsen.token, minted once the cluster is up):
# every role a workload or a nemesis needs, and one clinic. Workloads read keys
# nobody wrote yet (an empty append list, a bank account at zero) and keys
# they erased, which the clinic scope refuses for an unregistered patient;
# break-glass (a clinician's emergency access to any patient, with a reason,
# flagged in the audit log) lets those reads reach the data path, so the
# checkers judge the database's answers, not the access policy's.
RUN_TOKEN = "jepsen"
RUN_ROLES = ("clinician", "break-glass", "analyst", "admin", "auditor", "clinic-admin")
RUN_CLINIC = "jepsen"
RUN_BREAK_GLASS_REASON = "jepsen_like consistency run (synthetic data)"

# Status calls must fail fast: a nemesis asks during partitions and pauses.
_STATUS_POLICY = RetryPolicy(timeout=3.0, attempt_timeout=2.0)


class ClusterError(Exception):
    """A cluster command failed or timed out; the message says which."""


def mint_token_file(
    data_dir: Path,
    name: str,
    roles: Sequence[str],
    clinics: Sequence[str] = (),
    ttl_seconds: float = 86_400.0,
) -> Path:
    """DIR/tokens/NAME.token (0600), minted with the signing key `scripts/cluster up`
    made in DIR/auth: how a test or a run gets an identity of its own."""
    from node.auth.tokens import SIGNING_KEY_FILE, load_signing_key, mint

    key = load_signing_key(data_dir / "auth" / SIGNING_KEY_FILE)
    token = mint(key, subject=f"test-{name}", roles=roles, clinics=clinics,
                 ttl_seconds=ttl_seconds)
    path = data_dir / "tokens" / f"{name}.token"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of the cluster a run uses."""

    nodes: int = 5
    partitions: int = 8
    replicas: int = 3
    raft: Mapping[str, int] = field(default_factory=dict)
    lossy_unsynced_writes: bool = False
    unsafe_skip_raft_fsync: bool = False  # planted bug (nemesis planted-skip-fsync)
    # Ids past `nodes` that `scripts/cluster add-node` may start during the run
    # (nemesis membership): their ports are reserved and their proxies made
    # up front, so a joining node sits behind the fault proxies too.
    spare_nodes: int = 0
    up_timeout: float = 90.0


def free_base_port(nodes: int, rng: random.Random) -> int:
    """A base port whose node ports base+1..base+nodes are free now.

    Chosen below the kernel's ephemeral range (32768+), where the proxies'
    own listening ports come from, so the two never collide.
    """
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - nodes)
        ok = True
        for port in range(base + 1, base + nodes + 1):
            with socket.socket() as sock:
                try:
                    sock.bind((HOST, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise ClusterError("no free port range found for the nodes")


def node_processes(data_dir: Path) -> list[int]:
    """Live (non-zombie) node processes whose command line names `data_dir`."""
    found = []
    needle = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and b"node" in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


class ProxiedCluster:
    """One run's cluster: node processes in `data_dir`, proxies in this process."""

    def __init__(
        self,
        data_dir: Path,
        spec: ClusterSpec,
        *,
        seed: int,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.spec = spec
        self.seed = seed
        self.log = log
        # The members now: grows with add_node(), shrinks with forget().
        self.node_ids = list(range(1, spec.nodes + 1))
        # Every id this run may use (the spares included): proxies and logs.
        self.all_ids = list(range(1, spec.nodes + spec.spare_nodes + 1))
        self.base_port = 0
        self.net: ProxyNet | None = None
        self._started = False
        self._stopped = False

    # -- addresses ---------------------------------------------------------

    def direct_address(self, node: int) -> str:
        """Where the node really listens (for control calls that must bypass faults)."""
        return f"{HOST}:{self.base_port + node}"

    def client_addresses(self) -> list[str]:
        """The client proxies, one per node: what workload clients dial."""
        net = self.network
        return ["{}:{}".format(*net.client_address(n)) for n in self.node_ids]

    @property
    def network(self) -> ProxyNet:
        """The proxies on every link (what the network nemeses steer)."""
        if self.net is None:
            raise ClusterError("the cluster is not started")
        return self.net

    def links_document(self) -> dict[str, Any]:
        """The --links-file of scripts/cluster: every link through its proxy."""
        net = self.network
        ids = self.all_ids
        peers = {
            str(i): {str(j): "{}:{}".format(*net.peer_address(i, j)) for j in ids if j != i}
            for i in ids
        }
        clients = {str(j): "{}:{}".format(*net.client_address(j)) for j in ids}
        return {"peers": peers, "clients": clients}

    # -- credentials -------------------------------------------------------

    def tls(self) -> TlsConfig:
        """The client certificate `scripts/cluster up` made in DIR/certs."""
        return TlsConfig.from_dir(self.data_dir / "certs")

    def token(self) -> str:
        """`@FILE` of the run's token (what AsyncClient's token= takes)."""
        return "@" + str(self.data_dir / "tokens" / f"{RUN_TOKEN}.token")

    def client(self, addresses: str | list[str] | None = None, **kwargs: Any) -> AsyncClient:
        """An AsyncClient with the run's TLS and token (default: the client proxies)."""
        kwargs.setdefault("tls", self.tls())
        kwargs.setdefault("token", self.token())
        kwargs.setdefault("break_glass_reason", RUN_BREAK_GLASS_REASON)
        return AsyncClient(self.client_addresses() if addresses is None else addresses, **kwargs)

    def env(self) -> dict[str, str]:
        """MEDKV_TLS_DIR / MEDKV_TOKEN for clients (the CLI, a test's raw stubs)."""
        return {"MEDKV_TLS_DIR": str(self.data_dir / "certs"), "MEDKV_TOKEN": self.token()}

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS + the run's token, for raw stubs that must get past access control."""
        return secure_channel_credentials(self.tls().credentials(), token_source(self.token()))

    # -- files -------------------------------------------------------------

    def node_dir(self, node: int) -> Path:
        return self.data_dir / f"node-{node}"

    def db_path(self, node: int) -> Path:
        return self.node_dir(node) / "db"

    def log_path(self, node: int) -> Path:
        return self.node_dir(node) / "node.log"

    def log_tail(self, node: int, lines: int = 30) -> list[str]:
        try:
            text = self.log_path(node).read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def copy_logs(self, dest: Path) -> None:
        """Keep every node log with the run's results (the data dir may be removed)."""
        dest.mkdir(parents=True, exist_ok=True)
        for n in self.all_ids:
            if self.log_path(n).exists():
                shutil.copyfile(self.log_path(n), dest / f"node-{n}.log")

    # -- scripts/cluster ---------------------------------------------------

    def node_environment(self) -> dict[str, str]:
        """The environment of every `scripts/cluster` call, which the node
        processes it starts (and restarts) inherit: the spec's test-only
        switches travel only as MEDKV_TEST_ONLY_* variables (node/test_only.py),
        never through a configuration file or an operator flag."""
        env = dict(os.environ)
        for name, on in (
            ("MEDKV_TEST_ONLY_LOSSY_UNSYNCED_WRITES", self.spec.lossy_unsynced_writes),
            ("MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC", self.spec.unsafe_skip_raft_fsync),
        ):
            if on:
                env[name] = "1"
            else:
                env.pop(name, None)
        return env

    async def script(self, *args: str, timeout: float = 60.0) -> str:
        """Run one `scripts/cluster` command; returns stdout, raises on failure/timeout."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLUSTER_SCRIPT),
            *args,
            "--data-dir",
            str(self.data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
            env=self.node_environment(),
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(proc.wait(), 5.0)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ClusterError(
                f"scripts/cluster {args[0]} did not finish within {timeout:g}s"
            ) from None
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-6:]
            raise ClusterError(f"scripts/cluster {args[0]} failed: " + " | ".join(last))
        return out.decode(errors="replace")

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Proxies first (the nodes dial them from their first second), then the nodes."""
        rng = random.Random(self.seed)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.base_port = free_base_port(len(self.all_ids), rng)
        self.net = ProxyNet(
            {n: (HOST, self.base_port + n) for n in self.all_ids}, seed=self.seed
        )
        await self.net.start()
        self._started = True
        links = self.data_dir / "links.json"
        links.write_text(json.dumps(self.links_document(), indent=2))
        args = [
            "up",
            "--nodes", str(self.spec.nodes),
            "--base-port", str(self.base_port),
            "--partitions", str(self.spec.partitions),
            "--replicas", str(self.spec.replicas),
            "--host", HOST,
            "--timeout", str(self.spec.up_timeout),
            "--links-file", str(links),
        ]
        for key, value in sorted(self.spec.raft.items()):
            args += ["--raft", f"{key}={value}"]
        await self.script(*args, timeout=self.spec.up_timeout + 30.0)
        mint_token_file(self.data_dir, RUN_TOKEN, RUN_ROLES, (RUN_CLINIC,))

    async def stop(self) -> list[int]:
        """Stop everything; idempotent. Returns pids that had to be SIGKILLed here."""
        if self._stopped:
            return []
        self._stopped = True
        killed: list[int] = []
        try:
            if self._started and (self.data_dir / "cluster.json").exists():
                # Faults off first: a node shutting down may want to say goodbye.
                if self.net is not None:
                    self.net.heal()
                try:
                    await self.script("down", "--grace", "10", timeout=60.0)
                except ClusterError as exc:
                    self.log(f"cluster down: {exc}")
            killed = await self._kill_leftovers()
        finally:
            if self.net is not None:
                await self.net.stop()
        return killed

    async def _kill_leftovers(self) -> list[int]:
        """SIGKILL node processes of this data dir that outlived `down` (each by pid)."""
        left = node_processes(self.data_dir)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while node_processes(self.data_dir) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        still = node_processes(self.data_dir)
        if still:
            raise ClusterError(f"node processes {still} survived SIGKILL")
        return left

    # -- node control --------------------------------------------------------

    async def kill(self, node: int) -> None:
        await self.script("kill-node", str(node), timeout=30.0)

    async def restart(self, node: int, timeout: float = 45.0) -> None:
        """Start a killed node, or stop (SIGTERM) and start a running one; waits until it answers."""
        await self.script(
            "restart-node", str(node), "--grace", "10", "--timeout", str(timeout),
            timeout=timeout + 30.0,
        )

    async def add_node(self, timeout: float = 90.0) -> int:
        """`scripts/cluster add-node`: the next id starts and joins; returns it
        once it is active. Raises when no spare id is left (spec.spare_nodes)."""
        if not self.spare_ids():
            raise ClusterError("no spare node id left (ClusterSpec.spare_nodes)")
        await self.script("add-node", "--timeout", str(timeout), timeout=timeout + 30.0)
        layout = json.loads((self.data_dir / "cluster.json").read_text())
        node = int(layout["nodes"])
        if node not in self.node_ids:
            self.node_ids.append(node)
        return node

    def spare_ids(self) -> list[int]:
        """Ids add_node may still start (never a used one: ids are not reused)."""
        try:
            used = int(json.loads((self.data_dir / "cluster.json").read_text())["nodes"])
        except (OSError, ValueError, KeyError):
            used = self.spec.nodes
        return [n for n in self.all_ids if n > used]

    def forget(self, node: int) -> None:
        """The node is no member any more (decommissioned, or removed as dead):
        nemeses, healing and the recovery check leave it alone from now on."""
        if node in self.node_ids:
            self.node_ids.remove(node)

    async def medkv(self, *args: str, timeout: float = 60.0) -> str:
        """The operator CLI (`python -m client.cli`) against a live member,
        directly (not through a proxy); returns stdout, raises on failure."""
        env = {**self.node_environment(), **self.env(),
               "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client.cli",
            "--addr", ",".join(self.direct_address(n) for n in self.node_ids),
            "--timeout", str(min(timeout, 30.0)), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=str(ROOT), env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(proc.wait(), 5.0)
            raise ClusterError(f"medkv {' '.join(args)} did not finish within {timeout:g}s") from None
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-3:]
            raise ClusterError(f"medkv {' '.join(args)} failed: " + " | ".join(last))
        return out.decode(errors="replace")

    async def pause(self, node: int) -> None:
        await self.script("pause-node", str(node), timeout=30.0)

    async def resume(self, node: int) -> None:
        await self.script("resume-node", str(node), timeout=30.0)

    def process_states(self) -> dict[int, str]:
        """Node id -> running / paused / stopped, from the pid files and /proc."""
        out: dict[int, str] = {}
        for n in self.node_ids:
            try:
                pid = int((self.node_dir(n) / "node.pid").read_text().strip())
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                out[n] = "stopped"
                continue
            state = stat.rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X") or str(self.node_dir(n)).encode() not in cmdline:
                out[n] = "stopped"
            else:
                out[n] = "paused" if state in ("T", "t") else "running"
        return out

    # -- status --------------------------------------------------------------

    async def status(self, via: int) -> admin_pb2.ClusterStatusResponse | None:
        """Admin.ClusterStatus as node `via` sees the cluster (it asks its peers
        through their proxies, so a partition shows); None if it does not answer."""
        client = self.client(self.direct_address(via), retry=_STATUS_POLICY)
        try:
            return await client.cluster_status(timeout=_STATUS_POLICY.timeout)
        except MedkvError:
            return None
        finally:
            await client.close()

    async def leader_of(self, partition: int, via: int) -> int | None:
        """The live leader of `partition` in `via`'s view, or None."""
        status = await self.status(via)
        if status is None:
            return None
        down = down_nodes(status)
        for info in status.partition_info:
            if info.partition == partition and has_live_leader(info, down):
                return int(info.leader)
        return None

    async def recovered(self, via: int) -> tuple[bool, str]:
        """Is every node up and every partition led, in `via`'s view? (and a summary)."""
        status = await self.status(via)
        if status is None:
            return False, f"node {via} did not answer"
        down = down_nodes(status)
        led = sum(1 for p in status.partition_info if has_live_leader(p, down))
        up = sum(1 for n in status.nodes if n.up and n.node.node_id in self.node_ids)
        ok = (
            up == len(self.node_ids)
            and led == self.spec.partitions
            and len(status.partition_info) == self.spec.partitions
        )
        return ok, f"{up}/{len(self.node_ids)} nodes up, {led}/{self.spec.partitions} partitions led"

    async def wait_recovered(self, timeout: float) -> tuple[bool, str]:
        """Poll (bounded) until every partition has a leader, asking each node in turn."""
        deadline = time.monotonic() + timeout
        summary = "not asked yet"
        i = 0
        while True:
            via = self.node_ids[i % len(self.node_ids)]
            i += 1
            ok, summary = await self.recovered(via)
            if ok:
                return True, summary
            if time.monotonic() >= deadline:
                return False, summary
            await asyncio.sleep(0.3)


__all__ = [
    "ClusterError",
    "ClusterSpec",
    "ProxiedCluster",
    "free_base_port",
    "node_processes",
]
