"""The per-node record of held replicas (node.replica_catalog): its format, its
persistence, and the key ranges a dropped replica's deletion covers."""

from __future__ import annotations

from pathlib import Path

import plyvel
import pytest

from consensus.storage import IdentityCodec
from node.replica_catalog import (
    CATALOG_KEY,
    CatalogError,
    ReplicaCatalog,
    ReplicaState,
    decode,
    encode,
)


class XorCodec(IdentityCodec):
    """Seals by flipping bits and binding the key: a value read raw is not the record."""

    def seal(self, key: bytes, value: bytes) -> bytes:
        return key[:2] + bytes(b ^ 0x5A for b in value)

    def open(self, key: bytes, value: bytes) -> bytes:
        assert value[:2] == key[:2], "sealed under another key"
        return bytes(b ^ 0x5A for b in value[2:])


def test_the_record_round_trips_and_refuses_garbage() -> None:
    entries = {0: ReplicaState.HELD, 7: ReplicaState.BLANK, 3: ReplicaState.DROPPING}
    assert decode(encode(entries)) == entries
    for bad in (b"", b"\x00\x01", encode({1: ReplicaState.HELD})[:-1]):
        with pytest.raises(CatalogError):
            decode(bad)


def test_the_record_survives_a_reopen_sealed_under_its_key(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        cat = ReplicaCatalog(db, XorCodec())
        assert not cat.exists
        cat.seed([0, 2])
        cat.set(5, ReplicaState.BLANK)
        cat.set(2, ReplicaState.DROPPING)
        cat.remove(0)
        raw = db.get(b"s" + CATALOG_KEY)
        assert raw is not None and b"blank" not in raw  # stored sealed
        again = ReplicaCatalog(db, XorCodec())
        assert again.exists
        assert again.entries() == {5: ReplicaState.BLANK, 2: ReplicaState.DROPPING}
    finally:
        db.close()


def test_memory_only_catalog_keeps_nothing_on_disk() -> None:
    cat = ReplicaCatalog()
    cat.seed([1])
    assert cat.state(1) == ReplicaState.HELD
    assert cat.delete_some(1) == 0 and cat.is_empty(1)


def test_deleting_a_partition_touches_its_keys_only(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        cat = ReplicaCatalog(db, IdentityCodec())
        cat.seed([1, 2, 3])

        def keys(p: int) -> list[bytes]:
            state = b"s" + p.to_bytes(4, "big")
            raft = b"r" + p.to_bytes(8, "big")
            return [state + b"c" + bytes(32), state + b"m" + b"applied", state + b"e" + bytes(9),
                    state + b"t" + b"m", raft + b"e" + (5).to_bytes(8, "big"),
                    raft + b"h" + bytes(8)]

        for p in (1, 2, 3):
            for k in keys(p):
                db.put(k, b"x")
        assert not cat.is_empty(2)
        assert cat.delete_some(2, limit=4) == 4  # in batches
        assert cat.delete_some(2) == 2
        assert cat.delete_some(2) == 0 and cat.is_empty(2)
        cat.compact(2)
        for p in (1, 3):
            assert all(db.get(k) == b"x" for k in keys(p))
        assert cat.entries() == {p: ReplicaState.HELD for p in (1, 2, 3)}  # the record stays
        for start, stop in cat.partition_ranges(2):
            assert all(not start <= k < stop for p in (1, 3) for k in keys(p))
    finally:
        db.close()
