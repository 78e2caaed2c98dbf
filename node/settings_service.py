"""Cluster settings over the wire and into the log (see node.settings).

Admin.SetSettings proposes a SetSettings entry to one partition (this node
must lead it; otherwise UNAVAILABLE with the leader hint, like a write), and
`medkv settings set` sends one per partition. Admin.GetSettings answers from
this replica's applied state.

The seeder: a node leading a partition that has never applied a SetSettings
proposes one, marked `seed`, from its own [limits] configuration. Only the
first seed in a partition's log applies (node.state_machine), so several
nodes with different configurations still end with one value per partition,
the same on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from node import commands as cmd
from node.errors import InvalidArgument, NodeError
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
        self, partition: int, changes: dict[str, int], seed: bool, timeout: float
    ) -> ApplyResult:
        nonce = _nonce()
        items = tuple(sorted(changes.items()))
        probe = cmd.SetSettings(ts_ms=0, nonce=nonce, seed=seed, changes=items)

        def encode(stamp_ms: int) -> bytes:
            return cmd.encode_command(
                cmd.SetSettings(ts_ms=stamp_ms, nonce=nonce, seed=seed, changes=items)
            )

        return await self.node.host.propose(partition, probe.wait_key, encode, timeout)

    async def set(self, req: admin_pb2.SetSettingsRequest) -> admin_pb2.SetSettingsResponse:
        self._check_partition(req.partition)
        changes = {name: int(getattr(req, name)) for name in NAMES if req.HasField(name)}
        if not changes:
            raise InvalidArgument(f"settings: name at least one of {', '.join(NAMES)}")
        try:
            validate_changes(changes)
        except ValidationError as e:
            raise InvalidArgument(str(e)) from None
        res = await self._propose(
            req.partition, changes, False, self.node.cfg.limits.request_timeout_s
        )
        if res.error_code is not None:
            raise InvalidArgument(f"partition {req.partition}: {res.message}")
        sm = self.node.host.replicas[req.partition].sm
        return admin_pb2.SetSettingsResponse(
            partition=req.partition, settings=settings_pb(sm.settings),
            generation=sm.settings_generation,
        )

    def get(self, req: admin_pb2.GetSettingsRequest) -> admin_pb2.GetSettingsResponse:
        self._check_partition(req.partition)
        r = self.node.host.replica(req.partition)
        return admin_pb2.GetSettingsResponse(
            partition=req.partition, settings=settings_pb(r.sm.settings),
            generation=r.sm.settings_generation, answered_by=self.node.cfg.node_id,
            applied_index=r.applied, open_sessions=r.sm.session_count,
        )

    # ---- seeding a new cluster's settings from the configuration ---------

    async def seed_loop(self) -> None:
        seed = seed_from_limits(self.node.cfg.limits)
        while True:
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
