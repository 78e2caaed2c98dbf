"""Replica moves on one node: which partitions it holds, and their membership.

The control plane (node.cluster.mover) moves a replica with three node-side
primitives, each an Admin RPC:
  prepare_replica  on the new node: a blank replica, no membership, waiting
                   for the leader's snapshot;
  change_replicas  on the group's leader: learner, catch-up, one joint change
                   (the leader hands over first if it is the one leaving);
  drop_replica     on the node that was removed: tombstone, then its Raft
                   state and data are deleted.
Which partitions this node holds is kept on disk (node.replica_catalog), not
recomputed from the configured placement. Each replica's voters and learners
follow its group's applied configuration (sync_members), in the order the
control plane gave (set_members), else the placement's.

The host (node.host) drives the groups; this module works on it from outside
the Raft turn, queueing every RawNode operation on the host's loop and every
log-store write between two turns. The host keeps thin methods of the same
names for its callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from consensus.confchange import Changer
from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    ConsensusError,
    ProposalDropped,
    StateRole,
)
from node.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from node.replica_catalog import ReplicaCatalog, ReplicaState
from node.state_machine import PartitionStateMachine

if TYPE_CHECKING:
    from node.host import MultiRaftHost, Replica

# The host's logger: these lines were the host's before replica moves had a
# module of their own, and operators filter on it.
log = logging.getLogger("medkv.host")


class ReplicaMoves:
    """The partitions one host holds, their membership, and the moves of their replicas."""

    def __init__(
        self,
        host: MultiRaftHost,
        catalog: ReplicaCatalog | None,
        make_state_machine: Callable[[int], PartitionStateMachine],
        rng_seed: int,
    ) -> None:
        self._host = host
        self.catalog = catalog if catalog is not None else ReplicaCatalog()
        self._make_sm = make_state_machine
        self._rng_seed = rng_seed
        # partition -> (voters, learners) as the control plane last set them
        # (set_members): the preference order, and hints for partitions not held.
        self._members: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # partition -> nodes a change driven by this leader is removing.
        self._moves: dict[int, frozenset[int]] = {}
        self._move_locks: dict[int, asyncio.Lock] = {}

    def partitions_to_open(self) -> list[tuple[int, bool]]:
        """(partition, blank) for every replica this node holds, from the
        catalog (seeded from the placement the first time); a drop a crash
        interrupted is finished here, and that replica is not opened."""
        host = self._host
        cat = self.catalog
        if not cat.exists:
            cat.seed(host.placement.partitions_on(host.node_id))
        out: list[tuple[int, bool]] = []
        for p, state in sorted(cat.entries().items()):
            if state == ReplicaState.DROPPING:
                log.warning(
                    "partition %d: a DropReplica did not finish; deleting the rest of its data",
                    p, extra={"partition": p},
                )
                self._delete_partition_sync(p)
                continue
            if not 0 <= p < host.cfg.partitions:
                log.error("partition %d is held by this node but the cluster has %d partitions; "
                          "not opened", p, host.cfg.partitions)
                continue
            out.append((p, state == ReplicaState.BLANK))
        return out

    def _delete_partition_sync(self, p: int) -> None:
        self._host.log_store.destroy_group(p)
        while self.catalog.delete_some(p):
            pass
        self.catalog.compact(p)
        self.catalog.remove(p)

    def sync_members(self, r: Replica) -> None:
        """Replica.replicas and .learners from the group's applied
        configuration: voters of the incoming half first, in the preference
        order (set_members, else the placement), then any others. For an
        unchanged cluster that is exactly the placement's tuple."""
        host = self._host
        cs = host.conf_of(r)
        incoming = set(cs.voters)
        voters = incoming | set(cs.voters_outgoing)
        known = self._members.get(r.partition)
        if known is not None:
            pref = known[0]
        elif 0 <= r.partition < host.cfg.partitions:
            pref = host.placement.replicas(r.partition)
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
        r = self._host.replicas.get(partition)
        if r is not None and r.raw.has_membership():
            self.sync_members(r)

    def members(self, partition: int) -> tuple[int, ...]:
        """The partition's voters as this node best knows them: its own
        replica's configuration, else set_members, else the placement."""
        host = self._host
        r = host.replicas.get(partition)
        if r is not None and r.replicas and not r.broken:
            return r.replicas
        known = self._members.get(partition)
        if known is not None and known[0]:
            return known[0]
        if not 0 <= partition < host.cfg.partitions:
            return ()
        return host.placement.replicas(partition)

    def moving(self, r: Replica) -> bool:
        return bool(r.learners) or r.partition in self._moves or bool(
            self._host.conf_of(r).voters_outgoing
        )

    def _check_partition(self, partition: int) -> None:
        host = self._host
        if not 0 <= partition < host.cfg.partitions:
            raise InvalidArgument(
                f"partition {partition} does not exist (0..{host.cfg.partitions - 1})"
            )

    @contextlib.asynccontextmanager
    async def _move_lock(self, partition: int, timeout: float) -> Any:
        lock = self._move_locks.setdefault(partition, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), max(0.0, timeout))
        except TimeoutError:
            raise Unavailable(
                f"another replica change of partition {partition} is in progress on node "
                f"{self._host.node_id}; retry"
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
        host = self._host
        self._check_partition(partition)
        if partition in host.broken_at_start:
            raise FailedPrecondition(host.broken_at_start[partition])
        async with self._move_lock(partition, timeout):
            if partition in host.replicas:
                return False
            if self.catalog.state(partition) == ReplicaState.DROPPING:
                raise Unavailable(
                    f"partition {partition} is being dropped from node {host.node_id}; retry "
                    "once DropReplica finished"
                )

            def persist() -> bool:
                if host.log_store.has_group(partition):
                    return False
                self.catalog.set(partition, ReplicaState.BLANK)
                host.log_store.group(partition)
                return True

            if not await host._between_turns(persist):
                raise FailedPrecondition(
                    f"node {host.node_id} has Raft state of partition {partition} without "
                    "holding it; DropReplica with force=true removes it"
                )
            host._open_replica(partition, self._make_sm, self._rng_seed, blank=True)
            host._wake.set()
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
        host = self._host
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        add_s, rem_s = set(add), set(remove)
        self._check_partition(partition)
        for n in sorted(add_s | rem_s):
            if n not in host.cfg.peers:
                raise InvalidArgument(f"node {n} is not a member of the cluster")
        if add_s & rem_s:
            raise InvalidArgument(
                f"node(s) {sorted(add_s & rem_s)} both added and removed"
            )
        r = host.leader_replica(partition)
        async with self._move_lock(partition, deadline - loop.time()):
            self._moves[partition] = frozenset(rem_s)
            try:
                return await self._change_replicas(r, add_s, rem_s, deadline)
            finally:
                self._moves.pop(partition, None)

    async def _change_replicas(
        self, r: Replica, add_s: set[int], rem_s: set[int], deadline: float
    ) -> tuple[int, ...]:
        host = self._host
        p = r.partition
        await self._wait_conf(r, lambda cs: not cs.voters_outgoing, deadline,
                              "an earlier change's joint configuration was not left", True)
        cs = host.conf_of(r)
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
            raise Unavailable(host._not_leader_message(r), host.leader_hint(r))
        # The node that drives the move prefers the target's voters as leaders.
        pref = [n for n in r.replicas if n in target] + sorted(target - set(r.replicas))
        self._members[p] = (tuple(pref), ())
        self.sync_members(r)
        if host.node_id in rem_s:
            staying = [n for n in r.replicas if n in target and n in voters]
            if staying:
                new = await self._hand_over(r, staying, deadline)
                raise Unavailable(
                    f"partition {p}: node {host.node_id} is to be removed, so it handed "
                    f"leadership to node {new}, which completes the change: retry there",
                    host._hint_for(new),
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
        cs = host.conf_of(r)
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
        host = self._host
        loop = asyncio.get_running_loop()
        while True:
            if not r.is_leader or r.broken:
                raise Unavailable(host._not_leader_message(r), host.leader_hint(r))
            fut: asyncio.Future[str] = loop.create_future()

            def op(fut: asyncio.Future[str] = fut) -> None:
                if fut.done():
                    return
                host._dirty.add(r.partition)
                try:
                    r.raw.propose_conf_change(cc)
                except ProposalDropped as e:
                    fut.set_result(str(e) or type(e).__name__)
                else:
                    fut.set_result("")

            host._enqueue(op)
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
        host = self._host
        loop = asyncio.get_running_loop()
        while not done(host.conf_of(r)):
            if r.broken:
                raise Unavailable(r.broken)
            if need_leader and not r.is_leader:
                raise Unavailable(host._not_leader_message(r), host.leader_hint(r))
            if loop.time() >= deadline:
                raise DeadlineExceeded(
                    f"partition {r.partition}: {what} before the deadline; retry ChangeReplicas "
                    "to go on from there"
                )
            await asyncio.sleep(0.02)

    async def _wait_caught_up(self, r: Replica, nodes: Sequence[int], deadline: float) -> None:
        """Until each node's log matches the leader's commit index."""
        host = self._host
        loop = asyncio.get_running_loop()
        while nodes:
            if not r.is_leader or r.broken:
                raise Unavailable(host._not_leader_message(r), host.leader_hint(r))
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
        host = self._host
        loop = asyncio.get_running_loop()
        st = r.raw.status()

        def ready(n: int) -> bool:
            pr = st.progress.get(n)
            return pr is not None and pr.recent_active and pr.match >= st.commit

        target = sorted(staying, key=lambda n: (not ready(n), staying.index(n)))[0]
        retry_every = host.cfg.raft.election_ticks * host.cfg.raft.tick_ms / 1000.0
        next_try = 0.0
        while loop.time() < deadline:
            if r.leader and r.leader != host.node_id:
                return r.leader
            if r.is_leader and loop.time() >= next_try:
                host._enqueue(partial(host._poke, r, r.raw.transfer_leadership, target))
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
        host = self._host
        self._check_partition(partition)
        r = host.replicas.get(partition)
        if r is None and partition not in host.broken_at_start and (
            self.catalog.state(partition) is None
        ):
            return False
        if not force:
            if r is None or r.broken:
                raise FailedPrecondition(
                    f"partition {partition} on node {host.node_id} is out of service: its "
                    "configuration cannot be checked; force=true drops it anyway"
                )
            cs = host.conf_of(r)
            if host.node_id in {*cs.voters, *cs.voters_outgoing, *cs.learners,
                                *cs.learners_next}:
                raise FailedPrecondition(
                    f"node {host.node_id} is still in partition {partition}'s configuration as "
                    f"this replica last knew it (voters {sorted(cs.voters)}, outgoing "
                    f"{sorted(cs.voters_outgoing)}, learners {sorted(cs.learners)}); remove it "
                    "with ChangeReplicas first, or force=true if the group removed it and this "
                    "replica never learnt it"
                )
        if r is not None and (r.installing or host.snapshots.busy(partition)):
            raise Unavailable(
                f"partition {partition} on node {host.node_id} is receiving or installing a "
                "snapshot; retry"
            )
        async with self._move_lock(partition, 10.0):
            # Out of service first (nothing is served or applied from here on),
            # then the tombstone, then the data.
            if r is not None and host.replicas.get(partition) is r:
                others = tuple(n for n in r.replicas if n != host.node_id)
                if others:
                    self._members.setdefault(partition, (others, ()))
                del host.replicas[partition]
                host.groups.pop(partition, None)
                r.broken = f"partition {partition} was dropped from node {host.node_id}"
                r.role, r.leader = StateRole.FOLLOWER, 0
                err = host._out_of_service(partition, r.broken)
                host._fail_waiters(r, err)
                for _, _, fut in r.applied_waiters:
                    if not fut.done():
                        fut.set_exception(err)
                r.applied_waiters.clear()
            host.broken_at_start.pop(partition, None)
            host._dirty.discard(partition)
            await host._between_turns(
                lambda: self.catalog.set(partition, ReplicaState.DROPPING)
            )
            await host._between_turns(lambda: host.log_store.destroy_group(partition))
            while await host._between_turns(lambda: self.catalog.delete_some(partition)):
                pass
            # An open read snapshot keeps deleted versions in the files.
            reg = self.catalog.read_snapshots
            await reg.end_older_than(reg.cutoff(), 2.0)
            await asyncio.get_running_loop().run_in_executor(None, self.catalog.compact, partition)
            await host._between_turns(lambda: self.catalog.remove(partition))
        log.info("partition %d: replica dropped from this node, its data deleted", partition,
                 extra={"partition": partition})
        return True


def _has_learner(node: int, cs: ConfState) -> bool:
    return node in cs.learners
