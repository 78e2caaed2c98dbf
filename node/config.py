"""Node configuration, read from a TOML file.

Example (one [[peers]] table per cluster member, this node included)::

    node_id = 1
    listen = "127.0.0.1:7101"
    data_dir = "/var/lib/medkv/node-1"
    partitions = 16
    replication = 3
    key_file = "/etc/medkv/master.key"

    [[peers]]
    id = 1
    address = "127.0.0.1:7101"         # where this node dials node 1
    # client_address = "..."           # where clients should, if different

    [raft]
    tick_ms = 100
    election_ticks = 10
    max_clock_offset_ms = 250          # bound on clock skew between nodes

    [limits]
    request_timeout_s = 10.0

    [tls]                              # mutual TLS (`medkv certs`)
    ca_file = "/etc/medkv/ca.pem"
    cert_file = "/etc/medkv/node-1.pem"
    key_file = "/etc/medkv/node-1.key"

    [auth]                             # bearer tokens (node/auth/setup.py)
    jwks_file = "/etc/medkv/jwks.json"
    issuers = ["medkv-local"]
    audience = "medkv"

    [metrics]                          # Prometheus /metrics (node/metrics/)
    listen = "127.0.0.1:9101"          # HTTPS with the [tls] certificate

A node needs both [tls] and [auth]: every caller proves who it is. The one
way around it is a top-level `insecure = true`, for a lab on a trusted
network, which the node announces with a warning at every start.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.auth.setup import AuthConfigError, AuthSettings, parse_auth
from node.limits import ValidationError
from node.settings import seed_from_limits, validate_changes
from node.test_only import FORMER_CONFIG_KEYS, TestOnlySwitches
from node.tls import TlsSettings
from proto.placement import DEFAULT_VIRTUAL_NODES, Placement, make_placement


class ConfigError(ValueError):
    """The configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class RaftSettings:
    tick_ms: int = 100
    election_ticks: int = 10
    # 300 ms between heartbeats, 1-2 s election timeout: three or more
    # heartbeats per timeout (etcd's advice) at a third of the idle cost.
    heartbeat_ticks: int = 3
    max_inflight_msgs: int = 256
    max_size_per_msg: int = 1 << 20
    snapshot_every: int = 10_000  # applied entries between partition snapshots
    keep_after_snapshot: int = 2_000  # log entries kept behind a snapshot for slow followers
    # A leader refuses new writes (RESOURCE_EXHAUSTED) while this many bytes of
    # its log are not committed yet: a slow quorum cannot make it buffer without bound.
    max_uncommitted_bytes: int = 64 << 20
    # The most any two nodes' wall clocks may differ. A follower's stated
    # staleness adds it to the age of the leader's last confirmed commit
    # index (node/staleness.py); an announcement dated further in the future
    # than this is refused. Keep clocks synced (NTP) well within it.
    max_clock_offset_ms: int = 250

    def __post_init__(self) -> None:
        offset = self.max_clock_offset_ms
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 60_000:
            raise ConfigError("[raft] max_clock_offset_ms must be an integer from 0 to 60000")


@dataclass(frozen=True)
class Limits:
    request_timeout_s: float = 10.0
    max_pending_proposals: int = 10_000  # per node; beyond: RESOURCE_EXHAUSTED
    # The next four only seed a new cluster's replicated settings (node/settings.py):
    # once a partition has settings, change them with `medkv settings set`.
    history_retention: int = 16
    session_ttl_s: float = 3600.0
    max_sessions: int = 10_000  # open write sessions per partition
    max_results_per_session: int = 64
    max_message_bytes: int = 8 << 20  # gRPC receive/send limit
    # Requests of one BatchCommands stream being served at once; one beyond it
    # is answered RESOURCE_EXHAUSTED at once (node.kv_service.BatchCommands).
    max_in_flight_per_stream: int = 1024


@dataclass(frozen=True)
class LogSettings:
    """[log]: `format = "text"` (default) or `"json"` (node.logfmt; one JSON
    object per line for log shippers). `--log-format` on the command line wins."""

    format: str = "text"


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: where the node serves Prometheus metrics (node.metrics).
    `listen = ""` (the default) serves none. With [tls] the endpoint is HTTPS
    with the node's certificate and requires a client certificate of the
    cluster CA, like every other port of the node."""

    listen: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.listen, str):
            raise ConfigError('[metrics] listen must be a string "host:port"')
        if self.listen:
            split_host_port(self.listen, "[metrics] listen")


def split_host_port(address: str, what: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"; ConfigError naming `what` otherwise."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{what} must be "host:port" with a port from 1 to 65535, not {address!r}')
    return host, int(port)


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    listen: str
    data_dir: Path
    peers: dict[int, str]  # node id -> the address THIS node dials it at
    partitions: int = 16
    replication: int = 3
    virtual_nodes: int = DEFAULT_VIRTUAL_NODES
    key_file: Path | None = None
    raft: RaftSettings = field(default_factory=RaftSettings)
    limits: Limits = field(default_factory=Limits)
    # node id -> the address clients are told to use (routing table, leader
    # hints), when it differs from the one this node dials, e.g. behind the
    # fault-injection proxies of jepsen_like. Defaults to the peer address.
    client_addresses: dict[int, str] = field(default_factory=dict)
    # Mutual TLS on every connection (node.tls); None: plaintext gRPC.
    tls: TlsSettings | None = None
    # Bearer tokens and the audit log (node.auth.setup); None only when insecure.
    auth: AuthSettings | None = None
    # No access control at all: plaintext allowed, no tokens, no audit. Only
    # from `insecure = true` in the file; the node warns at every start.
    insecure: bool = False
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # Test-only switches (node.test_only): set from MEDKV_TEST_ONLY_* environment
    # variables by `python -m node`, never from the configuration file.
    test_only: TestOnlySwitches = field(default_factory=TestOnlySwitches)

    def client_address(self, node_id: int) -> str:
        return self.client_addresses.get(node_id) or self.peers[node_id]

    def insecure_warning(self) -> str | None:
        """What the node logs at every start with `insecure = true` (None otherwise)."""
        if not self.insecure:
            return None
        return (
            f"INSECURE: node {self.node_id} runs with `insecure = true`: "
            f"{'plaintext gRPC' if self.tls is None else 'mutual TLS but no tokens'}; no caller "
            f"is authenticated, any process that reaches {self.listen} may read, write and "
            "erase patient records, and nothing is audited. Use this only for a lab on a "
            "trusted network."
        )

    @property
    def placement(self) -> Placement:
        return make_placement(self.peers, self.partitions, self.replication, self.virtual_nodes)

    @property
    def address(self) -> str:
        return self.peers[self.node_id]


def _section(raw: dict[str, Any], name: str, cls: type[Any]) -> Any:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = set(cls.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"[{name}]: {e}") from None


_TOP_LEVEL = {
    "node_id", "listen", "data_dir", "peers", "partitions", "replication",
    "virtual_nodes", "key_file", "raft", "limits", "tls", "auth", "audit", "insecure",
    "log", "metrics",
}


def _tls(raw: dict[str, Any], base_dir: Path) -> TlsSettings | None:
    values = raw.get("tls")
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ConfigError("[tls] must be a table")
    wanted = ("ca_file", "cert_file", "key_file")
    unknown = set(values) - set(wanted)
    if unknown:
        raise ConfigError(f"unknown key(s) in [tls]: {', '.join(sorted(unknown))}")
    paths = {}
    for name in wanted:
        if name not in values:
            raise ConfigError(f"[tls] needs {name}")
        path = Path(values[name])
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if not path.is_file():
            raise ConfigError(f"[tls] {name}: no such file: {path}")
        paths[name] = path
    return TlsSettings(**paths)


def _is_test_only_key(key: str) -> bool:
    return key in FORMER_CONFIG_KEYS or "test_only" in key.lower()


def _refuse_test_only_keys(raw: dict[str, Any]) -> None:
    """A test-only switch named in a configuration file is an error, not ignored:
    whoever wrote it expects it to act, and it must never act in production."""
    named = sorted(k for k in raw if _is_test_only_key(k))
    for section in ("raft", "limits"):
        values = raw.get(section)
        if isinstance(values, dict):
            named += sorted(
                f"[{section}] {k}" for k in values
                if _is_test_only_key(k)
            )
    if named:
        raise ConfigError(
            f"{', '.join(named)}: test-only switch(es) cannot be set in a configuration file; "
            "remove the line(s)"
        )


def parse_config(raw: dict[str, Any], base_dir: Path) -> NodeConfig:
    _refuse_test_only_keys(raw)
    unknown = set(raw) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
    for key in ("node_id", "listen", "data_dir", "peers"):
        if key not in raw:
            raise ConfigError(f"missing required key: {key}")
    peers: dict[int, str] = {}
    client_addresses: dict[int, str] = {}
    for p in raw["peers"]:
        if not isinstance(p, dict) or "id" not in p or "address" not in p:
            raise ConfigError("each [[peers]] table needs id and address")
        unknown = set(p) - {"id", "address", "client_address"}
        if unknown:
            raise ConfigError(f"unknown key(s) in [[peers]]: {', '.join(sorted(unknown))}")
        pid = int(p["id"])
        if pid in peers:
            raise ConfigError(f"peer id {pid} appears twice")
        peers[pid] = str(p["address"])
        if "client_address" in p:
            client_addresses[pid] = str(p["client_address"])
    node_id = int(raw["node_id"])
    if node_id not in peers:
        raise ConfigError(f"node_id {node_id} is not among the [[peers]]")
    data_dir = Path(raw["data_dir"])
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()
    key_file = raw.get("key_file")
    key_path = None
    if key_file:
        key_path = Path(key_file)
        if not key_path.is_absolute():
            key_path = (base_dir / key_path).resolve()
    insecure = raw.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError("insecure must be true or false")
    tls = _tls(raw, base_dir)
    try:
        auth = parse_auth(raw, base_dir)
    except AuthConfigError as e:
        raise ConfigError(str(e)) from None
    if auth is not None and tls is None:
        raise ConfigError(
            "[auth] needs [tls]: a bearer token sent over plaintext is a password in clear text"
        )
    if not insecure and (tls is None or auth is None):
        missing = " and ".join(t for t, v in (("[tls]", tls), ("[auth]", auth)) if v is None)
        raise ConfigError(
            f"no {missing} in the configuration: a node requires mutual TLS and bearer tokens "
            "(`scripts/cluster up` writes both; `medkv certs` and `medkv tokens` make them). "
            "For a lab on a trusted network only, set `insecure = true`."
        )
    cfg = NodeConfig(
        node_id=node_id,
        listen=str(raw["listen"]),
        data_dir=data_dir,
        peers=peers,
        partitions=int(raw.get("partitions", 16)),
        replication=int(raw.get("replication", 3)),
        virtual_nodes=int(raw.get("virtual_nodes", DEFAULT_VIRTUAL_NODES)),
        key_file=key_path,
        raft=_section(raw, "raft", RaftSettings),
        limits=_section(raw, "limits", Limits),
        client_addresses=client_addresses,
        tls=tls,
        auth=auth,
        insecure=insecure,
        log=_section(raw, "log", LogSettings),
        metrics=_section(raw, "metrics", MetricsSettings),
    )
    if cfg.metrics.listen and cfg.metrics.listen == cfg.listen:
        raise ConfigError("[metrics] listen must differ from the gRPC listen address")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError('[log] format must be "text" or "json"')
    if cfg.limits.max_in_flight_per_stream < 1:
        raise ConfigError("[limits] max_in_flight_per_stream must be at least 1")
    if cfg.raft.max_uncommitted_bytes < 1:
        raise ConfigError("[raft] max_uncommitted_bytes must be at least 1")
    try:
        validate_changes(seed_from_limits(cfg.limits))
    except (ValidationError, TypeError, ValueError) as e:
        raise ConfigError(f"[limits]: {e}") from None
    try:
        cfg.placement.table  # noqa: B018 - validates partitions/replication against the peers
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def load_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse_config(raw, p.parent)
