"""Every inbound Raft message is checked here before the core sees it.

The Raft core trusts its input: it is written for messages from correct
peers. A peer with a bug (or a forged stream) could otherwise poison a group
for good: one heartbeat with term 2^64-1 is adopted, persisted, and the next
election's term no longer fits the wire or the disk, so every turn of that
partition fails on every node, after restarts too. (Who may speak Raft at all
is access control's business, node.tls; this is about what a peer that may
speak can say.)

The rules hold for every message a correct medkv node sends, so refusing a
message that breaks one never refuses a correct peer:

  addressing   the group exists and this node holds a replica of it; the
               message is addressed to this node and comes from the stream's
               sender, a member of the group (when this replica knows the
               membership); local message types never travel;
  numbers      terms, indexes and commit indexes stay below 2^63; a term is at
               most MAX_TERM_AHEAD beyond this replica's (no cluster runs 2^32
               elections while one replica sleeps); a log term never exceeds
               the message's term; forwarded proposals and read requests carry
               no term, everything else does;
  shape        only APP and PROP carry entries, APP's are contiguous after
               `index` with terms between `log_term` and the message's term,
               PROP's are unassigned (index 0, term 0); only SNAP carries a
               snapshot, whose membership names cluster nodes only; contexts
               are short; at most max_entries entries;
  leadership   in this replica's current term, only the leader it knows may
               send what only a leader sends (APP, HEARTBEAT, SNAP, TIMEOUT_NOW,
               READ_INDEX_RESP): Raft elects at most one leader per term;
  acks         an append response of this replica's current term acknowledges
               no index beyond this replica's last one: within a term a
               leader's log only grows, and a follower acknowledges only what
               that leader sent (or what was committed, which the leader
               holds). Trusting a larger ack would let one lying follower
               count towards a quorum for entries only the leader has.

A refusal is a NodeError: INVALID_ARGUMENT for a message no correct peer can
send in any state, FAILED_PRECONDITION for one that contradicts what this
replica knows (a group it does not hold, a sender outside the group, a second
leader for the term). Messages name the partition and the field, never data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from consensus.types import LOCAL_MESSAGES, Message, MessageType
from node.cluster.state import SYSTEM_GROUP
from node.errors import FailedPrecondition, InvalidArgument, NodeError

MAX_TERM = (1 << 63) - 1
"""Largest term or index a message may carry: far beyond any real cluster's,
and every arithmetic step on it (+1 for an election) still fits a uint64."""

MAX_INDEX = MAX_TERM

MAX_TERM_AHEAD = 1 << 32
"""How far a message's term may be ahead of this replica's term."""

MAX_CONTEXT_BYTES = 64
"""Read contexts are 8 bytes, the transfer marker 16."""

DEFAULT_MAX_ENTRIES = 1 << 16

_INT_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)
_UNTERMED = frozenset({MessageType.PROP, MessageType.READ_INDEX})
_LEADER_ONLY = frozenset(
    {
        MessageType.APP,
        MessageType.HEARTBEAT,
        MessageType.SNAP,
        MessageType.TIMEOUT_NOW,
        MessageType.READ_INDEX_RESP,
    }
)


@dataclass(frozen=True, slots=True)
class GroupView:
    """What the guard needs to know about the local replica of a group."""

    term: int
    leader: int  # the leader known in `term`, 0 when none
    members: frozenset[int]  # empty: a blank replica that has no membership yet
    last_index: int = (1 << 63) - 1  # the replica's last log index (unknown: no limit)


@dataclass(frozen=True)
class GuardLimits:
    node_id: int
    peers: frozenset[int]  # every node of the cluster
    partitions: int
    max_entries: int = DEFAULT_MAX_ENTRIES


def check_envelope_numbers(envelope: ProtoMessage) -> NodeError | None:
    """Every integer field of a transport envelope (RaftBatch) stays below 2^63,
    whichever fields it grows: a number no correct node sends is refused here
    before anything reads it."""
    for name in _int_fields(envelope.DESCRIPTOR):
        if getattr(envelope, name) > MAX_INDEX:
            return InvalidArgument(
                f"{envelope.DESCRIPTOR.name}.{name} is out of range (above 2^63-1)"
            )
    return None


@functools.cache
def _int_fields(descriptor: Descriptor) -> tuple[str, ...]:
    return tuple(
        fd.name for fd in descriptor.fields
        if fd.cpp_type in _INT_TYPES and not fd.is_repeated
    )


def refusal(group: int, m: Message, why: str, precondition: bool = False) -> NodeError:
    text = f"partition {group}: {m.type.name} from node {m.frm} refused: {why}"
    return FailedPrecondition(text) if precondition else InvalidArgument(text)


def check_group(group: int, limits: GuardLimits, view: GroupView | None) -> None:
    if not 0 <= group < limits.partitions and group != SYSTEM_GROUP:
        raise InvalidArgument(f"partition {group}: does not exist (0..{limits.partitions - 1})")
    if view is None:
        raise FailedPrecondition(f"partition {group}: node {limits.node_id} holds no replica of it")


def check_message(
    group: int, m: Message, sender: int, limits: GuardLimits, view: GroupView | None
) -> None:
    """Raise a NodeError naming the first rule `m` breaks; return if it breaks none."""
    check_group(group, limits, view)
    assert view is not None
    t = m.type
    if t in LOCAL_MESSAGES:
        raise refusal(group, m, "a local message type never travels between nodes")
    if m.to != limits.node_id:
        raise refusal(group, m, f"addressed to node {m.to}, not to node {limits.node_id}")
    # A follower forwards a leadership transfer to its leader in the name of
    # the transferee (etcd's MsgTransferLeader): its `frm` is that member.
    if m.frm != sender and t != MessageType.TRANSFER_LEADER:
        raise refusal(group, m, f"claims to come from node {m.frm} on node {sender}'s stream")
    if view.members:
        for who in {sender, m.frm}:
            if who not in view.members:
                raise refusal(
                    group, m, f"node {who} is not a member of the group", precondition=True
                )
    elif m.frm not in limits.peers:
        raise refusal(group, m, f"node {m.frm} is not a member of the cluster")
    _check_numbers(group, m, view)
    _check_shape(group, m, limits)
    if t in _LEADER_ONLY and m.term == view.term and view.leader not in (0, sender):
        raise refusal(
            group, m,
            f"node {view.leader} leads term {m.term}; a term has at most one leader",
            precondition=True,
        )
    if t == MessageType.APP_RESP and m.term == view.term and m.index > view.last_index:
        raise refusal(
            group, m,
            f"acknowledges index {m.index}, beyond this replica's last index {view.last_index}",
            precondition=True,
        )


def _check_numbers(group: int, m: Message, view: GroupView) -> None:
    for name in ("term", "log_term", "index", "commit", "reject_hint"):
        if getattr(m, name) > MAX_INDEX:
            raise refusal(group, m, f"{name} is out of range (above 2^63-1)")
    if m.type in _UNTERMED:
        if m.term != 0:
            raise refusal(group, m, "a forwarded request carries no term")
    elif m.term == 0:
        raise refusal(group, m, "term must be at least 1")
    if m.term > view.term + MAX_TERM_AHEAD:
        raise refusal(
            group, m, f"term is more than 2^32 ahead of this replica's term {view.term}"
        )
    if m.log_term > m.term:
        raise refusal(group, m, "log_term is above the message's term")


def _check_shape(group: int, m: Message, limits: GuardLimits) -> None:
    t = m.type
    ents = m.entries
    if len(m.context) > MAX_CONTEXT_BYTES:
        raise refusal(group, m, f"context is {len(m.context)} bytes, at most {MAX_CONTEXT_BYTES}")
    if ents:
        if len(ents) > limits.max_entries:
            raise refusal(group, m, f"{len(ents)} entries, at most {limits.max_entries}")
        if t == MessageType.APP:
            prev = m.log_term
            for k, e in enumerate(ents, 1):
                if e.index != m.index + k:
                    raise refusal(group, m, "entries are not contiguous after index")
                if not prev <= e.term <= m.term:
                    raise refusal(
                        group, m, "entry terms must rise from log_term up to the message's term"
                    )
                prev = e.term
        elif t == MessageType.PROP:
            if any(e.index or e.term for e in ents):
                raise refusal(group, m, "proposed entries carry no index or term")
        else:
            raise refusal(group, m, "this message type carries no entries")
    elif t == MessageType.PROP:
        raise refusal(group, m, "a proposal without entries")
    snap = m.snapshot
    if t == MessageType.SNAP:
        if snap is None:
            raise refusal(group, m, "no snapshot")
        meta = snap.meta
        if meta.index > MAX_INDEX or meta.term > m.term:
            raise refusal(group, m, "snapshot index or term is out of range")
        if (meta.index == 0) != (meta.term == 0):
            raise refusal(group, m, "snapshot term must be 0 exactly at index 0")
        cs = meta.conf_state
        ids = {*cs.voters, *cs.learners, *cs.voters_outgoing, *cs.learners_next}
        strangers = sorted(ids - limits.peers)
        if strangers:
            raise refusal(group, m, f"snapshot membership names unknown node(s) {strangers[:5]}")
        if meta.index > 0 and not cs.voters:
            raise refusal(group, m, "snapshot membership has no voters")
    elif snap is not None:
        raise refusal(group, m, "this message type carries no snapshot")
