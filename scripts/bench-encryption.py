"""Benchmark: LevelDB write (and read) throughput through EnvelopeCodec vs plaintext.

Both codecs run in the same process, on the same machine, on fresh plyvel
databases, alternating rounds so background noise hits both alike. Values are
random bytes (incompressible either way, so LevelDB's snappy compression
favours neither side). Reports figures; it never passes or fails.

    .venv/bin/python scripts/bench-encryption.py [--values 50000] [--value-size 1024]
        [--batch 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cryptography
import plyvel

from node.crypto.envelope import EnvelopeCodec, PlaintextCodec
from node.crypto.keyfile import generate_master_key
from node.crypto.keyring import Keyring

Codec = EnvelopeCodec | PlaintextCodec


def _cpu_has_aes() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return "yes" if " aes " in flags or " aes\n" in flags else "no"


def write_rate(db_dir: Path, codec: Codec, items: list[tuple[bytes, bytes]], batch: int) -> float:
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


def read_rate(db_dir: Path, codec: Codec, expected: int) -> float:
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
    assert n == expected, f"read back {n} values, wrote {expected}"
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", type=int, default=50_000)
    ap.add_argument("--value-size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ns = ap.parse_args(argv)

    items = [(b"r/%010d" % i, os.urandom(ns.value_size)) for i in range(ns.values)]
    results: dict[str, dict[str, list[float]]] = {
        "plaintext": {"write": [], "read": []}, "envelope": {"write": [], "read": []}}
    with tempfile.TemporaryDirectory(prefix="medkv-bench-") as tmp:
        root = Path(tmp)
        (root / "keys").mkdir()
        codecs: dict[str, Callable[[], Codec]] = {
            "plaintext": lambda: PlaintextCodec(benchmark_only=True),
            "envelope": lambda: EnvelopeCodec(Keyring.create(root / "keys", generate_master_key())),
        }
        for r in range(ns.rounds):
            for name in ("plaintext", "envelope") if r % 2 == 0 else ("envelope", "plaintext"):
                (root / "keys" / "keyring").unlink(missing_ok=True)
                codec = codecs[name]()
                db_dir = root / f"{name}-{r}"
                results[name]["write"].append(write_rate(db_dir, codec, items, ns.batch))
                results[name]["read"].append(read_rate(db_dir, codec, len(items)))

    def med(name: str, op: str) -> float:
        return statistics.median(results[name][op])

    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}, "
          f"AES-NI: {_cpu_has_aes()}")
    print(f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
          f"plyvel {plyvel.__version__} (LevelDB {plyvel.__leveldb_version__})")
    print(f"workload: {ns.values:,} values of {ns.value_size} B, WriteBatch of {ns.batch}, "
          f"sync=False, median of {ns.rounds} rounds (alternating order)")
    for op in ("write", "read"):
        plain, enc = med("plaintext", op), med("envelope", op)
        print(f"{op:5}  plaintext {plain:>10,.0f} values/s ({plain * ns.value_size / 2**20:6.1f} MiB/s)"
              f"   envelope {enc:>10,.0f} values/s ({enc * ns.value_size / 2**20:6.1f} MiB/s)"
              f"   envelope/plaintext {enc / plain:.2f}  overhead {100 * (plain / enc - 1):.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
