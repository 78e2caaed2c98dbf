"""Where partitions' leaders go: leader balancing and operators' transfers.

The host (node.host) drives the groups; this module decides, from outside the
Raft loop's turn, which replica should lead each partition this node leads,
and asks the core to hand leadership over (the handover itself is queued on
the loop like every other operation on a RawNode). The node runs balance()
every few seconds (node.server); TransferLeader calls transfer().
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

from node.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from node.host import MultiRaftHost


class LeaderBalancer:
    """Leader placement for the partitions of one host."""

    def __init__(self, host: MultiRaftHost) -> None:
        self._host = host

    async def transfer(self, partition: int, target: int, timeout: float) -> int:
        host = self._host
        if target not in host.cfg.peers:
            raise InvalidArgument(f"target_node: node {target} is not a member of the cluster")
        holders = host.members(partition)
        if target not in holders:
            raise FailedPrecondition(
                f"node {target} holds no replica of partition {partition}; its replicas are "
                f"nodes {','.join(str(n) for n in holders)}"
            )
        r = host.leader_replica(partition)
        host._enqueue(lambda: host._poke(r, r.raw.transfer_leadership, target))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if r.leader == target:
                return target
            await asyncio.sleep(0.05)
        raise DeadlineExceeded(f"partition {partition}: transfer to node {target} did not complete")

    def balance(self) -> None:
        """Hand each partition this node leads to its preferred replica, when
        that replica is up to date: leaders spread evenly over the nodes."""
        host = self._host
        state = host.cluster_state
        for r in host.replicas.values():
            if not r.is_leader or r.broken:
                continue
            if not r.replicas or host.moves.moving(r):
                continue  # a replica move decides its leader itself
            # An operator's TransferLeader pins the partition's leader in the
            # cluster state: balancing respects it instead of undoing it.
            preferred = r.replicas[0]
            if state is not None and r.partition < state.partitions:
                preferred = state.preferred_leader(r.partition)
                if preferred not in r.replicas:
                    preferred = r.replicas[0]
            if preferred == host.node_id:
                continue
            st = r.raw.status()
            pr = st.progress.get(preferred)
            if pr is not None and pr.recent_active and pr.match >= st.commit:
                host._enqueue(partial(host._poke, r, r.raw.transfer_leadership, preferred))
