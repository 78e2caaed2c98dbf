"""The log storage interface a Raft group reads its stable state through.

As in etcd-io/raft's storage.go, Raft only *reads* stable storage through
`Storage`; the application writes what a Ready tells it to persist, through
the write side of its concrete implementation, and only then calls advance().

Persistence contract (what must be durable, and when):
  * Before any message of a Ready is sent, that Ready's hard_state, entries and
    snapshot are durable (one synced write). This covers the two classic
    rules: a vote is granted (VOTE_RESP sent) only after the vote and term are
    on disk, and an append is acknowledged (APP_RESP sent) only after its
    entries are on disk.
  * Committed entries may be applied only after they are durable locally.
  * A restart reads HardState, ConfState, the snapshot and the log back and
    resumes from them (with the conf changes between the snapshot and the
    application's applied index replayed from the log); anything not yet durable is treated as never having
    happened, which the rules above make safe.

Two implementations: MemoryStorage (memory_storage.py) and, for many groups
in one LevelDB with group commit, leveldb_storage.py.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Protocol, runtime_checkable

from consensus.types import ConfState, Entry, HardState, Snapshot

NO_LIMIT = 1 << 62  # max_size meaning "no size limit"


@runtime_checkable
class Storage(Protocol):
    """Read side of a group's stable storage.

    Indexes: the log holds entries first_index()..last_index() inclusive.
    first_index() - 1 is the index of the last snapshot (or of the dummy entry
    of an empty log, 0); term() of that index is still answerable.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the membership as of the last
        snapshot/bootstrap, i.e. as of snapshot().meta.index (Raft replays the
        conf changes after it up to Config.applied on a restart)."""
        ...

    def entries(self, lo: int, hi: int, max_size: int = NO_LIMIT) -> list[Entry]:
        """Entries [lo, hi). Returns at least one entry if lo < hi, stopping
        once the total size of data would exceed max_size.

        Raises CompactedError if lo < first_index(), UnavailableError if
        hi > last_index() + 1."""
        ...

    def term(self, index: int) -> int:
        """The term of the entry at index, for first_index()-1 <= index <= last_index().

        Raises CompactedError below that range, UnavailableError above it."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot. May raise SnapshotTemporarilyUnavailable."""
        ...


class ValueCodec(Protocol):
    """Turns a stored value into the bytes on disk and back.

    The node plugs authenticated encryption in here (associated data binds the
    ciphertext to its storage key); consensus only ever sees plaintext.
    """

    def seal(self, key: bytes, plaintext: bytes) -> bytes: ...

    def open(self, key: bytes, sealed: bytes) -> bytes: ...


class IdentityCodec:
    """Stores values as they are. For tests and the in-memory benchmark only."""

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, key: bytes, sealed: bytes) -> bytes:
        return sealed


_data_of = attrgetter("data")


def payload_size(ents: list[Entry]) -> int:
    """Total bytes of the entries' data: the unit of every size limit here."""
    return sum(map(len, map(_data_of, ents)))


def limit_size(ents: list[Entry], max_size: int) -> list[Entry]:
    """The longest prefix of ents whose data fits in max_size, but at least
    one entry (so a single oversized entry still makes progress)."""
    return limit_size_total(ents, max_size)[0]


def limit_size_total(ents: list[Entry], max_size: int) -> tuple[list[Entry], int]:
    """limit_size, and the payload size of what it returns (one pass when
    everything fits, the common case)."""
    total = payload_size(ents)
    if total <= max_size or len(ents) <= 1:
        return ents, total
    size = 0
    for i, e in enumerate(ents):
        n = len(e.data)
        if size + n > max_size:
            if i == 0:
                return ents[:1], n
            return ents[:i], size
        size += n
    return ents, size
