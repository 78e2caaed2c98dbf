"""One gRPC server interceptor that authenticates, authorizes and audits every call.

Per call, before the servicer runs:

  1. TLS: the peer must have presented a certificate signed by the cluster CA
     (grpc verified it in the handshake; without one: UNAUTHENTICATED).
  2. Who: RaftTransport accepts only node certificates (no token can make a
     caller a node). Every other service takes the bearer token from the
     `authorization: Bearer <JWT>` metadata (tokens.py); a call with no token
     from a node certificate is that node (nodes ask each other for status).
     Health checks need only the certificate.
  3. What: the policy decides from the method and the request's facts
     (patient, partition, read consistency, the clinic and break-glass reason
     from metadata `medkv-clinic` / `medkv-break-glass-reason`) and the
     patient's registration from the PatientRegistry. A refusal is
     PERMISSION_DENIED naming the missing permission.
  4. Audit: one entry per call (per request inside BatchCommands) with the
     outcome: the refusal, or the status the servicer answered with.

Raft messages: every RaftBatch / SnapshotChunk must carry the `from_node` the
certificate names; one that does not ends the stream with PERMISSION_DENIED
before the servicer sees it.

BatchCommands multiplexes many requests on one stream: each is authorized as
its unary method; a refused one never reaches the servicer and its reply (a
KVResponse with status PERMISSION_DENIED) is merged into the response stream,
as the protocol allows replies in any order.

The servicer can see who is calling through current_call() (a contextvar set
for the call): the identity (to bind sessions to the token's subject), the
decision (register_clinic for a write that registers a new patient), and
check_patient() for a decision the interceptor had to defer because this node
does not hold the patient's partition.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.protobuf.message import Message

from node.auth import AuthError, PermissionDenied, Unauthenticated
from node.auth.audit import AuditEvent, AuditWriter
from node.auth.certs import PeerCertificate, peer_certificate, require_from_node
from node.auth.identity import Identity
from node.auth.policy import (
    DEFAULT_POLICY,
    KV,
    NOT_HELD,
    STREAM_REQUEST_METHODS,
    Action,
    Decision,
    PatientRegistry,
    Policy,
    Registration,
    RequestFacts,
)
from node.auth.tokens import TokenVerifier
from node.logfmt import REQUEST_ID
from proto.medkv.v1 import common_pb2, kv_pb2
from proto.placement import partition_of

log = logging.getLogger("medkv.auth")

AUTHORIZATION = "authorization"
CLINIC_METADATA = "medkv-clinic"
BREAK_GLASS_METADATA = "medkv-break-glass-reason"
REQUEST_ID_METADATA = "medkv-request-id"
MAX_REASON = 500
_BATCH_COMMANDS = KV + "BatchCommands"
_CONSISTENCY = {
    common_pb2.LINEARIZABLE: "linearizable", common_pb2.FOLLOWER: "follower",
    common_pb2.BOUNDED: "bounded",
}


@dataclass(frozen=True)
class CallAuth:
    """Who is calling and what was decided; set for the servicer by the interceptor."""

    identity: Identity
    method: str
    decision: Decision
    facts: RequestFacts = field(repr=False)
    policy: Policy = field(repr=False, default=DEFAULT_POLICY)

    def check_patient(
        self, patient_id: str, registration: Registration, method: str | None = None
    ) -> Decision:
        """Authorize against the registration of the replica that holds the patient
        (for a deferred decision). Raises PermissionDenied when refused.

        Inside BatchCommands pass the request's unary method
        (STREAM_REQUEST_METHODS[kind]): the stream's own method says nothing about
        a patient."""
        facts = replace(self.facts, patient_id=patient_id, registration=registration)
        return self.policy.check_scope(self.identity, method or self.method, facts)


_CURRENT: contextvars.ContextVar[CallAuth | None] = contextvars.ContextVar(
    "medkv_call_auth", default=None
)


def current_call() -> CallAuth | None:
    return _CURRENT.get()


@dataclass(frozen=True)
class Facts:
    """What the interceptor reads from one request message."""

    patient_id: str | None = None
    record_ids: tuple[str, ...] = ()
    partition: int | None = None
    consistency: str = "linearizable"


_SHAPES: dict[Any, tuple[bool, bool, bool, bool, bool]] = {}


def _shape(message_type: Any) -> tuple[bool, bool, bool, bool, bool]:
    """Which of the fields authorization reads a request type has (once per type)."""
    shape = _SHAPES.get(message_type)
    if shape is None:
        names = message_type.DESCRIPTOR.fields_by_name
        shape = ("patient_id" in names, "record_id" in names, "ops" in names, "read" in names,
                 "partition" in names)
        _SHAPES[message_type] = shape
    return shape


def request_facts(method: str, request: Any, partitions: int) -> Facts:
    """Patient, records, partition and read mode of a request (no validation: the
    servicer does that; an odd value only makes the decision stricter)."""
    has_patient, has_record, has_ops, has_read, has_partition = _shape(type(request))
    patient = request.patient_id if has_patient else None
    records: tuple[str, ...] = ()
    if has_record:
        records = (request.record_id,)
    elif has_ops:
        ids = []
        for op in request.ops:
            kind = op.WhichOneof("op")
            if kind is not None:
                ids.append(getattr(op, kind).record_id)
        records = tuple(ids)
    consistency = "linearizable"
    if has_read:
        c = request.read.consistency
        if c == common_pb2.CONSISTENCY_UNSPECIFIED and method.endswith("/Scan"):
            c = common_pb2.FOLLOWER
        consistency = _CONSISTENCY.get(c, "linearizable")
    partition: int | None = None
    if has_partition:
        partition = int(request.partition)
    elif patient is not None and partitions > 0:
        partition = partition_of(patient, partitions)
    return Facts(patient, records, partition, consistency)


@dataclass
class AccessControl:
    """Everything the interceptor needs; built once per node."""

    verifier: TokenVerifier | None  # None: no token is ever accepted
    registry: PatientRegistry | None = None  # None: patient scope always deferred
    audit: AuditWriter | None = None
    policy: Policy = DEFAULT_POLICY
    partitions: int = 0  # to name a patient's partition in the audit log
    require_client_cert: bool = True
    wait_audit_durable: bool = False  # answer only once the call's audit entry is on disk
    # Told the reason of every refusal ("unauthenticated", "permission_denied"):
    # the node's medkv_requests_rejected_total (node.metrics).
    on_refusal: Callable[[str], None] | None = None


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in context.invocation_metadata() or ():
        if isinstance(v, str):
            out[k.lower()] = v
    return out


def _bearer(md: dict[str, str]) -> str | None:
    value = md.get(AUTHORIZATION)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization metadata must be 'Bearer <JWT>'")
    return token.strip()


_REQUEST_PREFIX = os.urandom(4).hex()
_request_counter = itertools.count(1)


def _next_request_id() -> str:
    """A request id unique to this process: random prefix + counter (no syscall per call)."""
    return f"{_REQUEST_PREFIX}-{next(_request_counter)}"


class _Call:
    """The per-call state the wrappers share."""

    def __init__(self, ac: AccessControl, method: str, context: grpc.aio.ServicerContext) -> None:
        self.ac = ac
        self.method = method
        self.context = context
        self.md = _metadata(context)
        self.peer_addr = context.peer() or ""
        self.cert: PeerCertificate | None = None
        self.identity: Identity | None = None
        self.request_id = self.md.get(REQUEST_ID_METADATA, "")[:64] or _next_request_id()
        # Lines logged while serving this call carry its id (node.logfmt JSON field).
        REQUEST_ID.set(self.request_id)

    async def authenticate(self) -> Identity:
        ac = self.ac
        self.cert = peer_certificate(context_auth(self.context))
        if self.cert is None and ac.require_client_cert:
            raise Unauthenticated("a client certificate signed by the cluster CA is required")
        action = ac.policy.action_of(self.method)
        fp = self.cert.fingerprint if self.cert else ""
        if action is Action.RAFT:
            if self.cert is None or self.cert.node_id is None:
                raise PermissionDenied(
                    "the Raft transport accepts only node certificates (this caller presented "
                    + ("none" if self.cert is None else "a client certificate") + ")"
                )
            return Identity.for_node(self.cert.node_id, fp)
        token = _bearer(self.md)
        if token is None:
            if self.cert is not None and self.cert.node_id is not None:
                return Identity.for_node(self.cert.node_id, fp)
            if action is Action.HEALTH and self.cert is not None:
                return Identity.for_peer(self.cert.client_name or fp[:16], fp)
            raise Unauthenticated(
                "no bearer token: send metadata 'authorization: Bearer <JWT>' "
                "(medkv --token, or $MEDKV_TOKEN)"
            )
        if ac.verifier is None:
            raise Unauthenticated("this node accepts no bearer tokens (no [auth] keys configured)")
        # The certificate goes to the audit entry from self.cert; the Identity is the
        # token's, shared by every call that presents the same token.
        return await ac.verifier.averify(token)

    def facts_for(self, method: str, request: Any) -> tuple[Facts, RequestFacts]:
        f = request_facts(method, request, self.ac.partitions) if request is not None else Facts()
        reg = NOT_HELD
        if f.patient_id is not None and self.ac.registry is not None and \
                self.ac.policy.needs_patient(method):
            reg = self.ac.registry.lookup(f.patient_id)
        clinic = self.md.get(CLINIC_METADATA) or None
        if isinstance(request, kv_pb2.SharePatientRequest) and request.clinic:
            # A registry change names its target clinic in the request itself
            # (OWN_CLINIC scope: an unregistered patient may go to one of yours).
            clinic = request.clinic
        rf = RequestFacts(
            patient_id=f.patient_id, registration=reg, consistency=f.consistency,
            clinic=clinic,
            break_glass_reason=self.md.get(BREAK_GLASS_METADATA, "")[:MAX_REASON],
        )
        return f, rf

    def decide(self, method: str, rf: RequestFacts) -> Decision:
        """The policy's decision. A registry that is not authoritative (the node's:
        ReplicatedRegistry) can allow but never refuse: it is a replica's applied
        state, which may trail the log
        (a follower behind, a leader that has not applied its newest entries). A
        refusal that rests on it becomes a deferral, decided where the data is
        authoritative: on the replica that serves the read, after its read index,
        or at apply for a write (node.kv_service, node.state_machine)."""
        assert self.identity is not None
        decision = self.ac.policy.authorize(self.identity, method, rf)
        if decision.allowed or not rf.registration.known or self.ac.registry is None \
                or self.ac.registry.authoritative:
            return decision
        deferred = self.ac.policy.authorize(self.identity, method, replace(rf, registration=NOT_HELD))
        return deferred if deferred.allowed else decision

    def audit(
        self, method: str, outcome: str, *, facts: Facts | None = None,
        decision: Decision | None = None, reason: str = "", request_id: str = "",
        rf: RequestFacts | None = None,
    ) -> int:
        w = self.ac.audit
        if w is None:
            return 0
        ident = self.identity
        f = facts or Facts()
        return w.record(AuditEvent(
            method=method, outcome=outcome,
            subject=ident.subject if ident else "",
            roles=sorted(ident.roles) if ident else (),
            clinics=sorted(ident.clinics) if ident else (),
            permission=decision.permission if decision else "",
            partition=f.partition, patient_id=f.patient_id, record_ids=f.record_ids,
            reason=reason, break_glass=bool(decision and decision.break_glass),
            break_glass_reason=(rf.break_glass_reason if rf and decision and decision.break_glass
                                else ""),
            request_id=request_id or self.request_id, peer=self.peer_addr,
            token_id=ident.token_id if ident else "",
            cert=self.cert.fingerprint if self.cert else "",
        ))

    async def refuse(self, e: AuthError, facts: Facts | None = None,
                     decision: Decision | None = None) -> None:
        seq = self.audit(self.method, e.code.name, facts=facts, decision=decision, reason=e.message)
        if self.ac.on_refusal is not None:
            self.ac.on_refusal(e.code.name.lower())
        await self._durable(seq)
        await self.context.abort(e.code, e.message)

    async def _durable(self, seq: int) -> None:
        if seq and self.ac.wait_audit_durable and self.ac.audit is not None:
            await self.ac.audit.durable(seq)

    async def admit(self, request: Any) -> tuple[Facts, Decision]:
        """Authenticate and authorize; on refusal audit it and abort the call."""
        try:
            self.identity = await self.authenticate()
        except AuthError as e:
            await self.refuse(e)
            raise AssertionError("unreachable") from None
        if request is not None and not isinstance(request, Message):
            # A request that did not parse (node.rpc_handlers' Garbled stand-in):
            # the caller is authenticated, the method must be one its roles hold
            # at all, and the servicer answers INVALID_ARGUMENT naming the problem.
            decision = self.ac.policy.role_allows(self.identity, self.method)
            if not decision.allowed:
                await self.refuse(PermissionDenied(decision.reason), None, decision)
            facts, rf = Facts(), RequestFacts()
            _CURRENT.set(CallAuth(self.identity, self.method, decision, rf, self.ac.policy))
            self._facts, self._decision, self._rf = facts, decision, rf
            return facts, decision
        facts, rf = self.facts_for(self.method, request)
        decision = self.decide(self.method, rf)
        if not decision.allowed:
            await self.refuse(PermissionDenied(decision.reason), facts, decision)
        _CURRENT.set(CallAuth(self.identity, self.method, decision, rf, self.ac.policy))
        self._facts, self._decision, self._rf = facts, decision, rf
        return facts, decision

    async def finish(self, code: grpc.StatusCode | None) -> None:
        """Audit the outcome of an admitted call (health checks touch no data: skipped)."""
        if self.ac.policy.action_of(self.method) is Action.HEALTH:
            return
        outcome = (code or grpc.StatusCode.OK).name
        details = self.context.details() if code not in (None, grpc.StatusCode.OK) else ""
        reason = details if code in (grpc.StatusCode.PERMISSION_DENIED,
                                     grpc.StatusCode.UNAUTHENTICATED) else ""
        seq = self.audit(self.method, outcome, facts=self._facts, decision=self._decision,
                         reason=reason or "", rf=self._rf)
        await self._durable(seq)


def context_auth(context: grpc.aio.ServicerContext) -> dict[str, list[bytes]]:
    try:
        return context.auth_context() or {}
    except Exception:  # grpc raises for an insecure call on some versions
        return {}


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Install with grpc.aio.server(interceptors=[AuthInterceptor(access_control)])."""

    def __init__(self, ac: AccessControl) -> None:
        self.ac = ac
        # The wrapped handler of each (method, servicer handler): built once, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < 1024:  # bounded: the methods are the services' few
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        behavior = (self._batch_commands(method, handler.stream_stream)
                    if method == _BATCH_COMMANDS else self._stream_stream(method, handler.stream_stream))
        return grpc.stream_stream_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # ---- unary requests: the request is known before the servicer runs

    def _unary_unary(self, method: str, inner: Any) -> Any:
        ac = self.ac

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(ac, method, context)
            await call.admit(request)
            try:
                response = await inner(request, context)
            except grpc.aio.AbortError:
                await call.finish(_code_of(context))
                raise
            except BaseException:
                await call.finish(grpc.StatusCode.UNKNOWN)
                raise
            await call.finish(_code_of(context))
            return response

        return behavior

    def _unary_stream(self, method: str, inner: Any) -> Any:
        ac = self.ac

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(ac, method, context)
            await call.admit(request)
            code: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
            try:
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result  # a servicer that writes with context.write()
                code = _code_of(context)
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                await call.finish(code)

        return behavior

    # ---- streamed requests: Raft (checked per message) and BatchCommands

    def _checked_raft(self, call: _Call, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            async for msg in requests:
                if not isinstance(msg, Message):
                    yield msg  # garbled: the servicer ends the stream with INVALID_ARGUMENT
                    continue
                try:
                    require_from_node(call.cert, int(msg.from_node))
                except PermissionDenied as e:
                    await call.refuse(e)
                yield msg

        return gen()

    def _stream_unary(self, method: str, inner: Any) -> Any:
        ac = self.ac

        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            call = _Call(ac, method, context)
            await call.admit(None)
            if ac.policy.action_of(method) is Action.RAFT:
                requests = self._checked_raft(call, requests)
            try:
                response = await inner(requests, context)
            except grpc.aio.AbortError:
                await call.finish(_code_of(context))
                raise
            except BaseException:
                await call.finish(grpc.StatusCode.UNKNOWN)
                raise
            await call.finish(_code_of(context))
            return response

        return behavior

    def _stream_stream(self, method: str, inner: Any) -> Any:
        ac = self.ac

        async def behavior(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            call = _Call(ac, method, context)
            await call.admit(None)
            if ac.policy.action_of(method) is Action.RAFT:
                requests = self._checked_raft(call, requests)
            code: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
            try:
                async for item in inner(requests, context):
                    yield item
                code = _code_of(context)
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                await call.finish(code)

        return behavior

    def _batch_commands(self, method: str, inner: Any) -> Any:
        ac = self.ac

        async def behavior(
            requests: AsyncIterator[kv_pb2.BatchCommandsRequest], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[kv_pb2.BatchCommandsResponse]:
            call = _Call(ac, method, context)
            await call.admit(None)  # the stream itself: RECORD_STREAM
            out: asyncio.Queue[kv_pb2.BatchCommandsResponse | None] = asyncio.Queue()
            # request_id -> (unary method, facts, decision, request facts) of admitted requests
            pending: dict[int, tuple[str, Facts, Decision, RequestFacts]] = {}
            stream_auth = _CURRENT.get()

            async def filtered() -> AsyncIterator[kv_pb2.BatchCommandsRequest]:
                async for batch in requests:
                    if not isinstance(batch, Message):
                        yield batch  # garbled: the servicer ends the stream with INVALID_ARGUMENT
                        continue
                    keep = []
                    refused = []
                    # A stream lives longer than a call: its token is checked
                    # again at every batch, so an expired one stops serving.
                    ident = call.identity
                    expired = (ident is not None and ac.verifier is not None
                               and ac.verifier.expired(ident))
                    for req in batch.requests:
                        kind = req.WhichOneof("request")
                        sub = STREAM_REQUEST_METHODS.get(kind or "")
                        if sub is None:
                            keep.append(req)  # the servicer answers INVALID_ARGUMENT
                            continue
                        assert call.identity is not None
                        if expired:
                            call.audit(sub, "UNAUTHENTICATED", reason="token expired",
                                       request_id=f"{call.request_id}/{req.request_id}")
                            refused.append(kv_pb2.KVResponse(
                                request_id=req.request_id,
                                status=common_pb2.Status(
                                    code=grpc.StatusCode.UNAUTHENTICATED.value[0],
                                    message="the token expired while the stream was open; "
                                    "open a new stream with a fresh token"),
                            ))
                            continue
                        facts, rf = call.facts_for(sub, getattr(req, kind or ""))
                        d = call.decide(sub, rf)
                        rid = f"{call.request_id}/{req.request_id}"
                        if d.allowed:
                            pending[req.request_id] = (sub, facts, d, rf)
                            keep.append(req)
                        else:
                            call.audit(sub, "PERMISSION_DENIED", facts=facts, decision=d,
                                       reason=d.reason, request_id=rid)
                            if ac.on_refusal is not None:
                                ac.on_refusal("permission_denied")
                            refused.append(kv_pb2.KVResponse(
                                request_id=req.request_id,
                                status=common_pb2.Status(
                                    code=grpc.StatusCode.PERMISSION_DENIED.value[0],
                                    message=d.reason),
                            ))
                    if refused:
                        out.put_nowait(kv_pb2.BatchCommandsResponse(responses=refused))
                    if keep:
                        yield kv_pb2.BatchCommandsRequest(requests=keep)

            async def pump() -> None:
                try:
                    async for resp in inner(filtered(), context):
                        for r in resp.responses:
                            entry = pending.pop(r.request_id, None)
                            if entry is not None:
                                sub, facts, d, rf = entry
                                code = next((c.name for c in grpc.StatusCode
                                             if c.value[0] == r.status.code), "UNKNOWN")
                                call.audit(sub, code, facts=facts, decision=d, rf=rf,
                                           request_id=f"{call.request_id}/{r.request_id}")
                        out.put_nowait(resp)
                finally:
                    out.put_nowait(None)

            token = _CURRENT.set(stream_auth)
            task = asyncio.get_running_loop().create_task(pump())
            _CURRENT.reset(token)
            code: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
            try:
                while True:
                    item = await out.get()
                    if item is None:
                        break
                    yield item
                await task  # re-raises the servicer's failure
                code = _code_of(context)
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                task.cancel()
                await call.finish(code)

        return behavior


def interceptors(ac: AccessControl | None) -> Sequence[grpc.aio.ServerInterceptor]:
    """What grpc.aio.server(interceptors=...) gets: nothing only for `insecure = true`."""
    return [] if ac is None else [AuthInterceptor(ac)]
