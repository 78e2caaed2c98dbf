"""The data that flows in and out of a Raft group, shared by every consensus module.

Modelled on etcd-io/raft's raftpb: plain values, no behaviour. Entries are
unfrozen slots dataclasses because the hot path creates very many of them and
a frozen dataclass's __init__ costs several times more; treat them as
immutable all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1  # data is codec.encode_conf_change(ConfChange)


@dataclass(slots=True)
class Entry:
    index: int
    term: int
    data: bytes = b""
    type: int = EntryType.NORMAL


class MessageType(IntEnum):
    # Local messages: never sent over the network.
    HUP = 0  # start an election (campaign)
    BEAT = 1  # leader: broadcast heartbeats
    PROP = 2  # a proposal (forwarded to the leader only if allowed)
    UNREACHABLE = 3  # the transport could not reach msg.frm
    SNAP_STATUS = 4  # a snapshot send to msg.frm finished; reject=True when it failed
    CHECK_QUORUM = 5  # leader: step down if a quorum was not heard from
    # Network messages.
    APP = 10
    APP_RESP = 11
    VOTE = 12
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    SNAP = 16
    HEARTBEAT = 17
    HEARTBEAT_RESP = 18
    TRANSFER_LEADER = 19
    TIMEOUT_NOW = 20
    READ_INDEX = 21
    READ_INDEX_RESP = 22


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)


class StateRole(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a message that depends on it leaves the node."""

    term: int = 0
    vote: int = 0  # 0 = none
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == 0 and self.commit == 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership of a group, as of some log index.

    In a joint configuration (during a voter change), voters_outgoing holds the
    old voter set and decisions need a majority of both sets.
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()  # learners to become once the joint config is left
    auto_leave: bool = False


class ConfChangeType(IntEnum):
    ADD_VOTER = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2


class ConfChangeTransition(IntEnum):
    AUTO = 0  # simple change if possible, else joint consensus left automatically
    JOINT_IMPLICIT = 1  # always joint, left automatically
    JOINT_EXPLICIT = 2  # always joint, left by an empty ConfChange


@dataclass(frozen=True, slots=True)
class ConfChangeSingle:
    type: ConfChangeType
    node_id: int


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change (etcd's ConfChangeV2). No changes = leave joint config."""

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""

    def leave_joint(self) -> bool:
        return not self.changes


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""  # opaque application state, supplied by the application

    def is_empty(self) -> bool:
        return self.meta.index == 0


EMPTY_SNAPSHOT = Snapshot()


@dataclass(slots=True)
class Message:
    type: MessageType
    to: int = 0
    frm: int = 0
    term: int = 0
    log_term: int = 0  # APP: term of entry at index; VOTE: last log term; resp hints
    index: int = 0  # APP: index before entries; VOTE: last log index; resp: ack index
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APP_RESP reject: follower's best guess of the match index
    snapshot: Snapshot | None = None
    context: bytes = b""  # READ_INDEX / heartbeat: the read request context; campaign: transfer marker


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once applied index >= index."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the application wants to observe; never persisted."""

    leader: int = 0
    role: StateRole = StateRole.FOLLOWER


@dataclass(slots=True)
class Ready:
    """One batch of work for the application, acknowledged by RawNode.advance().

    The application must, in this order: persist hard_state, entries and
    snapshot (one synced write); send messages; apply snapshot data and
    committed_entries; serve read_states once applied; then call advance().
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None  # None: unchanged since the last Ready
    read_states: list[ReadState] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # to persist, before sending
    # To persist and apply, before the entries. Persist it whenever it is not
    # None, even at index 0: a blank replica (added by a conf change) learns
    # the bootstrap membership from an index-0 snapshot with no data.
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)  # to apply, in order
    messages: list[Message] = field(default_factory=list)  # to send, after persisting
    must_sync: bool = False  # hard state or entries changed: the write must be synced


class ConsensusError(Exception):
    """Base class of the errors the consensus package raises."""


class ProposalDropped(ConsensusError):
    """The proposal was not accepted (no leader, transfer in progress, flow control)."""


class UncommittedLimitExceeded(ProposalDropped):
    """The leader holds max_uncommitted_entries_size bytes not yet committed:
    back-pressure (retry later), not a change of leader."""


class CompactedError(ConsensusError):
    """The requested index is older than the storage's first index (compacted away)."""


class UnavailableError(ConsensusError):
    """The requested index is past the storage's last index."""


class SnapshotTemporarilyUnavailable(ConsensusError):
    """The application cannot produce a snapshot right now; retry later."""
