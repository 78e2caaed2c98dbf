"""Which partitions this node holds a replica of, kept on this node's disk.

Until replicas could move, a node recomputed its partitions from the
configured placement at every start. A replica moved here by the control
plane is not in that placement, and one moved away still is: recomputing
would forget the first and resurrect the second (bootstrapped with a voter
set its group no longer has). So the node records what it holds, and opens
exactly that at start:

    HELD      a replica created with the cluster: when its group has no state
              yet it is bootstrapped with the placement's voters (what every
              node did before this record existed);
    BLANK     a replica created by PrepareReplica: never bootstrapped; it
              waits, without membership, for the group's leader to send it a
              snapshot (consensus.raft: a blank replica rejects appends, which
              makes the leader send one);
    DROPPING  the tombstone of DropReplica: its Raft state and data are being
              deleted. A start that finds it finishes the deletion and does
              not open the replica; the entry goes once everything is gone.

A node that has no record yet (a new cluster, or a node from before this
record) writes one from the placement: unchanged clusters behave exactly as
before.

The record is one sealed value in the state key space, under a partition
number no partition has (PARTITIONS_LIMIT), so key re-encryption re-seals it
with the rest (node.storage_layout REENCRYPT_KEYSPACES). It names partition
numbers only: no patient data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

import msgpack

from consensus.storage import ValueCodec
from node.read_snapshots import ReadSnapshotRegistry

# Relative to the state key space (node.storage_layout STATE_PREFIX): the
# 4-byte partition field of a real partition is always below 0xFFFFFFFF.
CATALOG_KEY = b"\xff\xff\xff\xff" + b"node/replicas"
_VERSION = 1
DELETE_BATCH_KEYS = 20_000


class ReplicaState(StrEnum):
    HELD = "held"
    BLANK = "blank"
    DROPPING = "dropping"


class CatalogError(Exception):
    """The stored record does not decode (damage): the node must not guess."""


def encode(entries: Mapping[int, ReplicaState]) -> bytes:
    return msgpack.packb(
        {"v": _VERSION, "replicas": {int(p): str(s) for p, s in sorted(entries.items())}},
        use_bin_type=True,
    )


def decode(raw: bytes) -> dict[int, ReplicaState]:
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if not isinstance(obj, dict) or obj.get("v") != _VERSION:
            raise CatalogError("the replica catalog has an unknown format")
        reps = obj["replicas"]
        if not isinstance(reps, dict):
            raise CatalogError("the replica catalog is malformed")
        return {int(p): ReplicaState(s) for p, s in reps.items()}
    except CatalogError:
        raise
    except Exception as e:
        raise CatalogError(f"the replica catalog does not decode ({type(e).__name__})") from None


class ReplicaCatalog:
    """The record, in memory and (with a database) on disk; every change is a
    synced write before it returns, so what a caller was told survives a crash.

    db: the node's whole database (plyvel.DB), or None to keep nothing on
    disk (unit tests that build a host alone). state_prefix and raft_prefix
    are node.storage_layout's key spaces; the record's value is bound to its
    key without the state prefix, as the state machines' values are."""

    def __init__(
        self,
        db: Any | None = None,
        codec: ValueCodec | None = None,
        state_prefix: bytes = b"s",
        raft_prefix: bytes = b"r",
        read_snapshots: ReadSnapshotRegistry | None = None,
    ) -> None:
        self._db = db
        # The node's open LevelDB read snapshots: one keeps deleted versions
        # in the files, so a drop ends them before it compacts.
        self.read_snapshots = read_snapshots if read_snapshots is not None else ReadSnapshotRegistry()
        self._codec = codec
        self.state_prefix = state_prefix
        self.raft_prefix = raft_prefix
        self._entries: dict[int, ReplicaState] | None = None
        if db is not None:
            sealed = db.get(state_prefix + CATALOG_KEY)
            if sealed is not None:
                assert codec is not None
                self._entries = decode(codec.open(CATALOG_KEY, sealed))

    @property
    def exists(self) -> bool:
        """Whether a record was ever written (else: seed it from the placement)."""
        return self._entries is not None

    def entries(self) -> dict[int, ReplicaState]:
        return dict(self._entries or {})

    def state(self, partition: int) -> ReplicaState | None:
        return (self._entries or {}).get(partition)

    def seed(self, partitions: Iterable[int]) -> None:
        """The first record: the placement's partitions, as HELD."""
        self._write({p: ReplicaState.HELD for p in partitions})

    def set(self, partition: int, state: ReplicaState) -> None:
        new = self.entries()
        new[partition] = state
        self._write(new)

    def remove(self, partition: int) -> None:
        new = self.entries()
        new.pop(partition, None)
        self._write(new)

    def _write(self, entries: dict[int, ReplicaState]) -> None:
        if self._db is not None:
            assert self._codec is not None
            raw = self._codec.seal(CATALOG_KEY, encode(entries))
            self._db.put(self.state_prefix + CATALOG_KEY, raw, sync=True)
        self._entries = entries

    # ---- a dropped replica's data ----------------------------------------

    def partition_ranges(self, partition: int) -> list[tuple[bytes, bytes]]:
        """[start, stop) of every key of the partition: its state machine's
        (records, history, sessions, meta, obligations, snapshot staging)
        and its Raft group's (log, hard state, snapshot metadata)."""
        if not 0 <= partition < 0xFFFFFFFF:
            raise ValueError("partition out of range")
        return [
            (self.state_prefix + partition.to_bytes(4, "big"),
             self.state_prefix + (partition + 1).to_bytes(4, "big")),
            (self.raft_prefix + partition.to_bytes(8, "big"),
             self.raft_prefix + (partition + 1).to_bytes(8, "big")),
        ]

    def delete_some(self, partition: int, limit: int = DELETE_BATCH_KEYS) -> int:
        """Delete up to `limit` keys of the partition in one synced batch;
        how many were deleted (0: nothing of it is left)."""
        if self._db is None:
            return 0
        keys: list[bytes] = []
        for start, stop in self.partition_ranges(partition):
            with self._db.iterator(start=start, stop=stop, include_value=False) as it:
                for k in it:
                    keys.append(k)
                    if len(keys) >= limit:
                        break
            if len(keys) >= limit:
                break
        if keys:
            with self._db.write_batch(sync=True) as wb:
                for k in keys:
                    wb.delete(k)
        return len(keys)

    def is_empty(self, partition: int) -> bool:
        if self._db is None:
            return True
        for start, stop in self.partition_ranges(partition):
            with self._db.iterator(start=start, stop=stop, include_value=False) as it:
                if next(it, None) is not None:
                    return False
        return True

    def compact(self, partition: int) -> None:
        """Have LevelDB rewrite the files holding the partition's ranges, so
        the deleted values (patient data among them) leave the disk: what an
        erasure obligation of the partition asks, for all of its data.
        The same two-pass marker trick as StorageLayout.compact_slice."""
        if self._db is None:
            return
        for start, stop in self.partition_ranges(partition):
            self._db.compact_range(start=start, stop=stop)
            with self._db.write_batch() as wb:
                for key in (start, stop):
                    wb.put(key, b"")
                    wb.delete(key)
            self._db.compact_range(start=start, stop=stop)


__all__ = ["CATALOG_KEY", "CatalogError", "ReplicaCatalog", "ReplicaState", "decode", "encode"]
