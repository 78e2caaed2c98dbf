"""Log replication: figure 7 and figure 8, backtracking, batching, flow
control, forwarding, the persistence contract and restart."""

from __future__ import annotations

import random

import pytest

from consensus.memory_storage import MemoryStorage
from consensus.progress import ProgressState
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    Ready,
    StateRole,
)
from tests.consensus.harness import Cluster


def _storage(voters: tuple[int, ...], terms: list[int], term: int) -> MemoryStorage:
    st = MemoryStorage(conf_state=ConfState(voters=voters))
    st.append([Entry(i + 1, t, b"e%d" % (i + 1)) for i, t in enumerate(terms)])
    st.set_hard_state(HardState(term=term))
    return st


def _cluster_from_logs(logs: dict[int, list[int]], terms: dict[int, int], **kw: object) -> Cluster:
    ids = tuple(sorted(logs))
    c = Cluster([], **kw)  # type: ignore[arg-type]
    c.ids = list(ids)
    for i in ids:
        c.start(i, _storage(ids, logs[i], terms[i]))
    return c


# Raft paper, figure 7: the leader's log (term 8) and followers a-f.
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("name", sorted(FIG7_FOLLOWERS))
def test_figure7_leader_forces_follower_log_to_match(name: str) -> None:
    follower = FIG7_FOLLOWERS[name]
    # Node 3 has an empty log so that it votes for the leader.
    c = _cluster_from_logs(
        {1: FIG7_LEADER, 2: follower, 3: []},
        {1: 8, 2: max(follower), 3: 0},
    )
    c.elect(1)
    c.stabilize()
    leader_log = c.log_terms(1)
    assert [t for _, t in leader_log[:10]] == FIG7_LEADER
    assert leader_log[-1][1] == c.term(1)  # the leader's empty entry of its term
    assert c.log_terms(2) == leader_log
    assert c.log_terms(3) == leader_log
    assert c.commit(2) == c.commit(1) == len(leader_log)
    # The follower's storage holds the leader's log too (conflicts truncated).
    st = c[2].storage
    assert [st.term(i) for i in range(1, st.last_index() + 1)] == [t for _, t in leader_log]


def test_backtracking_skips_a_term_per_round_trip() -> None:
    # Follower f of figure 7: 11 entries, 8 of which conflict. Walking back one
    # index per rejection would need ~8 probes; skipping by term needs few.
    c = _cluster_from_logs({1: FIG7_LEADER, 2: FIG7_FOLLOWERS["f"], 3: []}, {1: 8, 2: 3, 3: 0})
    c.isolate(3)  # only node 2 replies, so we can count its rejections
    c.heal()
    c.elect(1)
    rejects = 0
    for _ in range(50):
        c.process_all()
        for m in c.queue:
            if m.type == MessageType.APP_RESP and m.frm == 2 and m.reject:
                rejects += 1
        if not c.queue:
            break
        c.deliver()
    assert c.log_terms(2) == c.log_terms(1)
    assert rejects <= 3


def test_figure8_prior_term_entry_not_committed_by_counting() -> None:
    # S1 leads term 4 with a term-2 entry at index 2 that S2 and S3 also
    # store: a majority of 5, yet it must not be committed by counting.
    logs = {1: [1, 2], 2: [1, 2], 3: [1, 2], 4: [1], 5: [1, 3]}
    terms = {1: 3, 2: 2, 3: 2, 4: 1, 5: 3}
    c = _cluster_from_logs(logs, terms)
    c.isolate(5)
    c.elect_without_replicating(1)
    _ack_index_2_only(c)
    assert c.commit(1) == 0  # unchanged: index 2 is of term 2, not 4
    # Once an entry of term 4 reaches a majority, everything below commits.
    c.heal()
    c.tick_and_stabilize(2)  # heartbeats make the leader resend what was lost
    assert c.commit(1) == 3
    assert all(c.log_terms(i) == c.log_terms(1) for i in (1, 2, 3, 4, 5))


def test_figure8_planted_bug_commits_prior_term_entry() -> None:
    logs = {1: [1, 2], 2: [1, 2], 3: [1, 2], 4: [1], 5: [1, 3]}
    terms = {1: 3, 2: 2, 3: 2, 4: 1, 5: 3}
    c = _cluster_from_logs(logs, terms, test_only_bug="commit_prior_term_by_count")
    c.isolate(5)
    c.elect_without_replicating(1)
    _ack_index_2_only(c)
    assert c.commit(1) == 2  # wrong: S5 (term 3 at index 2) can still be elected


def _ack_index_2_only(c: Cluster) -> None:
    """S1 was just elected (term 4, log 1..3). Withhold its appends and make
    S2 and S3 acknowledge index 2 only, as after appends size-limited to one
    entry each."""
    assert c.term(1) == 4 and c.log_terms(1)[-1] == (3, 4)
    leader = c.node(1)
    for f in (2, 3):
        leader.step(Message(MessageType.APP_RESP, frm=f, to=1, term=4, index=2))
    c.process_all()
    c.take()


def test_many_proposals_travel_in_one_append_per_follower() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(100):
        c.propose(1, b"cmd%d" % k)
    c.process(1)
    apps = [m for m in c.queue if m.type == MessageType.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(len(m.entries) == 100 for m in apps)
    c.stabilize()
    for i in (1, 2, 3):
        assert c[i].applied_data() == [b"cmd%d" % k for k in range(100)]


def test_append_size_limited_by_max_size_per_msg() -> None:
    c = Cluster([1, 2, 3], max_size_per_msg=1000)
    c.elect(1)
    for _ in range(50):
        c.propose(1, b"x" * 100)
    c.stabilize()
    assert all(len(c[i].applied_data()) == 50 for i in (1, 2, 3))
    c.propose(1, b"y" * 5000)  # larger than the limit: still sent, alone
    c.stabilize()
    assert all(c[i].applied_data()[-1] == b"y" * 5000 for i in (1, 2, 3))


def test_flow_control_bounds_unacked_appends_by_count() -> None:
    c = Cluster([1, 2, 3], max_inflight_msgs=3, max_size_per_msg=100)
    c.elect(1)
    # 2 is reachable but never answers: its appends pile up unacknowledged.
    c.filters.append(lambda m: m.frm == 2)
    sent_to_2 = 0
    for _k in range(20):
        c.propose(1, b"z" * 100)  # one entry per APP (size limit)
        c.process_all()
        sent_to_2 += sum(
            1 for m in c.queue if m.type == MessageType.APP and m.to == 2 and m.entries
        )
        c.deliver()
        c.process_all()
    pr = c.node(1).raft.trk.progress[2]
    assert pr.state == ProgressState.REPLICATE
    assert sent_to_2 == 3
    assert pr.inflights.count() == 3 and pr.is_paused()
    # Node 3 keeps up, so proposals still commit.
    c.stabilize()
    assert len(c[3].applied_data()) == 20
    # When 2 answers again (heartbeat round), it catches up.
    c.heal()
    c.tick_and_stabilize(3)
    assert len(c[2].applied_data()) == 20


def test_flow_control_bounds_inflight_bytes() -> None:
    c = Cluster([1, 2, 3], max_inflight_msgs=100, max_inflight_bytes=1000, max_size_per_msg=300)
    c.elect(1)
    c.filters.append(lambda m: m.frm == 2)
    sent = 0
    for _ in range(20):
        c.propose(1, b"b" * 300)
        c.process_all()
        sent += sum(len(m.entries) for m in c.queue if m.type == MessageType.APP and m.to == 2)
        c.deliver()
        c.process_all()
    pr = c.node(1).raft.trk.progress[2]
    assert pr.is_paused()
    # 4 x 300 bytes crosses the 1000-byte window; nothing more until acks.
    assert sent == 4
    assert pr.inflights.total_bytes == 1200


def test_proposal_forwarded_from_follower_to_leader() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(3, b"via-follower")
    c.stabilize()
    for i in (1, 2, 3):
        assert c[i].applied_data() == [b"via-follower"]


def test_proposal_dropped_without_leader_or_when_forwarding_disabled() -> None:
    c = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped):
        c.propose(2, b"nobody leads")
    c2 = Cluster([1, 2, 3], disable_proposal_forwarding=True)
    c2.elect(1)
    with pytest.raises(ProposalDropped):
        c2.propose(2, b"no forwarding")
    c2.propose(1, b"at the leader")
    c2.stabilize()
    assert c2[2].applied_data() == [b"at the leader"]


def test_proposal_dropped_when_uncommitted_budget_exhausted() -> None:
    c = Cluster([1, 2, 3], max_uncommitted_entries_size=1000)
    c.elect(1)
    c.isolate(1)
    c.propose(1, b"a" * 600)
    c.propose(1, b"b" * 300)
    with pytest.raises(ProposalDropped):
        c.propose(1, b"c" * 200)
    c.heal()
    c.stabilize()
    c.propose(1, b"c" * 200)  # budget released once committed
    c.stabilize()
    assert len(c[2].applied_data()) == 3


def test_ready_entries_persisted_before_messages_and_commit_only_persisted() -> None:
    c = Cluster([1, 2, 3], record_readies=True)
    c.elect(1)
    c.propose(1, b"p")
    c.stabilize()
    for i in (1, 2, 3):
        persisted = 0
        for rd in c[i].readies:
            # Committed entries handed out must already be persisted (in a
            # previous Ready): applying never outruns the local disk.
            for e in rd.committed_entries:
                assert e.index <= persisted
            if rd.entries:
                persisted = rd.entries[-1].index
            # A Ready that acknowledges entries carries them itself.
            for m in rd.messages:
                if m.type == MessageType.APP_RESP and not m.reject:
                    assert m.index <= max(persisted, c[i].storage.last_index())


def test_follower_appends_not_acked_before_its_ready() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"q")
    c.process(1)
    c.deliver()  # APP reaches 2 and 3
    n2 = c.node(2)
    rd = n2.ready()
    acks = [m for m in rd.messages if m.type == MessageType.APP_RESP]
    assert acks and [e.data for e in rd.entries] == [b"q"]
    assert rd.must_sync


def test_restart_from_storage_resumes_term_vote_log_and_commit() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(5):
        c.propose(1, b"r%d" % k)
    c.stabilize()
    before = (c.term(2), c.node(2).raft.vote, c.log_terms(2), c.commit(2))
    st = c.restart(2)
    assert (c.term(2), st.node.raft.vote, c.log_terms(2), c.commit(2)) == before
    # The restarted node re-applies committed entries from its storage.
    c.stabilize()
    assert st.applied_data() == [b"r%d" % k for k in range(5)]
    c.propose(1, b"after")
    c.stabilize()
    assert st.applied_data()[-1] == b"after"


def test_restart_with_applied_skips_reapplying() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(5):
        c.propose(1, b"s%d" % k)
    c.stabilize()
    applied = c.node(3).raft.raft_log.applied
    st = c.restart(3, applied=applied)
    c.stabilize()
    assert st.applied == []


def test_whole_cluster_restart_keeps_committed_entries() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(3):
        c.propose(1, b"w%d" % k)
    c.stabilize()
    for i in (1, 2, 3):
        c.restart(i)
    c.tick_and_stabilize(40)
    leader = c.leader()
    c.propose(leader, b"w3")
    c.stabilize()
    for i in (1, 2, 3):
        assert c[i].applied_data() == [b"w0", b"w1", b"w2", b"w3"]


def test_lost_appends_recovered_by_heartbeat_probe() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    # Drop every APP to 3 for a while.
    drop = lambda m: m.type == MessageType.APP and m.to == 3  # noqa: E731
    c.filters.append(drop)
    for k in range(5):
        c.propose(1, b"lost%d" % k)
        c.stabilize()
    c.filters.remove(drop)
    c.tick_and_stabilize(3)
    assert c[3].applied_data() == c[1].applied_data()
    assert len(c[3].applied_data()) == 6


def test_unreachable_report_moves_replicating_follower_to_probe() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    assert c.node(1).raft.trk.progress[2].state == ProgressState.REPLICATE
    c.node(1).report_unreachable(2)
    assert c.node(1).raft.trk.progress[2].state == ProgressState.PROBE


def test_step_rejects_local_message_types() -> None:
    st = MemoryStorage(conf_state=ConfState(voters=(1,)))
    n = RawNode(Config(id=1, storage=st, rng=random.Random(1)))
    from consensus.types import ConsensusError

    for t in (MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM):
        with pytest.raises(ConsensusError):
            n.step(Message(t, to=1, frm=1))


def test_leader_appends_empty_entry_of_its_term_on_election() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.stabilize()
    assert c.log_terms(1) == [(1, 1)]
    assert c[2].applied[0].data == b"" and c[2].applied[0].term == 1
    assert c.node(1).raft.state == StateRole.LEADER


def _persist(st_storage: MemoryStorage, rd: Ready) -> None:
    if rd.entries:
        st_storage.append(rd.entries)
    if rd.hard_state is not None:
        st_storage.set_hard_state(rd.hard_state)


def test_leader_counts_its_own_entries_only_once_persisted() -> None:
    """An ack from one follower plus the leader's own unpersisted copy is not
    a quorum: if the leader crashed before its write, only one replica
    would hold a 'committed' entry."""
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.stabilize()
    before = c.commit(1)
    c.propose(1, b"x")
    n = c.node(1)
    rd = n.ready()  # handed out, not yet persisted
    li = rd.entries[-1].index
    n.step(Message(MessageType.APP_RESP, frm=2, to=1, term=c.term(1), index=li))
    assert c.commit(1) == before
    assert n.status().progress[1].match < li
    _persist(c[1].storage, rd)
    n.advance(rd)
    assert n.status().progress[1].match == li
    assert c.commit(1) == li


def test_single_voter_commits_once_its_entries_are_persisted() -> None:
    c = Cluster([1])
    c.elect(1)
    c.stabilize()
    c.propose(1, b"solo")
    n = c.node(1)
    rd = n.ready()
    li = rd.entries[-1].index
    assert c.commit(1) < li and not rd.committed_entries
    _persist(c[1].storage, rd)
    n.advance(rd)
    assert c.commit(1) == li
    rd2 = n.ready()
    assert [e.data for e in rd2.committed_entries] == [b"solo"]
