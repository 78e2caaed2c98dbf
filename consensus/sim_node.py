"""One simulated Raft replica: a RawNode, its "disk" and its state machine.

The disk is the MemoryStorage plus the LogChain mirror (sim_checks) and,
when the schedule's state machine is durable (Knobs.durable_apply), the
state machine's own record of what it applied. It survives crashes, except
for writes not yet synced: the disk is a write-back cache in which every
write since the last synced one may be lost, a crash keeping only a prefix
of them (one ordered log, as LevelDB's). Everything else (the RawNode, the
applied state, pending proposals and reads) is volatile and is lost by
crash(). A restart builds a new RawNode from the disk with applied = the
state machine's durable applied index (or the last snapshot's index, when
the state machine is rebuilt from snapshots), and the committed entries after
it are replayed through Ready as on a real restart.

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
        self.sm_applied = 0  # the durable state machine (Knobs.durable_apply)
        self.sm_chain = ZERO
        # The durable disk as of the first write not yet synced, and the
        # writes since: a crash keeps a prefix of them.
        self._durable: tuple[MemoryStorage, LogChain, int, bytes] | None = None
        self._unsynced: list[Callable[[], None]] = []
        # What this incarnation told others, which its disk must still say
        # after a crash: (term, candidate) of its latest vote (granted, or
        # for itself), and (term, index) of its latest append acknowledgement.
        self.promised_vote: tuple[int, int] = (0, 0)
        self.promised_ack: tuple[int, int] = (0, 0)
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
        self.joint_stuck_since = 0  # sim._check_joint_left
        self.proposed: set[bytes] = set()
        self.pending_reads: list[ReadState] = []

    @property
    def rawnode(self) -> RawNode:
        assert self.raw is not None, "node is down"
        return self.raw

    def write(self, op: Callable[[], None], synced: bool) -> None:
        """Do a disk write; unless synced, a crash may lose it (and every
        write after it). A synced write makes everything before it durable."""
        if not synced and self._durable is None:
            self._durable = (
                self.storage.clone(),
                self.chain.clone(),
                self.sm_applied,
                self.sm_chain,
            )
        op()
        if synced:
            self._durable = None
            self._unsynced = []
        else:
            self._unsynced.append(op)

    def lose_unsynced(self, rng: random.Random) -> int:
        """A crash: keep a random prefix of the unsynced writes. Returns how
        many were lost."""
        if self._durable is None:
            return 0
        ops = self._unsynced
        keep = rng.randint(0, len(ops))
        self.storage, self.chain, self.sm_applied, self.sm_chain = self._durable
        self._durable = None
        self._unsynced = []
        for op in ops[:keep]:
            op()
        return len(ops) - keep

    def set_sm(self, applied: int, chain: bytes) -> None:
        self.sm_applied = applied
        self.sm_chain = chain

    def boot(self, rng: random.Random, durable_apply: bool = False) -> None:
        """Start (or restart) from what is on disk."""
        snap = self.storage.snapshot()
        index, state_chain, _ = decode_state(snap)
        hs, _ = self.storage.initial_state()
        self.snap_index = index
        if durable_apply and self.sm_applied > index:
            index, state_chain = self.sm_applied, self.sm_chain
        self.applied = index
        self.state_chain = state_chain
        self.term = hs.term
        self.role = StateRole.FOLLOWER
        self.leader = 0
        self.led_term = 0
        self.proposed = set()
        self.pending_reads = []
        self.crash_point = CrashPoint.NONE
        self.incarnation += 1
        self.raw = RawNode(self._make_config(self.id, self.storage, rng, index))
        # The membership as of applied: the snapshot's, and the conf changes
        # after it up to applied, which the core replays from the log.
        self.conf_state = self.raw.status().conf_state
        self.promised_vote = (0, 0)
        self.promised_ack = (0, 0)
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
