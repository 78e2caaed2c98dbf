"""node.cluster.settings_sync against fake partition leaders: every partition
behind is asked through its leader, failures are retried, a new system
leader asks again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc

from node.cluster import settings_sync
from node.cluster import state as cs
from node.errors import Unavailable
from proto.medkv.v1 import admin_pb2

SEED = {"session_ttl_ms": 60_000, "history_retention": 4, "max_sessions": 100,
        "max_results_per_session": 8}


def unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), "not the leader")


class FakeNode:
    """Node 1; partition p is led by node 1 + p % 3; node 3 is down."""

    def __init__(self) -> None:
        self.applied: dict[int, int] = {}
        self.calls: list[tuple[int, int]] = []
        self.cfg = SimpleNamespace(node_id=1, peers={1: "a:1", 2: "a:2", 3: "a:3"})
        self.host = SimpleNamespace(replicas={})
        self.settings = SimpleNamespace(sync=self._local)

    def _answer(self, node: int, p: int, g: int) -> admin_pb2.SyncSettingsResponse:
        self.calls.append((node, p))
        proposed = self.applied.get(p, 0) < g
        self.applied[p] = max(self.applied.get(p, 0), g)
        return admin_pb2.SyncSettingsResponse(partition=p, generation=self.applied[p],
                                              proposed=proposed)

    async def _local(self, p: int, g: int) -> admin_pb2.SyncSettingsResponse:
        if 1 + p % 3 != 1:
            raise Unavailable("not the leader")
        return self._answer(1, p, g)

    def peer_admin(self, node: int) -> Any:
        async def call(req: admin_pb2.SyncSettingsRequest, timeout: float) -> Any:
            if node == 3 or 1 + req.partition % 3 != node:
                raise unavailable()
            return self._answer(node, req.partition, req.generation)
        return SimpleNamespace(SyncSettings=call)


def state() -> cs.ClusterState:
    return cs.initial_state("c", {n: (f"a:{n}", "") for n in (1, 2, 3)}, partitions=6,
                            replication=3, virtual_nodes=8, settings=SEED)


async def drain(sync: settings_sync.SettingsSync) -> None:
    """Let the syncs started so far finish (failures wait for the next step)."""
    await asyncio.gather(*sync._tasks.values(), return_exceptions=True)


s = state()


def test_partitions_are_synced_through_their_leaders_and_retried() -> None:
    async def run() -> None:
        node = FakeNode()
        sync = settings_sync.SettingsSync(node)  # type: ignore[arg-type]
        sync.step(s)
        await drain(sync)
        # Partitions led by nodes 1 and 2 applied; node 3's wait RETRY_S.
        assert sync.behind(s) == [2, 5]
        assert node.applied == {0: 1, 1: 1, 3: 1, 4: 1}
        sync.step(s)
        assert set(sync._tasks) == set()  # not before RETRY_S
        sync._retry_at.clear()
        sync.step(s)
        assert set(sync._tasks) == {2, 5}
        await drain(sync)
        new, _ = cs.apply(s, cs.set_settings({"max_sessions": 5}))
        sync.step(new)
        await drain(sync)
        assert node.applied == {0: 2, 1: 2, 3: 2, 4: 2}
        # A new system leader forgets and asks everyone again: a no-op where applied.
        sync.stop()
        assert sync.behind(new) == list(range(6))
        node.calls.clear()
        sync.step(new)
        await drain(sync)
        assert sync.behind(new) == [2, 5]
        assert all(node.applied[p] == 2 for p in (0, 1, 3, 4))

    asyncio.run(run())


def test_an_old_cluster_without_settings_is_left_to_its_seeds() -> None:
    async def run() -> None:
        node = FakeNode()
        sync = settings_sync.SettingsSync(node)  # type: ignore[arg-type]
        old = cs.initial_state("c", {n: (f"a:{n}", "") for n in (1, 2, 3)}, 4, 3, 8)
        sync.step(old)
        assert not sync._tasks and node.calls == []

    asyncio.run(run())
