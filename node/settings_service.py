"""Cluster settings over the wire and into the logs (see node.settings).

Admin.SetSettings, asked of any member, is ONE change of the cluster state
(set-settings, proposed to the system group): the answer names the new
generation. The system group's leader then brings that generation into
every partition's log (node.cluster.settings_sync), calling SyncSettings on
each partition's leader, which proposes the cluster state's settings as a
SetSettings entry carrying the generation (`sync` below). Admin.GetSettings
answers from this replica's applied state, with the cluster's settings as
this node's cluster state holds them, so an operator sees propagation.

The seeder, for clusters created before settings were cluster state only: a
node leading a partition that has never applied a SetSettings proposes one,
marked `seed`, from its own [limits] configuration. Only the first seed in a
partition's log applies (node.state_machine), so several nodes with
different configurations still end with one value per partition, the same
on every replica. It does nothing once the cluster state holds settings
(`medkv cluster init` puts them there; an old cluster's first `medkv
settings set` does).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from node import commands as cmd
from node.cluster import state as cs
from node.errors import FailedPrecondition, InvalidArgument, NodeError, Unavailable
from node.limits import ValidationError
from node.settings import NAMES, ClusterSettings, seed_from_limits, validate_changes
from node.state_machine import ApplyResult
from proto.medkv.v1 import admin_pb2

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.settings")

SEED_INTERVAL_S = 0.5


def settings_pb(s: ClusterSettings) -> admin_pb2.ClusterSettings:
    return admin_pb2.ClusterSettings(**{name: getattr(s, name) for name in NAMES})


def _nonce() -> int:
    return int.from_bytes(os.urandom(8), "big") >> 1


class SettingsService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._seeding: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _check_partition(self, partition: int) -> None:
        n = self.node.cfg.partitions
        if partition >= n:
            raise InvalidArgument(f"partition: {partition} does not exist (0..{n - 1})")

    async def _propose(
        self, partition: int, changes: dict[str, int], seed: bool, timeout: float,
        cluster_generation: int = 0,
    ) -> ApplyResult:
        nonce = _nonce()
        items = tuple(sorted(changes.items()))
        probe = cmd.SetSettings(ts_ms=0, nonce=nonce, seed=seed, changes=items)

        def encode(stamp_ms: int) -> bytes:
            return cmd.encode_command(
                cmd.SetSettings(ts_ms=stamp_ms, nonce=nonce, seed=seed, changes=items,
                                cluster_generation=cluster_generation)
            )

        return await self.node.host.propose(partition, probe.wait_key, encode, timeout)

    def _state(self) -> cs.ClusterState:
        state = self.node.cluster.state
        if state is None:
            raise Unavailable(f"node {self.node.cfg.node_id} has no cluster state yet")
        return state

    def _legacy_base(self) -> dict[str, int]:
        """What an old cluster's first set-settings starts from: the settings
        its partitions applied (seeded from a configuration, the same in every
        partition unless an operator set them per partition), as this node's
        lowest replica holds them; else this node's configuration."""
        for _, r in sorted(self.node.host.replicas.items()):
            if not r.broken and r.sm.settings_generation:
                return cs.settings_obj(r.sm.settings)
        return seed_from_limits(self.node.cfg.limits)

    async def set(self, req: admin_pb2.SetSettingsRequest) -> admin_pb2.SetSettingsResponse:
        changes = {name: int(getattr(req, name)) for name in NAMES if req.HasField(name)}
        if not changes:
            raise InvalidArgument(f"settings: name at least one of {', '.join(NAMES)}")
        try:
            validate_changes(changes)
        except ValidationError as e:
            raise InvalidArgument(str(e)) from None
        state = self._state()
        base = None if state.settings is not None else self._legacy_base()
        res = await self.node.host.propose_system(
            cs.set_settings(changes, base, request=os.urandom(16)),
            self.node.cfg.limits.request_timeout_s,
        )
        now = self._state()
        log.info("cluster settings: generation %d (%s changed)", res.version,
                 ", ".join(sorted(changes)))
        return admin_pb2.SetSettingsResponse(
            settings=settings_pb(now.settings) if now.settings is not None else None,
            generation=res.version,
        )

    def get(self, req: admin_pb2.GetSettingsRequest) -> admin_pb2.GetSettingsResponse:
        self._check_partition(req.partition)
        r = self.node.host.replica(req.partition)
        state = self.node.cluster.state
        cluster = state.settings if state is not None else None
        return admin_pb2.GetSettingsResponse(
            partition=req.partition, settings=settings_pb(r.sm.settings),
            generation=r.sm.settings_generation, answered_by=self.node.cfg.node_id,
            applied_index=r.applied, open_sessions=r.sm.session_count,
            cluster_generation_applied=r.sm.settings_cluster_generation,
            cluster_settings=settings_pb(cluster) if cluster is not None else None,
            cluster_generation=state.settings_generation if state is not None else 0,
        )

    async def sync(self, partition: int, generation: int) -> admin_pb2.SyncSettingsResponse:
        """On the partition's leader: propose the cluster state's settings into
        its log unless it applied that generation already. The values come
        from this node's own replica of the cluster state, never from the
        caller; if that replica is behind the asked generation, UNAVAILABLE
        (the caller retries once it caught up)."""
        self._check_partition(partition)
        state = self._state()
        host = self.node.host
        r = host.leader_replica(partition)  # elsewhere: UNAVAILABLE with the hint
        if state.settings_generation < generation:
            raise Unavailable(
                f"node {self.node.cfg.node_id} has applied cluster settings generation "
                f"{state.settings_generation}, not {generation} yet; retry"
            )
        if state.settings is None:
            raise FailedPrecondition("the cluster state holds no settings yet")
        applied = r.sm.settings_cluster_generation
        if applied >= state.settings_generation:
            return admin_pb2.SyncSettingsResponse(partition=partition, generation=applied)
        res = await self._propose(
            partition, cs.settings_obj(state.settings), False,
            self.node.cfg.limits.request_timeout_s, cluster_generation=state.settings_generation,
        )
        if res.error_code is not None:
            raise FailedPrecondition(f"partition {partition}: {res.message}")
        now = host.replica(partition).sm.settings_cluster_generation
        return admin_pb2.SyncSettingsResponse(partition=partition, generation=now, proposed=True)

    # ---- seeding a new cluster's settings from the configuration ---------

    async def seed_loop(self) -> None:
        seed = seed_from_limits(self.node.cfg.limits)
        while True:
            state = self.node.cluster.state
            if state is not None and state.settings is not None:
                # The cluster's settings reach partitions from the cluster
                # state (node.cluster.settings_sync): nothing to seed.
                await asyncio.sleep(SEED_INTERVAL_S)
                continue
            for p, r in list(self.node.host.replicas.items()):
                unset = r.is_leader and not r.broken and r.sm.settings_generation == 0
                if unset and p not in self._seeding:
                    self._seeding.add(p)
                    task = asyncio.get_running_loop().create_task(self._seed(p, seed))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(SEED_INTERVAL_S)

    async def _seed(self, partition: int, seed: dict[str, int]) -> None:
        try:
            res = await self._propose(partition, seed, True, 5.0)
            if res.error_code is None and not res.message:  # not a seed that lost a race
                log.info(
                    "partition %d: cluster settings seeded from the configuration", partition,
                    extra={"partition": partition},
                )
        except NodeError as e:  # lost leadership, timed out: the loop tries again
            log.debug("partition %d: seeding settings failed: %s", partition, type(e).__name__)
        finally:
            self._seeding.discard(partition)


__all__ = ["SettingsService", "settings_pb"]
