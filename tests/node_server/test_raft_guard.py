"""node.raft_guard against the rules it states, and against real Raft traffic.

Three properties:
  * the verdict on any message (fields drawn across and beyond their ranges)
    is the one an independent table of the rules gives, with the status that
    table names;
  * no false refusal: every message correct Raft nodes send each other, under
    random schedules (elections, proposals, transfers, reads, partitions,
    restarts, compaction and snapshots), passes the guard at delivery;
  * whatever passes the guard, stepped into a replica, never raises anything
    but a ConsensusError and never leaves a term or index beyond 2^63-1.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consensus.memory_storage import MemoryStorage
from consensus.raft import CAMPAIGN_TRANSFER, Config
from consensus.rawnode import RawNode
from consensus.types import (
    LOCAL_MESSAGES,
    ConfState,
    ConsensusError,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from node.errors import NodeError
from node.raft_guard import MAX_TERM, GroupView, GuardLimits, check_message
from tests.consensus.harness import Cluster

ME = 1
MEMBERS = (1, 2, 3)
PEERS = frozenset({1, 2, 3, 4})  # node 4 is in the cluster but not in the group
PARTITIONS = 4
LIMITS = GuardLimits(node_id=ME, peers=PEERS, partitions=PARTITIONS, max_entries=8)
# Example counts follow the hypothesis profile (tests/conftest.py): the pure
# checks are cheap, so they get several times the profile's count.
_N = settings.default.max_examples
TWO63 = 1 << 63
TWO64 = 1 << 64


def _u64(base: int) -> st.SearchStrategy[int]:
    """Numbers near the interesting edges: small, around ours, around 2^32, 2^63, 2^64."""
    return st.one_of(
        st.integers(0, 6),
        st.sampled_from([base, base + 1, base + (1 << 32), base + (1 << 32) + 1]),
        st.sampled_from([TWO63 - 1, TWO63, TWO64 - 1]),
    )


@dataclass
class Case:
    group: int
    sender: int
    view: GroupView | None
    m: Message


@st.composite
def cases(draw: st.DrawFn) -> Case:
    view_term = draw(st.integers(0, 20))
    view = draw(
        st.one_of(
            st.none(),
            st.builds(
                GroupView,
                term=st.just(view_term),
                leader=st.sampled_from([0, 1, 2, 3]),
                members=st.sampled_from([frozenset(MEMBERS), frozenset()]),
                last_index=st.sampled_from([10, MAX_TERM]),
            ),
        )
    )
    sender = draw(st.sampled_from([2, 3, 4]))
    t = draw(st.sampled_from(list(MessageType)))
    term = draw(_u64(view_term))
    log_term = draw(_u64(view_term))
    index = draw(_u64(10))
    kind = draw(st.sampled_from(["none", "contiguous", "gap", "term-high", "unassigned"]))
    n = draw(st.integers(1, 10))
    ents: list[Entry] = []
    if kind == "contiguous":
        ents = [Entry(index + k, max(log_term, 0) + (k // 3), b"x") for k in range(1, n + 1)]
    elif kind == "gap":
        ents = [Entry(index + 2 * k, log_term, b"x") for k in range(1, n + 1)]
    elif kind == "term-high":
        ents = [Entry(index + 1, term + 1, b"x")]
    elif kind == "unassigned":
        ents = [Entry(0, 0, b"x") for _ in range(n)]
    snap = None
    if draw(st.booleans()):
        snap_index = draw(_u64(10))
        snap_term = draw(st.one_of(st.just(0), st.integers(1, 3), st.just(term), st.just(term + 1)))
        voters = draw(st.sampled_from([(1, 2, 3), (), (1, 2, 9)]))
        snap = Snapshot(SnapshotMeta(snap_index, snap_term, ConfState(voters=voters)), b"")
    m = Message(
        type=t,
        to=draw(st.sampled_from([ME, ME, 2])),
        frm=draw(st.sampled_from([sender, sender, sender, 2, 3, 9])),
        term=term,
        log_term=log_term,
        index=index,
        commit=draw(_u64(10)),
        reject_hint=draw(_u64(10)),
        entries=ents,
        snapshot=snap,
        context=draw(st.sampled_from([b"", b"12345678", CAMPAIGN_TRANSFER, b"c" * 65])),
    )
    group = draw(st.sampled_from([0, 1, PARTITIONS - 1, PARTITIONS, 1 << 31]))
    return Case(group, sender, view, m)


def expected(c: Case) -> grpc.StatusCode | None:
    """The rules of node/raft_guard.py, written as a table: the first that
    fails gives the status; None when every rule holds."""
    m, v = c.m, c.view
    numbers = [m.term, m.log_term, m.index, m.commit, m.reject_hint]
    untermed = m.type in (MessageType.PROP, MessageType.READ_INDEX)
    speaker_ok = m.frm == c.sender or m.type == MessageType.TRANSFER_LEADER
    members = v.members if v is not None else frozenset()
    leader_only = m.type in (
        MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP,
        MessageType.TIMEOUT_NOW, MessageType.READ_INDEX_RESP,
    )
    app_ok = all(
        e.index == m.index + k
        and (m.entries[k - 2].term if k > 1 else m.log_term) <= e.term <= m.term
        for k, e in enumerate(m.entries, 1)
    )
    snap = m.snapshot
    snap_ids = set(snap.meta.conf_state.voters) if snap is not None else set()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    rules: list[tuple[bool, grpc.StatusCode]] = [
        (0 <= c.group < PARTITIONS, invalid),
        (v is not None, precondition),
        (m.type not in LOCAL_MESSAGES, invalid),
        (m.to == ME, invalid),
        (speaker_ok, invalid),
        (not members or (c.sender in members and m.frm in members), precondition),
        (bool(members) or m.frm in PEERS, invalid),
        (all(x < TWO63 for x in numbers), invalid),
        (m.term == 0 if untermed else m.term >= 1, invalid),
        (v is None or m.term <= v.term + (1 << 32), invalid),
        (m.log_term <= m.term, invalid),
        (len(m.context) <= 64, invalid),
        (len(m.entries) <= LIMITS.max_entries, invalid),
        (
            not m.entries
            or (m.type == MessageType.APP and app_ok)
            or (m.type == MessageType.PROP and all(e.index == e.term == 0 for e in m.entries)),
            invalid,
        ),
        (m.type != MessageType.PROP or bool(m.entries), invalid),
        ((snap is not None) == (m.type == MessageType.SNAP), invalid),
        (
            snap is None
            or (
                snap.meta.index < TWO63
                and snap.meta.term <= m.term
                and (snap.meta.index == 0) == (snap.meta.term == 0)
                and snap_ids <= PEERS
                and (snap.meta.index == 0 or bool(snap_ids))
            ),
            invalid,
        ),
        (
            v is None or not leader_only or m.term != v.term or v.leader in (0, c.sender),
            precondition,
        ),
        (
            v is None or m.type != MessageType.APP_RESP or m.term != v.term
            or m.index <= v.last_index,
            precondition,
        ),
    ]
    for ok, code in rules:
        if not ok:
            return code
    return None


@settings(max_examples=5 * _N, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_the_verdict_is_the_rules_verdict(c: Case) -> None:
    want = expected(c)
    try:
        check_message(c.group, c.m, c.sender, LIMITS, c.view)
    except NodeError as e:
        assert want is not None, f"refused a valid message: {e.message}"
        assert e.code == want, (e.code, want, e.message)
        assert e.message.startswith(f"partition {c.group}"), e.message  # names the partition
        return
    assert want is None, f"accepted a message the rules refuse ({want})"


# ---- no false refusal: real Raft traffic always passes --------------------------------


class GuardedCluster(Cluster):
    """The consensus test cluster, with every delivery checked by the guard
    against the receiver's state at that moment."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.checked = 0
        self.kinds: set[str] = set()

    def deliver_one(self, m: Message) -> None:
        if not self.dropped(m):
            node = self.nodes[m.to].node
            view = GroupView(
                term=node.term,
                leader=node.leader,
                members=frozenset(node.raft.trk.progress) if node.has_membership() else frozenset(),
                last_index=node.last_index,
            )
            limits = GuardLimits(node_id=m.to, peers=frozenset(self.nodes), partitions=1)
            try:
                check_message(0, m, m.frm if m.type != MessageType.TRANSFER_LEADER
                              else _forwarder(self, m), limits, view)
            except NodeError as e:  # pragma: no cover - the property's failure
                raise AssertionError(f"refused correct traffic: {e.message} ({m})") from None
            self.checked += 1
            self.kinds.add(m.type.name)
        super().deliver_one(m)


def _forwarder(c: Cluster, m: Message) -> int:
    """Who actually sent a TRANSFER_LEADER: its transferee, or a follower
    forwarding it to the leader; either way a member of the group."""
    return m.frm if m.frm in c.nodes else next(iter(c.nodes))


actions = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(1, 5), st.integers(1, 12)),
        st.tuples(st.just("propose"), st.integers(1, 5), st.integers(1, 4)),
        st.tuples(st.just("deliver"), st.integers(0, 3), st.integers(0, 0)),
        st.tuples(st.just("drop"), st.integers(0, 3), st.integers(0, 0)),
        st.tuples(st.just("isolate"), st.integers(1, 5), st.integers(0, 0)),
        st.tuples(st.just("heal"), st.integers(0, 0), st.integers(0, 0)),
        st.tuples(st.just("restart"), st.integers(1, 5), st.integers(0, 0)),
        st.tuples(st.just("compact"), st.integers(1, 5), st.integers(0, 0)),
        st.tuples(st.just("transfer"), st.integers(1, 5), st.integers(1, 5)),
        st.tuples(st.just("read"), st.integers(1, 5), st.integers(0, 0)),
        st.tuples(st.just("lag"), st.integers(1, 5), st.integers(1, 6)),
    ),
    min_size=5,
    max_size=80,
)


@settings(max_examples=_N, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.sampled_from([3, 5]), seed=st.integers(0, 1000), plan=actions)
def test_correct_raft_traffic_is_never_refused(
    size: int, seed: int, plan: list[tuple[str, int, int]]
) -> None:
    c = GuardedCluster(range(1, size + 1), seed=seed, election_tick=10, heartbeat_tick=1)
    c.elect(seed % size + 1)
    reads = 0

    def one_round() -> None:
        c.process_all()
        c.deliver()
        c.process_all()

    for what, a, b in plan:
        node = (a - 1) % size + 1
        try:
            if what == "tick":
                for _ in range(b):
                    c.tick()
                    one_round()
            elif what == "propose":
                for k in range(b):
                    c.propose(node, b"cmd-%d" % k)
                c.process_all()
            elif what == "deliver":
                c.process_all()
                c.deliver()
                c.process_all()
            elif what == "drop":
                c.process_all()
                queued = c.take()
                for k, m in enumerate(queued):
                    if k % 4 == a:
                        c.lose(m)
                    else:
                        c.queue.append(m)
            elif what == "isolate":
                c.isolate(node)
            elif what == "heal":
                c.heal()
            elif what == "restart":
                c.restart(node)
            elif what == "compact":
                if c.nodes[node].node.raft.raft_log.applied > c.nodes[node].storage.first_index():
                    c.snapshot_and_compact(node)
            elif what == "transfer":
                c.node(node).transfer_leadership((b - 1) % size + 1)
                c.process_all()
            elif what == "lag":
                # node falls behind a compaction: it can only catch up by snapshot
                cut = c.isolate(node)
                for k in range(b):
                    with contextlib.suppress(ConsensusError):
                        c.propose(next(iter(c.leaders()), node), b"lag-%d" % k)
                    c.tick()
                    one_round()
                for other in c.nodes:
                    if other != node and (
                        c.nodes[other].node.raft.raft_log.applied
                        > c.nodes[other].storage.first_index()
                    ):
                        c.snapshot_and_compact(other)
                c.filters.remove(cut)
            elif what == "read":
                reads += 1
                c.node(node).read_index(b"read-%06d" % reads)
                c.process_all()
        except ConsensusError:
            pass  # no leader to take the proposal or read: fine for this property
    # Heal, let a leader settle, and use the group once more: every replica,
    # however far behind, catches up (by snapshot if its log was compacted).
    c.heal()
    for _ in range(40):
        c.tick()
        one_round()
    for n in sorted(c.nodes):
        with contextlib.suppress(ConsensusError):
            c.propose(n, b"final")
            c.node(n).read_index(b"final-%d" % n)
    for _ in range(20):
        c.tick()
        one_round()
    assert c.checked > 0
    for kind in sorted(c.kinds & _RARE):
        event(f"delivered a {kind}")  # --hypothesis-show-statistics: what the schedules reach


_RARE = {"SNAP", "TIMEOUT_NOW", "READ_INDEX", "READ_INDEX_RESP", "TRANSFER_LEADER", "PROP", "VOTE"}


# ---- whatever passes never poisons a replica ---------------------------------------------


@settings(max_examples=5 * _N, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases(), st.integers(0, 3))
def test_an_accepted_message_never_poisons_the_replica(c: Case, warmup: int) -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=MEMBERS))
    node = RawNode(Config(id=ME, storage=storage, rng=random.Random(warmup)))
    for _ in range(warmup * 7):
        node.tick()
    view = GroupView(
        term=node.term, leader=node.leader, members=frozenset(node.raft.trk.progress),
        last_index=node.last_index,
    )
    m = c.m
    try:
        check_message(0, m, c.sender, LIMITS, view)
    except NodeError:
        return
    try:
        node.step(m)
        if node.has_ready():
            rd = node.ready()
            node.advance(rd)
    except ConsensusError:
        pass
    hs = node.hard_state()
    assert hs.term <= MAX_TERM and hs.commit <= MAX_TERM
    assert node.last_index <= MAX_TERM
    # And the replica can still campaign: its next term fits.
    assert node.term + 1 <= MAX_TERM + 1


def test_a_heartbeat_with_the_largest_term_is_refused_by_name() -> None:
    view = GroupView(term=5, leader=2, members=frozenset(MEMBERS))
    hb = Message(MessageType.HEARTBEAT, to=ME, frm=2, term=TWO64 - 1, commit=3)
    with pytest.raises(NodeError) as e:
        check_message(0, hb, 2, LIMITS, view)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == (
        "partition 0: HEARTBEAT from node 2 refused: term is out of range (above 2^63-1)"
    )


def test_an_ack_beyond_the_last_index_is_refused() -> None:
    """A follower acknowledging entries the leader never had would count
    towards a quorum for entries only the leader holds."""
    view = GroupView(term=5, leader=ME, members=frozenset(MEMBERS), last_index=40)
    ack = Message(MessageType.APP_RESP, to=ME, frm=2, term=5, index=41)
    with pytest.raises(NodeError) as e:
        check_message(0, ack, 2, LIMITS, view)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "acknowledges index 41, beyond this replica's last index 40" in e.value.message
    check_message(0, Message(MessageType.APP_RESP, to=ME, frm=2, term=5, index=40), 2, LIMITS, view)
    # An older term's ack is the core's to ignore; the guard lets it through.
    check_message(0, Message(MessageType.APP_RESP, to=ME, frm=2, term=4, index=99), 2, LIMITS, view)
