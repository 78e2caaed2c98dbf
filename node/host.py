"""The multi-Raft host: every local replica's Raft group, driven by one asyncio loop.

Each turn of the loop, in this order (the persistence contract of
consensus/storage.py):
  1. tick the groups when a tick is due, run queued operations (inbound
     messages, proposals, read requests, transport reports);
  2. collect a Ready from every group that has one;
  3. persist all of their hard states, entries and snapshots in ONE synced
     LevelDB write (group commit), in the writer thread;
  4. send all messages, one batch per peer;
  5. apply committed entries to the state machines, answer the writes and
     reads waiting on them;
  6. advance every group.
Nothing touches a RawNode between its ready() and advance() except this
loop: handlers only queue operations, so the core never sees re-entrancy.

This module is that driver only: the loop's turn, inbound delivery and its
guard, proposals, read barriers and the waiters they answer. What decides
things about the groups lives beside it, each part holding a reference to
the host and queueing its work on the loop like every other caller:
  node.snapshot_policy           when a group's log is snapshotted and compacted;
  node.cluster.system_group      the system group's replica: opening it, proposing;
  node.cluster.balance           where leaders go (balancing, TransferLeader);
  node.cluster.replica_moves     which partitions this node holds, their
                                 membership, Prepare/Change/DropReplica.
The host keeps thin methods of the old names (propose_system, compact_log,
change_replicas, ...) for its callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from consensus.codec import decode_conf_change
from consensus.leveldb_storage import GroupUpdate, LevelDBGroupStorage, LevelDBLogStore
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import (
    ConfChange,
    ConfState,
    ConsensusError,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    Ready,
    StateRole,
    UncommittedLimitExceeded,
)
from node import failstop, group_persist, raft_guard
from node.cluster.balance import LeaderBalancer
from node.cluster.replica_moves import ReplicaMoves
from node.cluster.state import SYSTEM_GROUP, ClusterState, Command
from node.cluster.system import SystemStateMachine
from node.cluster.system_group import SystemGroup
from node.commands import WaitKey
from node.config import NodeConfig
from node.errors import (
    NOT_APPLIED,
    DataLoss,
    DeadlineExceeded,
    NodeError,
    ResourceExhausted,
    Unavailable,
)
from node.log_clock import LeaderClock
from node.metrics.instruments import NodeMetrics
from node.rate_log import RateLimitedLog
from node.replica_catalog import ReplicaCatalog
from node.snapshot_policy import SnapshotPolicy
from node.snapshots import SnapshotManager, recover_on_open
from node.staleness import ReplicaFreshness
from node.state_machine import ApplyResult, PartitionStateMachine

log = logging.getLogger("medkv.host")
_refusals = RateLimitedLog(logging.getLogger("medkv.raft_guard"))

# Turn gathering (MultiRaftHost._gather): with at least GATHER_LOAD client
# requests waiting on this node, each turn first waits GATHER_S for more work.
GATHER_LOAD = 4
GATHER_S = 0.002

# Bounds on a leader's announcement of its confirmed pairs (node/staleness.py):
# announced pairs for groups that do not exist or from non-members are dropped.
MAX_ANNOUNCED_PAIRS = 4096


@dataclass
class Replica:
    """One local replica of one partition."""

    partition: int
    # The voters of the group's applied configuration (both halves of a joint
    # one), in preference order: the first is the preferred leader. Follows
    # conf changes (ReplicaMoves.sync_members); empty for a blank replica.
    replicas: tuple[int, ...]
    raw: RawNode
    storage: LevelDBGroupStorage
    sm: PartitionStateMachine
    leader: int = 0
    role: StateRole = StateRole.FOLLOWER
    term: int = 0
    commit: int = 0
    # What this replica can honestly say about its staleness (node/staleness.py).
    fresh: ReplicaFreshness = field(default_factory=lambda: ReplicaFreshness(0.25))
    since_snapshot: int = 0
    broken: str = ""  # set when its stored state failed an integrity check
    learners: tuple[int, ...] = ()  # the applied configuration's learners
    # While this replica leads: the clock that stamps its proposals (node.log_clock).
    clock: LeaderClock | None = None
    # A received snapshot is being installed (node.snapshots): its Ready waits,
    # unadvanced, and nothing reads or applies to the state machine meanwhile.
    installing: bool = False
    # When (time.monotonic) a message from each peer last reached this replica:
    # status judges a follower reachable by it, because the leader's
    # recent_active is cleared at every quorum check and so reads False for a
    # live follower until its next heartbeat response.
    heard: dict[int, float] = field(default_factory=dict)
    write_waiters: dict[WaitKey, list[asyncio.Future[ApplyResult]]] = field(
        default_factory=dict
    )
    reads_to_issue: list[asyncio.Future[int]] = field(default_factory=list)
    read_waiters: dict[bytes, list[asyncio.Future[int]]] = field(default_factory=dict)
    # The context of the ReadIndex round in flight for reads (b"": none) and
    # when (time.monotonic) it was issued: reads arriving meanwhile wait for it
    # to be answered and then share the next round (MultiRaftHost._issue_reads).
    read_round: bytes = b""
    read_round_at: float = 0.0
    applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    # Leader changes seen since the node started (medkv_partition_leader_changes_seen_total).
    leader_changes: int = 0

    @property
    def is_leader(self) -> bool:
        return self.role == StateRole.LEADER

    @property
    def applied(self) -> int:
        return self.sm.applied_index

    def staleness(self, mono: float, wall: float) -> float:
        """An upper bound on how far its applied state trails the truth: the
        age of the last confirmed commit index it has applied, -1.0 unknown."""
        return self.fresh.staleness(mono, wall)

    @property
    def lag(self) -> int:
        """Entries behind the leader's commit index as last announced."""
        return self.fresh.lag(self.commit)


class MultiRaftHost:
    def __init__(
        self,
        cfg: NodeConfig,
        log_store: LevelDBLogStore,
        make_state_machine: Callable[[int], PartitionStateMachine],
        send: Callable[[list[tuple[int, Message]]], None],
        on_purge_due: Callable[[int], None] = lambda partition: None,
        announce: Callable[[list[tuple[int, int, int, int, int]]], None] = lambda _pairs: None,
        placement: Any = None,
        metrics: NodeMetrics | None = None,
        catalog: ReplicaCatalog | None = None,
    ) -> None:
        self.cfg = cfg
        # Event-driven metrics (node.metrics); the rest is read from the replicas at scrape time.
        self.metrics = metrics if metrics is not None else NodeMetrics()
        self._announce = announce
        self._announcements: list[tuple[int, int, int, int, int]] = []
        self._closed_interval = cfg.raft.heartbeat_ticks * cfg.raft.tick_ms / 1000.0
        self._closed_give_up = cfg.raft.election_ticks * cfg.raft.tick_ms / 1000.0
        self._max_offset = cfg.raft.max_clock_offset_ms / 1000.0
        self._refusal_logged: dict[int, float] = {}  # sender -> when its refusals were logged
        # Told (on the loop) when a partition recorded an erasure obligation;
        # the purge itself runs off the Raft loop (node.erasure).
        self._on_purge_due = on_purge_due
        # Log-store work that must not interleave with Raft steps (which read
        # the log store): run on the writer thread between two turns.
        self._turn_jobs: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        # Partitions whose stored state failed an integrity check when the
        # node started: answered DATA_LOSS, served by their other replicas.
        self.broken_at_start: dict[int, str] = {}
        self.node_id = cfg.node_id
        self.log_store = log_store
        self._send = send
        # Where partitions live: the cluster state's replica sets (node.cluster),
        # or, for a host built alone, the configuration's consistent hashing.
        self.placement = placement if placement is not None else cfg.placement
        # The partitions' replicas on this node, and every Raft group the
        # loop drives: those and the system group's replica (node.cluster).
        self.replicas: dict[int, Replica] = {}
        self.groups: dict[int, Replica] = {}
        self._ops: list[Callable[[], None]] = []
        self._dirty: set[int] = set()  # partitions whose RawNode may have a Ready
        self._wake = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medkv-writer")
        self._read_ctx = itertools.count(1)
        self._waiter_seq = itertools.count()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._pending_writes = 0
        self._pending_reads = 0
        self._installs: set[asyncio.Task[None]] = set()
        self.snapshots = SnapshotManager(self)
        # The parts that work on the groups this loop drives, each in its own
        # module: when to snapshot, the system group, leaders, replica moves.
        self.snapshot_policy = SnapshotPolicy(self)
        self.system = SystemGroup(self)
        self.balancer = LeaderBalancer(self)
        self.started_at = time.monotonic()
        self.guard_limits = raft_guard.GuardLimits(
            node_id=cfg.node_id,
            peers=frozenset(cfg.peers),
            partitions=cfg.partitions,
            # A leader sends at most max_size_per_msg bytes of entries per APP;
            # every command is tens of bytes, so this count is never reached.
            max_entries=max(raft_guard.DEFAULT_MAX_ENTRIES, cfg.raft.max_size_per_msg // 16),
        )
        rng_seed = int.from_bytes(os.urandom(8), "big")
        self.moves = ReplicaMoves(self, catalog, make_state_machine, rng_seed)
        for p, blank in self.moves.partitions_to_open():
            try:
                self._open_replica(p, make_state_machine, rng_seed, blank)
            except group_persist.ImpossibleStoredState as e:
                log.error("%s", e, extra={"partition": p})
                self.broken_at_start[p] = str(e)
            except Exception as e:  # a damaged partition must not stop the others
                log.error(
                    "partition %d cannot be opened: %s", p, type(e).__name__,
                    extra={"partition": p},
                )
                self.broken_at_start[p] = self._broken_message(p)

    def _open_replica(
        self, p: int, make_state_machine: Callable[[int], PartitionStateMachine], rng_seed: int,
        blank: bool = False,
    ) -> None:
        """Open one local replica. blank: never bootstrap it (a replica
        PrepareReplica made: its membership comes with the leader's snapshot)."""
        cfg = self.cfg
        log_store = self.log_store
        reps = self.placement.replicas(p)
        fresh = not log_store.has_group(p) and not blank
        if fresh:
            log_store.bootstrap(p, ConfState(voters=tuple(sorted(reps))))
        storage = log_store.group(p)
        sm = make_state_machine(p)
        # A crash in the middle of a snapshot install is finished before Raft
        # reads the log, which the snapshot already truncated.
        recover_on_open(storage, sm)
        raw = RawNode(
            Config(
                id=self.node_id,
                storage=storage,
                rng=random.Random(rng_seed + p),
                election_tick=cfg.raft.election_ticks,
                heartbeat_tick=cfg.raft.heartbeat_ticks,
                applied=sm.applied_index,
                max_size_per_msg=cfg.raft.max_size_per_msg,
                max_inflight_msgs=cfg.raft.max_inflight_msgs,
                max_uncommitted_entries_size=cfg.raft.max_uncommitted_bytes,
                check_quorum=True,
                pre_vote=True,
            )
        )
        group_persist.check_stored_state(p, self.node_id, raw)
        self.replicas[p] = self.groups[p] = Replica(
            p, reps, raw, storage, sm, fresh=ReplicaFreshness(cfg.raft.max_clock_offset_ms / 1000.0)
        )
        self.moves.sync_members(self.replicas[p])
        self._dirty.add(p)
        if fresh and reps[0] == self.node_id:
            # The preferred replica of a new group campaigns at once, so a
            # new cluster has leaders in one round trip instead of after
            # randomized election timeouts.
            raw.campaign()

    # ---- the system group (node.cluster.system_group) -------------------

    def open_system(self, sm: SystemStateMachine, conf: ConfState, rng_seed: int = 0) -> None:
        """Run this node's replica of the system group (SystemGroup.open)."""
        self.system.open(sm, conf, rng_seed)

    @property
    def cluster_state(self) -> ClusterState | None:
        """The cluster's facts as this node's system replica has applied them."""
        return self.system.state

    async def propose_system(self, cmd: Command, timeout: float) -> ApplyResult:
        """Replicate one change of the cluster state (SystemGroup.propose)."""
        return await self.system.propose(cmd, timeout)

    def propose_system_conf_change(self, cc: ConfChange) -> None:
        """Propose a change of the system group's membership (SystemGroup)."""
        self.system.propose_conf_change(cc)

    def transfer_system_leadership(self, target: int) -> None:
        """Hand the system group's leadership to target (SystemGroup)."""
        self.system.transfer_leadership(target)

    def _broken_message(self, p: int) -> str:
        return (
            f"partition {p} failed an integrity check on node {self.node_id}; "
            "its other replicas still serve it"
        )

    # ---- lifecycle -------------------------------------------------------

    def start(self, on_fatal: Callable[[], None] = lambda: None) -> None:
        """Run the Raft loop; on_fatal is called if it ever ends by itself."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="raft-host")

        def ended(task: asyncio.Task[None]) -> None:
            if not self._stopping:
                exc = None if task.cancelled() else task.exception()
                log.critical("the Raft loop ended unexpectedly: %r; stopping the node", exc)
                on_fatal()

        self._task.add_done_callback(ended)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # it already failed; reported by start()'s callback
                pass
        for t in list(self._installs):
            t.cancel()  # an install cut short is finished at the next start
        self.snapshots.close()
        self._writer.shutdown(wait=True)

    @property
    def pending_writes(self) -> int:
        """Writes waiting on this node to commit and apply."""
        return self._pending_writes

    @property
    def writer(self) -> ThreadPoolExecutor:
        """The one thread that writes LevelDB for the host. Whoever must not
        interleave with its batches (key re-encryption) runs work on it."""
        return self._writer

    def _poke(self, r: Replica, action: Callable[[int], None], arg: int) -> None:
        """Run an action on a group's RawNode and look for its Ready this turn."""
        action(arg)
        self._dirty.add(r.partition)

    def _enqueue(self, op: Callable[[], None]) -> None:
        self._ops.append(op)
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick_s = self.cfg.raft.tick_ms / 1000.0
        next_tick = loop.time() + tick_s
        while not self._stopping:
            delay = next_tick - loop.time()
            if delay > 0 and not self._ops:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if self._pending_writes + self._pending_reads >= GATHER_LOAD:
                await self._gather(next_tick - loop.time())
            # One turn's failure must never end the loop: a node whose Raft
            # loop died would keep answering RPCs while its groups froze.
            try:
                if loop.time() >= next_tick:
                    self._tick_all()
                    # After a stall (a pause, a slow disk) tick once, not once per
                    # missed tick: a burst of ticks would start needless elections.
                    next_tick = max(next_tick + tick_s, loop.time())
                ops, self._ops = self._ops, []
                for op in ops:
                    try:
                        op()
                    except Exception as e:
                        failstop.check(e)
                        log.exception("queued operation failed")
                self._issue_reads()
                self._issue_closed()
                await self._process_ready()
                if self._turn_jobs:
                    await self._run_turn_jobs()
            except Exception as e:
                failstop.check(e)  # a disk that fails a write stops the node
                log.exception("raft turn failed")
                await asyncio.sleep(tick_s)

    @staticmethod
    async def _gather(until_tick: float) -> None:
        """Under load, let a turn's worth of work gather before the turn.

        Each turn costs about the same whatever it carries: a synced write,
        one transport batch per peer (a gRPC stream message each way, the
        dearest thing a turn does in Python), a Ready per group. Woken by
        every proposal and every inbound batch, a loaded node ran a turn per
        event with about one entry per group in it. Waiting GATHER_S first
        lets the proposals, reads and messages of those milliseconds share
        one turn, and the followers' turns shrink with the leaders' batches.
        Only while GATHER_LOAD client requests wait on this node: a lone
        request (concurrency 1) never waits. Never past the next tick."""
        wait = min(GATHER_S, until_tick)
        if wait > 0:
            await asyncio.sleep(wait)

    def _tick_all(self) -> None:
        for r in self.groups.values():
            if r.broken:
                continue
            try:
                r.raw.tick()
            except Exception as e:  # stored state failed to read back
                self.mark_broken(r, e)
        self._dirty.update(self.groups)

    # ---- the Ready cycle -------------------------------------------------

    async def _process_ready(self) -> None:
        # Only groups that something happened to can have a Ready: with many
        # idle partitions, asking every group every turn is most of the cost.
        dirty, self._dirty = self._dirty, set()
        work: list[tuple[Replica, Ready]] = []
        for p in dirty:
            r = self.groups.get(p)
            if r is None or r.broken or r.installing:
                continue
            try:
                if r.raw.has_ready():
                    work.append((r, r.raw.ready()))
            except Exception as e:  # storage failed its integrity check
                self.mark_broken(r, e)
        if not work:
            return
        # A group may have more ready after advance (e.g. a size-capped batch
        # of committed entries): look at these again next turn, right away.
        self._dirty.update(r.partition for r, _ in work)
        self._wake.set()
        updates = [
            GroupUpdate(r.partition, rd.hard_state, rd.entries, rd.snapshot)
            for r, rd in work
            if rd.hard_state is not None or rd.entries or rd.snapshot is not None
        ]
        if updates:
            sync = any(rd.must_sync for _, rd in work) or any(u.snapshot for u in updates)
            if self.cfg.test_only.skip_raft_fsync:  # planted bug for the fault-injection suite
                sync = False
            # Each group staged alone (node.group_persist): one that cannot be
            # persisted is disabled, the others are written in the one batch.
            failed = await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_timed, updates, sync
            )
            if failed:
                for gid, err in failed.items():
                    self._disable(self.groups[gid], "could not be persisted", err)
                work = [(r, rd) for r, rd in work if not r.broken]
        msgs = [(r.partition, m) for r, rd in work for m in rd.messages]
        if msgs:
            group_persist.send_isolated(
                self._send, msgs,
                lambda g, err: self._disable(self.groups[g], "could not be sent", err),
            )
        now = time.monotonic()
        for r, rd in work:
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                self._start_install(r, rd)
                continue
            try:
                self._apply_ready(r, rd, now)
                r.raw.advance(rd)
            except Exception as e:
                self.mark_broken(r, e)
        if self._announcements:
            pairs, self._announcements = self._announcements, []
            self._announce(pairs)
        for r, _ in work:
            if r.broken or r.installing:
                continue
            if r.sm.purge_due:  # recorded durably with the apply or restore
                r.sm.purge_due = False
                self._on_purge_due(r.partition)
            try:
                await self.snapshot_policy.maybe_snapshot(r)
            except Exception as e:  # one group's snapshot must not fail the others' turn
                failstop.check(e)
                _refusals.log(
                    logging.ERROR, ("snapshot", r.partition, type(e)),
                    "partition %d: snapshot failed: %s", r.partition, type(e).__name__,
                    exc_info=True,
                )

    def _write_timed(self, updates: list[GroupUpdate], sync: bool) -> dict[int, Exception]:
        """The turn's group-commit write, on the writer thread; a synced one is
        timed (medkv_log_fsync_duration_seconds: the write and its fsync)."""
        start = time.perf_counter()
        failed = self.log_store.write_isolated(updates, sync)
        if sync:
            self.metrics.fsync_seconds.observe(time.perf_counter() - start)
        return failed

    def _apply_ready(self, r: Replica, rd: Ready, now: float) -> None:
        if rd.soft_state is not None:
            was_leader = r.is_leader
            if rd.soft_state.leader not in (0, r.leader):
                r.leader_changes += 1
            r.leader = rd.soft_state.leader
            r.role = rd.soft_state.role
            if was_leader and not r.is_leader:
                r.fresh.not_leader()
                r.clock = None
                self._fail_waiters(r, Unavailable(self._not_leader_message(r), self.leader_hint(r)))
            elif r.is_leader and r.clock is None:
                # Stamps start from the log's own time, never from this node's
                # wall clock: one fast clock cannot expire sessions anywhere.
                r.clock = LeaderClock(r.sm.log_time_ms)
        if rd.hard_state is not None:
            r.term = rd.hard_state.term
            r.commit = max(r.commit, rd.hard_state.commit)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            # Installed already (_install); the log line is what operators grep for.
            r.since_snapshot = 0
            log.info(
                "partition %d: caught up from a snapshot at index %d",
                r.partition, rd.snapshot.meta.index, extra={"partition": r.partition},
            )
        if rd.committed_entries:
            self._apply_entries(r, rd)
            if r.clock is not None:
                r.clock.observe(r.sm.log_time_ms)
        for rs in rd.read_states:
            if rs.context == r.read_round:
                r.read_round = b""  # the reads queued meanwhile go next turn
            if r.fresh.confirm(rs.context, rs.index) and r.is_leader:
                self._queue_announcement(r)
            for fut in r.read_waiters.pop(rs.context, []):
                if not fut.done():
                    fut.set_result(rs.index)
        r.fresh.advance(r.applied)
        self._wake_applied(r)

    def _queue_announcement(self, r: Replica) -> None:
        """Tell the other replicas the newest pair this leader confirmed."""
        if r.fresh.newest is None:
            return
        index, wall = r.fresh.newest
        time_ms = int(wall * 1000)
        for peer in (*r.replicas, *r.learners):
            if peer != self.node_id:
                self._announcements.append((peer, r.partition, r.term, index, time_ms))

    def _start_install(self, r: Replica, rd: Ready) -> None:
        """Install a received snapshot off the Raft turn: Raft persisted its
        metadata; its data is staged. Other groups go on meanwhile; this one
        neither applies nor advances until the install is done."""
        r.installing = True
        task = asyncio.get_running_loop().create_task(self._install(r, rd))
        self._installs.add(task)
        task.add_done_callback(self._installs.discard)

    async def _install(self, r: Replica, rd: Ready) -> None:
        assert rd.snapshot is not None
        try:
            await self.snapshots.install(r.sm, rd.snapshot.meta)
            self._apply_ready(r, rd, time.monotonic())
            r.raw.advance(rd)
        except Exception as e:
            self.metrics.snapshot_install_failed.inc()
            self.mark_broken(r, e)
            return
        finally:
            r.installing = False
            self._dirty.add(r.partition)
            self._wake.set()
        self.metrics.snapshot_installed.inc()
        await self.on_snapshot_installed(r)

    async def on_snapshot_installed(self, r: Replica) -> None:
        """The one place where a snapshot install has completed: the state
        machine holds the snapshot's state, Raft's stored snapshot metadata
        agrees, the install marker and staging are gone. Work owed after a
        restore (e.g. erasure obligations) hooks in here.

        The install's last write recorded a snapshot-install erasure
        obligation (node.snapshots): the replaced state and log may hold data
        the leader had erased since. The purger carries it out off the loop."""
        r.sm.purge_due = False
        self._on_purge_due(r.partition)
        self.moves.sync_members(r)  # the snapshot carried the membership

    def _apply_entries(self, r: Replica, rd: Ready) -> None:
        run: list[tuple[int, int, bytes]] = []
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                # The state machine's applied index covers it (an empty entry
                # to it), or the next command would follow a gap.
                run.append((e.index, e.term, b""))
                self._apply_run(r, run)
                run = []
                r.raw.apply_conf_change(decode_conf_change(e.data))
                self.moves.sync_members(r)
            else:
                run.append((e.index, e.term, e.data))
        self._apply_run(r, run)
        r.since_snapshot += len(rd.committed_entries)

    def _apply_run(self, r: Replica, run: list[tuple[int, int, bytes]]) -> None:
        if not run:
            return
        start = time.perf_counter()
        results = r.sm.apply(run)
        self.metrics.apply_seconds.observe(time.perf_counter() - start)
        if not r.write_waiters:
            return
        for res in results:
            if res.wait_key is None:
                continue
            waiters = r.write_waiters.pop(res.wait_key, None)
            if waiters:
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(res)

    def _wake_applied(self, r: Replica) -> None:
        applied = r.applied
        while r.applied_waiters and r.applied_waiters[0][0] <= applied:
            _, _, fut = heapq.heappop(r.applied_waiters)
            if not fut.done():
                fut.set_result(None)

    async def _run_turn_jobs(self) -> None:
        jobs, self._turn_jobs = self._turn_jobs, []
        loop = asyncio.get_running_loop()
        for job, fut in jobs:
            try:
                result = await loop.run_in_executor(self._writer, job)
            except Exception as e:
                failstop.check(e)
                if not fut.done():
                    fut.set_exception(e)
            else:
                if not fut.done():
                    fut.set_result(result)

    async def _between_turns(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the writer thread between two Raft turns (the log store
        is single-threaded and Raft steps read it)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._turn_jobs.append((fn, fut))
        self._wake.set()
        return await fut

    async def compact_log(self, partition: int, index: int, conf: ConfState) -> bool:
        """Drop the group's log through `index` (SnapshotPolicy.compact_log):
        the purge of an erasure's log entries (node.erasure)."""
        return await self.snapshot_policy.compact_log(partition, index, conf)

    def mark_broken(self, r: Replica, e: BaseException) -> None:
        """Take this replica out of service after an integrity failure.

        It stops taking part in Raft (no ticks, no steps), so if it led, the
        others elect a new leader within an election timeout. It must not go
        on advertising itself as leader: routing tables and status report no
        leader, leader-only requests are pointed at another replica, and the
        writes in flight fail as retryable (they carry their WriteId, so a
        retry elsewhere can never apply twice).

        A failing disk is not an integrity failure of one partition: the
        whole node stops (node.failstop)."""
        failstop.check(e)
        if not r.broken:
            log.error(
                "partition %d disabled on this node: %s", r.partition, type(e).__name__,
                extra={"partition": r.partition},
            )
            r.broken = self._broken_message(r.partition)
            r.role = StateRole.FOLLOWER
            r.leader = 0
            self._fail_waiters(r, self._out_of_service(r.partition, r.broken))

    def _disable(self, r: Replica, what: str, e: Exception) -> None:
        """Take one group out of service because its own output failed (the
        others' turn goes on, node.group_persist); the log line says why."""
        failstop.check(e)
        if not r.broken:
            log.error(
                "partition %d: its Raft output %s (%s: %s); disabled on this node, "
                "its other replicas serve it", r.partition, what, type(e).__name__, e,
                extra={"partition": r.partition},
            )
        self.mark_broken(r, e)

    def _fail_waiters(self, r: Replica, err: NodeError) -> None:
        pending: list[asyncio.Future[Any]] = [f for fs in r.write_waiters.values() for f in fs]
        pending += [f for fs in r.read_waiters.values() for f in fs]
        pending += r.reads_to_issue
        r.write_waiters.clear()
        r.read_waiters.clear()
        r.reads_to_issue = []
        r.read_round = b""
        for f in pending:
            if not f.done():
                f.set_exception(err)

    # ---- inbound from the transport -------------------------------------

    def guard_view(self, group: int) -> raft_guard.GroupView | None:
        r = self.groups.get(group)
        if r is None:
            return None
        raw = r.raw
        # The system group hears every cluster member (the stream already
        # refused non-members): a node that joins replays the log from its
        # start and meets voters its replica does not know of yet.
        members = (
            raw.raft.trk.progress.keys()
            if raw.has_membership() and group != SYSTEM_GROUP else ()
        )
        return raft_guard.GroupView(
            term=raw.term, leader=raw.leader, members=frozenset(members),
            last_index=raw.last_index,
        )

    def check_inbound(self, group: int, m: Message, sender: int) -> None:
        """Raise a NodeError if m must not reach the core (node.raft_guard).

        A message to a replica this node took out of service is not the
        sender's fault: it passes here and is dropped on delivery."""
        r = self.groups.get(group)
        if (r is not None and r.broken) or (r is None and group in self.broken_at_start):
            return
        raft_guard.check_message(group, m, sender, self.guard_limits, self.guard_view(group))

    def screen(
        self, msgs: Sequence[tuple[int, Message]], sender: int
    ) -> tuple[list[tuple[int, Message]], NodeError | None]:
        """The messages that pass the guard, and the first refusal (logged, rate-limited)."""
        ok: list[tuple[int, Message]] = []
        first: NodeError | None = None
        for group, m in msgs:
            try:
                self.check_inbound(group, m, sender)
            except NodeError as e:
                log_refusal(sender, e)
                self.metrics.reject("raft_message_refused")
                first = first or e
                continue
            ok.append((group, m))
        return ok, first

    def deliver(self, msgs: Sequence[tuple[int, Message]], sender: int | None = None) -> None:
        """Queue inbound messages for the core. Each is checked again by the
        guard when it is stepped, against the replica's state at that moment."""

        def step() -> None:
            now = time.monotonic()
            for group, m in msgs:
                r = self.groups.get(group)
                if r is None or r.broken:
                    continue
                try:
                    self.check_inbound(group, m, m.frm if sender is None else sender)
                except NodeError as e:
                    log_refusal(m.frm if sender is None else sender, e)
                    continue
                r.heard[m.frm] = now
                if r.installing and m.type == MessageType.SNAP:
                    continue  # one install at a time; the leader retries after
                self._dirty.add(group)
                try:
                    r.raw.step(m)
                except ConsensusError as e:
                    log.debug(
                        "partition %d dropped a message: %s", group, type(e).__name__,
                        extra={"partition": group},
                    )
                except Exception as e:  # stored state failed to read back
                    self.mark_broken(r, e)

        self._enqueue(step)

    def deliver_closed(self, sender: int, pairs: Sequence[tuple[int, int, int, int]]) -> None:
        """A leader's confirmed pairs (group, term, index, time_ms). Only a
        member of the group is heard, and never a pair dated further ahead
        of this node's clock than max_clock_offset: its clock is off by more
        than the staleness arithmetic allows, so believing it could make this
        replica claim to be fresher than it is."""
        received = time.time()

        def op() -> None:
            refused = 0
            for group, _term, index, time_ms in pairs[:MAX_ANNOUNCED_PAIRS]:
                r = self.groups.get(group)
                if r is not None and (r.broken or not r.replicas):
                    continue  # out of service or blank: it answers no reads anyway
                if r is None or sender not in r.replicas or sender == self.node_id:
                    refused += 1
                    continue
                at = time_ms / 1000.0
                if at > received + self._max_offset:
                    refused += 1
                    continue
                r.fresh.heard(index, at)
                r.fresh.advance(r.applied)
            last = self._refusal_logged.get(sender, float("-inf"))
            if refused and time.monotonic() - last >= 10.0:  # a skewed clock would flood the log
                self._refusal_logged[sender] = time.monotonic()
                log.warning(
                    "refused %d confirmed pair(s) from node %d: unknown group, not a member, "
                    "or dated beyond max_clock_offset_ms=%d ahead of this node's clock",
                    refused, sender, self.cfg.raft.max_clock_offset_ms,
                )

        self._enqueue(op)

    def report_unreachable(self, peer: int, groups: Sequence[int]) -> None:
        def op() -> None:
            for g in groups:
                r = self.groups.get(g)
                if r is not None and not r.broken:
                    r.raw.report_unreachable(peer)
                    self._dirty.add(g)

        self._enqueue(op)

    def report_snapshot(self, group: int, peer: int, ok: bool) -> None:
        (self.metrics.snapshot_sent if ok else self.metrics.snapshot_send_failed).inc()

        def op() -> None:
            r = self.groups.get(group)
            if r is not None and not r.broken:
                r.raw.report_snapshot(peer, ok)
                self._dirty.add(group)

        self._enqueue(op)

    # ---- the service side -----------------------------------------------

    def replica(self, partition: int) -> Replica:
        r = self.groups.get(partition)
        if r is None and partition in self.broken_at_start:
            raise DataLoss(self.broken_at_start[partition])
        if r is None and partition == SYSTEM_GROUP:
            raise Unavailable(f"node {self.node_id} runs no system replica")
        if r is None:
            members = self.members(partition)
            holders = ",".join(str(n) for n in members)
            raise Unavailable(
                f"partition {partition} is not held by node {self.node_id}; its replicas are "
                f"nodes {holders}",
                self._hint_for(members[0]) if members else "",
            )
        if r.broken:
            raise DataLoss(r.broken)
        if not r.raw.is_member(self.node_id):
            raise self._not_member(r)
        if r.installing:
            raise Unavailable(
                f"partition {partition} on node {self.node_id} is installing a snapshot; "
                "retry, or read from another replica",
                self.leader_hint(r),
            )
        return r

    def _not_member(self, r: Replica) -> Unavailable:
        """What a read or write gets from a replica outside its group's
        configuration: a blank one still waiting for its data, or one removed."""
        p = r.partition
        others = [n for n in self.members(p) if n != self.node_id]
        hint = self.leader_hint(r) or (self._hint_for(others[0]) if others else "")
        if not r.raw.has_membership():
            return Unavailable(
                f"partition {p} on node {self.node_id} is a new replica that has not received "
                "its data yet (the group's leader sends it a snapshot once it is added); "
                "use another replica", hint,
            )
        return Unavailable(
            f"node {self.node_id} is no longer in partition {p}'s configuration; its replicas "
            f"are nodes {','.join(str(n) for n in self.members(p))}", hint,
        )

    def leader_hint(self, r: Replica) -> str:
        return self._hint_for(r.leader) if r.leader else ""

    def _hint_for(self, node: int) -> str:
        if node not in self.cfg.peers:
            return ""
        return f"{node}@{self.cfg.client_address(node)}"

    def _not_leader_message(self, r: Replica) -> str:
        if r.leader:
            return f"node {self.node_id} is not the leader of partition {r.partition}; node {r.leader} is"
        return f"partition {r.partition} has no leader right now (election in progress)"

    def _out_of_service(self, partition: int, why: str) -> Unavailable:
        """What a leader-only request to a damaged replica gets: a retryable
        answer that points at a healthy replica (which knows the leader)."""
        others = [n for n in self.members(partition) if n != self.node_id]
        return Unavailable(why, self._hint_for(others[0]) if others else "")

    def leader_replica(self, partition: int) -> Replica:
        r = self.replicas.get(partition)
        if r is not None and r.broken:
            raise self._out_of_service(partition, r.broken)
        if r is None and partition in self.broken_at_start:
            raise self._out_of_service(partition, self.broken_at_start[partition])
        r = self.replica(partition)
        if not r.is_leader:
            raise Unavailable(self._not_leader_message(r), self.leader_hint(r))
        return r

    def stamp_ms(self, r: Replica) -> int:
        """The log-clock stamp for a proposal this leader makes now (node.log_clock)."""
        if r.clock is None:  # leader before its first Ready was handled
            r.clock = LeaderClock(r.sm.log_time_ms)
        return r.clock.now_ms()

    async def propose(
        self,
        partition: int,
        wait_key: WaitKey,
        encode: Callable[[int], bytes],
        timeout: float,
    ) -> ApplyResult:
        """Replicate one command, encoded by encode(stamp) with this leader's
        log-clock stamp; answer once it is committed and applied here.

        Errors raised before the command reached the Raft log carry kind
        NOT_APPLIED: a client may then know that attempt applied nothing."""
        failed = self.metrics.proposals_failed
        try:
            r = self.leader_replica(partition)
        except NodeError as e:
            failed["not_leader"].inc()
            e.kind = e.kind or NOT_APPLIED
            raise
        if self._pending_writes >= self.cfg.limits.max_pending_proposals:
            failed["too_many_pending_writes"].inc()
            self.metrics.reject("too_many_pending_writes")
            raise ResourceExhausted(
                f"node {self.node_id} has {self._pending_writes} writes in flight; retry later",
                kind=NOT_APPLIED,
            )
        data = encode(self.stamp_ms(r))
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        r.write_waiters.setdefault(wait_key, []).append(fut)

        def op() -> None:
            if fut.done():
                return
            self._dirty.add(partition)
            try:
                r.raw.propose(data)
            except UncommittedLimitExceeded:
                self.metrics.reject("uncommitted_bytes_limit")
                waiters = r.write_waiters.get(wait_key, [])
                if fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        r.write_waiters.pop(wait_key, None)
                fut.set_exception(ResourceExhausted(
                    f"partition {partition}: its leader on node {self.node_id} holds "
                    f"{self.cfg.raft.max_uncommitted_bytes} bytes of writes not yet committed "
                    "([raft] max_uncommitted_bytes); retry later",
                    kind=NOT_APPLIED, partition=partition,
                ))
            except ProposalDropped:
                waiters = r.write_waiters.get(wait_key, [])
                if fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        r.write_waiters.pop(wait_key, None)
                fut.set_exception(
                    Unavailable(self._not_leader_message(r), self.leader_hint(r), NOT_APPLIED)
                )

        self._pending_writes += 1
        self._enqueue(op)
        try:
            return await asyncio.wait_for(fut, timeout)
        except ResourceExhausted:
            failed["uncommitted_bytes_limit"].inc()
            raise
        except NodeError:  # dropped by Raft, leadership lost, replica disabled
            failed["leadership_lost"].inc()
            raise
        except TimeoutError:
            failed["timeout"].inc()
            raise DeadlineExceeded(
                f"write to partition {partition} not committed within {timeout:.1f}s; "
                "it may still apply: retry with the same write id"
            ) from None
        finally:
            self._pending_writes -= 1
            waiters = r.write_waiters.get(wait_key)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    r.write_waiters.pop(wait_key, None)

    async def read_barrier(self, partition: int, timeout: float) -> Replica:
        """ReadIndex: return the leader replica once its state reflects every
        write acknowledged before this call (DESIGN: linearizable reads)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        r = self.leader_replica(partition)
        fut: asyncio.Future[int] = loop.create_future()
        r.reads_to_issue.append(fut)
        self._wake.set()
        self._pending_reads += 1
        try:
            try:
                index = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise Unavailable(
                    f"partition {partition}: leadership could not be confirmed within "
                    f"{timeout:.1f}s",
                    self.leader_hint(r),
                ) from None
            await self.wait_applied(r, index, max(0.0, deadline - loop.time()))
        finally:
            self._pending_reads -= 1
        return r

    def _issue_reads(self) -> None:
        """One ReadIndex round serves every read queued before it was issued,
        and each group has at most one such round in flight: reads arriving
        while one is out wait for its answer and then share the next round.
        Under load a round (a heartbeat to every follower and their acks)
        thus serves every read of a round trip, not of one loop turn.

        Still linearizable: a read is only ever served by a round issued
        after it arrived, so the index it waits for is at least the commit
        index of that moment. A round unanswered for an election timeout (its
        heartbeats lost while this node still leads) no longer holds the
        queue back: the next round is issued anyway."""
        mono = time.monotonic()
        for r in self.replicas.values():
            if not r.reads_to_issue or r.broken:
                continue
            if (
                r.read_round
                and r.is_leader
                and mono - r.read_round_at < self._closed_give_up
            ):
                continue  # wait for the round in flight; the next one is theirs
            futs, r.reads_to_issue = r.reads_to_issue, []
            if not r.is_leader:
                err = Unavailable(self._not_leader_message(r), self.leader_hint(r))
                for f in futs:
                    if not f.done():
                        f.set_exception(err)
                continue
            ctx = next(self._read_ctx).to_bytes(8, "big")
            self._dirty.add(r.partition)
            try:
                r.raw.read_index(ctx)
                r.fresh.issue(ctx, time.monotonic(), time.time())
            except ConsensusError:
                # The core stepped down in this very turn; our role catches up
                # with the next Ready. The client retries on the new leader.
                err = Unavailable(self._not_leader_message(r), self.leader_hint(r))
                for f in futs:
                    if not f.done():
                        f.set_exception(err)
                continue
            r.read_waiters[ctx] = futs
            r.read_round, r.read_round_at = ctx, mono

    def _issue_closed(self) -> None:
        """Each leader confirms its commit index once per heartbeat interval
        (a ReadIndex round, answered by the next heartbeats' acks), so it
        knows its own staleness and has a pair to announce to its followers."""
        mono = time.monotonic()
        for r in self.replicas.values():
            if r.broken or not r.is_leader:
                continue
            if not r.fresh.closed_due(mono, self._closed_interval, self._closed_give_up):
                continue
            ctx = next(self._read_ctx).to_bytes(8, "big")
            try:
                r.raw.read_index(ctx)
            except ConsensusError:
                continue  # stepped down this turn; the soft state follows
            r.fresh.issue(ctx, mono, time.time(), closed=True)
            self._dirty.add(r.partition)

    async def wait_applied(self, r: Replica, index: int, timeout: float) -> None:
        if r.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(r.applied_waiters, (index, next(self._waiter_seq), fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"partition {r.partition} on node {self.node_id} has applied up to index "
                f"{r.applied}, not {index}, after {timeout:.1f}s"
            ) from None

    # ---- leaders (node.cluster.balance) ----------------------------------

    async def transfer_leader(self, partition: int, target: int, timeout: float) -> int:
        """An operator's TransferLeader (LeaderBalancer.transfer)."""
        return await self.balancer.transfer(partition, target, timeout)

    def balance_leaders(self) -> None:
        """Hand led partitions to their preferred replicas (LeaderBalancer.balance)."""
        self.balancer.balance()

    # ---- membership and replica moves (node.cluster.replica_moves) -------

    @property
    def catalog(self) -> ReplicaCatalog:
        """Which partitions this node holds, on its disk (node.replica_catalog)."""
        return self.moves.catalog

    @staticmethod
    def conf_of(r: Replica) -> ConfState:
        """The replica's applied configuration (conf changes apply with the entries)."""
        return r.raw.raft.trk.conf_state()

    def set_members(
        self, partition: int, voters: Sequence[int], learners: Sequence[int] = ()
    ) -> None:
        """The control plane's replica set of a partition (ReplicaMoves.set_members)."""
        self.moves.set_members(partition, voters, learners)

    def members(self, partition: int) -> tuple[int, ...]:
        """The partition's voters as this node best knows them (ReplicaMoves.members)."""
        return self.moves.members(partition)

    def held_partitions(self) -> list[int]:
        """Every partition this node holds a replica of (in service or not)."""
        return sorted(set(self.replicas) | set(self.broken_at_start))

    async def prepare_replica(self, partition: int, timeout: float = 10.0) -> bool:
        """PrepareReplica: open a blank replica here (ReplicaMoves.prepare_replica)."""
        return await self.moves.prepare_replica(partition, timeout)

    async def change_replicas(
        self, partition: int, add: Sequence[int], remove: Sequence[int], timeout: float
    ) -> tuple[int, ...]:
        """ChangeReplicas on the leader (ReplicaMoves.change_replicas)."""
        return await self.moves.change_replicas(partition, add, remove, timeout)

    async def drop_replica(self, partition: int, force: bool = False) -> bool:
        """DropReplica: delete this node's replica (ReplicaMoves.drop_replica)."""
        return await self.moves.drop_replica(partition, force)


def log_refusal(sender: int, e: NodeError) -> None:
    """One line per kind of refused Raft message and sender, rate-limited."""
    _refusals.warning(
        ("raft", sender, e.code),
        "refused a Raft message from node %d (%s): %s", sender, e.code.name, e.message,
    )
