"""Benchmark: what a write session costs a node, in memory and on disk.

Memory must stay bounded (issue 10, item 7): the session table holds at most
max_sessions sessions per partition (a replicated setting, 10,000 by default;
opening more is refused, never met by eviction), each remembering at most
max_results_per_session unacknowledged results. So the bound is

    per partition <= max_sessions * (idle session + max_results * result)

and this script measures the two terms on the node's real apply path:
PartitionStateMachine over a RecordStore on a fresh LevelDB, fed encoded
RegisterSession and Put entries exactly as the host hands them over (rounds
of --per-round entries).

idle     --sessions RegisterSession entries: Python heap growth per open,
         never-written session (tracemalloc, after a gc), and the bytes of its
         stored blob (what a snapshot and the LevelDB state carry per session).
results  then one Put in each of the first --written sessions, without
         acknowledging it (ack_below 0): heap growth per remembered result.

It reports figures and the bound they give for the default settings; it never
passes or fails. LevelDB's own C++ memory (block cache, memtable) is not
counted: it does not grow per session.

    .venv/bin/python scripts/bench-sessions.py [--sessions 10000] [--written 10000]
        [--per-round 256]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plyvel

from node import commands as cmd
from node.record_store import RecordStore, blake2b_key_hasher
from node.sessions import session_key
from node.settings import DEFAULTS
from node.state_machine import PartitionStateMachine
from node.storage_layout import plaintext_codec_for_tests


def _machine() -> str:
    cores = os.cpu_count() or 0
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = f"{mem_kb / (1 << 20):.0f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "? GiB"
    return f"{platform.machine()}, {cores} cores, {mem}, Python {platform.python_version()}"


def _heap() -> int:
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    return current


def _apply(sm: PartitionStateMachine, entries: list[bytes], per_round: int) -> None:
    for k in range(0, len(entries), per_round):
        start = sm.applied_index + 1
        sm.apply([(start + i, 1, d) for i, d in enumerate(entries[k : k + per_round])])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=DEFAULTS.max_sessions)
    ap.add_argument("--written", type=int, default=DEFAULTS.max_sessions)
    ap.add_argument("--per-round", type=int, default=256)
    args = ap.parse_args(argv)
    if not 0 < args.sessions <= DEFAULTS.max_sessions:
        ap.error(f"--sessions must be in 1..{DEFAULTS.max_sessions} (the default max_sessions)")
    args.written = min(args.written, args.sessions)

    codec, index_key = plaintext_codec_for_tests()
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp:
        db = plyvel.DB(str(Path(tmp) / "db"), create_if_missing=True)
        try:
            store = RecordStore(db.prefixed_db(b"sm/"), 0, codec, blake2b_key_hasher(index_key))
            sm = PartitionStateMachine(store)
            # Client ids and entries are built before measuring: they are the
            # clients' and the log's memory, not the table's.
            owners = [os.urandom(16) for _ in range(args.sessions)]
            registrations = [
                cmd.encode_command(cmd.RegisterSession(ts_ms=1_000, client_id=o, nonce=i))
                for i, o in enumerate(owners)
            ]
            tracemalloc.start()
            before = _heap()
            started = time.perf_counter()
            _apply(sm, registrations, args.per_round)
            took = time.perf_counter() - started
            del registrations
            after_idle = _heap()
            assert sm.session_count == args.sessions, "the table refused sessions below the cap"
            blob = store.sessions()
            blob_bytes = [len(v) for _, v in blob]
            writes = [
                cmd.encode_command(
                    cmd.Put(
                        # session i + 1: a session id is its RegisterSession's index
                        client_id=owners[i], session=i + 1, seq=1, ack_below=0, ts_ms=1_000,
                        patient_id=f"bench-{i}", record_id="r", value=b"v",
                    )
                )
                for i in range(args.written)
            ]
            before_writes = _heap()
            _apply(sm, writes, args.per_round)
            del writes
            after_writes = _heap()
            tracemalloc.stop()
        finally:
            db.close()

    idle = (after_idle - before) / args.sessions
    per_result = (after_writes - before_writes) / max(1, args.written)
    key_bytes = len(session_key(1))
    bound = DEFAULTS.max_sessions * (idle + DEFAULTS.max_results_per_session * per_result)
    print(f"machine: {_machine()}")
    print(f"sessions opened: {args.sessions} in {took:.2f}s "
          f"({args.sessions / took:,.0f} RegisterSession entries/s applied)")
    print(f"heap per idle session:        {idle:,.0f} B")
    print(f"heap per remembered result:   {per_result:,.0f} B  ({args.written} sessions, 1 each)")
    print(f"stored per idle session:      {key_bytes} B key + "
          f"{sum(blob_bytes) / max(1, len(blob_bytes)):.0f} B blob (LevelDB, snapshots)")
    print(f"bound per partition at the defaults (max_sessions={DEFAULTS.max_sessions}, "
          f"max_results_per_session={DEFAULTS.max_results_per_session}): "
          f"idle {DEFAULTS.max_sessions * idle / (1 << 20):.1f} MiB, "
          f"every result slot full {bound / (1 << 20):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
