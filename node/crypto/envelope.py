"""EnvelopeCodec: the ValueCodec that seals every LevelDB value of the node.

Sealed value layout (33 bytes of overhead):

    0xE1 | data key id (4 bytes, big-endian) | nonce (12) | AES-256-GCM ciphertext + tag (16)

Associated data = format byte + data key id (the 5-byte header) + the LevelDB
storage key. The header is fixed-length, so this encoding is unambiguous (it
is the brief's "format byte + storage key + key id" with the fixed-length
fields first). A value copied under another storage key, altered anywhere,
truncated, or relabelled with another key id fails to open with
IntegrityError; it can never read as another record.

Nonce scheme: counter-based, never random per value. Each (process, data
key) pair draws a random 64-bit prefix once and then counts: nonce = prefix
|| 32-bit counter. Why:
  * Within a process, uniqueness is certain, not probable: the counter never
    repeats, and when it would wrap (2^32 seals) a fresh prefix is drawn.
  * Across processes and restarts, two nonces can only collide if two
    prefixes do. With P prefixes ever drawn under one key that chance is about
    P^2 / 2^65: below 2^-32 until roughly 90,000 process lifetimes per data
    key. Random 96-bit nonces, by contrast, reach that 2^-32 risk after 2^32
    seals in total (NIST SP 800-38D): about five days of a node writing
    10,000 values/s, which would force data key rotation on a timer and need a
    durable usage count to enforce it. The counter scheme has no such cap.
  * A forked child would inherit the counter: a fork hook makes every
    sequence draw a new prefix in the child.
The nonce is stored in the value, so readers do not depend on the scheme.

PlaintextCodec is the benchmark's baseline only: identity, no protection. It
cannot be built without `benchmark_only=True` and no configuration names it.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import weakref

from cryptography.exceptions import InvalidTag

from node.crypto import IntegrityError
from node.crypto.keyring import Keyring

FORMAT_V1 = 0xE1
_HEADER = struct.Struct(">BI")
HEADER_BYTES = _HEADER.size  # format byte + key id
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_PREFIX_BYTES = 8
_NONCE = struct.Struct(">8sI")  # prefix || 32-bit counter
_COUNTER_LIMIT = 1 << 32
_LIVE_SEQUENCES: weakref.WeakSet[NonceSequence] = weakref.WeakSet()


def _renew_all_after_fork() -> None:
    for seq in list(_LIVE_SEQUENCES):
        seq._after_fork_in_child()


os.register_at_fork(after_in_child=_renew_all_after_fork)


class NonceSequence:
    """Unique 96-bit nonces for one data key in one process: prefix || counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._renew()
        _LIVE_SEQUENCES.add(self)

    def _renew(self) -> None:
        self._prefix = os.urandom(_PREFIX_BYTES)
        self._count = itertools.count()

    def _after_fork_in_child(self) -> None:
        # A fresh lock too: another thread of the parent may have held it at fork.
        self._lock = threading.Lock()
        self._renew()

    def next(self) -> bytes:
        with self._lock:
            counter = next(self._count)
            if counter >= _COUNTER_LIMIT:
                self._renew()
                counter = next(self._count)
            return _NONCE.pack(self._prefix, counter)


def key_id_of(sealed: bytes) -> int:
    """The data key id a sealed value is under (header only, no decryption).

    Raises IntegrityError if the value is too short or not in this format."""
    if len(sealed) < OVERHEAD:
        raise IntegrityError(
            f"sealed value is {len(sealed)} bytes, shorter than the {OVERHEAD}-byte minimum "
            "(truncated)"
        )
    fmt, key_id = _HEADER.unpack_from(sealed)
    if fmt != FORMAT_V1:
        raise IntegrityError(
            f"sealed value has format byte 0x{fmt:02x}, not 0x{FORMAT_V1:02x} "
            "(not sealed by EnvelopeCodec, or corrupt)"
        )
    return int(key_id)


class EnvelopeCodec:
    """AES-256-GCM under the keyring's active data key; implements ValueCodec.

    Thread-safe. Picks up a rotate_data() at the next seal; opens values under
    any data key still in the keyring. Use one instance per process (for the
    log store and the record store alike): each instance draws its own nonce
    prefix per key, and fewer prefixes keep the collision bound further off.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._nonces: dict[int, NonceSequence] = {}

    def _new_sequence(self, key_id: int) -> NonceSequence:
        # setdefault: two threads racing here end up sharing one sequence.
        return self._nonces.setdefault(key_id, NonceSequence())

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        key_id, aead = self.keyring.active()
        header = _HEADER.pack(FORMAT_V1, key_id)
        nonce = (self._nonces.get(key_id) or self._new_sequence(key_id)).next()
        return header + nonce + aead.encrypt(nonce, plaintext, header + key)

    def open(self, key: bytes, sealed: bytes) -> bytes:
        key_id = key_id_of(sealed)
        aead = self.keyring.aead(key_id)  # UnknownKeyError (an IntegrityError) if retired
        nonce = sealed[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, sealed[HEADER_BYTES + NONCE_BYTES :],
                                sealed[:HEADER_BYTES] + key)
        except InvalidTag:
            raise IntegrityError(
                f"authentication failed for a value under data key id {key_id} "
                f"({len(sealed)} bytes): it was altered, truncated, moved from another "
                "storage key, or sealed by another keyring"
            ) from None

    def is_current(self, sealed: bytes) -> bool:
        """Whether `sealed` is under the active data key (header only)."""
        return key_id_of(sealed) == self.keyring.active_key_id

    def reseal(self, key: bytes, sealed: bytes) -> bytes:
        """Open and seal again under the active data key."""
        return self.seal(key, self.open(key, sealed))


class PlaintextCodec:
    """Identity codec: the benchmark's unencrypted baseline. Never for real data."""

    def __init__(self, *, benchmark_only: bool = False) -> None:
        if not benchmark_only:
            raise ValueError("PlaintextCodec stores plaintext; it exists only for benchmarks")

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, key: bytes, sealed: bytes) -> bytes:
        return sealed
