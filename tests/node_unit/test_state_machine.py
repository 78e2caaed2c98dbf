"""PartitionStateMachine on real LevelDB: command semantics, sessions, replay, snapshots,
determinism, and a hypothesis stateful test against a dict-of-lists model."""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import plyvel
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from consensus.storage import ValueCodec
from node.commands import (
    BATCH_CHECK,
    BATCH_DELETE,
    BATCH_PUT,
    Batch,
    BatchOp,
    Command,
    CompareAndSet,
    Delete,
    ErasePatient,
    Noop,
    Put,
    RegisterSession,
    SetSettings,
    encode_command,
)
from node.record_store import Record, RecordStore, blake2b_key_hasher
from node.state_machine import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    RESULT_FORGOTTEN,
    SESSION_EXPIRED,
    SESSION_NOT_OWNED,
    ApplyOrderError,
    ApplyResult,
    PartitionStateMachine,
)
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec
from tests.node_unit.strategies import Head

SECRET = "Jane Q. Patient"
PARTITION = 9


def settings_cmd(ts: int = 0, seed: bool = False, **changes: int) -> SetSettings:
    return SetSettings(ts_ms=ts, nonce=1, seed=seed, changes=tuple(sorted(changes.items())))


def open_sm(
    db: plyvel.DB, codec: ValueCodec | None = None, hash_key: bytes = HASH_KEY, **settings: int
) -> PartitionStateMachine:
    """A state machine; given settings are set by a SetSettings entry (the next index)."""
    store = RecordStore(
        db.prefixed_db(b"sm/"), PARTITION, codec or TaggedXorCodec(), blake2b_key_hasher(hash_key)
    )
    sm = PartitionStateMachine(store)
    if settings:
        res = Feeder(sm).one(settings_cmd(**settings))
        assert res.ok, res
    return sm


class Client:
    """Builds the commands one client would send: fixed client_id, its session, increasing seq."""

    def __init__(self, cid: bytes, ts: int = 1_000, session: int = 0) -> None:
        self.cid = cid
        self.session = session
        self.seq = 0
        self.ack = 0
        self.ts = ts

    def register(self) -> RegisterSession:
        return RegisterSession(ts_ms=self.ts, client_id=self.cid, nonce=self.seq)

    def opened(self, feed: Feeder) -> Client:
        """Open a session (a RegisterSession entry); its id is that entry's index."""
        res = feed.one(self.register())
        assert res.ok and res.version == res.index, res
        self.session, self.seq, self.ack = res.version, 0, 0
        return self

    def head(self, patient: str, ack: int | None = None) -> Head:
        self.seq += 1
        return {
            "client_id": self.cid,
            "session": self.session,
            "seq": self.seq,
            "ack_below": self.ack if ack is None else ack,
            "ts_ms": self.ts,
            "patient_id": patient,
        }

    def put(self, p: str, r: str, v: bytes, **kw: int) -> Put:
        return Put(**self.head(p, **kw), record_id=r, value=v)

    def cas(self, p: str, r: str, v: bytes, expected: int) -> CompareAndSet:
        return CompareAndSet(**self.head(p), record_id=r, value=v, expected_version=expected)

    def delete(self, p: str, r: str, expected: int | None = None) -> Delete:
        return Delete(**self.head(p), record_id=r, expected_version=expected)

    def batch(self, p: str, *ops: BatchOp) -> Batch:
        return Batch(**self.head(p), ops=ops)

    def erase(self, p: str) -> ErasePatient:
        return ErasePatient(**self.head(p))


class Feeder:
    """Hands entries to a state machine with consecutive indexes, like the host does."""

    def __init__(self, sm: PartitionStateMachine, term: int = 1) -> None:
        self.sm = sm
        self.term = term

    def entries(self, items: Sequence[Command | bytes]) -> list[tuple[int, int, bytes]]:
        start = self.sm.applied_index + 1
        return [
            (start + i, self.term, it if isinstance(it, bytes) else encode_command(it))
            for i, it in enumerate(items)
        ]

    def __call__(self, *items: Command | bytes) -> list[ApplyResult]:
        return self.sm.apply(self.entries(items))

    def one(self, item: Command | bytes) -> ApplyResult:
        return self(item)[0]


@pytest.fixture
def sm(db: plyvel.DB) -> PartitionStateMachine:
    return open_sm(db, history_retention=4)


# --- command semantics --------------------------------------------------------


def test_put_version_is_the_entry_index(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    at = sm.applied_index
    feed(b"", b"")  # a new leader's empty entries: applied index moves, nothing else
    res = feed.one(c.put(SECRET, "vitals", b"bp 120/80"))
    assert res == ApplyResult(at + 3, at + 3, None, "", False, ("write", c.cid, c.session, 1))
    assert sm.applied_index == at + 3 and sm.applied_term == 1
    assert sm.get(SECRET, "vitals") == Record(SECRET, "vitals", b"bp 120/80", at + 3)


def test_compare_and_set(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    assert feed.one(c.cas(SECRET, "r", b"v1", 5)).error_code == FAILED_PRECONDITION  # absent is 0
    v1 = feed.one(c.cas(SECRET, "r", b"v1", 0)).version
    bad = feed.one(c.cas(SECRET, "r", b"v2", 0))
    assert (
        bad.error_code == FAILED_PRECONDITION
        and bad.message == f"record: version is {v1}, expected 0"
    )
    v2 = feed.one(c.cas(SECRET, "r", b"v2", v1)).version
    assert sm.get(SECRET, "r").value == b"v2"  # type: ignore[union-attr]
    feed.one(c.delete(SECRET, "r"))
    assert feed.one(c.cas(SECRET, "r", b"v3", v2)).error_code == FAILED_PRECONDITION  # deleted is 0
    assert feed.one(c.cas(SECRET, "r", b"v3", 0)).ok


def test_delete_writes_a_tombstone_kept_in_history(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    assert feed.one(c.delete(SECRET, "r")).error_code == NOT_FOUND
    v1 = feed.one(c.put(SECRET, "r", b"a")).version
    assert feed.one(c.delete(SECRET, "r", expected=v1 + 100)).error_code == FAILED_PRECONDITION
    d = feed.one(c.delete(SECRET, "r", expected=v1))
    assert d.ok and d.version > v1
    assert sm.get(SECRET, "r") == Record(SECRET, "r", b"", d.version, True)
    assert [(h.version, h.deleted) for h in sm.history(SECRET, "r")] == [
        (d.version, True),
        (v1, False),
    ]
    assert sm.get(SECRET, "r", at_version=v1).value == b"a"  # type: ignore[union-attr]
    assert feed.one(c.delete(SECRET, "r")).error_code == NOT_FOUND
    assert sm.scan().records == []


def test_batch_is_atomic(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    va = feed.one(c.put(SECRET, "a", b"a1")).version
    failing = feed.one(
        c.batch(
            SECRET,
            BatchOp(BATCH_PUT, "b", b"b1"),
            BatchOp(BATCH_CHECK, "a", expected_version=va + 1),
        )
    )
    assert failing.error_code == FAILED_PRECONDITION and failing.message.startswith("ops[1]:")
    assert sm.get(SECRET, "b") is None
    missing = feed.one(c.batch(SECRET, BatchOp(BATCH_PUT, "b", b"b1"), BatchOp(BATCH_DELETE, "zz")))
    assert missing.error_code == NOT_FOUND and sm.get(SECRET, "b") is None
    ok = feed.one(
        c.batch(
            SECRET,
            BatchOp(BATCH_CHECK, "a", expected_version=va),
            BatchOp(BATCH_PUT, "a", b"a2"),
            BatchOp(BATCH_CHECK, "b", expected_version=0),
            BatchOp(BATCH_PUT, "b", b"b1"),
        )
    )
    assert ok.ok
    assert sm.get(SECRET, "a").version == sm.get(SECRET, "b").version == ok.version  # type: ignore[union-attr]
    gone = feed.one(c.batch(SECRET, BatchOp(BATCH_DELETE, "a"), BatchOp(BATCH_DELETE, "b")))
    assert sm.get(SECRET, "a").deleted and sm.get(SECRET, "b").version == gone.version  # type: ignore[union-attr]


def test_erase_patient(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    feed(
        c.put(SECRET, "a", b"1"),
        c.put(SECRET, "a", b"2"),
        c.put(SECRET, "b", b"3"),
        c.put("other", "a", b"4"),
    )
    res = feed.one(c.erase(SECRET))
    assert res.ok and res.version == sm.applied_index
    assert (
        sm.get(SECRET, "a") is None
        and sm.history(SECRET, "a") == []
        and sm.get(SECRET, "b") is None
    )
    assert sm.get("other", "a").value == b"4"  # type: ignore[union-attr]
    assert [r.patient_id for r in sm.scan().records] == ["other"]


def test_reads_inside_one_round_see_earlier_writes_of_that_round(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    put, cas, dele, cas2 = c.put(SECRET, "r", b"1"), None, None, None
    start = sm.applied_index + 1
    cas = c.cas(SECRET, "r", b"2", start)
    dele = c.delete(SECRET, "r", expected=start + 1)
    cas2 = c.cas(SECRET, "r", b"3", 0)
    results = feed(put, cas, dele, cas2)
    assert [r.error_code for r in results] == [None, None, None, None]
    assert [h.version for h in sm.history(SECRET, "r")] == [start + 3, start + 2, start + 1, start]


# --- sessions -------------------------------------------------------------------


def test_retry_returns_the_first_result_and_changes_nothing(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c, other = Client(b"c" * 16).opened(feed), Client(b"o" * 16).opened(feed)
    put = encode_command(c.put(SECRET, "r", b"first"))
    first = feed.one(put)
    feed.one(other.put(SECRET, "r", b"someone else's later write"))
    before = sm.snapshot()
    retry = feed.one(put)
    assert retry.duplicate and (retry.version, retry.error_code) == (first.version, None)
    assert sm.get(SECRET, "r").value == b"someone else's later write"  # type: ignore[union-attr]
    # A failed CAS retried after it would succeed still answers its first result.
    cas = encode_command(c.cas(SECRET, "q", b"x", 99))
    failed = feed.one(cas)
    feed.one(other.put(SECRET, "q", b"y"))  # q is now at some version, still not 99
    again = feed.one(cas)
    assert again.duplicate and again.error_code == failed.error_code == FAILED_PRECONDITION
    assert again.message == failed.message
    assert len(before) > 0


def test_acknowledged_seq_is_refused_not_reapplied(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    old = encode_command(c.put(SECRET, "r", b"1"))
    feed.one(old)
    c.ack = 2
    feed.one(c.put(SECRET, "r", b"2"))  # seq 2, ack_below 2: reply of seq 1 is held
    res = feed.one(old)
    assert res.error_code == RESULT_FORGOTTEN and not res.duplicate
    assert sm.get(SECRET, "r").value == b"2"  # type: ignore[union-attr]


def test_sessions_expire_by_log_time_and_the_replicated_ttl(db: plyvel.DB) -> None:
    sm = open_sm(db, session_ttl_ms=10_000)
    feed = Feeder(sm)
    c = Client(b"c" * 16, ts=1_000).opened(feed)
    other = Client(b"o" * 16, ts=1_000).opened(feed)
    first = encode_command(c.put(SECRET, "r", b"1"))
    feed.one(first)
    other.ts = 11_000  # exactly TTL after c's last use: still open
    feed.one(other.put(SECRET, "q", b"x"))
    assert sm.session_count == 2
    other.ts = 11_001  # log time moved past c's TTL
    feed.one(other.put(SECRET, "q", b"y"))
    assert sm.session_count == 1
    res = feed.one(first)  # a retry whose session is gone: refused, never applied again
    assert res.error_code == SESSION_EXPIRED and not res.duplicate
    assert "not applied" in res.message
    rec = sm.get(SECRET, "r")
    assert rec is not None and rec.value == b"1"
    assert [h.version for h in sm.history(SECRET, "r")] == [rec.version]
    # A stamp behind log time changes nothing (max), and the session never reopens.
    c.ts = 0
    assert feed.one(c.put(SECRET, "r", b"2")).error_code == SESSION_EXPIRED
    assert sm.log_time_ms == 11_001


def test_open_sessions_are_never_evicted_registration_is_refused(db: plyvel.DB) -> None:
    sm = open_sm(db, max_sessions=2)
    feed = Feeder(sm)
    a, b = Client(b"a" * 16).opened(feed), Client(b"b" * 16).opened(feed)
    first = encode_command(a.put(SECRET, "r", b"a1"))
    applied = feed.one(first)
    refused = feed.one(Client(b"c" * 16).register())
    assert refused.error_code == RESOURCE_EXHAUSTED and "max_sessions" in refused.message
    assert sm.session_count == 2
    again = feed.one(first)  # a's early write, retried after the spray: its first result
    assert again.duplicate and again.version == applied.version
    assert feed.one(b.put(SECRET, "q", b"")).ok


def test_a_write_in_another_clients_session_is_refused(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    a = Client(b"a" * 16).opened(feed)
    thief = Client(b"t" * 16, session=a.session)
    res = feed.one(thief.put(SECRET, "r", b"x"))
    assert res.error_code == SESSION_NOT_OWNED and sm.get(SECRET, "r") is None
    assert feed.one(a.put(SECRET, "r", b"mine")).ok  # a's session is unharmed


def test_invalid_entries_answer_invalid_argument_and_the_round_goes_on(
    sm: PartitionStateMachine,
) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    bad_id = c.put(SECRET + "\x00", "r", b"v")
    results = feed(
        b"\x01garbage",
        encode_command(bad_id),
        b"\x07",
        c.put(SECRET, "r", b"ok"),
        encode_command(Noop(5)),
    )
    codes = [r.error_code for r in results]
    assert codes == [INVALID_ARGUMENT, INVALID_ARGUMENT, INVALID_ARGUMENT, None, None]
    assert results[0].wait_key is None and results[1].wait_key == ("write", c.cid, c.session, 1)
    assert results[1].message == "patient_id: contains a control character"
    assert all(SECRET not in r.message for r in results)
    assert sm.applied_index == results[-1].index
    assert [r.record_id for r in sm.scan().records] == ["r"]


def test_error_messages_carry_no_patient_data(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    feed.one(c.put(SECRET, SECRET, SECRET.encode()))
    results = feed(
        c.cas(SECRET, SECRET, b"x", 7),
        c.delete(SECRET, "nope"),
        c.batch(SECRET, BatchOp(BATCH_CHECK, SECRET, expected_version=99)),
    )
    assert [r.error_code for r in results] == [FAILED_PRECONDITION, NOT_FOUND, FAILED_PRECONDITION]
    assert all(r.message and SECRET not in r.message and "Jane" not in r.message for r in results)


# --- replay, ordering, failure, persistence -------------------------------------


def test_replayed_entries_are_skipped_and_gaps_refused(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    entries = feed.entries([c.put(SECRET, "r", b"1"), c.put(SECRET, "r", b"2")])
    sm.apply(entries)
    snap = sm.snapshot()
    replay = sm.apply(entries)
    assert all(r.duplicate and r.version == 0 for r in replay)
    assert sm.snapshot() == snap
    nxt = feed.entries([c.put(SECRET, "r", b"3")])
    with pytest.raises(ApplyOrderError):
        sm.apply([(nxt[0][0] + 1, 1, nxt[0][2])])
    with pytest.raises(ApplyOrderError):  # a valid entry before the gap is not applied either
        sm.apply([nxt[0], (nxt[0][0] + 2, 1, nxt[0][2])])
    assert sm.snapshot() == snap and sm.applied_index == entries[-1][0]
    assert sm.apply([]) == []


class FailingCodec(TaggedXorCodec):
    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        if b"BOOM" in plaintext:
            raise OSError("disk on fire")
        return super().seal(key, plaintext)


def test_a_failed_round_leaves_disk_and_sessions_as_they_were(db: plyvel.DB) -> None:
    sm = open_sm(db, codec=FailingCodec())
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    feed.one(c.put(SECRET, "r", b"fine"))
    snap = sm.snapshot()
    seq_before = c.seq
    with pytest.raises(OSError):
        feed(c.put(SECRET, "r", b"new"), c.put(SECRET, "q", b"BOOM"))
    assert sm.snapshot() == snap and sm.applied_index == 2
    # The session of the failed round was rolled back: seq 2 is new again.
    c.seq = seq_before
    res = feed.one(c.put(SECRET, "r", b"retried"))
    assert res.ok and not res.duplicate and res.index == 3


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "reopen")
    db = plyvel.DB(path, create_if_missing=True)
    sm = open_sm(db)
    feed = Feeder(sm, term=3)
    c = Client(b"c" * 16).opened(feed)
    put = encode_command(c.put(SECRET, "r", b"v"))
    first = feed.one(put)
    snap = sm.snapshot()
    db.close()
    db = plyvel.DB(path)
    try:
        sm2 = open_sm(db)
        assert (sm2.applied_index, sm2.applied_term) == (2, 3)
        assert sm2.snapshot() == snap
        again = Feeder(sm2).one(put)  # a retry that crosses a restart
        assert again.duplicate and again.version == first.version
    finally:
        db.close()


# --- snapshots and determinism ----------------------------------------------------


def random_log(seed: int, n: int, **settings: int) -> list[bytes]:
    """A reproducible mixed workload, including clock skew, expiry, refused
    registrations and retries from long ago; settings come first, as an entry."""
    rng = random.Random(seed)
    clients = [Client(bytes([i]) * 16, ts=0) for i in range(6)]
    out: list[bytes] = [encode_command(settings_cmd(**settings))] if settings else []
    ts = 1_000
    for _ in range(n):
        ts += rng.choice([0, 5, 50, 400, -30])  # stamps of different leaders disagree a little
        c = rng.choice(clients)
        c.ts = max(ts, 0)
        p, r = rng.choice(["p1", "p2", SECRET]), rng.choice(["a", "b", "c"])
        kind = rng.random()
        if c.session == 0 or rng.random() < 0.03:
            out.append(encode_command(c.register()))
            c.session, c.seq, c.ack = len(out), 0, 0  # its index, if it is not refused
            continue
        if kind < 0.08 and out:
            # a retry, most often of a recent write, sometimes from long ago
            out.append(rng.choice(out[-12:] if rng.random() < 0.7 else out))
            continue
        if kind < 0.1:
            out.append(b"")
            continue
        if rng.random() < 0.3:
            c.ack = c.seq + 1 if rng.random() < 0.5 else c.ack
        cmd: Command
        if kind < 0.45:
            cmd = c.put(p, r, rng.randbytes(rng.randint(0, 20)))
        elif kind < 0.6:
            cmd = c.cas(p, r, b"cas", rng.choice([0, len(out), len(out) - 1]))
        elif kind < 0.75:
            cmd = c.delete(p, r, rng.choice([None, len(out)]))
        elif kind < 0.9:
            cmd = c.batch(
                p, BatchOp(BATCH_PUT, r, b"b"), BatchOp(BATCH_CHECK, "zz", expected_version=0)
            )
        elif kind < 0.95:
            cmd = c.erase(p)
        else:
            cmd = Noop(c.ts)
        out.append(encode_command(cmd))
    return out


def apply_in_rounds(
    sm: PartitionStateMachine, log: list[bytes], rng: random.Random
) -> list[ApplyResult]:
    results: list[ApplyResult] = []
    i = 0
    while i < len(log):
        k = rng.randint(1, 9)
        results += sm.apply([(i + j + 1, 2, log[i + j]) for j in range(min(k, len(log) - i))])
        i += k
    return results


def test_same_entries_give_byte_identical_snapshots(tmp_path: Path) -> None:
    log = random_log(
        seed=4, n=400, history_retention=3, session_ttl_ms=2_000, max_sessions=6,
        max_results_per_session=2,
    )
    snaps, results = [], []
    for run in range(3):
        db = plyvel.DB(str(tmp_path / f"r{run}"), create_if_missing=True)
        try:
            sm = open_sm(db)
            results.append(apply_in_rounds(sm, log, random.Random(run)))  # different round splits
            snaps.append(sm.snapshot())
        finally:
            db.close()
    assert snaps[0] == snaps[1] == snaps[2]
    assert results[0] == results[1] == results[2]
    codes = {r.error_code for r in results[0]}
    assert {
        None,
        FAILED_PRECONDITION,
        NOT_FOUND,
        SESSION_EXPIRED,
        RESOURCE_EXHAUSTED,
        RESULT_FORGOTTEN,
    } <= codes  # the log exercised them
    assert any(r.duplicate for r in results[0])


def test_restore_reproduces_state_and_sessions(tmp_path: Path) -> None:
    log = random_log(seed=9, n=200, history_retention=3, session_ttl_ms=2_000)
    db1 = plyvel.DB(str(tmp_path / "a"), create_if_missing=True)
    db2 = plyvel.DB(str(tmp_path / "b"), create_if_missing=True)
    try:
        src = open_sm(db1)
        dst = open_sm(db2)
        apply_in_rounds(src, log[:150], random.Random(1))
        z = Client(b"z" * 16).opened(Feeder(dst))
        Feeder(dst)(z.put("will", "vanish", b"x"))
        dst.restore(src.snapshot())
        assert dst.applied_index == src.applied_index == 150
        assert dst.snapshot() == src.snapshot()
        assert dst.get("will", "vanish") is None
        assert dst.settings == src.settings and dst.settings.history_retention == 3
        assert dst.log_time_ms == src.log_time_ms and dst.session_count == src.session_count
        tail = [(151 + i, 2, d) for i, d in enumerate(log[150:])]
        assert src.apply(tail) == dst.apply(tail)  # same answers, retries included
        assert dst.snapshot() == src.snapshot()
    finally:
        db1.close()
        db2.close()


def test_read_snapshot_passthrough(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Client(b"c" * 16).opened(feed)
    feed(c.put(SECRET, "a", b"1"), c.put(SECRET, "b", b"2"))
    with sm.read_snapshot() as snap:
        feed(c.put(SECRET, "c", b"3"))
        records, _, done = snap.scan(b"", 10)
        assert sorted(r.record_id for r in records) == ["a", "b"] and done
        assert snap.meta.applied_index == 4


# --- stateful: the state machine against a dict-of-lists model -----------------------

PATIENTS = ["alice", "bob", "zoë"]
RECORDS = ["r1", "r2", "r3"]
CLIENTS = [b"\x01" * 16, b"\x02" * 16]
RETENTION = 3
Version = tuple[int, bool, bytes]  # (version, deleted, value)


_shared: dict[str, object] = {}
_example_prefixes = itertools.count()


def shared_db() -> plyvel.DB:
    """One LevelDB for every stateful example (each gets its own key prefix):
    opening and closing a database per example would dominate the run time."""
    if "db" not in _shared:
        _shared["dir"] = tempfile.mkdtemp(prefix="medkv-sm-")
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


class StateMachineVsModel(RuleBasedStateMachine):
    """Every record is a list of all its versions; the machine must agree with it on
    get (latest and at a version), history within retention and scans, and must
    answer a retried (client_id, seq) with its first result, applying it once."""

    def __init__(self) -> None:
        super().__init__()
        self.key = HASH_KEY
        self.sm = self._fresh(self.key)
        self.model: dict[tuple[str, str], list[Version]] = {}
        self.first: dict[tuple[bytes, int], tuple[int, str | None]] = {}
        self.floor: dict[bytes, int] = {}
        self.seq: dict[bytes, int] = dict.fromkeys(CLIENTS, 0)
        self.session: dict[bytes, int] = {}
        self.sent: list[tuple[bytes, bytes, int]] = []  # (data, client_id, seq)

    def _fresh(self, hash_key: bytes) -> PartitionStateMachine:
        db = shared_db().prefixed_db(b"ex%d/" % next(_example_prefixes))
        store = RecordStore(db, PARTITION, TaggedXorCodec(), blake2b_key_hasher(hash_key))
        return PartitionStateMachine(store)

    # model helpers
    def live(self, p: str, r: str) -> int:
        versions = self.model.get((p, r))
        return versions[-1][0] if versions and not versions[-1][1] else 0

    def expect(self, cmd: Command, index: int) -> tuple[int, str | None]:
        """Apply cmd to the model; returns (version, error_code)."""
        assert not isinstance(cmd, Noop)
        writes: list[tuple[str, bytes, bool]] = []
        if isinstance(cmd, Put):
            writes = [(cmd.record_id, cmd.value, False)]
        elif isinstance(cmd, CompareAndSet):
            if self.live(cmd.patient_id, cmd.record_id) != cmd.expected_version:
                return 0, FAILED_PRECONDITION
            writes = [(cmd.record_id, cmd.value, False)]
        elif isinstance(cmd, Delete):
            at = self.live(cmd.patient_id, cmd.record_id)
            if cmd.expected_version is not None and at != cmd.expected_version:
                return 0, FAILED_PRECONDITION
            if at == 0:
                return 0, NOT_FOUND
            writes = [(cmd.record_id, b"", True)]
        elif isinstance(cmd, Batch):
            for op in cmd.ops:
                at = self.live(cmd.patient_id, op.record_id)
                if op.kind == BATCH_CHECK and at != op.expected_version:
                    return 0, FAILED_PRECONDITION
                if op.kind == BATCH_DELETE and at == 0:
                    return 0, NOT_FOUND
            writes = [
                (op.record_id, op.value, op.kind == BATCH_DELETE)
                for op in cmd.ops
                if op.kind != BATCH_CHECK
            ]
        elif isinstance(cmd, ErasePatient):
            for key in [k for k in self.model if k[0] == cmd.patient_id]:
                del self.model[key]
        for r, value, deleted in writes:
            self.model.setdefault((cmd.patient_id, r), []).append((index, deleted, value))
        return index, None

    def submit(self, cmds: list[Command]) -> None:
        entries = [
            (self.sm.applied_index + 1 + i, 1, encode_command(c)) for i, c in enumerate(cmds)
        ]
        results = self.sm.apply(entries)
        for (index, _, data), cmd, res in zip(entries, cmds, results, strict=True):
            assert not isinstance(cmd, Noop)
            key = (cmd.client_id, cmd.seq)
            want = self.expect(cmd, index)
            assert (res.version, res.error_code, res.duplicate) == (*want, False), (cmd, res)
            self.first[key] = want
            self.floor[cmd.client_id] = max(self.floor.get(cmd.client_id, 0), cmd.ack_below)
            self.sent.append((data, cmd.client_id, cmd.seq))

    def head(self, cid: bytes, p: str, ack: bool) -> Head:
        self.seq[cid] += 1
        # ack_below: every earlier reply is in hand (this model client is synchronous).
        return {
            "client_id": cid,
            "session": self.session[cid],
            "seq": self.seq[cid],
            "ack_below": self.seq[cid] if ack else 0,
            "ts_ms": 1_000 + self.sm.applied_index,
            "patient_id": p,
        }

    # rules
    cid = st.sampled_from(CLIENTS)
    pid = st.sampled_from(PATIENTS)
    rid = st.sampled_from(RECORDS)
    val = st.binary(max_size=6)
    ack = st.booleans()

    @initialize()
    def start(self) -> None:
        assert self.sm.applied_index == 0
        setup = [settings_cmd(history_retention=RETENTION)] + [
            RegisterSession(ts_ms=1_000, client_id=cid, nonce=0) for cid in CLIENTS
        ]
        results = self.sm.apply([(i + 1, 1, encode_command(c)) for i, c in enumerate(setup)])
        assert all(r.ok for r in results)
        self.session = {cid: res.version for cid, res in zip(CLIENTS, results[1:], strict=True)}

    @rule(c=cid, p=pid, r=rid, v=val, a=ack)
    def put(self, c: bytes, p: str, r: str, v: bytes, a: bool) -> None:
        self.submit([Put(**self.head(c, p, a), record_id=r, value=v)])

    @rule(c=cid, p=pid, r=rid, v=val, a=ack, guess=st.sampled_from(["live", "zero", "stale"]))
    def cas(self, c: bytes, p: str, r: str, v: bytes, a: bool, guess: str) -> None:
        expected = {"live": self.live(p, r), "zero": 0, "stale": self.live(p, r) + 1}[guess]
        self.submit(
            [CompareAndSet(**self.head(c, p, a), record_id=r, value=v, expected_version=expected)]
        )

    @rule(c=cid, p=pid, r=rid, a=ack, guess=st.sampled_from([None, "live", "stale"]))
    def delete(self, c: bytes, p: str, r: str, a: bool, guess: str | None) -> None:
        expected = None if guess is None else self.live(p, r) + (guess == "stale")
        self.submit([Delete(**self.head(c, p, a), record_id=r, expected_version=expected)])

    @rule(
        c=cid,
        p=pid,
        a=ack,
        ops=st.lists(
            st.tuples(st.sampled_from([BATCH_PUT, BATCH_DELETE, BATCH_CHECK]), rid, st.booleans()),
            min_size=1,
            max_size=4,
        ),
    )
    def batch(self, c: bytes, p: str, a: bool, ops: list[tuple[str, str, bool]]) -> None:
        built: list[BatchOp] = []
        written: set[str] = set()
        for kind, r, right in ops:
            if kind == BATCH_CHECK:
                built.append(BatchOp(kind, r, expected_version=self.live(p, r) + (not right)))
            elif r not in written:
                written.add(r)
                built.append(BatchOp(kind, r, b"batch" if kind == BATCH_PUT else b""))
        self.submit([Batch(**self.head(c, p, a), ops=tuple(built))])

    @rule(c=cid, p=pid)
    def erase(self, c: bytes, p: str) -> None:
        self.submit([ErasePatient(**self.head(c, p, False))])

    @rule(c=cid, p=pid, r=rid, n=st.integers(2, 4))
    def several_in_one_round(self, c: bytes, p: str, r: str, n: int) -> None:
        cmds: list[Command] = []
        live = self.live(p, r)
        for i in range(n):  # each CAS expects the version the previous entry wrote
            cmds.append(
                CompareAndSet(
                    **self.head(c, p, False), record_id=r, value=bytes([i]), expected_version=live
                )
            )
            live = self.sm.applied_index + 1 + i
        self.submit(cmds)

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10**6))
    def retry(self, pick: int) -> None:
        data, cid, seq = self.sent[pick % len(self.sent)]
        before = dict(self.model)
        res = self.sm.apply([(self.sm.applied_index + 1, 1, data)])[0]
        if seq < self.floor.get(cid, 0):
            assert (res.error_code, res.duplicate) == (RESULT_FORGOTTEN, False)
        else:
            assert res.duplicate and (res.version, res.error_code) == self.first[(cid, seq)]
        assert self.model == before

    @rule(same_key=st.booleans())
    def snapshot_and_restore_elsewhere(self, same_key: bool) -> None:
        data = self.sm.snapshot()
        if not same_key:  # another node, hashing storage keys with its own key
            self.key = bytes(reversed(self.key))
        other = self._fresh(self.key)
        other.restore(data)
        assert other.applied_index == self.sm.applied_index
        if same_key:
            assert other.snapshot() == data
        self.sm = other  # carry on with the restored copy

    @rule()
    def reopen(self) -> None:
        """A restart: all in-memory state is rebuilt from what is on disk."""
        self.sm = PartitionStateMachine(self.sm.store)

    @invariant()
    def agrees_with_model(self) -> None:
        live: set[tuple[str, str]] = set()
        for p in PATIENTS:
            for r in RECORDS:
                versions = self.model.get((p, r), [])
                got = self.sm.get(p, r)
                if not versions:
                    assert got is None and self.sm.history(p, r) == []
                    continue
                v, deleted, value = versions[-1]
                assert got == Record(p, r, value, v, deleted)
                if not deleted:
                    live.add((p, r))
                kept = versions[-RETENTION:]
                assert [(h.version, h.deleted, h.value) for h in self.sm.history(p, r)] == kept[
                    ::-1
                ]
                for ver, dl, val in kept:
                    assert self.sm.get(p, r, at_version=ver) == Record(p, r, val, ver, dl)
                if len(versions) > RETENTION:
                    assert self.sm.get(p, r, at_version=versions[-RETENTION - 1][0]) is None
        scanned: list[tuple[str, str]] = []
        token, done = b"", False
        while not done:
            records, token, done = self.sm.scan(token, 2)
            scanned += [(x.patient_id, x.record_id) for x in records]
        assert sorted(scanned) == sorted(live)


TestStateMachineVsModel = StateMachineVsModel.TestCase
TestStateMachineVsModel.settings = settings(stateful_step_count=30, deadline=None)


# --- settings carried from the cluster state (node.cluster.settings_sync) ---------


def cluster_settings_cmd(generation: int, nonce: int = 1, **values: int) -> SetSettings:
    full = {"session_ttl_ms": 60_000, "history_retention": 4, "max_sessions": 100,
            "max_results_per_session": 8, **values}
    return SetSettings(ts_ms=0, nonce=nonce, seed=False, changes=tuple(sorted(full.items())),
                       cluster_generation=generation)


def test_cluster_generations_apply_once_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "gen")
    db = plyvel.DB(path, create_if_missing=True)
    try:
        sm = open_sm(db)
        feed = Feeder(sm)
        first = feed.one(cluster_settings_cmd(2, max_sessions=7))
        assert first.ok and sm.settings_cluster_generation == 2 and sm.settings.max_sessions == 7
        assert sm.settings_generation == first.index
        # A duplicate and a late entry of an older generation change nothing.
        dup = feed.one(cluster_settings_cmd(2, nonce=2, max_sessions=9))
        old = feed.one(cluster_settings_cmd(1, nonce=3, max_sessions=9))
        assert "already applied" in dup.message and "already applied" in old.message
        assert sm.settings.max_sessions == 7 and sm.settings_generation == first.index
        # A seed after a cluster generation loses, as after any setting.
        assert "already set" in feed.one(settings_cmd(seed=True, max_sessions=1)).message
        newer = feed.one(cluster_settings_cmd(3, nonce=4, session_ttl_ms=5_000))
        assert newer.ok and sm.settings_cluster_generation == 3
        assert sm.settings.session_ttl_ms == 5_000 and sm.settings.max_sessions == 100
        snap = sm.snapshot()
    finally:
        db.close()
    db = plyvel.DB(path)
    try:
        again = open_sm(db)
        assert again.settings_cluster_generation == 3 and again.snapshot() == snap
    finally:
        db.close()
