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
from collections.abc import Iterator
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.crypto import IntegrityError
from node.crypto.keyring import Keyring

FORMAT_V1 = 0xE1
_HEADER = struct.Struct(">BI")
HEADER_BYTES = _HEADER.size  # format byte + key id
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_BODY = HEADER_BYTES + NONCE_BYTES  # where the ciphertext starts
_PREFIX_BYTES = 8
_COUNTER_LIMIT = 1 << 32
_LIVE_SEQUENCES: weakref.WeakSet[NonceSequence] = weakref.WeakSet()


def _renew_all_after_fork() -> None:
    for seq in list(_LIVE_SEQUENCES):
        seq._after_fork_in_child()


os.register_at_fork(after_in_child=_renew_all_after_fork)


class NonceSequence:
    """Unique 96-bit nonces for one data key in one process: prefix || counter.

    Lock-free on the hot path (it runs on every seal, from the event loop
    and the writer thread at once): the prefix and its counter live in ONE
    tuple attribute, read once per call, and `next()` on an itertools.count
    is atomic under the GIL. So two threads can never pair a prefix with a
    counter value drawn for another prefix. Only the renewal at 2^32 takes
    the lock, and it replaces the tuple only if nobody replaced it first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: tuple[int, Iterator[int]] = self._fresh()
        _LIVE_SEQUENCES.add(self)

    @staticmethod
    def _fresh() -> tuple[int, Iterator[int]]:
        # The prefix as an integer already shifted past the counter: a nonce is
        # then one addition and one to_bytes, no concatenation.
        return int.from_bytes(os.urandom(_PREFIX_BYTES), "big") << 32, itertools.count()

    def _after_fork_in_child(self) -> None:
        # A fresh lock too: another thread of the parent may have held it at fork.
        self._lock = threading.Lock()
        self._state = self._fresh()

    def next(self) -> bytes:
        state = self._state
        counter = next(state[1])
        if counter < _COUNTER_LIMIT:
            return (state[0] + counter).to_bytes(NONCE_BYTES, "big")
        with self._lock:
            if self._state is state:  # the first thread past the limit renews
                self._state = self._fresh()
        return self.next()


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


class _Active(NamedTuple):
    """The active data key as the seal hot path needs it, built once per keyring state."""

    state: object  # the keyring's immutable state this was built from
    header: bytes  # format byte + key id: the sealed value's first 5 bytes
    aead: AESGCM
    nonces: NonceSequence


_NO_STATE = object()


class EnvelopeCodec:
    """AES-256-GCM under the keyring's active data key; implements ValueCodec.

    Thread-safe without locks: the node calls it from the event loop (state
    machine writes, reads) and from its writer thread (Raft log) at once.
    The keyring swaps in a new immutable state on every change; seal() reads
    it once and rebuilds its cached view of the active key only when the
    state object changed (rotate_data, rotate_master, retire). Nonce
    sequences are kept per key id and only ever added (dict.setdefault is
    atomic under the GIL, so two threads racing on a new key share one).
    Picks up a rotate_data() at the next seal; opens values under any data
    key still in the keyring. Use one instance per process (for the log store
    and the record store alike): each instance draws its own nonce prefix per
    key, and fewer prefixes keep the collision bound further off.

    The hot path costs about one AESGCM call plus a few hundred nanoseconds
    (scripts/bench-encryption.py); that is why it reads the keyring's state
    directly instead of through its accessors.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._nonces: dict[int, NonceSequence] = {}
        self._active = _Active(_NO_STATE, b"", AESGCM(bytes(32)), NonceSequence())

    def _activate(self) -> _Active:
        state = self.keyring._state  # one read: id and key always match
        key_id = state.active_id
        nonces = self._nonces.get(key_id)
        if nonces is None:
            nonces = self._nonces.setdefault(key_id, NonceSequence())
        active = _Active(state, _HEADER.pack(FORMAT_V1, key_id), state.keys[key_id].aead, nonces)
        self._active = active
        return active

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        active = self._active
        if active.state is not self.keyring._state:
            active = self._activate()
        nonce = active.nonces.next()
        header = active.header
        return header + nonce + active.aead.encrypt(nonce, plaintext, header + key)

    def open(self, key: bytes, sealed: bytes) -> bytes:
        if len(sealed) < OVERHEAD or sealed[0] != FORMAT_V1:
            key_id_of(sealed)  # raises the precise IntegrityError
        key_id = int.from_bytes(sealed[1:HEADER_BYTES], "big")
        data_key = self.keyring._state.keys.get(key_id)
        # keyring.aead raises UnknownKeyError (an IntegrityError) for a retired key.
        aead = data_key.aead if data_key is not None else self.keyring.aead(key_id)
        try:
            return aead.decrypt(sealed[HEADER_BYTES:_BODY], sealed[_BODY:],
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
