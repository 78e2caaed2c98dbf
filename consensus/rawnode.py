"""RawNode: the Ready/Advance driver around the Raft state machine
(etcd-io/raft's rawnode.go).

The application loop, single-threaded:

    node.tick() / node.step(msg) / node.propose(data) ...
    if node.has_ready():
        rd = node.ready()
        persist rd.snapshot, rd.entries, rd.hard_state (one synced write)
        send rd.messages
        apply rd.snapshot data, then rd.committed_entries in order
        (calling node.apply_conf_change for CONF_CHANGE entries)
        serve rd.read_states once applied >= their index
        node.advance(rd)

A Ready is handed out once: its content is marked in progress, so calling
ready() again before advance() returns only what is new since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from consensus import codec
from consensus.raft import Config, Raft
from consensus.storage import payload_size
from consensus.types import (
    LOCAL_MESSAGES,
    ConfChange,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    Ready,
    SoftState,
    StateRole,
)


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: str  # "PROBE", "REPLICATE" or "SNAPSHOT"
    recent_active: bool
    paused: bool
    is_learner: bool = False
    inflight: int = 0


@dataclass(frozen=True, slots=True)
class RaftStatus:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    leader: int
    role: StateRole
    lead_transferee: int
    conf_state: ConfState
    # Filled on the leader only: its view of every member (itself included).
    progress: dict[int, ProgressStatus] = field(default_factory=dict)


class RawNode:
    def __init__(self, config: Config) -> None:
        """Restores term, vote, commit, membership and log from config.storage."""
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()

    @property
    def id(self) -> int:
        return self.raft.id

    # -- inputs ------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (with a pre-vote if configured)."""
        self.raft.step(Message(MessageType.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Propose one command. Raises ProposalDropped if it cannot be accepted
        (no leader known, transfer in progress, size limit, forwarding off)."""
        self.raft.step(Message(MessageType.PROP, frm=self.raft.id, entries=[Entry(0, 0, data)]))

    def propose_batch(self, datas: Sequence[bytes]) -> None:
        """Propose several commands as one unit (all accepted or all dropped).
        Cheaper per command than propose(); they become consecutive entries."""
        if datas:
            self.raft.propose_data(datas)

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change. Only one may be pending at a time;
        the application applies it with apply_conf_change once committed."""
        e = Entry(0, 0, codec.encode_conf_change(cc), EntryType.CONF_CHANGE)
        self.raft.step(Message(MessageType.PROP, frm=self.raft.id, entries=[e]))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed CONF_CHANGE entry's change; returns the new ConfState
        (to store with the next snapshot)."""
        return self.raft.apply_conf_change(cc)

    def step(self, m: Message) -> None:
        """Feed a message received from the network.

        A forwarded proposal or read request that cannot be served here is
        dropped silently: its originator retries after a timeout.
        """
        if m.type in LOCAL_MESSAGES:
            raise ConsensusError(f"{m.type.name} is a local message")
        try:
            self.raft.step(m)
        except ProposalDropped:
            if m.type not in (MessageType.PROP, MessageType.READ_INDEX):
                raise

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read. A ReadState(index, context) appears in
        a later Ready; serve the read once applied >= index. The context must
        be unique among outstanding reads and non-empty."""
        if not context:
            raise ConsensusError("read_index needs a non-empty context")
        self.raft.step(Message(MessageType.READ_INDEX, context=context))

    def transfer_leadership(self, target: int) -> None:
        """Ask the leader to hand leadership to target (a voter)."""
        self.raft.step(Message(MessageType.TRANSFER_LEADER, frm=target))

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to node_id: stop pipelining to it."""
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """A snapshot send to node_id finished (ok) or failed.

        The transport must report every SNAP message it was given, lost ones
        included (ok=False): until then the leader sends that follower nothing
        but heartbeats, waiting for the snapshot."""
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=not ok))

    # -- outputs --------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        r.flush_appends()
        if r.msgs or r.read_states:
            return True
        log = r.raft_log
        if log.has_next_unstable_ents() or log.next_unstable_snapshot() is not None:
            return True
        if log.has_next_committed_ents():
            return True
        if r.soft_state() != self._prev_soft:
            return True
        hs = r.hard_state()
        return not hs.is_empty() and hs != self._prev_hard

    def ready(self) -> Ready:
        r = self.raft
        r.flush_appends()
        log = r.raft_log
        rd = Ready()
        ents = log.next_unstable_ents()
        rd.entries = ents
        snap = log.next_unstable_snapshot()
        rd.snapshot = snap
        committed = log.next_committed_ents()
        rd.committed_entries = committed
        rd.messages = r.msgs
        r.msgs = []
        if r.read_states:
            rd.read_states = r.read_states
            r.read_states = []
        soft = r.soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        hs = r.hard_state()
        prev = self._prev_hard
        if hs != prev:
            rd.hard_state = hs
            self._prev_hard = hs
            # A commit-only change need not be synced: commit can be
            # recomputed after a restart; term and vote cannot.
            if hs.term != prev.term or hs.vote != prev.vote:
                rd.must_sync = True
        if ents or snap is not None:
            rd.must_sync = True
        # Hand-off accounting: this Ready's content is now in progress.
        log.accept_unstable()
        if committed:
            log.accept_applying(committed[-1].index)
            if r.state == StateRole.LEADER:
                # Only a leader budgets uncommitted data (reset on election).
                r.reduce_uncommitted_size(payload_size(committed))
        return rd

    def advance(self, rd: Ready) -> None:
        """Everything in rd was persisted, sent and applied.

        This is also where a leader acknowledges its own entries (they count
        toward commit only once persisted), so a single-voter group commits
        a proposal here and hands it out in the next Ready."""
        r = self.raft
        log = r.raft_log
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            r.on_persisted(last.index, last.term)
        applied = 0
        if rd.snapshot is not None:
            idx = rd.snapshot.meta.index
            log.stable_snap_to(idx)
            applied = idx
        if rd.committed_entries:
            applied = max(applied, rd.committed_entries[-1].index)
        if applied > 0:
            r.applied_to(applied)

    # -- introspection ----------------------------------------------------------------

    def status(self) -> RaftStatus:
        r = self.raft
        progress: dict[int, ProgressStatus] = {}
        if r.state == StateRole.LEADER:
            for nid, pr in r.trk.visit():
                progress[nid] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state.name,
                    recent_active=pr.recent_active,
                    paused=pr.is_paused(),
                    is_learner=pr.is_learner,
                    inflight=pr.inflights.count(),
                )
        return RaftStatus(
            id=r.id,
            term=r.term,
            vote=r.vote,
            commit=r.raft_log.committed,
            applied=r.raft_log.applied,
            leader=r.lead,
            role=r.state,
            lead_transferee=r.lead_transferee,
            conf_state=r.trk.conf_state(),
            progress=progress,
        )

    def is_member(self, node_id: int) -> bool:
        """Whether node_id is in the group's configuration: a voter (incoming or
        outgoing) or a learner. A blank replica (no membership yet) has none."""
        return node_id in self.raft.trk.progress

    def has_membership(self) -> bool:
        """False for a blank replica that has not learnt its group's membership."""
        return bool(self.raft.trk.progress)

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def leader(self) -> int:
        """The leader this replica knows in its current term (0: none)."""
        return self.raft.lead

    @property
    def last_index(self) -> int:
        return self.raft.raft_log.last_index()

    def soft_state(self) -> SoftState:
        return self.raft.soft_state()

    def hard_state(self) -> HardState:
        return self.raft.hard_state()
