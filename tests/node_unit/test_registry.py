"""The patient <-> clinic registration as replicated state (issue 11).

Commands: the optional trailing WriteAuth and SharePatient encode and decode,
and entries without them decode exactly as before. State machine: the clinic
check at apply, register-on-first-write, break-glass, SharePatient, erasure,
snapshots, and replicas fed the same log agreeing. ReplicatedRegistry: the
local replica's registration, NOT_HELD without one.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.auth.policy import NOT_HELD, UNREGISTERED, Registration, authorize
from node.commands import (
    FORMAT_V2,
    Batch,
    BatchOp,
    Command,
    CommandDecodeError,
    CompareAndSet,
    Delete,
    Put,
    SharePatient,
    WriteAuth,
    decode_command,
    encode_command,
    validate_command,
)
from node.limits import ValidationError
from node.record_store import OBLIGATION_ERASE, RecordStore, blake2b_key_hasher
from node.registry import ReplicatedRegistry
from node.state_machine import (
    FAILED_PRECONDITION,
    PERMISSION_DENIED,
    ApplyResult,
    PartitionStateMachine,
)
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec
from tests.node_unit.strategies import batches, ids, uint64, values, write_heads
from tests.node_unit.test_state_machine import Client, Feeder, open_sm

SECRET = "Jane Q. Patient 1970-01-01"  # a patient id: never in a message
HIDDEN = "south-secret-clinic"  # the patient's clinic: never told to another clinic


# --- commands ---------------------------------------------------------------

clinic_names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
auths = st.builds(
    WriteAuth, st.frozensets(clinic_names, max_size=4), st.none() | clinic_names, st.booleans()
)


def _with(cls: type, **fields: st.SearchStrategy[object]) -> st.SearchStrategy[Any]:
    return st.builds(lambda head, **kw: cls(**head, **kw), write_heads(), **fields)


record_writes: st.SearchStrategy[Any] = st.one_of(
    _with(Put, record_id=ids, value=values),
    _with(CompareAndSet, record_id=ids, value=values, expected_version=uint64),
    _with(Delete, record_id=ids, expected_version=st.none() | uint64),
    batches(),
)
shares = st.builds(
    lambda ts, nonce, p, c, rv, cc: SharePatient(
        ts_ms=ts, nonce=nonce, patient_id=p, clinic=c, revoke=rv, caller_clinics=cc
    ),
    uint64, uint64, ids, clinic_names, st.booleans(), st.frozensets(clinic_names, max_size=4),
)


def _old_layout(cmd: Any) -> bytes:
    """The entry as a release without WriteAuth wrote it (hand-built, not via encode)."""
    head = [cmd.client_id, cmd.session, cmd.seq, cmd.ack_below, cmd.ts_ms, cmd.patient_id]
    if isinstance(cmd, Put):
        fields = [1, *head, cmd.record_id, cmd.value]
    elif isinstance(cmd, CompareAndSet):
        fields = [2, *head, cmd.record_id, cmd.value, cmd.expected_version]
    elif isinstance(cmd, Delete):
        fields = [3, *head, cmd.record_id, cmd.expected_version]
    else:
        tags = {"put": 0, "delete": 1, "check": 2}
        ops = [
            [tags[o.kind], o.record_id, o.value] if o.kind == "put"
            else [1, o.record_id] if o.kind == "delete"
            else [2, o.record_id, o.expected_version]
            for o in cmd.ops
        ]
        fields = [4, *head, ops]
    return bytes([FORMAT_V2]) + msgpack.packb(fields, use_bin_type=True)


@given(record_writes, auths)
def test_auth_round_trips_and_old_entries_decode_identically(cmd: Any, auth: WriteAuth) -> None:
    # An entry written before WriteAuth existed: decodes to the same command,
    # auth None, and a command without auth still encodes to those very bytes.
    old = _old_layout(cmd)
    assert decode_command(old) == cmd and cmd.auth is None
    assert encode_command(cmd) == old
    # With auth: one more trailing element, round trip, deterministic.
    authed = dataclasses.replace(cmd, auth=auth)
    data = encode_command(authed)
    assert data.startswith(old[:1]) and len(data) > len(old)
    assert decode_command(data) == authed
    assert encode_command(decode_command(data)) == data
    validate_command(authed)


@given(shares)
def test_share_patient_round_trips(cmd: SharePatient) -> None:
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data
    validate_command(cmd)
    assert cmd.wait_key == ("share", b"", cmd.nonce, 0)


def test_clinic_order_does_not_change_the_bytes() -> None:
    h = {"client_id": b"c" * 16, "session": 1, "seq": 1, "ack_below": 0, "ts_ms": 5,
         "patient_id": "p"}
    a = Put(**h, record_id="r", value=b"v", auth=WriteAuth(frozenset({"b", "a", "c"}), "a"))
    b = Put(**h, record_id="r", value=b"v", auth=WriteAuth(frozenset({"c", "a", "b"}), "a"))
    assert encode_command(a) == encode_command(b)


def _raw(fields: list[Any]) -> bytes:
    return bytes([FORMAT_V2]) + msgpack.packb(fields, use_bin_type=True)


HEAD = [b"c" * 16, 1, 1, 0, 5, SECRET]


@pytest.mark.parametrize("bad", [
    [1, *HEAD, "r", b"v", [["north"], None]],  # auth of 2 elements
    [1, *HEAD, "r", b"v", [["north"], None, 1]],  # break_glass not a bool
    [1, *HEAD, "r", b"v", ["north", None, False]],  # clinics not an array
    [1, *HEAD, "r", b"v", [[7], None, False]],  # a clinic not text
    [1, *HEAD, "r", b"v", [["north"], 7, False]],  # register clinic not text
    [1, *HEAD, "r", b"v", [[], None, False], "extra"],  # too many fields
    [5, *HEAD, [[], None, False]],  # an erasure never carries auth
    [8, 5, 1, SECRET, "north", 0, ["north"]],  # revoke not a bool
    [8, 5, 1, SECRET, "north", False],  # too short
    [9, 5, 1],  # reserved for AuditAnchor: not a command of this release
])
def test_malformed_auth_and_share_are_refused_without_quoting(bad: list[Any]) -> None:
    with pytest.raises(CommandDecodeError) as e:
        decode_command(_raw(bad))
    assert SECRET not in str(e.value) and "north" not in str(e.value)


def test_validation_of_clinic_names() -> None:
    share = SharePatient(ts_ms=1, nonce=1, patient_id="p", clinic="", revoke=False,
                         caller_clinics=frozenset({"north"}))
    with pytest.raises(ValidationError, match="clinic"):
        validate_command(share)
    with pytest.raises(ValidationError, match="at most"):
        validate_command(dataclasses.replace(share, clinic="x" * 129))
    h = {"client_id": b"c" * 16, "session": 1, "seq": 1, "ack_below": 0, "ts_ms": 5,
         "patient_id": "p"}
    with pytest.raises(ValidationError, match=r"auth\.clinics"):
        validate_command(Put(**h, record_id="r", value=b"", auth=WriteAuth(frozenset({""}))))


# --- state machine ---------------------------------------------------------


def north(register: str | None = "north", break_glass: bool = False) -> WriteAuth:
    return WriteAuth(frozenset({"north"}), register, break_glass)


class Writer(Client):
    """A Client whose record writes carry a WriteAuth."""

    def __init__(self, cid: bytes, auth: WriteAuth | None) -> None:
        super().__init__(cid)
        self.auth = auth

    def put(self, p: str, r: str, v: bytes, **kw: int) -> Put:
        return dataclasses.replace(super().put(p, r, v, **kw), auth=self.auth)

    def cas(self, p: str, r: str, v: bytes, expected: int) -> CompareAndSet:
        return dataclasses.replace(super().cas(p, r, v, expected), auth=self.auth)

    def delete(self, p: str, r: str, expected: int | None = None) -> Delete:
        return dataclasses.replace(super().delete(p, r, expected), auth=self.auth)

    def batch(self, p: str, *ops: BatchOp) -> Batch:
        return dataclasses.replace(super().batch(p, *ops), auth=self.auth)


def share(clinic: str, caller: set[str], revoke: bool = False, p: str = SECRET,
          nonce: int = 1) -> SharePatient:
    return SharePatient(ts_ms=1_000, nonce=nonce, patient_id=p, clinic=clinic, revoke=revoke,
                        caller_clinics=frozenset(caller))


NOT_YOURS = ("permission record.write denied: the patient is not registered to your "
             "clinic(s) (north)")


@pytest.fixture
def sm(db: plyvel.DB) -> PartitionStateMachine:
    return open_sm(db, history_retention=4)


def registered_elsewhere(sm: PartitionStateMachine) -> Feeder:
    """SECRET registered to HIDDEN by a first write of that clinic."""
    feed = Feeder(sm)
    south = Writer(b"s" * 16, WriteAuth(frozenset({HIDDEN}), HIDDEN)).opened(feed)
    assert feed.one(south.put(SECRET, "allergies", b"penicillin")).ok
    assert sm.registration(SECRET) == Registration(frozenset({HIDDEN}))
    return feed


def test_first_write_registers_the_patient(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    assert sm.registration(SECRET) == UNREGISTERED
    c = Writer(b"c" * 16, north()).opened(feed)
    res = feed.one(c.put(SECRET, "vitals", b"bp"))
    assert res.ok
    assert sm.registration(SECRET) == Registration(frozenset({"north"}))
    assert sm.registration("someone else") == UNREGISTERED
    # the registration lives under a keyed hash: no patient id, no clinic on disk
    raw = b"".join(k + v for k, v in sm.store.db.iterator())
    assert SECRET.encode() not in raw and b"north" not in raw


def test_write_to_another_clinics_patient_is_refused_and_remembered(
    sm: PartitionStateMachine,
) -> None:
    feed = registered_elsewhere(sm)
    c = Writer(b"c" * 16, north()).opened(feed)
    before = sm.snapshot()
    put = c.put(SECRET, "allergies", b"none")
    res = feed.one(put)
    assert (res.error_code, res.message, res.version) == (PERMISSION_DENIED, NOT_YOURS, 0)
    assert SECRET not in res.message and HIDDEN not in res.message
    assert sm.get(SECRET, "allergies").value == b"penicillin"  # type: ignore[union-attr]
    assert sm.registration(SECRET).clinics == {HIDDEN}
    # the same write again (a retry): the session's remembered answer, nothing applies
    again = feed.one(put)
    assert again.duplicate and again.error_code == PERMISSION_DENIED and again.message == NOT_YOURS
    # identical to what the interceptor's policy says for the same caller
    from node.auth.identity import CLINICIAN, Identity
    from node.auth.policy import KV, RequestFacts
    ident = Identity("dr", frozenset({CLINICIAN}), frozenset({"north"}))
    d = authorize(ident, KV + "Put", RequestFacts(SECRET, sm.registration(SECRET)))
    assert d.reason == NOT_YOURS
    assert sm.snapshot() != before  # only the session moved


@pytest.mark.parametrize("kind", ["cas", "delete", "batch"])
def test_every_record_write_is_checked(sm: PartitionStateMachine, kind: str) -> None:
    feed = registered_elsewhere(sm)
    c = Writer(b"c" * 16, north()).opened(feed)
    cmd: Command = {
        "cas": lambda: c.cas(SECRET, "allergies", b"x", 0),
        "delete": lambda: c.delete(SECRET, "allergies"),
        "batch": lambda: c.batch(SECRET, BatchOp("put", "notes", b"x")),
    }[kind]()
    assert feed.one(cmd).error_code == PERMISSION_DENIED
    assert sm.get(SECRET, "notes") is None


def test_break_glass_writes_anywhere_without_registering(sm: PartitionStateMachine) -> None:
    feed = registered_elsewhere(sm)
    er = Writer(b"e" * 16, north(break_glass=True)).opened(feed)
    assert feed.one(er.put(SECRET, "notes", b"unconscious")).ok
    assert sm.registration(SECRET).clinics == {HIDDEN}  # unchanged
    # unregistered patient, no clinic to register to: break-glass writes, registers nothing
    er2 = Writer(b"f" * 16, WriteAuth(frozenset(), None, True)).opened(feed)
    assert feed.one(er2.put("new patient", "notes", b"x")).ok
    assert sm.registration("new patient") == UNREGISTERED


def test_unregistered_patient_needs_a_clinic_to_register_to(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    two = Writer(b"t" * 16, WriteAuth(frozenset({"north", "east"}), None)).opened(feed)
    res = feed.one(two.put(SECRET, "r", b"v"))
    assert res.error_code == PERMISSION_DENIED
    assert res.message == ("permission record.write denied: a new patient is registered to one "
                           "clinic; name which of yours (east, north) in metadata medkv-clinic")
    outsider = Writer(b"o" * 16, WriteAuth(frozenset({"north"}), "west")).opened(feed)
    assert feed.one(outsider.put(SECRET, "r", b"v")).error_code == PERMISSION_DENIED
    assert sm.get(SECRET, "r") is None and sm.registration(SECRET) == UNREGISTERED


def test_a_failed_write_registers_nobody(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Writer(b"c" * 16, north()).opened(feed)
    assert feed.one(c.cas(SECRET, "r", b"v", 3)).error_code == FAILED_PRECONDITION
    assert feed.one(c.delete(SECRET, "r")).error_code == "NOT_FOUND"
    assert sm.registration(SECRET) == UNREGISTERED


def test_registration_is_seen_within_one_apply_round(sm: PartitionStateMachine) -> None:
    feed = Feeder(sm)
    c = Writer(b"c" * 16, north()).opened(feed)
    s = Writer(b"s" * 16, WriteAuth(frozenset({"south"}), "south")).opened(feed)
    first, second = feed(c.put(SECRET, "a", b"1"), s.put(SECRET, "b", b"2"))
    assert first.ok and second.error_code == PERMISSION_DENIED
    assert sm.registration(SECRET).clinics == {"north"}


def test_registrations_are_checked_from_the_cache_and_it_stays_current(
    db: plyvel.DB, sm: PartitionStateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clinic check at apply reads a known registration from memory, not
    from disk; every round that changes one (a first write, a share, an
    erasure, several in one round) leaves the cache equal to what is stored."""
    feed = registered_elsewhere(sm)  # warms the cache: SECRET -> HIDDEN
    reads: list[str] = []
    stored = sm.store.registration

    def counted(patient_id: str, *args: Any, **kwargs: Any) -> frozenset[str]:
        reads.append(patient_id)
        return stored(patient_id, *args, **kwargs)

    monkeypatch.setattr(sm.store, "registration", counted)
    south = Writer(b"t" * 16, WriteAuth(frozenset({HIDDEN}), HIDDEN)).opened(feed)
    assert feed.one(south.put(SECRET, "x", b"1")).ok
    assert reads == []
    c = Writer(b"c" * 16, north()).opened(feed)
    shared, put = feed(share("north", {HIDDEN}), c.put(SECRET, "y", b"2"))
    assert shared.ok and put.ok  # the share is seen by the next entry of its round
    assert sm.registration(SECRET).clinics == {HIDDEN, "north"}
    admin = Client(b"a" * 16).opened(feed)
    erased, fresh = feed(admin.erase(SECRET), c.put(SECRET, "z", b"3"))
    assert erased.ok and fresh.ok  # erased, then registered anew by the write
    assert sm.registration(SECRET).clinics == {"north"}
    monkeypatch.undo()
    assert open_sm(db).registration(SECRET).clinics == {"north"}  # what is stored


def test_writes_without_auth_are_not_checked(sm: PartitionStateMachine) -> None:
    feed = registered_elsewhere(sm)
    legacy = Client(b"l" * 16).opened(feed)  # an insecure node's write, or an old entry
    assert feed.one(legacy.put(SECRET, "allergies", b"x")).ok
    assert feed.one(legacy.put("fresh", "r", b"x")).ok
    assert sm.registration("fresh") == UNREGISTERED


def test_share_patient(sm: PartitionStateMachine) -> None:
    feed = registered_elsewhere(sm)

    def go(cmd: SharePatient) -> ApplyResult:
        res = feed.one(cmd)
        assert res.wait_key == cmd.wait_key
        return res

    # another clinic cannot add itself
    res = go(share("north", {"north"}))
    assert res.error_code == PERMISSION_DENIED and HIDDEN not in res.message
    assert res.message.startswith("permission registry.admin denied: the patient is not registered")
    # the patient's clinic shares it; twice changes nothing
    assert go(share("north", {HIDDEN})).ok
    assert go(share("north", {HIDDEN}, nonce=2)).ok
    assert sm.registration(SECRET).clinics == {HIDDEN, "north"}
    # now north may revoke the original clinic, but not the last one
    assert go(share(HIDDEN, {"north"}, revoke=True)).ok
    assert go(share(HIDDEN, {"north"}, revoke=True, nonce=3)).ok  # idempotent
    last = go(share("north", {"north"}, revoke=True))
    assert last.error_code == FAILED_PRECONDITION and "last clinic" in last.message
    assert sm.registration(SECRET).clinics == {"north"}
    # an unregistered patient: registered to one of the caller's clinics only
    assert go(share("west", {"north"}, p="new")).error_code == PERMISSION_DENIED
    assert go(share("north", {"north"}, p="new")).ok
    assert sm.registration("new").clinics == {"north"}


def test_erasure_removes_the_registration(sm: PartitionStateMachine) -> None:
    feed = registered_elsewhere(sm)
    admin = Client(b"a" * 16).opened(feed)
    assert feed.one(admin.erase(SECRET)).ok
    assert sm.registration(SECRET) == UNREGISTERED
    # a patient with a registration and no records: the erasure still owes a purge
    assert feed.one(share("north", {"north"}, p="only-registered")).ok
    res = feed.one(admin.erase("only-registered"))
    assert res.ok and sm.registration("only-registered") == UNREGISTERED
    assert [ob.kind for ob in sm.store.obligations()][-1] == OBLIGATION_ERASE
    assert any(ob.index == res.index for ob in sm.store.obligations())


def test_snapshot_carries_registrations(tmp_path: Path) -> None:
    a = plyvel.DB(str(tmp_path / "a"), create_if_missing=True)
    b = plyvel.DB(str(tmp_path / "b"), create_if_missing=True)
    try:
        src, dst = open_sm(a), open_sm(b, hash_key=bytes(range(1, 33)))  # other storage keys
        plain = src.snapshot()
        # no registrations: the end marker keeps its old shape
        assert plain.endswith(msgpack.packb(["end", 0, 0]))
        feed = Feeder(src)
        c = Writer(b"c" * 16, north()).opened(feed)
        feed(c.put(SECRET, "r", b"v"), share("east", {"north"}), share("north", {"x"}, p="p2"))
        assert src.registration("p2") == UNREGISTERED  # refused: x is not p2's caller clinic
        feed(share("x", {"x"}, p="p2"))
        dst.restore(src.snapshot())
        assert dst.registration(SECRET).clinics == {"north", "east"}
        assert dst.registration("p2").clinics == {"x"}
        # and the restore replaces registrations the receiver had
        feed2 = Feeder(dst)
        feed2(share("z", {"z"}, p="gone"))
        dst.restore(src.snapshot())
        assert dst.registration("gone") == UNREGISTERED
    finally:
        a.close()
        b.close()


def test_snapshot_parser_checks_registrations(make_store: Any) -> None:
    from node.record_store import SnapshotFormatError
    store: RecordStore = make_store()
    header = msgpack.packb(["medkv-partition-snapshot", 1, 7, 3, 1, 0])
    for item, end in [
        (["p", "p", []], ["end", 0, 0, 1]),  # no clinics
        (["p", "p", ["n", "n"]], ["end", 0, 0, 1]),  # repeated clinic
        (["p", "p", ["n"]], ["end", 0, 0]),  # count missing
        (["p", "p", ["n"]], ["end", 0, 0, 2]),  # count wrong
    ]:
        data = b"\x01" + header + msgpack.packb(item) + msgpack.packb(end)
        with pytest.raises(SnapshotFormatError):
            store.restore(data)
    ok = b"\x01" + header + msgpack.packb(["p", "p", ["n"]]) + msgpack.packb(["end", 0, 0, 1])
    store.restore(ok)
    assert store.registration("p") == {"n"}


_PATIENTS = ["p1", "p2", "p3"]
_CLINICS = ["north", "south", "east"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(_PATIENTS),
                          st.sets(st.sampled_from(_CLINICS), max_size=2),
                          st.sampled_from(_CLINICS), st.booleans()), max_size=40),
       st.randoms(use_true_random=False))
def test_replicas_fed_the_same_log_agree(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Any], rnd: random.Random
) -> None:
    tmp = tmp_path_factory.mktemp("agree")
    log: list[bytes] = []
    probe_db = plyvel.DB(str(tmp / "probe"), create_if_missing=True)
    try:
        probe = open_sm(probe_db)
        feed = Feeder(probe)
        writers = [Writer(bytes([65 + i]) * 16, None) for i in range(3)]
        for w in writers:
            w.opened(feed)
            log.append(encode_command(w.register()))
        for kind, p, clinics, clinic, flag in ops:
            w = writers[kind % 3]
            w.auth = WriteAuth(frozenset(clinics), clinic, flag and kind == 5)
            cmd: Command
            if kind == 0:
                cmd = w.put(p, "r", b"v")
            elif kind == 1:
                cmd = w.delete(p, "r")
            elif kind == 2:
                cmd = w.cas(p, "r", b"w", 0)
            elif kind == 3:
                cmd = share(clinic, set(clinics), revoke=flag, p=p, nonce=len(log))
            elif kind == 4:
                cmd = w.erase(p)
            else:
                cmd = w.batch(p, BatchOp("put", "s", b"b"))
            log.append(encode_command(cmd))
    finally:
        probe_db.close()
    snaps, regs, answers = [], [], []
    for run in range(2):
        db = plyvel.DB(str(tmp / f"r{run}"), create_if_missing=True)
        try:
            sm = open_sm(db)
            out: list[ApplyResult] = []
            i, base = 0, sm.applied_index
            while i < len(log):  # different apply-round splits per replica
                k = rnd.randint(1, 6)
                out += sm.apply([(base + i + j + 1, 1, log[i + j])
                                 for j in range(min(k, len(log) - i))])
                i += k
                if run == 1:  # one replica reads between rounds: its cache never lies
                    for p in _PATIENTS:
                        assert sm.registration(p).clinics == sm.store.registration(p)
            answers.append(out)
            snaps.append(sm.snapshot())
            regs.append([sm.registration(p) for p in _PATIENTS])
        finally:
            db.close()
    assert snaps[0] == snaps[1] and regs[0] == regs[1] and answers[0] == answers[1]


# --- ReplicatedRegistry ----------------------------------------------------


def test_replicated_registry_reads_the_local_replica(sm: PartitionStateMachine) -> None:
    registered_elsewhere(sm)
    from proto.placement import partition_of
    partitions = 4
    p = partition_of(SECRET, partitions)
    replica = SimpleNamespace(sm=sm, broken="", installing=False, partition=p)
    host = SimpleNamespace(
        replicas={p: replica},
        placement=SimpleNamespace(partition_of=lambda pid: partition_of(pid, partitions)),
    )
    reg = ReplicatedRegistry(host)  # type: ignore[arg-type]
    assert reg.lookup(SECRET) == Registration(frozenset({HIDDEN}))
    other = next(x for x in (f"q{i}" for i in range(100)) if partition_of(x, partitions) != p)
    assert reg.lookup(other) == NOT_HELD  # no replica here: the serving node decides
    same = next(x for x in (f"q{i}" for i in range(100)) if partition_of(x, partitions) == p)
    assert reg.lookup(same) == UNREGISTERED
    replica.installing = True
    assert reg.lookup(SECRET) == NOT_HELD
    replica.installing, replica.broken = False, "damaged"
    assert reg.lookup(SECRET) == NOT_HELD


def test_replicated_registry_defers_on_an_unreadable_registration(db: plyvel.DB) -> None:
    store = RecordStore(db.prefixed_db(b"sm/"), 0, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY))
    sm = PartitionStateMachine(store)
    stage = store.begin()
    store.put_registration(stage, SECRET, {"north"})
    store.commit(stage)
    for k, v in list(db.iterator()):  # tamper with every value: fails to open
        db.put(k, v[:-1] + bytes([v[-1] ^ 1]))
    host = SimpleNamespace(replicas={0: SimpleNamespace(sm=sm, broken="", installing=False,
                                                        partition=0)},
                           placement=SimpleNamespace(partition_of=lambda pid: 0))
    assert ReplicatedRegistry(host).lookup(SECRET) == NOT_HELD  # type: ignore[arg-type]


def test_a_streamed_snapshot_install_carries_registrations(tmp_path: Path) -> None:
    """node.snapshots' batched install (the path a lagging replica takes) keeps the
    registrations and replaces the receiver's own."""
    import asyncio

    from node.snapshots import install_staged
    from tests.node_unit.snapshot_helpers import chunks_of, send_side, stream
    from tests.node_unit.test_snapshot_stream import Pair

    pair = Pair(tmp_path, dst_hash_key=b"another node's key.............!")
    try:
        src = Feeder(pair.src)
        for i in range(30):
            src(share("north", {"north"}, p=f"patient-{i}", nonce=i))
        src(share("east", {"north"}, p="patient-3", nonce=99))
        Feeder(pair.dst)(share("z", {"z"}, p="stale"))

        async def go() -> None:
            msg, declared, data = await send_side(pair.src_mgr)
            _, got = await pair.dst_mgr.receive(stream(chunks_of(msg, declared, data, 64)),
                                                1 << 30)
            assert got.snapshot is not None
            install_staged(pair.dst.store, got.snapshot.meta.index, got.snapshot.meta.term,
                           lambda fn: fn())

        asyncio.run(go())
        pair.dst.reload()
        assert pair.dst.registration("patient-3").clinics == {"north", "east"}
        assert all(pair.dst.registration(f"patient-{i}").registered for i in range(30))
        assert pair.dst.registration("stale") == UNREGISTERED
        # (the snapshots' bytes differ: items come in each node's storage-key order)
    finally:
        pair.close()
