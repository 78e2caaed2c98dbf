"""Follower reads: writes through the leader, reads from any replica.

Workers put unique values through the leader, read linearizably now and
then, and mostly read with consistency="follower" from whichever replica the
client picks, half of those with a read-your-writes token (min_version = the
version of the worker's own last acknowledged write of that key), and a fifth
of them bounded (consistency="bounded", max_staleness 0.5-2 s: served by a
replica within the bound or, refused there, by the leader).

Each read records the staleness its replica states. The follower-reads
checker holds it to that claim: a read claiming staleness s at time t must
reflect every write acknowledged before t - s - CLOCK_ERROR_S, and a bounded
read must never be served beyond its bound.

Two checkers look at one history: `check_follower_reads` replays the
committed writes (versions are Raft indexes) and checks each follower read
against the log prefix it claims to have applied; `check_linearizable` checks
the writes and the linearizable reads. The final reads add, per key, one
linearizable read and one follower read whose token is the key's highest
acknowledged version: a replica that lost an acknowledged write fails it.
"""

from __future__ import annotations

import random
from typing import Any

from client import AsyncClient, NotFound
from jepsen_like.checkers import VersionedRegisterModel, check_follower_reads, check_linearizable
from jepsen_like.history import Op, Outcome
from jepsen_like.workloads.common import (
    KeyRotation,
    PartitionOf,
    RunContext,
    Workload,
    decode,
    encode,
    record_read,
    record_write,
)

RECORD = "r"
# Entries a group's log holds that no client op explains: leader no-ops after
# elections, and client retries of one write (each attempt is proposed again,
# deduplicated only when applied). Faults cause both, so the bound grows with
# the number of fault windows and unacknowledged writes (see check()).
BASE_INDEX_SLACK = 64
# The error between the clock of the history (this process's monotonic clock)
# and the clocks the nodes measure staleness on. The suite runs every node on
# this machine, so they share one clock; the allowance covers timer
# granularity and NTP slewing of the wall clock during a run. The nodes'
# own max_clock_offset_ms is added by the nodes themselves.
CLOCK_ERROR_S = 0.05
BOUNDS_S = (0.5, 1.0, 2.0)


class FollowerReadsWorkload(Workload):
    name = "follower-reads"

    def __init__(
        self,
        seed: int,
        concurrency: int,
        *,
        live_keys: int | None = None,
        ops_per_key: int = 300,
        max_steps_per_key: int = 2_000_000,
    ) -> None:
        super().__init__(seed, concurrency, (RECORD,))
        self.rotation = KeyRotation(f"fol{seed}-", live_keys or max(4, concurrency), ops_per_key)
        self.max_steps_per_key = max_steps_per_key
        self._counter = 0
        self._own: dict[tuple[int, str], int] = {}  # (slot, key) -> last acked version
        self._acked: dict[str, int] = {}  # key -> highest acked version

    def used_keys(self) -> list[str]:
        return list(self.rotation.all)

    def parameters(self) -> dict[str, Any]:
        return {
            "live_keys": len(self.rotation.live()),
            "ops_per_key": self.rotation.ops_per_key,
            "keys_used": len(self.rotation.all),
        }

    async def _linearizable(self, client: AsyncClient, key: str) -> dict[str, Any]:
        try:
            rec = await client.get(key, RECORD)
        except NotFound:
            return {"value": None, "version": 0}
        return {"value": decode(rec.value), "version": rec.version}

    async def _follower(
        self, client: AsyncClient, key: str, token: int | None, bound: float | None = None
    ) -> dict[str, Any]:
        try:
            if bound is None:
                rec = await client.get(key, RECORD, consistency="follower", min_version=token)
            else:
                rec = await client.get(
                    key, RECORD, consistency="bounded", max_staleness=bound, min_version=token
                )
        except NotFound:
            # A replica answers NOT_FOUND only after applying up to the token
            # (it waits for min_version first), so the token is a true lower
            # bound of its applied index; without one, nothing is claimed
            # (nor any staleness: a NOT_FOUND carries no read state).
            return {"value": None, "version": 0, "applied_index": token or 0, "lag": 0}
        return {
            "value": decode(rec.value),
            "version": rec.version,
            "applied_index": rec.applied_index,
            "lag": rec.lag,
            "staleness": rec.staleness,
            "from_leader": rec.from_leader,
            "served_by": rec.served_by,
        }

    async def step(
        self, slot: int, process: int, client: AsyncClient, rng: random.Random, ctx: RunContext
    ) -> Outcome:
        key = self.rotation.pick(rng)
        r = rng.random()
        if r < 0.3:
            self._counter += 1
            value = f"w{slot}-{self._counter}"
            outcome, version = await record_write(
                ctx, process, "write", key, value,
                lambda: client.put(key, RECORD, encode(value)),
                lambda v: {"version": v},
            )
            if outcome == "ok" and version is not None:
                self._own[(slot, key)] = version
                self._acked[key] = max(self._acked.get(key, 0), version)
            return outcome
        if r < 0.45:
            outcome, _ = await record_read(
                ctx, process, "read", key, None, lambda: self._linearizable(client, key)
            )
            return outcome
        token = self._own.get((slot, key)) if rng.random() < 0.5 else None
        bound = rng.choice(BOUNDS_S) if rng.random() < 0.2 else None
        spec: dict[str, Any] = {}
        if token:
            spec["min_version"] = token
        if bound is not None:
            spec["max_staleness"] = bound
        outcome, _ = await record_read(
            ctx, process, "follower_read", key, spec or None,
            lambda: self._follower(client, key, token, bound),
        )
        return outcome

    async def final_read(self, key: str, client: AsyncClient, ctx: RunContext) -> bool:
        outcome, _ = await record_read(
            ctx, "final", "read", key, None, lambda: self._linearizable(client, key)
        )
        if outcome != "ok":
            return False
        token = self._acked.get(key) or None
        follower, _ = await record_read(
            ctx, "final", "follower_read", key,
            {"min_version": token} if token else None,
            lambda: self._follower(client, key, token),
        )
        return follower == "ok"

    def index_slack(self, history: list[Op]) -> int:
        unacked = sum(1 for op in history if op.kind == "write" and op.outcome != "ok")
        return BASE_INDEX_SLACK + 16 * self.fault_windows + 2 * unacked

    def check(self, history: list[Op], partition_of: PartitionOf) -> dict[str, dict[str, Any]]:
        follower = check_follower_reads(
            history,
            group_of=lambda key: partition_of(key) if key is not None else None,
            index_slack=self.index_slack(history),
            clock_error_s=CLOCK_ERROR_S,
        )
        linear = check_linearizable(
            history,
            VersionedRegisterModel(),
            kinds=("read", "write"),
            max_steps_per_key=self.max_steps_per_key,
        )
        return {"follower_reads": follower.to_json(), "linearizable": linear.to_json()}
