"""Staleness through the multi-Raft host: three real hosts (LevelDB, the real
Raft loop) in one process, wired by an in-memory network that can cut one
node off. Leaders confirm their commit index and announce it; followers state
the age of what they have applied, honestly while cut off; the announcements
a host accepts are checked (member, group, clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from consensus.codec import decode_message, encode_message
from consensus.types import Message
from node import commands as cmd
from node.config import NodeConfig, parse_config
from node.host import MultiRaftHost
from node.staleness import UNKNOWN
from node.storage_layout import StorageLayout, plaintext_codec_for_tests
from tests.host_writes import open_session, propose_write

NODES = (1, 2, 3)


def _cfg(tmp_path: Path, node: int, replication: int = 3) -> NodeConfig:
    return parse_config(
        {
            "node_id": node, "listen": f"127.0.0.1:{node}", "data_dir": f"n{node}",
            "partitions": 1, "replication": replication,
            "peers": [{"id": n, "address": f"127.0.0.1:{n}"} for n in NODES[:replication]],
            "insecure": True,  # the host alone: access control is tested elsewhere
        },
        tmp_path,
    )


class Net:
    """Delivers every host's messages and announcements to the others, except
    to and from nodes that are cut off."""

    def __init__(self) -> None:
        self.hosts: dict[int, MultiRaftHost] = {}
        self.cut: set[int] = set()

    def send_from(self, src: int) -> Callable[[list[tuple[int, Message]]], None]:
        def send(msgs: list[tuple[int, Message]]) -> None:
            for group, m in msgs:
                if src in self.cut or m.to in self.cut or m.to not in self.hosts:
                    continue
                self.hosts[m.to].deliver([(group, decode_message(encode_message(m)))])

        return send

    def announce_from(self, src: int) -> Callable[[list[tuple[int, int, int, int, int]]], None]:
        def announce(pairs: list[tuple[int, int, int, int, int]]) -> None:
            for peer, group, term, index, time_ms in pairs:
                if src in self.cut or peer in self.cut or peer not in self.hosts:
                    continue
                self.hosts[peer].deliver_closed(src, [(group, term, index, time_ms)])

        return announce


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _staleness(h: MultiRaftHost) -> float:
    return h.replicas[0].staleness(time.monotonic(), time.time())


CID = b"\x01" * 16


async def _put(host: MultiRaftHost, session: int, seq: int) -> None:
    res = await propose_write(host, 0, cmd.Put(
        client_id=CID, session=session, seq=seq, ack_below=seq, ts_ms=0,
        patient_id="p", record_id="r", value=b"v%d" % seq,
    ), 5.0)
    assert res.ok, res


def test_followers_state_honest_staleness_and_cut_off_one_grows(tmp_path: Path) -> None:
    async def scenario() -> None:
        net = Net()
        layouts = []
        for n in NODES:
            cfg = _cfg(tmp_path, n)
            layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
            layouts.append(layout)
            net.hosts[n] = MultiRaftHost(
                cfg, layout.log_store, layout.state_machine,
                net.send_from(n), announce=net.announce_from(n),
            )
        for h in net.hosts.values():
            h.start()
        try:
            await _until(
                lambda: any(h.replicas[0].is_leader for h in net.hosts.values()), 10, "a leader"
            )
            leader = next(n for n, h in net.hosts.items() if h.replicas[0].is_leader)
            lh = net.hosts[leader]
            session = await open_session(lh, 0, CID, timeout=5.0)
            await _put(lh, session, 1)
            followers = [n for n in NODES if n != leader]
            # Healthy: every replica knows its staleness, within a heartbeat
            # interval (0.3 s) plus the clock offset (0.25 s) and scheduling
            # on a busy machine.
            await _until(
                lambda: all(0 <= _staleness(net.hosts[n]) < 1.5 for n in NODES), 10,
                "every replica's staleness known and small",
            )
            assert 0 <= _staleness(lh) < 1.5  # its own clock: no offset added
            for n in followers:
                assert _staleness(net.hosts[n]) >= 0.25  # the clock offset is always added

            # Cut one follower off while writes go on: it is as stale as the
            # time since the last pair it applied, and says so.
            victim = followers[0]
            net.cut.add(victim)
            cut_at = time.monotonic()
            for seq in range(2, 30):
                await _put(lh, session, seq)
                await asyncio.sleep(0.05)
            vh = net.hosts[victim]
            behind = time.monotonic() - cut_at
            assert vh.replicas[0].applied < lh.replicas[0].applied
            assert _staleness(vh) >= behind
            other = net.hosts[followers[1]]
            assert 0 <= _staleness(other) < 1.5

            net.cut.clear()
            await _until(
                lambda: vh.replicas[0].applied >= lh.replicas[0].applied
                and 0 <= _staleness(vh) < 1.5,
                15, "the cut-off follower to catch up and be fresh again",
            )
        finally:
            for h in net.hosts.values():
                await h.stop()
            for layout in layouts:
                layout.close()

    asyncio.run(scenario())


def test_announcements_from_non_members_unknown_groups_or_the_future_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        cfg = _cfg(tmp_path, 1)
        layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
        host = MultiRaftHost(cfg, layout.log_store, layout.state_machine, lambda msgs: None)
        host.start()
        try:
            now_ms = int(time.time() * 1000)
            host.deliver_closed(9, [(0, 1, 0, now_ms)])  # not a member
            host.deliver_closed(2, [(7, 1, 0, now_ms)])  # no such group
            host.deliver_closed(2, [(0, 1, 0, now_ms + 5_000)])  # 5 s ahead of this clock
            await asyncio.sleep(0.3)
            assert _staleness(host) == UNKNOWN
            assert "refused 1 confirmed pair(s) from node 9" in caplog.text
            host.deliver_closed(2, [(0, 1, 0, now_ms - 2_000)])  # a member, 2 s old
            await asyncio.sleep(0.3)
            assert 2.25 <= _staleness(host) < 3.5
        finally:
            await host.stop()
            layout.close()

    asyncio.run(scenario())
