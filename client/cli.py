"""`medkv`: the command line for clinicians' tools, operators and scripts.

    medkv [--addr HOST:PORT[,HOST:PORT...]] [--json] [--timeout S] [--tls-dir DIR]
          [--token JWT|@FILE] [--clinic C] [--break-glass-reason TEXT] COMMAND ...

The options above may also follow the command (`medkv status --json`); given
twice, the later one wins.

    put PATIENT RECORD [--value TEXT]          value from --value, else stdin (bytes)
    get PATIENT RECORD [--consistency linearizable|follower|bounded]
                       [--max-staleness S] [--min-version V] [--at-version V] [--raw]
    history PATIENT RECORD [--limit N]
    delete PATIENT RECORD [--expected-version V]
    cas PATIENT RECORD --expected-version V [--value TEXT]
    scan [--partition P ...] [--consistency ...] [--max-staleness S] [--page-size N]
    status                                    the cluster at a glance (exit 0 OK, 5 DEGRADED,
                                              6 UNAVAILABLE)
    cluster init [--partitions N] [--replication R]   create the cluster (once; idempotent)
    erase-patient PATIENT                     erase every record of a patient, everywhere
    share-patient PATIENT CLINIC [--revoke]   register a patient to one more clinic (clinic-admin)
    settings get [--partition P ...]          the cluster's settings, and what each partition applied
    settings set [--session-ttl S] [--history-retention N] [--max-sessions N]
                 [--max-results-per-session N]
                                              change them: one new generation, then waits
                                              (within --timeout) for every partition to apply it
    keys status [--count-values]              every node's keys and re-encryption progress
    keys rotate-data [--wait]                 new data key on every node, re-encrypt online
    keys rotate-master [--new-key-id ID]      re-wrap under the staged master, then install
    node list                                 the cluster's members (replicated cluster state)
    node add ID HOST:PORT [--client-address A] [--no-wait]   a new member (waits until active)
    node decommission ID [--no-wait]          move its replicas off, then remove it
    node remove ID --dead [--no-wait]         a node gone for good: re-create its replicas
    node --config F / keys ... --data-dir/--key-file   server-side: runs `python -m node ...`
    certs init|issue|show                     cluster CA, node and client certificates
    tokens keygen|issue|verify                bearer tokens (local signing key, JWKS)
    audit query [--patient P] [--subject S] [--since T] [--until T] [--break-glass]
                [--limit N] [--json | --jsonl]   every node's audit entries, merged by time
    audit verify [--cluster]                  every node checks its chain and anchored head
    audit verify|show|head --data-dir D --key-file K   a stopped node's audit log, offline

The three online `keys` commands talk to running nodes (--addr, before or
after `keys`); with --data-dir or --key-file, `keys` runs the offline
commands of `python -m node keys` on this host instead (init, stage-master,
and the stopped-node forms of status/rotate-data/rotate-master). Likewise
`audit query` and `audit verify` (or `audit verify --cluster`) ask the running
nodes (auditor role), while `audit verify|show|head` with --data-dir/--key-file
read one node's files on this host.

`--addr` defaults to $MEDKV_ADDR, else 127.0.0.1:7101; `--tls-dir` to
$MEDKV_TLS_DIR; `--token` to $MEDKV_TOKEN (a token needs TLS; `eval "$(scripts/cluster
env --data-dir D)"` sets all three for a local cluster). `get` writes the
value to stdout, ending with a newline (--raw: its exact bytes), and where it
was read from to stderr; `put`, `cas` and `delete` write the new version to
stdout and what they did (partition, serving node) to stderr; `--json` prints
one JSON document (scan: one JSON object per line) instead. Exit status: 0 ok,
1 error, 2 usage, 3 not found, 4 version conflict or too stale; `status` (table
or --json alike) exits 0 only when the cluster is OK, 5 when DEGRADED, 6 when
UNAVAILABLE (1 when no node answered), so a cron job or a probe can act on it.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

from client.audit import render_audit_entries, render_audit_verify
from client.auth import TOKEN_ENV
from client.errors import MedkvError, NotFound, TooStale, VersionConflict
from client.progress import ProgressLine
from client.records import Record
from client.status_table import (
    DEGRADED,
    OK,
    UNAVAILABLE,
    assess,
    partition_json,
    render_partition,
    render_status,
    status_json,
)
from client.sync_client import Client
from client.tls import TLS_DIR_ENV, TlsConfig
from proto.medkv.v1 import admin_pb2

DEFAULT_ADDR = "127.0.0.1:7101"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 1, 2, 3, 4
# `medkv status`: its own codes, distinct from the ones above, so a script can
# tell "the cluster is degraded" from "the command failed" or "bad usage".
EXIT_DEGRADED, EXIT_UNAVAILABLE = 5, 6
STATUS_EXIT = {OK: 0, DEGRADED: EXIT_DEGRADED, UNAVAILABLE: EXIT_UNAVAILABLE}

# Server-side commands: handed to the node package without importing it. The
# node package is this package's sibling: `node` in the repository, `medkv.node`
# in an installed wheel (whose import names are all under medkv).
NODE_PACKAGE = ".".join([*(__package__ or "client").split(".")[:-1], "node"])
SERVER_COMMANDS = {
    "node": [], "keys": ["keys"], "certs": ["certs"], "tokens": ["tokens"], "audit": ["audit"],
}
# Global options that take a value, so the dispatcher can skip over them.
_VALUED_GLOBALS = {"--addr", "--timeout", "--tls-dir", "--token", "--clinic", "--break-glass-reason"}


def _command_index(args: Sequence[str]) -> int | None:
    """Where the command word is in argv (after the global options), or None."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUED_GLOBALS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return i
    return None


# `keys` subcommands a running cluster answers (through Admin RPCs).
ONLINE_KEYS_COMMANDS = ("status", "rotate-data", "rotate-master")
_OFFLINE_KEYS_OPTIONS = ("--data-dir", "--key-file")


def is_online_keys(argv: Sequence[str]) -> bool:
    """`medkv keys status|rotate-data|rotate-master` without --data-dir/--key-file."""
    args = list(argv)
    i = _command_index(args)
    if i is None or args[i] != "keys" or len(args) <= i + 1:
        return False
    rest = args[i + 1 :]
    if rest[0] not in ONLINE_KEYS_COMMANDS:
        return False
    return not any(a.split("=", 1)[0] in _OFFLINE_KEYS_OPTIONS for a in rest)


# `audit` subcommands answered by running nodes (Admin.AuditQuery / AuditVerify).
ONLINE_AUDIT_COMMANDS = ("query", "verify")
_OFFLINE_AUDIT_OPTIONS = ("--data-dir", "--key-file", "--audit-dir", "--log-id", "--expect-head")


def is_online_audit(argv: Sequence[str]) -> bool:
    """`medkv audit query ...`, and `medkv audit verify` without the offline options
    (--data-dir, --key-file, ...), which read one node's files instead."""
    args = list(argv)
    i = _command_index(args)
    if i is None or args[i] != "audit" or len(args) <= i + 1:
        return False
    rest = args[i + 1 :]
    if rest[0] not in ONLINE_AUDIT_COMMANDS:
        return False
    return rest[0] == "query" or not any(
        a.split("=", 1)[0] in _OFFLINE_AUDIT_OPTIONS for a in rest)


# `node` subcommands answered by the running cluster; plain `medkv node --config F`
# starts a node process.
ONLINE_NODE_COMMANDS = ("list", "add", "decommission", "remove")


def is_online_node(argv: Sequence[str]) -> bool:
    """`medkv node list ...` (the cluster's members), not `medkv node --config F`."""
    args = list(argv)
    i = _command_index(args)
    return i is not None and args[i] == "node" and len(args) > i + 1 \
        and args[i + 1] in ONLINE_NODE_COMMANDS


def server_command(argv: Sequence[str]) -> list[str] | None:
    """`[python, -m, node, ...]` when argv names a server-side command, else None."""
    args = list(argv)
    i = _command_index(args)
    if i is None or args[i] not in SERVER_COMMANDS or is_online_keys(args) \
            or is_online_audit(args) or is_online_node(args):
        return None
    return [sys.executable, "-m", NODE_PACKAGE, *SERVER_COMMANDS[args[i]], *args[i + 1 :]]


def _add_read_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--consistency",
        choices=["linearizable", "follower", "bounded"],
        default=None,
        help=f"read mode (default {default}; bounded when --max-staleness is given)",
    )
    parser.add_argument(
        "--max-staleness",
        type=float,
        metavar="S",
        help="bounded read: accept a replica at most S seconds stale",
    )


def _tls(ns: argparse.Namespace) -> TlsConfig | None:
    tls_dir = getattr(ns, "tls_dir", None)
    return TlsConfig.from_dir(tls_dir) if tls_dir else None


def _client(ns: argparse.Namespace, addr: str, timeout: float | None) -> Client:
    """A client with the global connection options (TLS, token, clinic, break-glass)."""
    return Client(
        addr,
        timeout=timeout,
        tls=_tls(ns),
        # None: the client reads $MEDKV_TOKEN itself (kept out of argparse
        # defaults, so no help or error text can ever show it).
        token=ns.token,
        clinic=ns.clinic,
        break_glass_reason=ns.break_glass_reason,
    )


def _add_global_options(
    parser: argparse.ArgumentParser, *, top: bool, clinic: bool = True
) -> None:
    """The connection and output options. On the top parser they carry the
    defaults; on each subcommand's parser (top=False) they default to
    argparse.SUPPRESS, so they may also follow the subcommand and, given in
    both places, the later one wins (as a reader of `medkv status --json`
    expects). clinic=False for a command whose positional is named clinic."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    target: argparse.ArgumentParser | argparse._ArgumentGroup = (
        parser if top else parser.add_argument_group("global options (also before the command)")
    )
    target.add_argument(
        "--addr",
        default=default(os.environ.get("MEDKV_ADDR") or DEFAULT_ADDR),
        help="node address(es), host:port[,host:port...] (env MEDKV_ADDR; default "
        f"{os.environ.get('MEDKV_ADDR') or DEFAULT_ADDR})",
    )
    target.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    target.add_argument(
        "--timeout", type=float, default=default(None), help="seconds per call, retries included"
    )
    target.add_argument(
        "--tls-dir", default=default(os.environ.get(TLS_DIR_ENV)),
        help="directory with ca.pem, client.pem, client.key for mutual TLS (env MEDKV_TLS_DIR)",
    )
    target.add_argument(
        "--token", default=default(None), metavar="JWT|@FILE",
        help=f"bearer token sent on every call, or @FILE holding it (re-read when it "
        f"changes; prefer it: a token on the command line shows in `ps`) "
        f"(env {TOKEN_ENV}; needs TLS)",
    )
    if clinic:
        target.add_argument(
            "--clinic", default=default(None),
            help="the clinic a new patient is registered to (medkv-clinic metadata)",
        )
    target.add_argument(
        "--break-glass-reason", default=default(None), metavar="TEXT",
        help="emergency access to a patient outside your clinics; the reason is audited",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkv", description="medkv: replicated, encrypted patient-record store."
    )
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    put = sub.add_parser("put", help="write a record")
    put.add_argument("patient")
    put.add_argument("record")
    put.add_argument("--value", help="the value as text (default: read bytes from stdin)")

    get = sub.add_parser("get", help="read a record")
    get.add_argument("patient")
    get.add_argument("record")
    _add_read_options(get, "linearizable")
    get.add_argument("--min-version", type=int, help="read-your-writes: wait for this version")
    get.add_argument("--at-version", type=int, help="the version current at this index")
    get.add_argument(
        "--raw", action="store_true",
        help="write the value's exact bytes (no newline added), e.g. for binary values",
    )

    history = sub.add_parser("history", help="a record's versions, newest first")
    history.add_argument("patient")
    history.add_argument("record")
    history.add_argument("--limit", type=int, help="at most this many versions")

    delete = sub.add_parser("delete", help="delete a record")
    delete.add_argument("patient")
    delete.add_argument("record")
    delete.add_argument("--expected-version", type=int, help="delete only at this version")

    cas = sub.add_parser("cas", help="compare-and-set a record")
    cas.add_argument("patient")
    cas.add_argument("record")
    cas.add_argument(
        "--expected-version", type=int, required=True, help="current version (0: must not exist)"
    )
    cas.add_argument("--value", help="the value as text (default: read bytes from stdin)")

    scan = sub.add_parser("scan", help="stream every record from replicas (analytics)")
    scan.add_argument(
        "--partition",
        type=int,
        action="append",
        metavar="P",
        help="scan only this partition (repeatable; default all)",
    )
    _add_read_options(scan, "follower")
    scan.add_argument("--page-size", type=int, default=0, help="records per streamed page")

    sub.add_parser(
        "status",
        help="the cluster at a glance; exit status 0 OK, 5 DEGRADED, 6 UNAVAILABLE",
        description="The cluster's health: a verdict (OK, DEGRADED or UNAVAILABLE) with its "
        "reasons, the nodes, and one row per partition. Exit status: 0 OK, 5 DEGRADED, "
        "6 UNAVAILABLE, 1 when no node answered (the same with --json).",
    )

    part = sub.add_parser(
        "partition", help="one partition's leader, term and replicas (Admin.PartitionStatus)"
    )
    part.add_argument("partition_id", metavar="PARTITION", type=int)

    cluster = sub.add_parser("cluster", help="create the cluster: `cluster init` (once)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    init = cluster_sub.add_parser(
        "init",
        help="create the cluster from the first --addr node's [[peers]] (its initial members); "
        "safe to run again: it finishes an init that did not reach every member",
    )
    init.add_argument("--partitions", type=int, default=0,
                      help="partitions, fixed for the cluster's life (default: the node's config)")
    init.add_argument("--replication", type=int, default=0,
                      help="replicas per partition (default: the node's config)")

    transfer = sub.add_parser(
        "transfer-leader",
        help="make NODE the leader of PARTITION (prints the new leader)",
    )
    transfer.add_argument("partition_id", metavar="PARTITION", type=int)
    transfer.add_argument("node_id", metavar="NODE", type=int, help="a node holding a replica")

    erase = sub.add_parser(
        "erase-patient",
        help="erase every record and version of a patient on every replica (irreversible)",
    )
    erase.add_argument("patient")

    share = sub.add_parser(
        "share-patient",
        help="register a patient to one more clinic, or --revoke one (clinic-admin; prints the "
        "patient's clinics)",
    )
    share.add_argument("patient")
    # Its own dest: the global --clinic (the clinic a request names) is another thing.
    share.add_argument("share_clinic", metavar="CLINIC", help="the clinic granted or revoked")
    share.add_argument("--revoke", action="store_true", help="remove the clinic instead")

    settings = sub.add_parser(
        "settings", help="the cluster's settings (session TTL, ...), applied by every partition"
    )
    settings_sub = settings.add_subparsers(dest="settings_command", required=True, metavar="ACTION")
    sget = settings_sub.add_parser(
        "get", help="the cluster's settings and generation, and what each partition applied"
    )
    sset = settings_sub.add_parser(
        "set", help="change settings: one new generation, then applied by every partition"
    )
    sget.add_argument(
        "--partition", type=int, action="append", metavar="P",
        help="only this partition (repeatable; default all)",
    )
    sset.add_argument(
        "--session-ttl", type=float, metavar="SECONDS",
        help="a write session idle longer than this (log time) expires",
    )
    sset.add_argument(
        "--history-retention", type=int, metavar="N", help="versions kept per record"
    )
    sset.add_argument(
        "--max-sessions", type=int, metavar="N",
        help="open sessions per partition; beyond, opening one is refused (none is evicted)",
    )
    sset.add_argument(
        "--max-results-per-session", type=int, metavar="N",
        help="unacknowledged write results remembered per session",
    )
    for name, command in sub.choices.items():
        if name == "settings":
            for action in settings_sub.choices.values():
                _add_global_options(action, top=False)
        _add_global_options(command, top=False)
    sub.add_parser("node", help="node list: the cluster's members; node --config FILE: run a "
                   f"database node (python -m {NODE_PACKAGE})", add_help=False)
    sub.add_parser("keys", help="encryption keys: status|rotate-data|rotate-master on the running "
                   "nodes; init|stage-master, and the stopped-node forms with --data-dir, on this "
                   "host", add_help=False)
    sub.add_parser("certs", help="cluster CA, node and client certificates (init|issue|show)",
                   add_help=False)
    sub.add_parser("tokens", help="bearer tokens for labs and tests (keygen|issue|verify)",
                   add_help=False)
    sub.add_parser("audit", help="audit logs: query|verify the cluster's (auditor role), or "
                   "verify|show|head one node's files (--data-dir)", add_help=False)
    return parser


def _consistency(args: argparse.Namespace, default: str) -> str:
    if args.consistency:
        return str(args.consistency)
    return "bounded" if args.max_staleness is not None else default


def _value(args: argparse.Namespace, stdin: BinaryIO) -> bytes:
    if args.value is not None:
        return str(args.value).encode("utf-8")
    return stdin.read()


def _value_fields(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def record_dict(record: Record) -> dict[str, Any]:
    return {
        "patient_id": record.patient_id,
        "record_id": record.record_id,
        "version": record.version,
        "deleted": record.deleted,
        **_value_fields(record.value),
        "read_state": {
            "partition": record.partition,
            "served_by": record.served_by,
            "from_leader": record.from_leader,
            "applied_index": record.applied_index,
            "lag_entries": record.lag,
            "staleness_seconds": record.staleness,
        },
    }


def _describe(record: Record) -> str:
    where = "leader" if record.from_leader else "replica"
    return (
        f"version {record.version}{' (deleted)' if record.deleted else ''}; "
        f"served by node {record.served_by} ({where}), applied index {record.applied_index}, "
        f"lag {record.lag} entries, staleness {_seconds(record.staleness)}"
    )


def _write_done(kv: Client, patient: str) -> dict[str, int]:
    """Where a write just went: its partition and the node that answered it
    (the leader, which the client noted on success). Empty if unknown."""
    router = kv.router
    if router is None:
        return {}
    partition = router.partition_of(patient)
    leader = router.leader(partition)
    done = {"partition": partition}
    if leader:
        done["served_by"] = leader
    return done


def _describe_write(command: str, version: int, done: dict[str, int]) -> str:
    """One line for a person (no patient or record id: only what happened)."""
    verb = {"put": "written", "cas": "written (compare-and-set)", "delete": "deleted"}[command]
    text = f"{verb}: version {version}"
    if "partition" in done:
        text += f", partition {done['partition']}"
    if "served_by" in done:
        text += f", served by node {done['served_by']} (leader)"
    return text


def _seconds(staleness: float) -> str:
    # A replica that has never heard from a leader reports a negative staleness.
    return "unknown" if staleness < 0 else f"{staleness:.3f}s"


def _text(value: bytes, limit: int = 60) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(value)} bytes>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Out:
    def __init__(self, stdout: TextIO, stderr: TextIO, as_json: bool) -> None:
        self.stdout, self.stderr, self.json = stdout, stderr, as_json

    def doc(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, sort_keys=True) + "\n")

    def line(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()


def run(
    args: argparse.Namespace,
    kv: Client,
    out: _Out,
    stdin: BinaryIO,
    binary_stdout: BinaryIO,
) -> int:
    """Execute one parsed command against a client; returns the exit status."""
    timeout = args.timeout
    if args.command in ("put", "cas", "delete"):
        if args.command == "put":
            version = kv.put(args.patient, args.record, _value(args, stdin), timeout=timeout)
        elif args.command == "cas":
            version = kv.cas(
                args.patient,
                args.record,
                _value(args, stdin),
                args.expected_version,
                timeout=timeout,
            )
        else:
            version = kv.delete(args.patient, args.record, args.expected_version, timeout=timeout)
        done = _write_done(kv, args.patient)
        if out.json:
            out.doc({"version": version, **done})
        else:
            out.line(str(version))
            out.note(_describe_write(args.command, version, done))
        return 0
    if args.command == "get":
        record = kv.get(
            args.patient,
            args.record,
            consistency=_consistency(args, "linearizable"),
            max_staleness=args.max_staleness,
            min_version=args.min_version,
            at_version=args.at_version,
            timeout=timeout,
        )
        if out.json:
            out.doc(record_dict(record))
        else:
            out.stdout.flush()
            binary_stdout.write(record.value)
            if not args.raw and not record.value.endswith(b"\n"):
                # Text ends with a newline (the shell prompt stays on its own
                # line, `$(...)` and line tools read it); --raw: the exact bytes.
                binary_stdout.write(b"\n")
            binary_stdout.flush()
            out.note(_describe(record))
        return 0
    if args.command == "history":
        versions = kv.history(args.patient, args.record, args.limit, timeout=timeout)
        if out.json:
            out.doc([record_dict(r) for r in versions])
        else:
            out.line("VERSION   STATE    SIZE  VALUE")
            for r in versions:
                state = "deleted" if r.deleted else "live"
                out.line(f"{r.version:<9} {state:<8} {len(r.value):>5}  {_text(r.value)}")
        return 0
    if args.command == "scan":
        return _scan(args, kv, out)
    if args.command == "status":
        status = kv.cluster_status(timeout=timeout)
        out.line(status_json(status) if out.json else render_status(status))
        return STATUS_EXIT[assess(status)[0]]
    if args.command == "partition":
        reply = kv.partition_status(args.partition_id, timeout=timeout)
        out.line(partition_json(reply) if out.json else render_partition(reply))
        return 0
    if args.command == "cluster":
        reply = kv.init_cluster(
            partitions=args.partitions, replication=args.replication, timeout=timeout
        )
        missing = [n.node_id for n in reply.nodes if not n.ok]
        if out.json:
            out.doc({
                "cluster_id": reply.cluster_id, "already_initialized": reply.already_initialized,
                "partitions": reply.partitions, "replication": reply.replication,
                "nodes": [{"node": n.node_id, "ok": n.ok, "already": n.already, "error": n.error}
                          for n in reply.nodes],
            })
        else:
            out.line(reply.cluster_id)
            for n in reply.nodes:
                what = "already a member" if n.already else "joined"
                out.note(f"node {n.node_id}: {what if n.ok else 'not reached: ' + n.error}")
            verb = "was initialized already" if reply.already_initialized else "created"
            out.note(f"cluster {reply.cluster_id} {verb}: {reply.partitions} partitions, "
                     f"replication {reply.replication}"
                     + (f"; run it again once nodes {missing} are up" if missing else ""))
        return EXIT_ERROR if missing else 0
    if args.command == "transfer-leader":
        leader = kv.transfer_leader(args.partition_id, args.node_id, timeout=timeout)
        if out.json:
            out.doc({"partition": args.partition_id, "leader": leader})
        else:
            out.line(str(leader))
            out.note(f"partition {args.partition_id}: node {leader} is the leader")
        return 0
    if args.command == "erase-patient":
        version = kv.erase_patient(args.patient, timeout=timeout)
        if out.json:
            out.doc({"version": version})
        else:
            out.line(str(version))
            out.note(
                f"erased at version {version}; each replica purges the patient's data from its "
                "log, snapshot and files once it has applied the erasure"
            )
        return 0
    if args.command == "share-patient":
        sharing = kv.share_patient(args.patient, args.share_clinic, args.revoke, timeout=timeout)
        if out.json:
            out.doc({"clinics": list(sharing.clinics), "index": sharing.index})
        else:
            out.line(" ".join(sharing.clinics))
            out.note(f"registration changed at index {sharing.index}")
        return 0
    if args.command == "settings":
        return _settings(args, kv, out)
    raise AssertionError(f"unhandled command {args.command}")


_SETTING_NAMES = ("session_ttl_ms", "history_retention", "max_sessions", "max_results_per_session")


def settings_dict(partition: int, settings: admin_pb2.ClusterSettings, generation: int) -> dict[str, Any]:
    """One partition's applied settings; `generation` is the cluster settings
    generation it applied (0: none yet, seeded in its own log or defaults)."""
    row: dict[str, Any] = {"partition": partition, "generation": generation}
    row.update({name: int(getattr(settings, name)) for name in _SETTING_NAMES})
    return row


def _settings_line(generation: int, values: dict[str, Any]) -> str:
    return (f"cluster settings generation {generation}: "
            f"session TTL {values['session_ttl_ms'] / 1000:g}s, "
            f"history retention {values['history_retention']}, "
            f"max sessions {values['max_sessions']}, "
            f"max results per session {values['max_results_per_session']}")


def _settings(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    if args.settings_command == "set":
        return _settings_set(args, kv, out)
    got = kv.get_settings(partitions=args.partition, timeout=args.timeout)
    rows = [settings_dict(r.partition, r.settings, r.cluster_generation_applied) for r in got]
    for row, r in zip(rows, got, strict=True):
        row["index"] = int(r.generation)
        row["open_sessions"] = int(r.open_sessions)
    # The newest cluster state among the answering leaders' nodes.
    newest = max(got, key=lambda r: r.cluster_generation, default=None)
    generation = int(newest.cluster_generation) if newest is not None else 0
    cluster: dict[str, Any] = {"generation": generation}
    if newest is not None and generation:
        cluster.update({n: int(getattr(newest.cluster_settings, n)) for n in _SETTING_NAMES})
    behind = [row["partition"] for row in rows if row["generation"] < generation]
    if out.json:
        out.doc({"cluster": cluster, "partitions": rows, "behind": behind})
        return 0
    if generation:
        out.line(_settings_line(generation, cluster))
        out.line(f"applied by {len(rows) - len(behind)}/{len(rows)} partition(s)"
                 + (f"; not yet: {','.join(map(str, behind))}" if behind else ""))
    else:
        out.line("cluster settings: none in the cluster state yet (a cluster created before "
                 "they were: each partition keeps its seeded ones until `medkv settings set`)")
    out.line("")
    out.line("PARTITION  TTL_S     RETENTION  MAX_SESSIONS  MAX_RESULTS  GENERATION  SESSIONS")
    for row in rows:
        out.line(
            f"{row['partition']:<10} {row['session_ttl_ms'] / 1000:<9g} "
            f"{row['history_retention']:<10} {row['max_sessions']:<13} "
            f"{row['max_results_per_session']:<12} {row['generation']:<11} "
            f"{row['open_sessions']}"
        )
    return 0


def _settings_set(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    """One new generation, then (within --timeout) the partitions applying it."""
    ttl = args.session_ttl
    if ttl is not None and not ttl > 0:
        raise MedkvError("--session-ttl must be positive")
    done = kv.set_settings(
        session_ttl_ms=None if ttl is None else round(ttl * 1000),
        history_retention=args.history_retention,
        max_sessions=args.max_sessions,
        max_results_per_session=args.max_results_per_session,
        wait=False,
        timeout=args.timeout,
    )
    total = kv.routing_table(timeout=args.timeout).partitions
    wait_s = args.timeout if args.timeout is not None else 30.0
    deadline = time.monotonic() + wait_s
    with ProgressLine(out.stderr, total, "settings", "partitions") as progress:
        while True:
            behind = kv.settings_behind(done.generation, timeout=min(5.0, wait_s))
            progress.set(total - len(behind))
            if not behind or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    values = {n: int(getattr(done.settings, n)) for n in _SETTING_NAMES}
    if out.json:
        out.doc({"generation": int(done.generation), **values, "behind": behind})
    else:
        out.line(_settings_line(done.generation, values))
        out.line(f"applied by {total - len(behind)}/{total} partition(s)")
    if behind:
        out.note(f"partition(s) {','.join(map(str, behind))} have not applied generation "
                 f"{done.generation} yet; they will (`medkv settings get` shows progress)")
    return 0


def _scan(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    """Records to stdout; on stderr one progress line (partitions done, records)
    and a summary of where the data came from and how stale it was at worst."""
    partitions = args.partition
    total = (
        len(set(partitions)) if partitions else kv.routing_table(timeout=args.timeout).partitions
    )
    done = records = from_leader = 0
    worst = 0.0  # seconds; -1: some replica could not state its staleness
    with ProgressLine(out.stderr, total, "scan", "partitions") as progress:
        for page in kv.scan_pages(
            consistency=_consistency(args, "follower"),
            max_staleness=args.max_staleness,
            partitions=partitions,
            page_size=args.page_size,
            timeout=args.timeout,
        ):
            for r in page.records:
                records += 1
                if out.json:
                    out.doc(record_dict(r))
                else:
                    out.line(f"{r.patient_id}\t{r.record_id}\t{r.version}\t{_text(r.value, 200)}")
            if page.done:
                done += 1
                from_leader += bool(page.read_state.from_leader)
                if worst >= 0:
                    worst = page.staleness if page.staleness < 0 else max(worst, page.staleness)
            progress.set(done, f"{records} records")
        out.stdout.flush()
    out.note(
        f"scan complete: {records} records from {done} partitions "
        f"({done - from_leader} from replicas, {from_leader} from leaders; "
        f"max staleness {_seconds(worst)})"
    )
    return 0


def _exit_code(error: MedkvError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, VersionConflict | TooStale):
        return EXIT_CONFLICT
    return EXIT_ERROR


# ---- online key management: `medkv keys status|rotate-data|rotate-master`


def _add_credential_options(parser: argparse.ArgumentParser) -> None:
    """--tls-dir/--token after an online keys/audit command; absent (SUPPRESS)
    unless given, so the ones before the command stand otherwise."""
    parser.add_argument("--tls-dir", default=argparse.SUPPRESS,
                        help="directory with ca.pem, client.pem, client.key (env MEDKV_TLS_DIR)")
    parser.add_argument("--token", default=argparse.SUPPRESS, metavar="JWT|@FILE",
                        help=f"bearer token, or @FILE holding it (env {TOKEN_ENV})")


def _later_credentials(outer: argparse.Namespace, ns: argparse.Namespace) -> None:
    for name in ("tls_dir", "token"):
        if hasattr(ns, name):
            setattr(outer, name, getattr(ns, name))


def _online_subcommand(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand of an online group (keys, audit): --addr/--json/--timeout and the
    credentials may follow it."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--addr", default=None, help="node address(es), host:port[,...]")
    p.add_argument("--json", action="store_true", default=None, help="machine-readable")
    p.add_argument("--timeout", type=float, default=None, help="seconds per node call")
    _add_credential_options(p)
    return p


def build_keys_parser() -> argparse.ArgumentParser:
    """The online `keys` commands; --addr/--json/--timeout may follow the subcommand."""
    parser = argparse.ArgumentParser(
        prog="medkv keys",
        description="Manage encryption keys of running nodes (each node answers for itself).",
    )
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return _online_subcommand(sub, name, help_text)

    st = add("status", "every node's master key, data keys and re-encryption progress")
    st.add_argument("--count-values", action="store_true",
                    help="also count the values sealed under each data key (reads every header)")
    rd = add("rotate-data", "start a new data key on every node; re-encrypt in the background")
    rd.add_argument("--wait", action="store_true",
                    help="wait until every node has re-encrypted and retired its old keys")
    rd.add_argument("--wait-timeout", type=float, default=3600.0, metavar="S",
                    help="give up waiting after S seconds (default %(default)g)")
    rm = add("rotate-master", "re-wrap every node's keyring under the staged master, then "
             "install it as the key file (stage it first: medkv keys stage-master)")
    rm.add_argument("--new-key-id", default=None,
                    help="the staged master's key id (default: the one staged on every node)")
    return parser


def _nodes(kv: Client, timeout: float | None) -> list[tuple[int, str]]:
    """Every node of the cluster (from the routing table), in id order."""
    return sorted(kv.routing_table(timeout=timeout).nodes.items())


def _reencryption_text(r: admin_pb2.ReEncryptionStatus) -> str:
    if r.state == "idle":
        return "none recorded"
    text = (f"{r.state} {r.percent:.0f}% ({r.done:,}/{r.total_estimate:,}, "
            f"{r.resealed:,} re-sealed) to key {r.target_key_id}")
    if r.retired_key_ids:
        text += f", retired {','.join(map(str, r.retired_key_ids))}"
    if r.error:
        text += f": {r.error}"
    return text


def key_status_dict(st: admin_pb2.KeyStatusResponse, address: str) -> dict[str, Any]:
    r = st.reencryption
    return {
        "node_id": st.node_id,
        "address": address,
        "keyring_master_key_id": st.keyring_master_key_id,
        "key_file_master_key_id": st.key_file_master_key_id,
        "staged_master_key_id": st.staged_master_key_id or None,
        "active_data_key_id": st.active_data_key_id,
        "data_keys": [
            {"id": k.key_id, "created": k.created, "active": k.active,
             "values": k.values if k.values >= 0 else None}
            for k in st.data_keys
        ],
        "reencryption": {
            "state": r.state, "target_key_id": r.target_key_id, "done": r.done,
            "total_estimate": r.total_estimate, "resealed": r.resealed,
            "percent": r.percent, "error": r.error or None,
            "retired_key_ids": list(r.retired_key_ids),
        },
    }


def render_key_status(rows: Sequence[tuple[int, str, admin_pb2.KeyStatusResponse | str]]) -> str:
    """One row per node; a node that did not answer shows why."""
    headers = ("NODE", "ADDRESS", "MASTER", "STAGED", "ACTIVE", "DATA KEYS", "RE-ENCRYPTION")
    table: list[tuple[str, ...]] = []
    for node_id, address, st in rows:
        if isinstance(st, str):
            table.append((str(node_id), address, "-", "-", "-", "-", f"NO ANSWER: {st}"))
            continue
        master = st.keyring_master_key_id
        if st.key_file_master_key_id != master:
            master += f" (key file {st.key_file_master_key_id})"
        keys = ",".join(
            f"{k.key_id}{'*' if k.active else ''}" + (f"({k.values:,})" if k.values >= 0 else "")
            for k in st.data_keys
        )
        table.append((str(node_id), address, master, st.staged_master_key_id or "-",
                      str(st.active_data_key_id), keys, _reencryption_text(st.reencryption)))
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.append("(* = active data key; (n) = values sealed under it)")
    return "\n".join(lines)


def _statuses(
    kv: Client, nodes: Sequence[tuple[int, str]], count: bool, timeout: float | None
) -> list[tuple[int, str, admin_pb2.KeyStatusResponse | str]]:
    rows: list[tuple[int, str, admin_pb2.KeyStatusResponse | str]] = []
    for node_id, address in nodes:
        try:
            rows.append((node_id, address,
                         kv.key_status(address, count_values=count, timeout=timeout)))
        except MedkvError as e:
            rows.append((node_id, address, str(e)))
    return rows


def _keys_status(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    nodes = _nodes(kv, args.timeout)
    rows = _statuses(kv, nodes, args.count_values, args.timeout)
    if out.json:
        out.doc([key_status_dict(st, a) if not isinstance(st, str)
                 else {"node_id": n, "address": a, "error": st} for n, a, st in rows])
    else:
        out.line(render_key_status(rows))
    return 0 if all(not isinstance(st, str) for _, _, st in rows) else EXIT_ERROR


def _keys_rotate_data(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    nodes = _nodes(kv, args.timeout)
    failed = 0
    results: list[dict[str, Any]] = []
    for node_id, address in nodes:
        try:
            r = kv.rotate_data_key(address, timeout=args.timeout)
        except MedkvError as e:
            failed += 1
            out.note(f"node {node_id} ({address}): rotate-data failed: {e}")
            results.append({"node_id": node_id, "address": address, "error": str(e)})
            continue
        how = "new data key" if r.started else "continuing the pass to data key"
        out.note(f"node {node_id} ({address}): {how} {r.active_data_key_id}; "
                 f"re-encryption {_reencryption_text(r.reencryption)}")
        results.append({"node_id": node_id, "address": address,
                        "active_data_key_id": r.active_data_key_id, "started": r.started})
    if args.wait and failed < len(nodes):
        failed += _wait_reencrypted(args, kv, out, [n for n in nodes if not any(
            x.get("error") for x in results if x["node_id"] == n[0])])
    if out.json:
        out.doc(results)
    return EXIT_ERROR if failed else 0


def _wait_reencrypted(
    args: argparse.Namespace, kv: Client, out: _Out, nodes: Sequence[tuple[int, str]]
) -> int:
    """Poll every node until its pass finished (or failed); returns how many did not finish."""
    deadline = time.monotonic() + args.wait_timeout
    # One line for the whole cluster: the mean of the nodes' percentages.
    progress = ProgressLine(out.stderr, 100, "re-encryption", "%")
    try:
        while True:
            rows = _statuses(kv, nodes, False, args.timeout)
            states = {n: (st.reencryption if not isinstance(st, str) else None)
                      for n, _, st in rows}
            finished = sum(1 for r in states.values() if r is not None and r.state == "finished")
            percent = sum(100.0 if r is not None and r.state == "finished"
                          else (r.percent if r is not None else 0.0) for r in states.values())
            silent = [str(n) for n, r in states.items() if r is None]
            note = f"{finished}/{len(nodes)} nodes finished"
            if silent:
                note += f", no answer from node(s) {','.join(silent)}"
            progress.set(int(percent / max(len(nodes), 1)), note)
            done = [r is not None and r.state in ("finished", "failed") for r in states.values()]
            if all(done) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    finally:
        progress.close()
    bad = [n for n, r in states.items() if r is None or r.state != "finished"]
    for n in bad:
        r = states[n]
        why = "no answer" if r is None else (r.error or r.state)
        out.note(f"node {n}: re-encryption did not finish: {why}")
    return len(bad)


def _keys_rotate_master(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    nodes = _nodes(kv, args.timeout)
    rows = _statuses(kv, nodes, False, args.timeout)
    silent = [(n, st) for n, _, st in rows if isinstance(st, str)]
    if silent:
        for n, why in silent:
            out.note(f"node {n} did not answer: {why}")
        out.note("medkv: every node must be up for a master rotation; nothing was changed")
        return EXIT_ERROR
    statuses = [st for _, _, st in rows if not isinstance(st, str)]
    target = args.new_key_id
    if target is None:
        staged = {st.staged_master_key_id for st in statuses if st.staged_master_key_id}
        behind = {st.keyring_master_key_id for st in statuses} | {
            st.key_file_master_key_id for st in statuses}
        if len(staged) == 1:
            target = staged.pop()
        elif not staged and len(behind) > 1:
            out.note("medkv: the nodes disagree on the master key and nothing is staged; "
                     "pass --new-key-id")
            return EXIT_ERROR
        elif not staged:
            out.note("medkv: no new master key is staged. Create one (medkv keys init --key-file "
                     "NEW), stage it on every host (medkv keys stage-master --key-file KEY_FILE "
                     "--new-key-file NEW), then run this again")
            return EXIT_ERROR
        else:
            out.note(f"medkv: different keys are staged on different nodes ({sorted(staged)}); "
                     "pass --new-key-id")
            return EXIT_ERROR
    for step, name in ((admin_pb2.MASTER_REWRAP, "re-wrapped"),
                       (admin_pb2.MASTER_INSTALL, "installed")):
        failed = 0
        for node_id, address in nodes:
            try:
                r = kv.rotate_master_key(address, target, step, timeout=args.timeout)
                out.note(f"node {node_id} ({address}): {name} (keyring master "
                         f"{r.keyring_master_key_id}, key file {r.key_file_master_key_id})")
            except MedkvError as e:
                failed += 1
                out.note(f"node {node_id} ({address}): not {name}: {e}")
        if failed:
            out.note("medkv: stopped; fix the nodes above and run this again (it resumes)")
            return EXIT_ERROR
    if out.json:
        out.doc({"master_key_id": target, "nodes": [n for n, _ in nodes]})
    else:
        out.line(f"master key id {target} is now in use on nodes "
                 f"{', '.join(str(n) for n, _ in nodes)}")
    return 0


_KEYS_COMMANDS = {
    "status": _keys_status,
    "rotate-data": _keys_rotate_data,
    "rotate-master": _keys_rotate_master,
}


def _online_main(
    args_list: Sequence[str], sub_parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace, Any, _Out], int],
    on_error: Callable[[MedkvError], int],
) -> int:
    """An online command group (`keys ...`, `audit ...`): global options before the
    group and after it both count; `run` gets its arguments, a client and the output."""
    i = _command_index(args_list)
    assert i is not None
    outer = build_parser().parse_args([*args_list[:i], "status"])  # just the globals
    ns = sub_parser.parse_args(list(args_list[i + 1 :]))
    _later_credentials(outer, ns)
    addr = ns.addr or outer.addr
    as_json = bool(ns.json) or outer.json
    ns.timeout = ns.timeout if ns.timeout is not None else outer.timeout
    out = _Out(sys.stdout, sys.stderr, as_json)
    try:
        with _client(outer, addr, ns.timeout) as kv:
            return run(ns, kv, out)
    except MedkvError as error:
        out.note(f"medkv: error: {error}")
        return on_error(error)
    except KeyboardInterrupt:
        out.note("medkv: interrupted")
        return 130
    except BrokenPipeError:
        return 0


def keys_main(args_list: Sequence[str]) -> int:
    """An online `keys` command."""
    return _online_main(
        args_list, build_keys_parser(),
        lambda ns, kv, out: _KEYS_COMMANDS[ns.keys_command](ns, kv, out),
        lambda error: EXIT_ERROR,
    )


# ---- the cluster's audit logs: `medkv audit query|verify` (auditor role)


def _time_arg(text: str) -> float:
    """Unix seconds, or an ISO time (UTC unless it names a zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: an ISO time (2026-01-31T08:00) or Unix seconds") from None
        value = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a time after 1970")
    return value


def _limit_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 10_000:
        raise argparse.ArgumentTypeError("a number of entries in 1..10000")
    return n


def build_audit_parser() -> argparse.ArgumentParser:
    """The online `audit` commands; --addr/--json/--timeout may follow the subcommand."""
    parser = argparse.ArgumentParser(
        prog="medkv audit",
        description="The running cluster's audit logs (auditor role). Each node keeps its "
        "own log; `verify|show|head --data-dir D --key-file K` read one stopped node's files.",
    )
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return _online_subcommand(sub, name, help_text)

    q = add("query", "every node's audit entries matching the filters, merged by time "
            "(the newest --limit)")
    q.add_argument("--patient", metavar="P",
                   help="a patient id (sent to the nodes, which hash it; entries hold hashes)")
    q.add_argument("--subject", metavar="S", help="a token subject (sub)")
    q.add_argument("--since", type=_time_arg, metavar="T", help="ISO time or Unix seconds")
    q.add_argument("--until", type=_time_arg, metavar="T", help="ISO time or Unix seconds")
    q.add_argument("--break-glass", action="store_true", help="emergency accesses only")
    q.add_argument("--limit", type=_limit_arg, default=None, metavar="N",
                   help="the newest N entries (default 1000, at most 10000)")
    q.add_argument("--jsonl", action="store_true",
                   help="one JSON object per entry and line (for a SIEM)")
    v = add("verify", "every node checks its audit chain and the head it anchored in "
            "replicated state")
    v.add_argument("--cluster", action="store_true",
                   help="ask the running nodes (the default without --data-dir)")
    return parser


def _audit_query(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    res = kv.audit_query(
        patient_id=args.patient, subject=args.subject, since=args.since, until=args.until,
        limit=args.limit, break_glass_only=args.break_glass, timeout=args.timeout,
    )
    if args.jsonl:
        for e in res.entries:
            out.line(json.dumps(e.to_dict(), sort_keys=True))
    elif out.json:
        out.doc([e.to_dict() for e in res.entries])
    else:
        out.line(render_audit_entries(res.entries))
        out.note(f"{len(res.entries)} entries")
    for node_id, why in sorted(res.errors.items()):
        out.note(f"medkv: node {node_id} did not answer; its entries are missing: {why}")
    return 0 if res.complete else EXIT_ERROR


def _audit_verify(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    results = kv.audit_verify(timeout=args.timeout)
    if out.json:
        out.doc([r.to_dict() for r in results])
    else:
        out.line(render_audit_verify(results))
    return 0 if all(r.ok and not r.error for r in results) else EXIT_ERROR


_AUDIT_COMMANDS = {"query": _audit_query, "verify": _audit_verify}


def audit_main(args_list: Sequence[str]) -> int:
    """An online `audit` command."""
    return _online_main(
        args_list, build_audit_parser(),
        lambda ns, kv, out: _AUDIT_COMMANDS[ns.audit_command](ns, kv, out),
        _exit_code,
    )


# ---- the cluster's members: `medkv node list`


def build_node_parser() -> argparse.ArgumentParser:
    """The online `node` commands; --addr/--json/--timeout may follow the subcommand."""
    parser = argparse.ArgumentParser(
        prog="medkv node",
        description="The cluster's members, from its replicated cluster state. "
        "(`medkv node --config FILE` runs a node.)",
    )
    sub = parser.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    _online_subcommand(sub, "list", "every member: id, addresses, state, replicas, system voter")
    add = _online_subcommand(
        sub, "add", "make a new node a member; start it with the members in its [[peers]] "
        "(before or after); waits until it is active")
    add.add_argument("node_id", metavar="ID", type=int, help="a new id (never a removed one's)")
    add.add_argument("address", metavar="HOST:PORT", help="where the members reach it")
    add.add_argument("--client-address", default="", metavar="HOST:PORT",
                     help="where clients reach it, if not ADDRESS")
    add.add_argument("--no-wait", action="store_true", help="return once it is a member")
    add.add_argument("--wait-timeout", type=float, default=120.0, metavar="S",
                     help="give up waiting after S seconds (default %(default)g)")
    for name, text in (
        ("decommission", "move every replica off a node, then remove it; waits until removed"),
        ("remove", "remove a node that is gone for good (--dead): its replicas are re-created "
                   "on the others; waits until removed"),
    ):
        d = _online_subcommand(sub, name, text)
        d.add_argument("node_id", metavar="ID", type=int)
        if name == "remove":
            d.add_argument("--dead", action="store_true", required=True,
                           help="the node is gone for good (a live node: use decommission)")
        d.add_argument("--no-wait", action="store_true", help="return once it is decommissioning")
        d.add_argument("--wait-timeout", type=float, default=600.0, metavar="S",
                       help="give up waiting after S seconds (default %(default)g)")
    return parser


def render_nodes(reply: Any) -> str:
    rows = [("NODE", "STATE", "REPLICAS", "SYSTEM", "ADDRESS", "CLIENT ADDRESS")]
    for m in reply.members:
        system = "voter" if m.system_voter else ("learner" if m.state != "removed" else "-")
        if m.node_id == reply.system_leader:
            system = "leader"
        rows.append((str(m.node_id), m.state, str(m.replicas), system, m.address,
                     m.client_address or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [f"cluster {reply.cluster_id}  placement epoch {reply.epoch}  "
             f"(as node {reply.answered_by} has applied it)"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def nodes_json(reply: Any) -> dict[str, Any]:
    return {
        "cluster_id": reply.cluster_id, "epoch": reply.epoch, "answered_by": reply.answered_by,
        "system_leader": reply.system_leader, "system_applied": reply.system_applied,
        "members": [
            {"node": m.node_id, "state": m.state, "replicas": m.replicas,
             "system_voter": m.system_voter, "address": m.address,
             "client_address": m.client_address}
            for m in reply.members
        ],
    }


def _node_list(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    reply = kv.list_nodes(timeout=args.timeout)
    if out.json:
        out.doc(nodes_json(reply))
    else:
        out.line(render_nodes(reply))
    return 0


def _wait_for_member(
    kv: Client, out: _Out, node_id: int, goal: str, seen: tuple[str, int], args: argparse.Namespace,
) -> tuple[str, int] | None:
    """Poll the member list until node_id reaches the goal state, one line per
    change of (state, replicas); None when --wait-timeout passed first."""
    deadline = time.monotonic() + args.wait_timeout
    while seen[0] != goal:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)
        m = {x.node_id: x for x in kv.list_nodes(timeout=args.timeout).members}.get(node_id)
        if m is not None and (m.state, m.replicas) != seen:
            seen = (m.state, m.replicas)
            out.note(f"node {node_id}: {m.state}, {m.replicas} replica(s)")
    return seen


def _node_add(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    reply = kv.add_node(args.node_id, args.address, client_address=args.client_address,
                        timeout=args.timeout)
    out.note(f"node {reply.node_id}: {'a member already' if reply.already else 'added'} "
             f"({reply.state}, placement epoch {reply.epoch})")
    state = reply.state
    if not args.no_wait:
        # The members hand it the cluster state once it answers; it turns active
        # when its replica of the system group caught up.
        done = _wait_for_member(kv, out, reply.node_id, "active", (state, 0), args)
        if done is None:
            out.note(f"medkv: node {reply.node_id} is not active after {args.wait_timeout:g}s: "
                     "is it running, with the members in its [[peers]]?")
            return EXIT_ERROR
        state = done[0]
    if out.json:
        out.doc({"node": reply.node_id, "state": state, "epoch": reply.epoch,
                 "already": reply.already})
    else:
        out.line(state)
    return 0


def _node_decommission(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    dead = bool(getattr(args, "dead", False))
    reply = kv.decommission_node(args.node_id, dead=dead, timeout=args.timeout)
    state, left = reply.state, reply.replicas
    out.note(f"node {reply.node_id}: {state}, {left} replica(s) to move "
             f"(placement epoch {reply.epoch})")
    if not args.no_wait:
        done = _wait_for_member(kv, out, reply.node_id, "removed", (state, left), args)
        if done is None:
            out.note(f"medkv: node {reply.node_id} is not removed after {args.wait_timeout:g}s")
            return EXIT_ERROR
        state, left = done
    if out.json:
        out.doc({"node": reply.node_id, "state": state, "replicas": left})
    else:
        out.line(state)
    return 0


_NODE_COMMANDS = {"list": _node_list, "add": _node_add, "decommission": _node_decommission,
                  "remove": _node_decommission}


def node_main(args_list: Sequence[str]) -> int:
    """An online `node` command."""
    return _online_main(
        args_list, build_node_parser(),
        lambda ns, kv, out: _NODE_COMMANDS[ns.node_command](ns, kv, out),
        _exit_code,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if is_online_node(args_list):
        return node_main(args_list)
    if is_online_keys(args_list):
        return keys_main(args_list)
    if is_online_audit(args_list):
        return audit_main(args_list)
    command = server_command(args_list)
    if command is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    parser = build_parser()
    args = parser.parse_args(args_list)
    out = _Out(sys.stdout, sys.stderr, args.json)
    try:
        with _client(args, args.addr, args.timeout) as kv:
            return run(args, kv, out, sys.stdin.buffer, sys.stdout.buffer)
    except MedkvError as error:
        out.note(f"medkv: error: {error}")
        return _exit_code(error)
    except KeyboardInterrupt:
        out.note("medkv: interrupted")
        return 130
    except BrokenPipeError:
        # `medkv scan | head`: the reader left; not an error worth a traceback.
        return 0


if __name__ == "__main__":
    sys.exit(main())
