"""Client sessions: at-most-once application of retried writes (Raft thesis 6.3).

Per client_id the table keeps the result of every seq the client has not yet
acknowledged. A retry of (client_id, seq) gets the first result back instead
of a second application. `ack_below` (the client holds the replies of every
seq below it) lets the table forget results, so one client may keep many
writes in flight while its session stays small.

Everything here is a pure function of the applied log, so every replica holds
the same table and makes the same decisions:
  * time is the proposing leader's `ts_ms` carried in each command, taken as a
    running maximum (the clock never goes back when leadership moves to a node
    whose clock is behind); never this process's clock;
  * recency is the Raft index of a session's last use, so "least recently
    used" is a total order that every replica agrees on.

Sessions are created implicitly by a client's first write. A request with no
session whose ack_below > 1 proves the client had replies before: its session
expired or was evicted, and it gets SESSION_EXPIRED (the client must start
over with a new client_id) rather than a chance to apply a write twice.
Limitation: a client still retrying its very first writes (ack_below <= 1)
after its session expired cannot be told apart from a new client; clients must
stop retrying a write after the session TTL.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

_FORMAT = 0x01


class SessionFormatError(ValueError):
    """A stored or snapshotted session blob that does not decode."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """The outcome of one applied write, as returned to every retry of it."""

    version: int
    error_code: str | None
    message: str


@dataclass(slots=True)
class ClientSession:
    last_index: int  # Raft index of the last use: the LRU order
    last_active_ms: int  # session clock at the last use
    floor: int  # results of seqs below this are forgotten
    results: dict[int, StoredResult] = field(default_factory=dict)


class Outcome(enum.Enum):
    NEW = "new"  # not seen: apply it, then record()
    DUPLICATE = "duplicate"  # seen: return the stored result, apply nothing
    EXPIRED = "expired"  # cannot tell whether it was applied: refuse


def encode_session(s: ClientSession) -> bytes:
    results = [[seq, r.version, r.error_code, r.message] for seq, r in sorted(s.results.items())]
    body: bytes = msgpack.packb(
        [s.last_index, s.last_active_ms, s.floor, results], use_bin_type=True
    )
    return bytes([_FORMAT]) + body


def _uint(v: object) -> bool:
    return type(v) is int and v >= 0


def decode_session(blob: bytes) -> ClientSession:
    if not blob or blob[0] != _FORMAT:
        raise SessionFormatError("session has an unknown format")
    try:
        fields = msgpack.unpackb(blob[1:], raw=False, use_list=True, strict_map_key=True)
    except Exception:
        raise SessionFormatError("session is not well-formed") from None
    if not (type(fields) is list and len(fields) == 4 and all(_uint(v) for v in fields[:3])):
        raise SessionFormatError("session has the wrong shape")
    if type(fields[3]) is not list:
        raise SessionFormatError("session results have the wrong shape")
    results: dict[int, StoredResult] = {}
    for item in fields[3]:
        if not (type(item) is list and len(item) == 4 and _uint(item[0]) and _uint(item[1])):
            raise SessionFormatError("session result has the wrong shape")
        if not (item[2] is None or type(item[2]) is str) or type(item[3]) is not str:
            raise SessionFormatError("session result has the wrong shape")
        results[item[0]] = StoredResult(item[1], item[2], item[3])
    return ClientSession(fields[0], fields[1], fields[2], results)


class SessionTable:
    """All client sessions of one partition, in LRU order, with change tracking."""

    def __init__(self, ttl_ms: int, max_sessions: int, max_results_per_session: int = 256) -> None:
        if ttl_ms <= 0 or max_sessions <= 0 or max_results_per_session <= 0:
            raise ValueError("session limits must be positive")
        self.ttl_ms = ttl_ms
        self.max_sessions = max_sessions
        self.max_results = max_results_per_session
        self._clock_ms = 0
        self._sessions: OrderedDict[bytes, ClientSession] = OrderedDict()
        self._dirty: set[bytes] = set()
        self._dropped: set[bytes] = set()

    @property
    def clock_ms(self) -> int:
        return self._clock_ms

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, client_id: bytes) -> ClientSession | None:
        return self._sessions.get(client_id)

    def load(self, clock_ms: int, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the table with persisted sessions; no pending changes afterwards."""
        loaded = [(cid, decode_session(blob)) for cid, blob in blobs]
        loaded.sort(key=lambda item: item[1].last_index)
        self._sessions = OrderedDict(loaded)
        self._clock_ms = clock_ms
        self._dirty.clear()
        self._dropped.clear()

    def advance(self, ts_ms: int) -> None:
        """Move the clock to a command's timestamp (never back) and drop idle sessions."""
        if ts_ms > self._clock_ms:
            self._clock_ms = ts_ms
        horizon = self._clock_ms - self.ttl_ms
        # LRU order is also last_active order (the clock never goes back), so
        # the idle sessions are a prefix of the table.
        while self._sessions:
            cid, s = next(iter(self._sessions.items()))
            if s.last_active_ms >= horizon:
                break
            self._drop(cid)

    def check(
        self, client_id: bytes, seq: int, ack_below: int
    ) -> tuple[Outcome, StoredResult | None]:
        s = self._sessions.get(client_id)
        if s is None:
            return (Outcome.EXPIRED, None) if ack_below > 1 else (Outcome.NEW, None)
        if seq < s.floor:
            return Outcome.EXPIRED, None
        prior = s.results.get(seq)
        if prior is not None:
            return Outcome.DUPLICATE, prior
        return Outcome.NEW, None

    def touch(self, client_id: bytes, ack_below: int, index: int) -> None:
        """A duplicate arrived: the client is alive, and may have acknowledged more."""
        s = self._sessions[client_id]
        self._use(client_id, s, index)
        self._raise_floor(s, ack_below)

    def record(
        self, client_id: bytes, seq: int, ack_below: int, index: int, result: StoredResult
    ) -> None:
        """Remember the result of a newly applied write (check() said NEW)."""
        s = self._sessions.get(client_id)
        if s is None:
            s = ClientSession(index, self._clock_ms, 0)
            self._sessions[client_id] = s
        self._use(client_id, s, index)
        s.results[seq] = result
        self._raise_floor(s, ack_below)
        if len(s.results) > self.max_results:
            # A client that never acknowledges: forget its oldest results. The
            # floor moves past them so a late retry is refused, not re-applied.
            for old in sorted(s.results)[: len(s.results) - self.max_results]:
                del s.results[old]
                s.floor = max(s.floor, old + 1)
        while len(self._sessions) > self.max_sessions:
            self._drop(next(iter(self._sessions)))

    def take_changes(self) -> tuple[dict[bytes, bytes], set[bytes]]:
        """(sessions to write as blobs, client_ids to delete) since the last call."""
        puts = {cid: encode_session(self._sessions[cid]) for cid in sorted(self._dirty)}
        dropped = set(self._dropped)
        self._dirty.clear()
        self._dropped.clear()
        return puts, dropped

    def _use(self, client_id: bytes, s: ClientSession, index: int) -> None:
        s.last_index = index
        s.last_active_ms = self._clock_ms
        self._sessions.move_to_end(client_id)
        self._dirty.add(client_id)
        self._dropped.discard(client_id)

    @staticmethod
    def _raise_floor(s: ClientSession, ack_below: int) -> None:
        if ack_below > s.floor:
            s.floor = ack_below
            for seq in [q for q in s.results if q < ack_below]:
                del s.results[seq]

    def _drop(self, client_id: bytes) -> None:
        del self._sessions[client_id]
        self._dirty.discard(client_id)
        self._dropped.add(client_id)


def check_session_blob(client_id: bytes, blob: bytes) -> None:
    """For RecordStore.restore: reject a snapshot whose session blobs do not decode."""
    decode_session(blob)


__all__ = [
    "ClientSession",
    "Outcome",
    "SessionFormatError",
    "SessionTable",
    "StoredResult",
    "check_session_blob",
    "decode_session",
    "encode_session",
]
