"""Benchmark: what encryption at rest costs on writes, EnvelopeCodec vs plaintext.

Two measurements, both codecs in the same process and the same run, on fresh
LevelDB databases, in alternating order round after round so background
noise (other work on a shared machine) hits both alike. Values are random
bytes (incompressible either way, so LevelDB's snappy compression favours
neither side). It reports figures; it never passes or fails.

node   the node's own write path: StorageLayout (the one place the node opens
       LevelDB and the codec), group commit of Raft log entries for several
       partitions through LevelDBLogStore.write, then PartitionStateMachine
       .apply of the same entries (record, history, session and applied
       index writes), with real 200-byte Put commands. This is what encryption
       costs a node, minus the network and Raft messaging, which it does not
       touch. Run with sync=False (CPU-bound: the worst case for the ratio)
       and, with --sync, also sync=True (as the node writes its log). Each is
       also reported per CPU second of the process (LevelDB's compaction
       thread included), which other work on a shared machine disturbs less
       than wall-clock time.
codec  LevelDB puts of sealed values and nothing else: the codec's raw cost,
       the upper bound of the overhead, which no real write path approaches.

    .venv/bin/python scripts/bench-encryption.py [--writes 10000] [--partitions 8]
        [--per-round 64] [--rounds 7] [--sync] [--values 20000] [--value-size 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cryptography
import plyvel

from consensus.leveldb_storage import GroupUpdate
from consensus.storage import ValueCodec
from consensus.types import Entry, HardState
from node import commands as cmd
from node.config import NodeConfig
from node.crypto.envelope import EnvelopeCodec, PlaintextCodec
from node.crypto.keyfile import generate_master_key
from node.crypto.keyring import Keyring
from node.storage_layout import StorageLayout, plaintext_codec_for_tests

CodecPair = tuple[ValueCodec, bytes]  # (value codec, storage-key hashing key)


def _cpu_has_aes() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return "yes" if " aes " in flags or " aes\n" in flags else "no"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- node-level: the Raft log + state machine write path


def make_commands(n: int, value_size: int, partitions: int, seed: int) -> list[list[bytes]]:
    """n encoded Put commands spread over partitions by patient; per partition, in order.

    Patients repeat and record ids collide, so some writes replace a record
    and push its old version into history, as real traffic does."""
    rng = random.Random(seed)
    cfg = _config(Path("/nonexistent"), partitions)
    placement = cfg.placement
    out: list[list[bytes]] = [[] for _ in range(partitions)]
    seqs: dict[tuple[bytes, int], int] = {}
    clients = [rng.randbytes(16) for _ in range(16)]
    for _ in range(n):
        patient = f"patient-{rng.randrange(2000):05d}"
        part = placement.partition_of(patient)
        client = rng.choice(clients)
        seq = seqs.get((client, part), 0) + 1
        seqs[(client, part)] = seq
        c = cmd.Put(client_id=client, seq=seq, ack_below=seq, ts_ms=1_700_000_000_000 + seq,
                    patient_id=patient, record_id=f"obs-{rng.randrange(8)}",
                    value=rng.randbytes(value_size))
        out[part].append(cmd.encode_command(c))
    return out


def _config(data_dir: Path, partitions: int) -> NodeConfig:
    return NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=data_dir,
                      peers={1: "127.0.0.1:1"}, partitions=partitions, replication=1)


def node_write_rate(data_dir: Path, codec: CodecPair, per_partition: list[list[bytes]],
                    per_round: int, sync: bool) -> tuple[float, float]:
    """Commands per second through group commit + apply, `per_round` commands per
    partition per turn: (per wall-clock second, per CPU second of this process)."""
    from consensus.types import ConfState

    cfg = _config(data_dir, len(per_partition))
    layout = StorageLayout.open(cfg, codec=codec)
    try:
        make_sm = layout.state_machine
        sms = [make_sm(p) for p in range(len(per_partition))]
        for p in range(len(per_partition)):
            layout.log_store.bootstrap(p, ConfState(voters=(1,)))
        last = [0] * len(per_partition)
        total = sum(len(c) for c in per_partition)
        start, cpu_start = time.perf_counter(), time.process_time()
        pos = 0
        while any(pos < len(c) for c in per_partition):
            updates: list[GroupUpdate] = []
            applies: list[tuple[int, list[tuple[int, int, bytes]]]] = []
            for p, commands in enumerate(per_partition):
                chunk = commands[pos : pos + per_round]
                if not chunk:
                    continue
                entries = [Entry(last[p] + i + 1, 1, data) for i, data in enumerate(chunk)]
                last[p] += len(chunk)
                updates.append(GroupUpdate(p, HardState(1, 1, last[p]), entries))
                applies.append((p, [(e.index, e.term, e.data) for e in entries]))
            layout.log_store.write(updates, sync)  # the writer thread's group commit
            for p, run in applies:  # the event loop's apply
                sms[p].apply(run)
            pos += per_round
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    finally:
        layout.close()
    return total / elapsed, total / cpu


# ---- codec-level: sealed LevelDB puts only


def codec_write_rate(db_dir: Path, codec: ValueCodec, items: list[tuple[bytes, bytes]],
                     batch: int) -> float:
    db = plyvel.DB(str(db_dir), create_if_missing=True, error_if_exists=True)
    try:
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            with db.write_batch(sync=False) as wb:
                for key, value in items[i : i + batch]:
                    wb.put(key, codec.seal(key, value))
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    return len(items) / elapsed


def codec_read_rate(db_dir: Path, codec: ValueCodec, expected: int) -> float:
    db = plyvel.DB(str(db_dir))
    try:
        start = time.perf_counter()
        n = 0
        for key, sealed in db.iterator():
            codec.open(key, sealed)
            n += 1
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    if n != expected:
        raise RuntimeError(f"read back {n} values, wrote {expected}")
    return n / elapsed


# ---- the run


def _alternating(rounds: int, names: tuple[str, str]) -> list[tuple[int, str]]:
    order: list[tuple[int, str]] = []
    for r in range(rounds):
        pair = names if r % 2 == 0 else names[::-1]
        order += [(r, n) for n in pair]
    return order


def _line(label: str, plain: float, enc: float) -> str:
    return (f"{label:<22} plaintext {plain:>9,.0f}/s   encrypted {enc:>9,.0f}/s   "
            f"ratio {enc / plain:.3f}   cost {100 * (1 - enc / plain):5.1f}% of throughput")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=10_000, help="node-level Put commands per round")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=64,
                    help="commands per partition per group commit")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sync", action="store_true", help="also measure with synced log writes")
    ap.add_argument("--values", type=int, default=20_000, help="codec-level values per round")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100, help="codec-level WriteBatch size")
    ns = ap.parse_args(argv)

    commands = make_commands(ns.writes, ns.value_size, ns.partitions, seed=7)
    items = [(b"r/%010d" % i, os.urandom(ns.value_size)) for i in range(ns.values)]
    modes = [False, True] if ns.sync else [False]
    node: dict[tuple[bool, str], list[float]] = {(s, n): [] for s in modes for n in ("p", "e")}
    node_cpu: dict[tuple[bool, str], list[float]] = {k: [] for k in node}
    codec_w: dict[str, list[float]] = {"p": [], "e": []}
    codec_r: dict[str, list[float]] = {"p": [], "e": []}
    with tempfile.TemporaryDirectory(prefix="medkv-bench-") as tmp:
        root = Path(tmp)

        def envelope() -> CodecPair:
            keys = root / f"keys-{time.perf_counter_ns()}"
            keyring = Keyring.create(keys, generate_master_key())
            return EnvelopeCodec(keyring), keyring.index_key

        pairs: dict[str, Callable[[], CodecPair]] = {"p": plaintext_codec_for_tests, "e": envelope}
        for r, name in _alternating(ns.rounds, ("p", "e")):
            for sync in modes:
                rate, cpu_rate = node_write_rate(root / f"node-{name}-{r}-{sync}", pairs[name](),
                                                 commands, ns.per_round, sync)
                node[(sync, name)].append(rate)
                node_cpu[(sync, name)].append(cpu_rate)
            codec: ValueCodec = (PlaintextCodec(benchmark_only=True) if name == "p"
                                 else pairs["e"]()[0])
            db_dir = root / f"codec-{name}-{r}"
            codec_w[name].append(codec_write_rate(db_dir, codec, items, ns.batch))
            codec_r[name].append(codec_read_rate(db_dir, codec, len(items)))

    med = statistics.median
    print(f"machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.machine()}, "
          f"AES-NI: {_cpu_has_aes()}, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"plyvel {plyvel.__version__} (LevelDB {plyvel.__leveldb_version__})")
    print(f"median of {ns.rounds} rounds, codecs alternating; ratio = encrypted / plaintext")
    print(f"node write path: {ns.writes:,} Put commands ({ns.value_size} B values), "
          f"{ns.partitions} partitions, {ns.per_round} per partition per group commit")
    for sync in modes:
        print(_line(f"  node, sync={sync}", med(node[(sync, 'p')]), med(node[(sync, 'e')])))
        print(_line("    per CPU second", med(node_cpu[(sync, 'p')]), med(node_cpu[(sync, 'e')])))
    print(f"codec only: {ns.values:,} values of {ns.value_size} B, WriteBatch of {ns.batch}, "
          "sync=False")
    print(_line("  codec write", med(codec_w["p"]), med(codec_w["e"])))
    print(_line("  codec read", med(codec_r["p"]), med(codec_r["e"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
