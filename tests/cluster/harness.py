"""Real medkv clusters for tests: started with `scripts/cluster up` on free
127.0.0.1 ports in a temporary directory, always stopped with `scripts/cluster
down`, which must leave no node process behind. Every wait is bounded.

Clusters are secure, as `scripts/cluster up` makes them by default: mutual
TLS and a bearer token on every call. Each gets an "ops" token
(DIR/tokens/ops.token) holding every role a test needs (OPS_ROLES) and the one
clinic "test", so a test's first write to a patient registers it there and
later reads are in scope. For the cluster's lifetime `start_cluster` exports
MEDKV_TLS_DIR and MEDKV_TOKEN=@ops.token, so `Client(cluster.addresses)`,
`AsyncClient` and a `medkv` subprocess work unchanged; `stop_cluster` puts
the previous values back. Raw gRPC calls take `cluster.channel(address)`
(TLS + token), or `cluster.channel(address, as_node=N)` (node N's certificate,
no token: what the Raft transport requires). `--insecure` in `extra` starts a
plaintext cluster and exports nothing.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from client import AsyncClient, Client
from client.auth import TOKEN_ENV, secure_channel_credentials, token_source
from client.tls import TLS_DIR_ENV, TlsConfig
from jepsen_like.cluster import mint_token_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster"
PARTITIONS = 8
# The test identity: every role but break-glass, one clinic (a clinician's
# first write registers a patient to the token's only clinic).
OPS_ROLES = ("clinician", "analyst", "admin", "auditor", "clinic-admin")
OPS_CLINIC = "test"
OPS_TOKEN = "ops"


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
    secure: bool = True
    # MEDKV_* values before start_cluster exported this cluster's (None: unset).
    saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)

    # -- credentials -----------------------------------------------------------

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    def token_path(self, name: str = OPS_TOKEN) -> Path:
        """DIR/tokens/NAME.token: `ops` (this harness) or one of scripts/cluster's."""
        return self.data_dir / "tokens" / f"{name}.token"

    def token(self, name: str = OPS_TOKEN) -> str | None:
        """`@FILE` for the clients' token=, None on an insecure cluster."""
        return "@" + str(self.token_path(name)) if self.secure else None

    def tls(self, name: str = "client") -> TlsConfig | None:
        """The client certificate (or `node-<i>`'s), None on an insecure cluster."""
        return TlsConfig.from_dir(self.certs_dir, name) if self.secure else None

    def mint(self, name: str, roles: Sequence[str], clinics: Sequence[str] = ()) -> str:
        """Another token from the cluster's signing key; returns `@FILE`."""
        path = mint_token_file(self.data_dir, name, roles, clinics)
        return "@" + str(path)

    def env(self) -> dict[str, str]:
        """What clients read from the environment to reach this cluster."""
        if not self.secure:
            return {}
        return {TLS_DIR_ENV: str(self.certs_dir), TOKEN_ENV: "@" + str(self.token_path())}

    def export_env(self) -> None:
        """Set env() in os.environ, remembering what was there (stop_cluster restores it)."""
        if not self.saved_env:
            self.saved_env = {k: os.environ.get(k) for k in (TLS_DIR_ENV, TOKEN_ENV)}
        for k in (TLS_DIR_ENV, TOKEN_ENV):
            os.environ.pop(k, None)
        os.environ.update(self.env())

    def restore_env(self) -> None:
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved_env = {}

    def _seeds(self, addresses: str | Sequence[str] | None) -> str | list[str]:
        if addresses is None:
            return list(self.addresses)
        return addresses if isinstance(addresses, str) else list(addresses)

    def client(self, addresses: str | Sequence[str] | None = None, **kwargs: Any) -> Client:
        """A client with the ops token (or another `token=`) over TLS."""
        kwargs.setdefault("tls", self.tls())
        kwargs.setdefault("token", self.token())
        return Client(self._seeds(addresses), **kwargs)

    def async_client(
        self, addresses: str | Sequence[str] | None = None, **kwargs: Any
    ) -> AsyncClient:
        kwargs.setdefault("tls", self.tls())
        kwargs.setdefault("token", self.token())
        return AsyncClient(self._seeds(addresses), **kwargs)

    def credentials(self, as_node: int | None = None) -> grpc.ChannelCredentials | None:
        """TLS + ops token; with `as_node`, node as_node's certificate and no token."""
        if not self.secure:
            return None
        if as_node is not None:
            tls = self.tls(f"node-{as_node}")
            assert tls is not None
            return tls.credentials()
        tls = self.tls()
        assert tls is not None
        return secure_channel_credentials(tls.credentials(), token_source(self.token()))

    def channel(
        self, address: str, options: Sequence[tuple[str, Any]] = (), *, as_node: int | None = None
    ) -> grpc.Channel:
        """A raw channel to one node: authenticated, so what it sends reaches the handlers."""
        creds = self.credentials(as_node)
        if creds is None:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(address, creds, options=list(options))

    def aio_channel(
        self, address: str, options: Sequence[tuple[str, Any]] = (), *, as_node: int | None = None
    ) -> grpc.aio.Channel:
        creds = self.credentials(as_node)
        if creds is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(address, creds, options=list(options))

    # -- scripts/cluster -------------------------------------------------------

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return script(*args, "--data-dir", str(self.data_dir), timeout=timeout)

    def status(self) -> dict[str, Any]:
        done = self.run("status", "--json", timeout=30)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def states(self) -> dict[int, str]:
        """Node id -> process state (running, paused, stopped) from `status --json`."""
        return {p["node"]: p["state"] for p in self.status()["processes"]}


def start_cluster(
    data_dir: Path,
    nodes: int = 3,
    partitions: int = PARTITIONS,
    extra: tuple[str, ...] = (),
    *,
    export_env: bool = True,
) -> LocalCluster:
    """`scripts/cluster up` (secure unless `extra` has --insecure), the ops token
    minted, and (export_env) MEDKV_TLS_DIR / MEDKV_TOKEN set until stop_cluster."""
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
    cluster = LocalCluster(data_dir, addresses, secure="--insecure" not in extra)
    if cluster.secure:
        mint_token_file(data_dir, OPS_TOKEN, OPS_ROLES, (OPS_CLINIC,))
    if export_env:
        cluster.export_env()
    return cluster


def env_credentials(as_node: int | None = None) -> grpc.ChannelCredentials | None:
    """Credentials from the environment start_cluster exported (None: plaintext):
    TLS with the client certificate and $MEDKV_TOKEN, or node as_node's
    certificate without a token (the Raft transport's kind of caller)."""
    tls_dir = os.environ.get(TLS_DIR_ENV)
    if not tls_dir:
        return None
    if as_node is not None:
        return TlsConfig.from_dir(tls_dir, f"node-{as_node}").credentials()
    return secure_channel_credentials(TlsConfig.from_dir(tls_dir).credentials(), token_source())


def raw_channel(
    address: str, options: Sequence[tuple[str, Any]] = (), *, as_node: int | None = None
) -> grpc.Channel:
    """grpc.insecure_channel's stand-in for raw stubs: authenticated like the
    clients (env_credentials), so a request reaches the node's handlers."""
    creds = env_credentials(as_node)
    if creds is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, creds, options=list(options))


def raw_aio_channel(
    address: str, options: Sequence[tuple[str, Any]] = (), *, as_node: int | None = None
) -> grpc.aio.Channel:
    creds = env_credentials(as_node)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, creds, options=list(options))


def stop_cluster(cluster: LocalCluster) -> None:
    cluster.restore_env()
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


