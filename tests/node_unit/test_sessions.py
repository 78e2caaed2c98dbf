"""Registered sessions: the SessionTable rules, and the state machine against a model.

The stateful test drives two replicas (their own LevelDB each, fed the same
log in different round splits, one restarted or rebuilt from the other's
snapshot now and then) and a model of the session rules. It checks:
  * a retry is applied at most once: every logical write puts its own record,
    which must end with exactly one version however often it was retried;
  * a retry whose session is open gets its first result; one whose session is
    gone gets SESSION_EXPIRED (or RESULT_FORGOTTEN), never a second application;
  * expiry is identical on both replicas (same answers to every entry) and is
    the model's rule: log time = max of stamps, expired when idle > TTL;
  * a spray of new clients is refused once max_sessions are open and never
    evicts a live session.
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node.commands import Command, Noop, Put, RegisterSession, SetSettings, encode_command
from node.record_store import RecordStore, blake2b_key_hasher
from node.sessions import (
    ClientSession,
    Outcome,
    SessionFormatError,
    SessionTable,
    StoredResult,
    check_session_blob,
    decode_session,
    encode_session,
    session_key,
)
from node.state_machine import (
    RESOURCE_EXHAUSTED,
    RESULT_FORGOTTEN,
    SESSION_EXPIRED,
    SESSION_NOT_OWNED,
    ApplyResult,
    PartitionStateMachine,
)
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
OK = StoredResult(7, None, "")


# --- SessionTable ---------------------------------------------------------------


def test_a_new_write_then_its_retry_is_a_duplicate() -> None:
    t = SessionTable()
    assert t.register(10, A, now_ms=0, max_sessions=5)
    assert t.check(10, A, 1) == (Outcome.NEW, None)
    t.record(10, 1, 0, 0, OK, max_results=8)
    assert t.check(10, A, 1) == (Outcome.DUPLICATE, OK)
    assert t.check(10, A, 2) == (Outcome.NEW, None)


def test_unknown_session_or_wrong_owner_is_refused_not_new() -> None:
    t = SessionTable()
    t.register(10, A, 0, 5)
    assert t.check(11, A, 1) == (Outcome.NOT_OPEN, None)  # never opened: never treated as new
    assert t.check(10, B, 1) == (Outcome.NOT_OWNER, None)


def test_ack_below_forgets_results_and_refuses_older_seqs() -> None:
    t = SessionTable()
    t.register(1, A, 0, 5)
    for seq in (1, 2, 3):
        t.record(1, seq, 0, 0, StoredResult(seq, None, ""), 8)
    t.record(1, 4, 3, 0, StoredResult(4, None, ""), 8)  # the client holds replies of 1 and 2
    s = t.get(1)
    assert s is not None and sorted(s.results) == [3, 4] and s.floor == 3
    assert t.check(1, A, 2) == (Outcome.FORGOTTEN, None)  # never re-applied
    assert t.check(1, A, 3)[0] is Outcome.DUPLICATE


def test_too_many_unacknowledged_results_forget_the_oldest_safely() -> None:
    t = SessionTable()
    t.register(1, A, 0, 5)
    for seq in (1, 2, 5, 6):
        t.record(1, seq, 0, 0, StoredResult(seq, None, ""), max_results=3)
    s = t.get(1)
    assert s is not None and sorted(s.results) == [2, 5, 6] and s.floor == 2
    assert t.check(1, A, 1) == (Outcome.FORGOTTEN, None)
    assert t.check(1, A, 3) == (Outcome.NEW, None)  # never applied, still allowed


def test_expiry_is_idle_time_beyond_the_ttl_in_log_time() -> None:
    t = SessionTable()
    t.register(1, A, now_ms=5_000, max_sessions=5)
    t.register(2, B, now_ms=5_500, max_sessions=5)
    assert t.expire(6_000, ttl_ms=1_000) == 0  # A idle exactly the TTL: kept
    assert t.open_at(6_001, 1_000) == 1
    assert t.expire(6_001, ttl_ms=1_000) == 1
    assert t.get(1) is None and t.get(2) is not None
    assert t.check(1, A, 1) == (Outcome.NOT_OPEN, None)
    puts, dropped = t.take_changes()
    assert dropped == {session_key(1)} and set(puts) == {session_key(2)}


def test_a_use_keeps_a_session_open() -> None:
    t = SessionTable()
    t.register(1, A, 0, 5)
    t.register(2, B, 0, 5)
    t.record(1, 1, 0, 900, OK, 8)
    t.expire(1_500, 1_000)
    assert t.get(1) is not None and t.get(2) is None


def test_a_full_table_refuses_registration_and_evicts_nobody() -> None:
    t = SessionTable()
    assert t.register(1, A, 0, max_sessions=2)
    assert t.register(2, B, 0, max_sessions=2)
    for sid in range(3, 50):  # a spray of new clients
        assert not t.register(sid, C, 0, max_sessions=2)
    assert t.ids() == [1, 2]
    t.expire(10_000, 1_000)
    assert t.register(60, C, 10_000, max_sessions=2)  # room again once they expired


def test_load_orders_by_last_use_and_drops_the_old_lru_format() -> None:
    t = SessionTable()
    old_key = b"\x09" * 16  # the LRU table keyed sessions by client_id
    t.load(
        [
            (session_key(5), encode_session(ClientSession(A, 300, 0, {1: OK}))),
            (session_key(9), encode_session(ClientSession(B, 100, 0, {}))),
            (old_key, b"\x01" + b"\x94\x01\x02\x03\x90"),
        ]
    )
    assert t.ids() == [9, 5]  # last use order, whatever the key order
    t.expire(1_200, 1_000)  # 9 idle 1100 > 1000, 5 idle 900
    assert t.ids() == [5]
    _, dropped = t.take_changes()
    assert dropped == {old_key, session_key(9)}  # the old-format one leaves the disk too


@given(
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.dictionaries(
        st.integers(0, 2**64 - 1),
        st.builds(
            StoredResult,
            st.integers(0, 2**64 - 1),
            st.none() | st.text(max_size=20),
            st.text(max_size=40),
        ),
        max_size=5,
    ),
)
def test_session_blob_round_trip(
    owner: bytes, ts: int, floor: int, results: dict[int, StoredResult]
) -> None:
    s = ClientSession(owner, ts, floor, results)
    blob = encode_session(s)
    assert decode_session(blob) == s
    assert encode_session(decode_session(blob)) == blob
    check_session_blob(session_key(3), blob)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x03\x90", b"\x02\xc1", b"\x02\x93\x01\x02\x03", b"\x02\x94\x01\x02\x03\x90"],
)
def test_malformed_session_blobs_raise(blob: bytes) -> None:
    with pytest.raises(SessionFormatError):
        decode_session(blob)
    with pytest.raises(SessionFormatError):
        check_session_blob(session_key(1), blob)


def test_a_session_key_of_the_wrong_length_is_refused() -> None:
    blob = encode_session(ClientSession(A, 0, 0))
    with pytest.raises(SessionFormatError):
        check_session_blob(b"\x01" * 5, blob)


# --- the state machine against a model of the session rules ----------------------------


@dataclass
class MSession:
    owner: bytes
    last_use: int
    floor: int = 0
    results: dict[int, tuple[int, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    """One logical write: its command (re-stamped on every retry)."""

    cmd: Put
    n: int  # its own record is f"w{n}"


_shared: dict[str, object] = {}
_prefixes = itertools.count()


def shared_db() -> plyvel.DB:
    if "db" not in _shared:
        _shared["dir"] = tempfile.mkdtemp(prefix="medkv-sessions-")
        _shared["db"] = plyvel.DB(_shared["dir"], create_if_missing=True)
    db = _shared["db"]
    assert isinstance(db, plyvel.DB)
    return db


@pytest.fixture(scope="module", autouse=True)
def _close_shared_db() -> Iterator[None]:
    yield
    if "db" in _shared:
        _shared.pop("db").close()  # type: ignore[attr-defined]
        shutil.rmtree(str(_shared.pop("dir")), ignore_errors=True)


def fresh_sm() -> PartitionStateMachine:
    db = shared_db().prefixed_db(b"x%d/" % next(_prefixes))
    return PartitionStateMachine(
        RecordStore(db, 3, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY))
    )


PATIENT = "p"
CLIENTS = [A, B, C]


class SessionsVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.replicas = [fresh_sm(), fresh_sm()]
        self.rng = random.Random(0)
        self.index = 0
        self.stamp = 1_000  # what the next entries are stamped with
        self.log_time = 0
        self.ttl, self.max_sessions, self.max_results = 3_600_000, 10_000, 64
        self.sessions: dict[int, MSession] = {}
        self.current: dict[bytes, int] = {}  # client -> its latest session id (maybe expired)
        self.seq: dict[int, int] = {}
        self.in_flight: dict[int, set[int]] = {}
        self.sent: list[Sent] = []
        self.first: dict[int, tuple[int, str | None]] = {}  # n -> first result
        self.spray_ids = itertools.count(1)

    # ---- feeding both replicas --------------------------------------------------

    def feed(self, cmds: list[Command]) -> list[ApplyResult]:
        entries = [(self.index + 1 + i, 1, encode_command(c)) for i, c in enumerate(cmds)]
        self.index += len(cmds)
        outs = []
        for sm in self.replicas:
            results: list[ApplyResult] = []
            i = 0
            while i < len(entries):  # each replica splits the entries into its own rounds
                k = self.rng.randint(1, 4)
                results += sm.apply(entries[i : i + k])
                i += k
            outs.append(results)
        assert outs[0] == outs[1], "replicas decided the same entries differently"
        return outs[0]

    def advance(self, stamp: int) -> None:
        """The model's rule, before every entry: log time, then expiry."""
        self.log_time = max(self.log_time, stamp)
        for sid in [s for s, m in self.sessions.items() if self.log_time - m.last_use > self.ttl]:
            del self.sessions[sid]

    def set_settings(self, **changes: int) -> None:
        cmd = SetSettings(
            ts_ms=self.stamp, nonce=1, seed=False, changes=tuple(sorted(changes.items()))
        )
        self.advance(self.stamp)
        res = self.feed([cmd])[0]
        assert res.ok, res
        self.ttl = changes.get("session_ttl_ms", self.ttl)
        self.max_sessions = changes.get("max_sessions", self.max_sessions)
        self.max_results = changes.get("max_results_per_session", self.max_results)
        self.advance(self.stamp)  # a new TTL takes effect at that entry

    def register(self, owners: list[bytes]) -> list[ApplyResult]:
        cmds: list[Command] = [
            RegisterSession(ts_ms=self.stamp, client_id=o, nonce=i) for i, o in enumerate(owners)
        ]
        results = self.feed(cmds)
        for owner, res in zip(owners, results, strict=True):
            self.advance(self.stamp)
            if len(self.sessions) >= self.max_sessions:
                assert (res.error_code, res.version) == (RESOURCE_EXHAUSTED, 0), res
            else:
                assert (res.error_code, res.version) == (None, res.index), res
                self.sessions[res.index] = MSession(owner, self.log_time)
        return results

    def expect_write(self, cmd: Put, index: int) -> tuple[int, str | None, bool]:
        """(version, error_code, duplicate) the rules give this write at this index."""
        self.advance(cmd.ts_ms)
        s = self.sessions.get(cmd.session)
        if s is None:
            return 0, SESSION_EXPIRED, False
        if s.owner != cmd.client_id:
            return 0, SESSION_NOT_OWNED, False
        if cmd.seq < s.floor:
            return 0, RESULT_FORGOTTEN, False
        s.last_use = self.log_time
        if cmd.seq in s.results:
            prior = s.results[cmd.seq]
            s.floor = max(s.floor, cmd.ack_below)
            s.results = {q: r for q, r in s.results.items() if q >= s.floor}
            return (*prior, True)
        s.results[cmd.seq] = (index, None)
        s.floor = max(s.floor, cmd.ack_below)
        s.results = {q: r for q, r in s.results.items() if q >= s.floor}
        for old in sorted(s.results)[: max(0, len(s.results) - self.max_results)]:
            del s.results[old]
            s.floor = max(s.floor, old + 1)
        return index, None, False

    # ---- rules --------------------------------------------------------------------

    @initialize(ttl=st.sampled_from([1_000, 5_000]), max_sessions=st.integers(2, 5))
    def start(self, ttl: int, max_sessions: int) -> None:
        self.set_settings(session_ttl_ms=ttl, max_sessions=max_sessions, max_results_per_session=3)

    @rule(dt=st.sampled_from([-700, 0, 1, 300, 999, 1_000, 1_001, 4_000]))
    def tick(self, dt: int) -> None:
        """Stamps move on (or back: a new leader whose clock base is behind)."""
        self.stamp = max(0, self.stamp + dt)

    @rule(client=st.sampled_from(CLIENTS))
    def open_session(self, client: bytes) -> None:
        res = self.register([client])[0]
        if res.ok:
            self.current[client] = res.index
            self.seq[res.index] = 0
            self.in_flight[res.index] = set()

    @rule(k=st.integers(1, 12))
    def spray(self, k: int) -> None:
        """New clients, each opening a session once: refused when full, evicting nobody."""
        before = dict(self.sessions)
        self.register([next(self.spray_ids).to_bytes(16, "big") for _ in range(k)])
        for sid in before:
            # every session open before is still open unless it expired by the rule
            assert sid in self.sessions or self.log_time - before[sid].last_use > self.ttl

    @precondition(lambda self: self.current)
    @rule(pick=st.integers(0, 100), done=st.booleans())
    def write(self, pick: int, done: bool) -> None:
        client = sorted(self.current)[pick % len(self.current)]
        sid = self.current[client]
        self.seq[sid] += 1
        seq = self.seq[sid]
        flight = self.in_flight[sid]
        flight.add(seq)
        n = len(self.sent)
        cmd = Put(
            client_id=client, session=sid, seq=seq, ack_below=min(flight), ts_ms=self.stamp,
            patient_id=PATIENT, record_id=f"w{n}", value=b"v%d" % n,
        )
        self.sent.append(Sent(cmd, n))
        res = self.feed([cmd])[0]
        want = self.expect_write(cmd, res.index)
        assert (res.version, res.error_code, res.duplicate) == want, (cmd, res, want)
        self.first[n] = (res.version, res.error_code)
        if done:  # the reply reached the client: it acknowledges it with later writes
            flight.discard(seq)

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10**6))
    def retry(self, pick: int) -> None:
        """Any earlier write again, re-stamped now, with the same WriteId."""
        sent = self.sent[pick % len(self.sent)]
        cmd = replace(sent.cmd, ts_ms=self.stamp)
        res = self.feed([cmd])[0]
        want = self.expect_write(cmd, res.index)
        assert (res.version, res.error_code, res.duplicate) == want, (cmd, res, want)
        if res.duplicate:
            assert (res.version, res.error_code) == self.first[sent.n]
        assert not (res.ok and not res.duplicate and self.first[sent.n][1] is None)

    @precondition(lambda self: self.current)
    @rule(pick=st.integers(0, 100))
    def write_in_anothers_session(self, pick: int) -> None:
        victim = sorted(self.current)[pick % len(self.current)]
        thief = next(c for c in CLIENTS if c != victim)
        cmd = Put(
            client_id=thief, session=self.current[victim], seq=1, ack_below=0, ts_ms=self.stamp,
            patient_id=PATIENT, record_id="stolen", value=b"x",
        )
        res = self.feed([cmd])[0]
        self.advance(self.stamp)
        want = SESSION_NOT_OWNED if self.current[victim] in self.sessions else SESSION_EXPIRED
        assert res.error_code == want

    @rule()
    def noop(self) -> None:
        self.feed([Noop(self.stamp)])
        self.advance(self.stamp)

    @rule(ttl=st.sampled_from([1_000, 2_000, 60_000]))
    def change_ttl(self, ttl: int) -> None:
        self.set_settings(session_ttl_ms=ttl)

    @rule()
    def restart_second_replica(self) -> None:
        self.replicas[1] = PartitionStateMachine(self.replicas[1].store)

    @rule()
    def rebuild_second_replica_from_a_snapshot(self) -> None:
        other = fresh_sm()
        other.restore(self.replicas[0].snapshot())
        self.replicas[1] = other

    # ---- invariants -------------------------------------------------------------------

    @invariant()
    def each_write_applied_at_most_once(self) -> None:
        for sm in self.replicas:
            for s in self.sent:
                versions = sm.history(PATIENT, f"w{s.n}")
                applied = self.first[s.n][1] is None
                assert len(versions) == (1 if applied else 0), (s.n, versions)
                if applied:
                    assert versions[0].version == self.first[s.n][0]
            assert sm.get(PATIENT, "stolen") is None

    @invariant()
    def replicas_agree_with_the_model(self) -> None:
        for sm in self.replicas:
            assert sm.session_count == len(self.sessions)
            assert sm.log_time_ms == self.log_time
            assert sm.settings.session_ttl_ms == self.ttl
        assert self.replicas[0].snapshot() == self.replicas[1].snapshot()


SessionsVsModel.TestCase.settings = settings(
    SessionsVsModel.TestCase.settings, stateful_step_count=40, deadline=None
)
test_sessions_against_model = SessionsVsModel.TestCase
