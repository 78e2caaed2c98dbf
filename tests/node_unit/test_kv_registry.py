"""KVService with access control, over a real state machine (no network).

A fake host applies each proposal to one PartitionStateMachine at once, so
what is under test is the service's half: the WriteAuth a write carries (from
current_call()), the re-check of reads against the serving replica's
registration (unary and inside BatchCommands), SharePatient, and how apply's
PERMISSION_DENIED reaches the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import plyvel
import pytest

from node.auth.identity import ANALYST, BREAK_GLASS, CLINIC_ADMIN, CLINICIAN, Identity
from node.auth.interceptor import _CURRENT, CallAuth
from node.auth.policy import KV, NOT_HELD, RequestFacts, authorize
from node.commands import WriteAuth
from node.errors import FailedPrecondition, NotFound, PermissionDenied
from node.grpc_errors import to_status
from node.kv_service import KVService, write_auth
from node.registry import ReplicatedRegistry
from node.state_machine import ApplyResult, PartitionStateMachine
from proto.medkv.v1 import common_pb2, kv_pb2
from tests.node_unit.test_state_machine import open_sm

T = TypeVar("T")
PATIENT = "Jane Q. Patient 1970-01-01"
CID = b"k" * 16
BATCH_COMMANDS = KV + "BatchCommands"


class FakeReplica:
    def __init__(self, sm: PartitionStateMachine) -> None:
        self.sm = sm
        self.partition = 0
        self.is_leader = True
        self.broken = ""
        self.installing = False
        self.commit = 0
        self.lag = 0
        self.leader = 1

    @property
    def applied(self) -> int:
        return self.sm.applied_index

    def staleness(self, mono: float, wall: float) -> float:
        return 0.0


class FakeHost:
    """Applies a proposal the moment it is made (one replica, always the leader)."""

    node_id = 1

    def __init__(self, sm: PartitionStateMachine) -> None:
        self.r = FakeReplica(sm)
        self.replicas = {0: self.r}
        self.placement = SimpleNamespace(partition_of=lambda patient_id: 0)

    async def propose(self, p: int, wait_key: Any, encode: Callable[[int], bytes],
                      timeout: float) -> ApplyResult:
        sm = self.r.sm
        res = sm.apply([(sm.applied_index + 1, 1, encode(1_000))])[0]
        assert res.wait_key == wait_key
        return res

    def leader_replica(self, p: int) -> FakeReplica:
        return self.r

    def replica(self, p: int) -> FakeReplica:
        return self.r

    async def read_barrier(self, p: int, timeout: float) -> FakeReplica:
        return self.r

    def stamp_ms(self, r: FakeReplica) -> int:
        return 1_000

    def leader_hint(self, r: FakeReplica) -> str:
        return ""

    def mark_broken(self, r: FakeReplica, e: BaseException) -> None:
        raise AssertionError("no integrity error expected")


@pytest.fixture
def kv(db: plyvel.DB) -> KVService:
    sm = open_sm(db)
    host = FakeHost(sm)
    node = SimpleNamespace(
        host=host,
        cfg=SimpleNamespace(placement=host.placement, partitions=1,
                            limits=SimpleNamespace(request_timeout_s=5.0,
                                                   max_in_flight_per_stream=8)),
        layout=SimpleNamespace(index_key=b"i" * 32),
    )
    return KVService(node)  # type: ignore[arg-type]


def who(name: str, *roles: str, clinics: tuple[str, ...] = ("north",)) -> Identity:
    return Identity(name, frozenset(roles), frozenset(clinics))


def run_as(
    kv: KVService, ident: Identity | None, method: str, patient: str | None,
    op: Callable[[], Awaitable[T]], *, clinic: str | None = None, reason: str = "",
    consistency: str = "linearizable", held: bool = True,
) -> T:
    """Run op as the interceptor would have let it through (held=False: the
    interceptor's node held no replica of the patient, so patient scope is deferred)."""

    async def go() -> T:
        if ident is not None:
            reg = NOT_HELD
            if held and patient is not None:
                reg = ReplicatedRegistry(kv.host).lookup(patient)  # type: ignore[arg-type]
            facts = RequestFacts(patient, reg, consistency, clinic, reason)
            d = authorize(ident, method, facts)
            if not d.allowed:
                raise PermissionDenied(d.reason)
            _CURRENT.set(CallAuth(ident, method, d, facts))
        return await op()

    return asyncio.run(go())


def session(kv: KVService, ident: Identity | None) -> int:
    reply = run_as(kv, ident, KV + "OpenSession", None,
                   lambda: kv.open_session(kv_pb2.OpenSessionRequest(client_id=CID, partition=0)))
    return int(reply.session)


class Writes:
    """One caller's writes: its session, increasing seqs."""

    def __init__(self, kv: KVService, ident: Identity | None, **kw: Any) -> None:
        self.kv, self.ident, self.kw = kv, ident, kw
        self.session = session(kv, ident)
        self.seq = 0

    def wid(self, seq: int | None = None) -> common_pb2.WriteId:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return common_pb2.WriteId(client_id=CID, session=self.session, seq=seq)

    def put(self, patient: str, record: str, value: bytes, seq: int | None = None,
            **kw: Any) -> kv_pb2.PutResponse:
        req = kv_pb2.PutRequest(write_id=self.wid(seq), patient_id=patient, record_id=record,
                                value=value)
        return run_as(self.kv, self.ident, KV + "Put", patient, lambda: self.kv.put(req),
                      **{**self.kw, **kw})


def get(kv: KVService, ident: Identity | None, patient: str, record: str = "r",
        method: str = KV + "Get", mode: int = common_pb2.LINEARIZABLE, **kw: Any) -> bytes:
    req = kv_pb2.GetRequest(patient_id=patient, record_id=record,
                            read=common_pb2.ReadOptions(consistency=mode))
    consistency = {common_pb2.LINEARIZABLE: "linearizable", common_pb2.FOLLOWER: "follower"}[mode]
    reply = run_as(kv, ident, method, patient, lambda: kv.get(req), consistency=consistency, **kw)
    return bytes(reply.record.value)


NORTH = who("dr-north", CLINICIAN)
SOUTH = who("dr-south", CLINICIAN, clinics=("south",))


def test_a_write_registers_and_another_clinic_is_refused_at_apply(kv: KVService) -> None:
    north = Writes(kv, NORTH)
    assert north.put(PATIENT, "r", b"v").version > 0
    assert kv.host.r.sm.registration(PATIENT).clinics == {"north"}
    # the interceptor's node held no replica (deferred): apply decides, with the policy's words
    south = Writes(kv, SOUTH, held=False)
    with pytest.raises(PermissionDenied) as e:
        south.put(PATIENT, "r", b"overwrite", seq=1)
    msg = e.value.message
    assert msg == ("permission record.write denied: the patient is not registered to your "
                   "clinic(s) (south)")
    assert to_status(e.value).code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    # a retry of the same write: the session remembers the refusal
    with pytest.raises(PermissionDenied) as again:
        south.put(PATIENT, "r", b"overwrite", seq=1)
    assert again.value.message == msg
    assert get(kv, NORTH, PATIENT) == b"v"


def test_an_insecure_node_writes_without_a_check(kv: KVService) -> None:
    Writes(kv, NORTH).put(PATIENT, "r", b"v")
    anyone = Writes(kv, None)
    assert anyone.put(PATIENT, "r", b"w").version > 0
    assert get(kv, None, PATIENT) == b"w"
    assert kv.host.r.sm.registration("other").clinics == frozenset()


def test_reads_are_checked_on_the_serving_replica(kv: KVService) -> None:
    Writes(kv, NORTH).put(PATIENT, "r", b"v")
    assert get(kv, NORTH, PATIENT, held=False) == b"v"
    with pytest.raises(PermissionDenied) as e:
        get(kv, SOUTH, PATIENT, held=False)
    # an unknown patient is refused with the very same words (never NOT_FOUND)
    with pytest.raises(PermissionDenied) as unknown:
        get(kv, SOUTH, "nobody", held=False)
    assert e.value.message == unknown.value.message
    assert PATIENT not in e.value.message and "north" not in e.value.message
    with pytest.raises(NotFound):
        get(kv, NORTH, PATIENT, record="missing", held=False)
    # break-glass with a reason reads; an analyst's follower read is not checked per patient
    er = who("dr-er", CLINICIAN, BREAK_GLASS, clinics=("south",))
    assert get(kv, er, PATIENT, held=False, reason="unconscious") == b"v"
    analyst = who("stats", ANALYST, clinics=())
    assert get(kv, analyst, PATIENT, mode=common_pb2.FOLLOWER) == b"v"


def test_requests_inside_batch_commands_are_checked_one_by_one(kv: KVService) -> None:
    Writes(kv, NORTH).put(PATIENT, "r", b"v")
    assert get(kv, NORTH, PATIENT, method=BATCH_COMMANDS) == b"v"
    with pytest.raises(PermissionDenied):
        get(kv, SOUTH, PATIENT, method=BATCH_COMMANDS)
    analyst = who("stats", ANALYST, clinics=())
    assert get(kv, analyst, PATIENT, method=BATCH_COMMANDS, mode=common_pb2.FOLLOWER) == b"v"
    with pytest.raises(PermissionDenied, match="reads from replicas only"):
        get(kv, analyst, PATIENT, method=BATCH_COMMANDS)  # linearizable: the leader's path
    # a write inside the stream registers to the request's clinic, or the only one
    multi = who("dr-multi", CLINICIAN, clinics=("north", "east"))
    stream = Writes(kv, multi, clinic="east")
    req = kv_pb2.PutRequest(write_id=stream.wid(), patient_id="p2", record_id="r", value=b"x")
    run_as(kv, multi, BATCH_COMMANDS, None, lambda: kv.put(req), clinic="east")
    assert kv.host.r.sm.registration("p2").clinics == {"east"}


def test_write_auth_from_the_call() -> None:
    assert write_auth(None) is None

    def call(ident: Identity, method: str = KV + "Put", clinic: str | None = None,
             reason: str = "") -> CallAuth:
        facts = RequestFacts("p", NOT_HELD, clinic=clinic, break_glass_reason=reason)
        return CallAuth(ident, method, authorize(ident, method, facts), facts)

    multi = who("m", CLINICIAN, clinics=("north", "east"))
    assert write_auth(call(NORTH)) == WriteAuth(frozenset({"north"}), "north", False)
    assert write_auth(call(multi, clinic="east")) == WriteAuth(frozenset({"north", "east"}), "east")
    assert write_auth(call(multi, clinic="west")) == WriteAuth(frozenset({"north", "east"}), None)
    assert write_auth(call(multi, BATCH_COMMANDS, clinic="north")).register_clinic == "north"
    er = who("er", CLINICIAN, BREAK_GLASS)
    assert write_auth(call(er, reason="  ")).break_glass is False
    assert write_auth(call(er, reason="ER")).break_glass is True
    assert write_auth(call(NORTH, reason="ER")).break_glass is False  # no break-glass role


def share(kv: KVService, ident: Identity | None, patient: str, clinic: str,
          revoke: bool = False) -> kv_pb2.SharePatientResponse:
    req = kv_pb2.SharePatientRequest(patient_id=patient, clinic=clinic, revoke=revoke)
    return run_as(kv, ident, KV + "SharePatient", patient, lambda: kv.share_patient(req),
                  held=False)


def test_share_patient(kv: KVService) -> None:
    with pytest.raises(FailedPrecondition, match="needs access control"):
        share(kv, None, PATIENT, "north")
    Writes(kv, NORTH).put(PATIENT, "r", b"v")
    admin_north = who("ca-north", CLINIC_ADMIN)
    admin_south = who("ca-south", CLINIC_ADMIN, clinics=("south",))
    with pytest.raises(PermissionDenied, match=r"registry\.admin"):
        share(kv, admin_south, PATIENT, "south")
    reply = share(kv, admin_north, PATIENT, "south")
    assert list(reply.clinics) == ["north", "south"] and reply.index == kv.host.r.sm.applied_index
    assert get(kv, SOUTH, PATIENT, held=False) == b"v"  # south now reads it
    assert list(share(kv, admin_south, PATIENT, "north", revoke=True).clinics) == ["south"]
    with pytest.raises(PermissionDenied):
        get(kv, NORTH, PATIENT, held=False)
    with pytest.raises(FailedPrecondition, match="last clinic"):
        share(kv, admin_south, PATIENT, "south", revoke=True)


def test_the_interceptor_reads_share_patients_target_clinic_from_the_request() -> None:
    """OWN_CLINIC scope for an unregistered patient needs the target clinic: it is
    the request's `clinic` field, not medkv-clinic metadata."""
    from node.auth.interceptor import AccessControl, _Call
    from node.auth.policy import InMemoryRegistry

    ctx = SimpleNamespace(invocation_metadata=lambda: (), peer=lambda: "ipv4:127.0.0.1:1")
    method = KV + "SharePatient"
    call = _Call(AccessControl(verifier=None, registry=InMemoryRegistry()), method, ctx)  # type: ignore[arg-type]
    req = kv_pb2.SharePatientRequest(patient_id=PATIENT, clinic="north")
    _, rf = call.facts_for(method, req)
    assert rf.clinic == "north" and rf.registration.known and not rf.registration.registered
    assert authorize(who("ca", CLINIC_ADMIN), method, rf).allowed
    _, rf = call.facts_for(method, kv_pb2.SharePatientRequest(patient_id=PATIENT, clinic="west"))
    assert not authorize(who("ca", CLINIC_ADMIN), method, rf).allowed
