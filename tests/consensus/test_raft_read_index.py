"""ReadIndex: linearizable reads confirmed by a heartbeat round, no log write."""

from __future__ import annotations

import pytest

from consensus.types import ConsensusError, MessageType, ProposalDropped, ReadState
from tests.consensus.harness import Cluster


def test_read_index_on_leader_returns_commit_at_request_time() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    commit = c.commit(1)
    last_before = c.node(1).raft.raft_log.last_index()
    c.node(1).read_index(b"ctx-1")
    # A write proposed after the read began does not change its index.
    c.propose(1, b"b")
    c.stabilize()
    assert c[1].read_states == [ReadState(index=commit, context=b"ctx-1")]
    # No log write for the read itself.
    assert c.node(1).raft.raft_log.last_index() == last_before + 1  # only b"b"


def test_read_index_needs_a_quorum_of_heartbeat_acks() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(2)
    c.isolate(3)
    c.node(1).read_index(b"r")
    c.stabilize()
    assert c[1].read_states == []  # not confirmed: might be a deposed leader
    c.heal()
    c.tick_and_stabilize(1)  # the next heartbeat round carries the context again
    assert [rs.context for rs in c[1].read_states] == [b"r"]


def test_read_index_heartbeat_carries_context_and_no_entries() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).read_index(b"ctx")
    c.process(1)
    hbs = [m for m in c.queue if m.type == MessageType.HEARTBEAT]
    assert sorted(m.to for m in hbs) == [2, 3]
    assert all(m.context == b"ctx" for m in hbs)
    assert not any(m.type == MessageType.APP for m in c.queue)


def test_read_index_from_follower_is_forwarded_and_answered() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    commit = c.commit(1)
    c.node(3).read_index(b"f-read")
    c.stabilize()
    assert c[3].read_states == [ReadState(index=commit, context=b"f-read")]
    assert c[1].read_states == []


def test_read_index_deferred_until_leader_commits_in_its_term() -> None:
    c = Cluster([1, 2, 3], check_quorum=False)  # no lease: 2 may take over at once
    c.elect(1)
    c.propose(1, b"old")
    c.stabilize()
    # Node 2 wins a new term but its empty entry is not yet committed.
    c.isolate(1)
    c.elect_without_replicating(2)
    c.heal()
    c.isolate(1)  # keep 1 away; 3 will ack
    assert not c.node(2).raft.committed_entry_in_current_term()
    c.node(2).read_index(b"early")
    c.process_all()
    # No heartbeat round yet for the read: it waits.
    assert not any(m.type == MessageType.HEARTBEAT and m.context for m in c.queue)
    assert c[2].read_states == []
    c.take()  # the empty entry's appends were lost; the heartbeat recovers
    c.tick_and_stabilize(2)
    assert c.node(2).raft.committed_entry_in_current_term()
    (rs,) = c[2].read_states
    assert rs.context == b"early"
    assert rs.index == c.commit(2)
    assert c.node(2).raft.raft_log.term(rs.index) == c.term(2)


def test_read_index_on_single_node_is_immediate() -> None:
    c = Cluster([1])
    c.elect(1)
    c.stabilize()
    c.node(1).read_index(b"solo")
    c.stabilize()
    assert c[1].read_states == [ReadState(index=c.commit(1), context=b"solo")]


def test_read_index_without_leader_is_dropped() -> None:
    c = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped):
        c.node(2).read_index(b"x")
    with pytest.raises(ConsensusError):
        c.node(2).read_index(b"")


def test_later_read_confirms_earlier_ones() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).read_index(b"r1")
    c.node(1).read_index(b"r2")
    c.process(1)
    # Lose the first round; the second round's acks release both reads.
    first = [m for m in c.queue if m.context == b"r1"]
    c.queue = [m for m in c.queue if m.context != b"r1"]
    assert first
    c.stabilize()
    assert [rs.context for rs in c[1].read_states] == [b"r1", b"r2"]
