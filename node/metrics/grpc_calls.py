"""A gRPC server interceptor counting every call by method and status code.

It is the outermost interceptor (before node.auth.interceptor's), so calls
refused by authentication or the policy are counted with their status
(UNAUTHENTICATED, PERMISSION_DENIED) like the ones the servicers answer.
The labels are the method's service and name (the node's own, bounded set:
only methods with a registered handler are wrapped) and the status code
name: never anything from the request.

Latency is observed for unary calls only; a stream's duration is its
lifetime (the Raft transport's streams live as long as the node), which a
latency histogram would only blur.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from node.metrics.instruments import NodeMetrics

_CODES_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    """The status the call ended with, as far as the context says."""
    try:
        code = context.code()
    except Exception:
        return default
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        c = _CODES_BY_VALUE.get(code)
        return str(c.name) if c is not None else "UNKNOWN"
    return default


def _split(method: str) -> tuple[str, str]:
    """'/medkv.v1.KV/Put' -> ('medkv.v1.KV', 'Put')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls (medkv_grpc_server_handled_total) and unary latency."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._handled: dict[tuple[str, str, str], Any] = {}  # (type, method, code) -> child

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
        if len(self._wrapped) < 1024:  # bounded: the services' methods are few
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _count(self, kind: str, method: str, code: str) -> None:
        child = self._handled.get((kind, method, code))
        if child is None:
            service, name = _split(method)
            child = self.metrics.grpc_handled.labels(kind, service, name, code)
            self._handled[(kind, method, code)] = child
        child.inc()

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, name = _split(method)
        opts = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            latency = self.metrics.grpc_seconds.labels(service, name)
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, latency), **opts)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, "server_stream", handler.unary_stream), **opts)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._client_stream(method, handler.stream_unary), **opts)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, "bidi_stream", handler.stream_stream), **opts)

    def _unary(self, method: str, inner: Any, latency: Any) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "UNKNOWN"
            try:
                response = await inner(request, context)
                code = _code_name(context, "OK")
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                latency.observe(time.perf_counter() - start)
                self._count("unary", method, code)

        return behavior

    def _client_stream(self, method: str, inner: Any) -> Any:
        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            code = "UNKNOWN"
            try:
                response = await inner(requests, context)
                code = _code_name(context, "OK")
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                self._count("client_stream", method, code)

        return behavior

    def _streaming(self, method: str, kind: str, inner: Any) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            code = "UNKNOWN"
            try:
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result  # a servicer that writes with context.write()
                code = _code_name(context, "OK")
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                self._count(kind, method, code)

        return behavior
