"""Local cluster control for operators and tests: one command per action.

    scripts/cluster up --nodes N --data-dir DIR [--base-port 7100] [--partitions 16]
                       [--replicas 3] [--host 127.0.0.1] [--timeout 60]
                       [--links-file FILE] [--insecure] [--no-init]
                       [--metrics-base-port P]
    scripts/cluster status        --data-dir DIR [--json]
    scripts/cluster env           --data-dir DIR [--as NAME]   shell exports for clients
    scripts/cluster token NAME    --data-dir DIR --role R [--role R2] [--clinic C] [--ttl 8h]
                                  mint DIR/tokens/NAME.token (e.g. a bench's several roles)
    scripts/cluster add-node      --data-dir DIR       node N+1: start it, `medkv node add` it
    scripts/cluster down          --data-dir DIR [--grace 10]
    scripts/cluster kill-node ID  --data-dir DIR       (SIGKILL)
    scripts/cluster restart-node ID --data-dir DIR     (SIGTERM, then start again)
    scripts/cluster pause-node ID --data-dir DIR       (SIGSTOP)
    scripts/cluster resume-node ID --data-dir DIR      (SIGCONT)

`up` starts the nodes, then creates the cluster once (`medkv cluster init`
through node 1: node 1's [[peers]] are the initial members) and waits for
every partition's leader; a second `up` finds the cluster and creates nothing.

Nodes are numbered 1..N; node i listens on host:(base_port + i) and lives in
DIR/node-i/ (node.toml, node.log, node.pid, its data). DIR/cluster.json
remembers the layout so every later command needs only --data-dir. Nodes run
in their own sessions, so they outlive this script; `down` stops every one of
them, paused ones included, and waits until none is left.

MEDKV_LOG_FORMAT=json in the environment of `up` / `restart-node` makes the
nodes write one JSON object per log line (node.logfmt; the same as
`python -m node --log-format json`); this script's own "started by" line
in node.log is then a JSON line too.

Secure by default: `up` gives the cluster mutual TLS and access control, made
once and reused by every later `up` of the same DIR (a CA is never remade
under existing data, so nodes and clients keep trusting each other):

    DIR/certs/   ca.pem + ca.key, node-<i>.pem/.key for every node (naming
                 127.0.0.1 and --host), client.pem/.key: what
                 client.tls.TlsConfig.from_dir(DIR/certs) reads
    DIR/auth/    token-signing.key (0600) and jwks.json, which the nodes trust
                 ([auth] jwks_file); mint more with `medkv tokens issue --key ...`
    DIR/tokens/  NAME.token (0600), valid 30 days, re-minted when missing or
                 within a day of expiry: admin, clinician (clinic north),
                 clinician-south (clinic south), clinic-admin (north), analyst,
                 auditor

Every node.toml gets [tls] and [auth]. `--insecure` instead writes
`insecure = true` (plaintext, no tokens, no access control, no audit: only
for experiments; the nodes and this script say so loudly); `--tls` is
accepted and does nothing (TLS is the default). `status` and the waits of
`up`/`restart-node` ask the nodes with the admin token.

`up` prints the client addresses (host:port,host:port,...) on stdout, so
`export MEDKV_ADDR=$(scripts/cluster up ...)` works; progress goes to stderr.
`eval "$(scripts/cluster env --data-dir DIR)"` sets everything a client, the
CLI and jepsen_like read: MEDKV_ADDR; MEDKV_TLS_DIR unless the cluster is
--insecure; MEDKV_TOKEN=@DIR/tokens/NAME.token when that file exists (a file
reference, so the token itself never lands in the shell's environment dumps
or history, and a renewed file is picked up). Variables that do not apply
are unset, so switching between clusters leaves nothing stale.

`--metrics-base-port P` turns on each node's Prometheus endpoint ([metrics]
listen = host:(P + i), node.metrics): HTTPS with the node's certificate,
requiring a client certificate of DIR/certs (DIR/certs/client.pem does), or
plain HTTP on an --insecure cluster. `up` and `status` say where they are.

`--links-file` puts something between the nodes, e.g. the fault-injection
proxies of jepsen_like: a JSON object

    {"peers": {"1": {"2": "127.0.0.1:40001", ...}, ...},   where node 1 dials node 2
     "clients": {"1": "127.0.0.1:40101", ...}}              what clients are told

written into each node's [[peers]] `address` and `client_address`. Links
left out keep the direct address. The nodes still listen on base_port + i.
The file may name ids past --nodes: links for nodes `add-node` starts later
(the new node dials its peers, and clients dial it, through them; the
members dial it at base_port + i, the address the cluster state records).

Node ids are never reused: `add-node` appends N+1 even when some earlier node
was decommissioned or removed (`medkv node decommission` / `node remove
--dead`); `status` lists such a node as stopped, and `down` skips it.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client import Client, MedkvError, RetryPolicy  # noqa: E402
from client.auth import TOKEN_ENV  # noqa: E402
from client.status_table import (  # noqa: E402
    partitions_with_leader,
    render_status,
    status_dict,
)
from client.tls import TLS_DIR_ENV, TlsConfig  # noqa: E402
from node.auth.tokens import (  # noqa: E402
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    JWKS_FILE,
    SIGNING_KEY_FILE,
)

STATE_FILE = "cluster.json"
KEY_FILE = "master.key"
TOKENS_DIR = "tokens"  # DIR/tokens/NAME.token: bearer tokens for local clients
AUTH_DIR = "auth"  # DIR/auth: the token signing key and the JWKS the nodes trust
DEFAULT_TOKEN_NAME = "clinician"
STATUS_TOKEN_NAME = "admin"  # what this script itself asks the nodes with
TOKEN_TTL_S = 30 * 86_400
TOKEN_RENEW_S = 86_400  # an `up` re-mints a token with less than this left
# The tokens every secure `up` leaves in DIR/tokens: name -> (roles, clinics).
LOCAL_TOKENS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "admin": (("admin",), ()),
    "clinician": (("clinician",), ("north",)),
    "clinician-south": (("clinician",), ("south",)),
    "clinic-admin": (("clinic-admin",), ("north",)),
    "analyst": (("analyst",), ()),
    "auditor": (("auditor",), ()),
}
INSECURE_WARNING = """\
cluster: ############################################################
cluster: WARNING: --insecure: plaintext gRPC, NO authentication, NO access
cluster: control, NO audit log. Anyone who can reach the ports can read and
cluster: change every record. Never put patient data in this cluster.
cluster: ############################################################"""


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ClusterError(Exception):
    """A command cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    nodes: int
    host: str
    base_port: int
    partitions: int
    replicas: int
    key_file: str | None
    raft: dict[str, int] = field(default_factory=dict)  # extra [raft] settings
    limits: dict[str, float] = field(default_factory=dict)  # extra [limits] settings
    tls_dir: str | None = None  # mutual TLS with the certificates here (DIR/certs)
    # Access control: [tls] + [auth] in every node.toml. False only for an
    # `up --insecure` cluster (and a cluster.json older than access control).
    secure: bool = False
    auth_dir: str | None = None  # token-signing.key + jwks.json (DIR/auth)
    # Optional indirection (see --links-file): {"peers": {src: {dst: addr}},
    # "clients": {dst: addr}}, node ids as strings (JSON object keys).
    links: dict[str, dict[str, Any]] | None = None
    # Node i serves Prometheus metrics on host:(metrics_base_port + i); None: off.
    metrics_base_port: int | None = None
    # How many of the nodes `add-node` appended after `up` (the last ones).
    added: int = 0
    # Nodes the cluster removed (`medkv node decommission` / `node remove
    # --dead`), as this script learned it (`down`, or a node refusing to start
    # as a non-member): `up` no longer starts them. Their ids stay taken.
    removed: list[int] = field(default_factory=list)

    def tls(self) -> TlsConfig | None:
        """The client's side of the cluster's TLS, if it has any."""
        return TlsConfig.from_dir(self.tls_dir) if self.tls_dir else None

    def node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    def address(self, node: int) -> str:
        return f"{self.host}:{self.base_port + node}"

    def member_ids(self) -> list[int]:
        """The nodes not known to be removed (what `up` starts, clients dial)."""
        return [n for n in self.node_ids() if n not in self.removed]

    def addresses(self) -> list[str]:
        return [self.address(n) for n in self.member_ids()]

    def metrics_address(self, node: int) -> str | None:
        if self.metrics_base_port is None:
            return None
        return f"{self.host}:{self.metrics_base_port + node}"

    def metrics_url(self, node: int) -> str | None:
        address = self.metrics_address(node)
        if address is None:
            return None
        return f"{'https' if self.tls_dir else 'http'}://{address}/metrics"

    def peer_address(self, node: int, peer: int) -> str:
        """Where `node` dials `peer`: the links file's address, else the direct one."""
        if node != peer and self.links:
            via = self.links.get("peers", {}).get(str(node), {}).get(str(peer))
            if via:
                return str(via)
        return self.address(peer)

    def client_address(self, peer: int) -> str | None:
        """What nodes tell clients to dial for `peer`, when the links file says."""
        if self.links:
            via = self.links.get("clients", {}).get(str(peer))
            if via:
                return str(via)
        return None


class Cluster:
    """One data directory's cluster: its layout, files and node processes."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir.resolve()

    # -- files -----------------------------------------------------------------

    def node_dir(self, node: int) -> Path:
        return self.dir / f"node-{node}"

    def certs_dir(self) -> Path:
        return self.dir / "certs"

    def auth_dir(self) -> Path:
        return self.dir / AUTH_DIR

    def token_path(self, name: str) -> Path:
        return self.dir / TOKENS_DIR / f"{name}.token"

    def client(self, layout: Layout, addresses: str | list[str], policy: RetryPolicy) -> Client:
        """A client for this script's own calls: TLS and the admin token on a
        secure cluster, plaintext without a token otherwise (main() keeps
        $MEDKV_TOKEN / $MEDKV_TLS_DIR of another cluster out of it)."""
        if not layout.secure:
            return Client(addresses, retry=policy, tls=layout.tls())
        token = self.token_path(STATUS_TOKEN_NAME)
        if not token.is_file():
            raise ClusterError(f"{token} is missing; `scripts/cluster up` mints it again")
        return Client(addresses, retry=policy, tls=layout.tls(), token="@" + str(token))

    def config_path(self, node: int) -> Path:
        return self.node_dir(node) / "node.toml"

    def pid_path(self, node: int) -> Path:
        return self.node_dir(node) / "node.pid"

    def log_path(self, node: int) -> Path:
        return self.node_dir(node) / "node.log"

    def load(self) -> Layout:
        path = self.dir / STATE_FILE
        try:
            raw = json.loads(path.read_text())
            # Written by an older version: test-only switches lived here once.
            for gone in ("lossy_unsynced_writes", "unsafe_skip_raft_fsync"):
                raw.pop(gone, None)
            return Layout(**raw)
        except FileNotFoundError:
            raise ClusterError(
                f"no cluster in {self.dir} (run `scripts/cluster up` first)"
            ) from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise ClusterError(f"{path} is damaged: {exc}") from None

    def save(self, layout: Layout) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(layout), indent=2) + "\n")
        tmp.replace(self.dir / STATE_FILE)

    def check_node(self, layout: Layout, node: int) -> None:
        if node not in layout.node_ids():
            raise ClusterError(f"no node {node}: this cluster has nodes 1..{layout.nodes}")

    def write_config(self, layout: Layout, node: int) -> Path:
        """The node's TOML configuration, in the format node/config.py reads."""
        self.node_dir(node).mkdir(parents=True, exist_ok=True)
        q = json.dumps  # a JSON string is a valid TOML basic string
        lines = [
            "# Written by scripts/cluster up; rewritten on every `up`.",
            f"node_id = {node}",
            f"listen = {q(layout.address(node))}",
            f"data_dir = {q(str(self.node_dir(node)))}",
            f"partitions = {layout.partitions}",
            f"replication = {layout.replicas}",
        ]
        if layout.key_file:
            lines.append(f"key_file = {q(layout.key_file)}")
        if not layout.secure:
            lines.append("insecure = true  # scripts/cluster up --insecure: no TLS, no tokens")
        for peer in layout.member_ids():
            lines += ["", "[[peers]]", f"id = {peer}", f"address = {q(layout.peer_address(node, peer))}"]
            client_address = layout.client_address(peer)
            if client_address is not None:
                lines.append(f"client_address = {q(client_address)}")
        if layout.tls_dir:
            certs = Path(layout.tls_dir)
            lines += [
                "", "[tls]",
                f"ca_file = {q(str(certs / 'ca.pem'))}",
                f"cert_file = {q(str(certs / f'node-{node}.pem'))}",
                f"key_file = {q(str(certs / f'node-{node}.key'))}",
            ]
        if layout.secure and layout.auth_dir:
            lines += [
                "", "[auth]",
                f"jwks_file = {q(str(Path(layout.auth_dir) / JWKS_FILE))}",
                f"issuers = [{q(DEFAULT_ISSUER)}]",
                f"audience = {q(DEFAULT_AUDIENCE)}",
            ]
        metrics = layout.metrics_address(node)
        if metrics is not None:
            lines += ["", "[metrics]", f"listen = {q(metrics)}"]
        raft = {"tick_ms": 100, "election_ticks": 10, **layout.raft}
        lines += ["", "[raft]", *(f"{k} = {v}" for k, v in sorted(raft.items()))]
        if layout.limits:
            lines += ["", "[limits]", *(f"{k} = {v}" for k, v in sorted(layout.limits.items()))]
        lines.append("")
        path = self.config_path(node)
        path.write_text("\n".join(lines))
        return path

    # -- processes -------------------------------------------------------------

    def pid(self, node: int) -> int | None:
        """The pid of this node's live process, or None (stale pid files are ignored)."""
        try:
            pid = int(self.pid_path(node).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_our_node(pid, self.config_path(node)) else None

    def state(self, node: int) -> str:
        pid = self.pid(node)
        if pid is None:
            return "stopped"
        return "paused" if _proc_state(pid) in ("T", "t") else "running"

    def start(self, node: int) -> subprocess.Popen[bytes]:
        if self.pid(node) is not None:
            raise ClusterError(f"node {node} is already running")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        with open(self.log_path(node), "ab") as log:
            if env.get("MEDKV_LOG_FORMAT") == "json":  # node.log stays all JSON lines
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                log.write((json.dumps({
                    "time": stamp, "level": "INFO", "logger": "scripts.cluster", "node": node,
                    "event": "started by scripts/cluster",
                }) + "\n").encode())
            else:
                log.write(
                    f"\n==== started by scripts/cluster at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                    .encode()
                )
            log.flush()
            process = subprocess.Popen(
                [sys.executable, "-m", "node", "--config", str(self.config_path(node))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
                env=env,
                start_new_session=True,  # outlives this script; its own process group
            )
        self.pid_path(node).write_text(f"{process.pid}\n")
        return process

    def signal(self, node: int, sig: signal.Signals) -> bool:
        """Send sig to the node's process group; False if it is not running."""
        pid = self.pid(node)
        if pid is None:
            return False
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def wait_gone(self, nodes: list[int], timeout: float) -> list[int]:
        """Wait until none of the nodes runs; returns the ones still running at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [n for n in nodes if self.pid(n) is not None]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.05)

    def stop(self, nodes: list[int], grace: float) -> None:
        """SIGCONT (a paused node cannot act on SIGTERM), SIGTERM, then SIGKILL after grace."""
        running = [n for n in nodes if self.pid(n) is not None]
        for n in running:
            self.signal(n, signal.SIGCONT)
            self.signal(n, signal.SIGTERM)
        left = self.wait_gone(running, grace)
        for n in left:
            note(f"node {n} did not stop within {grace:g}s: SIGKILL")
            self.signal(n, signal.SIGKILL)
        left = self.wait_gone(left, 10.0)
        if left:
            raise ClusterError(f"node(s) {left} survived SIGKILL; check `ps` for their pids")
        for n in nodes:
            self.pid_path(n).unlink(missing_ok=True)


def _proc_state(pid: int) -> str:
    """The one-letter /proc state (R, S, D, T, Z, ...), or '' when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _is_our_node(pid: int, config: Path) -> bool:
    """True if pid is alive (not a zombie) and runs this node's config (pids get reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process now holds this pid
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no /proc (not Linux): trust the pid file
    if _proc_state(pid) in ("Z", "X", ""):
        return False
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(config).encode() in cmdline and b"node" in cmdline


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _node_command_exists(*args: str) -> bool:
    """True if `python -m node <args> --help` runs (the lead's node may not have it yet)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "node", *args, "--help"],
            cwd=str(ROOT),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _ensure_key(cluster: Cluster) -> str | None:
    key = cluster.dir / KEY_FILE
    if key.exists():
        return str(key)
    if not _node_command_exists("keys", "init"):
        note("note: `python -m node keys init` is not available: nodes start without key_file")
        return None
    done = subprocess.run(
        [sys.executable, "-m", "node", "keys", "init", "--key-file", str(key)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not key.exists():
        raise ClusterError(f"creating {key} failed: {done.stderr.strip() or done.stdout.strip()}")
    note(f"created master key {key}")
    return str(key)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _status(cluster: Cluster, layout: Layout, timeout: float) -> Any:
    policy = RetryPolicy(timeout=timeout, attempt_timeout=min(1.0, timeout))
    with cluster.client(layout, layout.addresses(), policy) as kv:
        return kv.cluster_status()


def _exited(cluster: Cluster, node: int, process: subprocess.Popen[bytes] | None) -> str | None:
    """Why the node is gone, or None while it runs (our own child: exact exit status)."""
    if process is not None:
        code = process.poll()
        if code is None:
            return None
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    elif cluster.pid(node) is None:
        how = "is not running"
    else:
        return None
    return f"node {node} {how}; last lines of {cluster.log_path(node)}:\n" + _tail(
        cluster.log_path(node)
    )


def _check_started(
    cluster: Cluster, layout: Layout, started_now: dict[int, subprocess.Popen[bytes]]
) -> None:
    """Raise if a node `up` relies on is gone. A node that exited because the
    cluster removed it (it says "is not a member of cluster") is recorded in
    layout.removed instead, so later commands leave it alone."""
    for n in layout.member_ids():
        why = _exited(cluster, n, started_now.get(n))
        if why is None:
            continue
        if n in started_now and "is not a member of cluster" in _tail(cluster.log_path(n), 5):
            layout.removed[:] = sorted({*layout.removed, n})  # frozen layout, its list
            cluster.save(layout)
            note(f"node {n} was removed from the cluster: not started again "
                 "(its id is not reused)")
            continue
        raise ClusterError(why)


def record_removed(cluster: Cluster, layout: Layout) -> None:
    """Ask the running members which nodes the cluster removed and remember
    them in cluster.json (best effort: nothing changes when none answers)."""
    if not layout.member_ids() or not any(cluster.pid(n) for n in layout.member_ids()):
        return
    policy = RetryPolicy(timeout=3.0, attempt_timeout=1.0)
    try:
        with cluster.client(layout, layout.addresses(), policy) as kv:
            members = kv.list_nodes().members
    except (MedkvError, ClusterError):
        return
    gone = {m.node_id for m in members if m.state == "removed"} & set(layout.node_ids())
    if gone - set(layout.removed):
        layout.removed[:] = sorted({*layout.removed, *gone})
        cluster.save(layout)


def wait_for_leaders(
    cluster: Cluster,
    layout: Layout,
    timeout: float,
    started_now: dict[int, subprocess.Popen[bytes]],
) -> None:
    """Poll Admin.ClusterStatus until every partition has a leader (bounded, with progress)."""
    started = time.monotonic()
    deadline = started + timeout
    last_report = 0.0
    summary = "no node answered yet"
    while True:
        _check_started(cluster, layout, started_now)
        try:
            status = _status(cluster, layout, timeout=1.0)
        except MedkvError:
            status = None
        if status is not None:
            led = partitions_with_leader(status)
            up = sum(1 for n in status.nodes if n.up)
            summary = (
                f"{led}/{layout.partitions} partitions have a leader, "
                f"{up}/{len(layout.member_ids())} nodes up"
            )
            if led == layout.partitions and len(status.partition_info) == layout.partitions:
                note(f"cluster ready in {time.monotonic() - started:.1f}s: {summary}")
                return
        now = time.monotonic()
        if now >= deadline:
            raise ClusterError(
                f"cluster not ready after {timeout:g}s ({summary}); see the node logs in {cluster.dir}"
            )
        if now - last_report >= 1.0:
            note(f"waiting for leaders: {summary} ({now - started:.1f}s)")
            last_report = now
        time.sleep(0.2)


def init_cluster(
    cluster: Cluster,
    layout: Layout,
    timeout: float,
    started_now: dict[int, subprocess.Popen[bytes]],
) -> None:
    """`medkv cluster init` through node 1 until every member holds the cluster
    state (bounded, with progress). A second `up` finds it created and only
    hands it to members that lack it."""
    started = time.monotonic()
    deadline = started + timeout
    summary = "node 1 did not answer yet"
    while True:
        _check_started(cluster, layout, started_now)
        policy = RetryPolicy(timeout=2.0, attempt_timeout=1.0)
        try:
            with cluster.client(layout, layout.addresses()[0], policy) as kv:
                reply = kv.init_cluster(partitions=layout.partitions, replication=layout.replicas)
        except MedkvError as e:
            if e.code is not None and e.code.name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise ClusterError(f"cluster init failed: {e}") from None
            reply = None
        if reply is not None:
            missing = [n.node_id for n in reply.nodes if not n.ok]
            if not missing:
                verb = "found" if reply.already_initialized else "created"
                note(f"cluster {reply.cluster_id} {verb}: {reply.partitions} partitions, "
                     f"replication {reply.replication}")
                return
            summary = f"nodes {missing} not reached yet"
        if time.monotonic() >= deadline:
            raise ClusterError(f"cluster init did not complete in {timeout:g}s ({summary})")
        time.sleep(0.3)


def wait_for_node(
    cluster: Cluster,
    layout: Layout,
    node: int,
    timeout: float,
    process: subprocess.Popen[bytes],
) -> None:
    """Wait until the node answers Admin.ClusterStatus at its own address."""
    deadline = time.monotonic() + timeout
    policy = RetryPolicy(timeout=1.0, attempt_timeout=1.0)
    while time.monotonic() < deadline:
        why = _exited(cluster, node, process)
        if why is not None:
            raise ClusterError(why)
        try:
            with cluster.client(layout, layout.address(node), policy) as kv:
                if kv.cluster_status().answered_by == node:
                    return
        except MedkvError:
            pass
        time.sleep(0.2)
    raise ClusterError(f"node {node} did not answer within {timeout:g}s")


# -- commands ------------------------------------------------------------------


def _raft_settings(pairs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value.isdigit():
            raise ClusterError(f"--raft takes KEY=INTEGER, not {pair!r}")
        out[key] = int(value)
    return out


def _limits_settings(pairs: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            number = float(value) if "." in value else int(value)
        except ValueError:
            number = None
        if not sep or not key or number is None:
            raise ClusterError(f"--limits takes KEY=NUMBER, not {pair!r}")
        out[key] = number
    return out


def _is_address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def load_links(path: str, nodes: int) -> dict[str, dict[str, Any]]:
    """Read and validate a --links-file (see the module docstring)."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ClusterError(f"cannot read the links file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ClusterError(f"the links file {path} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) - {"peers", "clients"}:
        raise ClusterError('the links file must be an object with "peers" and/or "clients"')
    # Ids past --nodes are allowed: links for nodes `add-node` starts later
    # (their proxies exist before they do).
    def is_id(text: Any) -> bool:
        return isinstance(text, str) and text.isdigit() and int(text) >= 1

    peers = raw.get("peers", {})
    clients = raw.get("clients", {})
    if not isinstance(peers, dict) or not isinstance(clients, dict):
        raise ClusterError('"peers" and "clients" must be objects keyed by node id')
    for src, row in peers.items():
        if not is_id(src) or not isinstance(row, dict):
            raise ClusterError(f"links file: peers[{src!r}] is not a node of this cluster")
        for dst, address in row.items():
            if not is_id(dst) or not _is_address(address):
                raise ClusterError(f"links file: peers[{src!r}][{dst!r}] must be host:port")
    for dst, address in clients.items():
        if not is_id(dst) or not _is_address(address):
            raise ClusterError(f"links file: clients[{dst!r}] must be host:port of a node")
    return {"peers": peers, "clients": clients}


def _cert_names(host: str) -> tuple[list[str], list[str]]:
    """(IP addresses, DNS names) a node certificate names: loopback and --host."""
    ips, dns = ["127.0.0.1"], ["localhost"]
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        if host not in dns:
            dns.append(host)
    else:
        if ip not in ips:
            ips.append(ip)
    return ips, dns


def _ensure_certs(cluster: Cluster, nodes: int, host: str) -> str:
    """DIR/certs: a CA, node-1..N and one client certificate, each made only if missing.

    An existing CA is always reused (its key is needed only when something is
    missing); a CA is never made beside certificates of an older one."""
    from node.auth.certs import CertError, init_ca, issue_client, issue_node, load_ca

    certs = cluster.certs_dir()
    missing_nodes = [n for n in range(1, nodes + 1) if not (certs / f"node-{n}.pem").exists()]
    missing_client = not (certs / "client.pem").exists()
    if not missing_nodes and not missing_client and (certs / "ca.pem").exists():
        return str(certs)
    ips, dns = _cert_names(host)
    try:
        if (certs / "ca.pem").exists():
            ca = load_ca(certs)
        elif any(certs.glob("*.pem")):
            raise ClusterError(
                f"{certs} has certificates but no ca.pem; restore it or remove the directory"
            )
        else:
            ca = init_ca(certs)
            note(f"created a cluster CA in {certs}")
        for n in missing_nodes:
            issue_node(ca, certs, n, hosts=ips, dns=dns)
        if missing_client:
            issue_client(ca, certs, "client")
    except CertError as exc:
        raise ClusterError(f"certificates in {certs}: {exc}") from None
    note(f"certificates in {certs}: issued {len(missing_nodes)} node and "
         f"{int(missing_client)} client certificate(s)")
    return str(certs)


def _write_secret(path: Path, text: str) -> None:
    """A 0600 file, replaced atomically (a reader re-reading it sees old or new, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _token_usable(path: Path, kid: str, now: float) -> bool:
    """Does the token file hold a token of this signing key with a day or more left?"""
    import jwt

    try:
        text = path.read_text().strip()
        header = jwt.get_unverified_header(text)
        claims = jwt.decode(text, options={"verify_signature": False})
    except (OSError, jwt.PyJWTError):
        return False
    exp = claims.get("exp")
    return header.get("kid") == kid and isinstance(exp, int) and exp - now > TOKEN_RENEW_S


def _ensure_auth(cluster: Cluster) -> str:
    """DIR/auth (signing key + jwks.json, made once) and DIR/tokens/*.token."""
    from node.auth.tokens import KeySourceError, keygen, load_signing_key, mint, public_jwk

    auth = cluster.auth_dir()
    key_path, jwks_path = auth / SIGNING_KEY_FILE, auth / JWKS_FILE
    try:
        if not key_path.exists():
            if jwks_path.exists():
                raise ClusterError(
                    f"{jwks_path} exists without {key_path}; restore the key or remove {auth}"
                )
            keygen(auth)
            note(f"created a token signing key in {auth}")
        elif not jwks_path.exists():
            raise ClusterError(f"{key_path} exists without {jwks_path}; remove {auth} to remake both")
        key = load_signing_key(key_path)
    except KeySourceError as exc:
        raise ClusterError(f"token keys in {auth}: {exc}") from None
    kid = public_jwk(key.public_key())["kid"]
    now = time.time()
    minted = []
    for name, (roles, clinics) in LOCAL_TOKENS.items():
        path = cluster.token_path(name)
        if _token_usable(path, kid, now):
            continue
        token = mint(key, subject=f"local-{name}", roles=roles, clinics=clinics,
                     ttl_seconds=TOKEN_TTL_S, now=now)
        _write_secret(path, token + "\n")
        minted.append(name)
    if minted:
        note(f"minted {', '.join(minted)} token(s) in {cluster.dir / TOKENS_DIR} (valid 30 days)")
    return str(auth)


def cmd_up(args: argparse.Namespace) -> int:
    cluster = Cluster(Path(args.data_dir))
    if args.nodes < 1 or args.replicas < 1 or args.partitions < 1:
        raise ClusterError("--nodes, --replicas and --partitions must be at least 1")
    if args.replicas > args.nodes:
        raise ClusterError(f"{args.nodes} node(s) cannot hold {args.replicas} replicas")
    if args.base_port + args.nodes > 65535 or args.base_port < 1:
        raise ClusterError("--base-port leaves no room for the node ports")
    if args.insecure and args.tls:
        raise ClusterError("--insecure and --tls contradict each other (TLS is the default)")
    mbase = args.metrics_base_port
    if mbase is not None and (mbase < 1 or mbase + args.nodes > 65535 or (
            mbase < args.base_port + args.nodes and args.base_port < mbase + args.nodes)):
        raise ClusterError("--metrics-base-port must leave room for the node ports and not "
                           "overlap the gRPC ports")
    secure = not args.insecure
    added = 0
    old: Layout | None = None
    if (cluster.dir / STATE_FILE).exists():
        old = cluster.load()
        added = old.added
        running = [n for n in old.node_ids() if cluster.pid(n) is not None]
        if running and old.secure != secure:
            raise ClusterError(
                f"node(s) {running} run {'securely' if old.secure else 'with --insecure'}; "
                "`scripts/cluster down` before switching"
            )
        # Nodes that add-node appended belong to the cluster too: `up` with the
        # original --nodes starts them all.
        if old.nodes > args.nodes and old.added >= old.nodes - args.nodes:
            note(f"{cluster.dir} holds {old.nodes} nodes ({old.added} added with add-node): "
                 "starting every one")
            args.nodes = old.nodes
        wanted = (args.nodes, args.host, args.base_port, args.partitions, args.replicas)
        have = (old.nodes, old.host, old.base_port, old.partitions, old.replicas)
        if wanted != have:
            raise ClusterError(
                f"{cluster.dir} already holds a different cluster ({old.nodes} nodes, "
                f"ports {old.base_port + 1}..{old.base_port + old.nodes}, {old.partitions} "
                f"partitions, {old.replicas} replicas); use it as is or pick another --data-dir"
            )
    cluster.dir.mkdir(parents=True, exist_ok=True)
    if not secure:
        note(INSECURE_WARNING)
    layout = Layout(
        nodes=args.nodes,
        host=args.host,
        base_port=args.base_port,
        partitions=args.partitions,
        replicas=args.replicas,
        key_file=_ensure_key(cluster),
        raft=_raft_settings(args.raft),
        limits=_limits_settings(args.limits),
        tls_dir=_ensure_certs(cluster, args.nodes, args.host) if secure else None,
        secure=secure,
        auth_dir=_ensure_auth(cluster) if secure else None,
        links=load_links(args.links_file, args.nodes) if args.links_file else None,
        metrics_base_port=mbase,
        added=added,
        removed=old.removed if old is not None else [],
    )
    cluster.save(layout)
    to_start = [n for n in layout.member_ids() if cluster.pid(n) is None]
    busy = [
        layout.address(n) for n in to_start if not _port_free(layout.host, layout.base_port + n)
    ]
    if mbase is not None:
        busy += [f"{layout.host}:{mbase + n} (metrics)" for n in to_start
                 if not _port_free(layout.host, mbase + n)]
    if busy:
        raise ClusterError(f"address(es) already in use: {', '.join(busy)} (choose --base-port)")
    for n in layout.member_ids():
        cluster.write_config(layout, n)
    started: dict[int, subprocess.Popen[bytes]] = {}
    for n in to_start:
        started[n] = cluster.start(n)
        note(f"node {n}: pid {started[n].pid}, {layout.address(n)}, log {cluster.log_path(n)}"
             + (f", metrics {layout.metrics_url(n)}" if mbase is not None else ""))
    if args.no_init:
        note("nodes started; create the cluster with `medkv cluster init` (first address)")
        print(",".join(layout.addresses()), flush=True)
        return 0
    try:
        init_cluster(cluster, layout, args.timeout, started)
        wait_for_leaders(cluster, layout, args.timeout, started)
    except ClusterError:
        note("startup failed; the nodes are left running for inspection (`scripts/cluster down`)")
        raise
    print(",".join(layout.addresses()), flush=True)
    return 0


def cmd_add_node(args: argparse.Namespace) -> int:
    """One more node: its certificate and configuration, its process (which
    waits to be handed the cluster state), then `medkv node add` through the
    running members, waiting until it is active."""
    cluster = Cluster(Path(args.data_dir))
    old = cluster.load()
    # With a --links-file, the new node dials its peers and clients dial it
    # through the file's links for its id (written before it existed); the
    # members dial it at its own address (the one the cluster state records).
    layout = dataclasses.replace(old, nodes=old.nodes + 1, added=old.added + 1)
    new = layout.nodes
    if not _port_free(layout.host, layout.base_port + new):
        raise ClusterError(f"address {layout.address(new)} is already in use")
    if layout.secure:
        layout = dataclasses.replace(
            layout, tls_dir=_ensure_certs(cluster, layout.nodes, layout.host))
    cluster.save(layout)
    cluster.write_config(layout, new)
    process = cluster.start(new)
    note(f"node {new}: pid {process.pid}, {layout.address(new)}, log {cluster.log_path(new)}")
    policy = RetryPolicy(timeout=30.0, attempt_timeout=5.0)
    with cluster.client(layout, old.addresses(), policy) as kv:
        reply = kv.add_node(new, layout.address(new), client_address=layout.client_address(new)
                            or "")
        note(f"node {new}: {'a member already' if reply.already else 'added'} "
             f"(placement epoch {reply.epoch})")
        deadline = time.monotonic() + args.timeout
        state = reply.state
        while state != "active":
            why = _exited(cluster, new, process)
            if why is not None:
                raise ClusterError(why)
            if time.monotonic() > deadline:
                raise ClusterError(f"node {new} is still {state} after {args.timeout:g}s")
            time.sleep(0.3)
            state = {m.node_id: m.state for m in kv.list_nodes().members}.get(new, state)
    note(f"node {new} is active")
    print(layout.address(new), flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = Cluster(Path(args.data_dir))
    layout = cluster.load()
    processes = [
        {"node": n, "address": layout.address(n), "pid": cluster.pid(n), "state": cluster.state(n),
         "metrics": layout.metrics_url(n), "removed": n in layout.removed}
        for n in layout.node_ids()
    ]
    reason = ""
    try:
        status = _status(cluster, layout, timeout=args.timeout)
    except MedkvError as exc:
        status = None
        reason = str(exc)
    if args.json:
        data: dict[str, Any] = {
            "data_dir": str(cluster.dir),
            "processes": processes,
            "cluster": status_dict(status) if status is not None else None,
        }
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(f"processes in {cluster.dir}:")
        for p in processes:
            pid = p["pid"] if p["pid"] is not None else "-"
            metrics = f"  metrics {p['metrics']}" if p["metrics"] else ""
            removed = "  (removed from the cluster)" if p["removed"] else ""
            print(f"  node {p['node']:<3} {p['address']:<21} {p['state']:<8} pid {pid}{metrics}"
                  f"{removed}")
        print()
        print(render_status(status) if status is not None else f"no node answered: {reason}")
    return 0 if status is not None else 1


def env_lines(cluster: Cluster, layout: Layout, token_name: str) -> list[str]:
    """`export`/`unset` lines for a POSIX shell; reads files only, starts nothing."""
    exports = {"MEDKV_ADDR": ",".join(layout.addresses())}
    if layout.tls_dir:
        exports["MEDKV_TLS_DIR"] = str(Path(layout.tls_dir).resolve())
    token = cluster.token_path(token_name)
    if token.is_file():
        if layout.tls_dir:
            exports["MEDKV_TOKEN"] = "@" + str(token)
        else:
            # The clients refuse a token over plaintext; say why it is left out.
            note(f"cluster: {token} not exported: the cluster runs without TLS")
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    stale = [k for k in ("MEDKV_TLS_DIR", "MEDKV_TOKEN") if k not in exports]
    if stale:
        lines.append("unset " + " ".join(stale))
    return lines


def cmd_env(args: argparse.Namespace) -> int:
    cluster = Cluster(Path(args.data_dir))
    layout = cluster.load()
    if not args.as_name or "/" in args.as_name or args.as_name.startswith("."):
        raise ClusterError(f"--as must name a token in {cluster.dir / TOKENS_DIR}, not a path")
    print("\n".join(env_lines(cluster, layout, args.as_name)), flush=True)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from node.auth.tokens import KeySourceError, load_signing_key, mint

    cluster = Cluster(Path(args.data_dir))
    layout = cluster.load()
    if not layout.secure or not layout.auth_dir:
        raise ClusterError(f"the cluster in {cluster.dir} runs --insecure: it takes no tokens")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise ClusterError(f"NAME names a file in {cluster.dir / TOKENS_DIR}, not a path")
    try:
        key = load_signing_key(Path(layout.auth_dir) / SIGNING_KEY_FILE)
    except KeySourceError as exc:
        raise ClusterError(str(exc)) from None
    token = mint(key, subject=f"local-{args.name}", roles=args.role, clinics=args.clinic,
                 ttl_seconds=args.ttl)
    path = cluster.token_path(args.name)
    _write_secret(path, token + "\n")
    print(path, flush=True)
    return 0


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 900, 15m, 8h or 30d") from None


def cmd_down(args: argparse.Namespace) -> int:
    cluster = Cluster(Path(args.data_dir))
    layout = cluster.load()
    record_removed(cluster, layout)  # so the next `up` does not start them
    running = [n for n in layout.node_ids() if cluster.pid(n) is not None]
    cluster.stop(layout.node_ids(), args.grace)
    note(f"stopped {len(running)} node(s); data kept in {cluster.dir}")
    return 0


def _one_node(args: argparse.Namespace) -> tuple[Cluster, Layout, int]:
    cluster = Cluster(Path(args.data_dir))
    layout = cluster.load()
    cluster.check_node(layout, args.node)
    return cluster, layout, args.node


def cmd_kill(args: argparse.Namespace) -> int:
    cluster, _, node = _one_node(args)
    if not cluster.signal(node, signal.SIGKILL):
        raise ClusterError(f"node {node} is not running")
    if cluster.wait_gone([node], 10.0):
        raise ClusterError(f"node {node} survived SIGKILL")
    cluster.pid_path(node).unlink(missing_ok=True)
    note(f"node {node} killed (SIGKILL)")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    cluster, layout, node = _one_node(args)
    cluster.stop([node], args.grace)
    process = cluster.start(node)
    note(f"node {node}: restarted as pid {process.pid}")
    wait_for_node(cluster, layout, node, args.timeout, process)
    note(f"node {node} is answering at {layout.address(node)}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    cluster, _, node = _one_node(args)
    if not cluster.signal(node, signal.SIGSTOP):
        raise ClusterError(f"node {node} is not running")
    note(f"node {node} paused (SIGSTOP)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    cluster, _, node = _one_node(args)
    if not cluster.signal(node, signal.SIGCONT):
        raise ClusterError(f"node {node} is not running")
    note(f"node {node} resumed (SIGCONT)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/cluster",
        description="Start, inspect and stop a local medkv cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", required=True, help="the cluster's directory")

    up = sub.add_parser("up", help="start a cluster in the background and wait for leaders")
    up.add_argument("--nodes", type=int, required=True)
    data_dir(up)
    up.add_argument("--base-port", type=int, default=7100, help="node i listens on PORT+i")
    up.add_argument("--partitions", type=int, default=16)
    up.add_argument("--replicas", type=int, default=3)
    up.add_argument("--host", default="127.0.0.1", help="address the nodes bind and advertise")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for leaders")
    up.add_argument(
        "--raft", action="append", default=[], metavar="KEY=VALUE",
        help="a [raft] setting of every node, e.g. snapshot_every=200 (repeatable)",
    )
    up.add_argument(
        "--limits", action="append", default=[], metavar="KEY=VALUE",
        help="a [limits] setting of every node, e.g. request_timeout_s=5 (repeatable)",
    )
    up.add_argument(
        "--tls", action="store_true",
        help="accepted for old command lines; TLS (certificates in DIR/certs) and tokens "
        "(DIR/tokens) are the default",
    )
    up.add_argument(
        "--no-init", action="store_true",
        help="start the nodes only; create the cluster yourself with `medkv cluster init`",
    )
    up.add_argument(
        "--insecure", action="store_true",
        help="plaintext, no tokens, no access control, no audit (`insecure = true`): "
        "experiments only, never patient data",
    )
    up.add_argument(
        "--metrics-base-port", type=int, default=None, metavar="P",
        help="serve each node's Prometheus metrics on host:(P+i) (HTTPS with mutual TLS "
        "unless --insecure); default: no metrics endpoint",
    )
    up.add_argument(
        "--links-file", metavar="FILE",
        help="JSON: the address each node dials each peer at, and the client address of "
        "each node (e.g. fault-injection proxies); see the module docstring",
    )
    up.set_defaults(run=cmd_up)

    status = sub.add_parser("status", help="node processes and the cluster status table")
    data_dir(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=3.0)
    status.set_defaults(run=cmd_status)

    env = sub.add_parser(
        "env", help='shell exports for clients: eval "$(scripts/cluster env --data-dir DIR)"'
    )
    data_dir(env)
    env.add_argument(
        "--as", dest="as_name", default=DEFAULT_TOKEN_NAME, metavar="NAME",
        help=f"export MEDKV_TOKEN=@DIR/{TOKENS_DIR}/NAME.token if it exists "
        "(default %(default)s)",
    )
    env.set_defaults(run=cmd_env)

    token = sub.add_parser(
        "token", help="mint DIR/tokens/NAME.token with the cluster's signing key; prints its path"
    )
    token.add_argument("name", metavar="NAME")
    data_dir(token)
    token.add_argument("--role", action="append", required=True,
                       choices=sorted({r for roles, _ in LOCAL_TOKENS.values() for r in roles}
                                      | {"break-glass"}),
                       help="a role (repeatable)")
    token.add_argument("--clinic", action="append", default=[], help="a clinic (repeatable)")
    token.add_argument("--ttl", type=_duration, default=8 * 3600.0,
                       help="lifetime, e.g. 900, 15m, 8h, 30d (default 8h)")
    token.set_defaults(run=cmd_token)

    down = sub.add_parser("down", help="stop every node (SIGTERM, then SIGKILL)")
    data_dir(down)
    down.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    down.set_defaults(run=cmd_down)

    add = sub.add_parser(
        "add-node", help="start node N+1 and make it a member (`medkv node add`); waits "
        "until it is active")
    data_dir(add)
    add.add_argument("--timeout", type=float, default=120.0)
    add.set_defaults(run=cmd_add_node)

    for name, func, text in (
        ("kill-node", cmd_kill, "SIGKILL one node"),
        ("restart-node", cmd_restart, "stop one node and start it again"),
        ("pause-node", cmd_pause, "SIGSTOP one node"),
        ("resume-node", cmd_resume, "SIGCONT one node"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("node", type=int, metavar="ID")
        data_dir(p)
        if name == "restart-node":
            p.add_argument("--grace", type=float, default=10.0)
            p.add_argument("--timeout", type=float, default=30.0)
        p.set_defaults(run=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # This script's own clients get TLS and a token from the cluster's files
    # (Cluster.client), never from a shell that `env` pointed at another cluster.
    for name in (TLS_DIR_ENV, TOKEN_ENV):
        os.environ.pop(name, None)
    try:
        return int(args.run(args))
    except ClusterError as exc:
        note(f"cluster: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
