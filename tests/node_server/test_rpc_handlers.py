"""node.rpc_handlers in a real in-process gRPC server: undecodable requests get
INVALID_ARGUMENT naming the message type, never UNKNOWN, and a server
interceptor (as node.auth installs) still sees parsed request messages, or a
Garbled stand-in for one that did not parse, before the handler refuses it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from node.errors import NotFound
from node.rpc_handlers import Garbled, add_service
from proto.medkv.v1 import admin_pb2


class _Admin:
    """Only PartitionStatus does something; it is enough for the wrapper."""

    async def PartitionStatus(
        self, request: admin_pb2.PartitionStatusRequest, context: Any
    ) -> admin_pb2.PartitionStatusResponse:
        if request.partition == 7:
            raise NotFound("partition 7: nothing here")
        if request.partition == 8:
            raise RuntimeError("a bug")
        return admin_pb2.PartitionStatusResponse(answered_by=request.partition)

    def __getattr__(self, name: str) -> Any:
        async def unimplemented(request: Any, context: Any) -> Any:
            raise NotFound(f"{name}: not in this test")

        return unimplemented


class _Recorder(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.seen: list[type] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def behavior(request: Any, context: Any) -> Any:
            self.seen.append(type(request))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior, handler.request_deserializer, handler.response_serializer
        )


def test_garbage_is_invalid_argument_and_interceptors_see_parsed_requests() -> None:
    async def run() -> None:
        recorder = _Recorder()
        server = grpc.aio.server(interceptors=[recorder])
        add_service(server, admin_pb2, "Admin", _Admin())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.unary_unary(
                    "/medkv.v1.Admin/PartitionStatus",
                    request_serializer=lambda b: b,
                    response_deserializer=admin_pb2.PartitionStatusResponse.FromString,
                )
                ok = await call(admin_pb2.PartitionStatusRequest(partition=3).SerializeToString(),
                                timeout=5)
                assert ok.answered_by == 3
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(b"\xff\xff\xff", timeout=5)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid protobuf encoding of medkv.v1.PartitionStatusRequest" in (
                    e.value.details() or ""
                )
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(admin_pb2.PartitionStatusRequest(partition=7).SerializeToString(),
                               timeout=5)
                assert e.value.code() == grpc.StatusCode.NOT_FOUND
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(admin_pb2.PartitionStatusRequest(partition=8).SerializeToString(),
                               timeout=5)
                assert e.value.code() == grpc.StatusCode.INTERNAL  # a bug stays a bug
                assert "a bug" not in (e.value.details() or "")
        finally:
            await server.stop(None)
        assert recorder.seen == [
            admin_pb2.PartitionStatusRequest, Garbled,
            admin_pb2.PartitionStatusRequest, admin_pb2.PartitionStatusRequest,
        ]

    asyncio.run(run())
