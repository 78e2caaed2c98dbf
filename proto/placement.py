"""Where a patient's records live: the one mapping node and client must agree on.

Pure and stdlib-only, so both the server and the client import it and route
identically from the same cluster configuration.

* patient ID -> partition: a stable 64-bit hash (blake2b) onto a ring cut into
  `partitions` equal arcs.
* partition -> replicas: consistent hashing of the partition onto the nodes'
  virtual tokens, walking clockwise and taking the first `replication`
  distinct nodes. A node's tokens depend only on its own id, so adding or
  removing a node only changes the partitions whose walk meets its tokens.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

RING_SIZE = 1 << 64
DEFAULT_PARTITIONS = 16
DEFAULT_REPLICATION = 3
DEFAULT_VIRTUAL_NODES = 128


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

    @cached_property
    def table(self) -> tuple[tuple[int, ...], ...]:
        return tuple(self._walk(p) for p in range(self.partitions))

    def _walk(self, partition: int) -> tuple[int, ...]:
        tokens, owners = self._ring
        start = bisect.bisect_left(tokens, partition_point(partition))
        chosen: list[int] = []
        for i in range(len(tokens)):
            node = owners[(start + i) % len(tokens)]
            if node not in chosen:
                chosen.append(node)
                if len(chosen) == self.replication:
                    break
        return tuple(chosen)

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
