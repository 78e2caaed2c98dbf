"""A real grpc.aio server (the standard health service) behind the proxy:
HTTP/2 connections see partitions, and recover after a heal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jepsen_like.proxy import CLIENT, FaultProxy, ProxyNet

CUT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# Reconnect quickly after a heal instead of gRPC's default 1 s+ backoff.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]


def run(coro: object, timeout: float = 60.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    asyncio.run(bounded())


@asynccontextmanager
async def health_server() -> AsyncIterator[int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def check(
    stub: health_pb2_grpc.HealthStub, timeout: float, wait_for_ready: bool = False
) -> None:
    reply = await stub.Check(
        health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=wait_for_ready
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def status_of_failure(stub: health_pb2_grpc.HealthStub) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(stub, timeout=0.5)
    return err.value.code()


def test_hold_partition_stalls_calls_on_an_open_http2_connection() -> None:
    async def body() -> None:
        async with health_server() as port:
            proxy = FaultProxy(0, "127.0.0.1", port)
            await proxy.start()
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{proxy.port}", options=CHANNEL_OPTIONS
            ) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                await check(stub, timeout=5)
                proxy.block("hold")
                assert await status_of_failure(stub) in CUT
                assert await status_of_failure(stub) in CUT
                proxy.unblock()
                await check(stub, timeout=5, wait_for_ready=True)
                await check(stub, timeout=2)
            await proxy.stop()

    run(body())


def test_reset_partition_fails_calls_and_the_channel_reconnects_after_heal() -> None:
    async def body() -> None:
        async with health_server() as port:
            proxy = FaultProxy(0, "127.0.0.1", port)
            await proxy.start()
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{proxy.port}", options=CHANNEL_OPTIONS
            ) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                await check(stub, timeout=5)
                proxy.block("reset")
                assert await status_of_failure(stub) in CUT
                assert await status_of_failure(stub) in CUT
                proxy.unblock()
                await check(stub, timeout=5, wait_for_ready=True)
            await proxy.stop()

    run(body())


def test_proxy_net_partition_cuts_grpc_between_the_right_nodes_only() -> None:
    async def body() -> None:
        async with health_server() as p1, health_server() as p2, health_server() as p3:
            net = ProxyNet({1: ("127.0.0.1", p1), 2: ("127.0.0.1", p2), 3: ("127.0.0.1", p3)})
            await net.start()
            channels = {
                link: grpc.aio.insecure_channel(
                    "{}:{}".format(*net.proxies[link].address), options=CHANNEL_OPTIONS
                )
                for link in net.links
            }
            stubs = {link: health_pb2_grpc.HealthStub(ch) for link, ch in channels.items()}
            try:
                await asyncio.gather(*(check(s, timeout=5) for s in stubs.values()))
                net.partition([{1}, {2, 3}])
                cut = {(1, 2), (2, 1), (1, 3), (3, 1)}
                failures = await asyncio.gather(
                    *(check(s, timeout=0.5) for s in stubs.values()), return_exceptions=True
                )
                for link, failure in zip(stubs, failures, strict=True):
                    if link in cut:
                        assert isinstance(failure, grpc.aio.AioRpcError), link
                        assert failure.code() in CUT
                    else:
                        assert failure is None, (link, failure)
                assert (CLIENT, 1) not in cut  # clients still reach the minority node
                net.heal()
                await asyncio.gather(
                    *(check(s, timeout=5, wait_for_ready=True) for s in stubs.values())
                )
            finally:
                for ch in channels.values():
                    await ch.close()
                await net.stop()

    run(body())
