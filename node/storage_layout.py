"""One node's data directory: the LevelDB key spaces and the codec under them.

    DATA_DIR/db        LevelDB: every value sealed by the node's ValueCodec
        r...           Raft logs, hard states, snapshots (consensus.leveldb_storage)
        s...           partition state machines: records, history, sessions, meta
    DATA_DIR/keyring   the data keys, wrapped by the master key (node.crypto)

This module is the one place that decides how bytes reach the disk: with a
key file configured, every value is sealed with AES-256-GCM under the
keyring's data keys and storage keys are keyed hashes (node.crypto); the
plaintext codec exists only for tests and benchmarks, which must ask for it
explicitly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plyvel

from consensus.leveldb_storage import LevelDBLogStore
from consensus.storage import IdentityCodec, ValueCodec
from node.config import NodeConfig
from node.crypto.reencrypt import Keyspace
from node.errors import StartupError
from node.read_snapshots import ReadSnapshotRegistry
from node.record_store import RecordStore, blake2b_key_hasher
from node.replica_catalog import ReplicaCatalog
from node.state_machine import PartitionStateMachine

RAFT_PREFIX = b"r"
STATE_PREFIX = b"s"
# What `medkv keys rotate-data --reencrypt` re-seals (node.keys_cli reads these).
# The state machines write through prefixed_db(STATE_PREFIX), so the key their
# values are bound to lacks the prefix.
REENCRYPT_KEYSPACES = (Keyspace(RAFT_PREFIX), Keyspace(STATE_PREFIX, codec_sees_prefix=False))
REENCRYPT_CURSOR_KEY = b"\x00meta/reencrypt-cursor"


def db_path(data_dir: Path) -> Path:
    return data_dir / "db"


def open_codec(cfg: NodeConfig) -> tuple[ValueCodec, bytes]:
    """The value codec and the storage-key hashing key for this node.

    The index key is the keyring's own random key, not one derived from the
    master: a master rotation must not change where records are stored."""
    if cfg.key_file is None:
        raise StartupError(
            "key_file is not set in the node configuration: medkv stores nothing unencrypted. "
            "Create one with `medkv keys init --key-file PATH` and name it in the config."
        )
    from node.crypto import CryptoError
    from node.crypto.envelope import EnvelopeCodec
    from node.crypto.keyring import open_keyring

    try:
        keyring = open_keyring(cfg.data_dir, cfg.key_file, create=True)
    except CryptoError as e:
        raise StartupError(str(e)) from None
    return EnvelopeCodec(keyring), keyring.index_key


@dataclass
class StorageLayout:
    cfg: NodeConfig
    db: Any  # plyvel.DB, or the test-only lossy wrapper around it
    codec: ValueCodec
    index_key: bytes
    log_store: LevelDBLogStore
    # Every registered LevelDB read snapshot of the node (an erasure ends them).
    read_snapshots: ReadSnapshotRegistry = field(default_factory=ReadSnapshotRegistry)

    @classmethod
    def open(cls, cfg: NodeConfig, codec: tuple[ValueCodec, bytes] | None = None) -> StorageLayout:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        value_codec, index_key = codec if codec is not None else open_codec(cfg)
        try:
            db = plyvel.DB(str(db_path(cfg.data_dir)), create_if_missing=True)
        except plyvel.IOError as e:
            raise StartupError(
                f"cannot open the database in {cfg.data_dir} (is another node running on it?): "
                f"{type(e).__name__}"
            ) from None
        if cfg.test_only.lossy_unsynced_writes:
            from node.lossy_db import JOURNAL_NAME, LossyDB

            db = LossyDB(db, cfg.data_dir / JOURNAL_NAME)
        log_store = LevelDBLogStore(db, prefix=RAFT_PREFIX, codec=value_codec)
        return cls(cfg, db, value_codec, index_key, log_store)

    @property
    def state_machine(self) -> Callable[[int], PartitionStateMachine]:
        hasher = blake2b_key_hasher(self.index_key)
        prefixed = self.db.prefixed_db(STATE_PREFIX)

        def make(partition: int) -> PartitionStateMachine:
            # No settings from the configuration: they are replicated (node.settings).
            store = RecordStore(prefixed, partition, self.codec, hasher, self.read_snapshots)
            return PartitionStateMachine(store)

        return make

    def replica_catalog(self) -> ReplicaCatalog:
        """The record of which partitions this node holds (node.replica_catalog)."""
        return ReplicaCatalog(
            self.db, self.codec, STATE_PREFIX, RAFT_PREFIX, read_snapshots=self.read_snapshots
        )

    def purge_slices(self, partition: int, log_upto: int, slices: int = 10) -> list[tuple[bytes, bytes]]:
        """The key ranges holding one partition's data and its Raft group's log,
        cut into about `slices` pieces each, for compact_slice.

        Records and history are spread by keyed hash, so their ranges split on
        the first hash byte; the log splits on the entry index (0..log_upto).
        Every bound is shorter than any real key of its key space, so the
        marker writes of compact_slice never touch a real key."""
        n = max(1, slices)
        part = STATE_PREFIX + partition.to_bytes(4, "big")
        state = [part]
        for kind, after in ((b"c", b"d"), (b"h", b"i")):
            state += [part + kind + bytes([k * 256 // n]) for k in range(1, n)] + [part + after]
        state.append(part + b"\xff")
        group = RAFT_PREFIX + partition.to_bytes(8, "big")
        raft = [group]
        step = max(1, log_upto // n)
        for index in range(step, log_upto, step):
            bound = group + b"e" + (index >> 8).to_bytes(7, "big")
            if bound > raft[-1]:
                raft.append(bound)
        raft += [group + b"f", group + b"\xff"]
        out: list[tuple[bytes, bytes]] = []
        for bounds in (state, raft):
            out += list(itertools.pairwise(bounds))
        return out

    def compact_slice(self, start: bytes, stop: bytes) -> None:
        """Have LevelDB rewrite the files holding [start, stop] so deleted and
        overwritten values in that range leave the disk.

        LevelDB's CompactRange chooses its levels before it flushes the
        memtable and never rewrites the deepest level holding the range on its
        own; a flush (which keeps shadowed versions) can land exactly there.
        So: compact, write and delete two marker keys at the bounds (never
        real keys, never read), compact again: the markers' flush overlaps
        that file, and the second pass merges it down, dropping the deleted
        versions. Safe to run beside the writer thread: LevelDB orders writes
        and compactions itself. Nothing here holds the event loop."""
        self.db.compact_range(start=start, stop=stop)
        with self.db.write_batch() as wb:
            for key in (start, stop):
                wb.put(key, b"")
                wb.delete(key)
        self.db.compact_range(start=start, stop=stop)

    def close(self) -> None:
        self.db.close()


def plaintext_codec_for_tests() -> tuple[ValueCodec, bytes]:
    """No encryption: for unit tests and the encryption benchmark's baseline only."""
    return IdentityCodec(), b"\x00" * 32
