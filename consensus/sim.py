"""Deterministic simulation of Raft groups under faults (FoundationDB/TigerBeetle style).

    python -m consensus.sim --seeds 2000 --nodes 5
    python -m consensus.sim --seed 1234 --nodes 3 -v     # replay one schedule

One seed decides everything: the schedule's parameters, every fault and
client action, every network delay, and each node's Config.rng. Time is a
counter of virtual time units; nodes tick every TICK_UNITS units. During the
first `steps` units the schedule injects faults (message drops, delays,
duplicates and reordering; partitions; crashes, some of them halfway through
handling a Ready; membership changes and leader transfers) while clients
propose and read. Then the network heals, crashed nodes restart, faults stop
and the group must settle: one leader, and every acknowledged proposal
applied on every live replica, and no joint configuration left. Invariants
are checked on every event (sim_checks). A violation reports the seed and the
command that replays it.

What the disk and the nodes may do (issue 12): a crash keeps only a prefix
of the writes made since the last sync (sim_node); the state machine may be
durable, so a restart resumes with applied past the last snapshot (and the
core must replay the conf changes in between: the membership check); a node
may die right after sending a vote or an append acknowledgement, and what it
sent must still be on its disk (the durability check); removed nodes may
stay up and keep sending; a transfer may start while a joint change is in
flight, and a leader must not linger in an applied joint configuration it
could leave. Planted bugs (BUGS) show each check catching what it is for:
`--bug NAME` runs the core or this driver with one.

Modules: sim_schedule (what a seed decides: rates and Config knobs),
sim_network (the wire), sim_node (a replica and its disk), sim_nemesis (the
staged figure-8 history), sim_checks (the invariants), this one (the event
loop, Ready handling, the schedule's actions, the CLI).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from consensus.codec import decode_conf_change
from consensus.confchange import enter_joint_needed
from consensus.memory_storage import MemoryStorage
from consensus.raft import TEST_ONLY_BUGS, Config
from consensus.sim_checks import SafetyChecker, Violation, state_link
from consensus.sim_nemesis import Figure8Nemesis
from consensus.sim_network import InFlight, NetworkFaults, SimNetwork
from consensus.sim_node import CrashPoint, SimNode, decode_state, encode_state, members
from consensus.sim_schedule import Knobs, Rates
from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    ReadState,
    Ready,
    StateRole,
)

DEFAULT_STEPS = 2000
TICK_UNITS = 5  # virtual time units per node tick
QUIET_LIMIT = 3000  # units the healed group gets to settle before liveness fails
# Units a leader may stay in an applied auto-leave joint configuration with
# nothing stopping it from proposing the leave (no transfer, no conf change
# in flight) before the run fails: a few ticks, faults or not, since
# proposing is the leader's own act.
JOINT_LEAVE_BOUND = 20 * TICK_UNITS
SPARES = 2  # never-used node ids available to membership changes
MIN_VOTERS = 3
# Planted bugs. Core bugs live in the Raft core (Config.test_only_bug); driver
# bugs in this module's handling of a Ready, i.e. in the application's side
# of the persistence contract.
CORE_BUGS = tuple(sorted(TEST_ONLY_BUGS))
DRIVER_BUGS = (
    "send_before_persist",  # a Ready's messages leave before its writes
    "ignore_must_sync",  # nothing is synced: a crash may lose any recent write
    "read_before_applied",  # a ReadState is served before its index is applied
)
BUGS = CORE_BUGS + DRIVER_BUGS


@dataclass
class SimStats:
    steps: int = 0
    elections: int = 0
    crashes: int = 0
    partitions: int = 0
    membership_changes: int = 0
    transfers: int = 0
    reads: int = 0
    proposals: int = 0
    acked: int = 0
    # The corners issue 12 taught the simulator:
    restarts_past_snapshot: int = 0  # restarted with applied past its last snapshot
    conf_replayed: int = 0  # ...with conf changes between the two
    unsynced_lost: int = 0  # unsynced writes a crash lost
    ack_kills: int = 0  # crashes right after sending a vote or an acknowledgement
    removed_kept_up: int = 0  # removed nodes left running
    joint_transfers: int = 0  # transfers started while a joint change was in flight

    def add(self, other: SimStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (
            f"steps={self.steps}, elections={self.elections}, crashes={self.crashes}, "
            f"partitions={self.partitions}, membership_changes={self.membership_changes}, "
            f"transfers={self.transfers}, reads={self.reads}, "
            f"restarts_past_snapshot={self.restarts_past_snapshot}, "
            f"unsynced_lost={self.unsynced_lost}, ack_kills={self.ack_kills}, "
            f"removed_kept_up={self.removed_kept_up}"
        )


@dataclass
class ScheduleResult:
    seed: int
    nodes: int
    steps: int
    bug: str | None
    stats: SimStats
    digest: str  # hash of the whole event trace: equal digests = identical runs
    violation: Violation | None = None
    at: int = 0  # virtual time of the violation

    @property
    def ok(self) -> bool:
        return self.violation is None

    def replay_command(self) -> str:
        return replay_command(self.seed, self.nodes, self.steps, self.bug)


def replay_command(
    seed: int, nodes: int, steps: int = DEFAULT_STEPS, bug: str | None = None
) -> str:
    cmd = f"python -m consensus.sim --seed {seed} --nodes {nodes}"
    if steps != DEFAULT_STEPS:
        cmd += f" --steps {steps}"
    if bug:
        cmd += f" --bug {bug}"
    return cmd


class Simulation:
    """One schedule. run() returns normally or raises Violation."""

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        steps: int = DEFAULT_STEPS,
        bug: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if nodes < MIN_VOTERS:
            raise ValueError(f"need at least {MIN_VOTERS} nodes")
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
        self.seed = seed
        self.steps = steps
        self.bug = bug
        self._log = log
        self.rng = random.Random(seed)
        self.now = 0
        self.faulty = True
        self.stats = SimStats()
        self._trace = hashlib.blake2b(digest_size=16)
        self.rates = Rates.random(self.rng)
        self.knobs = Knobs.random(self.rng)
        self.net = SimNetwork(
            random.Random(self.rng.getrandbits(64)), NetworkFaults.random(self.rng)
        )
        self.figure8 = Figure8Nemesis(random.Random(self.rng.getrandbits(64)), self._event)
        n_voters = nodes if nodes != 5 else self.rng.choice([3, 5])
        voters = tuple(range(1, n_voters + 1))
        self.initial_conf = ConfState(voters=voters)
        self.check = SafetyChecker(self.initial_conf)
        self.nodes: dict[int, SimNode] = {}
        for nid in range(1, n_voters + SPARES + 1):
            node = SimNode(nid, MemoryStorage(), self._make_config)
            node.phase = self.rng.randrange(TICK_UNITS)
            self.nodes[nid] = node
        for nid in voters:
            # Bootstrap: every initial replica holds the same membership at index 0.
            self.nodes[nid].storage = MemoryStorage(self.initial_conf)
            self._boot(self.nodes[nid])
        self.acked: dict[bytes, int] = {}  # acknowledged proposal -> index it was applied at
        self._next_id = 0
        self._heal_at = 0
        self._decommission: list[int] = []
        self._event(
            f"start voters={n_voters} rates={self.rates} knobs={self.knobs} net={self.net.faults}"
        )

    # --- plumbing -----------------------------------------------------------

    def _make_config(
        self, node_id: int, storage: MemoryStorage, rng: random.Random, applied: int
    ) -> Config:
        k = self.knobs
        return Config(
            id=node_id,
            storage=storage,
            rng=rng,
            election_tick=10,
            heartbeat_tick=1,
            applied=applied,
            max_size_per_msg=k.max_size_per_msg,
            max_committed_size_per_ready=k.max_committed_size_per_ready,
            max_inflight_msgs=k.max_inflight_msgs,
            check_quorum=k.check_quorum,
            pre_vote=k.pre_vote,
            test_only_bug=self.bug if self.bug in CORE_BUGS else None,
        )

    def _boot(self, node: SimNode) -> None:
        node.boot(random.Random(self.rng.getrandbits(64)), self.knobs.durable_apply)
        if node.applied > node.snap_index:
            self.stats.restarts_past_snapshot += 1
            if self.check.conf_at(node.applied) != self.check.conf_at(node.snap_index):
                self.stats.conf_replayed += 1
        self.check.state_restored(node.id, node.applied, node.state_chain)
        self.check.conf_restored(node.id, node.applied, node.conf_state, "restarted")

    def _event(self, text: str) -> None:
        line = f"{self.now} {text}"
        self._trace.update(line.encode())
        if self._log is not None:
            self._log(line)

    def digest(self) -> str:
        return self._trace.hexdigest()

    def _alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def leader(self) -> SimNode | None:
        """The live node that believes itself leader of the highest term."""
        best: SimNode | None = None
        for n in self.nodes.values():
            if n.is_leader and (best is None or n.term > best.term):
                best = n
        return best

    # --- the main loop ------------------------------------------------------

    def run(self) -> None:
        while self.now < self.steps:
            self._unit(faulty=True)
            self.now += 1
        self._settle()

    def _unit(self, faulty: bool) -> None:
        touched: dict[int, SimNode] = {}
        for item in self.net.due(self.now):
            node = self._deliver(item)
            if node is not None:
                touched[node.id] = node
        for node in self.nodes.values():
            if not node.alive:
                continue
            if node.kill_at and node.kill_at <= self.now:
                self._crash(node, "leader kill")
                continue
            if (self.now + node.phase) % TICK_UNITS == 0:
                node.rawnode.tick()
                touched[node.id] = node
        if faulty:
            self.figure8.tick(self.now)
            self._random_action(touched)
        else:
            self._settling_action(touched)
        for node in self.nodes.values():
            if (
                not node.alive
                and not node.removed
                and node.incarnation
                and (self.now >= node.restart_at)
            ):
                self._event(f"restart n{node.id}")
                self._boot(node)
                touched[node.id] = node
        for nid in sorted(touched):
            self._drain(touched[nid])
        self._apply_decommissions()
        self._check_joint_left()

    def _deliver(self, item: InFlight) -> SimNode | None:
        dest = self.nodes.get(item.to)
        sender = self.nodes.get(item.frm)
        lost = item.lost or dest is None or not dest.alive
        if (
            item.type == MessageType.SNAP
            and sender is not None
            and sender.alive
            and (sender.incarnation == item.sender_incarnation)
        ):
            # The transport tells the leader how its snapshot send ended.
            sender.rawnode.report_snapshot(item.to, not lost)
            self._drain(sender)
        if lost:
            if (
                item.type == MessageType.APP
                and sender is not None
                and sender.alive
                and sender.incarnation == item.sender_incarnation
            ):
                # A transport notices failed sends; the leader then probes again.
                sender.rawnode.report_unreachable(item.to)
                self._drain(sender)
            return None
        assert dest is not None
        m = item.message()
        self._trace.update(
            b"%d %d %d>%d t%d i%d" % (self.now, m.type, m.frm, m.to, m.term, m.index)
        )
        dest.rawnode.step(m)
        if self.knobs.ready_per_message:
            self._drain(dest)
        return dest

    def _drain(self, node: SimNode) -> None:
        for _ in range(1000):
            if not node.alive or not node.rawnode.has_ready():
                return
            self._handle_ready(node, node.rawnode.ready())
        raise Violation("ready loop", f"node {node.id}: has_ready() after 1000 Readys")

    # --- Ready handling: persist, send, apply, advance ----------------------

    def _handle_ready(self, node: SimNode, rd: Ready) -> None:
        point = node.crash_point
        if point == CrashPoint.BEFORE_PERSIST:
            return self._crash(node, "before persisting a Ready")
        raw = node.rawnode
        if rd.soft_state is not None:
            node.role = rd.soft_state.role
            node.leader = rd.soft_state.leader
        if (
            self.faulty
            and point == CrashPoint.NONE
            and self.rates.ack_kill
            and any(_promise(m) for m in rd.messages)
            and self.rng.random() < self.rates.ack_kill
        ):
            # Die right after telling someone a vote or an acknowledgement.
            point = CrashPoint.AFTER_SEND
            self.stats.ack_kills += 1
        early = self.bug == "send_before_persist"
        if early:
            # PLANTED BUG: the messages leave before the writes they depend on.
            self._send(node, rd)
            if point == CrashPoint.AFTER_SEND:
                return self._crash(node, "after sending, before persisting")
        prev_commit = node.storage.hard_state.commit
        self._persist(node, rd)
        if node.role == StateRole.LEADER and node.led_term != node.term:
            node.led_term = node.term
            if self.check.leader_elected(node.term, node.id):
                self.stats.elections += 1
            self._event(f"leader n{node.id} term {node.term}")
            self.check.leader_completeness(node.id, node.term, node.chain)
            if self.faulty:
                point = self._leader_nemesis(node, point)
        if (
            self.faulty
            and rd.hard_state is not None
            and rd.hard_state.commit > prev_commit
            and node.role == StateRole.LEADER
        ):
            point = self._commit_nemesis(node, point)
        if point == CrashPoint.AFTER_PERSIST:
            return self._crash(node, "after persisting, before sending")
        if not early:
            self._send(node, rd)
        if point == CrashPoint.AFTER_SEND:
            return self._crash(node, "after sending, before applying")
        self._apply(node, rd)
        if point == CrashPoint.AFTER_APPLY:
            return self._crash(node, "after applying, before advance")
        self._maybe_snapshot(node)
        raw.advance(rd)

    def _send(self, node: SimNode, rd: Ready) -> None:
        """Send a Ready's messages, noting what they promise (sim_checks.promises_kept)."""
        for m in rd.messages:
            t = m.type
            if t == MessageType.VOTE_RESP and not m.reject:
                if m.term >= node.promised_vote[0]:
                    node.promised_vote = (m.term, m.to)
            elif t == MessageType.VOTE:
                if m.term >= node.promised_vote[0]:
                    node.promised_vote = (m.term, node.id)
            elif t == MessageType.APP_RESP and not m.reject:
                node.promised_ack = max(node.promised_ack, (m.term, m.index))
            if m.to in self.nodes and m.to != node.id:
                self.net.send(self.now, m, node.incarnation)

    def _leader_nemesis(self, node: SimNode, point: CrashPoint) -> CrashPoint:
        """A new leader may be killed soon, or right after persisting its first Ready."""
        staged = self.figure8.on_leader(node, self.now)
        if staged is not None:
            return staged
        roll = self.rng.random()
        if roll < self.rates.leader_kill:
            node.kill_at = self.now + self.rng.randint(1, 40)
        elif roll < self.rates.leader_kill + self.rates.strand_elected:
            return CrashPoint.AFTER_PERSIST  # its first entry never leaves
        return point

    def _commit_nemesis(self, node: SimNode, point: CrashPoint) -> CrashPoint:
        """A leader that just advanced its commit index may die, maybe before telling anyone."""
        staged = self.figure8.on_commit(node)
        if staged is not None:
            return staged
        if self.rng.random() < self.rates.kill_after_commit:
            return self.rng.choice([CrashPoint.AFTER_PERSIST, CrashPoint.AFTER_APPLY])
        return point

    def _persist(self, node: SimNode, rd: Ready) -> None:
        """One write of the Ready's snapshot, entries and hard state, synced
        when the Ready says so (or when it carries a snapshot, as the node's
        host does): an unsynced write may be lost by a crash."""
        check = self.check
        synced = rd.must_sync or rd.snapshot is not None
        if self.bug == "ignore_must_sync":
            synced = False  # PLANTED BUG
        snap, ents, hs_new = rd.snapshot, rd.entries, rd.hard_state

        def write() -> None:
            st = node.storage
            if snap is not None:
                st.apply_snapshot(snap)
                index, state_chain, log_chain = decode_state(snap)
                node.chain.reset(snap.meta.index, log_chain)
                node.set_sm(index, state_chain)
            if ents:
                st.append(ents)
                node.chain.append(ents)
            if hs_new is not None:
                st.set_hard_state(hs_new)

        if hs_new is not None and hs_new.term < node.term:
            raise Violation("term regressed", f"node {node.id}: {node.term} -> {hs_new.term}")
        if snap is None and not ents and hs_new is None:
            return
        node.write(write, synced)
        if snap is not None:
            meta = snap.meta
            check.snapshot_installed(node.id, meta.index, meta.term, decode_state(snap)[2])
        if ents:
            check.entries_persisted(node.id, ents, node.chain)
            if node.storage.last_index() != node.chain.last:
                raise Violation("storage", f"node {node.id}: storage and log chain disagree")
        if hs_new is not None:
            hs = hs_new
            node.term = hs.term
            check.commit_persisted(node.id, hs.term, hs.commit, node.chain)
            self._trace.update(
                b"%d h%d %d %d %d" % (self.now, node.id, hs.term, hs.vote, hs.commit)
            )

    def _apply(self, node: SimNode, rd: Ready) -> None:
        raw, check = node.rawnode, self.check
        if rd.snapshot is not None:
            index, state_chain, _ = decode_state(rd.snapshot)
            if index < node.applied:
                raise Violation(
                    "snapshot",
                    f"node {node.id}: snapshot {index} older than applied {node.applied}",
                )
            check.state_restored(node.id, index, state_chain)
            node.applied, node.state_chain = index, state_chain
            node.snap_index = index
            node.conf_state = rd.snapshot.meta.conf_state
            check.conf_restored(node.id, index, node.conf_state, "installed a snapshot")
        for e in rd.committed_entries:
            if e.index != node.applied + 1:
                raise Violation(
                    "apply order", f"node {node.id}: applied {node.applied}, then got {e.index}"
                )
            node.state_chain = state_link(node.state_chain, e.type, e.data)
            node.applied = e.index
            first = check.entry_applied(node.id, e.index, e.type, e.data, node.state_chain)
            if e.type == EntryType.CONF_CHANGE:
                before = node.conf_state
                node.conf_state = raw.apply_conf_change(decode_conf_change(e.data))
                check.conf_applied(node.id, e.index, node.conf_state)
                if first:
                    self.stats.membership_changes += 1
                    self._event(f"conf {e.index} -> {node.conf_state}")
                    gone = members(before) - members(node.conf_state)
                    self._decommission.extend(sorted(gone))
            elif e.data in node.proposed and node.role == StateRole.LEADER:
                node.proposed.discard(e.data)
                self.acked.setdefault(e.data, e.index)
                self.stats.acked += 1
        if rd.committed_entries and self.knobs.durable_apply:
            # The state machine's own record, in the same ordered disk log,
            # written without a sync as the node's is.
            applied, chain = node.applied, node.state_chain
            node.write(lambda: node.set_sm(applied, chain), synced=False)
        node.pending_reads.extend(rd.read_states)
        if node.pending_reads:
            early = self.bug == "read_before_applied"  # PLANTED BUG
            still: list[ReadState] = []
            for rs in node.pending_reads:
                if rs.index <= node.applied or early:
                    check.read_served(node.id, rs.index, rs.context, node.applied)
                    self.stats.reads += 1
                else:
                    still.append(rs)
            node.pending_reads = still

    def _maybe_snapshot(self, node: SimNode) -> None:
        k = self.knobs
        if node.applied - node.snap_index < k.snap_every:
            return
        log_chain = node.chain.at(node.applied)
        if log_chain is None:
            raise Violation("storage", f"node {node.id}: applied {node.applied} not in its log")
        data = encode_state(node.applied, node.state_chain, log_chain)
        index, conf, upto = node.applied, node.conf_state, node.applied - k.snap_keep

        def write() -> None:
            node.storage.create_snapshot(index, conf, data)
            if upto >= node.storage.first_index():
                node.storage.compact(upto)
                node.chain.compact(upto)

        node.write(write, synced=True)  # the node's host syncs snapshots and compactions
        node.snap_index = index

    def _crash(self, node: SimNode, how: str) -> None:
        lost = node.lose_unsynced(self.rng)
        self.stats.unsynced_lost += lost
        if lost:
            how += f", {lost} unsynced writes lost"
        self.check.promises_kept(
            node.id,
            node.storage.hard_state,
            node.storage.last_index(),
            node.promised_vote,
            node.promised_ack,
        )
        node.crash()
        node.restart_at = self.now + self.rng.randint(20, 400)
        self.stats.crashes += 1
        self._event(f"crash n{node.id} {how}")
        self.figure8.on_crash(node, self.now)

    def _apply_decommissions(self) -> None:
        while self._decommission:
            nid = self._decommission.pop(0)
            node = self.nodes[nid]
            if node.removed:
                continue
            node.removed = True
            if node.alive and self.knobs.keep_removed:
                # Nobody shuts it down: it keeps ticking and sending with
                # whatever membership it last knew.
                self._event(f"removed n{nid} stays up")
                self.stats.removed_kept_up += 1
                continue
            if node.alive:
                node.crash()
            self._event(f"decommission n{nid}")

    # --- the schedule's actions ---------------------------------------------

    def _random_action(self, touched: dict[int, SimNode]) -> None:
        if self._heal_at and self.now >= self._heal_at:
            self.net.heal()
            self._heal_at = 0
            self._event("heal")
        r = self.rng.random()
        rt = self.rates
        for rate, action in (
            (rt.propose, self._propose),
            (rt.read, self._read),
            (rt.crash, self._crash_someone),
            (rt.partition, self._partition),
            (rt.membership, self._change_membership),
            (rt.transfer, self._transfer),
            (rt.figure8, self._start_figure8),
        ):
            if r < rate:
                node = action()
                if node is not None:
                    touched[node.id] = node
                return
            r -= rate

    def _start_figure8(self) -> SimNode | None:
        lead = self.leader()
        if self.figure8.active or lead is None:
            return None
        if any(not n.alive and not n.removed and n.incarnation for n in self.nodes.values()):
            return None  # start from a whole group
        self.figure8.start(self.now, lead)
        return self._propose_to(lead)

    def _client_target(self, leader_share: float = 0.8) -> SimNode | None:
        """Clients mostly find the leader, sometimes talk to a follower."""
        lead = self.leader()
        if lead is not None and self.rng.random() < leader_share:
            return lead
        alive = [n for n in self._alive() if not n.removed]
        return self.rng.choice(alive) if alive else None

    def _propose(self) -> SimNode | None:
        node = self._client_target()
        if node is None:
            return None
        return self._propose_to(node)

    def _propose_to(self, node: SimNode) -> SimNode:
        self._next_id += 1
        data = b"c%d" % self._next_id
        self.stats.proposals += 1
        try:
            node.rawnode.propose(data)
        except ProposalDropped:
            self._event(f"propose n{node.id} dropped")
            return node
        node.proposed.add(data)
        self._event(f"propose n{node.id} {data.decode()}")
        return node

    def _read(self) -> SimNode | None:
        # Reads go to followers as often as to the leader (follower reads
        # are a ReadIndex round trip away from the leader's answer).
        node = self._client_target(leader_share=0.5)
        if node is None:
            return None
        self._next_id += 1
        ctx = b"r%d" % self._next_id
        self.check.read_requested(ctx)
        try:
            node.rawnode.read_index(ctx)
        except ProposalDropped:
            self._event(f"read n{node.id} {ctx.decode()} dropped")
            return node
        self._event(f"read n{node.id} {ctx.decode()}")
        return node

    def _crash_someone(self) -> SimNode | None:
        alive = [n for n in self._alive() if not n.removed]
        if not alive:
            return None
        lead = self.leader()
        if lead is not None and self.rng.random() < self.rates.strand:
            # Proposals persisted by the leader and never sent: a divergent tail.
            lead.crash_point = CrashPoint.AFTER_PERSIST
            self._event(f"crash n{lead.id} armed after its next proposal")
            self._propose_to(lead)
            return lead
        node = self.rng.choice(alive)
        if self.rng.random() < 0.5:
            self._crash(node, "now")
            return None
        node.crash_point = CrashPoint(self.rng.randint(1, 4))
        self._event(f"crash n{node.id} armed at {node.crash_point.name}")
        return None

    def _partition(self) -> SimNode | None:
        ids = [n.id for n in self.nodes.values() if not n.removed]
        lead = self.leader()
        kind = self.rng.random()
        if lead is not None and kind < 0.4:
            sides = {lead.id: 1}
            desc = f"isolate leader n{lead.id}"
        elif kind < 0.6:
            victim = self.rng.choice(ids)
            sides = {victim: 1}
            desc = f"isolate n{victim}"
        else:
            sides = {nid: self.rng.randrange(2) for nid in ids}
            desc = "split " + "|".join(
                ",".join(str(n) for n in ids if sides[n] == s) for s in (0, 1)
            )
        self.net.partition(sides)
        self._heal_at = self.now + self.rng.randint(30, 600)
        self.stats.partitions += 1
        self._event(f"partition {desc}")
        return None

    def _transfer(self) -> SimNode | None:
        lead = self.leader()
        if lead is None:
            return None
        others = [v for v in lead.conf_state.voters if v != lead.id]
        if not others:
            return None
        target = self.rng.choice(others)
        lead.rawnode.transfer_leadership(target)
        self.stats.transfers += 1
        self._event(f"transfer n{lead.id} -> n{target}")
        return lead

    def _change_membership(self) -> SimNode | None:
        lead = self.leader()
        if lead is None:
            return None
        cs = lead.conf_state
        if cs.voters_outgoing:
            return self._leave_joint(lead)
        voters, learners = list(cs.voters), list(cs.learners)
        current = members(cs)
        spares = [
            n.id
            for n in self.nodes.values()
            if n.id not in current and not n.removed and (n.alive or not n.incarnation)
        ]
        options: list[tuple[ConfChangeSingle, ...]] = []
        if spares:
            options.append((ConfChangeSingle(ConfChangeType.ADD_LEARNER, spares[0]),))
        for lid in learners:
            options.append((ConfChangeSingle(ConfChangeType.ADD_VOTER, lid),))
            victim = self.rng.choice(voters)
            options.append(
                (
                    ConfChangeSingle(ConfChangeType.ADD_VOTER, lid),
                    ConfChangeSingle(ConfChangeType.REMOVE_NODE, victim),
                )
            )
        if len(voters) > MIN_VOTERS:
            victim = self.rng.choice(voters)
            options.append((ConfChangeSingle(ConfChangeType.REMOVE_NODE, victim),))
            options.append((ConfChangeSingle(ConfChangeType.ADD_LEARNER, victim),))  # demote
        if not options:
            return None
        changes = self.rng.choice(options)
        transition = self.rng.choice(list(ConfChangeTransition))
        for c in changes:
            spare = self.nodes[c.node_id]
            if c.type == ConfChangeType.ADD_LEARNER and not spare.alive and not spare.incarnation:
                self._event(f"start spare n{spare.id}")
                self._boot(spare)
        return self._propose_conf(lead, ConfChange(changes=changes, transition=transition))

    def _leave_joint(self, lead: SimNode) -> SimNode | None:
        if lead.conf_state.auto_leave:
            return None
        return self._propose_conf(lead, ConfChange())

    def _propose_conf(self, lead: SimNode, cc: ConfChange) -> SimNode:
        desc = " ".join(f"{c.type.name}:{c.node_id}" for c in cc.changes) or "LEAVE_JOINT"
        try:
            lead.rawnode.propose_conf_change(cc)
        except ProposalDropped:
            self._event(f"conf change n{lead.id} {desc} dropped")
            return lead
        self._event(f"conf change n{lead.id} {desc} {cc.transition.name}")
        joint, auto_leave = enter_joint_needed(cc) if cc.changes else (False, False)
        if joint and auto_leave and self.rng.random() < self.rates.joint_transfer:
            self._transfer_away(lead)
        return lead

    def _transfer_away(self, lead: SimNode) -> None:
        """Start a leadership transfer while a joint change is in flight,
        mostly to a voter cut off by a partition, so that it fails
        and the leader stays, having had its automatic leave refused."""
        others = [v for v in lead.conf_state.voters if v != lead.id]
        if not others:
            return
        target = self.rng.choice(others)
        if self.rng.random() < 0.7:
            self.net.partition({target: 1})
            self._heal_at = self.now + self.rng.randint(30, 600)
            self.stats.partitions += 1
            self._event(f"partition isolate n{target}")
        lead.rawnode.transfer_leadership(target)
        self.stats.transfers += 1
        self.stats.joint_transfers += 1
        self._event(f"transfer n{lead.id} -> n{target} during a joint change")

    # --- settling and liveness ----------------------------------------------

    def _settling_action(self, touched: dict[int, SimNode]) -> None:
        if self.now % 50 == 0:
            lead = self.leader()
            if lead is not None and lead.conf_state.voters_outgoing:
                node = self._leave_joint(lead)
                if node is not None:
                    touched[node.id] = node

    def _settle(self) -> None:
        self.faulty = False
        self.figure8.stop(self.now)
        self.net.heal()
        self.net.faults = NetworkFaults.calm()
        self._event("settle: heal, restart, calm network")
        for node in self.nodes.values():
            node.crash_point = CrashPoint.NONE
            node.kill_at = 0
            if not node.alive and not node.removed and node.incarnation:
                node.restart_at = self.now
        deadline = self.now + QUIET_LIMIT
        while self.now < deadline:
            self._unit(faulty=False)
            self.now += 1
            if self.now % 25 == 0 and self._settled():
                break
        self.stats.steps = self.now
        self._liveness()

    def _settled(self) -> bool:
        return self._liveness_problem() is None

    def _check_joint_left(self) -> None:
        for node in self.nodes.values():
            r = node.raw.raft if node.alive and node.raw is not None else None
            if (
                r is None
                or r.state != StateRole.LEADER
                or not r.trk.config.auto_leave
                or r.lead_transferee != 0
                or r.pending_conf_index > r.raft_log.applied
            ):
                node.joint_stuck_since = 0
                continue
            if not node.joint_stuck_since:
                node.joint_stuck_since = self.now
            elif self.now - node.joint_stuck_since > JOINT_LEAVE_BOUND:
                raise Violation(
                    "joint configuration",
                    f"leader n{node.id} stayed {JOINT_LEAVE_BOUND} units in the applied joint "
                    f"configuration {node.conf_state} without proposing to leave it",
                )

    def _liveness_problem(self) -> str | None:
        lead = self.leader()
        if lead is None:
            return "no leader"
        if lead.conf_state.voters_outgoing:
            # Every joint configuration must end: an auto-leave one by the
            # leader, an explicit one by the leave _settling_action proposes.
            return f"still in the joint configuration {lead.conf_state}"
        need = max(self.acked.values(), default=0)
        for nid in sorted(members(lead.conf_state)):
            node = self.nodes[nid]
            if not node.alive:
                continue
            if node.leader != lead.id:
                return f"node {nid} follows {node.leader}, not leader {lead.id}"
            if node.applied < need:
                return f"node {nid} applied {node.applied} < acknowledged {need}"
        return None

    def _liveness(self) -> None:
        problem = self._liveness_problem()
        if problem is not None:
            raise Violation("liveness", f"after {QUIET_LIMIT} quiet units: {problem}")
        self._event(f"settled: acked={len(self.acked)}")


def _promise(m: Message) -> bool:
    """Whether the message tells its receiver something the sender's disk
    must keep (sim_checks.promises_kept)."""
    t = m.type
    return t == MessageType.VOTE or (
        t in (MessageType.VOTE_RESP, MessageType.APP_RESP) and not m.reject
    )


def run_schedule(
    seed: int,
    nodes: int = 3,
    steps: int = DEFAULT_STEPS,
    bug: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ScheduleResult:
    """Run one schedule; a broken invariant (or an exception from the core) is
    returned as the result's violation, never raised."""
    sim = Simulation(seed, nodes=nodes, steps=steps, bug=bug, log=log)
    result = ScheduleResult(seed, nodes, steps, bug, sim.stats, "")
    try:
        sim.run()
    except Violation as v:
        result.violation = v
    except Exception as exc:  # the core must never raise under the simulator
        result.violation = Violation("exception", f"{type(exc).__name__}: {exc}")
    result.at = sim.now
    sim.stats.steps = sim.now
    sim.stats.reads = sim.check.reads_checked
    result.digest = sim.digest()
    return result


@dataclass
class RunSummary:
    schedules: int = 0
    violations: list[ScheduleResult] = field(default_factory=list)
    stats: SimStats = field(default_factory=SimStats)

    def last_line(self) -> str:
        return (
            f"{self.schedules} schedules, {len(self.violations)} violations "
            f"({self.stats.summary()})"
        )


def run_many(
    seeds: Sequence[int],
    nodes: int = 3,
    steps: int = DEFAULT_STEPS,
    bug: str | None = None,
    fail_fast: bool = False,
    out: Callable[[str], None] | None = None,
    progress_every: int = 0,
) -> RunSummary:
    summary = RunSummary()
    started = time.monotonic()
    for seed in seeds:
        res = run_schedule(seed, nodes=nodes, steps=steps, bug=bug)
        summary.schedules += 1
        summary.stats.add(res.stats)
        if res.violation is not None:
            summary.violations.append(res)
            if out is not None:
                out(f"VIOLATION seed={seed} at t={res.at}: {res.violation}")
                out(f"  replay: {res.replay_command()}")
            if fail_fast:
                break
        if out is not None and progress_every and summary.schedules % progress_every == 0:
            out(
                f"... {summary.schedules} schedules, {len(summary.violations)} violations, "
                f"{time.monotonic() - started:.1f}s"
            )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=200, help="how many schedules to run")
    p.add_argument("--start-seed", type=int, default=0, help="first seed of the range")
    p.add_argument("--seed", type=int, default=None, help="run this one seed (replay)")
    p.add_argument("--nodes", type=int, default=3, help="initial cluster size (3..7)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="faulty time units")
    p.add_argument("--bug", choices=BUGS, default=None, help="inject a known bug into the core")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first violation")
    p.add_argument("-v", "--verbose", action="store_true", help="print the event trace")
    args = p.parse_args(argv)
    if not MIN_VOTERS <= args.nodes <= 7:
        p.error("--nodes must be between 3 and 7")

    def out(line: str) -> None:
        print(line, flush=True)

    if args.seed is not None:
        res = run_schedule(
            args.seed, args.nodes, args.steps, args.bug, log=out if args.verbose else None
        )
        summary = RunSummary(1, [res] if res.violation else [], res.stats)
        if res.violation is not None:
            out(f"VIOLATION seed={args.seed} at t={res.at}: {res.violation}")
            out(f"  replay: {res.replay_command()}")
        out(f"trace digest {res.digest}")
    else:
        seeds = range(args.start_seed, args.start_seed + args.seeds)
        summary = run_many(
            seeds,
            nodes=args.nodes,
            steps=args.steps,
            bug=args.bug,
            fail_fast=args.fail_fast,
            out=out,
            progress_every=max(1, min(200, args.seeds // 10)),
        )
    out(summary.last_line())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
