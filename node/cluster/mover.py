"""Replica moves: each partition's replica set converges to where consistent
hashing over the active members puts it (ClusterState.target_replicas).

Driven by the system group's leader (node.cluster.reconciler), a bounded
number of partitions at a time. One move swaps at most one replica:

  1. ChangeReplicas on the partition's leader (PrepareReplica on the new
     node, learner, catch-up, one joint change that promotes it and removes
     the old replica, the leader handing over first if it is the one
     leaving); idempotent, so a move cut short by any crash is redone;
  2. the resulting voters go into the cluster state (set-replicas, a new
     placement epoch): clients and nodes route by it from then on;
  3. the old replica is dropped on its node (best effort: a node that is
     gone for good never answers, and its replica no longer counts).

Every step is decided from replicated state, so a new system leader picks
up the same moves where the old one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import grpc

from node.cluster import state as cs
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.cluster")

MAX_MOVES = 2  # partitions moving at once: each costs a snapshot stream
MOVE_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0


def plan(state: cs.ClusterState) -> list[tuple[int, int | None, int | None]]:
    """(partition, node to add, node to remove) for every partition whose
    replica set differs from its target: one swap per partition at a time."""
    target = state.target_replicas()
    out = []
    for p in range(state.partitions):
        current, wanted = state.replicas[p], target[p]
        add = [n for n in wanted if n not in current]
        remove = [n for n in current if n not in wanted]
        if add or remove:
            out.append((p, add[0] if add else None, remove[0] if remove else None))
    return out


class Mover:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.moving: dict[int, asyncio.Task[None]] = {}

    def step(self, state: cs.ClusterState) -> None:
        """Start moves for partitions off target, up to MAX_MOVES at once."""
        for p, task in list(self.moving.items()):
            if task.done():
                del self.moving[p]
                if not task.cancelled() and task.exception() is not None:
                    log.warning("partition %d: move failed: %r", p, task.exception())
        for p, add, remove in plan(state):
            if len(self.moving) >= MAX_MOVES:
                break
            if p not in self.moving:
                self.moving[p] = asyncio.get_running_loop().create_task(
                    self._move(state, p, add, remove), name=f"move-{p}")

    def stop(self) -> None:
        for task in self.moving.values():
            task.cancel()
        self.moving.clear()

    def _stub(self, node_id: int) -> admin_pb2_grpc.AdminStub | None:
        address = self.node.cfg.peers.get(node_id)
        if address is None:
            return None
        return admin_pb2_grpc.AdminStub(self.node.channel_to(address))

    async def _move(self, state: cs.ClusterState, p: int, add: int | None, remove: int | None) -> None:
        what = ", ".join(x for x in (f"add node {add}" if add else "",
                                     f"remove node {remove}" if remove else "") if x)
        log.info("partition %d: moving (%s)", p, what)
        request = admin_pb2.ChangeReplicasRequest(
            partition=p, add=[add] if add else [], remove=[remove] if remove else [])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MOVE_TIMEOUT_S
        reply: admin_pb2.ChangeReplicasResponse | None = None
        candidates = list(state.replicas[p])
        while reply is None:
            if loop.time() > deadline:
                log.warning("partition %d: move (%s) did not finish in %gs; retried later",
                            p, what, MOVE_TIMEOUT_S)
                return
            for n in candidates:  # its leader answers; the others say UNAVAILABLE
                stub = self._stub(n)
                if stub is None:
                    continue
                try:
                    reply = await stub.ChangeReplicas(request, timeout=CALL_TIMEOUT_S)
                    break
                except grpc.aio.AioRpcError as e:
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                        log.warning("partition %d: ChangeReplicas refused (%s: %s)", p,
                                    e.code().name, e.details())
                        return
            if reply is None:
                await asyncio.sleep(0.5)
        voters = list(reply.voters)
        # The target's order first: its first replica is the preferred leader.
        target = state.target_replicas()[p]
        ordered = [n for n in target if n in voters] + [n for n in voters if n not in target]
        await self.node.host.propose_system(
            cs.set_replicas(p, ordered, request=os.urandom(16)), 10.0)
        log.info("partition %d: replicas now %s", p, ordered)
        if remove is not None and remove not in voters:
            stub = self._stub(remove)
            if stub is not None:
                # force: the group's leader has answered without that node, but
                # the removed replica often never heard of its removal (the
                # leader stops sending to it), so it still counts itself in.
                try:
                    await stub.DropReplica(admin_pb2.DropReplicaRequest(partition=p, force=True),
                                           timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as e:
                    log.info("partition %d: node %d did not drop its old replica (%s); it "
                             "no longer counts", p, remove, e.code().name)
