"""Brings the cluster's settings into every partition's log.

The cluster state holds the settings and their generation (node.cluster.state
set-settings); what apply does is still decided by each partition's own log,
so every replica of a partition switches at the same index. Run by the system
group's leader (node.cluster.reconciler calls `step` every round): for every
partition not known to have applied the current generation, it asks the
partition's leader to propose it (Admin.SyncSettings, node certificate; the
leader takes the values from its own replica of the cluster state and
proposes nothing when its partition applied that generation already).

A partition without a leader (its leader just died, an election is on) is
retried every RETRY_S, so it catches up as soon as it has one again; a
replica that was down catches up from its partition's log like any entry.
Which partitions applied what is kept in memory only: a new system leader
asks every partition once more (a cheap no-op where applied), and apply
skips an entry not newer than the partition's generation, so duplicates and
late entries from an old leader never undo a newer generation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from node.cluster import state as cs
from node.errors import NodeError
from proto.medkv.v1 import admin_pb2

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.cluster")

MAX_IN_FLIGHT = 8  # partitions synced at once: one proposal each
RETRY_S = 1.0
CALL_TIMEOUT_S = 10.0


class SettingsSync:
    def __init__(self, node: Node) -> None:
        self.node = node
        # partition -> the cluster settings generation its leader said it applied
        self.applied: dict[int, int] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._retry_at: dict[int, float] = {}

    def behind(self, state: cs.ClusterState) -> list[int]:
        """Partitions not known to have applied the state's generation."""
        g = state.settings_generation
        return [p for p in range(state.partitions) if self.applied.get(p, 0) < g]

    def step(self, state: cs.ClusterState) -> None:
        """Start a sync for partitions behind, up to MAX_IN_FLIGHT at once."""
        for p, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[p]
        if state.settings is None:
            return  # an old cluster's partitions keep their seeded settings
        loop = asyncio.get_running_loop()
        now = loop.time()
        for p in self.behind(state):
            if len(self._tasks) >= MAX_IN_FLIGHT:
                break
            if p in self._tasks or self._retry_at.get(p, 0.0) > now:
                continue
            self._tasks[p] = loop.create_task(
                self._sync(p, state.settings_generation, state.replicas[p]),
                name=f"settings-sync-{p}")

    def stop(self) -> None:
        """No longer the system leader: forget, a next leader asks again."""
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self.applied.clear()
        self._retry_at.clear()

    def _candidates(self, p: int, replicas: tuple[int, ...]) -> list[int]:
        """The partition's replicas, the leader this node knows of first."""
        r = self.node.host.replicas.get(p)
        leader = r.leader if r is not None and not r.broken else 0
        return sorted(replicas, key=lambda n: n != leader)

    async def _sync(self, p: int, generation: int, replicas: tuple[int, ...]) -> None:
        request = admin_pb2.SyncSettingsRequest(partition=p, generation=generation)
        me = self.node.cfg.node_id
        for n in self._candidates(p, replicas):
            try:
                if n == me:
                    reply = await self.node.settings.sync(p, generation)
                elif n in self.node.cfg.peers:
                    reply = await self.node.peer_admin(n).SyncSettings(
                        request, timeout=CALL_TIMEOUT_S)
                else:
                    continue
            except NodeError:
                continue  # not its leader (or no leader yet): the next replica
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.warning("partition %d: SyncSettings refused by node %d (%s: %s)",
                                p, n, e.code().name, e.details())
                continue
            self.applied[p] = max(self.applied.get(p, 0), int(reply.generation))
            if reply.proposed:
                log.info("partition %d: cluster settings generation %d applied", p,
                         reply.generation, extra={"partition": p})
            return
        self._retry_at[p] = asyncio.get_running_loop().time() + RETRY_S
