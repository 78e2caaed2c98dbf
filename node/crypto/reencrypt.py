"""Background re-encryption after a data key rotation.

After Keyring.rotate_data(), new values are sealed under the new active key
while old values stay readable under their old keys. ReEncryptor walks the
given key prefixes and re-seals every value that is not under the active
key, `batch_size` values per step(). Each step is ONE LevelDB WriteBatch that
also holds the cursor (where the pass stands, sealed like any value), so a
crash loses at most the step in flight and the next ReEncryptor resumes
exactly there. When a pass completes, retire_old_keys() checks that nothing
under the prefixes still refers to an old key, then destroys the old keys.

Concurrency: LevelDB has no compare-and-set, so a step's read-reseal-write
must not interleave with writes to the same keys, or it could put back an
older value. Run step() on the node's single writer thread, or pass the lock
that every writer holds around its seal-and-write (`lock=`). A value sealed
under an old key but written after the pass went by (a seal made before the
rotation, written late) is caught by retire_old_keys(), which then starts a
new pass instead of retiring.

`prefixes` must cover every value sealed by the codec (records, history,
sessions, Raft log, hard state, ...): a value outside them is neither
re-encrypted nor checked, and retiring its key would lose it. A plain bytes
prefix means the codec saw the full LevelDB key; a store that wrote through
a plyvel prefixed_db is listed as Keyspace(prefix, codec_sees_prefix=False).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import plyvel

from node.crypto import CryptoError, UnknownKeyError
from node.crypto.envelope import EnvelopeCodec, key_id_of

DEFAULT_CURSOR_KEY = b"\x00medkv-meta/crypto/reencrypt-cursor"
_CURSOR_VERSION = 1


class ReEncryptionIncomplete(CryptoError):
    """Values are still under old data keys: the keys cannot be retired yet."""


@dataclass(frozen=True)
class Progress:
    done: int  # values examined in this pass
    total_estimate: int  # values under the prefixes when the pass began (at least `done`)
    finished: bool
    target_key_id: int = 0  # the active key this pass re-seals to
    resealed: int = 0  # values this pass actually re-sealed

    @property
    def percent(self) -> float:
        return 100.0 if self.finished else 100.0 * self.done / max(self.total_estimate, 1)


@dataclass
class _Cursor:
    layout: bytes  # fingerprint of the keyspaces: a changed list restarts the pass
    target: int
    prefix_index: int
    after: bytes | None  # last storage key handled under prefixes[prefix_index]
    done: int
    resealed: int
    total: int
    finished: bool

    def encode(self) -> bytes:
        packed = msgpack.packb(
            [_CURSOR_VERSION, self.layout, self.target, self.prefix_index, self.after,
             self.done, self.resealed, self.total, self.finished],
            use_bin_type=True,
        )
        assert isinstance(packed, bytes)
        return packed

    @classmethod
    def decode(cls, raw: bytes) -> _Cursor:
        try:
            fields: list[Any] = msgpack.unpackb(raw, raw=False)
            version = fields[0]
            if version != _CURSOR_VERSION:
                raise CryptoError(f"the re-encryption cursor has unknown version {version!r}")
            _, layout, target, index, after, done, resealed, total, finished = fields
        except (ValueError, TypeError, IndexError, msgpack.ExtraData) as e:
            raise CryptoError(f"the re-encryption cursor is corrupt ({type(e).__name__})") from None
        return cls(layout, target, index, after, done, resealed, total, bool(finished))

    def progress(self) -> Progress:
        return Progress(self.done, max(self.total, self.done), self.finished, self.target,
                        self.resealed)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


@dataclass(frozen=True)
class Keyspace:
    """A key range to re-encrypt, and how its values were sealed.

    codec_sees_prefix=False: the store that wrote these values used a plyvel
    prefixed_db(prefix), so the storage key bound into each value's associated
    data is the LevelDB key without `prefix`.
    """

    prefix: bytes
    codec_sees_prefix: bool = True

    def codec_key(self, key: bytes) -> bytes:
        return key if self.codec_sees_prefix else key[len(self.prefix) :]


def _disjoint(specs: Sequence[bytes | Keyspace]) -> list[Keyspace]:
    """Keyspaces sorted by prefix, any range covered by a shorter prefix dropped."""
    by_prefix: dict[bytes, Keyspace] = {}
    for spec in specs:
        ks = spec if isinstance(spec, Keyspace) else Keyspace(spec)
        if by_prefix.setdefault(ks.prefix, ks) != ks:
            raise ValueError("one prefix is listed with two different codec key rules")
    kept: list[Keyspace] = []
    for prefix in sorted(by_prefix):
        covering = next((k for k in kept if prefix.startswith(k.prefix)), None)
        if covering is None:
            kept.append(by_prefix[prefix])
        elif covering.codec_key(prefix) != by_prefix[prefix].codec_key(prefix):
            raise ValueError("a nested prefix is listed with a different codec key rule")
    return kept


class ReEncryptor:
    def __init__(
        self,
        db: plyvel.DB,
        codec: EnvelopeCodec,
        prefixes: Sequence[bytes | Keyspace],
        cursor_key: bytes = DEFAULT_CURSOR_KEY,
        batch_size: int = 500,
        *,
        lock: contextlib.AbstractContextManager[Any] | None = None,
        sync: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.db = db
        self.codec = codec
        self.keyspaces = _disjoint(prefixes)
        self._layout = hashlib.blake2b(
            repr([(k.prefix, k.codec_sees_prefix) for k in self.keyspaces]).encode(), digest_size=8
        ).digest()
        self.cursor_key = cursor_key
        self.batch_size = batch_size
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._sync = sync

    # ---- cursor

    def _load(self) -> _Cursor | None:
        sealed = self.db.get(self.cursor_key)
        if sealed is None:
            return None
        try:
            return _Cursor.decode(self.codec.open(self.cursor_key, sealed))
        except UnknownKeyError:
            return None  # under a retired key: only a resumption hint, start over

    def progress(self) -> Progress | None:
        """The stored progress of the current or last pass, or None if none ran."""
        cur = self._load()
        return cur.progress() if cur is not None else None

    def _count(self) -> int:
        n = 0
        for ks in self.keyspaces:
            with self.db.iterator(
                start=ks.prefix, stop=_prefix_end(ks.prefix), include_value=False
            ) as it:
                for k in it:
                    n += k != self.cursor_key
        return n

    def _fresh(self, target: int) -> _Cursor:
        return _Cursor(self._layout, target, 0, None, 0, 0, self._count(), False)

    def begin(self, target_key_id: int) -> Progress:
        """Start a fresh pass toward `target_key_id` (the CLI records its plan before
        adding the key, so a crash in between resumes instead of rotating twice)."""
        cur = self._fresh(target_key_id)
        with self._lock:
            self.db.put(self.cursor_key, self.codec.seal(self.cursor_key, cur.encode()), sync=True)
        return cur.progress()

    # ---- the work

    def step(self) -> Progress:
        """Re-seal up to batch_size values, in one WriteBatch with the cursor."""
        cur = self._load()
        active = self.codec.keyring.active_key_id
        if cur is None or cur.target != active or cur.layout != self._layout:
            cur = self._fresh(active)
        elif cur.finished:
            return cur.progress()
        with self._lock:
            puts: list[tuple[bytes, bytes]] = []
            handled = 0
            while handled < self.batch_size and cur.prefix_index < len(self.keyspaces):
                ks = self.keyspaces[cur.prefix_index]
                exhausted = True
                with self.db.iterator(
                    start=ks.prefix if cur.after is None else cur.after,
                    stop=_prefix_end(ks.prefix),
                    include_start=cur.after is None,
                ) as it:
                    for key, sealed in it:
                        if key == self.cursor_key:
                            continue
                        if key_id_of(sealed) != active:
                            puts.append((key, self.codec.reseal(ks.codec_key(key), sealed)))
                            cur.resealed += 1
                        cur.done += 1
                        cur.after = key
                        handled += 1
                        if handled >= self.batch_size:
                            exhausted = False
                            break
                if exhausted:
                    cur.prefix_index += 1
                    cur.after = None
            cur.finished = cur.prefix_index >= len(self.keyspaces)
            puts.append((self.cursor_key, self.codec.seal(self.cursor_key, cur.encode())))
            # The finishing step is always synced: old keys may be retired next.
            with self.db.write_batch(sync=self._sync or cur.finished) as batch:
                for key, value in puts:
                    batch.put(key, value)
        return cur.progress()

    def run(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        max_steps: int | None = None,
    ) -> Progress:
        """step() until finished (or max_steps), reporting after each step."""
        steps = 0
        while True:
            prog = self.step()
            steps += 1
            if on_progress is not None:
                on_progress(prog)
            if prog.finished or (max_steps is not None and steps >= max_steps):
                return prog

    # ---- retiring old keys

    def referenced_key_ids(self, include_cursor: bool = True, reader: Any = None) -> dict[int, int]:
        """Data key id -> number of values under the prefixes (and the cursor, unless
        include_cursor=False) sealed under it. Reads headers only.

        `reader`: a plyvel snapshot of the database to count in instead of the
        live database, so a running node can count off its event loop while
        writes go on (node.key_rotation)."""
        source = self.db if reader is None else reader
        counts: dict[int, int] = {}
        for ks in self.keyspaces:
            with source.iterator(start=ks.prefix, stop=_prefix_end(ks.prefix)) as it:
                for key, sealed in it:
                    if key == self.cursor_key:
                        continue  # counted below, once, whether or not under a prefix
                    kid = key_id_of(sealed)
                    counts[kid] = counts.get(kid, 0) + 1
        cursor = source.get(self.cursor_key) if include_cursor else None
        if cursor is not None:
            kid = key_id_of(cursor)
            counts[kid] = counts.get(kid, 0) + 1
        return counts

    def retire_old_keys(self) -> list[int]:
        """Destroy every non-active data key, after checking no value refers to it.

        Requires a finished pass toward the active key. If a value under an old key
        is found (written late, behind the pass), a new pass is started and
        ReEncryptionIncomplete is raised: run() again, then retry."""
        keyring = self.codec.keyring
        active = keyring.active_key_id
        cur = self._load()
        if cur is None or not cur.finished or cur.target != active:
            raise ReEncryptionIncomplete(
                f"re-encryption to the active data key {active} has not finished"
            )
        with self._lock:
            stale = {k: n for k, n in self.referenced_key_ids().items() if k != active}
            if stale:
                fresh = self._fresh(active)
                self.db.put(self.cursor_key, self.codec.seal(self.cursor_key, fresh.encode()),
                            sync=True)
                listing = ", ".join(f"key {k}: {n}" for k, n in sorted(stale.items()))
                raise ReEncryptionIncomplete(
                    f"values are still under old data keys ({listing}); a new pass was started"
                )
            return keyring.retire_data_keys(k for k in keyring.data_key_ids if k != active)
