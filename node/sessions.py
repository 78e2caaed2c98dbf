"""Registered client sessions: at-most-once application of retried writes (Raft thesis 6.3).

A client opens a session on a partition with a RegisterSession entry; the
session id is that entry's Raft index, so ids are unique, never reused and
identical on every replica. The session is bound to its owner (the client_id
that opened it; state_machine.session_owner is the one place that says who a
write's owner is). Every write names its session and a seq; per session the
table keeps the result of every seq the client has not acknowledged, and a
retry gets that first result back instead of a second application.
`ack_below` (the client holds the replies of every seq below it) lets the
table forget results, so a client may keep many writes in flight while its
session stays small.

What this table never does, unlike the LRU table it replaces:
  * evict a live session to make room. When max_sessions sessions are open,
    RegisterSession is refused (RESOURCE_EXHAUSTED) and every open session
    keeps its results: a spray of new clients cannot make an old client's
    retry look new.
  * treat an unknown session as new. A write whose session is not open
    (expired, never opened on this partition) is refused and never applied,
    so a retry whose session is gone can never apply a second time.

Expiry is a rule every replica applies identically from the log: a session
expires when log time - last use > session_ttl_ms, both read from the log
(node.log_clock for log time, node.settings for the TTL, which is replicated).
Sessions are kept in order of last use; since log time never goes back that is
also the order of expiry, so expired sessions are a prefix of the table.

Memory (scripts/bench-sessions.py measures it): an idle session is one entry of
an ordered dict plus one small object; each remembered result adds one dict
entry and one small object. The table's size is bounded by max_sessions
sessions of at most max_results_per_session results each.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

_FORMAT_V1 = 0x01  # the LRU table's format (keyed by client_id): ignored and deleted
_FORMAT = 0x02
SESSION_KEY_BYTES = 8


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
    owner: bytes  # who may write in it (the client_id that opened it)
    last_use_ms: int  # log time of the last use: the expiry clock
    floor: int  # results of seqs below this are forgotten (acknowledged or dropped)
    results: dict[int, StoredResult] = field(default_factory=dict)


class Outcome(enum.Enum):
    NEW = "new"  # not seen: apply it, then record()
    DUPLICATE = "duplicate"  # seen: return the stored result, apply nothing
    NOT_OPEN = "not-open"  # no such open session: refuse, it may have been applied
    NOT_OWNER = "not-owner"  # the session belongs to another client: refuse
    FORGOTTEN = "forgotten"  # seq below the session's floor: refuse, it may have been applied


def session_key(session_id: int) -> bytes:
    return session_id.to_bytes(SESSION_KEY_BYTES, "big")


def encode_session(s: ClientSession) -> bytes:
    results = [[seq, r.version, r.error_code, r.message] for seq, r in sorted(s.results.items())]
    body: bytes = msgpack.packb([s.owner, s.last_use_ms, s.floor, results], use_bin_type=True)
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
    if not (type(fields) is list and len(fields) == 4 and type(fields[0]) is bytes):
        raise SessionFormatError("session has the wrong shape")
    if not (_uint(fields[1]) and _uint(fields[2]) and type(fields[3]) is list):
        raise SessionFormatError("session has the wrong shape")
    results: dict[int, StoredResult] = {}
    for item in fields[3]:
        if not (type(item) is list and len(item) == 4 and _uint(item[0]) and _uint(item[1])):
            raise SessionFormatError("session result has the wrong shape")
        if not (item[2] is None or type(item[2]) is str) or type(item[3]) is not str:
            raise SessionFormatError("session result has the wrong shape")
        results[item[0]] = StoredResult(item[1], item[2], item[3])
    return ClientSession(fields[0], fields[1], fields[2], results)


def _is_old(key: bytes, blob: bytes) -> bool:
    """A session of the LRU table (before registered sessions): meaningless now."""
    return len(key) != SESSION_KEY_BYTES and bool(blob) and blob[0] == _FORMAT_V1


def check_session_blob(key: bytes, blob: bytes) -> None:
    """For RecordStore.restore: reject a snapshot whose session items do not decode."""
    if _is_old(key, blob):
        return  # dropped at load, like a stored one
    if len(key) != SESSION_KEY_BYTES:
        raise SessionFormatError("session key has the wrong length")
    decode_session(blob)


class SessionTable:
    """All open sessions of one partition, oldest last use first, with change tracking.

    Limits (TTL, max_sessions, max_results) are arguments, not state: they are
    replicated settings that a SetSettings entry may change between two calls.
    """

    def __init__(self) -> None:
        self._sessions: OrderedDict[int, ClientSession] = OrderedDict()
        self._dirty: set[int] = set()
        self._dropped: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: int) -> ClientSession | None:
        return self._sessions.get(session_id)

    def ids(self) -> list[int]:
        return list(self._sessions)

    def load(self, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the table with persisted sessions.

        Sessions of the old LRU format are not loaded; their deletion is left
        pending, so the next apply round removes them from disk too."""
        loaded: list[tuple[int, ClientSession]] = []
        old: set[bytes] = set()
        for key, blob in blobs:
            if _is_old(key, blob):
                old.add(key)
                continue
            if len(key) != SESSION_KEY_BYTES:
                raise SessionFormatError("session key has the wrong length")
            loaded.append((int.from_bytes(key, "big"), decode_session(blob)))
        loaded.sort(key=lambda item: (item[1].last_use_ms, item[0]))
        self._sessions = OrderedDict(loaded)
        self._dirty.clear()
        self._dropped = old

    # --- the rules -------------------------------------------------------------

    def expire(self, now_ms: int, ttl_ms: int) -> int:
        """Drop every session idle longer than ttl_ms at log time now_ms; returns how many."""
        dropped = 0
        while self._sessions:
            sid, s = next(iter(self._sessions.items()))
            if now_ms - s.last_use_ms <= ttl_ms:
                break
            self._drop(sid)
            dropped += 1
        return dropped

    def open_at(self, now_ms: int, ttl_ms: int) -> int:
        """How many sessions would still be open at log time now_ms (nothing changes)."""
        expired = 0
        for s in self._sessions.values():
            if now_ms - s.last_use_ms <= ttl_ms:
                break
            expired += 1
        return len(self._sessions) - expired

    def register(self, session_id: int, owner: bytes, now_ms: int, max_sessions: int) -> bool:
        """Open a session; False (and nothing changes) when max_sessions are open."""
        if len(self._sessions) >= max_sessions:
            return False
        if session_id in self._sessions:
            raise ValueError("session ids are Raft indexes and never repeat")
        self._sessions[session_id] = ClientSession(owner, now_ms, 0)
        self._dirty.add(session_id)
        return True

    def check(
        self, session_id: int, owner: bytes, seq: int
    ) -> tuple[Outcome, StoredResult | None]:
        s = self._sessions.get(session_id)
        if s is None:
            return Outcome.NOT_OPEN, None
        if s.owner != owner:
            return Outcome.NOT_OWNER, None
        if seq < s.floor:
            return Outcome.FORGOTTEN, None
        prior = s.results.get(seq)
        if prior is not None:
            return Outcome.DUPLICATE, prior
        return Outcome.NEW, None

    def touch(self, session_id: int, ack_below: int, now_ms: int) -> None:
        """A duplicate arrived: the client is alive, and may have acknowledged more."""
        s = self._sessions[session_id]
        self._use(session_id, s, now_ms)
        self._raise_floor(s, ack_below)

    def record(
        self,
        session_id: int,
        seq: int,
        ack_below: int,
        now_ms: int,
        result: StoredResult,
        max_results: int,
    ) -> None:
        """Remember the result of a newly applied write (check() said NEW)."""
        s = self._sessions[session_id]
        self._use(session_id, s, now_ms)
        s.results[seq] = result
        self._raise_floor(s, ack_below)
        if len(s.results) > max_results:
            # A client with more writes in flight than it was told it may have
            # (OpenSession's max_results): forget its oldest results. The floor
            # moves past them, so a late retry is refused, never re-applied.
            for old in sorted(s.results)[: len(s.results) - max_results]:
                del s.results[old]
                s.floor = max(s.floor, old + 1)

    def take_changes(self) -> tuple[dict[bytes, bytes], set[bytes]]:
        """(storage key -> blob to write, storage keys to delete) since the last call."""
        puts = {session_key(sid): encode_session(self._sessions[sid]) for sid in sorted(self._dirty)}
        dropped = set(self._dropped)
        self._dirty.clear()
        self._dropped.clear()
        return puts, dropped

    # --- internals ---------------------------------------------------------------

    def _use(self, session_id: int, s: ClientSession, now_ms: int) -> None:
        s.last_use_ms = now_ms
        self._sessions.move_to_end(session_id)
        self._dirty.add(session_id)

    @staticmethod
    def _raise_floor(s: ClientSession, ack_below: int) -> None:
        if ack_below > s.floor:
            s.floor = ack_below
            for seq in [q for q in s.results if q < ack_below]:
                del s.results[seq]

    def _drop(self, session_id: int) -> None:
        del self._sessions[session_id]
        self._dirty.discard(session_id)
        self._dropped.add(session_key(session_id))


__all__ = [
    "SESSION_KEY_BYTES",
    "ClientSession",
    "Outcome",
    "SessionFormatError",
    "SessionTable",
    "StoredResult",
    "check_session_blob",
    "decode_session",
    "encode_session",
    "session_key",
]
