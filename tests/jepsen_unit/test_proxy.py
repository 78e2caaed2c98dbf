"""The fault proxy with real sockets: an echo server behind it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from jepsen_like.proxy import CLIENT, FaultProxy, ProxyNet, control_request

ROOT = Path(__file__).resolve().parents[2]
QUIET = 0.3  # how long "no answer" must last to count as cut


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 30.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def proxied(seed: int = 1) -> AsyncIterator[FaultProxy]:
    async with echo_server() as port:
        proxy = FaultProxy(0, "127.0.0.1", port, seed=seed)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.stop()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, n: int, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def roundtrip(self, data: bytes, timeout: float = 2.0) -> bytes:
        await self.send(data)
        return await self.recv(len(data), timeout)

    def close(self) -> None:
        self.writer.transport.abort()


async def is_cut(client: Client) -> bool:
    """True when a message gets no echo within QUIET seconds."""
    try:
        await client.roundtrip(b"ping", timeout=QUIET)
    except TimeoutError:
        return True
    return False


async def link_works(port: int) -> bool:
    c = await Client.connect(port)
    try:
        return not await is_cut(c)
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    finally:
        c.close()


def test_bytes_flow_both_ways() -> None:
    async def body() -> None:
        async with proxied() as proxy:
            c = await Client.connect(proxy.port)
            assert await c.roundtrip(b"hello") == b"hello"
            big = bytes(range(256)) * 2000
            assert await c.roundtrip(big) == big
            c.close()
            assert proxy.stats.bytes_up >= len(big) and proxy.stats.bytes_down >= len(big)

    run(body)


def test_hold_cuts_open_and_new_connections_until_unblock() -> None:
    async def body() -> None:
        async with proxied() as proxy:
            old = await Client.connect(proxy.port)
            assert await old.roundtrip(b"before") == b"before"
            proxy.block("hold")
            assert proxy.blocked == "hold"
            await old.send(b"held-1")
            new = await Client.connect(proxy.port)  # the kernel accepts; nothing flows
            await new.send(b"held-2")
            with pytest.raises(TimeoutError):
                await old.recv(6, timeout=QUIET)
            with pytest.raises(TimeoutError):
                await new.recv(6, timeout=QUIET)
            proxy.unblock()
            # What was sent during the partition arrives after the heal, as
            # TCP retransmission would deliver it.
            assert await old.recv(6) == b"held-1"
            assert await new.recv(6) == b"held-2"
            assert await old.roundtrip(b"after") == b"after"
            old.close()
            new.close()

    run(body)


def test_reset_breaks_open_connections_and_refuses_new_ones() -> None:
    async def body() -> None:
        async with proxied() as proxy:
            old = await Client.connect(proxy.port)
            assert await old.roundtrip(b"x") == b"x"
            proxy.block("reset")
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await old.roundtrip(b"y")
            new = await Client.connect(proxy.port)
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await new.roundtrip(b"z")
            proxy.unblock()
            assert await link_works(proxy.port)
            assert proxy.stats.reset >= 2

    run(body)


def test_delay_and_jitter_are_per_direction_and_keep_order() -> None:
    async def body() -> None:
        async with proxied() as proxy:
            c = await Client.connect(proxy.port)
            await c.roundtrip(b"warm")
            proxy.set_delay(100)
            t0 = time.monotonic()
            await c.roundtrip(b"slow")
            rtt = time.monotonic() - t0
            assert 0.2 <= rtt < 1.5, rtt  # 100 ms each way
            proxy.set_delay(20, jitter_ms=40)
            lines = b"".join(b"%05d\n" % i for i in range(200))
            for i in range(200):  # many chunks in flight, each with its own jitter
                await c.send(lines[i * 6 : (i + 1) * 6])
            assert await c.recv(len(lines), timeout=5) == lines
            proxy.set_delay(0)
            t0 = time.monotonic()
            await c.roundtrip(b"fast")
            assert time.monotonic() - t0 < 0.15
            c.close()

    run(body)


def test_loss_resets_connections_at_the_given_rate() -> None:
    async def body() -> None:
        async with proxied(seed=7) as proxy:
            proxy.set_loss(1.0)
            assert not await link_works(proxy.port)
            proxy.set_loss(0.5)
            outcomes = [await link_works(proxy.port) for _ in range(20)]
            assert 0 < sum(outcomes) < 20
            assert proxy.stats.lost_chunks >= 20 - sum(outcomes)
            proxy.set_loss(0.0)
            assert all([await link_works(proxy.port) for _ in range(5)])
            with pytest.raises(ValueError):
                proxy.set_loss(1.5)

    run(body)


def test_bandwidth_limit_throttles() -> None:
    async def body() -> None:
        async with proxied() as proxy:
            c = await Client.connect(proxy.port)
            proxy.set_bandwidth(200_000)
            data = b"x" * 100_000
            t0 = time.monotonic()
            assert await c.roundtrip(data, timeout=10) == data
            assert time.monotonic() - t0 >= 0.4
            proxy.set_bandwidth(None)
            c.close()

    run(body)


def test_only_loopback_is_accepted() -> None:
    with pytest.raises(ValueError):
        FaultProxy(0, "10.0.0.1", 80)
    with pytest.raises(ValueError):
        FaultProxy(0, "127.0.0.1", 80, listen_host="0.0.0.0")


@asynccontextmanager
async def echo_net(n: int) -> AsyncIterator[ProxyNet]:
    async with echo_server() as p1, echo_server() as p2, echo_server() as p3:
        ports = [p1, p2, p3][:n]
        net = ProxyNet({i + 1: ("127.0.0.1", port) for i, port in enumerate(ports)}, seed=3)
        await net.start()
        try:
            yield net
        finally:
            await net.stop()


async def working_links(net: ProxyNet) -> set[tuple[object, int]]:
    results = await asyncio.gather(*(link_works(net.proxies[link].port) for link in net.links))
    return {link for link, ok in zip(net.links, results, strict=True) if ok}


def test_partition_cuts_exactly_the_links_between_groups() -> None:
    async def body() -> None:
        async with echo_net(3) as net:
            everything = set(net.links)
            assert len(everything) == 9  # 6 node-to-node + 3 client links
            assert net.peer_address(1, 2) != net.peer_address(2, 1)
            assert await working_links(net) == everything
            net.partition([{1}, {2, 3}])
            cut = {(1, 2), (2, 1), (1, 3), (3, 1)}
            assert await working_links(net) == everything - cut
            net.isolate(3)  # replaces the previous partition
            assert await working_links(net) == everything - {(1, 3), (3, 1), (2, 3), (3, 2)}
            net.heal()
            assert await working_links(net) == everything
            net.block([(CLIENT, 2)])
            assert await working_links(net) == everything - {(CLIENT, 2)}
            net.heal()
            with pytest.raises(ValueError):
                net.partition([{1}, {2}])  # node 3 left out
            with pytest.raises(ValueError):
                net.partition([{1, 2}, {2, 3}])

    run(body)


def test_slow_and_lossy_links() -> None:
    async def body() -> None:
        async with echo_net(2) as net:
            net.slow([(1, 2)], 80)
            c12 = await Client.connect(net.peer_address(1, 2)[1])
            c21 = await Client.connect(net.peer_address(2, 1)[1])
            t0 = time.monotonic()
            await c12.roundtrip(b"a")
            slow = time.monotonic() - t0
            t0 = time.monotonic()
            await c21.roundtrip(b"b")
            fast = time.monotonic() - t0
            assert slow >= 0.16 and fast < 0.1
            net.lossy([(2, 1)], 1.0)
            assert not await link_works(net.peer_address(2, 1)[1])
            assert await link_works(net.peer_address(1, 2)[1])
            c12.close()
            c21.close()

    run(body)


def test_control_port_steers_the_network() -> None:
    async def body() -> None:
        async with echo_net(3) as net:
            port = await net.serve_control()
            assert await control_request(port, {"op": "partition", "groups": [[1, 2], [3]]}) is None
            status = await control_request(port, {"op": "status"})
            assert status["1->3"]["blocked"] == "hold" and status["1->2"]["blocked"] is None
            assert not await link_works(net.peer_address(3, 1)[1])
            await control_request(port, {"op": "slow", "links": [["client", 1]], "delay_ms": 5})
            assert net.proxies[(CLIENT, 1)].delay_ms == 5
            addresses = await control_request(port, {"op": "addresses"})
            assert addresses["2->1"] == list(net.peer_address(2, 1))
            with pytest.raises(RuntimeError, match="unknown op"):
                await control_request(port, {"op": "explode"})
            with pytest.raises(RuntimeError, match="no such link"):
                await control_request(port, {"op": "block", "links": [[1, 1]]})
            await control_request(port, {"op": "heal"})
            assert await working_links(net) == set(net.links)

    run(body)


def test_a_separate_process_runs_and_steers_a_proxy_net() -> None:
    async def body() -> None:
        async with echo_server() as p1, echo_server() as p2:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jepsen_like.proxy",
                "serve",
                "--nodes",
                f"1=127.0.0.1:{p1},2=127.0.0.1:{p2}",
                "--max-seconds",
                "20",
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
                link_12 = info["links"]["1->2"][1]
                assert await link_works(link_12)
                ctl = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "jepsen_like.proxy",
                        "ctl",
                        "--port",
                        str(info["control_port"]),
                        '{"op": "isolate", "node": 2}',
                    ],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=True,
                )
                assert ctl.stdout.strip() == "null"
                assert not await link_works(link_12)
                assert await link_works(info["links"]["client->2"][1])
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 10)

    run(body, timeout=60)
