"""Every RPC of every service (KV, Admin, RaftTransport) behind one wrapper
that turns bad input into a precise status.

gRPC's own deserializer runs before any handler: a request that is not a
valid protobuf encoding of its type, or holds a string that is not UTF-8,
failed there with UNKNOWN and a traceback in the log, per request. Here the
deserializer never raises: it hands on the parsed message, or a Garbled
stand-in naming the problem, and the wrapper answers the latter with
INVALID_ARGUMENT naming the message type and the problem, and one
(rate-limited) log line. The same holds for every message of a streaming
call: a stream that turns to garbage ends with INVALID_ARGUMENT. Server
interceptors (node.auth) see parsed messages as before, or a Garbled one.

Whatever a handler raises is mapped the same way for every method:
ValidationError and CommandError are INVALID_ARGUMENT, a NodeError carries
its own status (node.grpc_errors), and anything else is a bug: INTERNAL,
logged with its traceback at most once per interval per kind.

The services are built from their descriptors, so a method added to a
.proto is wrapped as soon as its servicer implements it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from node.commands import CommandError
from node.errors import InvalidArgument, NodeError
from node.grpc_errors import abort_with, current_method
from node.limits import ValidationError
from node.rate_log import RateLimitedLog

log = logging.getLogger("medkv.rpc")
_limited = RateLimitedLog(log)

def parse(cls: type[Message], raw: bytes) -> Any:
    """A request message from its bytes, or InvalidArgument naming the problem
    (never quoting the bytes: they may hold patient data)."""
    try:
        return cls.FromString(raw)
    except DecodeError as e:
        problem = (
            "a string field is not valid UTF-8" if "UTF-8" in str(e)
            else "not a valid protobuf encoding"
        )
        raise InvalidArgument(f"request: {problem} of {cls.DESCRIPTOR.full_name}") from None


@dataclass(frozen=True, slots=True)
class Garbled:
    """A request that did not parse, in place of the message it should have been."""

    error: InvalidArgument


def _lenient(cls: type[Message]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(cls, raw)
        except InvalidArgument as e:
            return Garbled(e)

    return deserialize


def _checked(request: Any) -> Any:
    if isinstance(request, Garbled):
        raise request.error
    return request


def as_node_error(e: Exception) -> NodeError | None:
    """The status an exception from a handler stands for; None for a bug."""
    if isinstance(e, NodeError):
        return e
    if isinstance(e, ValidationError | CommandError):
        return InvalidArgument(str(e))
    return None


async def _answer(name: str, context: grpc.aio.ServicerContext, e: Exception) -> None:
    err = as_node_error(e)
    if err is None:
        _limited.log(
            logging.ERROR, ("bug", name, type(e)),
            "%s failed unexpectedly: %s", name, type(e).__name__, exc_info=True,
        )
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in {name}; the node logged it"
        )
    else:
        await abort_with(context, err)


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


def _wrap(name: str, method: MethodDescriptor, impl: Callable[..., Any]) -> grpc.RpcMethodHandler:
    deserialize = _lenient(message_factory.GetMessageClass(method.input_type))
    resp_cls = message_factory.GetMessageClass(method.output_type)
    serialize = resp_cls.SerializeToString

    if not method.client_streaming and not method.server_streaming:

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_method.set(name)
            try:
                return await impl(_checked(request), context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _answer(name, context, e)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)

    if not method.client_streaming:

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            current_method.set(name)
            try:
                async for reply in impl(_checked(request), context):
                    yield reply
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _answer(name, context, e)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)

    if not method.server_streaming:

        async def stream_unary(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> Any:
            current_method.set(name)
            try:
                return await impl(_parsed_stream(requests), context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _answer(name, context, e)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)

    async def stream_stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        current_method.set(name)
        try:
            async for reply in impl(_parsed_stream(requests), context):
                yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _answer(name, context, e)

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)


def add_service(
    server: grpc.aio.Server, pb2_module: ModuleType, service_name: str, servicer: object
) -> None:
    """Register every method of pb2_module's service_name, served by servicer's
    method of the same name, behind the wrapper."""
    service = pb2_module.DESCRIPTOR.services_by_name[service_name]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        impl = getattr(servicer, method.name)
        handlers[method.name] = _wrap(f"{service.full_name}/{method.name}", method, impl)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)

