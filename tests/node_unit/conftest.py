"""Fixtures for the node unit tests: real LevelDB databases, a sealing test codec."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import plyvel
import pytest

from node.record_store import RecordStore, blake2b_key_hasher

HASH_KEY = bytes(range(32))


class TaggedXorCodec:
    """A stand-in for the real AEAD codec: hides plaintext (xor) and binds each
    value to its storage key (tag over key + plaintext), so a value moved to
    another key fails to open just as it would under AES-GCM."""

    MARK = b"\xa5"

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        tag = hashlib.blake2b(key + plaintext, digest_size=8).digest()
        return self.MARK + tag + bytes(b ^ 0x5A for b in plaintext)

    def open(self, key: bytes, sealed: bytes) -> bytes:
        if not sealed.startswith(self.MARK) or len(sealed) < 9:
            raise ValueError("not sealed")
        plaintext = bytes(b ^ 0x5A for b in sealed[9:])
        if hashlib.blake2b(key + plaintext, digest_size=8).digest() != sealed[1:9]:
            raise ValueError("authentication failed")
        return plaintext


@pytest.fixture
def db(tmp_path: Path) -> Iterator[plyvel.DB]:
    handle = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    yield handle
    handle.close()


@pytest.fixture
def make_store(db: plyvel.DB) -> Callable[..., RecordStore]:
    def make(partition: int = 7, hash_key: bytes = HASH_KEY) -> RecordStore:
        return RecordStore(
            db.prefixed_db(b"sm/"), partition, TaggedXorCodec(), blake2b_key_hasher(hash_key)
        )

    return make
