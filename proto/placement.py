"""Where a patient's records live: the one mapping node and client must agree on.

Pure and stdlib-only, so both the server and the client import it and route
identically from the same cluster configuration.

* patient ID -> partition: a stable 64-bit hash (blake2b) onto a ring cut into
  `partitions` equal arcs.
* partition -> replicas: consistent hashing of the partition onto the nodes'
  virtual tokens, walking clockwise and taking the first `replication`
  distinct nodes, with bounded loads (Mirrokni et al., "Consistent Hashing
  with Bounded Loads"): partitions are placed in order and a node already
  holding ceil(1.25 * R * P / N) replicas is passed over. Plain consistent
  hashing leaves some nodes with twice their share at laptop sizes (5 nodes,
  16 partitions: 6 to 13 replicas); the cap keeps every node within 25% of
  its share above, at the price of a little extra movement when nodes come
  and go (measured: 1.02x the minimum on average, worst seen 2.5x).
* the preferred leader of each partition: one of its replicas, chosen in
  partition order as the replica that is preferred for the fewest partitions
  so far, so leaders spread evenly; the host hands leadership to it.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

RING_SIZE = 1 << 64
DEFAULT_PARTITIONS = 16
DEFAULT_REPLICATION = 3
DEFAULT_VIRTUAL_NODES = 128
LOAD_FACTOR = 1.25  # bounded loads: no node holds more than 1.25x its share of replicas


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the first 8 bytes of blake2b, big-endian)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def partition_of(patient_id: str, partitions: int) -> int:
    """The partition that holds every record of this patient."""
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    return (hash64(patient_id.encode("utf-8")) * partitions) >> 64


def node_tokens(node_id: int, virtual_nodes: int) -> list[int]:
    """The ring positions of one node's virtual nodes."""
    return [hash64(b"node:%d:%d" % (node_id, v)) for v in range(virtual_nodes)]


def partition_point(partition: int) -> int:
    """Where a partition's replica walk starts on the node ring."""
    return hash64(b"partition:%d" % partition)


@dataclass(frozen=True)
class Placement:
    """The replica sets of every partition for one cluster configuration."""

    node_ids: tuple[int, ...]
    partitions: int = DEFAULT_PARTITIONS
    replication: int = DEFAULT_REPLICATION
    virtual_nodes: int = DEFAULT_VIRTUAL_NODES

    def __post_init__(self) -> None:
        if self.partitions <= 0:
            raise ValueError("partitions must be positive")
        if self.replication <= 0:
            raise ValueError("replication must be positive")
        if len(set(self.node_ids)) != len(self.node_ids):
            raise ValueError("node ids must be distinct")
        if any(n <= 0 for n in self.node_ids):
            raise ValueError("node ids must be positive")
        if len(self.node_ids) < self.replication:
            raise ValueError(
                f"{len(self.node_ids)} nodes cannot hold {self.replication} distinct replicas"
            )
        if self.virtual_nodes <= 0:
            raise ValueError("virtual_nodes must be positive")

    @cached_property
    def _ring(self) -> tuple[list[int], list[int]]:
        points = sorted(
            (token, node) for node in self.node_ids for token in node_tokens(node, self.virtual_nodes)
        )
        return [t for t, _ in points], [n for _, n in points]

    @property
    def load_cap(self) -> int:
        """Most replicas any node holds (unless too few nodes have room)."""
        share = self.replication * self.partitions / len(self.node_ids)
        return max(1, math.ceil(LOAD_FACTOR * share))

    @cached_property
    def table(self) -> tuple[tuple[int, ...], ...]:
        load = dict.fromkeys(self.node_ids, 0)
        walks = []
        for p in range(self.partitions):
            reps = self._walk(p, load)
            for n in reps:
                load[n] += 1
            walks.append(reps)
        return tuple(self._prefer_leaders(walks))

    def _walk(self, partition: int, load: dict[int, int]) -> tuple[int, ...]:
        tokens, owners = self._ring
        start = bisect.bisect_left(tokens, partition_point(partition))
        cap = self.load_cap
        chosen: list[int] = []
        for respect_cap in (True, False):  # a second pass only if too few nodes had room
            for i in range(len(tokens)):
                node = owners[(start + i) % len(tokens)]
                if node in chosen or (respect_cap and load[node] >= cap):
                    continue
                chosen.append(node)
                if len(chosen) == self.replication:
                    return tuple(chosen)
        return tuple(chosen)

    @staticmethod
    def _prefer_leaders(walks: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Put each partition's preferred leader first, spreading leaders evenly."""
        led: dict[int, int] = {}
        out = []
        for reps in walks:
            leader = min(reps, key=lambda n: (led.get(n, 0), reps.index(n)))
            led[leader] = led.get(leader, 0) + 1
            out.append((leader, *(n for n in reps if n != leader)))
        return out

    def replicas(self, partition: int) -> tuple[int, ...]:
        """The nodes holding this partition; the first is its preferred leader."""
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is outside 0..{self.partitions - 1}")
        return self.table[partition]

    def partition_of(self, patient_id: str) -> int:
        return partition_of(patient_id, self.partitions)

    def replicas_of_patient(self, patient_id: str) -> tuple[int, ...]:
        return self.replicas(self.partition_of(patient_id))

    def partitions_on(self, node_id: int) -> list[int]:
        return [p for p, reps in enumerate(self.table) if node_id in reps]


def moved_replicas(before: Placement, after: Placement) -> int:
    """How many (partition, node) replica assignments differ between two placements."""
    moved = 0
    for p in range(min(before.partitions, after.partitions)):
        moved += len(set(after.replicas(p)) - set(before.replicas(p)))
    return moved


def make_placement(
    node_ids: Iterable[int],
    partitions: int = DEFAULT_PARTITIONS,
    replication: int = DEFAULT_REPLICATION,
    virtual_nodes: int = DEFAULT_VIRTUAL_NODES,
) -> Placement:
    return Placement(tuple(sorted(node_ids)), partitions, replication, virtual_nodes)


__all__: Sequence[str] = (
    "DEFAULT_PARTITIONS",
    "DEFAULT_REPLICATION",
    "DEFAULT_VIRTUAL_NODES",
    "Placement",
    "hash64",
    "make_placement",
    "moved_replicas",
    "node_tokens",
    "partition_of",
)
