"""Admin status of a replica taken out of service (node.admin_service).

The poisoned group of tests/node_server/test_group_isolation.py (a core that
adopted term 2^64-1): while running it is disabled, and after a restart it is
out of service from the start. Either way the node's own status names it out
of service with its impossible term, and the verdict is never OK."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from client.status_table import OK, UNAVAILABLE, assess
from consensus.types import Message, MessageType
from node.admin_service import AdminService
from node.host import MultiRaftHost
from tests.node_server.test_group_isolation import BIG, _leaders, _open, _until_leader


def _admin(host: MultiRaftHost) -> AdminService:
    node: Any = SimpleNamespace(host=host, cfg=host.cfg)
    return AdminService(node)


def test_a_disabled_replica_is_reported_out_of_service_and_never_ok(tmp_path: Path) -> None:
    async def poison() -> None:
        host, layout = _open(tmp_path)
        host.start()
        try:
            await _leaders(host)
            assert assess(_admin(host)._local_status()) == (OK, [])
            r0 = host.replicas[0]
            forged = Message(MessageType.HEARTBEAT, to=1, frm=2, term=BIG, commit=0)
            host._enqueue(lambda: r0.raw.step(forged))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not r0.broken:
                assert loop.time() < deadline, "group 0 was never disabled"
                await asyncio.sleep(0.05)
            status = _admin(host)._local_status()
            p0 = next(p for p in status.partition_info if p.partition == 0)
            assert p0.leader == 0 and p0.replica_status[0].out_of_service
            verdict, reasons = assess(status)
            assert verdict == UNAVAILABLE
            assert "out of service (DATA_LOSS): partition 0 on node 1" in reasons
            assert any(r.startswith("impossible term: partition 0") for r in reasons), reasons
        finally:
            await host.stop()
            layout.close()

    asyncio.run(poison())

    async def restart() -> None:
        host, layout = _open(tmp_path)
        host.start()
        try:
            assert 0 in host.broken_at_start
            await asyncio.wait_for(_until_leader(host, 1), 15)
            status = _admin(host)._local_status()
            assert sorted(p.partition for p in status.partition_info) == [0, 1]
            p0 = next(p for p in status.partition_info if p.partition == 0)
            assert "impossible Raft state" in p0.replica_status[0].out_of_service
            verdict, reasons = assess(status)
            assert verdict == UNAVAILABLE
            assert "no leader: partition(s) 0" in reasons
            assert "out of service (DATA_LOSS): partition 0 on node 1" in reasons
            assert not any("partition 1" in r for r in reasons), reasons
        finally:
            await host.stop()
            layout.close()

    asyncio.run(restart())
