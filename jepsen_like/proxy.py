"""A fault-injecting TCP proxy, and a network of them between medkv nodes.

`FaultProxy` forwards one listening port on 127.0.0.1 to one target and can
hold, reset, delay, drop or throttle the traffic. `ProxyNet` puts one proxy
on every directed link (node i dialling node j, and clients dialling node j)
so partitions can be cut per pair, and serves a JSON-lines control port so
another process can steer it.

Why the faults look like this:

- A partition must really cut traffic, including on gRPC/HTTP/2 connections
  that are already open. ``hold`` stops reading from both sockets, so bytes
  stay in kernel buffers and the peers see silence, like a network that drops
  packets (TCP retransmits until it heals; keepalives and deadlines fire).
  After `unblock` the held bytes flow again, exactly as after a real heal.
  ``reset`` sends RST on every connection and on every new one, like a
  firewall rejecting: peers see the failure at once.
- TCP cannot lose bytes silently (the stream would be corrupt), so ``loss``
  drops a chunk by resetting its connection: the peer sees a broken
  connection, which is what a lossy path ultimately does to a TCP stream.
- Delays are per chunk, pipelined (many chunks in flight), and never reorder
  a stream: a chunk is delivered no earlier than the one before it.

All control methods must be called on the event loop's thread; another
process uses the control port. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

BlockMode = Literal["hold", "reset"]
CLIENT = "client"
NodeId = int
Link = tuple[NodeId | str, NodeId]  # (source: node id or CLIENT, destination node id)

_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 64
_EOF = b""


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError("the fault proxy only listens on and forwards to loopback addresses")


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN: the peer sees a reset."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0
    reset: int = 0
    lost_chunks: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


class _Conn:
    """One proxied connection: two sockets and the tasks pumping between them."""

    def __init__(self) -> None:
        self.client: asyncio.StreamWriter | None = None
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.dead = False

    def abort(self) -> None:
        if self.dead:
            return
        self.dead = True
        _reset(self.client)
        _reset(self.upstream)
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()


class FaultProxy:
    """Forwards 127.0.0.1:`listen_port` to `target_host`:`target_port`.

    `listen_port` 0 picks a free port (see `port` after `start`).
    """

    def __init__(
        self,
        listen_port: int,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        seed: int | None = None,
    ) -> None:
        _require_loopback(listen_host)
        _require_loopback(target_host)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._block_mode: BlockMode | None = None
        self.delay_ms = 0.0
        self.jitter_ms = 0.0
        self.loss = 0.0
        self.bytes_per_s: float | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.listen_port, reuse_address=True
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        tasks = [t for c in self._conns for t in c.tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._conns.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        return self.listen_port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.listen_port)

    # -- controls ----------------------------------------------------------

    @property
    def blocked(self) -> BlockMode | None:
        return self._block_mode

    def block(self, mode: BlockMode = "hold") -> None:
        """Cut all traffic, on open connections and new ones, until `unblock`."""
        if mode not in ("hold", "reset"):
            raise ValueError(f"unknown block mode {mode!r}")
        self._block_mode = mode
        self._open.clear()
        if mode == "reset":
            for conn in list(self._conns):
                self.stats.reset += 1
                conn.abort()

    def unblock(self) -> None:
        self._block_mode = None
        self._open.set()

    def set_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Delay each chunk by delay_ms plus a uniform [0, jitter_ms) extra."""
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delays must be >= 0")
        self.delay_ms, self.jitter_ms = float(delay_ms), float(jitter_ms)

    def set_loss(self, p: float) -> None:
        """Reset a connection on each chunk with probability p."""
        if not 0.0 <= p <= 1.0:
            raise ValueError("loss must be within [0, 1]")
        self.loss = float(p)

    def set_bandwidth(self, bytes_per_s: float | None) -> None:
        """Throttle each direction of each connection; None removes the limit."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bandwidth must be > 0 (or None)")
        self.bytes_per_s = bytes_per_s

    def clear(self) -> None:
        """Every fault off."""
        self.unblock()
        self.set_delay(0.0)
        self.set_loss(0.0)
        self.set_bandwidth(None)

    def status(self) -> dict[str, Any]:
        return {
            "port": self.listen_port,
            "blocked": self._block_mode,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "bytes_per_s": self.bytes_per_s,
            "connections": len(self._conns),
        }

    # -- forwarding --------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._block_mode == "reset":
            self.stats.reset += 1
            _reset(writer)
            return
        conn = _Conn()
        conn.client = writer
        self._conns.add(conn)
        current = asyncio.current_task()
        if current is not None:
            conn.tasks.append(current)  # so a reset-mode block cancels the wait below
        try:
            # A connection opened during a hold goes nowhere until the heal, as
            # a SYN into a partition would.
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                _reset(writer)
                return
            if conn.dead:
                _reset(up_writer)
                return
            conn.upstream = up_writer
            pumps = [
                asyncio.create_task(self._pump(conn, reader, up_writer, up=True)),
                asyncio.create_task(self._pump(conn, up_reader, writer, up=False)),
            ]
            conn.tasks = pumps
            await asyncio.gather(*pumps, return_exceptions=True)
            if not conn.dead:
                conn.dead = True
                writer.close()
                up_writer.close()
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(conn)

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        """One direction: a reader task fills a queue of timed chunks that
        this task delivers, so delays pipeline instead of serializing."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        reader_task = asyncio.create_task(self._read_side(conn, src, queue))
        conn.tasks.append(reader_task)
        next_free = 0.0  # bandwidth: when this direction may send again
        loop = asyncio.get_running_loop()
        try:
            while True:
                deliver_at, data = await queue.get()
                await self._open.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                now = loop.time()
                at = deliver_at
                if self.bytes_per_s is not None:
                    start = max(now, next_free)
                    next_free = start + len(data) / self.bytes_per_s
                    at = max(at, next_free)
                if at > now:
                    await asyncio.sleep(at - now)
                    await self._open.wait()
                dst.write(data)
                await dst.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (ConnectionError, OSError):
            conn.abort()
        finally:
            reader_task.cancel()

    async def _read_side(
        self, conn: _Conn, src: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            while True:
                await self._open.wait()
                data = await src.read(_CHUNK)
                if not data:
                    await queue.put((last, _EOF))
                    return
                if self.loss > 0.0 and self._rng.random() < self.loss:
                    self.stats.lost_chunks += 1
                    self.stats.reset += 1
                    conn.abort()
                    return
                delay = self.delay_ms
                if self.jitter_ms > 0.0:
                    delay += self._rng.random() * self.jitter_ms
                # Never deliver before the previous chunk: a stream stays in order.
                last = max(loop.time() + delay / 1000.0, last)
                await queue.put((last, data))
        except (ConnectionError, OSError):
            conn.abort()


# --------------------------------------------------------------------------
# A network of proxies.


def link_name(link: Link) -> str:
    return f"{link[0]}->{link[1]}"


def _parse_link(raw: Any) -> Link:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise ValueError("a link is [source, destination]")
    src, dst = raw
    if src != CLIENT:
        src = int(src)
    return (src, int(dst))


class ProxyNet:
    """One `FaultProxy` per directed link between `nodes` (and from clients).

    `nodes` maps node id -> the (loopback) address the node really listens on.
    Node i must be configured to dial node j at `peer_address(i, j)`, and
    clients to dial node j at `client_address(j)`.
    """

    def __init__(
        self,
        nodes: Mapping[NodeId, tuple[str, int]],
        *,
        clients: bool = True,
        seed: int = 0,
    ) -> None:
        self.nodes = dict(nodes)
        self.proxies: dict[Link, FaultProxy] = {}
        rng = random.Random(seed)
        for dst, (host, port) in self.nodes.items():
            sources: list[NodeId | str] = [s for s in self.nodes if s != dst]
            if clients:
                sources.append(CLIENT)
            for src in sources:
                self.proxies[(src, dst)] = FaultProxy(0, host, port, seed=rng.randrange(2**32))
        self._control: asyncio.Server | None = None

    async def start(self) -> None:
        for p in self.proxies.values():
            await p.start()

    async def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            await self._control.wait_closed()
            self._control = None
        for p in self.proxies.values():
            await p.stop()

    @property
    def links(self) -> list[Link]:
        return list(self.proxies)

    def peer_address(self, src: NodeId, dst: NodeId) -> tuple[str, int]:
        return self.proxies[(src, dst)].address

    def client_address(self, dst: NodeId) -> tuple[str, int]:
        return self.proxies[(CLIENT, dst)].address

    def _select(self, links: Iterable[Link] | None) -> list[FaultProxy]:
        if links is None:
            return list(self.proxies.values())
        chosen = []
        for link in links:
            if link not in self.proxies:
                raise ValueError(f"no such link {link_name(link)}")
            chosen.append(self.proxies[link])
        return chosen

    # -- nemesis operations ------------------------------------------------

    def partition(self, groups: Sequence[Collection[NodeId]], mode: BlockMode = "hold") -> None:
        """Nodes talk only within their group; replaces any earlier partition.

        Groups must cover every node exactly once. Client links are left alone.
        """
        where: dict[NodeId, int] = {}
        for gi, g in enumerate(groups):
            for node in g:
                if node not in self.nodes:
                    raise ValueError(f"unknown node {node}")
                if node in where:
                    raise ValueError(f"node {node} is in two groups")
                where[node] = gi
        if set(where) != set(self.nodes):
            raise ValueError(f"the groups leave out nodes {sorted(set(self.nodes) - set(where))}")
        for (src, dst), p in self.proxies.items():
            if src == CLIENT:
                continue
            if where[src] != where[dst]:  # type: ignore[index]
                if p.blocked != mode:
                    p.block(mode)
            elif p.blocked is not None:
                p.unblock()

    def isolate(self, node: NodeId, mode: BlockMode = "hold") -> None:
        """Cut `node` off from every other node (clients still reach it)."""
        self.partition([{node}, set(self.nodes) - {node}], mode)

    def heal(self) -> None:
        """Every fault off on every link: partitions, delays, loss, throttles."""
        for p in self.proxies.values():
            p.clear()

    def block(self, links: Iterable[Link] | None, mode: BlockMode = "hold") -> None:
        for p in self._select(links):
            p.block(mode)

    def unblock(self, links: Iterable[Link] | None) -> None:
        for p in self._select(links):
            p.unblock()

    def slow(self, links: Iterable[Link] | None, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Delay the given links (None: all); delay_ms 0 removes the delay."""
        for p in self._select(links):
            p.set_delay(delay_ms, jitter_ms)

    def lossy(self, links: Iterable[Link] | None, p: float) -> None:
        for proxy in self._select(links):
            proxy.set_loss(p)

    def throttle(self, links: Iterable[Link] | None, bytes_per_s: float | None) -> None:
        for p in self._select(links):
            p.set_bandwidth(bytes_per_s)

    def status(self) -> dict[str, Any]:
        return {link_name(link): p.status() for link, p in self.proxies.items()}

    def addresses(self) -> dict[str, list[Any]]:
        return {link_name(link): list(p.address) for link, p in self.proxies.items()}

    # -- control port ------------------------------------------------------

    async def serve_control(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve the JSON-lines control protocol; returns the port.

        Each request line is an object with "op" (partition, isolate, heal,
        block, unblock, slow, lossy, throttle, status, addresses) and its
        arguments; links are [source, destination] pairs, source a node id or
        "client", or null for every link. Each reply line is {"ok": true,
        "result": ...} or {"ok": false, "error": "..."}.
        """
        _require_loopback(host)
        self._control = await asyncio.start_server(self._serve_one, host, port)
        return int(self._control.sockets[0].getsockname()[1])

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = {"ok": True, "result": self.apply(json.loads(line))}
                except (ValueError, KeyError, TypeError) as e:
                    reply = {"ok": False, "error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def apply(self, req: dict[str, Any]) -> Any:
        """Carry out one control request (the control port's dispatcher)."""
        op = req.get("op")
        raw_links = req.get("links")
        links = None if raw_links is None else [_parse_link(x) for x in raw_links]
        mode = req.get("mode", "hold")
        if op == "partition":
            self.partition([{int(n) for n in g} for g in req["groups"]], mode)
        elif op == "isolate":
            self.isolate(int(req["node"]), mode)
        elif op == "heal":
            self.heal()
        elif op == "block":
            self.block(links, mode)
        elif op == "unblock":
            self.unblock(links)
        elif op == "slow":
            self.slow(links, float(req["delay_ms"]), float(req.get("jitter_ms", 0.0)))
        elif op == "lossy":
            self.lossy(links, float(req["p"]))
        elif op == "throttle":
            bps = req.get("bytes_per_s")
            self.throttle(links, None if bps is None else float(bps))
        elif op == "status":
            return self.status()
        elif op == "addresses":
            return self.addresses()
        else:
            raise ValueError(f"unknown op {op!r}")
        return None


async def control_request(port: int, request: dict[str, Any], host: str = "127.0.0.1") -> Any:
    """Send one request to a ProxyNet control port; returns its result."""
    _require_loopback(host)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await reader.readline())
    finally:
        writer.close()
    if not reply.get("ok"):
        raise RuntimeError(f"proxy control: {reply.get('error')}")
    return reply.get("result")


# --------------------------------------------------------------------------
# Command line: run a ProxyNet as its own process, or steer one.


def _parse_nodes(spec: str) -> dict[NodeId, tuple[str, int]]:
    nodes: dict[NodeId, tuple[str, int]] = {}
    for part in spec.split(","):
        node, addr = part.split("=", 1)
        host, port = addr.rsplit(":", 1)
        nodes[int(node)] = (host, int(port))
    return nodes


async def _serve_main(args: argparse.Namespace) -> None:
    net = ProxyNet(_parse_nodes(args.nodes), seed=args.seed)
    await net.start()
    port = await net.serve_control(args.control_port)
    print(json.dumps({"control_port": port, "links": net.addresses()}), flush=True)
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    finally:
        await net.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jepsen_like.proxy", description=__doc__.splitlines()[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="proxy every link between the nodes; print the addresses")
    serve.add_argument("--nodes", required=True, help="1=127.0.0.1:7001,2=127.0.0.1:7002,...")
    serve.add_argument("--control-port", type=int, default=0)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    ctl = sub.add_parser("ctl", help="send one JSON request to a control port")
    ctl.add_argument("--port", type=int, required=True)
    ctl.add_argument("request", help='e.g. \'{"op": "isolate", "node": 1}\'')
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_main(args))
        return 0
    try:
        result = asyncio.run(control_request(args.port, json.loads(args.request)))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
