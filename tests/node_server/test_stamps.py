"""Log-clock stamps: what a leader stamps its proposals with, and what apply makes of it.

Regression: the session clock used to be the max of leaders' wall clocks, so
one node with a fast clock expired every session of every partition it led.
Stamps now come from node.log_clock.LeaderClock: the log time the leader has
applied plus its monotonic elapsed time, never its wall clock.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from node import commands as cmd
from node.config import parse_config
from node.host import MultiRaftHost
from node.log_clock import LeaderClock, advance
from node.storage_layout import StorageLayout, plaintext_codec_for_tests

DAY_S = 86_400.0
CID = b"c" * 16


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_leader_clock_is_its_base_plus_monotonic_elapsed() -> None:
    mono = FakeMonotonic()
    clock = LeaderClock(5_000, mono)
    assert clock.now_ms() == 5_000
    mono.now += 2.5
    assert clock.now_ms() == 7_500
    clock.observe(7_000)  # the log is behind the clock: nothing changes
    assert clock.now_ms() == 7_500
    clock.observe(9_000)  # the log is ahead (another leader's stamps): follow it
    assert clock.now_ms() == 9_000
    mono.now += 1.0
    assert clock.now_ms() == 10_000
    assert advance(10_000, 3) == 10_000 and advance(10_000, 10_001) == 10_001


def test_leader_clock_ignores_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = LeaderClock(1_000)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 30 * DAY_S)
    monkeypatch.setattr(time, "time_ns", lambda: int((real() + 30 * DAY_S) * 1e9))
    assert clock.now_ms() < 1_000 + 60_000


def _host(tmp_path: Path) -> tuple[MultiRaftHost, StorageLayout]:
    """A one-node, one-partition host: it elects itself at once."""
    cfg = parse_config(
        {
            "node_id": 1, "listen": "127.0.0.1:1", "data_dir": "n1",
            "partitions": 1, "replication": 1,
            "peers": [{"id": 1, "address": "127.0.0.1:1"}],
            "insecure": True,  # the host alone: access control is tested elsewhere
        },
        tmp_path,
    )
    layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
    return MultiRaftHost(cfg, layout.log_store, layout.state_machine, lambda msgs: None), layout


async def _leader(host: MultiRaftHost) -> None:
    for _ in range(200):
        if host.replicas[0].is_leader:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the single node did not become leader")


async def _register(host: MultiRaftHost, nonce: int) -> tuple[int, int]:
    """Propose a RegisterSession; (session id, the stamp it carried)."""
    stamps: list[int] = []

    def encode(stamp: int) -> bytes:
        stamps.append(stamp)
        return cmd.encode_command(cmd.RegisterSession(ts_ms=stamp, client_id=CID, nonce=nonce))

    probe = cmd.RegisterSession(ts_ms=0, client_id=CID, nonce=nonce)
    res = await host.propose(0, probe.wait_key, encode, 10.0)
    assert res.ok, res
    return res.version, stamps[0]


def test_a_fast_wall_clock_changes_no_stamp_and_expires_no_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        host, layout = _host(tmp_path)
        host.start()
        try:
            await _leader(host)
            sm = host.replicas[0].sm
            _, s1 = await _register(host, 1)
            # The node's wall clock jumps 30 days ahead (NTP step, bad RTC...).
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() + 30 * DAY_S)
            monkeypatch.setattr(time, "time_ns", lambda: int((real() + 30 * DAY_S) * 1e9))
            started = time.monotonic()
            _, s2 = await _register(host, 2)
            elapsed_ms = (time.monotonic() - started) * 1000
            assert 0 <= s2 - s1 <= elapsed_ms + 2_000  # real elapsed time, not 30 days
            assert sm.log_time_ms == s2
            assert sm.settings.session_ttl_ms == 3_600_000
            assert sm.session_count == 2  # the first session is still open
        finally:
            await host.stop()
            layout.close()

    asyncio.run(scenario())


def test_a_new_leader_stamps_from_the_log_time_it_applied(tmp_path: Path) -> None:
    """After a restart (as after any leader change) stamps go on from the log's
    own time: never back to 0, never to a wall clock."""

    async def first_life() -> int:
        host, layout = _host(tmp_path)
        host.start()
        try:
            await _leader(host)
            await _register(host, 1)
            await asyncio.sleep(0.3)
            _, stamp = await _register(host, 2)
            return stamp
        finally:
            await host.stop()
            layout.close()

    async def second_life(before: int) -> None:
        host, layout = _host(tmp_path)
        host.start()
        try:
            await _leader(host)
            assert host.replicas[0].sm.log_time_ms == before
            _, stamp = await _register(host, 3)
            assert before <= stamp < before + 10_000
        finally:
            await host.stop()
            layout.close()

    last = asyncio.run(first_life())
    assert 300 <= last < 60_000  # a fresh partition's log time starts at 0
    asyncio.run(second_life(last))
