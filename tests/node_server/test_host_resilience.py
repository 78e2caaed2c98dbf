"""The Raft loop of a node must survive whatever one turn throws at it.

Regression (found by jepsen_like, bank + bitflip): a read issued in the very
turn the core stepped down raised out of the loop and killed it, leaving a
node that answered RPCs while its groups froze.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consensus.types import StateRole
from node.config import parse_config
from node.errors import Unavailable
from node.host import MultiRaftHost
from node.storage_layout import StorageLayout, plaintext_codec_for_tests


def _host(tmp_path: Path) -> tuple[MultiRaftHost, StorageLayout]:
    cfg = parse_config(
        {
            "node_id": 1, "listen": "127.0.0.1:1", "data_dir": "n1",
            "partitions": 1, "replication": 3,
            "peers": [{"id": n, "address": f"127.0.0.1:{n}"} for n in (1, 2, 3)],
            "insecure": True,  # the host alone: access control is tested elsewhere
        },
        tmp_path,
    )
    layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
    return MultiRaftHost(cfg, layout.log_store, layout.state_machine, lambda msgs: None), layout


def test_a_read_on_a_stale_leader_view_fails_cleanly_and_the_loop_lives(tmp_path: Path) -> None:
    async def scenario() -> None:
        host, layout = _host(tmp_path)
        fatal = asyncio.Event()
        host.start(on_fatal=fatal.set)
        try:
            r = host.replicas[0]
            # The host's view says leader; the core (alone, peers unreachable)
            # is not: exactly the window between a step-down and its Ready.
            r.role = StateRole.LEADER
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Unavailable) as e:
                await host.read_barrier(0, timeout=10.0)
            # Refused on the spot with a retryable answer, not left to time out.
            assert loop.time() - started < 5.0
            assert "confirmed within" not in e.value.message
            await asyncio.sleep(0.3)  # a few more turns
            assert host._task is not None and not host._task.done()
            assert not fatal.is_set()
        finally:
            await host.stop()
            layout.close()

    asyncio.run(scenario())
