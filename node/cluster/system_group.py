"""This node's replica of the system group, on the multi-Raft host.

The system group (node.cluster.system) is driven by the same host loop as the
partitions (node.host): this module opens its replica there and proposes to
it, changes of the cluster state and of the group's own membership. The host
keeps thin methods of the same names (open_system, propose_system, ...) for
the control plane's callers.
"""

from __future__ import annotations

import asyncio
import os
import random
from functools import partial
from typing import TYPE_CHECKING

from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import ConfChange, ConfState, ProposalDropped
from node import group_persist
from node.cluster.state import SYSTEM_GROUP, ClusterState, Command
from node.cluster.system import REFUSED, SystemStateMachine, wait_key
from node.errors import NOT_APPLIED, DeadlineExceeded, FailedPrecondition, Unavailable
from node.staleness import ReplicaFreshness
from node.state_machine import ApplyResult

if TYPE_CHECKING:
    from node.host import MultiRaftHost


class SystemGroup:
    """Opening and proposing to the system group's replica on one host."""

    def __init__(self, host: MultiRaftHost) -> None:
        self._host = host
        self.sm: SystemStateMachine | None = None

    def open(self, sm: SystemStateMachine, conf: ConfState, rng_seed: int = 0) -> None:
        """Run this node's replica of the system group (node.cluster.system).

        conf is the group's initial membership, used only when the group is
        new here: the same on every initial member, derived from the state
        every one of them starts from."""
        # The host is imported here, not at the top: it imports this module.
        from node.host import Replica

        host = self._host
        cfg = host.cfg
        fresh = not host.log_store.has_group(SYSTEM_GROUP)
        if fresh:
            host.log_store.bootstrap(SYSTEM_GROUP, conf)
        storage = host.log_store.group(SYSTEM_GROUP)
        raw = RawNode(
            Config(
                id=host.node_id,
                storage=storage,
                rng=random.Random(rng_seed or int.from_bytes(os.urandom(8), "big")),
                election_tick=cfg.raft.election_ticks,
                heartbeat_tick=cfg.raft.heartbeat_ticks,
                applied=sm.applied_index,
                max_size_per_msg=cfg.raft.max_size_per_msg,
                max_inflight_msgs=cfg.raft.max_inflight_msgs,
                check_quorum=True,
                pre_vote=True,
            )
        )
        group_persist.check_stored_state(SYSTEM_GROUP, host.node_id, raw)
        voters = tuple(sorted(raw.status().conf_state.voters))
        r = Replica(
            SYSTEM_GROUP, voters, raw, storage, sm,  # type: ignore[arg-type]
            fresh=ReplicaFreshness(cfg.raft.max_clock_offset_ms / 1000.0),
        )
        host.groups[SYSTEM_GROUP] = r
        self.sm = sm
        host._dirty.add(SYSTEM_GROUP)
        if fresh and conf.voters and conf.voters[0] == host.node_id:
            raw.campaign()  # a new cluster's system group has a leader in one round trip

    @property
    def state(self) -> ClusterState | None:
        """The cluster's facts as this node's system replica has applied them."""
        return self.sm.state if self.sm is not None else None

    async def propose(self, cmd: Command, timeout: float) -> ApplyResult:
        """Replicate one change of the cluster state and wait until this
        node's own system replica applied it. Any member may propose: a
        follower's proposal is forwarded to the system group's leader by Raft,
        and every replica applies every entry, so the proposer learns the
        outcome from its own apply. A refusal is FAILED_PRECONDITION with the
        state machine's reason."""
        host = self._host
        r = host.groups.get(SYSTEM_GROUP)
        if r is None or r.broken:
            raise Unavailable(f"node {host.node_id} runs no system replica", kind=NOT_APPLIED)
        if not r.leader:
            raise Unavailable(
                "the system group has no leader right now (election in progress); retry",
                kind=NOT_APPLIED,
            )
        key = wait_key(cmd.request)
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        r.write_waiters.setdefault(key, []).append(fut)
        data = cmd.encode()

        def op() -> None:
            if fut.done():
                return
            host._dirty.add(SYSTEM_GROUP)
            try:
                r.raw.propose(data)
            except ProposalDropped:
                fut.set_exception(Unavailable(
                    "the system group dropped the proposal (no leader, or a leader transfer); retry",
                    kind=NOT_APPLIED,
                ))

        host._enqueue(op)
        try:
            res = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"a cluster change ({cmd.kind}) was not applied within {timeout:.1f}s; "
                "it may still apply"
            ) from None
        finally:
            waiters = r.write_waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    r.write_waiters.pop(key, None)
        if res.error_code == REFUSED:
            raise FailedPrecondition(res.message)
        return res

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a change of the system group's membership (its leader only;
        node.cluster.reconciler). The core drops it while another is pending."""
        host = self._host
        r = host.groups.get(SYSTEM_GROUP)
        if r is None or r.broken:
            return

        def op() -> None:
            try:
                r.raw.propose_conf_change(cc)
            except ProposalDropped:
                return  # not the leader any more, or a transfer: the next round retries
            host._dirty.add(SYSTEM_GROUP)

        host._enqueue(op)

    def transfer_leadership(self, target: int) -> None:
        host = self._host
        r = host.groups.get(SYSTEM_GROUP)
        if r is not None and not r.broken:
            host._enqueue(partial(host._poke, r, r.raw.transfer_leadership, target))
