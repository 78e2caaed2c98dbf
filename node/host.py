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
from consensus.leveldb_storage import (
    GroupUpdate,
    LevelDBGroupStorage,
    LevelDBLogStore,
    SnapshotOutOfDateError,
)
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import (
    ConfState,
    ConsensusError,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    Ready,
    StateRole,
)
from node import failstop
from node.config import NodeConfig
from node.errors import DataLoss, DeadlineExceeded, NodeError, ResourceExhausted, Unavailable
from node.state_machine import ApplyResult, PartitionStateMachine

log = logging.getLogger("medkv.host")

_LEADER_CONTACT = (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP)


@dataclass
class Replica:
    """One local replica of one partition."""

    partition: int
    replicas: tuple[int, ...]
    raw: RawNode
    storage: LevelDBGroupStorage
    sm: PartitionStateMachine
    leader: int = 0
    role: StateRole = StateRole.FOLLOWER
    term: int = 0
    commit: int = 0
    last_leader_contact: float = 0.0  # monotonic time of the last message from a leader
    caught_up_at: float = 0.0  # leader-contact time at which applied >= known commit
    since_snapshot: int = 0
    broken: str = ""  # set when its stored state failed an integrity check
    write_waiters: dict[tuple[bytes, int], list[asyncio.Future[ApplyResult]]] = field(
        default_factory=dict
    )
    reads_to_issue: list[asyncio.Future[int]] = field(default_factory=list)
    read_waiters: dict[bytes, list[asyncio.Future[int]]] = field(default_factory=dict)
    applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)

    @property
    def is_leader(self) -> bool:
        return self.role == StateRole.LEADER

    @property
    def applied(self) -> int:
        return self.sm.applied_index

    def staleness(self, now: float) -> float:
        """Seconds since this replica last knew it had applied everything committed."""
        if self.is_leader:
            return 0.0
        if self.caught_up_at == 0.0:
            return float("inf")
        return max(0.0, now - self.caught_up_at)


class MultiRaftHost:
    def __init__(
        self,
        cfg: NodeConfig,
        log_store: LevelDBLogStore,
        make_state_machine: Callable[[int], PartitionStateMachine],
        send: Callable[[list[tuple[int, Message]]], None],
        on_purge_due: Callable[[int], None] = lambda partition: None,
    ) -> None:
        self.cfg = cfg
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
        self.placement = cfg.placement
        self.replicas: dict[int, Replica] = {}
        self._ops: list[Callable[[], None]] = []
        self._dirty: set[int] = set()  # partitions whose RawNode may have a Ready
        self._wake = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medkv-writer")
        self._read_ctx = itertools.count(1)
        self._waiter_seq = itertools.count()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._pending_writes = 0
        self.started_at = time.monotonic()
        rng_seed = int.from_bytes(os.urandom(8), "big")
        for p in self.placement.partitions_on(self.node_id):
            try:
                self._open_replica(p, make_state_machine, rng_seed)
            except Exception as e:  # a damaged partition must not stop the others
                log.error("partition %d cannot be opened: %s", p, type(e).__name__)
                self.broken_at_start[p] = self._broken_message(p)

    def _open_replica(
        self, p: int, make_state_machine: Callable[[int], PartitionStateMachine], rng_seed: int
    ) -> None:
        cfg = self.cfg
        log_store = self.log_store
        reps = self.placement.replicas(p)
        fresh = not log_store.has_group(p)
        if fresh:
            log_store.bootstrap(p, ConfState(voters=tuple(sorted(reps))))
        storage = log_store.group(p)
        sm = make_state_machine(p)
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
                check_quorum=True,
                pre_vote=True,
            )
        )
        self.replicas[p] = Replica(p, reps, raw, storage, sm)
        self._dirty.add(p)
        if fresh and reps[0] == self.node_id:
            # The preferred replica of a new group campaigns at once, so a
            # new cluster has leaders in one round trip instead of after
            # randomized election timeouts.
            raw.campaign()

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
        self._writer.shutdown(wait=True)

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
                await self._process_ready()
                if self._turn_jobs:
                    await self._run_turn_jobs()
            except Exception as e:
                failstop.check(e)  # a disk that fails a write stops the node
                log.exception("raft turn failed")
                await asyncio.sleep(tick_s)

    def _tick_all(self) -> None:
        for r in self.replicas.values():
            if r.broken:
                continue
            try:
                r.raw.tick()
            except Exception as e:  # stored state failed to read back
                self.mark_broken(r, e)
        self._dirty.update(self.replicas)

    # ---- the Ready cycle -------------------------------------------------

    async def _process_ready(self) -> None:
        # Only groups that something happened to can have a Ready: with many
        # idle partitions, asking every group every turn is most of the cost.
        dirty, self._dirty = self._dirty, set()
        work: list[tuple[Replica, Ready]] = []
        for p in dirty:
            r = self.replicas.get(p)
            if r is None or r.broken:
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
            if self.cfg.unsafe_skip_raft_fsync:  # planted bug for the fault-injection suite
                sync = False
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self.log_store.write, updates, sync
            )
        msgs = [(r.partition, m) for r, rd in work for m in rd.messages]
        if msgs:
            self._send(msgs)
        now = time.monotonic()
        for r, rd in work:
            try:
                self._apply_ready(r, rd, now)
                r.raw.advance(rd)
            except Exception as e:
                self.mark_broken(r, e)
        for r, _ in work:
            if r.broken:
                continue
            if r.sm.purge_due:  # recorded durably with the apply or restore
                r.sm.purge_due = False
                self._on_purge_due(r.partition)
            await self._maybe_snapshot(r)

    def _apply_ready(self, r: Replica, rd: Ready, now: float) -> None:
        if rd.soft_state is not None:
            was_leader = r.is_leader
            r.leader = rd.soft_state.leader
            r.role = rd.soft_state.role
            if was_leader and not r.is_leader:
                self._fail_waiters(r, Unavailable(self._not_leader_message(r), self.leader_hint(r)))
        if rd.hard_state is not None:
            r.term = rd.hard_state.term
            r.commit = max(r.commit, rd.hard_state.commit)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            r.sm.restore(rd.snapshot.data)
            r.since_snapshot = 0
            log.info(
                "partition %d: caught up from a snapshot at index %d",
                r.partition, rd.snapshot.meta.index,
            )
        if rd.committed_entries:
            self._apply_entries(r, rd)
        for rs in rd.read_states:
            for fut in r.read_waiters.pop(rs.context, []):
                if not fut.done():
                    fut.set_result(rs.index)
        if r.applied >= r.commit:
            r.caught_up_at = now if r.is_leader else r.last_leader_contact
        self._wake_applied(r)

    def _apply_entries(self, r: Replica, rd: Ready) -> None:
        run: list[tuple[int, int, bytes]] = []
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self._apply_run(r, run)
                run = []
                r.raw.apply_conf_change(decode_conf_change(e.data))
            else:
                run.append((e.index, e.term, e.data))
        self._apply_run(r, run)
        r.since_snapshot += len(rd.committed_entries)

    def _apply_run(self, r: Replica, run: list[tuple[int, int, bytes]]) -> None:
        if not run:
            return
        results = r.sm.apply(run)
        if not r.write_waiters:
            return
        for res in results:
            if res.write_key is None:
                continue
            waiters = r.write_waiters.pop(res.write_key, None)
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
        if r.broken or r.since_snapshot < self.cfg.raft.snapshot_every:
            return
        index = r.applied
        data = r.sm.snapshot()
        conf = r.raw.status().conf_state
        keep = self.cfg.raft.keep_after_snapshot
        r.since_snapshot = 0

        def persist() -> None:
            self.log_store.create_snapshot(r.partition, index, conf, data)
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

    async def compact_log(self, partition: int, index: int, conf: ConfState, data: bytes) -> bool:
        """Store `data` (the partition's state machine at applied index `index`,
        with membership `conf`, built by the caller) as the group's snapshot
        and drop its log through `index`: the purge of an erasure's log
        entries. Runs between two Raft turns, on the writer thread (the Raft
        core reads the log store). False when there was nothing to do: the
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
                self.log_store.create_snapshot(partition, index, conf, data)
            self.log_store.compact(partition, index)
            return True

        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._turn_jobs.append((persist, fut))
        self._wake.set()
        done = await fut
        if done:
            r.since_snapshot = 0
            log.info("partition %d: dropped the Raft log through index %d", partition, index)
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
            log.error("partition %d disabled on this node: %s", r.partition, type(e).__name__)
            r.broken = self._broken_message(r.partition)
            r.role = StateRole.FOLLOWER
            r.leader = 0
            self._fail_waiters(r, self._out_of_service(r.partition, r.broken))

    def _fail_waiters(self, r: Replica, err: NodeError) -> None:
        pending: list[asyncio.Future[Any]] = [f for fs in r.write_waiters.values() for f in fs]
        pending += [f for fs in r.read_waiters.values() for f in fs]
        pending += r.reads_to_issue
        r.write_waiters.clear()
        r.read_waiters.clear()
        r.reads_to_issue = []
        for f in pending:
            if not f.done():
                f.set_exception(err)

    # ---- inbound from the transport -------------------------------------

    def deliver(self, msgs: Sequence[tuple[int, Message]]) -> None:
        now = time.monotonic()

        def step() -> None:
            for group, m in msgs:
                r = self.replicas.get(group)
                if r is None or r.broken:
                    continue
                if m.type in _LEADER_CONTACT and m.term >= r.term:
                    r.last_leader_contact = now
                self._dirty.add(group)
                try:
                    r.raw.step(m)
                except ConsensusError as e:
                    log.debug("partition %d dropped a message: %s", group, type(e).__name__)
                except Exception as e:  # stored state failed to read back
                    self.mark_broken(r, e)

        self._enqueue(step)

    def report_unreachable(self, peer: int, groups: Sequence[int]) -> None:
        def op() -> None:
            for g in groups:
                r = self.replicas.get(g)
                if r is not None and not r.broken:
                    r.raw.report_unreachable(peer)
                    self._dirty.add(g)

        self._enqueue(op)

    def report_snapshot(self, group: int, peer: int, ok: bool) -> None:
        def op() -> None:
            r = self.replicas.get(group)
            if r is not None and not r.broken:
                r.raw.report_snapshot(peer, ok)
                self._dirty.add(group)

        self._enqueue(op)

    # ---- the service side -----------------------------------------------

    def replica(self, partition: int) -> Replica:
        r = self.replicas.get(partition)
        if r is None and partition in self.broken_at_start:
            raise DataLoss(self.broken_at_start[partition])
        if r is None:
            holders = ",".join(str(n) for n in self.placement.replicas(partition))
            raise Unavailable(
                f"partition {partition} is not held by node {self.node_id}; its replicas are "
                f"nodes {holders}",
                self._hint_for(self.placement.replicas(partition)[0]),
            )
        if r.broken:
            raise DataLoss(r.broken)
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
        others = [n for n in self.placement.replicas(partition) if n != self.node_id]
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

    async def propose(
        self, partition: int, write_key: tuple[bytes, int], data: bytes, timeout: float
    ) -> ApplyResult:
        """Replicate one command; answer once it is committed and applied here."""
        r = self.leader_replica(partition)
        if self._pending_writes >= self.cfg.limits.max_pending_proposals:
            raise ResourceExhausted(
                f"node {self.node_id} has {self._pending_writes} writes in flight; retry later"
            )
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        r.write_waiters.setdefault(write_key, []).append(fut)

        def op() -> None:
            if fut.done():
                return
            self._dirty.add(partition)
            try:
                r.raw.propose(data)
            except ProposalDropped:
                waiters = r.write_waiters.get(write_key, [])
                if fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        r.write_waiters.pop(write_key, None)
                fut.set_exception(Unavailable(self._not_leader_message(r), self.leader_hint(r)))

        self._pending_writes += 1
        self._enqueue(op)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"write to partition {partition} not committed within {timeout:.1f}s; "
                "it may still apply: retry with the same write id"
            ) from None
        finally:
            self._pending_writes -= 1
            waiters = r.write_waiters.get(write_key)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    r.write_waiters.pop(write_key, None)

    async def read_barrier(self, partition: int, timeout: float) -> Replica:
        """ReadIndex: return the leader replica once its state reflects every
        write acknowledged before this call (DESIGN: linearizable reads)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        r = self.leader_replica(partition)
        fut: asyncio.Future[int] = loop.create_future()
        r.reads_to_issue.append(fut)
        self._wake.set()
        try:
            index = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise Unavailable(
                f"partition {partition}: leadership could not be confirmed within {timeout:.1f}s",
                self.leader_hint(r),
            ) from None
        await self.wait_applied(r, index, max(0.0, deadline - loop.time()))
        return r

    def _issue_reads(self) -> None:
        """One ReadIndex round per group per turn serves every read queued in it."""
        for r in self.replicas.values():
            if not r.reads_to_issue or r.broken:
                continue
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
            except ConsensusError:
                # The core stepped down in this very turn; our role catches up
                # with the next Ready. The client retries on the new leader.
                err = Unavailable(self._not_leader_message(r), self.leader_hint(r))
                for f in futs:
                    if not f.done():
                        f.set_exception(err)
                continue
            r.read_waiters[ctx] = futs

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
        r = self.leader_replica(partition)
        if target not in r.replicas:
            raise NodeError(f"node {target} holds no replica of partition {partition}")
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
        for r in self.replicas.values():
            if not r.is_leader or r.broken:
                continue
            preferred = r.replicas[0]
            if preferred == self.node_id:
                continue
            st = r.raw.status()
            pr = st.progress.get(preferred)
            if pr is not None and pr.recent_active and pr.match >= st.commit:
                self._enqueue(partial(self._poke, r, r.raw.transfer_leadership, preferred))

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
