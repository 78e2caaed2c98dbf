"""Brings the system group's membership in line with the cluster state.

Runs on every node and acts only on the one leading the system group, one
step per round (a conf change is proposed only when none is pending, so
steps never race each other; a new leader picks up where the old one left
off because every step is decided from replicated state alone):

  1. a live member the system group does not hold yet (just added by
     `medkv node add`) is handed the cluster's initial state and the state
     as of now (RaftTransport.Bootstrap), then added as a learner: it
     replays the never-compacted system log from its start;
  2. a removed member leaves the system group;
  3. a joining member whose system replica has caught up becomes active
     (from then on placement counts it);
  4. the voters follow ClusterState.system_voters() (up to five, an odd
     number): a caught-up learner is promoted, a voter no longer wanted is
     demoted, one at a time; a leader to be demoted first hands leadership
     to another voter;
  5. a decommissioning member that holds no replica any more is removed.

Beside these steps, every round, the mover (node.cluster.mover) moves
replicas towards the placement of the active members, a few at a time, and
the settings sync (node.cluster.settings_sync) brings the cluster's settings
into every partition's log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import grpc

from consensus.types import ConfChange, ConfChangeSingle, ConfChangeType
from node.cluster import state as cs
from node.cluster.mover import Mover
from node.cluster.settings_sync import SettingsSync
from node.errors import NodeError
from proto.medkv.v1 import raft_pb2, raft_pb2_grpc

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.cluster")

ROUND_S = 0.5
BOOTSTRAP_TIMEOUT_S = 5.0


class Reconciler:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._handed: set[int] = set()  # members that acknowledged their bootstrap
        self.mover = Mover(node)
        self.settings_sync = SettingsSync(node)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(ROUND_S)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except NodeError as e:
                log.info("cluster reconciler: %s", e.message)
            except Exception:
                log.exception("cluster reconciler failed a round")

    async def step(self) -> str | None:
        """One step towards the wanted membership; what it did, or None."""
        node = self.node
        r = node.host.groups.get(cs.SYSTEM_GROUP)
        state = node.cluster.state
        if r is None or r.broken or not r.is_leader or state is None:
            self.mover.stop()  # a new system leader takes the moves over
            self.settings_sync.stop()
            return None
        self.mover.step(state)
        self.settings_sync.step(state)
        st = r.raw.status()
        conf = st.conf_state
        # The log's applied index: conf changes are applied by the host, not
        # the state machine, so the machine's own index may trail them.
        if conf.voters_outgoing or r.raw.raft.pending_conf_index > r.raw.raft.raft_log.applied:
            return None  # a change is in flight (a joint config leaves by itself)
        live = {m.id: m for m in state.live_members()}
        voters, learners = set(conf.voters), set(conf.learners)
        held = voters | learners

        for m in live.values():
            if m.id not in held:
                if m.id not in self._handed and not await self._hand_state(m.id, state):
                    return None
                self._handed.add(m.id)
                return self._change(ConfChangeType.ADD_LEARNER, m.id, "add as a learner")
        for node_id in sorted(held - set(live)):
            if node_id == node.cfg.node_id:
                continue  # never remove itself while leading; handed over below
            return self._change(ConfChangeType.REMOVE_NODE, node_id, "remove (no longer a member)")

        def caught_up(node_id: int) -> bool:
            pr = st.progress.get(node_id)
            return pr is not None and pr.match >= st.commit

        for m in live.values():
            if m.state == cs.JOINING and caught_up(m.id):
                await node.host.propose_system(
                    cs.set_member_state(m.id, cs.ACTIVE, request=os.urandom(16)), 10.0)
                log.info("node %d is active: its system replica caught up", m.id)
                return f"activate {m.id}"

        wanted = set(state.system_voters())
        for node_id in sorted(wanted - voters):
            if node_id in learners and caught_up(node_id):
                return self._change(ConfChangeType.ADD_VOTER, node_id, "promote to voter")
        for node_id in sorted(voters - wanted):
            if node_id == node.cfg.node_id:
                others = [v for v in voters if v != node_id and caught_up(v)]
                if others:
                    node.host.transfer_system_leadership(min(others))
                return None
            # Demoting a voter to a learner is one voter change: safe alone.
            return self._change(ConfChangeType.ADD_LEARNER, node_id, "demote to learner")
        for m in live.values():
            if m.state == cs.DECOMMISSIONING and not state.partitions_on(m.id):
                await node.host.propose_system(
                    cs.set_member_state(m.id, cs.REMOVED, request=os.urandom(16)), 10.0)
                log.info("node %d is removed: it holds no replica any more", m.id)
                return f"remove {m.id}"
        return None

    def _change(self, kind: ConfChangeType, node_id: int, what: str) -> str:
        log.info("system group: %s node %d", what, node_id)
        self.node.host.propose_system_conf_change(
            ConfChange(changes=(ConfChangeSingle(kind, node_id),)))
        return f"{what} {node_id}"

    async def _hand_state(self, node_id: int, state: cs.ClusterState) -> bool:
        """Give a joining member the initial state and today's: it can then
        open its system replica (and trust the members that will talk to it)."""
        node = self.node
        initial = node.cluster_store.initial()
        address = node.cfg.peers.get(node_id)
        if initial is None or address is None:
            return False
        stub = raft_pb2_grpc.RaftTransportStub(node.channel_to(address))
        try:
            await stub.Bootstrap(
                raft_pb2.BootstrapRequest(
                    from_node=node.cfg.node_id, to_node=node_id,
                    cluster_state=initial.encode(), current_state=state.encode(),
                ),
                timeout=BOOTSTRAP_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as e:
            log.info("node %d did not take the cluster state yet (%s: %s)", node_id,
                     e.code().name, e.details())
            return False
        return True
