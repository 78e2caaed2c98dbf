"""`python -m node keys ...`: the operator's key management commands.

    keys init          --key-file PATH
    keys stage-master  --key-file PATH --new-key-file NEW
    keys rotate-master --key-file PATH --data-dir DIR [--new-key-file NEW]
    keys rotate-data   --key-file PATH --data-dir DIR [--reencrypt]
    keys status        --key-file PATH --data-dir DIR [--json]

rotate-master and rotate-data work offline: the node must be stopped (a
running node would not see a keyring changed under it). They take the
LevelDB lock of DIR/db for their whole run, so a running node is detected and
cannot start in the middle. Both are resumable: after a crash, running the
same command again finishes the job (rotate-data --reencrypt continues the
interrupted pass instead of adding another key).

Running nodes rotate online instead, through the Admin API
(node/key_rotation.py): `medkv keys rotate-data|rotate-master|status --addr
...`. stage-master is the host-side half of an online master rotation: it
copies the new master key file to KEY_FILE.next (0600, never overwriting a
different staged key) and may run while the node runs; `medkv keys
rotate-master --addr ...` then re-wraps and installs it on every node.

Which LevelDB values are re-encrypted: the keyspaces node.storage_layout
exports as REENCRYPT_KEYSPACES (and its REENCRYPT_CURSOR_KEY) when that
module exists; otherwise every key of the database except the cursor.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import plyvel

from node.crypto import CryptoError
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import create_key_file, load_master_key
from node.crypto.keyring import (
    MasterRotation,
    keyring_path,
    open_keyring,
    staged_key_path,
)
from node.crypto.reencrypt import (
    DEFAULT_CURSOR_KEY,
    Keyspace,
    Progress,
    ReEncryptionIncomplete,
    ReEncryptor,
)

PROG = "python -m node keys"
DB_DIR = "db"  # the node's LevelDB lives at DATA_DIR/db
_RETIRE_ATTEMPTS = 3


class CliError(Exception):
    """A failure worth one clear line to the operator."""


class DatabaseLocked(CliError):
    """The node (or another keys command) holds the LevelDB lock."""


@dataclass(frozen=True)
class Layout:
    """Where the node's sealed values are, as node.storage_layout declares it."""

    keyspaces: Sequence[bytes | Keyspace]
    cursor_key: bytes
    problem: str | None = None  # why re-encryption must not run with this layout


def node_layout() -> Layout:
    """The keyspaces to re-encrypt and the cursor key, from node.storage_layout:
    REENCRYPT_KEYSPACES (bytes or Keyspace items) or ENCRYPTED_PREFIXES, and
    REENCRYPT_CURSOR_KEY. Without that module: every key of the database."""
    # Relative to this package, so an installed copy (medkv.node) finds its own.
    name = f"{__package__}.storage_layout"
    try:
        layout = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return Layout([b""], DEFAULT_CURSOR_KEY)
        raise CliError(f"node.storage_layout cannot be imported: {e}") from None
    except Exception as e:  # the layout exists but is broken: say so rather than guess
        raise CliError(f"node.storage_layout cannot be imported: {type(e).__name__}: {e}") from None
    cursor = bytes(getattr(layout, "REENCRYPT_CURSOR_KEY", DEFAULT_CURSOR_KEY))
    for name in ("REENCRYPT_KEYSPACES", "ENCRYPTED_PREFIXES"):
        declared = getattr(layout, name, None)
        if declared is not None:
            return Layout(list(declared), cursor)
    value_prefixes = getattr(layout, "VALUE_PREFIXES", None)
    if value_prefixes is not None:
        return Layout(
            list(value_prefixes), cursor,
            "node.storage_layout lists VALUE_PREFIXES but not REENCRYPT_KEYSPACES, so it does "
            "not say which stores sealed their values under the key without its prefix "
            "(a plyvel prefixed_db); re-encryption cannot run until it does",
        )
    return Layout([b""], cursor)


@contextlib.contextmanager
def open_db(data_dir: Path) -> Iterator[plyvel.DB | None]:
    """The node's LevelDB (None if it does not exist), holding its lock."""
    path = data_dir / DB_DIR
    if not path.exists():
        yield None
        return
    try:
        db = plyvel.DB(str(path), create_if_missing=False)
    except plyvel.IOError as e:
        if "lock" in str(e).lower():
            raise DatabaseLocked(
                f"the database {path} is locked: a node (or another keys command) is using it. "
                "Stop the node first; this command works offline."
            ) from None
        raise CliError(f"cannot open the database {path}: {e}") from None
    try:
        yield db
    finally:
        db.close()


class _ProgressLine:
    """Progress on stderr: one line per 5% step (or rewritten in place on a tty)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last: tuple[int, bool] | None = None

    def __call__(self, p: Progress) -> None:
        # 100% is shown once, when finished (a pass may end with an empty step).
        mark = (int(p.percent // 5) if p.finished else min(int(p.percent // 5), 19), p.finished)
        if mark == self.last:
            return
        self.last = mark
        line = (f"re-encrypting to data key {p.target_key_id}: {p.done:,}/{p.total_estimate:,} "
                f"values ({p.percent:.0f}%), {p.resealed:,} re-sealed")
        if self.tty:
            self.out.write("\r" + line + ("\n" if p.finished else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


# ---- commands


def cmd_init(ns: argparse.Namespace) -> int:
    master = create_key_file(ns.key_file)
    print(f"created master key file {ns.key_file} (key id {master.key_id}, mode 0600)")
    print("copy this same file to every host of the cluster (install -m 600 ...), name it as")
    print("key_file in each node's configuration, and keep it out of data directory backups")
    return 0


def cmd_stage_master(ns: argparse.Namespace) -> int:
    """Copy a new master key file to KEY_FILE.next, for an online rotation."""
    new = load_master_key(ns.new_key_file)
    current = load_master_key(ns.key_file)
    if new.key_id == current.key_id:
        raise CliError(f"{ns.new_key_file} holds the current master key id {new.key_id}")
    staged = staged_key_path(ns.key_file)
    if staged.exists():
        existing = load_master_key(staged)
        if existing.key_id != new.key_id:
            raise CliError(
                f"{staged} already holds master key id {existing.key_id}: finish that rotation "
                "(medkv keys rotate-master) or remove the file first"
            )
        print(f"master key id {new.key_id} is already staged in {staged}")
        return 0
    create_key_file(staged, new)
    print(f"staged master key id {new.key_id} in {staged} (mode 0600)")
    print("stage it on every host of the cluster, then run: medkv keys rotate-master --addr ...")
    return 0


def cmd_rotate_master(ns: argparse.Namespace) -> int:
    with open_db(ns.data_dir):  # held: the node cannot run meanwhile
        rotation = MasterRotation(ns.key_file, ns.data_dir, ns.new_key_file)
        generated = ns.new_key_file is None and not rotation.pending()
        if rotation.pending():
            print(f"resuming the rotation staged in {rotation.staged}")
        old_id = load_master_key(ns.key_file).key_id
        new = rotation.stage()
        print(f"1/3 staged new master key id {new.key_id} in {rotation.staged}")
        rotation.rewrap()
        print(f"2/3 re-wrapped keyring {keyring_path(ns.data_dir)} (was master key id {old_id})")
        rotation.install()
        print(f"3/3 installed: {ns.key_file} now holds master key id {new.key_id}")
    if generated:
        print(f"the whole cluster must move to this key. Before starting this node again, copy "
              f"{ns.key_file} to every other host as its KEY_FILE.next and restart those nodes "
              "(they then accept patient keys wrapped under it); then run rotate-master on each, "
              "node stopped. Next time, create the key first (keys init) and pass --new-key-file.")
    return 0


def cmd_rotate_data(ns: argparse.Namespace) -> int:
    with open_db(ns.data_dir) as db:  # held: a running node would not see the new key
        keyring = open_keyring(ns.data_dir, ns.key_file)
        if not ns.reencrypt:
            new_id = keyring.rotate_data()
            print(f"new active data key {new_id}; values under older keys stay readable "
                  "(re-encrypt them with --reencrypt)")
            return 0
        if db is None:
            new_id = keyring.rotate_data()
            print(f"new active data key {new_id}; no database at {ns.data_dir / DB_DIR}, "
                  "nothing to re-encrypt")
            return 0
        layout = node_layout()
        if layout.problem is not None:
            raise CliError(layout.problem)
        reenc = ReEncryptor(db, EnvelopeCodec(keyring), layout.keyspaces, layout.cursor_key)
        last = reenc.progress()
        if last is not None and not last.finished and last.target_key_id == keyring.active_key_id:
            print(f"resuming re-encryption to data key {last.target_key_id} "
                  f"({last.done:,}/{last.total_estimate:,} values done)")
        else:
            if not (last is not None and not last.finished
                    and last.target_key_id == keyring.next_data_key_id):
                reenc.begin(keyring.next_data_key_id)  # the plan is durable before the key
            new_id = keyring.rotate_data()
            print(f"new active data key {new_id}")
        report = _ProgressLine(sys.stderr)
        reenc.run(on_progress=report)
        for attempt in range(_RETIRE_ATTEMPTS):
            try:
                retired = reenc.retire_old_keys()
                break
            except ReEncryptionIncomplete as e:
                if attempt == _RETIRE_ATTEMPTS - 1:
                    raise
                print(f"{e}", file=sys.stderr)
                reenc.run(on_progress=report)
    shown = ", ".join(map(str, retired)) if retired else "none"
    print(f"re-encryption finished; retired data keys: {shown}; active: {keyring.active_key_id}")
    return 0


def gather_status(key_file: Path, data_dir: Path) -> dict[str, Any]:
    """Everything `keys status` shows, as plain data (no key material)."""
    master = load_master_key(key_file)
    staged = staged_key_path(key_file)
    staged_id = load_master_key(staged).key_id if staged.exists() else None
    keyring = open_keyring(data_dir, key_file)
    info: dict[str, Any] = {
        "key_file": str(key_file),
        "master_key_id": master.key_id,
        "staged_master_key_id": staged_id,
        "keyring": str(keyring.path),
        "keyring_master_key_id": keyring.master_key_id,
        "previous_master_key_id": keyring.previous_master_key_id,
        "old_master_key_ids": keyring.old_master_key_ids,
        "active_data_key_id": keyring.active_key_id,
        "database": str(data_dir / DB_DIR),
        "database_state": "absent",
        "data_keys": [
            {"id": k.key_id, "created": k.created, "active": k.active, "values": None}
            for k in keyring.data_keys()
        ],
        "reencryption": None,
    }
    try:
        with open_db(data_dir) as db:
            if db is not None:
                info["database_state"] = "open"
                layout = node_layout()  # counting reads headers only: any layout will do
                reenc = ReEncryptor(db, EnvelopeCodec(keyring), layout.keyspaces,
                                    layout.cursor_key)
                counts = reenc.referenced_key_ids(include_cursor=False)
                for k in info["data_keys"]:
                    k["values"] = counts.pop(k["id"], 0)
                info["values_under_missing_keys"] = counts  # should be empty
                prog = reenc.progress()
                if prog is not None:
                    info["reencryption"] = {
                        "target_key_id": prog.target_key_id, "done": prog.done,
                        "total_estimate": prog.total_estimate, "resealed": prog.resealed,
                        "finished": prog.finished, "percent": round(prog.percent, 1),
                    }
    except DatabaseLocked:
        info["database_state"] = "locked (node running): value counts unavailable"
    return info


def render_status(info: dict[str, Any]) -> str:
    lines = [f"master key file   {info['key_file']}   id {info['master_key_id']}"]
    if info["staged_master_key_id"]:
        note = ("rotation interrupted: run keys rotate-master to finish"
                if info["staged_master_key_id"] == info["keyring_master_key_id"]
                else "staged, not yet applied")
        lines.append(f"staged master     id {info['staged_master_key_id']}   ({note})")
    lines.append(
        f"keyring           {info['keyring']}   wrapped by master {info['keyring_master_key_id']}"
        f"   previous {info['previous_master_key_id'] or '-'}"
        f"   old masters kept: {len(info['old_master_key_ids'])}"
    )
    lines.append(f"database          {info['database']}   {info['database_state']}")
    lines.append("")
    lines.append(f"{'DATA KEY':<9} {'STATE':<7} {'CREATED':<26} VALUES")
    for k in info["data_keys"]:
        values = "-" if k["values"] is None else f"{k['values']:,}"
        state = "active" if k["active"] else "old"
        lines.append(f"{k['id']:<9} {state:<7} {k['created']:<26} {values}")
    missing = info.get("values_under_missing_keys")
    if missing:
        lines.append(f"values under keys NOT in the keyring (unreadable): {missing}")
    lines.append("")
    r = info["reencryption"]
    if r is None:
        lines.append("re-encryption     none recorded")
    else:
        state = "finished" if r["finished"] else "in progress (resume: rotate-data --reencrypt)"
        lines.append(
            f"re-encryption     to key {r['target_key_id']}: {r['done']:,}/{r['total_estimate']:,}"
            f" values ({r['percent']:.0f}%), {r['resealed']:,} re-sealed, {state}"
        )
    return "\n".join(lines)


def cmd_status(ns: argparse.Namespace) -> int:
    info = gather_status(ns.key_file, ns.data_dir)
    print(json.dumps(info, indent=2) if ns.json else render_status(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Manage medkv encryption keys.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, data_dir: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--key-file", type=Path, required=True, help="the master key file")
        if data_dir:
            p.add_argument("--data-dir", type=Path, required=True, help="the node's data directory")
        return p

    add("init", "create a new master key file (mode 0600; never overwrites)", data_dir=False)
    p = add("stage-master", "stage a new master key file as KEY_FILE.next for an online "
            "rotation (the node may run)", data_dir=False)
    p.add_argument("--new-key-file", type=Path, required=True,
                   help="the cluster's new master key file (from keys init)")
    p = add("rotate-master", "re-wrap the node's data keys under a new master key (node stopped)")
    p.add_argument("--new-key-file", type=Path, default=None,
                   help="the cluster's new master key file (default: generate one)")
    p = add("rotate-data", "add a new active data key (node stopped)")
    p.add_argument("--reencrypt", action="store_true",
                   help="also re-encrypt every value under it and retire old keys (resumable)")
    p = add("status", "show keys, which is active, wrapping master, re-encryption progress")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


_COMMANDS = {
    "init": cmd_init,
    "stage-master": cmd_stage_master,
    "rotate-master": cmd_rotate_master,
    "rotate-data": cmd_rotate_data,
    "status": cmd_status,
}


def main(argv: Sequence[str]) -> int:
    ns = build_parser().parse_args(list(argv))
    try:
        return _COMMANDS[ns.command](ns)
    except (CryptoError, CliError) as e:
        print(f"medkv keys {ns.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"medkv keys {ns.command}: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
