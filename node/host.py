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
from functools import partial
from typing import Any

from consensus.codec import decode_conf_change
from consensus.confchange import Changer
from consensus.leveldb_storage import (
    GroupUpdate,
    LevelDBGroupStorage,
    LevelDBLogStore,
    SnapshotOutOfDateError,
)
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
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
from node.cluster.state import SYSTEM_GROUP, ClusterState, Command
from node.cluster.system import REFUSED, SystemStateMachine, wait_key
from node.commands import WaitKey
from node.config import NodeConfig
from node.errors import (
    NOT_APPLIED,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NodeError,
    ResourceExhausted,
    Unavailable,
)
from node.log_clock import LeaderClock
from node.metrics.instruments import NodeMetrics
from node.rate_log import RateLimitedLog
from node.replica_catalog import ReplicaCatalog, ReplicaState
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
    # conf changes (MultiRaftHost._sync_members); empty for a blank replica.
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
        self.system_sm: SystemStateMachine | None = None
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
        self._init_moves(catalog, make_state_machine, rng_seed)
        for p, blank in self._partitions_to_open():
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
        self._sync_members(self.replicas[p])
        self._dirty.add(p)
        if fresh and reps[0] == self.node_id:
            # The preferred replica of a new group campaigns at once, so a
            # new cluster has leaders in one round trip instead of after
            # randomized election timeouts.
            raw.campaign()

    def open_system(self, sm: SystemStateMachine, conf: ConfState, rng_seed: int = 0) -> None:
        """Run this node's replica of the system group (node.cluster.system).

        conf is the group's initial membership, used only when the group is
        new here: the same on every initial member, derived from the state
        every one of them starts from."""
        cfg = self.cfg
        fresh = not self.log_store.has_group(SYSTEM_GROUP)
        if fresh:
            self.log_store.bootstrap(SYSTEM_GROUP, conf)
        storage = self.log_store.group(SYSTEM_GROUP)
        raw = RawNode(
            Config(
                id=self.node_id,
                storage=storage,
                rng=random.Random(rng_seed or int.from_bytes(os.urandom(8), "big")),
                election_tick=cfg.raft.election_ticks,
                heartbeat_tick=cfg.raft.heartbeat_ticks,
                applied=sm.applied_index,
                max_size_per_msg=cfg.raft.max_size_per_msg,
                max_inflight_msgs=cfg.raft.max_inflight_msgs,
                check_quorum=True,
                pre_vote=True,
            )
        )
        group_persist.check_stored_state(SYSTEM_GROUP, self.node_id, raw)
        voters = tuple(sorted(raw.status().conf_state.voters))
        r = Replica(
            SYSTEM_GROUP, voters, raw, storage, sm,  # type: ignore[arg-type]
            fresh=ReplicaFreshness(cfg.raft.max_clock_offset_ms / 1000.0),
        )
        self.groups[SYSTEM_GROUP] = r
        self.system_sm = sm
        self._dirty.add(SYSTEM_GROUP)
        if fresh and conf.voters and conf.voters[0] == self.node_id:
            raw.campaign()  # a new cluster's system group has a leader in one round trip

    @property
    def cluster_state(self) -> ClusterState | None:
        """The cluster's facts as this node's system replica has applied them."""
        return self.system_sm.state if self.system_sm is not None else None

    async def propose_system(self, cmd: Command, timeout: float) -> ApplyResult:
        """Replicate one change of the cluster state and wait until this
        node's own system replica applied it. Any member may propose: a
        follower's proposal is forwarded to the system group's leader by Raft,
        and every replica applies every entry, so the proposer learns the
        outcome from its own apply. A refusal is FAILED_PRECONDITION with the
        state machine's reason."""
        r = self.groups.get(SYSTEM_GROUP)
        if r is None or r.broken:
            raise Unavailable(f"node {self.node_id} runs no system replica", kind=NOT_APPLIED)
        if not r.leader:
            raise Unavailable(
                "the system group has no leader right now (election in progress); retry",
                kind=NOT_APPLIED,
            )
        key = wait_key(cmd.request)
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        r.write_waiters.setdefault(key, []).append(fut)
        data = cmd.encode()

        def op() -> None:
            if fut.done():
                return
            self._dirty.add(SYSTEM_GROUP)
            try:
                r.raw.propose(data)
            except ProposalDropped:
                fut.set_exception(Unavailable(
                    "the system group dropped the proposal (no leader, or a leader transfer); retry",
                    kind=NOT_APPLIED,
                ))

        self._enqueue(op)
        try:
            res = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"a cluster change ({cmd.kind}) was not applied within {timeout:.1f}s; "
                "it may still apply"
            ) from None
        finally:
            waiters = r.write_waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    r.write_waiters.pop(key, None)
        if res.error_code == REFUSED:
            raise FailedPrecondition(res.message)
        return res

    def propose_system_conf_change(self, cc: ConfChange) -> None:
        """Propose a change of the system group's membership (its leader only;
        node.cluster.reconciler). The core drops it while another is pending."""
        r = self.groups.get(SYSTEM_GROUP)
        if r is None or r.broken:
            return

        def op() -> None:
            try:
                r.raw.propose_conf_change(cc)
            except ProposalDropped:
                return  # not the leader any more, or a transfer: the next round retries
            self._dirty.add(SYSTEM_GROUP)

        self._enqueue(op)

    def transfer_system_leadership(self, target: int) -> None:
        r = self.groups.get(SYSTEM_GROUP)
        if r is not None and not r.broken:
            self._enqueue(partial(self._poke, r, r.raw.transfer_leadership, target))

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
                await self._maybe_snapshot(r)
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
        self._sync_members(r)  # the snapshot carried the membership

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
                self._sync_members(r)
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

    async def _maybe_snapshot(self, r: Replica) -> None:
        """Snapshot a partition every snapshot_every applied entries and compact
        its log, keeping a tail so a briefly slow follower still catches up
        from the log instead of a full snapshot. Awaited inside the turn: the
        log store is single-threaded and no Raft step may read it meanwhile."""
        if r.broken or r.since_snapshot < self.cfg.raft.snapshot_every or r.partition == SYSTEM_GROUP:
            return  # the system log stays whole: a replica that joins replays it
        index = r.applied
        conf = r.raw.status().conf_state
        keep = self.cfg.raft.keep_after_snapshot
        r.since_snapshot = 0

        def persist() -> None:
            # Metadata only: the data is the state machine itself, streamed
            # from a LevelDB snapshot when a follower needs it (node.snapshots).
            self.log_store.create_snapshot(r.partition, index, conf, b"")
            if index > keep:
                self.log_store.compact(r.partition, index - keep)

        await asyncio.get_running_loop().run_in_executor(self._writer, persist)

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

    async def compact_log(self, partition: int, index: int, conf: ConfState) -> bool:
        """Store a snapshot at applied index `index` with membership `conf`
        (metadata only: its data is read from the state machine when one is
        sent, node.snapshots) and drop the group's log through `index`: the
        purge of an erasure's log entries. Runs between two Raft turns, on the
        writer thread (the Raft core reads the log store). False when there was nothing to do: the
        log starts past `index` already (a snapshot install dropped it) or
        the replica is out of service."""
        r = self.replicas.get(partition)
        if r is None or r.broken:
            return False

        def persist() -> bool:
            if r.broken or index <= r.storage.first_index() - 1:
                return False
            # A snapshot at or past index may be stored already (a periodic
            # one, or one installed meanwhile), but it kept entries behind it
            # for slow followers: the log must still go through index.
            with contextlib.suppress(SnapshotOutOfDateError):
                self.log_store.create_snapshot(partition, index, conf, b"")
            self.log_store.compact(partition, index)
            return True

        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._turn_jobs.append((persist, fut))
        self._wake.set()
        done = await fut
        if done:
            r.since_snapshot = 0
            log.info(
                "partition %d: dropped the Raft log through index %d", partition, index,
                extra={"partition": partition},
            )
        return done

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

    async def transfer_leader(self, partition: int, target: int, timeout: float) -> int:
        if target not in self.cfg.peers:
            raise InvalidArgument(f"target_node: node {target} is not a member of the cluster")
        holders = self.members(partition)
        if target not in holders:
            raise FailedPrecondition(
                f"node {target} holds no replica of partition {partition}; its replicas are "
                f"nodes {','.join(str(n) for n in holders)}"
            )
        r = self.leader_replica(partition)
        self._enqueue(lambda: self._poke(r, r.raw.transfer_leadership, target))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if r.leader == target:
                return target
            await asyncio.sleep(0.05)
        raise DeadlineExceeded(f"partition {partition}: transfer to node {target} did not complete")

    def balance_leaders(self) -> None:
        """Hand each partition this node leads to its preferred replica, when
        that replica is up to date: leaders spread evenly over the nodes."""
        state = self.cluster_state
        for r in self.replicas.values():
            if not r.is_leader or r.broken:
                continue
            if not r.replicas or self._moving(r):
                continue  # a replica move decides its leader itself
            # An operator's TransferLeader pins the partition's leader in the
            # cluster state: balancing respects it instead of undoing it.
            preferred = r.replicas[0]
            if state is not None and r.partition < state.partitions:
                preferred = state.preferred_leader(r.partition)
                if preferred not in r.replicas:
                    preferred = r.replicas[0]
            if preferred == self.node_id:
                continue
            st = r.raw.status()
            pr = st.progress.get(preferred)
            if pr is not None and pr.recent_active and pr.match >= st.commit:
                self._enqueue(partial(self._poke, r, r.raw.transfer_leadership, preferred))

    # ---- replica moves (issue 12) ------------------------------------------
    #
    # The control plane moves a replica with three node-side primitives:
    # prepare_replica on the new node (a blank replica), change_replicas on the
    # group's leader (learner, catch-up, one joint change), drop_replica on the
    # node that was removed. Which partitions this node holds is kept on disk
    # (node.replica_catalog), not recomputed from the configured placement.

    def _init_moves(
        self,
        catalog: ReplicaCatalog | None,
        make_state_machine: Callable[[int], PartitionStateMachine],
        rng_seed: int,
    ) -> None:
        self.catalog = catalog if catalog is not None else ReplicaCatalog()
        self._make_sm = make_state_machine
        self._rng_seed = rng_seed
        # partition -> (voters, learners) as the control plane last set them
        # (set_members): the preference order, and hints for partitions not held.
        self._members: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # partition -> nodes a change driven by this leader is removing.
        self._moves: dict[int, frozenset[int]] = {}
        self._move_locks: dict[int, asyncio.Lock] = {}

    def _partitions_to_open(self) -> list[tuple[int, bool]]:
        """(partition, blank) for every replica this node holds, from the
        catalog (seeded from the placement the first time); a drop a crash
        interrupted is finished here, and that replica is not opened."""
        cat = self.catalog
        if not cat.exists:
            cat.seed(self.placement.partitions_on(self.node_id))
        out: list[tuple[int, bool]] = []
        for p, state in sorted(cat.entries().items()):
            if state == ReplicaState.DROPPING:
                log.warning(
                    "partition %d: a DropReplica did not finish; deleting the rest of its data",
                    p, extra={"partition": p},
                )
                self._delete_partition_sync(p)
                continue
            if not 0 <= p < self.cfg.partitions:
                log.error("partition %d is held by this node but the cluster has %d partitions; "
                          "not opened", p, self.cfg.partitions)
                continue
            out.append((p, state == ReplicaState.BLANK))
        return out

    def _delete_partition_sync(self, p: int) -> None:
        self.log_store.destroy_group(p)
        while self.catalog.delete_some(p):
            pass
        self.catalog.compact(p)
        self.catalog.remove(p)

    @staticmethod
    def conf_of(r: Replica) -> ConfState:
        """The replica's applied configuration (conf changes apply with the entries)."""
        return r.raw.raft.trk.conf_state()

    def _sync_members(self, r: Replica) -> None:
        """Replica.replicas and .learners from the group's applied
        configuration: voters of the incoming half first, in the preference
        order (set_members, else the placement), then any others. For an
        unchanged cluster that is exactly the placement's tuple."""
        cs = self.conf_of(r)
        incoming = set(cs.voters)
        voters = incoming | set(cs.voters_outgoing)
        known = self._members.get(r.partition)
        if known is not None:
            pref = known[0]
        elif 0 <= r.partition < self.cfg.partitions:
            pref = self.placement.replicas(r.partition)
        else:  # the system group (node.cluster): keeps its own order
            pref = r.replicas
        rank = {n: k for k, n in enumerate(pref)}
        r.replicas = tuple(
            sorted(voters, key=lambda n: (n not in incoming, rank.get(n, len(rank)), n))
        )
        r.learners = tuple(sorted((set(cs.learners) | set(cs.learners_next)) - voters))

    def set_members(
        self, partition: int, voters: Sequence[int], learners: Sequence[int] = ()
    ) -> None:
        """The control plane's replica set of a partition: its voters in
        preference order (the first is the preferred leader) and learners.
        A replica held here keeps following its group's actual configuration;
        this orders it, and answers for partitions this node does not hold."""
        self._members[partition] = (tuple(voters), tuple(learners))
        r = self.replicas.get(partition)
        if r is not None and r.raw.has_membership():
            self._sync_members(r)

    def members(self, partition: int) -> tuple[int, ...]:
        """The partition's voters as this node best knows them: its own
        replica's configuration, else set_members, else the placement."""
        r = self.replicas.get(partition)
        if r is not None and r.replicas and not r.broken:
            return r.replicas
        known = self._members.get(partition)
        if known is not None and known[0]:
            return known[0]
        if not 0 <= partition < self.cfg.partitions:
            return ()
        return self.placement.replicas(partition)

    def held_partitions(self) -> list[int]:
        """Every partition this node holds a replica of (in service or not)."""
        return sorted(set(self.replicas) | set(self.broken_at_start))

    def _moving(self, r: Replica) -> bool:
        return bool(r.learners) or r.partition in self._moves or bool(
            self.conf_of(r).voters_outgoing
        )

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

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self.cfg.partitions:
            raise InvalidArgument(
                f"partition {partition} does not exist (0..{self.cfg.partitions - 1})"
            )

    async def _between_turns(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the writer thread between two Raft turns (the log store
        is single-threaded and Raft steps read it)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._turn_jobs.append((fn, fut))
        self._wake.set()
        return await fut

    @contextlib.asynccontextmanager
    async def _move_lock(self, partition: int, timeout: float) -> Any:
        lock = self._move_locks.setdefault(partition, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), max(0.0, timeout))
        except TimeoutError:
            raise Unavailable(
                f"another replica change of partition {partition} is in progress on node "
                f"{self.node_id}; retry"
            ) from None
        try:
            yield
        finally:
            lock.release()

    async def prepare_replica(self, partition: int, timeout: float = 10.0) -> bool:
        """Open a blank replica of the partition here (PrepareReplica). It
        takes no part in elections and serves nothing until the group's
        leader, once it adds this node, sends it a snapshot, which carries the
        membership. True if it was opened now; False if this node already
        holds the partition (blank or not): safe to retry."""
        self._check_partition(partition)
        if partition in self.broken_at_start:
            raise FailedPrecondition(self.broken_at_start[partition])
        async with self._move_lock(partition, timeout):
            if partition in self.replicas:
                return False
            if self.catalog.state(partition) == ReplicaState.DROPPING:
                raise Unavailable(
                    f"partition {partition} is being dropped from node {self.node_id}; retry "
                    "once DropReplica finished"
                )

            def persist() -> bool:
                if self.log_store.has_group(partition):
                    return False
                self.catalog.set(partition, ReplicaState.BLANK)
                self.log_store.group(partition)
                return True

            if not await self._between_turns(persist):
                raise FailedPrecondition(
                    f"node {self.node_id} has Raft state of partition {partition} without "
                    "holding it; DropReplica with force=true removes it"
                )
            self._open_replica(partition, self._make_sm, self._rng_seed, blank=True)
            self._wake.set()
            log.info("partition %d: blank replica opened; waiting for the leader's snapshot",
                     partition, extra={"partition": partition})
            return True

    async def change_replicas(
        self, partition: int, add: Sequence[int], remove: Sequence[int], timeout: float
    ) -> tuple[int, ...]:
        """On the partition's leader: add each node of `add` as a learner,
        wait until it has caught up, then make ONE joint change that promotes
        them and removes `remove`, and wait until the joint configuration is
        left. Returns the voters. Idempotent: a group already at the target
        answers at once; a joint configuration or learners left by an earlier
        attempt are continued from. A leader to be removed hands leadership to
        a voter that stays and answers UNAVAILABLE with its hint: the caller
        retries there (see docs in proto/medkv/v1/admin.proto)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        add_s, rem_s = set(add), set(remove)
        self._check_partition(partition)
        for n in sorted(add_s | rem_s):
            if n not in self.cfg.peers:
                raise InvalidArgument(f"node {n} is not a member of the cluster")
        if add_s & rem_s:
            raise InvalidArgument(
                f"node(s) {sorted(add_s & rem_s)} both added and removed"
            )
        r = self.leader_replica(partition)
        async with self._move_lock(partition, deadline - loop.time()):
            self._moves[partition] = frozenset(rem_s)
            try:
                return await self._change_replicas(r, add_s, rem_s, deadline)
            finally:
                self._moves.pop(partition, None)

    async def _change_replicas(
        self, r: Replica, add_s: set[int], rem_s: set[int], deadline: float
    ) -> tuple[int, ...]:
        p = r.partition
        await self._wait_conf(r, lambda cs: not cs.voters_outgoing, deadline,
                              "an earlier change's joint configuration was not left", True)
        cs = self.conf_of(r)
        voters = set(cs.voters)
        target = (voters - rem_s) | add_s
        if not target:
            raise FailedPrecondition(
                f"partition {p}: the change removes every voter ({sorted(voters)})"
            )
        drop_learners = rem_s & set(cs.learners)
        if target == voters and not drop_learners:
            return r.replicas
        if not r.is_leader:
            raise Unavailable(self._not_leader_message(r), self.leader_hint(r))
        # The node that drives the move prefers the target's voters as leaders.
        pref = [n for n in r.replicas if n in target] + sorted(target - set(r.replicas))
        self._members[p] = (tuple(pref), ())
        self._sync_members(r)
        if self.node_id in rem_s:
            staying = [n for n in r.replicas if n in target and n in voters]
            if staying:
                new = await self._hand_over(r, staying, deadline)
                raise Unavailable(
                    f"partition {p}: node {self.node_id} is to be removed, so it handed "
                    f"leadership to node {new}, which completes the change: retry there",
                    self._hint_for(new),
                )
            # No voter stays: the joint change removes the leader, which steps
            # down when the joint configuration is left.
        for n in sorted(add_s - voters - set(cs.learners)):
            cc = ConfChange((ConfChangeSingle(ConfChangeType.ADD_LEARNER, n),))
            await self._propose_conf(r, cc, deadline)
            await self._wait_conf(r, partial(_has_learner, n), deadline,
                                  f"node {n} was not added as a learner", True)
        promote = sorted(target - voters)
        await self._wait_caught_up(r, promote, deadline)
        cs = self.conf_of(r)
        changes = [ConfChangeSingle(ConfChangeType.ADD_VOTER, n) for n in promote]
        changes += [
            ConfChangeSingle(ConfChangeType.REMOVE_NODE, n)
            for n in sorted((set(cs.voters) - target) | (rem_s & set(cs.learners)))
        ]
        cc = ConfChange(tuple(changes), ConfChangeTransition.JOINT_IMPLICIT)
        try:  # checked against the configuration first: a committed bad change breaks the group
            Changer(r.raw.raft.trk, r.raw.last_index).apply(cc)
        except ConsensusError as e:
            raise FailedPrecondition(f"partition {p}: the change cannot apply: {e}") from None
        await self._propose_conf(r, cc, deadline)
        await self._wait_conf(
            r, lambda cs: not cs.voters_outgoing and set(cs.voters) == target, deadline,
            "the joint configuration was entered but not yet left (leaving is automatic)",
            False,
        )
        log.info("partition %d: voters are now %s", p, sorted(target), extra={"partition": p})
        return r.replicas

    async def _propose_conf(self, r: Replica, cc: ConfChange, deadline: float) -> None:
        """Propose a conf change, retrying while another one is still being
        applied (the core accepts one at a time)."""
        loop = asyncio.get_running_loop()
        while True:
            if not r.is_leader or r.broken:
                raise Unavailable(self._not_leader_message(r), self.leader_hint(r))
            fut: asyncio.Future[str] = loop.create_future()

            def op(fut: asyncio.Future[str] = fut) -> None:
                if fut.done():
                    return
                self._dirty.add(r.partition)
                try:
                    r.raw.propose_conf_change(cc)
                except ProposalDropped as e:
                    fut.set_result(str(e) or type(e).__name__)
                else:
                    fut.set_result("")

            self._enqueue(op)
            try:
                why = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                why = "not proposed in time"
            if not why:
                return
            if loop.time() >= deadline:
                raise DeadlineExceeded(
                    f"partition {r.partition}: a configuration change was not accepted before "
                    f"the deadline ({why}); retry"
                )
            await asyncio.sleep(0.05)

    async def _wait_conf(
        self, r: Replica, done: Callable[[ConfState], bool], deadline: float, what: str,
        need_leader: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while not done(self.conf_of(r)):
            if r.broken:
                raise Unavailable(r.broken)
            if need_leader and not r.is_leader:
                raise Unavailable(self._not_leader_message(r), self.leader_hint(r))
            if loop.time() >= deadline:
                raise DeadlineExceeded(
                    f"partition {r.partition}: {what} before the deadline; retry ChangeReplicas "
                    "to go on from there"
                )
            await asyncio.sleep(0.02)

    async def _wait_caught_up(self, r: Replica, nodes: Sequence[int], deadline: float) -> None:
        """Until each node's log matches the leader's commit index."""
        loop = asyncio.get_running_loop()
        while nodes:
            if not r.is_leader or r.broken:
                raise Unavailable(self._not_leader_message(r), self.leader_hint(r))
            st = r.raw.status()
            behind = [
                (n, st.progress[n].match if n in st.progress else 0)
                for n in nodes
                if n not in st.progress or st.progress[n].match < st.commit
            ]
            if not behind:
                return
            if loop.time() >= deadline:
                shown = ", ".join(f"node {n} at index {m}" for n, m in behind)
                raise DeadlineExceeded(
                    f"partition {r.partition}: learner(s) not caught up with commit index "
                    f"{st.commit} before the deadline ({shown}); they stay learners: retry "
                    "ChangeReplicas to go on"
                )
            await asyncio.sleep(0.05)

    async def _hand_over(self, r: Replica, staying: Sequence[int], deadline: float) -> int:
        """Transfer leadership to the most up-to-date voter of `staying`."""
        loop = asyncio.get_running_loop()
        st = r.raw.status()

        def ready(n: int) -> bool:
            pr = st.progress.get(n)
            return pr is not None and pr.recent_active and pr.match >= st.commit

        target = sorted(staying, key=lambda n: (not ready(n), staying.index(n)))[0]
        retry_every = self.cfg.raft.election_ticks * self.cfg.raft.tick_ms / 1000.0
        next_try = 0.0
        while loop.time() < deadline:
            if r.leader and r.leader != self.node_id:
                return r.leader
            if r.is_leader and loop.time() >= next_try:
                self._enqueue(partial(self._poke, r, r.raw.transfer_leadership, target))
                next_try = loop.time() + retry_every
            await asyncio.sleep(0.05)
        raise DeadlineExceeded(
            f"partition {r.partition}: leadership was not handed to node {target} before the "
            "deadline; retry"
        )

    async def drop_replica(self, partition: int, force: bool = False) -> bool:
        """Delete this node's replica of the partition (DropReplica): stop it,
        then its Raft state and data, crash-safely (a tombstone in the catalog
        is written first; a start that finds it finishes the deletion and does
        not reopen the replica). Refused while this node is in the replica's
        last known configuration, unless force. False: nothing was held."""
        self._check_partition(partition)
        r = self.replicas.get(partition)
        if r is None and partition not in self.broken_at_start and (
            self.catalog.state(partition) is None
        ):
            return False
        if not force:
            if r is None or r.broken:
                raise FailedPrecondition(
                    f"partition {partition} on node {self.node_id} is out of service: its "
                    "configuration cannot be checked; force=true drops it anyway"
                )
            cs = self.conf_of(r)
            if self.node_id in {*cs.voters, *cs.voters_outgoing, *cs.learners,
                                *cs.learners_next}:
                raise FailedPrecondition(
                    f"node {self.node_id} is still in partition {partition}'s configuration as "
                    f"this replica last knew it (voters {sorted(cs.voters)}, outgoing "
                    f"{sorted(cs.voters_outgoing)}, learners {sorted(cs.learners)}); remove it "
                    "with ChangeReplicas first, or force=true if the group removed it and this "
                    "replica never learnt it"
                )
        if r is not None and (r.installing or self.snapshots.busy(partition)):
            raise Unavailable(
                f"partition {partition} on node {self.node_id} is receiving or installing a "
                "snapshot; retry"
            )
        async with self._move_lock(partition, 10.0):
            # Out of service first (nothing is served or applied from here on),
            # then the tombstone, then the data.
            if r is not None and self.replicas.get(partition) is r:
                others = tuple(n for n in r.replicas if n != self.node_id)
                if others:
                    self._members.setdefault(partition, (others, ()))
                del self.replicas[partition]
                self.groups.pop(partition, None)
                r.broken = f"partition {partition} was dropped from node {self.node_id}"
                r.role, r.leader = StateRole.FOLLOWER, 0
                err = self._out_of_service(partition, r.broken)
                self._fail_waiters(r, err)
                for _, _, fut in r.applied_waiters:
                    if not fut.done():
                        fut.set_exception(err)
                r.applied_waiters.clear()
            self.broken_at_start.pop(partition, None)
            self._dirty.discard(partition)
            await self._between_turns(
                lambda: self.catalog.set(partition, ReplicaState.DROPPING)
            )
            await self._between_turns(lambda: self.log_store.destroy_group(partition))
            while await self._between_turns(lambda: self.catalog.delete_some(partition)):
                pass
            # An open read snapshot keeps deleted versions in the files.
            reg = self.catalog.read_snapshots
            await reg.end_older_than(reg.cutoff(), 2.0)
            await asyncio.get_running_loop().run_in_executor(None, self.catalog.compact, partition)
            await self._between_turns(lambda: self.catalog.remove(partition))
        log.info("partition %d: replica dropped from this node, its data deleted", partition,
                 extra={"partition": partition})
        return True

    def status_of(self, r: Replica) -> dict[str, Any]:
        st = r.raw.status()
        return {
            "partition": r.partition,
            "replicas": list(r.replicas),
            "leader": r.leader,
            "role": r.role,
            "term": st.term,
            "commit": st.commit,
            "applied": r.applied,
            "progress": {nid: (p.match, p.recent_active) for nid, p in st.progress.items()},
            "broken": r.broken,
        }


def _has_learner(node: int, cs: ConfState) -> bool:
    return node in cs.learners


def log_refusal(sender: int, e: NodeError) -> None:
    """One line per kind of refused Raft message and sender, rate-limited."""
    _refusals.warning(
        ("raft", sender, e.code),
        "refused a Raft message from node %d (%s): %s", sender, e.code.name, e.message,
    )
