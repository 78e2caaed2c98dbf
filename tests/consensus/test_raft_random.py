"""Randomized schedules over the in-test harness, checking Raft's safety
properties after every step: one leader per term, and no two nodes ever
apply different entries at the same index (so nothing committed is lost or
changed, across crashes, restarts, partitions, lossy and reordered links,
snapshots and compaction).

Bounded: a fixed set of seeds and steps. The deterministic simulator in
consensus/sim.py explores far more; this keeps the core honest on its own.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ProposalDropped,
    StateRole,
)
from tests.consensus.harness import Cluster


class SafetyChecker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        self.applied_at: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.seen: dict[int, int] = {}  # node -> how many applied entries were checked

    def check(self, c: Cluster) -> None:
        for i, st in c.nodes.items():
            r = st.node.raft
            if r.state == StateRole.LEADER:
                prev = self.leader_of_term.setdefault(r.term, i)
                assert prev == i, f"two leaders in term {r.term}: {prev} and {i}"
            k = self.seen.get(i, 0)
            if k > len(st.applied):
                k = 0  # restarted: re-applied from its snapshot
            for e in st.applied[k:]:
                got = (e.term, e.data)
                want = self.applied_at.setdefault(e.index, got)
                assert want == got, f"node {i} applied {got} at {e.index}, another applied {want}"
            self.seen[i] = len(st.applied)


def _random_conf_change(rng: random.Random, ids: list[int]) -> ConfChange:
    kinds = [ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE]
    if rng.random() < 0.3:
        a, b = rng.sample(ids, 2)
        return ConfChange(
            changes=(
                ConfChangeSingle(ConfChangeType.ADD_VOTER, a),
                ConfChangeSingle(ConfChangeType.REMOVE_NODE, b),
            ),
            transition=rng.choice(list(ConfChangeTransition)),
        )
    return ConfChange(changes=(ConfChangeSingle(rng.choice(kinds), rng.choice(ids)),))


def run_schedule(seed: int, steps: int, n: int = 3, spares: int = 0, **config: object) -> Cluster:
    """n initial voters, plus `spares` blank nodes that conf changes may add."""
    rng = random.Random(seed)
    c = Cluster(range(1, n + 1), seed=seed, **config)  # type: ignore[arg-type]
    for k in range(n + 1, n + spares + 1):
        c.add_blank(k)
        c.ids.append(k)
    chk = SafetyChecker()
    proposed = 0
    for _ in range(steps):
        action = rng.random()
        if action < 0.35:
            c.tick([rng.choice(c.ids)])
        elif action < 0.55:
            leaders = c.leaders()
            target = rng.choice(leaders) if leaders and rng.random() < 0.8 else rng.choice(c.ids)
            try:
                c.propose(target, b"v%d" % proposed)
                proposed += 1
            except ProposalDropped:
                pass
        elif action < 0.85:
            # Deliver a random part of the queue in random order; drop or
            # duplicate a few messages.
            c.process_all()
            msgs = c.take()
            rng.shuffle(msgs)
            for m in msgs:
                p = rng.random()
                if p < 0.1:
                    c.lose(m)
                    continue
                if p < 0.2:
                    c.queue.append(m)  # delayed
                    continue
                c.deliver_one(m)
                if p > 0.97:
                    c.deliver_one(m)  # duplicated
        elif action < 0.9:
            c.heal()
            if rng.random() < 0.5:
                victim = rng.choice(c.ids)
                c.partition([victim], [i for i in c.ids if i != victim])
        elif action < 0.93:
            c.restart(rng.choice(c.ids))
        elif action < 0.97 and spares:
            leaders = c.leaders()
            if leaders:
                node = c.node(rng.choice(leaders))
                with contextlib.suppress(ProposalDropped):
                    if rng.random() < 0.8:
                        node.propose_conf_change(_random_conf_change(rng, c.ids))
                    elif c[node.id].conf_state.voters_outgoing:
                        node.propose_conf_change(ConfChange())  # leave explicitly
                    else:
                        node.transfer_leadership(rng.choice(c.ids))
        else:
            i = rng.choice(c.ids)
            if c.node(i).raft.raft_log.applied > c[i].storage.snapshot().meta.index:
                c.snapshot_and_compact(i)
        c.process_all()
        chk.check(c)
    # Heal and let the group settle: everything proposed and committed must
    # end up applied identically everywhere.
    c.heal()
    for _ in range(300):
        c.tick()
        c.stabilize()
        chk.check(c)
        if len(c.leaders()) == 1 and len({c.commit(i) for i in members(c)}) == 1:
            break  # settled (a split vote can take a few election rounds)
    return c


def members(c: Cluster) -> list[int]:
    """The nodes in the (single) leader's configuration."""
    cs = c[c.leader()].node.raft.trk.conf_state()
    return sorted(set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing))


@pytest.mark.parametrize("seed", range(12))
def test_random_schedule_is_safe_and_converges(seed: int) -> None:
    c = run_schedule(seed, steps=400)
    leader = c.leader()
    c.propose(leader, b"final")
    c.stabilize()
    datas = [c[i].applied_data() for i in c.ids]
    assert all(d == datas[0] for d in datas)
    assert datas[0][-1] == b"final"


@pytest.mark.parametrize("seed", range(4))
def test_random_schedule_five_nodes_without_prevote(seed: int) -> None:
    c = run_schedule(seed, steps=300, n=5, pre_vote=False, check_quorum=False)
    c.propose(c.leader(), b"final")
    c.stabilize()
    assert all(c[i].applied_data()[-1] == b"final" for i in c.ids)


@pytest.mark.parametrize("seed", range(6))
def test_random_schedule_with_membership_changes(seed: int) -> None:
    c = run_schedule(seed, steps=500, n=3, spares=2)
    leader = c.leader()
    c.propose(leader, b"final")
    c.stabilize()
    datas = [c[i].applied_data() for i in members(c)]
    assert all(d == datas[0] for d in datas)
    assert datas[0][-1] == b"final"
