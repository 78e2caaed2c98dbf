"""The asyncio medkv client (grpc.aio), and the one home of the call loop.

Every call goes through `_unary` (or `_scan_partition` for the streaming
scan): pick a node with the routing state (client/routing.py), send one
attempt with a bounded per-attempt timeout, and on failure ask the retry
policy (client/retry.py) whether and when to try again: immediately at the
node a leader hint names, after a jittered backoff otherwise, never past the
call's total deadline. The blocking `Client` runs this class on a private
event loop, so there is exactly one implementation of routing and retries.

Writes carry a WriteId: 16 random bytes per client, the id of the client's
session on the write's partition (opened by KV.OpenSession on first use), a
sequence number per logical write within that session that every retry of
the write reuses, and `ack_below`, the session's lowest sequence number still
in flight, which lets the server forget the replies this client can no longer
ask for. When a session expired, see client/sessions.py for when a write is
sent again in a new session and when SessionExpired is raised instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import grpc.aio

from client import ops as batch_ops
from client.audit import AuditEntry, AuditQueryResult, AuditVerifyResult, merge_entries
from client.auth import (
    AUTHORIZATION,
    TOKEN_ENV,
    TokenSource,
    call_metadata,
    token_source,
)
from client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    MedkvError,
    PermissionDenied,
    SessionExpired,
    TooStale,
    Unauthenticated,
    Unavailable,
    from_status,
    metadata_dict,
)
from client.fhir import decode_resource, encode_resource
from client.mux import Multiplexer
from client.records import ReadInfo, Record, ScanPage, Sharing
from client.retry import Attempts, RetryPolicy, is_retryable
from client.routing import (
    EPOCH_KEY,
    LEADER_KEY,
    Mode,
    Router,
    RoutingTable,
    TargetPicker,
    parse_epoch,
    parse_leader_hint,
)
from client.sessions import Sessions
from client.tls import TlsConfig
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kv_pb2, kv_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:7101"

# `multiplex=None` reads this: "0" / "false" / "off" / "no" sends every KV
# request as its own unary call (for comparison, or a node that misbehaves).
MULTIPLEX_ENV = "MEDKV_MULTIPLEX"

# Reconnect quickly to a restarted node instead of grpc's default backoff of
# up to two minutes; the client's own retry loop paces the attempts.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)

# Versions asked for per History request (nodes refuse more than 1000).
HISTORY_PAGE = 1000

_CONSISTENCY = {
    "linearizable": common_pb2.LINEARIZABLE,
    "follower": common_pb2.FOLLOWER,
    "bounded": common_pb2.BOUNDED,
}


T = TypeVar("T")

# The generated gRPC modules are untyped; these typed aliases keep that local.
_KV_STUB: Callable[[grpc.aio.Channel], Any] = kv_pb2_grpc.KVStub
_ADMIN_STUB: Callable[[grpc.aio.Channel], Any] = admin_pb2_grpc.AdminStub


def _const(value: Any) -> Callable[[], Any]:
    """A request factory that always sends the same request (reads need no re-stamping)."""
    return lambda: value


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """`"h1:1,h2:2"` or `["h1:1", "h2:2"]` -> a list of distinct host:port strings."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out: list[str] = []
    for item in items:
        address = item.strip()
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"not a host:port address: {address!r}")
        if address not in out:
            out.append(address)
    if not out:
        raise InvalidArgument("at least one node address is needed")
    return out


def read_options(
    consistency: str,
    max_staleness: float | None,
    min_version: int | None,
) -> tuple[common_pb2.ReadOptions, Mode]:
    """The wire read options of one read, and who may serve it."""
    level = _CONSISTENCY.get(str(consistency).lower())
    if level is None:
        raise InvalidArgument(
            f"consistency must be one of {', '.join(_CONSISTENCY)}, not {consistency!r}"
        )
    options = common_pb2.ReadOptions(consistency=level)
    if level == common_pb2.BOUNDED:
        if max_staleness is None or not max_staleness > 0 or math.isinf(max_staleness):
            raise InvalidArgument("a bounded read needs max_staleness > 0 (seconds)")
        options.max_staleness_ms = max(1, math.ceil(max_staleness * 1000))
    elif max_staleness is not None:
        raise InvalidArgument("max_staleness applies only to consistency='bounded'")
    if min_version is not None:
        if min_version < 0:
            raise InvalidArgument("min_version must be >= 0")
        options.min_version = min_version
    mode = Mode.LEADER if level == common_pb2.LINEARIZABLE else Mode.REPLICA
    return options, mode


def _check_key(patient_id: str, record_id: str | None = None) -> None:
    if not isinstance(patient_id, str) or not patient_id:
        raise InvalidArgument("patient_id must be a non-empty string")
    if record_id is not None and (not isinstance(record_id, str) or not record_id):
        raise InvalidArgument("record_id must be a non-empty string")


def _check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument("value must be bytes (use put_json for resources)")
    return bytes(value)


def _check_version(name: str, version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidArgument(f"{name} must be an integer >= 0")



_NO_ADDRESS = "the routing table names a node without an address"


def _multiplex_default(multiplex: bool | None) -> bool:
    if multiplex is not None:
        return bool(multiplex)
    return os.environ.get(MULTIPLEX_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def _check_header(name: str, value: str | None) -> str | None:
    """A metadata value grpc can send as is: printable ASCII, one line."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{name} must be a non-empty string")
    if not value.isascii() or not value.isprintable():
        raise InvalidArgument(f"{name} must be printable ASCII on one line")
    return value.strip()


def _credentials(
    tls: TlsConfig | None, source: TokenSource | None, from_env: bool
) -> grpc.ChannelCredentials | None:
    """Mutual TLS plus the bearer token on every call; None for a plaintext channel.

    A token over plaintext is refused: grpc would not send it anyway, and a
    bearer token in clear text is a password in clear text."""
    if tls is None:
        if source is not None:
            given = f"${TOKEN_ENV}" if from_env else "token="
            raise InvalidArgument(
                f"a bearer token ({given}) needs TLS: give tls= (or set MEDKV_TLS_DIR / "
                "--tls-dir); a token over a plaintext channel would be a password in clear text"
            )
        return None
    # The token travels as per-call metadata (AsyncClient._md), not as grpc call
    # credentials: grpc runs a credentials plugin on a thread per call, which
    # costs more than the call itself for a Python client.
    return tls.credentials()


class AsyncClient:
    """A medkv client for asyncio code.

    `AsyncClient(["10.0.0.1:7101", "10.0.0.2:7101"])` or `AsyncClient("host:port")`:
    any reachable node will do; the client fetches the routing table from it
    and talks to every node directly afterwards. Use `async with` or `await
    close()` to release the channels.

    `multiplex` (default on; None reads $MEDKV_MULTIPLEX): concurrent
    put/get/cas/delete/history/batch requests to one node share one
    KV.BatchCommands stream, many per message (client/mux.py); off, each is
    its own unary call. Routing, retries and errors are the same either way.
    """

    def __init__(
        self,
        addresses: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        client_id: bytes | None = None,
        scan_parallelism: int = 8,
        channel_options: Sequence[tuple[str, Any]] = (),
        rng: random.Random | None = None,
        tls: TlsConfig | None = None,
        token: str | None = None,
        clinic: str | None = None,
        break_glass_reason: str | None = None,
        multiplex: bool | None = None,
    ) -> None:
        self._seeds = parse_addresses(addresses)
        # Mutual TLS when given (or when MEDKV_TLS_DIR names a certificate directory).
        tls = tls or TlsConfig.from_env()
        self._token_source = token_source(token)
        self._credentials = _credentials(tls, self._token_source, from_env=not token)
        self._static_metadata = call_metadata(
            clinic=_check_header("clinic", clinic),
            break_glass_reason=_check_header("break_glass_reason", break_glass_reason),
        )
        policy = retry or RetryPolicy()
        self.policy = replace(policy, timeout=timeout) if timeout is not None else policy
        if client_id is not None and len(client_id) != 16:
            raise InvalidArgument("client_id must be 16 bytes")
        self._sessions = Sessions(client_id or os.urandom(16))
        if scan_parallelism < 1:
            raise InvalidArgument("scan_parallelism must be at least 1")
        self.scan_parallelism = scan_parallelism
        self._channel_options = _CHANNEL_OPTIONS + tuple(channel_options)
        self._rng = rng or random.Random()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._kv: dict[str, Any] = {}
        self._admin: dict[str, Any] = {}
        self._router: Router | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._refreshes = 0
        self._closed = False
        self._mux: Multiplexer | None = (
            Multiplexer(self._kv_stub) if _multiplex_default(multiplex) else None
        )

    @property
    def multiplexed(self) -> bool:
        """Whether KV requests travel on BatchCommands streams (client/mux.py)."""
        return self._mux is not None

    def __repr__(self) -> str:
        # The token source's repr never shows a token (a file's path at most).
        return (
            f"{type(self).__name__}({self._seeds!r}, tls={self._credentials is not None}, "
            f"token={self._token_source!r})"
        )

    # ----------------------------------------------------------------- plumbing

    def _check_token(self) -> None:
        """Raise TokenError now if the token (file) is unusable.

        grpc reports a failing call-credentials plugin as UNAVAILABLE, which
        the retry loop would retry until the deadline and then report vaguely;
        asking the source first (a stat of its file; the plugin asks again,
        from the same cache) makes it a prompt, precise, final error."""
        if self._token_source is not None:
            self._token_source.token()

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """What every call carries: the bearer token (read from its source per call,
        so a renewed token file is used at once) and the clinic / break-glass
        headers. None, not (), when empty: grpc then adds nothing."""
        if self._token_source is None:
            return self._static_metadata or None
        return ((AUTHORIZATION, f"Bearer {self._token_source.token()}"), *self._static_metadata)

    @property
    def client_id(self) -> bytes:
        return self._sessions.client_id

    @property
    def router(self) -> Router | None:
        """The routing state, once a table has been fetched."""
        return self._router

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._closed:
            raise MedkvError("the client is closed")
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=self._channel_options)
            else:
                channel = grpc.aio.secure_channel(
                    address, self._credentials, options=self._channel_options
                )
            self._channels[address] = channel
        return channel

    def _kv_stub(self, address: str) -> Any:
        stub = self._kv.get(address)
        if stub is None:
            stub = self._kv[address] = _KV_STUB(self._channel(address))
        return stub

    def _admin_stub(self, address: str) -> Any:
        stub = self._admin.get(address)
        if stub is None:
            stub = self._admin[address] = _ADMIN_STUB(self._channel(address))
        return stub

    def _admin_addresses(self) -> list[str]:
        """Known nodes first (the table's), then the seeds; starting at a random one."""
        known = self._router.addresses() if self._router else []
        ordered = known + [a for a in self._seeds if a not in known]
        start = self._rng.randrange(len(ordered))
        return ordered[start:] + ordered[:start]

    async def _admin_call(self, method: str, request: Any, attempts: Attempts) -> Any:
        """One Admin RPC answered by any reachable node, retried within the deadline."""
        last: MedkvError | None = None
        while True:
            for address in self._admin_addresses():
                attempt_timeout = attempts.attempt_timeout()
                if attempt_timeout is None:
                    break
                self._check_token()
                try:
                    return await getattr(self._admin_stub(address), method)(
                        request, timeout=attempt_timeout, metadata=self._metadata
                    )
                except grpc.aio.AioRpcError as exc:
                    last = from_status(exc.code(), exc.details() or "", is_read=True)
                    if exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ):
                        raise last from None
            wait = attempts.wait_after(grpc.StatusCode.UNAVAILABLE)
            if wait is None:
                raise Unavailable(
                    f"no node answered {method} within {attempts.deadline.timeout:g}s"
                    + (f" (last error: {last})" if last else "")
                ) from None
            await asyncio.sleep(wait)

    async def _refresh(self, attempts: Attempts) -> Router:
        """Fetch the routing table; concurrent refreshes share one fetch."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        generation = self._refreshes
        async with self._refresh_lock:
            if self._router is not None and self._refreshes != generation:
                return self._router  # someone refreshed while we waited
            reply = await self._admin_call(
                "RoutingTable", admin_pb2.RoutingTableRequest(), attempts
            )
            try:
                table = RoutingTable.from_proto(reply)
            except ValueError as exc:
                raise Unavailable(f"unusable routing table: {exc}") from None
            if self._router is None:
                self._router = Router(table, self._rng)
            else:
                self._router.install(table)
            self._refreshes += 1
            return self._router

    async def _router_for(self, attempts: Attempts) -> Router:
        if self._router is not None:
            return self._router
        return await self._refresh(attempts)

    async def _note_epoch(self, metadata: Mapping[str, str], attempts: Attempts) -> None:
        """A node on a newer membership epoch than our table: refresh once."""
        epoch = parse_epoch(metadata.get(EPOCH_KEY))
        if epoch is not None and self._router is not None and epoch > self._router.epoch:
            with contextlib.suppress(MedkvError):
                await self._refresh(attempts)

    async def _after_failure(
        self,
        exc: grpc.aio.AioRpcError,
        node: int,
        picker: TargetPicker,
        attempts: Attempts,
        *,
        is_read: bool,
    ) -> tuple[MedkvError, float | None]:
        """Classify a failed attempt, steer the picker, and say how long to wait (None: give up)."""
        metadata = metadata_dict(exc.trailing_metadata())
        await self._note_epoch(metadata, attempts)
        code = exc.code()
        error = from_status(code, exc.details() or "", is_read=is_read, metadata=metadata)
        hint = parse_leader_hint(metadata.get(LEADER_KEY))
        if code == grpc.StatusCode.DATA_LOSS and is_read and picker.mode is Mode.REPLICA:
            # That replica's copy is damaged and out of service; the others
            # still hold the partition. Raise DataLoss only if none can serve.
            return error, (0.0 if picker.out_of_service(node) else None)
        if isinstance(error, TooStale) and picker.mode is Mode.REPLICA:
            # The leader is never stale: one more attempt there, at once.
            picker.to_leader()
            if hint is not None and picker.router.knows(hint):
                picker.redirect(hint.node_id)
            return error, 0.0
        if code != grpc.StatusCode.UNAVAILABLE:
            hint = None
        redirected = False
        if hint is not None and hint.node_id != node:
            if not picker.router.knows(hint):
                # A leader we cannot place: the membership changed under us.
                with contextlib.suppress(MedkvError):
                    await self._refresh(attempts)
                picker.router.learn(hint)
            if picker.mode is Mode.LEADER:
                picker.redirect(hint.node_id)
                redirected = True
            else:
                picker.router.note_leader(picker.partition, hint.node_id)
        else:
            picker.failed(node)
        return error, attempts.wait_after(code, redirected=redirected)

    @staticmethod
    def _give_up(error: MedkvError | None, attempts: Attempts, *, is_read: bool) -> MedkvError:
        """The exception a call ends with; says so when it ran out of time rather than failed."""
        if error is None:
            return DeadlineExceeded(
                f"no attempt fit in the {attempts.deadline.timeout:g}s deadline"
            )
        if not is_retryable(error.code):
            return error
        note = f" (gave up after {attempts.attempts} attempts in {attempts.deadline.timeout:g}s"
        if not is_read:
            note += "; the write may or may not have been applied"
        final = type(error)(error.message + note + ")", error.code)
        final.kind = error.kind
        return final

    async def _resolve(
        self, node: int, picker: TargetPicker, attempts: Attempts, refreshed: bool
    ) -> tuple[str | None, bool, bool]:
        """The address of a picked node; refreshes the table once per call if it is unknown.

        A node still without an address counts as a failed attempt: the picker
        moves on and the backoff is waited here. Returns (address, refreshed,
        go_on); go_on is False when the call should give up."""
        address = picker.router.address(node)
        if address is None and not refreshed:
            await self._refresh(attempts)
            address = picker.router.address(node)
            refreshed = True
        if address is not None:
            return address, refreshed, True
        picker.failed(node)
        wait = attempts.wait_after(grpc.StatusCode.UNAVAILABLE)
        if wait is None:
            return None, refreshed, False
        await asyncio.sleep(wait)
        return None, refreshed, True

    async def _unary(
        self,
        method: str,
        make_request: Callable[[], Any],
        *,
        partition: int,
        mode: Mode,
        is_read: bool,
        attempts: Attempts,
        admin: bool = False,
    ) -> Any:
        """Send one logical request until it succeeds, fails for good, or time runs out.

        admin=True sends it to the Admin service instead of KV (ErasePatient,
        which is routed to the patient's partition leader like any write)."""
        router = await self._router_for(attempts)
        picker = TargetPicker(router, partition, mode)
        error: MedkvError | None = None
        refreshed = False
        sent = 0
        unsure = 0  # attempts that may have reached the Raft log
        while (attempt_timeout := attempts.attempt_timeout()) is not None:
            node = picker.next()
            address, refreshed, go_on = await self._resolve(node, picker, attempts, refreshed)
            if address is None:
                error = Unavailable(_NO_ADDRESS)
                if not go_on:
                    break
                continue
            self._check_token()
            sent += 1
            try:
                reply, trailing = await self._attempt(
                    address, method, make_request(), attempt_timeout, admin
                )
            except grpc.aio.AioRpcError as exc:
                error, wait = await self._after_failure(
                    exc, node, picker, attempts, is_read=is_read
                )
                # Known to have applied nothing: refused before the log, or a
                # session refusal (which is itself final and applies nothing).
                if error.kind not in ("not-applied", "session-expired"):
                    unsure += 1
                if wait is None:
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
                continue
            await self._note_epoch(metadata_dict(trailing), attempts)
            has_state = "read_state" in reply.DESCRIPTOR.fields_by_name and reply.HasField(
                "read_state"
            )
            state = reply.read_state if has_state else None
            if state is not None and state.from_leader:
                router.note_leader(partition, state.node_id or node)
            elif not is_read or picker.mode is Mode.LEADER:
                router.note_leader(partition, node)
            return reply
        final = self._give_up(error, attempts, is_read=is_read)
        final.attempts = sent
        final.unsure_attempts = unsure
        raise final

    async def _attempt(
        self, address: str, method: str, request: Any, timeout: float, admin: bool
    ) -> tuple[Any, Any]:
        """One attempt of one request at one node: (reply, trailing metadata), or
        the grpc.aio.AioRpcError it failed with. The transport under the retry
        loop: the node's BatchCommands stream when multiplexing carries the
        method, else a unary call."""
        metadata = self._metadata
        if self._mux is not None and not admin:
            answer = await self._mux.call(address, method, request, timeout, metadata)
            if answer is not None:
                return answer
        stub = self._admin_stub(address) if admin else self._kv_stub(address)
        call = getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        reply = await call
        return reply, await call.trailing_metadata()

    async def _open_session(self, partition: int, attempts: Attempts) -> kv_pb2.OpenSessionResponse:
        """KV.OpenSession on the partition's leader, retried within the call's deadline.

        A retry after a lost reply may open a second session; the first is then
        never used and expires after the TTL (it costs a slot until then)."""
        reply: kv_pb2.OpenSessionResponse = await self._unary(
            "OpenSession",
            _const(kv_pb2.OpenSessionRequest(client_id=self.client_id, partition=partition)),
            partition=partition,
            mode=Mode.LEADER,
            is_read=False,
            attempts=attempts,
        )
        if reply.session == 0:
            raise Unavailable(f"partition {partition} answered OpenSession without a session id")
        return reply

    async def _write(
        self,
        method: str,
        build: Callable[[common_pb2.WriteId], Any],
        patient_id: str,
        timeout: float | None,
        admin: bool = False,
    ) -> Any:
        """A write: one WriteId for every attempt, released whatever the outcome.

        If its session expired, it is sent once more in a new session only when
        no earlier attempt can have applied it (client/sessions.py)."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)
        partition = router.partition_of(patient_id)
        for renewed in (False, True):
            session = await self._sessions.current(
                partition,
                lambda p: self._open_session(p, attempts),
            )
            seq = await session.begin()
            try:
                return await self._unary(
                    method,
                    lambda: build(session.write_id(seq)),  # noqa: B023 - called within the loop body
                    partition=partition,
                    mode=Mode.LEADER,
                    is_read=False,
                    attempts=attempts,
                    admin=admin,
                )
            except SessionExpired as expired:
                if type(expired) is not SessionExpired:
                    raise  # ResultForgotten: it may have applied
                self._sessions.discard(session)
                if renewed or expired.unsure_attempts:
                    note = (
                        "; an earlier attempt of this write may have been applied before its "
                        "session expired, so it was not sent again"
                        if expired.unsure_attempts
                        else "; it expired again in a session just opened, so it was not sent again"
                    )
                    final = SessionExpired(expired.message + note, expired.code)
                    final.attempts = expired.attempts
                    final.unsure_attempts = expired.unsure_attempts
                    final.kind = expired.kind
                    raise final from None
            finally:
                session.end(seq)
        raise AssertionError("unreachable")

    # --------------------------------------------------------------- lifecycle

    async def connect(self, timeout: float | None = None) -> None:
        """Fetch the routing table now (calls otherwise do it on first use)."""
        await self._refresh(Attempts(self.policy, timeout, rng=self._rng))

    async def close(self) -> None:
        """Close every channel. Idempotent."""
        self._closed = True
        if self._mux is not None:
            self._mux.close()
        channels, self._channels = list(self._channels.values()), {}
        self._kv.clear()
        self._admin.clear()
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ writes

    async def put(
        self, patient_id: str, record_id: str, value: bytes, *, timeout: float | None = None
    ) -> int:
        """Write a record; returns its new version."""
        _check_key(patient_id, record_id)
        data = _check_value(value)
        reply = await self._write(
            "Put",
            lambda wid: kv_pb2.PutRequest(
                write_id=wid, patient_id=patient_id, record_id=record_id, value=data
            ),
            patient_id,
            timeout,
        )
        return int(reply.version)

    async def cas(
        self,
        patient_id: str,
        record_id: str,
        value: bytes,
        expected_version: int,
        *,
        timeout: float | None = None,
    ) -> int:
        """Write only if the record is at `expected_version` (0: absent); VersionConflict otherwise."""
        _check_key(patient_id, record_id)
        data = _check_value(value)
        _check_version("expected_version", expected_version)
        reply = await self._write(
            "CompareAndSet",
            lambda wid: kv_pb2.CompareAndSetRequest(
                write_id=wid,
                patient_id=patient_id,
                record_id=record_id,
                value=data,
                expected_version=expected_version,
            ),
            patient_id,
            timeout,
        )
        return int(reply.version)

    async def delete(
        self,
        patient_id: str,
        record_id: str,
        expected_version: int | None = None,
        *,
        timeout: float | None = None,
    ) -> int:
        """Delete (write a tombstone); conditional when `expected_version` is given."""
        _check_key(patient_id, record_id)
        if expected_version is not None:
            _check_version("expected_version", expected_version)
        reply = await self._write(
            "Delete",
            lambda wid: kv_pb2.DeleteRequest(
                write_id=wid,
                patient_id=patient_id,
                record_id=record_id,
                has_expected_version=expected_version is not None,
                expected_version=expected_version or 0,
            ),
            patient_id,
            timeout,
        )
        return int(reply.version)

    async def batch(
        self, patient_id: str, ops: Iterable[Any], *, timeout: float | None = None
    ) -> int:
        """Apply puts/deletes/checks of one patient atomically; returns the batch's version."""
        _check_key(patient_id)
        wire_ops = batch_ops.to_proto(ops)
        reply = await self._write(
            "Batch",
            lambda wid: kv_pb2.BatchRequest(write_id=wid, patient_id=patient_id, ops=wire_ops),
            patient_id,
            timeout,
        )
        return int(reply.version)

    async def erase_patient(self, patient_id: str, *, timeout: float | None = None) -> int:
        """Erase every record and retained version of one patient on every replica
        (right to erasure; replicated through Raft, irreversible). Returns the
        erasure's version. Each replica then purges the patient's bytes from its
        Raft log, snapshot and LevelDB files once it has applied the erasure.
        Retries carry the same WriteId, so the erasure applies exactly once."""
        _check_key(patient_id)
        reply = await self._write(
            "ErasePatient",
            lambda wid: admin_pb2.ErasePatientRequest(
                client_id=wid.client_id, seq=wid.seq, session=wid.session, patient_id=patient_id
            ),
            patient_id,
            timeout,
            admin=True,
        )
        return int(reply.version)

    async def share_patient(
        self, patient_id: str, clinic: str, revoke: bool = False, *, timeout: float | None = None
    ) -> Sharing:
        """Register a patient to one more clinic (or, revoke=True, remove one).

        Allowed to a clinic-admin whose clinics include one the patient is
        registered to, or, for a patient nobody has registered yet, when
        `clinic` is one of theirs; revoking the patient's last clinic is refused
        (FAILED_PRECONDITION). Idempotent, so retried like a read: repeating it
        changes nothing. Needs a cluster with access control."""
        _check_key(patient_id)
        if not isinstance(clinic, str) or not clinic:
            raise InvalidArgument("clinic must be a non-empty string")
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)
        reply = await self._unary(
            "SharePatient",
            _const(kv_pb2.SharePatientRequest(
                patient_id=patient_id, clinic=clinic, revoke=bool(revoke)
            )),
            partition=router.partition_of(patient_id),
            mode=Mode.LEADER,
            is_read=False,
            attempts=attempts,
        )
        return Sharing(tuple(reply.clinics), int(reply.index))

    async def put_json(
        self,
        patient_id: str,
        record_id: str,
        resource: Mapping[str, Any],
        *,
        resource_type: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Write a FHIR-like resource dict in the canonical JSON encoding."""
        return await self.put(
            patient_id,
            record_id,
            encode_resource(resource, resource_type=resource_type),
            timeout=timeout,
        )

    # ------------------------------------------------------------------- reads

    async def get(
        self,
        patient_id: str,
        record_id: str,
        *,
        consistency: str = "linearizable",
        max_staleness: float | None = None,
        min_version: int | None = None,
        at_version: int | None = None,
        timeout: float | None = None,
    ) -> Record:
        """Read a record (the latest, or the one current at `at_version`); NotFound if none."""
        _check_key(patient_id, record_id)
        options, mode = read_options(consistency, max_staleness, min_version)
        if at_version is not None:
            _check_version("at_version", at_version)
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)
        request = kv_pb2.GetRequest(
            patient_id=patient_id, record_id=record_id, read=options, at_version=at_version or 0
        )
        reply = await self._unary(
            "Get",
            _const(request),
            partition=router.partition_of(patient_id),
            mode=mode,
            is_read=True,
            attempts=attempts,
        )
        return Record.from_proto(reply.record, ReadInfo.from_proto(reply.read_state))

    async def get_json(
        self,
        patient_id: str,
        record_id: str,
        *,
        resource_type: str | None = None,
        consistency: str = "linearizable",
        max_staleness: float | None = None,
        min_version: int | None = None,
        at_version: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Read a record written with put_json, as a dict."""
        record = await self.get(
            patient_id,
            record_id,
            consistency=consistency,
            max_staleness=max_staleness,
            min_version=min_version,
            at_version=at_version,
            timeout=timeout,
        )
        return decode_resource(record.value, resource_type=resource_type)

    async def history(
        self,
        patient_id: str,
        record_id: str,
        limit: int | None = None,
        *,
        consistency: str = "linearizable",
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> list[Record]:
        """The record's retained versions, newest first (at most `limit`)."""
        _check_key(patient_id, record_id)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0
        ):
            raise InvalidArgument("limit must be a positive integer")
        options, mode = read_options(consistency, max_staleness, None)
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)
        partition = router.partition_of(patient_id)
        out: list[Record] = []
        before = 0
        while limit is None or len(out) < limit:
            want = min(HISTORY_PAGE, limit - len(out)) if limit is not None else HISTORY_PAGE
            request = kv_pb2.HistoryRequest(
                patient_id=patient_id,
                record_id=record_id,
                read=options,
                limit=want,
                before_version=before,
            )
            reply = await self._unary(
                "History",
                _const(request),
                partition=partition,
                mode=mode,
                is_read=True,
                attempts=attempts,
            )
            info = ReadInfo.from_proto(reply.read_state)
            page = [Record.from_proto(r, info) for r in reply.versions]
            # Stop on a page that did not move backwards (no server may make
            # this loop forever), or a short one: a node returns fewer
            # versions than asked for only when it has no more.
            if not page or (before and page[0].version >= before):
                break
            out.extend(page)
            before = page[-1].version
            if len(page) < want or before <= 1:
                break
        return out[:limit] if limit is not None else out

    # ------------------------------------------------------------------- scans

    async def scan_pages(
        self,
        *,
        consistency: str = "follower",
        max_staleness: float | None = None,
        partitions: Iterable[int] | None = None,
        page_size: int = 0,
        parallelism: int | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[ScanPage, None]:
        """Stream every partition (or the ones given), read in parallel, page by page.

        Pages of different partitions interleave as they arrive. A partition
        whose replica fails mid-scan resumes on another replica from the last
        page's resume token. `timeout` bounds the retries of one partition
        between two pages (default: the client's timeout), not the whole scan.
        """
        options, mode = read_options(consistency, max_staleness, None)
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)
        wanted = list(range(router.partitions)) if partitions is None else sorted(set(partitions))
        for p in wanted:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < router.partitions:
                raise InvalidArgument(f"partition must be in 0..{router.partitions - 1}")
        if page_size < 0:
            raise InvalidArgument("page_size must be >= 0")
        width = max(1, parallelism or self.scan_parallelism)
        queue: asyncio.Queue[ScanPage | _PartitionDone | _PartitionFailed] = asyncio.Queue(
            maxsize=2 * width
        )
        gate = asyncio.Semaphore(width)

        async def worker(partition: int) -> None:
            async with gate:
                try:
                    async for page in self._scan_partition(
                        router, partition, options, mode, page_size, timeout
                    ):
                        await queue.put(page)
                except Exception as exc:
                    # Anything, so the consumer is never left waiting on a dead worker.
                    await queue.put(_PartitionFailed(exc))
                    return
                await queue.put(_PartitionDone())

        tasks = [asyncio.create_task(worker(p)) for p in wanted]
        try:
            pending = len(tasks)
            while pending:
                item = await queue.get()
                if isinstance(item, _PartitionDone):
                    pending -= 1
                elif isinstance(item, _PartitionFailed):
                    raise item.error
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def scan(
        self,
        *,
        consistency: str = "follower",
        max_staleness: float | None = None,
        partitions: Iterable[int] | None = None,
        page_size: int = 0,
        parallelism: int | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[Record, None]:
        """The records of scan_pages(), one by one; each carries partition and staleness."""
        pages = self.scan_pages(
            consistency=consistency,
            max_staleness=max_staleness,
            partitions=partitions,
            page_size=page_size,
            parallelism=parallelism,
            timeout=timeout,
        )
        try:
            async for page in pages:
                for record in page.records:
                    yield record
        finally:
            await pages.aclose()

    async def _scan_partition(
        self,
        router: Router,
        partition: int,
        options: common_pb2.ReadOptions,
        mode: Mode,
        page_size: int,
        timeout: float | None,
    ) -> AsyncIterator[ScanPage]:
        picker = TargetPicker(router, partition, mode)
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        token = b""
        error: MedkvError | None = None
        refreshed = False
        while attempts.attempt_timeout() is not None:
            node = picker.next()
            address, refreshed, go_on = await self._resolve(node, picker, attempts, refreshed)
            if address is None:
                error = Unavailable(_NO_ADDRESS)
                if not go_on:
                    break
                continue
            self._check_token()
            request = kv_pb2.ScanRequest(
                partition=partition, read=options, resume_token=token, page_size=page_size
            )
            call = self._kv_stub(address).Scan(request, metadata=self._metadata)
            try:
                while True:
                    reply = await _read_page(call, self.policy.attempt_timeout)
                    if reply is grpc.aio.EOF:
                        # The stream ended cleanly without a `done` page.
                        info = ReadInfo(partition, node, 0, 0, 0, 0.0, False)
                        yield ScanPage(partition, (), info, True)
                        return
                    info = ReadInfo.from_proto(reply.read_state)
                    records = tuple(Record.from_proto(r, info) for r in reply.records)
                    token = reply.resume_token or token
                    # Progress: the retry budget starts afresh for the next page.
                    attempts = Attempts(self.policy, timeout, rng=self._rng)
                    yield ScanPage(partition, records, info, reply.done)
                    if reply.done:
                        return
            except grpc.aio.AioRpcError as exc:
                error, wait = await self._after_failure(exc, node, picker, attempts, is_read=True)
                if wait is None:
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
            finally:
                call.cancel()
        raise self._give_up(error, attempts, is_read=True)

    # ------------------------------------------------------------------- admin

    async def routing_table(self, *, timeout: float | None = None) -> RoutingTable:
        """A freshly fetched routing table (also installed for routing)."""
        router = await self._refresh(Attempts(self.policy, timeout, rng=self._rng))
        return router.table

    async def cluster_status(
        self, *, timeout: float | None = None
    ) -> admin_pb2.ClusterStatusResponse:
        """Admin.ClusterStatus from any reachable node."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        reply: admin_pb2.ClusterStatusResponse = await self._admin_call(
            "ClusterStatus", admin_pb2.ClusterStatusRequest(), attempts
        )
        return reply

    async def add_node(
        self, node_id: int, address: str, *, client_address: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.AddNodeResponse:
        """Admin.AddNode: make a new node a member (joining until its system
        replica caught up, then active). Idempotent."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        reply: admin_pb2.AddNodeResponse = await self._admin_call(
            "AddNode",
            admin_pb2.AddNodeRequest(node_id=node_id, address=address,
                                     client_address=client_address),
            attempts,
        )
        return reply

    async def decommission_node(
        self, node_id: int, *, dead: bool = False, timeout: float | None = None
    ) -> admin_pb2.DecommissionNodeResponse:
        """Admin.DecommissionNode: move every replica off the node, then remove it
        (`dead`: it is gone for good). Returns at once; list_nodes shows progress."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        reply: admin_pb2.DecommissionNodeResponse = await self._admin_call(
            "DecommissionNode", admin_pb2.DecommissionNodeRequest(node_id=node_id, dead=dead),
            attempts,
        )
        return reply

    async def list_nodes(self, *, timeout: float | None = None) -> admin_pb2.ListNodesResponse:
        """Admin.ListNodes from any reachable node: the members as its replica of
        the cluster state has applied them."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        reply: admin_pb2.ListNodesResponse = await self._admin_call(
            "ListNodes", admin_pb2.ListNodesRequest(), attempts
        )
        return reply

    async def partition_status(
        self, partition: int, *, timeout: float | None = None
    ) -> admin_pb2.PartitionStatusResponse:
        """Admin.PartitionStatus of one partition, from its leader (the view
        with match indexes and lag of every replica; another replica is asked
        when the leader is unknown or down)."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        (p,) = self._partitions(await self._router_for(attempts), [partition])
        reply: admin_pb2.PartitionStatusResponse = await self._unary(
            "PartitionStatus", _const(admin_pb2.PartitionStatusRequest(partition=p)),
            partition=p, mode=Mode.LEADER, is_read=True, attempts=attempts, admin=True,
        )
        return reply

    async def transfer_leader(
        self, partition: int, node_id: int, *, timeout: float | None = None
    ) -> int:
        """Admin.TransferLeader: make node_id the partition's leader; returns the
        leader once the transfer completed. Sent to the current leader; safe to
        retry (asking again after it completed answers at once)."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        (p,) = self._partitions(await self._router_for(attempts), [partition])
        try:
            reply: admin_pb2.TransferLeaderResponse = await self._unary(
                "TransferLeader",
                _const(admin_pb2.TransferLeaderRequest(partition=p, target_node=node_id)),
                partition=p, mode=Mode.LEADER, is_read=True, attempts=attempts, admin=True,
            )
        except TooStale as e:
            # FAILED_PRECONDITION here is "that node holds no replica", neither
            # staleness nor a version conflict: a plain error with the node's reason.
            raise MedkvError(e.message, e.code) from None
        return int(reply.leader)

    # ------------------------------------------------ replicated cluster settings

    async def get_settings(
        self, *, partitions: Iterable[int] | None = None, timeout: float | None = None
    ) -> list[admin_pb2.GetSettingsResponse]:
        """Each partition's applied settings, from its leader, with the
        cluster's settings and generation as that leader's node knows them
        (cluster_generation_applied < cluster_generation: not propagated yet)."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)
        wanted = self._partitions(router, partitions)
        replies = await asyncio.gather(
            *(
                self._unary(
                    "GetSettings",
                    _const(admin_pb2.GetSettingsRequest(partition=p)),
                    partition=p,
                    mode=Mode.LEADER,
                    is_read=True,
                    attempts=attempts,
                    admin=True,
                )
                for p in wanted
            )
        )
        return list(replies)

    async def set_settings(
        self,
        *,
        session_ttl_ms: int | None = None,
        history_retention: int | None = None,
        max_sessions: int | None = None,
        max_results_per_session: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> admin_pb2.SetSettingsResponse:
        """Change cluster settings: ONE change of the cluster state (a new
        generation; fields left None keep their value), which the control
        plane then brings into every partition's log. With `wait`, return
        once every partition's leader applied that generation (DeadlineExceeded
        naming the ones that did not yet: they still will). Setting the values
        in force again changes nothing, so a retry is harmless."""
        changes = {
            "session_ttl_ms": session_ttl_ms,
            "history_retention": history_retention,
            "max_sessions": max_sessions,
            "max_results_per_session": max_results_per_session,
        }
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            raise InvalidArgument(f"name at least one setting: {', '.join(changes)}")
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f"{name} must be a positive integer")
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        reply: admin_pb2.SetSettingsResponse = await self._admin_call(
            "SetSettings", admin_pb2.SetSettingsRequest(**given), attempts
        )
        if wait:
            while True:
                behind = await self.settings_behind(
                    reply.generation, timeout=max(0.5, min(5.0, attempts.deadline.remaining())))
                if not behind:
                    break
                if attempts.deadline.remaining() <= 0:
                    raise DeadlineExceeded(
                        f"cluster settings generation {reply.generation} is set, but "
                        f"partition(s) {','.join(map(str, behind))} have not applied it yet "
                        "(they will: `medkv settings get` shows progress)"
                    )
                await asyncio.sleep(0.2)
        return reply

    async def settings_behind(
        self, generation: int, *, timeout: float | None = None
    ) -> list[int]:
        """Partitions whose leader has not applied cluster settings generation
        `generation` yet (or could not say so within the timeout)."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        router = await self._router_for(attempts)

        async def one(p: int) -> int:
            reply: admin_pb2.GetSettingsResponse = await self._unary(
                "GetSettings", _const(admin_pb2.GetSettingsRequest(partition=p)),
                partition=p, mode=Mode.LEADER, is_read=True, attempts=attempts, admin=True,
            )
            return int(reply.cluster_generation_applied)

        wanted = self._partitions(router, None)
        got = await asyncio.gather(*(one(p) for p in wanted), return_exceptions=True)
        return [p for p, g in zip(wanted, got, strict=True)
                if isinstance(g, BaseException) or g < generation]

    @staticmethod
    def _partitions(router: Router, partitions: Iterable[int] | None) -> list[int]:
        wanted = list(range(router.partitions)) if partitions is None else sorted(set(partitions))
        for p in wanted:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < router.partitions:
                raise InvalidArgument(f"partition must be in 0..{router.partitions - 1}")
        return wanted

    # --------------------------------------------- encryption keys, per node

    async def _node_admin(self, address: str, method: str, request: Any, timeout: float | None) -> Any:
        """One unary Admin RPC to one given node, no failover: key state is per node."""
        stub = self._admin_stub(address)
        return await self._on_node(
            address, method,
            lambda attempt_timeout: getattr(stub, method)(
                request, timeout=attempt_timeout, metadata=self._metadata),
            timeout,
        )

    async def _on_node(
        self, address: str, method: str, call: Callable[[float], Awaitable[T]],
        timeout: float | None,
    ) -> T:
        """call(attempt_timeout) against one given node, no failover; retried (from the
        start) only while that node is unreachable, within the deadline."""
        attempts = Attempts(self.policy, timeout, rng=self._rng)
        last: MedkvError | None = None
        while (attempt_timeout := attempts.attempt_timeout()) is not None:
            self._check_token()
            try:
                return await call(attempt_timeout)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    # Not a version conflict nor staleness: a key file or keyring state.
                    raise MedkvError(details, code) from None
                last = from_status(code, details, is_read=True)
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise last from None
            wait = attempts.wait_after(grpc.StatusCode.UNAVAILABLE)
            if wait is None:
                break
            await asyncio.sleep(wait)
        raise Unavailable(
            f"node {address} did not answer {method} within {attempts.deadline.timeout:g}s"
            + (f" (last error: {last})" if last else "")
        )

    async def init_cluster(
        self, *, partitions: int = 0, replication: int = 0, timeout: float | None = None
    ) -> admin_pb2.InitClusterResponse:
        """Create the cluster (Admin.InitCluster) through the first seed address,
        retried while it is unreachable (nodes still starting). Asking one node,
        not any, and one cluster id for every attempt: a retry never founds a
        second cluster. 0 = the node's configured partitions / replication."""
        request = admin_pb2.InitClusterRequest(
            partitions=partitions, replication=replication, cluster_id=uuid.uuid4().hex
        )
        reply: admin_pb2.InitClusterResponse = await self._node_admin(
            self._seeds[0], "InitCluster", request, timeout
        )
        return reply

    async def key_status(
        self, address: str, *, count_values: bool = False, timeout: float | None = None
    ) -> admin_pb2.KeyStatusResponse:
        """One node's keys: masters, data keys, re-encryption progress (no key material)."""
        reply: admin_pb2.KeyStatusResponse = await self._node_admin(
            address, "KeyStatus", admin_pb2.KeyStatusRequest(count_values=count_values), timeout
        )
        return reply

    async def rotate_data_key(
        self, address: str, *, timeout: float | None = None
    ) -> admin_pb2.RotateDataKeyResponse:
        """Have one node start a new data key and re-encrypt in the background
        (or continue an interrupted pass); progress through key_status()."""
        reply: admin_pb2.RotateDataKeyResponse = await self._node_admin(
            address, "RotateDataKey", admin_pb2.RotateDataKeyRequest(), timeout
        )
        return reply

    async def rotate_master_key(
        self,
        address: str,
        new_master_key_id: str,
        step: admin_pb2.MasterRotationStep,
        *,
        timeout: float | None = None,
    ) -> admin_pb2.RotateMasterKeyResponse:
        """One step (admin_pb2.MASTER_REWRAP, then MASTER_INSTALL) of a master rotation
        on one node, to the key staged there as KEY_FILE.next."""
        reply: admin_pb2.RotateMasterKeyResponse = await self._node_admin(
            address,
            "RotateMasterKey",
            admin_pb2.RotateMasterKeyRequest(new_master_key_id=new_master_key_id, step=step),
            timeout,
        )
        return reply

    # --------------------------------------------- the audit log, per node

    async def _node_audit_query(
        self, address: str, request: admin_pb2.AuditQueryRequest, timeout: float | None
    ) -> list[AuditEntry]:
        """One node's AuditQuery stream, read to its end (retried like _node_admin)."""
        stub = self._admin_stub(address)

        async def read_all(attempt_timeout: float) -> list[AuditEntry]:
            out: list[AuditEntry] = []
            call = stub.AuditQuery(request, timeout=attempt_timeout, metadata=self._metadata)
            async for page in call:
                out.extend(AuditEntry.from_proto(r) for r in page.records)
            return out

        return await self._on_node(address, "AuditQuery", read_all, timeout)

    async def audit_query(
        self,
        *,
        patient_id: str | None = None,
        subject: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        break_glass_only: bool = False,
        timeout: float | None = None,
    ) -> AuditQueryResult:
        """Audit entries of every node of the routing table, merged by time (oldest
        first): the newest `limit` (default 1000, at most 10000) matching all the
        given filters. since/until are Unix seconds, both inclusive. The patient id
        is sent to the nodes, which hash it; entries name patients only by hash.
        Needs the auditor role. A node that did not answer is in `errors`."""
        for name, t in (("since", since), ("until", until)):
            if t is not None and (not math.isfinite(t) or t <= 0):
                raise InvalidArgument(f"{name} must be positive Unix seconds")
        if limit is not None and (isinstance(limit, bool) or not 1 <= limit <= 10_000):
            raise InvalidArgument("limit must be in 1..10000")
        request = admin_pb2.AuditQueryRequest(
            patient_id=patient_id or "", subject=subject or "", since=since or 0.0,
            until=until or 0.0, limit=limit or 0, break_glass_only=break_glass_only,
        )
        table = await self.routing_table(timeout=timeout)
        nodes = sorted(table.nodes.items())
        answers = await asyncio.gather(
            *(self._node_audit_query(addr, request, timeout) for _, addr in nodes),
            return_exceptions=True,
        )
        result = AuditQueryResult()
        found: list[list[AuditEntry]] = []
        for (node_id, _), ans in zip(nodes, answers, strict=True):
            if isinstance(ans, InvalidArgument | PermissionDenied | Unauthenticated):
                raise ans  # the same request, the same caller: refused everywhere alike
            if isinstance(ans, MedkvError | ValueError):
                result.errors[node_id] = str(ans)
            elif isinstance(ans, BaseException):
                raise ans
            else:
                found.append(ans)
        result.entries = merge_entries(found, limit or 1000)
        return result

    async def audit_verify(self, *, timeout: float | None = None) -> list[AuditVerifyResult]:
        """Every node checks its own audit chain and its anchored head (AuditVerify);
        one result per node of the routing table, in id order. Needs the auditor role."""
        table = await self.routing_table(timeout=timeout)
        nodes = sorted(table.nodes.items())
        answers = await asyncio.gather(
            *(self._node_admin(addr, "AuditVerify", admin_pb2.AuditVerifyRequest(), timeout)
              for _, addr in nodes),
            return_exceptions=True,
        )
        out: list[AuditVerifyResult] = []
        for (node_id, addr), ans in zip(nodes, answers, strict=True):
            if isinstance(ans, PermissionDenied | Unauthenticated):
                raise ans
            if isinstance(ans, MedkvError):
                out.append(AuditVerifyResult(node_id, addr, error=str(ans)))
            elif isinstance(ans, BaseException):
                raise ans
            else:
                out.append(AuditVerifyResult.from_proto(node_id, addr, ans))
        return out


class _PartitionDone:
    pass


class _PartitionFailed:
    def __init__(self, error: Exception) -> None:
        self.error = error


async def _read_page(call: Any, timeout: float) -> Any:
    """The stream's next message, or a retryable error after `timeout` idle seconds.

    The read runs as its own task and is never awaited after cancellation:
    cancelling the call is what ends it. (asyncio.wait_for would wait for the
    cancelled read to finish, which a grpc.aio stream does not promise.)
    """
    read = asyncio.ensure_future(call.read())
    read.add_done_callback(_consume)
    try:
        done, _ = await asyncio.wait({read}, timeout=timeout)
    except BaseException:
        call.cancel()
        read.cancel()
        raise
    if not done:
        call.cancel()
        read.cancel()
        raise _stalled()
    return read.result()


def _consume(task: asyncio.Future[Any]) -> None:
    # Retrieve the outcome of a read nobody waits for, so asyncio does not log it.
    if not task.cancelled():
        task.exception()


def _stalled() -> grpc.aio.AioRpcError:
    """A scan stream that sent nothing for a whole attempt timeout, as a retryable error."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="scan stream stalled",
    )


__all__ = ["DEFAULT_ADDRESS", "AsyncClient", "parse_addresses", "read_options"]
