"""The clinic-facing KV service: validation, routing to the partition, and the
read modes of DESIGN.md (linearizable by ReadIndex, follower, bounded,
read-your-writes).

Each operation is one coroutine that returns its reply or raises NodeError,
so the unary RPCs and the multiplexed BatchCommands stream share it.

Access control (issue 11; node.auth.interceptor authenticated and authorized
the call before it gets here, and current_call() says who it is; None on an
insecure node, where nothing below applies):
  * writes carry a WriteAuth (the caller's clinics, the clinic a new patient
    is registered to, break-glass), and the partition's state machine decides
    at apply against the replicated registration;
  * reads in clinic scope are checked again against the registration of the
    replica that serves them, once it reached the read's index, before
    anything about the record is read (a refusal says nothing about whether
    the patient exists);
  * SharePatient proposes a SharePatient command on the partition's leader.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import plyvel

from node import commands as cmd
from node.auth import PermissionDenied as AuthPermissionDenied
from node.auth.identity import BREAK_GLASS
from node.auth.interceptor import CallAuth, current_call
from node.auth.policy import KV as KV_METHOD_PREFIX
from node.auth.policy import STREAM_REQUEST_METHODS, Registration
from node.crypto import IntegrityError
from node.errors import (
    NOT_APPLIED,
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NodeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from node.grpc_errors import abort_with, to_status
from node.host import Replica
from node.limits import (
    ValidationError,
    validate_client_id,
    validate_ids,
    validate_uint64,
    validate_value,
    validate_write_id,
)
from node.read_snapshots import SnapshotInterrupted
from node.record_store import CorruptRecordError
from node.state_machine import ApplyResult
from proto.medkv.v1 import admin_pb2, common_pb2, kv_pb2, kv_pb2_grpc

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.kv")

T = TypeVar("T")
INTEGRITY_ERRORS = (CorruptRecordError, IntegrityError, plyvel.CorruptionError)

DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1000
DEFAULT_SCAN_PAGE = 256
MAX_SCAN_PAGE = 4096

_ERROR: dict[str, tuple[type[NodeError], str]] = {
    "FAILED_PRECONDITION": (FailedPrecondition, "version-conflict"),
    "NOT_FOUND": (NotFound, ""),
    "INVALID_ARGUMENT": (InvalidArgument, ""),
    "RESOURCE_EXHAUSTED": (ResourceExhausted, NOT_APPLIED),
    "SESSION_EXPIRED": (FailedPrecondition, "session-expired"),
    "RESULT_FORGOTTEN": (FailedPrecondition, "result-forgotten"),
    "SESSION_NOT_OWNED": (PermissionDenied, ""),
    "PERMISSION_DENIED": (PermissionDenied, ""),
}
_BATCH_COMMANDS = KV_METHOD_PREFIX + "BatchCommands"
_CONSISTENCY_NAMES = {
    common_pb2.LINEARIZABLE: "linearizable", common_pb2.FOLLOWER: "follower",
    common_pb2.BOUNDED: "bounded",
}
# Which grants a unary read's decision must be re-checked for, where the data is.
_PATIENT_SCOPES = ("clinic", "break-glass")


def session_owner(client_id: bytes) -> bytes:
    """The owner a session is registered to and every write in it must carry.

    With access control on, a client id is bound to the caller's token subject
    (and issuer): the node replaces it by a hash of both, the same
    on every node, so a session opened by one subject cannot be used or
    advanced by another even if its client id and session id leak: the other
    caller's writes carry a different owner and are refused SESSION_NOT_OWNED
    at apply. Without access control (`insecure = true`) the client id is the
    owner, as before."""
    call = current_call()
    if call is None:
        return client_id
    ident = call.identity
    h = hashlib.blake2b(digest_size=len(client_id), person=b"medkv-session")
    for part in (ident.issuer.encode(), ident.subject.encode(), client_id):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def validate_session(session: object, field: str = "write_id.session") -> None:
    """A write names its session: 0 means the client never opened one (an old client)."""
    validate_uint64(session, field)
    if session == 0:
        raise ValidationError(field, "must be set: open a session with KV.OpenSession first")


def _checked(res: ApplyResult, partition: int) -> int:
    if res.error_code is not None:
        err, kind = _ERROR.get(res.error_code, (FailedPrecondition, ""))
        if res.error_code == "PERMISSION_DENIED":
            # The policy's words exactly, as the interceptor would have refused.
            raise err(res.message, kind=kind)
        raise err(f"partition {partition}: {res.message}", kind=kind)
    return res.version


def write_auth(call: CallAuth | None) -> cmd.WriteAuth | None:
    """What a record write carries for the clinic check at apply (None: no
    access control on this node, not checked).

    The register clinic (for a patient nobody has registered yet): the one the
    policy chose, else the request's medkv-clinic when it is one of the
    caller's, else the caller's only clinic. Inside BatchCommands the call is
    the stream's (same identity and metadata), whose decision chose none."""
    if call is None:
        return None
    ident = call.identity
    clinics = frozenset(ident.clinics)
    register = call.decision.register_clinic
    if register is None:
        named = call.facts.clinic
        if named is not None and named in clinics:
            register = named
        elif len(clinics) == 1:
            (register,) = clinics
    break_glass = BREAK_GLASS in ident.roles and bool(call.facts.break_glass_reason.strip())
    return cmd.WriteAuth(clinics, register, break_glass)


def _linearizable(read: common_pb2.ReadOptions) -> bool:
    """Get and History default to linearizable reads, confirmed by ReadIndex."""
    return (read.consistency or common_pb2.LINEARIZABLE) == common_pb2.LINEARIZABLE


def token_fingerprint(index_key: bytes) -> bytes:
    """Scan resume tokens are storage keys; they carry a fingerprint of the
    storage-key secret so a replica with other keys refuses them, not misreads."""
    return hashlib.blake2b(index_key, digest_size=8, person=b"medkv-scan-tok").digest()


# The unary method each multiplexed request kind stands for (metrics labels).
_STREAM_METHOD_NAMES = {
    "put": "Put", "get": "Get", "cas": "CompareAndSet", "delete": "Delete",
    "history": "History", "batch": "Batch", "open_session": "OpenSession",
}
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}

class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.host = node.host
        self.placement = node.cfg.placement
        self.timeout = node.cfg.limits.request_timeout_s
        self.in_flight = 0  # unary calls being served: shutdown waits for them
        self._token_fp = token_fingerprint(node.layout.index_key)

    # ---- helpers ---------------------------------------------------------

    def _deadline(self, context: grpc.aio.ServicerContext | None) -> float:
        """How long a request may wait: the node's request timeout, or less to
        answer before the caller's deadline (leaving the reply time to travel)."""
        if context is not None:
            remaining = context.time_remaining()
            if remaining is not None:
                margin = min(0.5, max(0.05, remaining * 0.1))
                return max(0.05, min(self.timeout, remaining - margin))
        return self.timeout

    def read_state(self, r: Replica, *, confirmed: bool = False) -> common_pb2.ReadState:
        """What a reply says about the state it was read from. `confirmed`: a
        ReadIndex round just confirmed it current (a linearizable read, or a
        write applied through this leader), so it is not stale at all."""
        if confirmed and r.is_leader:
            staleness, lag = 0.0, 0
        else:
            staleness, lag = r.staleness(time.monotonic(), time.time()), r.lag
        return common_pb2.ReadState(
            partition=r.partition,
            node_id=self.host.node_id,
            applied_index=r.applied,
            commit_index=r.commit,
            lag_entries=lag,
            staleness_seconds=staleness,
            from_leader=r.is_leader,
        )

    async def _replica_for_read(
        self, partition: int, read: common_pb2.ReadOptions, timeout: float, default: int
    ) -> Replica:
        mode = read.consistency or default
        if mode == common_pb2.LINEARIZABLE:
            r = await self.host.read_barrier(partition, timeout)
        elif mode in (common_pb2.FOLLOWER, common_pb2.BOUNDED):
            r = self.host.replica(partition)
            if mode == common_pb2.BOUNDED:
                if read.max_staleness_ms == 0:
                    raise InvalidArgument("read.max_staleness_ms: must be > 0 with BOUNDED consistency")
                staleness = r.staleness(time.monotonic(), time.time())
                if staleness < 0 or staleness * 1000.0 > read.max_staleness_ms:
                    if r.is_leader:
                        # The leader need not refuse: a ReadIndex round makes
                        # it current (the reply then states staleness 0).
                        r = await self.host.read_barrier(partition, timeout)
                    else:
                        shown = "unknown" if staleness < 0 else f"{staleness:.3f}s"
                        raise FailedPrecondition(
                            f"partition {partition} on node {self.host.node_id} is too stale for "
                            f"this read: staleness {shown}, lag {r.lag} entries, "
                            f"bound {read.max_staleness_ms}ms",
                            self.host.leader_hint(r),
                            kind="too-stale",
                        )
        else:
            raise InvalidArgument(f"read.consistency: unknown mode {read.consistency}")
        if read.min_version and r.applied < read.min_version:
            await self.host.wait_applied(r, read.min_version, timeout)
        return r

    def _read(self, r: Replica, read: Callable[[], T]) -> T:
        """Run a state-machine read; a stored value that fails its integrity
        check takes this replica of the partition out of service (the others
        serve it) and answers DATA_LOSS, never wrong data."""
        try:
            return read()
        except INTEGRITY_ERRORS as e:
            self.host.mark_broken(r, e)
            raise DataLoss(r.broken) from None

    def _check_read(
        self, r: Replica, patient_id: str, read: common_pb2.ReadOptions, kind: str
    ) -> None:
        """The clinic scope of a read, against the registration of the replica
        that serves it (reached the read's index already). Raises PermissionDenied.

        A unary call is re-checked when its grant depends on the patient (clinic,
        break-glass, or deferred because the interceptor's node held no replica);
        an analyst's replica-scope read is not. Inside BatchCommands the stream's
        decision says nothing about this request, so the request is authorized
        here in full, as its unary method and with its own read consistency."""
        call = current_call()
        if call is None:
            return
        if call.method == _BATCH_COMMANDS:
            method = STREAM_REQUEST_METHODS[kind]
            consistency = _CONSISTENCY_NAMES.get(
                read.consistency or common_pb2.LINEARIZABLE, "linearizable"
            )
            facts = replace(call.facts, patient_id=patient_id,
                            registration=self._registration(r, patient_id),
                            consistency=consistency)
            d = call.policy.authorize(call.identity, method, facts)
            if not d.allowed:
                raise PermissionDenied(d.reason)
            return
        if not (call.decision.deferred or call.decision.scope in _PATIENT_SCOPES):
            return
        registration = self._registration(r, patient_id)
        if not call.decision.deferred and registration == call.facts.registration \
                and patient_id == call.facts.patient_id:
            return  # decided on this very registration: deciding again changes nothing
        try:
            call.check_patient(patient_id, registration)
        except AuthPermissionDenied as e:
            raise PermissionDenied(e.message) from None

    def _registration(self, r: Replica, patient_id: str) -> Registration:
        return self._read(r, lambda: r.sm.registration(patient_id))

    def _partition(self, patient_id: str) -> int:
        return self.placement.partition_of(patient_id)

    async def _write(
        self,
        write_id: common_pb2.WriteId,
        patient_id: str,
        build: Callable[[dict[str, Any]], cmd.WriteCommand],
        context: Any,
        auth: cmd.WriteAuth | None = None,
    ) -> tuple[int, Replica]:
        """Propose the write build(head) makes; the head carries the leader's
        stamp and, for a record write, `auth` (write_auth)."""
        validate_session(write_id.session)
        p = self._partition(patient_id)
        extra: dict[str, Any] = {} if auth is None else {"auth": auth}
        probe = build({**self._write_fields(write_id, 0), **extra})

        def encode(stamp_ms: int) -> bytes:
            return cmd.encode_command(build({**self._write_fields(write_id, stamp_ms), **extra}))

        res = await self.host.propose(p, probe.wait_key, encode, self._deadline(context))
        return _checked(res, p), self.host.replicas[p]

    @staticmethod
    def _write_fields(write_id: common_pb2.WriteId, ts_ms: int) -> dict[str, Any]:
        return {
            "client_id": session_owner(write_id.client_id),
            "session": write_id.session,
            "seq": write_id.seq,
            "ack_below": write_id.ack_below,
            "ts_ms": ts_ms,
        }

    async def open_session(
        self, req: kv_pb2.OpenSessionRequest, context: Any = None
    ) -> kv_pb2.OpenSessionResponse:
        """Open a write session on one partition: a replicated RegisterSession."""
        validate_client_id(req.client_id, "client_id")
        partitions = self.node.cfg.partitions
        if req.partition >= partitions:
            raise InvalidArgument(f"partition: {req.partition} does not exist (0..{partitions - 1})")
        p = req.partition
        r = self.host.leader_replica(p)
        limit = r.sm.settings.max_sessions
        if r.sm.sessions_open_at(self.host.stamp_ms(r)) >= limit:
            # Refused before proposing, so a spray of new clients does not fill
            # the log; the authoritative check is at apply (same rule).
            self.host.metrics.reject("max_sessions")
            raise ResourceExhausted(
                f"partition {p}: {limit} sessions are open (max_sessions); no open session is "
                "ever evicted, so retry once one expires, or raise max_sessions",
                kind=NOT_APPLIED, partition=p,
            )
        nonce = int.from_bytes(os.urandom(8), "big") >> 1
        owner = session_owner(req.client_id)
        probe = cmd.RegisterSession(ts_ms=0, client_id=owner, nonce=nonce)

        def encode(stamp_ms: int) -> bytes:
            return cmd.encode_command(
                cmd.RegisterSession(ts_ms=stamp_ms, client_id=owner, nonce=nonce)
            )

        res = await self.host.propose(p, probe.wait_key, encode, self._deadline(context))
        session = _checked(res, p)
        settings = self.host.replicas[p].sm.settings
        return kv_pb2.OpenSessionResponse(
            session=session, partition=p, ttl_ms=settings.session_ttl_ms,
            max_results=settings.max_results_per_session,
        )

    # ---- operations (shared by unary RPCs and BatchCommands) -------------

    async def put(self, req: kv_pb2.PutRequest, context: Any = None) -> kv_pb2.PutResponse:
        validate_write_id(req.write_id.client_id, req.write_id.seq, req.write_id.ack_below)
        validate_ids(req.patient_id, req.record_id)
        validate_value(req.value)
        version, r = await self._write(
            req.write_id, req.patient_id,
            lambda head: cmd.Put(
                **head, patient_id=req.patient_id, record_id=req.record_id, value=req.value
            ),
            context, write_auth(current_call()),
        )
        return kv_pb2.PutResponse(version=version, read_state=self.read_state(r, confirmed=True))

    async def cas(
        self, req: kv_pb2.CompareAndSetRequest, context: Any = None
    ) -> kv_pb2.CompareAndSetResponse:
        validate_write_id(req.write_id.client_id, req.write_id.seq, req.write_id.ack_below)
        validate_ids(req.patient_id, req.record_id)
        validate_value(req.value)
        version, r = await self._write(
            req.write_id, req.patient_id,
            lambda head: cmd.CompareAndSet(
                **head, patient_id=req.patient_id, record_id=req.record_id, value=req.value,
                expected_version=req.expected_version,
            ),
            context, write_auth(current_call()),
        )
        return kv_pb2.CompareAndSetResponse(version=version, read_state=self.read_state(r, confirmed=True))

    async def delete(self, req: kv_pb2.DeleteRequest, context: Any = None) -> kv_pb2.DeleteResponse:
        validate_write_id(req.write_id.client_id, req.write_id.seq, req.write_id.ack_below)
        validate_ids(req.patient_id, req.record_id)
        expected = req.expected_version if req.has_expected_version else None
        version, r = await self._write(
            req.write_id, req.patient_id,
            lambda head: cmd.Delete(
                **head, patient_id=req.patient_id, record_id=req.record_id,
                expected_version=expected,
            ),
            context, write_auth(current_call()),
        )
        return kv_pb2.DeleteResponse(version=version, read_state=self.read_state(r, confirmed=True))

    async def batch(self, req: kv_pb2.BatchRequest, context: Any = None) -> kv_pb2.BatchResponse:
        validate_write_id(req.write_id.client_id, req.write_id.seq, req.write_id.ack_below)
        validate_ids(req.patient_id, None)
        ops: list[cmd.BatchOp] = []
        for i, op in enumerate(req.ops):
            kind = op.WhichOneof("op")
            if kind == "put":
                validate_ids(req.patient_id, op.put.record_id, field_prefix=f"ops[{i}].put.")
                validate_value(op.put.value, field=f"ops[{i}].put.value")
                ops.append(cmd.BatchOp("put", op.put.record_id, op.put.value, None))
            elif kind == "delete":
                validate_ids(req.patient_id, op.delete.record_id, field_prefix=f"ops[{i}].delete.")
                ops.append(cmd.BatchOp("delete", op.delete.record_id, b"", None))
            elif kind == "check":
                validate_ids(req.patient_id, op.check.record_id, field_prefix=f"ops[{i}].check.")
                ops.append(cmd.BatchOp("check", op.check.record_id, b"", op.check.expected_version))
            else:
                raise InvalidArgument(f"ops[{i}]: no operation set")
        cmd.validate_batch(
            cmd.Batch(**self._write_fields(req.write_id, 0), patient_id=req.patient_id, ops=tuple(ops))
        )
        version, r = await self._write(
            req.write_id, req.patient_id,
            lambda head: cmd.Batch(**head, patient_id=req.patient_id, ops=tuple(ops)),
            context, write_auth(current_call()),
        )
        return kv_pb2.BatchResponse(version=version, read_state=self.read_state(r, confirmed=True))

    async def erase_patient(self, req: admin_pb2.ErasePatientRequest) -> int:
        validate_write_id(req.client_id, req.seq)
        validate_ids(req.patient_id, None)
        wid = common_pb2.WriteId(client_id=req.client_id, seq=req.seq, session=req.session)
        try:
            version, _ = await self._write(
                wid, req.patient_id,
                lambda head: cmd.ErasePatient(**head, patient_id=req.patient_id), None,
            )
        except BaseException:
            self.host.metrics.erase_failed.inc()
            raise
        self.host.metrics.erased.inc()
        return version

    async def get(self, req: kv_pb2.GetRequest, context: Any = None) -> kv_pb2.GetResponse:
        validate_ids(req.patient_id, req.record_id)
        p = self._partition(req.patient_id)
        r = await self._replica_for_read(p, req.read, self._deadline(context), common_pb2.LINEARIZABLE)
        self._check_read(r, req.patient_id, req.read, "get")
        rec = self._read(r, lambda: r.sm.get(req.patient_id, req.record_id, req.at_version))
        if rec is None or (rec.deleted and not req.at_version):
            raise NotFound(
                f"no such record in partition {p}"
                + (f" at version {req.at_version}" if req.at_version else "")
            )
        return kv_pb2.GetResponse(
            record=_record_pb(rec), read_state=self.read_state(r, confirmed=_linearizable(req.read))
        )

    async def history(self, req: kv_pb2.HistoryRequest, context: Any = None) -> kv_pb2.HistoryResponse:
        validate_ids(req.patient_id, req.record_id)
        if req.limit > MAX_HISTORY_LIMIT:
            raise InvalidArgument(f"limit: at most {MAX_HISTORY_LIMIT}")
        p = self._partition(req.patient_id)
        r = await self._replica_for_read(p, req.read, self._deadline(context), common_pb2.LINEARIZABLE)
        self._check_read(r, req.patient_id, req.read, "history")
        versions = self._read(
            r,
            lambda: r.sm.history(
                req.patient_id, req.record_id, req.limit or DEFAULT_HISTORY_LIMIT, req.before_version
            ),
        )
        if not versions and not req.before_version:
            raise NotFound(f"no such record in partition {p}")
        return kv_pb2.HistoryResponse(
            versions=[_record_pb(v) for v in versions],
            read_state=self.read_state(r, confirmed=_linearizable(req.read)),
        )

    # ---- unary RPCs ------------------------------------------------------

    async def _unary(self, context: grpc.aio.ServicerContext, call: Awaitable[Any]) -> Any:
        self.in_flight += 1
        try:
            return await call
        except ValidationError as e:
            await abort_with(context, InvalidArgument(str(e)))
        except cmd.CommandError as e:
            await abort_with(context, InvalidArgument(str(e)))
        except NodeError as e:
            await abort_with(context, e)
        finally:
            self.in_flight -= 1
        raise AssertionError("unreachable")

    async def OpenSession(
        self, request: kv_pb2.OpenSessionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._unary(context, self.open_session(request, context))

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(context, self.put(request, context))

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(context, self.get(request, context))

    async def CompareAndSet(
        self, request: kv_pb2.CompareAndSetRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._unary(context, self.cas(request, context))

    async def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(context, self.delete(request, context))

    async def History(self, request: kv_pb2.HistoryRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(context, self.history(request, context))

    async def Batch(self, request: kv_pb2.BatchRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(context, self.batch(request, context))

    async def Scan(
        self, request: kv_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        try:
            if request.partition >= self.node.cfg.partitions:
                raise InvalidArgument(
                    f"partition: {request.partition} does not exist (0..{self.node.cfg.partitions - 1})"
                )
            if request.page_size > MAX_SCAN_PAGE:
                raise InvalidArgument(f"page_size: at most {MAX_SCAN_PAGE}")
            r = await self._replica_for_read(
                request.partition, request.read, self._deadline(context), common_pb2.FOLLOWER
            )
            page = request.page_size or DEFAULT_SCAN_PAGE
            token = self._storage_token(bytes(request.resume_token))
            remaining = request.limit or None
            rs = self.read_state(r)
            with r.sm.read_snapshot() as snap:
                while True:
                    n = page if remaining is None else min(page, remaining)
                    recs, token, done = self._read(r, partial(snap.scan, token, n))
                    if remaining is not None:
                        remaining -= len(recs)
                        done = done or remaining <= 0
                    yield kv_pb2.ScanResponse(
                        records=[_record_pb(x) for x in recs], read_state=rs,
                        resume_token=self._token_fp + token if token else b"", done=done,
                    )
                    if done:
                        return
                    await asyncio.sleep(0)  # let the Raft loop run between pages
        except SnapshotInterrupted as e:
            # An erasure released the snapshot this scan read from (it pinned
            # erased versions on disk); the client resumes from its last token.
            await abort_with(context, Aborted(str(e)))
        except ValidationError as e:
            await abort_with(context, InvalidArgument(str(e)))
        except cmd.CommandError as e:
            await abort_with(context, InvalidArgument(str(e)))
        except NodeError as e:
            await abort_with(context, e)

    def _storage_token(self, token: bytes) -> bytes:
        if not token:
            return b""
        if token[:8] != self._token_fp:
            raise InvalidArgument(
                "resume_token was issued by a replica whose storage keys differ from node "
                f"{self.host.node_id}'s; restart this partition's scan"
            )
        return token[8:]

    # ---- BatchCommands: many requests multiplexed on one stream ----------

    async def _one(
        self, req: kv_pb2.KVRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KVResponse:
        kind = req.WhichOneof("request")
        handlers: dict[str, Callable[[Any, Any], Awaitable[Any]]] = {
            "put": self.put, "get": self.get, "cas": self.cas,
            "delete": self.delete, "history": self.history, "batch": self.batch,
            "open_session": self.open_session,
        }
        resp = kv_pb2.KVResponse(request_id=req.request_id)
        if kind is None:
            resp.status.CopyFrom(to_status(InvalidArgument("request: no operation set")))
            return resp
        try:
            # Each request waits no longer than its own timeout_ms or the
            # stream's deadline allow (answered before them, as a unary call).
            ctx = context if not req.timeout_ms else _RequestDeadline(context, req.timeout_ms)
            result = await handlers[kind](getattr(req, kind), ctx)
            getattr(resp, kind).CopyFrom(result)
        except (ValidationError, cmd.CommandError) as e:
            resp.status.CopyFrom(to_status(InvalidArgument(str(e))))
        except NodeError as e:
            resp.status.CopyFrom(to_status(e))
        except Exception:
            log.exception("request in BatchCommands failed")
            resp.status.CopyFrom(to_status(Unavailable("internal error; retry")))
        return resp

    async def SharePatient(
        self, request: kv_pb2.SharePatientRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._unary(context, self.share_patient(request, context))

    async def share_patient(
        self, req: kv_pb2.SharePatientRequest, context: Any = None
    ) -> kv_pb2.SharePatientResponse:
        """Register a patient to one more clinic or revoke one: a replicated
        SharePatient, decided at apply against the caller's clinics (leader only:
        elsewhere UNAVAILABLE with the leader's address)."""
        call = current_call()
        if call is None:
            raise FailedPrecondition(
                "patient registration needs access control ([auth]); this node has none"
            )
        validate_ids(req.patient_id, None)
        cmd.validate_clinic(req.clinic, "clinic")
        p = self._partition(req.patient_id)
        nonce = int.from_bytes(os.urandom(8), "big") >> 1
        probe = cmd.SharePatient(
            ts_ms=0, nonce=nonce, patient_id=req.patient_id, clinic=req.clinic,
            revoke=req.revoke, caller_clinics=frozenset(call.identity.clinics),
        )

        def encode(stamp_ms: int) -> bytes:
            return cmd.encode_command(replace(probe, ts_ms=stamp_ms))

        res = await self.host.propose(p, probe.wait_key, encode, self._deadline(context))
        index = _checked(res, p)
        r = self.host.replicas[p]
        # As applied here, at or after the change (a later one may be in too).
        reg = self._registration(r, req.patient_id)
        return kv_pb2.SharePatientResponse(clinics=sorted(reg.clinics), index=index)

    async def _counted(
        self, req: kv_pb2.KVRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.KVResponse:
        resp = await self._one(req, context)
        method = _STREAM_METHOD_NAMES.get(req.WhichOneof("request") or "")
        if method is not None:
            code = _CODE_NAMES.get(resp.status.code, "UNKNOWN")
            self.host.metrics.stream_request(method, code)
        return resp

    async def BatchCommands(
        self,
        request_iterator: AsyncIterator[kv_pb2.BatchCommandsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kv_pb2.BatchCommandsResponse]:
        """Many requests multiplexed on one stream, answered as they finish.

        At most [limits] max_in_flight_per_stream of a stream's requests are
        served at once: one beyond that is answered at once with
        RESOURCE_EXHAUSTED (retry it later) instead of queueing without bound.
        Replies the client has not read yet are bounded too (twice the cap):
        beyond that the node stops reading the stream, and HTTP/2 flow
        control pushes back. A stream that sends something that is not a
        request ends with INVALID_ARGUMENT (node.rpc_handlers); each request
        waits no longer than the stream's deadline allows."""
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[kv_pb2.KVResponse | Exception | None] = asyncio.Queue()
        tasks: set[asyncio.Task[kv_pb2.KVResponse]] = set()
        cap = self.node.cfg.limits.max_in_flight_per_stream
        unsent = asyncio.Semaphore(2 * cap)  # replies not yet handed to gRPC

        def finished(t: asyncio.Task[kv_pb2.KVResponse]) -> None:
            tasks.discard(t)
            if not t.cancelled():
                done.put_nowait(t.result())

        async def read_requests() -> None:
            try:
                async for batch in request_iterator:
                    for req in batch.requests:
                        await unsent.acquire()
                        if len(tasks) >= cap:
                            self.host.metrics.reject("stream_in_flight_limit")
                            done.put_nowait(_too_many_in_flight(req, cap))
                            continue
                        t = loop.create_task(self._counted(req, context))
                        tasks.add(t)
                        t.add_done_callback(finished)
                while tasks:
                    await asyncio.wait(set(tasks))
                done.put_nowait(None)
            except Exception as e:  # a garbled request ends the stream with its status
                done.put_nowait(e)

        reader = loop.create_task(read_requests())
        try:
            while True:
                first = await done.get()
                out: list[kv_pb2.KVResponse] = []
                item: kv_pb2.KVResponse | Exception | None = first
                while True:
                    if item is None or isinstance(item, Exception):
                        if out:
                            yield kv_pb2.BatchCommandsResponse(responses=out)
                        if isinstance(item, Exception):
                            raise item
                        return
                    out.append(item)
                    if done.empty():  # coalesce every reply that is ready now
                        break
                    item = done.get_nowait()
                yield kv_pb2.BatchCommandsResponse(responses=out)
                for _ in out:
                    unsent.release()
        finally:
            reader.cancel()
            for t in tasks:
                t.cancel()


class _RequestDeadline:
    """The stream's context as one request inside it sees it: time_remaining()
    is the smaller of the stream's and the request's own timeout_ms, so
    KVService._deadline bounds the request as it bounds a unary call."""

    def __init__(self, stream: grpc.aio.ServicerContext, timeout_ms: int) -> None:
        self._stream = stream
        self._expires = time.monotonic() + timeout_ms / 1000.0

    def time_remaining(self) -> float:
        own = max(0.0, self._expires - time.monotonic())
        stream = self._stream.time_remaining()
        return own if stream is None else min(own, stream)


def _too_many_in_flight(req: kv_pb2.KVRequest, cap: int) -> kv_pb2.KVResponse:
    err = ResourceExhausted(
        f"request: this stream already has {cap} requests in flight "
        "([limits] max_in_flight_per_stream); retry it when one is answered"
    )
    return kv_pb2.KVResponse(request_id=req.request_id, status=to_status(err))


def _record_pb(rec: Any) -> common_pb2.Record:
    return common_pb2.Record(
        patient_id=rec.patient_id,
        record_id=rec.record_id,
        value=rec.value,
        version=rec.version,
        deleted=rec.deleted,
    )
