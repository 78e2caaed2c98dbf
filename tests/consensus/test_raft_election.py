"""Leader election: randomized timeouts, vote rules, PreVote, CheckQuorum."""

from __future__ import annotations

import random

from consensus.memory_storage import MemoryStorage
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    StateRole,
)
from tests.consensus.harness import Cluster


def _node(
    node_id: int = 1,
    voters: tuple[int, ...] = (1, 2, 3),
    entries: list[tuple[int, int]] = (),  # type: ignore[assignment]
    hs: HardState | None = None,
    **kw: object,
) -> RawNode:
    st = MemoryStorage(conf_state=ConfState(voters=voters))
    st.append([Entry(i, t) for i, t in entries])
    if hs is not None:
        st.set_hard_state(hs)
    return RawNode(Config(id=node_id, storage=st, rng=random.Random(node_id), **kw))  # type: ignore[arg-type]


def _vote_responses(n: RawNode) -> list[Message]:
    rd = n.ready()
    n.advance(rd)
    return [m for m in rd.messages if m.type in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP)]


def test_single_node_elects_itself_on_timeout() -> None:
    c = Cluster([1])
    c.tick_and_stabilize(25)
    assert c.leaders() == [1]
    assert c.term(1) == 1


def test_three_nodes_elect_exactly_one_leader_by_ticking() -> None:
    c = Cluster([1, 2, 3], seed=3)
    c.tick_and_stabilize(40)
    leader = c.leader()
    assert {c.term(i) for i in (1, 2, 3)} == {c.term(leader)}
    for i in (1, 2, 3):
        assert c.node(i).status().leader == leader


def test_randomized_election_timeout_is_in_range_and_varies() -> None:
    n = _node(election_tick=10)
    seen = set()
    for _ in range(200):
        n.raft.reset_randomized_election_timeout()
        t = n.raft.randomized_election_timeout
        assert 10 <= t <= 19
        seen.add(t)
    assert len(seen) > 5


def test_election_timeout_is_deterministic_for_a_seed() -> None:
    def first_campaign_tick(seed: int) -> int:
        st = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
        n = RawNode(Config(id=1, storage=st, rng=random.Random(seed)))
        for t in range(1, 100):
            n.tick()
            if n.raft.state != StateRole.FOLLOWER:
                return t
        raise AssertionError("never campaigned")

    assert first_campaign_tick(42) == first_campaign_tick(42)
    assert 10 <= first_campaign_tick(42) <= 19


def test_vote_granted_only_to_up_to_date_log() -> None:
    # Voter's log ends at (index 2, term 2).
    cases = [
        (2, 2, True),  # same
        (3, 2, True),  # longer, same last term
        (1, 3, True),  # shorter but newer last term
        (1, 2, False),  # shorter, same last term
        (5, 1, False),  # longer but older last term
    ]
    for last_index, last_term, granted in cases:
        n = _node(entries=[(1, 1), (2, 2)], hs=HardState(term=2), pre_vote=False)
        n.step(Message(MessageType.VOTE, frm=2, to=1, term=3, index=last_index, log_term=last_term))
        (resp,) = _vote_responses(n)
        assert resp.reject is (not granted), (last_index, last_term)
        assert n.raft.term == 3
        assert n.raft.vote == (2 if granted else 0)


def test_one_vote_per_term() -> None:
    n = _node(pre_vote=False)
    n.step(Message(MessageType.VOTE, frm=2, to=1, term=1))
    (r1,) = _vote_responses(n)
    assert not r1.reject and n.raft.vote == 2
    n.step(Message(MessageType.VOTE, frm=3, to=1, term=1))
    (r2,) = _vote_responses(n)
    assert r2.reject and n.raft.vote == 2
    # A retransmitted request from the same candidate is granted again.
    n.step(Message(MessageType.VOTE, frm=2, to=1, term=1))
    (r3,) = _vote_responses(n)
    assert not r3.reject


def test_planted_vote_twice_bug_grants_a_second_vote() -> None:
    n = _node(pre_vote=False, test_only_bug="vote_twice")
    n.step(Message(MessageType.VOTE, frm=2, to=1, term=1))
    n.step(Message(MessageType.VOTE, frm=3, to=1, term=1))
    r1, r2 = _vote_responses(n)
    assert not r1.reject and not r2.reject
    assert n.raft.vote == 3


def test_vote_is_in_the_hard_state_of_the_ready_carrying_the_response() -> None:
    st = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    n = RawNode(Config(id=1, storage=st, rng=random.Random(1), pre_vote=False))
    n.step(Message(MessageType.VOTE, frm=2, to=1, term=5))
    rd = n.ready()
    assert [m.type for m in rd.messages] == [MessageType.VOTE_RESP]
    assert rd.hard_state == HardState(term=5, vote=2, commit=0)
    assert rd.must_sync
    # After a restart from what was persisted, the vote still holds.
    st.set_hard_state(rd.hard_state)
    n.advance(rd)
    n2 = RawNode(Config(id=1, storage=st, rng=random.Random(1), pre_vote=False))
    n2.step(Message(MessageType.VOTE, frm=3, to=1, term=5))
    (resp,) = _vote_responses(n2)
    assert resp.reject


def test_candidate_persists_its_own_vote_before_requesting_votes() -> None:
    n = _node(pre_vote=False)
    n.campaign()
    rd = n.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert sorted(m.to for m in rd.messages if m.type == MessageType.VOTE) == [2, 3]


def test_stale_leader_steps_down_on_higher_term() -> None:
    c = Cluster([1, 2, 3], check_quorum=False)
    c.elect(1)
    c.isolate(1)
    c.tick_and_stabilize(40, node_ids=[2, 3])
    new_leader = c.leaders()
    assert 1 in new_leader and len(new_leader) == 2
    assert c.role(1) == StateRole.LEADER  # still thinks it leads, in term 1
    assert c.term(1) < max(c.term(2), c.term(3))
    c.heal()
    c.propose(1, b"stale")  # its appends carry the old term
    c.stabilize()
    assert c.role(1) == StateRole.FOLLOWER
    assert c.term(1) == c.term(2) == c.term(3)
    assert len(c.leaders()) == 1
    # The stale proposal was never committed anywhere.
    for i in (1, 2, 3):
        assert b"stale" not in c[i].applied_data()


def test_prevote_keeps_a_rejoining_node_from_disrupting_the_leader() -> None:
    c = Cluster([1, 2, 3], seed=5)
    c.elect(1)
    term = c.term(1)
    c.isolate(3)
    # Node 3 times out over and over while partitioned; with PreVote its term
    # never rises because it never wins a pre-election.
    c.tick_and_stabilize(100, node_ids=[3])
    assert c.term(3) == term
    c.heal()
    c.tick_and_stabilize(30)
    assert c.leaders() == [1]
    assert {c.term(i) for i in (1, 2, 3)} == {term}


def test_without_prevote_a_rejoining_node_raises_the_term() -> None:
    # The contrast case: a partitioned node's term rises with each timeout and
    # its messages depose the leader when it rejoins.
    c = Cluster([1, 2, 3], seed=5, pre_vote=False, check_quorum=False)
    c.elect(1)
    term = c.term(1)
    c.isolate(3)
    c.tick_and_stabilize(100, node_ids=[3])
    assert c.term(3) > term
    c.heal()
    c.tick_and_stabilize(30)
    assert c.term(1) > term


def test_followers_in_lease_ignore_higher_term_vote_requests() -> None:
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    term = c.term(1)
    # A disruptive vote request with a higher term, while 2 heard from the
    # leader within the election timeout: ignored, no term bump.
    c.node(2).step(Message(MessageType.VOTE, frm=3, to=2, term=term + 5, index=100, log_term=99))
    c.stabilize()
    assert c.term(2) == term
    assert c.leaders() == [1]


def test_check_quorum_leader_steps_down_without_quorum() -> None:
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    c.isolate(1)
    c.tick_and_stabilize(c.node(1).raft.election_timeout * 2 + 1, node_ids=[1])
    assert c.role(1) == StateRole.FOLLOWER
    # It did not bump its term (no one to vote for it, and pre-vote).
    c.heal()
    c.tick_and_stabilize(40)
    assert len(c.leaders()) == 1


def test_check_quorum_leader_stays_with_quorum() -> None:
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    c.isolate(3)
    c.tick_and_stabilize(60)
    assert c.leaders() == [1]


def test_prevote_rejected_by_more_up_to_date_log() -> None:
    n = _node(entries=[(1, 1), (2, 2)], hs=HardState(term=2))
    n.step(Message(MessageType.PRE_VOTE, frm=2, to=1, term=3, index=1, log_term=1))
    (resp,) = _vote_responses(n)
    assert resp.type == MessageType.PRE_VOTE_RESP and resp.reject
    assert n.raft.term == 2  # a pre-vote never changes the voter's term
    n.step(Message(MessageType.PRE_VOTE, frm=2, to=1, term=3, index=2, log_term=2))
    (resp,) = _vote_responses(n)
    assert not resp.reject and resp.term == 3
    assert n.raft.term == 2 and n.raft.vote == 0


def test_candidate_loses_and_returns_to_follower() -> None:
    c = Cluster([1, 2, 3], pre_vote=False)
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    # Node 3's log is then made stale by isolating it while others progress.
    c.isolate(3)
    c.propose(1, b"b")
    c.stabilize()
    c.heal()
    c.node(3).campaign()
    c.stabilize()
    # 1 and 2 reject (3's log is behind); 3 ends up a follower, 1 leads again
    # (the higher term deposed it, then its log won the next election).
    assert c.role(3) != StateRole.LEADER
    c.tick_and_stabilize(40)
    assert c.leader() in (1, 2)


def test_learner_never_campaigns() -> None:
    c = Cluster([1], learners=[2])
    c.tick_and_stabilize(60, node_ids=[2])
    assert c.role(2) == StateRole.FOLLOWER
    assert c.term(2) == 0
