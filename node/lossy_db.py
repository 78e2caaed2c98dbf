"""TEST-ONLY: a LevelDB whose writes not yet synced are lost by a kill -9.

A plain kill -9 never loses data the OS already holds, so it cannot catch a
missing fsync: an acknowledged write that was only written, never synced,
survives the process and the bug stays hidden. Jepsen's LazyFS closes that
gap for etcd at the file-system level; this wrapper does it at ours.

How: before an unsynced write changes a key, the key's previous value goes to
an undo journal (plain file appends, which a process kill does not lose). A
synced write makes everything before it durable (LevelDB syncs its log in
order), so it empties the journal. When the database is opened again and the
journal is not empty, the process died with writes the OS might have lost:
they are rolled back, exactly as a power loss would have dropped them. Reads
while running see every write, as the page cache would show them.

Enabled only by the environment variable MEDKV_TEST_ONLY_LOSSY_UNSYNCED_WRITES
(node.test_only), which the fault-injection suite sets; never in production.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack
import plyvel

log = logging.getLogger("medkv.lossy")

JOURNAL_NAME = "lossy-undo.journal"


class LossyDB:
    """Wraps a plyvel.DB; see the module docstring."""

    def __init__(self, db: plyvel.DB, journal_path: Path) -> None:
        self._db = db
        self._journal_path = journal_path
        self._saved: set[bytes] = set()  # keys whose pre-sync value is journalled
        self.rolled_back = self._roll_back()
        self._journal = open(journal_path, "ab")  # noqa: SIM115 - lives as long as the DB

    # ---- recovery --------------------------------------------------------

    def _roll_back(self) -> int:
        """Undo the writes a crash left unsynced; returns how many keys were restored."""
        try:
            raw = self._journal_path.read_bytes()
        except FileNotFoundError:
            return 0
        if not raw:
            return 0
        first: dict[bytes, bytes | None] = {}
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(raw)
        try:
            for key, old in unpacker:
                first.setdefault(key, old)  # the oldest saved value is the synced one
        except (ValueError, msgpack.UnpackException):
            pass  # a torn last record: its write never happened either
        with self._db.write_batch(sync=True) as wb:
            for key, old in first.items():
                if old is None:
                    wb.delete(key)
                else:
                    wb.put(key, old)
        self._journal_path.write_bytes(b"")
        log.warning("lossy mode: rolled back %d keys written but never synced", len(first))
        return len(first)

    # ---- writes ----------------------------------------------------------

    def _before_unsynced(self, keys: list[bytes]) -> None:
        out = []
        for k in keys:
            if k not in self._saved:
                self._saved.add(k)
                out.append(msgpack.packb([k, self._db.get(k)], use_bin_type=True))
        if out:
            self._journal.write(b"".join(out))
            self._journal.flush()  # in the OS now: survives a kill -9 of this process

    def _after_synced(self) -> None:
        self._saved.clear()
        self._journal.seek(0)
        self._journal.truncate()

    def apply(self, ops: list[tuple[bytes, bytes | None]], sync: bool) -> None:
        if not sync:
            self._before_unsynced([k for k, _ in ops])
        with self._db.write_batch(sync=sync) as wb:
            for k, v in ops:
                if v is None:
                    wb.delete(k)
                else:
                    wb.put(k, v)
        if sync:
            self._after_synced()

    def write_batch(self, sync: bool = False, transaction: bool = False) -> LossyBatch:
        return LossyBatch(self, b"", sync)

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self.apply([(key, value)], sync)

    def delete(self, key: bytes, sync: bool = False) -> None:
        self.apply([(key, None)], sync)

    # ---- reads and the rest: the real database ----------------------------

    def get(self, key: bytes, default: Any = None, **kw: Any) -> Any:
        return self._db.get(key, default, **kw)

    def iterator(self, **kw: Any) -> Any:
        return self._db.iterator(**kw)

    def snapshot(self) -> Any:
        return self._db.snapshot()

    def compact_range(self, **kw: Any) -> None:
        self._db.compact_range(**kw)

    def prefixed_db(self, prefix: bytes) -> LossyPrefixedDB:
        return LossyPrefixedDB(self, prefix)

    def close(self) -> None:
        """A clean close: the OS keeps what was written, so nothing is undone."""
        self._after_synced()
        self._journal.close()
        self._db.close()


class LossyPrefixedDB:
    """plyvel's prefixed_db over a LossyDB: reads via plyvel, writes journalled."""

    def __init__(self, base: LossyDB, prefix: bytes) -> None:
        self._base = base
        self._prefix = prefix
        self._real = base._db.prefixed_db(prefix)

    def write_batch(self, sync: bool = False, transaction: bool = False) -> LossyBatch:
        return LossyBatch(self._base, self._prefix, sync)

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self._base.apply([(self._prefix + key, value)], sync)

    def delete(self, key: bytes, sync: bool = False) -> None:
        self._base.apply([(self._prefix + key, None)], sync)

    def get(self, key: bytes, default: Any = None, **kw: Any) -> Any:
        return self._real.get(key, default, **kw)

    def iterator(self, **kw: Any) -> Any:
        return self._real.iterator(**kw)

    def snapshot(self) -> Any:
        return self._real.snapshot()

    def prefixed_db(self, prefix: bytes) -> LossyPrefixedDB:
        return LossyPrefixedDB(self._base, self._prefix + prefix)


class LossyBatch:
    """A write batch with plyvel's interface (put/delete/write/clear, context manager)."""

    def __init__(self, base: LossyDB, prefix: bytes, sync: bool) -> None:
        self._base = base
        self._prefix = prefix
        self._sync = sync
        self._ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self._ops.append((self._prefix + key, value))

    def delete(self, key: bytes) -> None:
        self._ops.append((self._prefix + key, None))

    def clear(self) -> None:
        self._ops.clear()

    def write(self) -> None:
        ops, self._ops = self._ops, []
        self._base.apply(ops, self._sync)

    def __enter__(self) -> LossyBatch:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.write()
