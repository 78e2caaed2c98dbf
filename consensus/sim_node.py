"""One simulated Raft replica: a RawNode, its "disk" and its state machine.

The disk is the MemoryStorage plus the LogChain mirror (sim_checks) and
survives crashes; everything else (the RawNode, the applied state, pending
proposals and reads) is volatile and is lost by crash(). A restart builds a
new RawNode from the disk with applied = the index of the last snapshot the
node stored, restores the state machine from that snapshot, and the
committed entries after it are replayed through Ready as on a real restart.

The state machine is the state chain (sim_checks.state_link) of every
applied entry: enough to prove two replicas applied the same history.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from enum import IntEnum

from consensus.memory_storage import MemoryStorage
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.sim_checks import ZERO, LogChain
from consensus.types import ConfState, ReadState, Snapshot, StateRole

_SNAP = struct.Struct(">Q16s16s")  # applied index, state chain, log chain at that index


class CrashPoint(IntEnum):
    """Where in the handling of its next Ready a node dies."""

    NONE = 0
    BEFORE_PERSIST = 1  # the Ready's entries and hard state are lost
    AFTER_PERSIST = 2  # persisted, nothing sent
    AFTER_SEND = 3  # persisted and sent, nothing applied
    AFTER_APPLY = 4  # applied, advance() never called


def encode_state(index: int, state_chain: bytes, log_chain: bytes) -> bytes:
    return _SNAP.pack(index, state_chain, log_chain)


def decode_state(snap: Snapshot) -> tuple[int, bytes, bytes]:
    """(applied index, state chain, log chain) a snapshot restores. The
    bootstrap snapshot (index 0) has no data: the empty state."""
    if not snap.data:
        return snap.meta.index, ZERO, ZERO
    index, state_chain, log_chain = _SNAP.unpack(snap.data)
    return int(index), bytes(state_chain), bytes(log_chain)


def members(cs: ConfState) -> set[int]:
    return set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing) | set(cs.learners_next)


ConfigFactory = Callable[[int, MemoryStorage, random.Random, int], Config]


class SimNode:
    def __init__(self, node_id: int, storage: MemoryStorage, make_config: ConfigFactory) -> None:
        self.id = node_id
        # --- disk: survives crashes
        self.storage = storage
        self.chain = LogChain()
        # --- lifecycle
        self.alive = False
        self.removed = False  # decommissioned after its removal was applied: never restarts
        self.incarnation = 0
        self.restart_at = 0
        self.crash_point = CrashPoint.NONE
        self.kill_at = 0  # virtual time of a scheduled crash (0: none)
        self.phase = 0  # tick offset, so nodes do not tick in lock step
        self._make_config = make_config
        # --- volatile: rebuilt by boot()
        self.raw: RawNode | None = None
        self.applied = 0
        self.state_chain = ZERO
        self.conf_state = ConfState()
        self.snap_index = 0
        self.role = StateRole.FOLLOWER
        self.leader = 0
        self.term = 0
        self.led_term = 0  # the term this node was last seen leading
        self.proposed: set[bytes] = set()
        self.pending_reads: list[ReadState] = []

    @property
    def rawnode(self) -> RawNode:
        assert self.raw is not None, "node is down"
        return self.raw

    def boot(self, rng: random.Random) -> None:
        """Start (or restart) from what is on disk."""
        snap = self.storage.snapshot()
        index, state_chain, _ = decode_state(snap)
        hs, cs = self.storage.initial_state()
        self.applied = index
        self.snap_index = index
        self.state_chain = state_chain
        self.conf_state = cs
        self.term = hs.term
        self.role = StateRole.FOLLOWER
        self.leader = 0
        self.led_term = 0
        self.proposed = set()
        self.pending_reads = []
        self.crash_point = CrashPoint.NONE
        self.incarnation += 1
        self.raw = RawNode(self._make_config(self.id, self.storage, rng, index))
        self.alive = True

    def crash(self) -> None:
        """Lose everything volatile; the disk stays as it is."""
        self.alive = False
        self.kill_at = 0
        self.raw = None
        self.proposed = set()
        self.pending_reads = []
        self.crash_point = CrashPoint.NONE
        self.role = StateRole.FOLLOWER
        self.leader = 0

    @property
    def is_leader(self) -> bool:
        return self.alive and self.role == StateRole.LEADER
