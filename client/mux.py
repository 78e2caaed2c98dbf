"""Many concurrent KV requests to one node over one BatchCommands stream.

Why: a unary gRPC call from Python costs more CPU than the work the node does
for a small read or write (a call object, an HTTP/2 stream, headers with the
bearer token, a trailer, per call on both sides). The node's
KV.BatchCommands carries many requests per message on one long-lived stream,
each tagged with a request id, answered in any order. Sending everything
queued at one event-loop turn as one message cuts per-request overhead on
the client and on the node alike.

This is only a transport: `Multiplexer.call` does what one unary attempt
does (one request, one reply or one failure, within the attempt's timeout)
and reports a failure as the grpc.aio.AioRpcError the unary call would have
raised, with the node's leader hint and error kind as trailing metadata. The
client's retry loop (AsyncClient._unary / _after_failure) is unchanged above
it: routing, NOT_LEADER redirects, backoff and deadlines are decided there.

Rules:
  * one stream per node address, opened lazily on first use and again after
    it broke; a broken stream fails its in-flight requests with UNAVAILABLE
    (retried by the call loop like a lost connection);
  * the stream carries the request metadata it was opened with (bearer token,
    clinic, break-glass reason): when that changes (a renewed token file),
    or the stream is STREAM_MAX_AGE_S old, new requests go on a new stream
    and the old one is closed once drained. (The node checks the token when
    a stream opens; the age bound keeps this client from riding one stream
    far past its token's expiry. It binds only this client, not the node.)
  * each request's timeout is the caller's: past it the caller gets
    DEADLINE_EXCEEDED and a late answer is dropped. The request carries it
    (KVRequest.timeout_ms; the stream itself has no deadline), so the node
    answers in time and stops waiting as it does for a unary call's deadline;
  * what is queued when the writer runs (the loop turn after the first
    request was queued, or when the previous write finished) goes in one
    message, at most MAX_OPS_PER_MESSAGE requests / MAX_BYTES_PER_MESSAGE;
  * a node that refuses the stream itself (UNIMPLEMENTED: an older node;
    PERMISSION_DENIED / UNAUTHENTICATED: a role without the stream permission)
    is then called unary for those requests and later ones (`call` returns
    None: the caller sends the unary RPC), so the outcome is exactly the
    unary path's.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from client.errors import ERROR_KIND_KEY
from client.routing import EPOCH_KEY, LEADER_KEY
from proto.medkv.v1 import kv_pb2

# Unary KV method -> the KVRequest / KVResponse field that carries it.
# OpenSession stays unary on purpose: it is rare, and the node authorizes it
# only as a unary call (the stream's per-request policy names the six below).
METHOD_FIELDS: dict[str, str] = {
    "Put": "put",
    "Get": "get",
    "CompareAndSet": "cas",
    "Delete": "delete",
    "History": "history",
    "Batch": "batch",
}

MAX_OPS_PER_MESSAGE = 256
MAX_BYTES_PER_MESSAGE = 1 << 20
# A request larger than this goes unary: one big value should neither delay
# the small requests queued with it nor, if it is refused as too large, take
# the whole stream (and every request on it) down with it.
MAX_STREAMED_REQUEST_BYTES = 256 * 1024
STREAM_MAX_AGE_S = 60.0

# Stream-level statuses that mean "this node will not serve this stream";
# the requests then go unary (same outcome as without multiplexing).
_REFUSED_STREAM = frozenset(
    {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

_CODES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}

Metadata = tuple[tuple[str, str], ...] | None


def rpc_error(
    code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str]] = ()
) -> grpc.aio.AioRpcError:
    """The error a unary call with this status would have raised."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


class _UseUnary(Exception):
    """The stream was refused as a whole: send this request as a unary call."""


class _Stream:
    """One BatchCommands call, its writer and reader tasks, and its waiting requests."""

    def __init__(self, stub: Any, address: str, metadata: Metadata) -> None:
        self.address = address
        self.metadata = metadata
        self.call: Any = stub.BatchCommands(metadata=metadata)
        self.pending: dict[int, asyncio.Future[kv_pb2.KVResponse]] = {}
        self.queue: list[tuple[kv_pb2.KVRequest, int, asyncio.Future[kv_pb2.KVResponse]]] = []
        self.wake = asyncio.Event()
        self.broken: BaseException | None = None
        self.retiring = False
        self.answered = False  # the node answered at least once: it serves streams
        self.opened_at = asyncio.get_running_loop().time()
        # The stream's initial metadata: what a unary reply's trailers would
        # say about the node (its routing epoch, medkv-epoch), once per stream.
        self.node_metadata: Any = None
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write_loop())
        self.reader = loop.create_task(self._read_loop())

    @property
    def open(self) -> bool:
        return self.broken is None and not self.retiring

    def submit(self, req: kv_pb2.KVRequest, size: int) -> asyncio.Future[kv_pb2.KVResponse]:
        fut: asyncio.Future[kv_pb2.KVResponse] = asyncio.get_running_loop().create_future()
        self.pending[req.request_id] = fut
        self.queue.append((req, size, fut))
        self.wake.set()
        return fut

    def retire(self) -> None:
        """Take no new requests; close the request side once everything queued is sent."""
        self.retiring = True
        self.wake.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    batch: list[kv_pb2.KVRequest] = []
                    nbytes = 0
                    taken = 0
                    for req, size, fut in self.queue:
                        if batch and (
                            len(batch) >= MAX_OPS_PER_MESSAGE
                            or nbytes + size > MAX_BYTES_PER_MESSAGE
                        ):
                            break
                        taken += 1
                        if not fut.done():  # a caller that gave up is not sent
                            batch.append(req)
                            nbytes += size
                    del self.queue[:taken]
                    if batch:
                        await self.call.write(kv_pb2.BatchCommandsRequest(requests=batch))
                if self.retiring and not self.pending:
                    await self.call.done_writing()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The call failed: its status (which the reader gets) says why,
            # e.g. that the node refused the stream; wait for it briefly.
            await asyncio.wait({self.reader}, timeout=1.0)
            self._fail(exc)

    async def _read_loop(self) -> None:
        error: BaseException
        try:
            self.node_metadata = await self.call.initial_metadata()
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    code = await self.call.code()
                    details = await self.call.details()
                    error = rpc_error(code, details or "")
                    break
                self.answered = True
                for resp in msg.responses:
                    fut = self.pending.pop(resp.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(resp)
                if self.retiring and not self.pending and not self.queue:
                    self.wake.set()  # let the writer half-close
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the client closed the stream")
            self._fail(error)
            raise
        except grpc.aio.AioRpcError as exc:
            error = exc
        except Exception as exc:  # anything else: the stream is unusable
            error = exc
        self._fail(error)

    def _fail(self, exc: BaseException) -> None:
        """End the stream: every request still waiting fails (UNAVAILABLE, or
        _UseUnary when the node refused the stream itself)."""
        if self.broken is not None:
            return
        self.broken = exc
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
        if code in _REFUSED_STREAM and not self.answered:
            failure: BaseException = _UseUnary()
        else:
            what = f"{code.name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
            failure = rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"the BatchCommands stream to {self.address} ended ({what})",
            )
        pending, self.pending = self.pending, {}
        self.queue.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(failure)
        self.call.cancel()
        self.wake.set()  # the writer wakes, finds nothing queued
        if not self.writer.done() and asyncio.current_task() is not self.writer:
            self.writer.cancel()

    def close(self) -> None:
        self._fail(rpc_error(grpc.StatusCode.UNAVAILABLE, "the client is closed"))
        for task in (self.writer, self.reader):
            if not task.done() and asyncio.current_task() is not task:
                task.cancel()


class Multiplexer:
    """The BatchCommands streams of one client, one per node address.

    `stub_for(address)` gives the KV stub on the client's channel to that node
    (the unary path's channel: same TLS, same connection)."""

    def __init__(self, stub_for: Callable[[str], Any]) -> None:
        self._stub_for = stub_for
        self._streams: dict[str, _Stream] = {}
        self._retired: set[_Stream] = set()
        # Addresses (with the metadata they refused) that serve unary calls only.
        self._unary_only: set[tuple[str, Metadata]] = set()
        self._ids = itertools.count(1)

    def carries(self, method: str) -> bool:
        return method in METHOD_FIELDS

    def _stream(self, address: str, metadata: Metadata) -> _Stream:
        stream = self._streams.get(address)
        if (
            stream is not None
            and stream.open
            and stream.metadata == metadata
            and asyncio.get_running_loop().time() - stream.opened_at < STREAM_MAX_AGE_S
        ):
            return stream
        if stream is not None:
            if stream.broken is None:
                stream.retire()  # new metadata (a renewed token): drain, then close
                self._retired.add(stream)
            self._forget_retired()
        stream = self._streams[address] = _Stream(self._stub_for(address), address, metadata)
        return stream

    def _forget_retired(self) -> None:
        self._retired = {s for s in self._retired if not s.reader.done()}

    async def call(
        self, address: str, method: str, request: Any, timeout: float, metadata: Metadata
    ) -> tuple[Any, Any] | None:
        """One attempt of a unary KV method over the node's stream: its reply
        and the stream's node metadata (in place of the unary call's trailers),
        or the AioRpcError the unary call would raise. None: not streamable
        (a method or size the stream does not carry, or a node that refused
        the stream); the caller sends it as a unary call instead."""
        field = METHOD_FIELDS.get(method)
        if field is None or (address, metadata) in self._unary_only:
            return None
        size = request.ByteSize()
        if size > MAX_STREAMED_REQUEST_BYTES:
            return None
        req = kv_pb2.KVRequest(
            request_id=next(self._ids), timeout_ms=max(1, math.ceil(timeout * 1000)),
            **{field: request},
        )
        stream = self._stream(address, metadata)
        fut = stream.submit(req, size + 16)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, _expire, fut)
        try:
            resp = await fut
        except _UseUnary:
            self._unary_only.add((address, metadata))
            if self._streams.get(address) is stream:
                del self._streams[address]
            return None
        finally:
            timer.cancel()
            stream.pending.pop(req.request_id, None)
        status = resp.status
        if status.code:
            trailing: list[tuple[str, str]] = []
            if status.leader_hint:
                trailing.append((LEADER_KEY, status.leader_hint))
            if status.error_kind:
                trailing.append((ERROR_KIND_KEY, status.error_kind))
            if status.epoch:
                trailing.append((EPOCH_KEY, str(status.epoch)))
            code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
            raise rpc_error(code, status.message, trailing)
        if resp.WhichOneof("response") != field:
            raise rpc_error(
                grpc.StatusCode.INTERNAL,
                f"BatchCommands answered a {method} request with "
                f"{resp.WhichOneof('response') or 'nothing'}",
            )
        return getattr(resp, field), stream.node_metadata

    def close(self) -> None:
        """Cancel every stream (their waiting requests fail UNAVAILABLE)."""
        for stream in [*self._streams.values(), *self._retired]:
            stream.close()
        self._streams.clear()
        self._retired.clear()

    def streams(self) -> dict[str, _Stream]:
        """The open streams by address (for tests and diagnostics)."""
        return dict(self._streams)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


__all__ = ["MAX_OPS_PER_MESSAGE", "METHOD_FIELDS", "Multiplexer", "rpc_error"]
