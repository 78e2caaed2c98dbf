"""Leader transfer: TRANSFER_LEADER, catch-up, TIMEOUT_NOW, abort."""

from __future__ import annotations

import pytest

from consensus.types import MessageType, ProposalDropped, StateRole
from tests.consensus.harness import Cluster


def test_transfer_to_up_to_date_follower() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    term = c.term(1)
    c.node(1).transfer_leadership(2)
    c.process(1)
    assert [m.type for m in c.queue if m.to == 2] == [MessageType.TIMEOUT_NOW]
    c.stabilize()
    assert c.leaders() == [2]
    assert c.term(2) == term + 1
    c.propose(2, b"b")
    c.stabilize()
    assert c[3].applied_data() == [b"a", b"b"]


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    for k in range(5):
        c.propose(1, b"x%d" % k)
    c.stabilize()
    c.heal()
    assert c.node(3).raft.raft_log.last_index() < c.node(1).raft.raft_log.last_index()
    c.node(1).transfer_leadership(3)
    c.process(1)
    to3 = [m.type for m in c.queue if m.to == 3]
    assert MessageType.TIMEOUT_NOW not in to3  # not before it has the log
    c.stabilize()
    assert c.leaders() == [3]
    assert c[3].applied_data()[:5] == [b"x%d" % k for k in range(5)]


def test_proposals_dropped_while_transferring() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.node(1).transfer_leadership(3)
    c.stabilize()
    assert c.node(1).raft.lead_transferee == 3
    with pytest.raises(ProposalDropped):
        c.propose(1, b"during transfer")


def test_transfer_aborted_after_election_timeout() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.node(1).transfer_leadership(3)
    c.stabilize()
    c.tick_and_stabilize(c.node(1).raft.election_timeout, node_ids=[1])
    assert c.node(1).raft.lead_transferee == 0
    assert c.role(1) == StateRole.LEADER
    c.propose(1, b"after abort")
    c.stabilize()
    assert c[2].applied_data() == [b"after abort"]


def test_transfer_requested_on_follower_is_forwarded() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(2).transfer_leadership(3)
    c.stabilize()
    assert c.leaders() == [3]


def test_transfer_to_self_or_learner_is_ignored() -> None:
    c = Cluster([1, 2], learners=[3])
    c.elect(1)
    c.node(1).transfer_leadership(1)
    c.node(1).transfer_leadership(3)
    c.stabilize()
    assert c.leaders() == [1]
    assert c.node(1).raft.lead_transferee == 0


def test_transfer_election_bypasses_lease() -> None:
    # Followers in lease ignore vote requests, but not a transfer election.
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    c.tick_and_stabilize(2)
    c.node(1).transfer_leadership(2)
    c.stabilize()
    assert c.leaders() == [2]
