"""Where to send a request: the routing table, the leader cache, replica choice.

No IO here. The async client fetches `Admin.RoutingTable` from any node and
installs it in a `Router`; the router computes a patient's partition locally
with proto.placement (the same function the nodes use), remembers the last
known leader of every partition, and hands out targets for one call through a
`TargetPicker`: the cached leader first for linearizable calls, replicas in
round-robin order for follower/bounded reads and scans.

A node that is not the leader answers UNAVAILABLE with trailing metadata
`medkv-leader: "NODE_ID@host:port"`; `parse_leader_hint` reads it, and the
picker sends the next attempt straight there (one hop).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from proto.medkv.v1 import admin_pb2
from proto.placement import make_placement, partition_of

LEADER_KEY = "medkv-leader"
# Optional: a node may stamp its routing epoch on replies; a different epoch
# than the client's table means the membership changed and the table is stale.
EPOCH_KEY = "medkv-epoch"


@dataclass(frozen=True)
class LeaderHint:
    node_id: int
    address: str


def parse_leader_hint(value: str | None) -> LeaderHint | None:
    """`"3@10.0.0.3:7101"` -> LeaderHint(3, "10.0.0.3:7101"); None when absent or malformed."""
    if not value:
        return None
    node, sep, address = value.strip().partition("@")
    if not sep or not address or not node.isdigit() or int(node) <= 0:
        return None
    return LeaderHint(int(node), address)


def parse_epoch(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


@dataclass(frozen=True)
class RoutingTable:
    """One snapshot of the cluster's membership and placement."""

    epoch: int
    partitions: int
    replication: int
    virtual_nodes: int
    nodes: Mapping[int, str]  # node id -> host:port
    replicas: tuple[tuple[int, ...], ...]  # per partition, placement order
    leaders: tuple[int, ...]  # per partition, the node's last known leader (0: unknown)

    @classmethod
    def from_proto(cls, reply: admin_pb2.RoutingTableResponse) -> RoutingTable:
        nodes = {n.node_id: n.address for n in reply.nodes}
        if not nodes:
            raise ValueError("routing table lists no nodes")
        partitions = reply.partitions
        if partitions <= 0:
            raise ValueError("routing table has no partitions")
        replication = reply.replication_factor or min(3, len(nodes))
        placement = make_placement(nodes, partitions, replication, reply.virtual_nodes or 128)
        replicas = [placement.replicas(p) for p in range(partitions)]
        leaders = [0] * partitions
        # The node's per-partition view wins over local placement: during a
        # membership change it is the authority on who holds what.
        for info in reply.partition_info:
            if 0 <= info.partition < partitions:
                if info.replicas:
                    replicas[info.partition] = tuple(info.replicas)
                leaders[info.partition] = info.leader
        return cls(
            epoch=reply.epoch,
            partitions=partitions,
            replication=replication,
            virtual_nodes=reply.virtual_nodes or 128,
            nodes=nodes,
            replicas=tuple(replicas),
            leaders=tuple(leaders),
        )

    def partition_of(self, patient_id: str) -> int:
        return partition_of(patient_id, self.partitions)


class Router:
    """The client's routing state: the current table plus what calls taught it."""

    def __init__(self, table: RoutingTable, rng: random.Random | None = None) -> None:
        self.table = table
        self._rng = rng or random.Random()
        self._leaders: dict[int, int] = {}
        self._learned: dict[int, str] = {}
        self._rotation: dict[int, itertools.count[int]] = {}
        self.install(table)

    def install(self, table: RoutingTable) -> None:
        """Adopt a fresh table; keep cached leaders that are still replicas."""
        previous = self._leaders
        self.table = table
        self._leaders = {}
        self._learned = {k: v for k, v in self._learned.items() if k not in table.nodes}
        for p in range(table.partitions):
            reps = table.replicas[p]
            if table.leaders[p] in reps:
                self._leaders[p] = table.leaders[p]
            elif previous.get(p) in reps:
                self._leaders[p] = previous[p]

    @property
    def epoch(self) -> int:
        return self.table.epoch

    @property
    def partitions(self) -> int:
        return self.table.partitions

    def partition_of(self, patient_id: str) -> int:
        return self.table.partition_of(patient_id)

    def replicas(self, partition: int) -> tuple[int, ...]:
        return self.table.replicas[partition]

    def address(self, node_id: int) -> str | None:
        return self.table.nodes.get(node_id) or self._learned.get(node_id)

    def addresses(self) -> list[str]:
        return list(self.table.nodes.values())

    def leader(self, partition: int) -> int | None:
        return self._leaders.get(partition)

    def note_leader(self, partition: int, node_id: int) -> None:
        if node_id > 0:
            self._leaders[partition] = node_id

    def forget_leader(self, partition: int, node_id: int) -> None:
        """Drop the cache entry only if it still names the node that failed."""
        if self._leaders.get(partition) == node_id:
            del self._leaders[partition]

    def knows(self, hint: LeaderHint) -> bool:
        """True when the hint names a node of the current table at the same address."""
        return self.table.nodes.get(hint.node_id) == hint.address

    def learn(self, hint: LeaderHint) -> None:
        """Make a hinted node dialable even if the table does not list it (yet)."""
        if self.table.nodes.get(hint.node_id) != hint.address:
            self._learned[hint.node_id] = hint.address

    def replica_order(self, partition: int) -> list[int]:
        """The partition's replicas, rotated one step further on every call (round-robin)."""
        reps = list(self.replicas(partition))
        counter = self._rotation.get(partition)
        if counter is None:
            # A random first replica: many short-lived clients (one per CLI
            # call, say) would otherwise all start on the same node.
            counter = self._rotation[partition] = itertools.count(self._rng.randrange(len(reps)))
        start = next(counter) % len(reps)
        return reps[start:] + reps[:start]


class Mode(Enum):
    LEADER = "leader"  # writes, linearizable reads: the partition's leader
    REPLICA = "replica"  # follower/bounded reads, scans: any replica


class TargetPicker:
    """Chooses the node for each attempt of one call."""

    def __init__(self, router: Router, partition: int, mode: Mode) -> None:
        self.router = router
        self.partition = partition
        self.mode = mode
        self._order = router.replica_order(partition) if mode is Mode.REPLICA else []
        self._index = 0
        self._forced: int | None = None
        self._last: int | None = None
        self._out_of_service: set[int] = set()  # replicas that answered DATA_LOSS in this call

    def next(self) -> int:
        """The node to try now."""
        if self._forced is not None:
            target, self._forced = self._forced, None
        elif self.mode is Mode.LEADER and (leader := self.router.leader(self.partition)):
            target = leader
        else:
            target = self._cycle()
        self._last = target
        return target

    def _cycle(self) -> int:
        order = self._order or list(self.router.replicas(self.partition))
        target = order[self._index % len(order)]
        self._index += 1
        if target == self._last and len(order) > 1:
            target = order[self._index % len(order)]
            self._index += 1
        return target

    def failed(self, node_id: int) -> None:
        """The node could not serve: stop treating it as the leader, move on."""
        if self.mode is Mode.LEADER:
            self.router.forget_leader(self.partition, node_id)

    def out_of_service(self, node_id: int) -> bool:
        """The node's copy of the partition failed an integrity check: serve
        this call from another replica. False once every replica has failed so."""
        self._out_of_service.add(node_id)
        self.failed(node_id)
        return len(self._out_of_service) < len(self.router.replicas(self.partition))

    def redirect(self, node_id: int) -> None:
        """A hint named the leader: it is the next target, and the cache learns it."""
        self.router.note_leader(self.partition, node_id)
        self._forced = node_id

    def to_leader(self) -> None:
        """Switch a replica read to the leader (a bounded read found every replica too stale)."""
        self.mode = Mode.LEADER
        self._order = []
        self._index = 0


__all__ = [
    "EPOCH_KEY",
    "LEADER_KEY",
    "LeaderHint",
    "Mode",
    "Router",
    "RoutingTable",
    "TargetPicker",
    "parse_epoch",
    "parse_leader_hint",
]
