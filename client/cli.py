"""`medkv`: the command line for clinicians' tools, operators and scripts.

    medkv [--addr HOST:PORT[,HOST:PORT...]] [--json] [--timeout S] COMMAND ...

    put PATIENT RECORD [--value TEXT]          value from --value, else stdin (bytes)
    get PATIENT RECORD [--consistency linearizable|follower|bounded]
                       [--max-staleness S] [--min-version V] [--at-version V]
    history PATIENT RECORD [--limit N]
    delete PATIENT RECORD [--expected-version V]
    cas PATIENT RECORD --expected-version V [--value TEXT]
    scan [--partition P ...] [--consistency ...] [--max-staleness S] [--page-size N]
    status                                    the cluster at a glance
    node ... / keys ...                       server-side: runs `python -m node ...`

`--addr` defaults to $MEDKV_ADDR, else 127.0.0.1:7101. `get` writes the raw
value to stdout and where it was read from to stderr; `--json` prints one
JSON document (scan: one JSON object per line) instead. Exit status: 0 ok,
1 error, 2 usage, 3 not found, 4 version conflict or too stale.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, TextIO

from client.errors import MedkvError, NotFound, TooStale, VersionConflict
from client.records import Record, ScanPage
from client.status_table import render_status, status_json
from client.sync_client import Client

DEFAULT_ADDR = "127.0.0.1:7101"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 1, 2, 3, 4

# Server-side commands: handed to the node package without importing it.
SERVER_COMMANDS = {"node": [], "keys": ["keys"]}
# Global options that take a value, so the dispatcher can skip over them.
_VALUED_GLOBALS = {"--addr", "--timeout"}


def server_command(argv: Sequence[str]) -> list[str] | None:
    """`[python, -m, node, ...]` when argv names a server-side command, else None."""
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUED_GLOBALS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg in SERVER_COMMANDS:
            return [sys.executable, "-m", "node", *SERVER_COMMANDS[arg], *args[i + 1 :]]
        return None
    return None


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkv", description="medkv: replicated, encrypted patient-record store."
    )
    parser.add_argument(
        "--addr",
        default=os.environ.get("MEDKV_ADDR") or DEFAULT_ADDR,
        help="node address(es), host:port[,host:port...] (env MEDKV_ADDR; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per call, retries included"
    )
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

    sub.add_parser("status", help="the cluster at a glance")
    sub.add_parser("node", help="run a database node (python -m node ...)", add_help=False)
    sub.add_parser("keys", help="manage encryption keys (python -m node keys ...)", add_help=False)
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


def _scan_progress(page: ScanPage, done: int, total: int, records: int) -> str:
    return (
        f"partition {page.partition} done: node {page.served_by} "
        f"({'leader' if page.read_state.from_leader else 'replica'}), "
        f"applied {page.read_state.applied_index}, lag {page.read_state.lag}, "
        f"staleness {_seconds(page.staleness)}  [{done}/{total} partitions, {records} records]"
    )


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
        if out.json:
            out.doc({"version": version})
        else:
            out.line(str(version))
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
            if binary_stdout.isatty() and not record.value.endswith(b"\n"):
                binary_stdout.write(b"\n")  # keep the shell prompt on its own line
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
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _scan(args: argparse.Namespace, kv: Client, out: _Out) -> int:
    partitions = args.partition
    total = (
        len(set(partitions)) if partitions else kv.routing_table(timeout=args.timeout).partitions
    )
    done = records = 0
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
            out.note(_scan_progress(page, done, total, records))
    out.stdout.flush()
    out.note(f"scan complete: {records} records from {done} partitions")
    return 0


def _exit_code(error: MedkvError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, VersionConflict | TooStale):
        return EXIT_CONFLICT
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = server_command(args_list)
    if command is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    parser = build_parser()
    args = parser.parse_args(args_list)
    out = _Out(sys.stdout, sys.stderr, args.json)
    try:
        with Client(args.addr, timeout=args.timeout) as kv:
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
