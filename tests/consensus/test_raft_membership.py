"""Membership: learners, joint consensus, one pending change, blank replicas."""

from __future__ import annotations

import pytest

from consensus.codec import decode_conf_change
from consensus.confchange import ConfChangeError
from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    MessageType,
    ProposalDropped,
    StateRole,
)
from tests.consensus.harness import Cluster

ADD_VOTER = ConfChangeType.ADD_VOTER
ADD_LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE_NODE


def _cc(
    *changes: tuple[ConfChangeType, int],
    transition: ConfChangeTransition = ConfChangeTransition.AUTO,
) -> ConfChange:
    return ConfChange(
        changes=tuple(ConfChangeSingle(t, n) for t, n in changes), transition=transition
    )


def test_learner_receives_log_but_does_not_count_for_quorum() -> None:
    c = Cluster([1, 2, 3], learners=[4])
    c.elect(1)
    c.isolate(2)
    c.isolate(3)
    c.propose(1, b"needs-a-voter")
    c.stabilize()
    # 1 + learner 4 is not a quorum of {1,2,3}.
    assert c[1].applied_data() == []
    assert c.node(4).raft.raft_log.last_index() == c.node(1).raft.raft_log.last_index()
    c.heal()
    c.tick_and_stabilize(2)
    assert c[4].applied_data() == [b"needs-a-voter"]


def test_learner_does_not_vote() -> None:
    c = Cluster([1, 2], learners=[3])
    c.isolate(2)
    c.node(1).campaign()
    c.stabilize()
    # Only 1 of the 2 voters: the learner's answer (if any) does not count.
    assert c.role(1) != StateRole.LEADER


def test_add_learner_then_promote_with_joint_consensus() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"before")
    c.stabilize()
    c.add_blank(4)
    c.node(1).propose_conf_change(_cc((ADD_LEARNER, 4)))
    c.stabilize()
    assert c[1].conf_state == ConfState(voters=(1, 2, 3), learners=(4,))
    assert c[4].applied_data() == [b"before"]
    assert c[4].conf_state.learners == (4,)
    # Promote 4 and remove 3 at once: two voter changes need joint consensus.
    c.node(1).propose_conf_change(_cc((ADD_VOTER, 4), (REMOVE, 3)))
    c.stabilize()
    # The leader left the joint configuration automatically.
    for i in (1, 2, 4):
        assert c[i].conf_state == ConfState(voters=(1, 2, 4)), i
    joint_seen = [
        e for e in c[1].applied if e.type == 1 and e.data
    ]  # the joint change and the automatic leave
    assert len(joint_seen) >= 3
    c.propose(1, b"after")
    c.stabilize()
    assert c[4].applied_data() == [b"before", b"after"]
    assert 3 not in c.node(1).raft.trk.progress


def test_joint_config_requires_both_majorities() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.add_blank(4)
    c.add_blank(5)
    c.node(1).propose_conf_change(
        _cc((ADD_VOTER, 4), (ADD_VOTER, 5), transition=ConfChangeTransition.JOINT_EXPLICIT)
    )
    c.stabilize()
    cs = c[1].conf_state
    assert cs.voters == (1, 2, 3, 4, 5) and cs.voters_outgoing == (1, 2, 3)
    assert not cs.auto_leave
    # 1, 4, 5 is a majority of the incoming {1..5} but not of outgoing {1,2,3}.
    c.isolate(2)
    c.isolate(3)
    c.propose(1, b"joint")
    c.stabilize()
    assert c[1].applied_data() == []
    c.heal()
    c.tick_and_stabilize(2)
    assert c[1].applied_data() == [b"joint"]
    # Explicit leave.
    c.node(1).propose_conf_change(ConfChange())
    c.stabilize()
    assert c[1].conf_state == ConfState(voters=(1, 2, 3, 4, 5))


def test_only_one_pending_conf_change() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.stabilize()
    c.node(1).propose_conf_change(_cc((ADD_LEARNER, 4)))
    with pytest.raises(ProposalDropped):
        c.node(1).propose_conf_change(_cc((ADD_LEARNER, 5)))
    c.add_blank(4)
    c.stabilize()
    c.node(1).propose_conf_change(_cc((ADD_LEARNER, 5)))  # fine once applied
    c.add_blank(5)
    c.stabilize()
    assert c[1].conf_state.learners == (4, 5)


def test_leave_joint_refused_outside_joint_and_change_refused_inside() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.stabilize()
    with pytest.raises(ProposalDropped):
        c.node(1).propose_conf_change(ConfChange())
    c.add_blank(4)
    c.node(1).propose_conf_change(
        _cc((ADD_VOTER, 4), transition=ConfChangeTransition.JOINT_EXPLICIT)
    )
    c.stabilize()
    with pytest.raises(ProposalDropped):
        c.node(1).propose_conf_change(_cc((ADD_LEARNER, 5)))


def test_removed_leader_steps_down_and_others_elect() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose_conf_change(_cc((REMOVE, 1)))
    c.stabilize()
    assert c.role(1) == StateRole.FOLLOWER
    assert c[2].conf_state.voters == (2, 3)
    c.tick_and_stabilize(40, node_ids=[2, 3])
    leader = c.leader()
    assert leader in (2, 3)
    c.propose(leader, b"without 1")
    c.stabilize()
    assert c[2].applied_data() == [b"without 1"]
    # The removed node never campaigns again.
    c.tick_and_stabilize(40, node_ids=[1])
    assert c.role(1) == StateRole.FOLLOWER


def test_blank_replica_learns_membership_from_compacted_leader_snapshot() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(5):
        c.propose(1, b"k%d" % k)
    c.stabilize()
    c.node(1).propose_conf_change(_cc((ADD_LEARNER, 4)))
    c.stabilize()
    c.snapshot_and_compact(1)
    c.add_blank(4)
    c.tick_and_stabilize(3)
    assert c[4].storage.snapshot().meta.conf_state.learners == (4,)
    assert c[4].applied_data() == c[1].applied_data()


def test_blank_replica_without_compaction_gets_bootstrap_membership() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.add_blank(4)
    c.node(1).propose_conf_change(_cc((ADD_VOTER, 4)))
    c.record_readies = True
    c.stabilize()
    # 4 never accepted entries before it knew the membership.
    snaps = [rd.snapshot for rd in c[4].readies if rd.snapshot is not None]
    assert snaps and snaps[0].meta.index == 0
    assert snaps[0].meta.conf_state.voters == (1, 2, 3)
    assert c[4].conf_state.voters == (1, 2, 3, 4)
    # It is a full voter now: it can win an election.
    c.node(1).transfer_leadership(4)
    c.stabilize()
    assert c.leaders() == [4]


def test_blank_replica_rejects_appends() -> None:
    c = Cluster([1, 2, 3])
    st = c.add_blank(9)
    from consensus.types import Entry, Message

    st.node.step(Message(MessageType.APP, frm=1, to=9, term=1, index=0, entries=[Entry(1, 1)]))
    rd = st.node.ready()
    (resp,) = rd.messages
    assert resp.reject and resp.index == 0
    assert rd.entries == []


def test_invalid_conf_changes_raise() -> None:
    c = Cluster([1])
    n = c.node(1)
    with pytest.raises(ConfChangeError):
        n.apply_conf_change(_cc((REMOVE, 1)))  # removes all voters
    with pytest.raises(ConfChangeError):
        n.apply_conf_change(ConfChange())  # not joint
    n.apply_conf_change(_cc((ADD_VOTER, 2), transition=ConfChangeTransition.JOINT_EXPLICIT))
    with pytest.raises(ConfChangeError):
        n.apply_conf_change(_cc((ADD_VOTER, 3)))  # already joint
    cs = n.apply_conf_change(ConfChange())
    assert cs == ConfState(voters=(1, 2))


def test_demote_voter_to_learner_in_joint_config() -> None:
    c = Cluster([1, 2, 3])
    n = c.node(1)
    cs = n.apply_conf_change(_cc((ADD_LEARNER, 3), transition=ConfChangeTransition.JOINT_EXPLICIT))
    assert cs.voters == (1, 2) and cs.voters_outgoing == (1, 2, 3)
    assert cs.learners_next == (3,) and cs.learners == ()
    cs = n.apply_conf_change(ConfChange())
    assert cs == ConfState(voters=(1, 2), learners=(3,))


def _two_changes_past_a_snapshot() -> tuple[Cluster, int]:
    """Voters {1,2,3}; node 3 snapshots; then 4 joins as a voter and 1 is
    removed: {2,3,4}, both changes after node 3's snapshot."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"before")
    c.stabilize()
    snap = c.snapshot_and_compact(3)
    c.add_blank(4)
    c.node(1).propose_conf_change(_cc((ADD_VOTER, 4)))
    c.stabilize()
    c.node(1).propose_conf_change(_cc((REMOVE, 1)))
    c.stabilize()
    assert c[3].conf_state == ConfState(voters=(2, 3, 4))
    assert c[3].storage.snapshot().meta.index == snap
    assert c[3].storage.initial_state()[1] == ConfState(voters=(1, 2, 3))
    return c, c.node(3).raft.raft_log.applied


def test_restart_with_applied_past_snapshot_replays_conf_changes() -> None:
    """The stored ConfState is the snapshot's; the two changes after it were
    applied (applied index past them), so they are not handed out again and
    must be replayed from the log. Coming back with {1,2,3} instead would let
    3 win an election with 1's vote alone while {2,4} elect someone else."""
    c, applied = _two_changes_past_a_snapshot()
    st = c.restart(3, applied=applied)
    assert st.node.status().conf_state == ConfState(voters=(2, 3, 4))
    assert st.node.raft.raft_log.applied == applied
    c.stabilize()
    assert st.applied == []  # nothing applied twice
    # The restarted node counts the right voters: 1 (removed) cannot help it win.
    c.isolate(2)
    c.isolate(4)
    st.node.campaign()
    c.stabilize()
    assert c.role(3) != StateRole.LEADER


def test_restart_without_applied_reapplies_conf_changes_from_snapshot() -> None:
    """applied=0 (the default): every entry after the snapshot, the conf
    changes included, is handed out again and applied by the application."""
    c, _ = _two_changes_past_a_snapshot()
    st = c.restart(3)
    assert st.node.status().conf_state == ConfState(voters=(1, 2, 3))
    c.stabilize()
    assert st.conf_state == ConfState(voters=(2, 3, 4))
    assert st.node.status().conf_state == ConfState(voters=(2, 3, 4))


def test_restart_raises_commit_to_applied_after_losing_an_unsynced_commit() -> None:
    """A commit-only hard state is written without sync: after a crash the
    application may have applied past the stored commit index."""
    c, applied = _two_changes_past_a_snapshot()
    st3 = c[3].storage
    hs = st3.hard_state
    st3.set_hard_state(type(hs)(term=hs.term, vote=hs.vote, commit=applied - 2))
    st = c.restart(3, applied=applied)
    assert st.node.raft.raft_log.committed == applied
    assert st.node.status().conf_state == ConfState(voters=(2, 3, 4))


def _is_leave(e: Entry) -> bool:
    return e.type == EntryType.CONF_CHANGE and decode_conf_change(e.data).leave_joint()


def _joint_with_learner_4(c: Cluster) -> None:
    c.elect(1)
    c.add_blank(4)
    c.node(1).propose_conf_change(_cc((ADD_LEARNER, 4)))
    c.stabilize()


def test_auto_leave_dropped_during_a_transfer_is_retried_by_the_leader() -> None:
    """The joint change is applied while a leadership transfer is pending, so
    the automatic leave is dropped; the transfer then fails (its target is
    unreachable) and nothing else is ever applied. The leader must still
    leave the joint configuration, on its own."""
    c = Cluster([1, 2, 3])
    _joint_with_learner_4(c)
    c.isolate(2)
    c.node(1).propose_conf_change(_cc((ADD_VOTER, 4), (REMOVE, 3)))
    c.node(1).transfer_leadership(2)  # 2 lags: the leader waits for it to catch up
    assert c.node(1).raft.lead_transferee == 2
    c.stabilize()
    cs = c[1].conf_state
    assert cs.voters_outgoing == (1, 2, 3) and cs.auto_leave  # joint, leave was dropped
    # The transfer times out after an election timeout; the group stays quiet.
    for _ in range(3 * 10):
        c.tick([1, 3, 4])
        c.stabilize()
    assert c.role(1) == StateRole.LEADER
    assert c.node(1).raft.lead_transferee == 0
    for i in (1, 4):
        assert c[i].conf_state == ConfState(voters=(1, 2, 4)), i


def test_auto_leave_lost_with_the_leader_is_proposed_by_the_next_one() -> None:
    c = Cluster([1, 2, 3])
    _joint_with_learner_4(c)
    c.node(1).propose_conf_change(_cc((ADD_VOTER, 4), (REMOVE, 3)))
    # Deliver until everyone applied the joint config; the leader's leave
    # proposal never leaves it.
    for _ in range(20):
        c.process_all()
        leave = c.take(lambda m: m.frm == 1 and any(_is_leave(e) for e in m.entries))
        c.deliver()
        if leave:
            break
    assert leave, "the leader never proposed the automatic leave"
    c.isolate(1)
    c.stabilize()
    assert c[2].conf_state.voters_outgoing == (1, 2, 3)
    c.tick_and_stabilize(40, node_ids=[2, 3, 4])
    assert [i for i in c.leaders() if i != 1]
    for i in (2, 4):
        assert c[i].conf_state == ConfState(voters=(1, 2, 4)), i


def test_restart_with_applied_below_the_snapshot_is_refused() -> None:
    """A state machine older than the stored snapshot (an install that never
    finished) must not be silently resumed past what it holds."""
    c, _ = _two_changes_past_a_snapshot()
    snap = c[3].storage.snapshot().meta.index
    with pytest.raises(ConsensusError, match="below the stored snapshot"):
        c.restart(3, applied=snap - 1)
