"""Batching in the multi-Raft host, with three real hosts in one process on a
network with a round-trip delay.

Linearizable reads share ReadIndex rounds (MultiRaftHost._issue_reads): every
read waits for an index at least the commit index of the moment it was asked
(a write acknowledged before a read is seen by it); reads asked while a round
is out share the next one instead of starting a round each; a round whose
heartbeats are lost does not hold reads back once the partition heals.

Turns gather work under load (MultiRaftHost._gather): writes arriving a few
milliseconds apart share persist batches; a lone request never waits."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from consensus.codec import decode_message, encode_message
from consensus.types import Message, MessageType
from node import commands as cmd
from node import host as host_module
from node.config import NodeConfig, parse_config
from node.errors import NodeError
from node.host import MultiRaftHost
from node.storage_layout import StorageLayout, plaintext_codec_for_tests
from tests.host_writes import open_session, propose_write

NODES = (1, 2, 3)
CID = b"\x02" * 16
DELAY = 0.03  # one way: a round trip of 60 ms, many loop turns long
# Heartbeats (which carry ReadIndex rounds) take longer than appends, so writes
# commit and are acknowledged while a round is out: a read that joined a round
# issued before it arrived would miss them.
HEARTBEAT_DELAY = 4 * DELAY


def _cfg(tmp_path: Path, node: int) -> NodeConfig:
    return parse_config(
        {
            "node_id": node, "listen": f"127.0.0.1:{node}", "data_dir": f"n{node}",
            "partitions": 1, "replication": 3,
            "peers": [{"id": n, "address": f"127.0.0.1:{n}"} for n in NODES],
            "insecure": True,  # the host alone: access control is tested elsewhere
        },
        tmp_path,
    )


def _put(session: int, seq: int) -> cmd.Put:
    return cmd.Put(
        client_id=CID, session=session, seq=seq, ack_below=seq, ts_ms=0,
        patient_id="p", record_id=f"r{seq}", value=b"v%d" % seq,
    )


def _count_persists(h: MultiRaftHost) -> list[int]:
    """A one-element list counting h's Raft log writes (one per turn with work)."""
    count = [0]
    write = h.log_store.write_isolated

    def counted(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return write(*args, **kwargs)  # type: ignore[arg-type]

    h.log_store.write_isolated = counted  # type: ignore[method-assign]
    return count


class SlowNet:
    """Delivers every message DELAY seconds later (heartbeats HEARTBEAT_DELAY),
    except to or from nodes cut off."""

    def __init__(self) -> None:
        self.hosts: dict[int, MultiRaftHost] = {}
        self.cut: set[int] = set()

    def send_from(self, src: int) -> Callable[[list[tuple[int, Message]]], None]:
        def send(msgs: list[tuple[int, Message]]) -> None:
            loop = asyncio.get_running_loop()
            for group, m in msgs:
                if src in self.cut or m.to in self.cut or m.to not in self.hosts:
                    continue
                copy = decode_message(encode_message(m))
                slow = m.type in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP)
                delay = HEARTBEAT_DELAY if slow else DELAY
                loop.call_later(delay, self._deliver, src, m.to, group, copy)

        return send

    def _deliver(self, src: int, dst: int, group: int, m: Message) -> None:
        if src not in self.cut and dst not in self.cut:
            self.hosts[dst].deliver([(group, m)])


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _cluster(tmp_path: Path) -> tuple[SlowNet, list[StorageLayout]]:
    net = SlowNet()
    layouts = []
    for n in NODES:
        cfg = _cfg(tmp_path, n)
        layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
        layouts.append(layout)
        net.hosts[n] = MultiRaftHost(cfg, layout.log_store, layout.state_machine, net.send_from(n))
    for h in net.hosts.values():
        h.start()
    await _until(lambda: any(h.replicas[0].is_leader for h in net.hosts.values()), 15, "a leader")
    return net, layouts


async def _close(net: SlowNet, layouts: list[StorageLayout]) -> None:
    for h in net.hosts.values():
        await h.stop()
    for layout in layouts:
        layout.close()


def _leader(net: SlowNet) -> MultiRaftHost:
    return next(h for h in net.hosts.values() if h.replicas[0].is_leader)


def test_reads_share_rounds_and_see_every_acknowledged_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        net, layouts = await _cluster(tmp_path)
        try:
            lh = _leader(net)
            r = lh.replicas[0]
            session = await open_session(lh, 0, CID, timeout=10.0)
            rounds = 0
            issue = r.raw.read_index

            def counted(ctx: bytes) -> None:
                nonlocal rounds
                rounds += 1
                issue(ctx)

            r.raw.read_index = counted  # type: ignore[method-assign]
            # The index each read waits for (read_barrier -> wait_applied), by task.
            waited: dict[object, int] = {}
            wait_applied = lh.wait_applied

            async def recording(rep: object, index: int, timeout: float) -> None:
                waited[asyncio.current_task()] = index
                await wait_applied(rep, index, timeout)  # type: ignore[arg-type]

            lh.wait_applied = recording  # type: ignore[method-assign]
            acked: list[int] = []  # index of each acknowledged write, in order
            checked = 0

            async def writer() -> None:
                for seq in range(1, 30):
                    res = await propose_write(lh, 0, cmd.Put(
                        client_id=CID, session=session, seq=seq, ack_below=seq, ts_ms=0,
                        patient_id="p", record_id="r", value=b"v%d" % seq,
                    ), 10.0)
                    assert res.ok, res
                    acked.append(res.index)

            async def reader(k: int) -> None:
                nonlocal checked
                # Staggered at random: reads arrive while a round is out, and
                # while writes are acknowledged.
                rng = random.Random(k)
                for _ in range(10):
                    await asyncio.sleep(rng.uniform(0, 2 * HEARTBEAT_DELAY))
                    seen = acked[-1] if acked else 0
                    rep = await lh.read_barrier(0, timeout=10.0)
                    index = waited[asyncio.current_task()]
                    assert index >= seen, "a read was served by a round older than it"
                    assert rep.applied >= index
                    checked += 1

            await asyncio.gather(writer(), *(reader(k) for k in range(8)))
            assert checked == 80
            # One round per read would be 80 (and was, before rounds were
            # shared); sharing needs about one per round trip of the test.
            assert rounds < 50, rounds
        finally:
            await _close(net, layouts)

    asyncio.run(scenario())


def test_a_lost_round_does_not_hold_reads_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        net, layouts = await _cluster(tmp_path)
        try:
            lh = _leader(net)
            leader_id = next(n for n, h in net.hosts.items() if h is lh)
            net.cut.add(leader_id)
            try:
                await lh.read_barrier(0, timeout=0.3)
                raise AssertionError("a cut-off leader confirmed a read")
            except NodeError:
                pass
            net.cut.clear()
            # Whoever leads now (the old leader again or a new one) serves reads.
            deadline = time.monotonic() + 20
            while True:
                try:
                    h = _leader(net)
                    await h.read_barrier(0, timeout=1.0)
                    break
                except (NodeError, StopIteration):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await _close(net, layouts)

    asyncio.run(scenario())


def test_turns_gather_writes_under_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wide window and a low threshold make the effect certain on a busy machine.
    monkeypatch.setattr(host_module, "GATHER_LOAD", 2)
    monkeypatch.setattr(host_module, "GATHER_S", 0.05)

    async def scenario() -> None:
        net, layouts = await _cluster(tmp_path)
        try:
            lh = _leader(net)
            session = await open_session(lh, 0, CID, timeout=10.0)
            persists = _count_persists(lh)

            async def one(seq: int) -> None:
                await asyncio.sleep(seq * 0.004)  # a write every 4 ms
                res = await propose_write(lh, 0, _put(session, seq), 10.0)
                assert res.ok, res

            await asyncio.gather(*(one(seq) for seq in range(1, 41)))
            # A turn per write (and per ack) without gathering: well over 40.
            assert persists[0] < 25, persists[0]
            for seq in (1, 40):  # every write applied, once
                assert lh.replicas[0].sm.get("p", f"r{seq}") is not None
        finally:
            await _close(net, layouts)

    asyncio.run(scenario())


def test_a_lone_request_never_waits_for_company(tmp_path: Path) -> None:
    async def scenario() -> None:
        net, layouts = await _cluster(tmp_path)
        try:
            lh = _leader(net)
            session = await open_session(lh, 0, CID, timeout=10.0)
            waits = 0

            async def gather(until_tick: float) -> None:
                nonlocal waits
                waits += 1

            lh._gather = gather  # type: ignore[method-assign]
            for seq in range(1, 6):
                res = await propose_write(lh, 0, _put(session, seq), 10.0)
                assert res.ok, res
                await lh.read_barrier(0, timeout=10.0)
            assert waits == 0
        finally:
            await _close(net, layouts)

    asyncio.run(scenario())
