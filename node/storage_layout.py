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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plyvel

from consensus.leveldb_storage import LevelDBLogStore
from consensus.storage import IdentityCodec, ValueCodec
from node.config import NodeConfig
from node.crypto.reencrypt import Keyspace
from node.errors import StartupError
from node.record_store import RecordStore, blake2b_key_hasher
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
            return PartitionStateMachine(RecordStore(prefixed, partition, self.codec, hasher))

        return make

    def purge_disk(self) -> None:
        """Have LevelDB rewrite its files so deleted values leave the disk
        (after an erasure). Explicit bounds: plyvel's open-ended compact_range
        skips data already in the bottom level."""
        for prefix in (RAFT_PREFIX, STATE_PREFIX):
            self.db.compact_range(start=prefix, stop=prefix + b"\xff" * 48)
        # LevelDB's CompactRange chooses its levels before it flushes the
        # memtable and never rewrites the deepest level holding the range on
        # its own; a flush (which keeps shadowed versions) can land exactly
        # there. Writing and deleting two keys on either side of both key
        # spaces makes the next flush overlap that file, so this second pass
        # merges it down and drops the erased versions. The keys are never read.
        low, high = b"q\xff", b"t"
        with self.db.write_batch(sync=True) as wb:
            for key in (low, high):
                wb.put(key, b"")
                wb.delete(key)
        self.db.compact_range(start=low, stop=high + b"\x00")

    def close(self) -> None:
        self.db.close()


def plaintext_codec_for_tests() -> tuple[ValueCodec, bytes]:
    """No encryption: for unit tests and the encryption benchmark's baseline only."""
    return IdentityCodec(), b"\x00" * 32
