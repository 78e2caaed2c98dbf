"""Per-patient data keys: crypto-shredding for the right to be forgotten.

Goal: once a patient is erased, no byte of that patient's records can be
decrypted from anything left on disk, even by someone holding the master key.

Mechanism. Each patient gets a random 256-bit key (DEK) with a random 16-byte
key id (random, so it reveals nothing about the patient). The patient's
record values, their history, and the patient-bearing fields of Raft log
commands are sealed under that DEK (seal_for_patient, AES-256-GCM, associated
data = format byte + patient key id + the caller's `aad`, which names the
purpose and binds the value to its place, e.g. b"record" + storage key, or
b"raft-cmd" + partition). All of this then also passes through the node's
EnvelopeCodec at rest. Erasing the patient destroys the DEK everywhere; the
ciphertexts may linger (old SST files, log entries, backups) but are noise.

Where a DEK lives, and therefore what erasure must reach:
  1. The patient-keys keyspace of every replica (the raw DEK as a LevelDB
     value, sealed at rest by EnvelopeCodec under the node's data key).
  2. The Raft log entry that created it, on every replica: the leader
     proposes wrap_for_log(dek) (wrapped under the cluster master key, which
     every node holds) and each replica's apply step unwraps it into (1).
  3. Snapshots of the partition that include (1): the ones stored on a node
     and any being sent to a follower (send them as wrap_for_log blobs).
  4. Memory: any DEK or AESGCM cache in a node process.
  5. Physically deleted but not yet dropped LevelDB data: a delete only adds
     a tombstone; the old value stays in SST and WAL files until compaction.

What the node must do on erasure, for the argument to hold (the erasure is
complete only when every step is done on every replica):
  a. Apply an "erase patient" Raft command that deletes the DEK from the
     patient-keys keyspace (and the patient's records and history) and drops
     it from every in-memory cache.
  b. Take a snapshot at or past the erase index and compact the Raft log past
     it, so the entry carrying wrap_for_log(dek) is deleted; delete every
     older snapshot. A replica that was down catches up through (a) or a
     snapshot taken after the erase, and must do (b) and (c) as well.
  c. Call compact_ranges(db, ...) over the patient-keys range and the Raft
     log range of the partition, so LevelDB rewrites those SST files without
     the deleted values and deletes the obsolete SST and WAL files. Bounds
     must be explicit: db.compact_range() with stop omitted compacted
     nothing once the data sat in LevelDB's bottom level (measured with
     plyvel 1.5.1 on LevelDB 1.22).
  d. Report erasure complete only after (a)-(c) on all replicas (a replica
     that never reports keeps the DEK: decommissioned disks must be wiped).
After (a)-(d), the only remaining inputs are the master key, the keyring
(node data keys and old masters kept) and the remaining LevelDB contents;
none of them holds the DEK, and without the DEK the patient ciphertexts are
AES-GCM under an unknown random 256-bit key.

Outside this argument, stated plainly: backups taken before the erasure still
hold the DEK (wrapped, under keys the operator holds), so backup retention
bounds how long erasure takes to reach them; and freed disk blocks of deleted
files may still hold envelope-sealed copies until overwritten. Closing that
last gap needs rotate-data with re-encryption and retirement of the old data
key after erasure (and a master rotation with forget_old_masters() to
also void old keyring blocks), or full-disk encryption underneath.

Nonces here are random 96-bit: one DEK seals one patient's values, far below
the 2^32 seals per key at which random nonces would become a concern.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.crypto import IntegrityError, UnknownKeyError
from node.crypto.keyfile import KEY_BYTES, KEY_ID_BYTES, MasterKey
from node.crypto.keyring import Keyring

PATIENT_KEY_ID_BYTES = 16
SEALED_FORMAT = 0xA1
LOG_WRAP_FORMAT = 0xB1
_NONCE_BYTES = 12
_TAG_BYTES = 16
SEALED_OVERHEAD = 1 + _NONCE_BYTES + _TAG_BYTES
LOG_WRAP_BYTES = 1 + KEY_ID_BYTES + _NONCE_BYTES + KEY_BYTES + _TAG_BYTES
_LOG_WRAP_PURPOSE = b"medkv/v1 patient key log wrap"


def _check_key(dek: bytes, key_id: bytes) -> None:
    if len(dek) != KEY_BYTES:
        raise ValueError(f"a patient key must be {KEY_BYTES} bytes, not {len(dek)}")
    if len(key_id) != PATIENT_KEY_ID_BYTES:
        raise ValueError(f"a patient key id must be {PATIENT_KEY_ID_BYTES} bytes, not {len(key_id)}")


class PatientKeyCodec:
    """Per-patient sealing, and DEK wrapping under the cluster master for the Raft log.

    `current` wraps new DEKs; `known` (by master key id) unwraps, so log entries
    written before a master rotation, or by a node already rotated, still apply.
    """

    def __init__(self, current: MasterKey, known: Mapping[str, MasterKey] | None = None) -> None:
        masters = dict(known or {})
        masters[current.key_id] = current
        self._current_id = current.key_id_bytes
        self._wrappers = {
            bytes.fromhex(mid): AESGCM(m.derive(_LOG_WRAP_PURPOSE)) for mid, m in masters.items()
        }

    @classmethod
    def from_keyring(cls, keyring: Keyring) -> PatientKeyCodec:
        return cls(keyring.master, keyring.known_masters())

    @staticmethod
    def new_patient_key() -> tuple[bytes, bytes]:
        """(key_id, dek): a random 16-byte id and a random 256-bit key."""
        return os.urandom(PATIENT_KEY_ID_BYTES), os.urandom(KEY_BYTES)

    @staticmethod
    def seal_for_patient(dek: bytes, key_id: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """0xA1 | nonce (12) | ciphertext + tag; AD = 0xA1 + key_id + aad."""
        _check_key(dek, key_id)
        header = bytes([SEALED_FORMAT])
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + AESGCM(dek).encrypt(nonce, plaintext, header + key_id + aad)

    @staticmethod
    def open_for_patient(dek: bytes, key_id: bytes, aad: bytes, sealed: bytes) -> bytes:
        _check_key(dek, key_id)
        if len(sealed) < SEALED_OVERHEAD:
            raise IntegrityError(
                f"patient-sealed value is {len(sealed)} bytes, shorter than the "
                f"{SEALED_OVERHEAD}-byte minimum (truncated)"
            )
        if sealed[0] != SEALED_FORMAT:
            raise IntegrityError(
                f"patient-sealed value has format byte 0x{sealed[0]:02x}, not 0x{SEALED_FORMAT:02x}"
            )
        try:
            return AESGCM(dek).decrypt(
                sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :], sealed[:1] + key_id + aad
            )
        except InvalidTag:
            raise IntegrityError(
                f"authentication failed for a patient-sealed value ({len(sealed)} bytes): "
                "altered, moved to another place or purpose, or under another patient key"
            ) from None

    def wrap_for_log(self, dek: bytes, key_id: bytes) -> bytes:
        """The DEK wrapped under the current master, for the Raft command that
        creates the patient key: 0xB1 | master key id (8) | nonce | ciphertext + tag,
        AD = 0xB1 + master key id + patient key id."""
        _check_key(dek, key_id)
        header = bytes([LOG_WRAP_FORMAT]) + self._current_id
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._wrappers[self._current_id].encrypt(nonce, dek, header + key_id)

    def unwrap_from_log(self, key_id: bytes, wrapped: bytes) -> bytes:
        """The DEK from a wrap_for_log blob, under whichever known master wrapped it."""
        if len(key_id) != PATIENT_KEY_ID_BYTES:
            raise ValueError(f"a patient key id must be {PATIENT_KEY_ID_BYTES} bytes")
        if len(wrapped) != LOG_WRAP_BYTES or wrapped[0] != LOG_WRAP_FORMAT:
            raise IntegrityError(
                f"wrapped patient key is malformed ({len(wrapped)} bytes, "
                f"expected {LOG_WRAP_BYTES} starting with 0x{LOG_WRAP_FORMAT:02x})"
            )
        header = wrapped[: 1 + KEY_ID_BYTES]
        master_id = header[1:]
        wrapper = self._wrappers.get(master_id)
        if wrapper is None:
            raise UnknownKeyError(
                f"patient key is wrapped by master key id {master_id.hex()}, which this node "
                "does not hold (stage the cluster's new master in KEY_FILE.next)"
            )
        body = wrapped[len(header) :]
        try:
            return wrapper.decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], header + key_id)
        except InvalidTag:
            raise IntegrityError(
                f"authentication failed for a patient key wrapped by master key id "
                f"{master_id.hex()}: altered, or not the key id it was wrapped for"
            ) from None


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """[start, stop] bounds covering every key that starts with `prefix` (non-empty,
    not all 0xff bytes)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        raise ValueError("a prefix range needs a prefix with a byte below 0xff")
    return prefix, trimmed[:-1] + bytes([trimmed[-1] + 1])


def compact_ranges(db: Any, ranges: Iterable[tuple[bytes, bytes]]) -> None:
    """Make LevelDB physically drop deleted values in each [start, stop] range
    (erasure step c). `db` is a plyvel.DB. Blocking; run it off the event loop."""
    for start, stop in ranges:
        if not stop:
            raise ValueError("compact_ranges needs an explicit, non-empty stop key")
        db.compact_range(start=start, stop=stop)
