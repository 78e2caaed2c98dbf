"""Silent disk corruption: flip a bit inside stored record values of a stopped node.

medkv seals every stored value with AES-256-GCM, bound to its storage key,
so a flipped bit must surface as DATA_LOSS on that replica (which then stops
serving the partition; its other replicas carry on), never as wrong data.

What this module relies on, and checks before touching anything (from the
documented storage layout, node/storage_layout.py and node/record_store.py,
read as files on disk, never imported):

- DATA_DIR/db is a LevelDB; state-machine keys start with b"s", then the
  partition (4 bytes, big-endian), then a kind byte; b"c" marks a record's
  current version, and such a key is 1 + 4 + 1 + 16 + 16 = 38 bytes long;
- a sealed value is 0xE1, a 4-byte data key id, a 12-byte nonce, then the
  ciphertext and its tag: bytes from offset 17 on are ciphertext, and any
  change there fails authentication.

The node must be stopped: LevelDB allows one process at a time.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import plyvel

from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc

STATE_PREFIX = b"s"
CURRENT_KIND = b"c"
CURRENT_KEY_LEN = 1 + 4 + 1 + 32
SEALED_FORMAT = 0xE1
CIPHERTEXT_OFFSET = 17


class BitflipError(Exception):
    """The data directory does not look like what this module knows how to damage."""


@dataclass(frozen=True)
class Flip:
    """One damaged value (no key bytes: they are keyed hashes, but still private)."""

    node: int
    partition: int
    value_offset: int
    bit: int
    value_len: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def current_prefix(partition: int) -> bytes:
    return STATE_PREFIX + partition.to_bytes(4, "big") + CURRENT_KIND


def partitions_with_records(db_path: Path) -> dict[int, int]:
    """Partition -> number of current records stored in the (closed) LevelDB at db_path."""
    counts: dict[int, int] = {}
    db = plyvel.DB(str(db_path), create_if_missing=False)
    try:
        with db.iterator(prefix=STATE_PREFIX, include_value=False) as it:
            for key in it:
                if len(key) == CURRENT_KEY_LEN and key[5:6] == CURRENT_KIND:
                    p = int.from_bytes(key[1:5], "big")
                    counts[p] = counts.get(p, 0) + 1
    finally:
        db.close()
    return counts


def flip_record_values(
    db_path: Path, node: int, partition: int, rng: random.Random, count: int = 1
) -> list[Flip]:
    """Flip one bit in the ciphertext of `count` current-record values of `partition`."""
    db = plyvel.DB(str(db_path), create_if_missing=False)
    flips: list[Flip] = []
    try:
        keys = [
            k
            for k in db.iterator(prefix=current_prefix(partition), include_value=False)
            if len(k) == CURRENT_KEY_LEN
        ]
        if not keys:
            raise BitflipError(f"node {node} stores no record of partition {partition}")
        for key in rng.sample(keys, min(count, len(keys))):
            value = db.get(key)
            if value is None or len(value) <= CIPHERTEXT_OFFSET or value[0] != SEALED_FORMAT:
                raise BitflipError("a stored value is not in the sealed format this module knows")
            offset = rng.randrange(CIPHERTEXT_OFFSET, len(value))
            bit = rng.randrange(8)
            damaged = bytearray(value)
            damaged[offset] ^= 1 << bit
            db.put(key, bytes(damaged), sync=True)
            flips.append(Flip(node, partition, offset, bit, len(value)))
    finally:
        db.close()
    return flips


@dataclass
class ProbeResult:
    """What the damaged replica answered when asked for the partition's records."""

    data_loss: int = 0
    served: int = 0
    other_errors: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


async def probe_replica(
    address: str,
    records: list[tuple[str, str]],
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> ProbeResult:
    """Follower-read every given record from the node at `address` (direct, no routing).

    A replica that met the flipped value answers DATA_LOSS for its partition
    from then on; one that has not read it yet meets it on this probe.
    """
    result = ProbeResult()
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        stub: Any = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        options = common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER)
        for patient, record in records:
            request = kv_pb2.GetRequest(patient_id=patient, record_id=record, read=options)
            try:
                await stub.Get(request, timeout=timeout)
                result.served += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DATA_LOSS:
                    result.data_loss += 1
                elif exc.code() == grpc.StatusCode.NOT_FOUND:
                    result.served += 1
                else:
                    result.other_errors += 1
    return result


__all__ = [
    "BitflipError",
    "Flip",
    "ProbeResult",
    "flip_record_values",
    "partitions_with_records",
    "probe_replica",
]
