"""Registers: linearizable read, put, compare-and-set and delete on many records.

Each key is one patient's record "r". Every write carries a value no other
write has, so a read names the write it saw. Checked with the versioned
register model, which is medkv's contract exactly: every successful write gets
a version (the Raft index that applied it), versions of one record only grow,
a CAS compares versions with 0 meaning "absent or deleted", and a read reports
the version it saw.

The planted bug ``stale-reads`` (for testing the suite itself) makes the
client read with consistency="follower" while recording the read as
linearizable: a lagging or partitioned replica then answers with an old
value, which the checker must catch.
"""

from __future__ import annotations

import random
from typing import Any

from client import AsyncClient, NotFound
from jepsen_like.checkers import VersionedRegisterModel, check_linearizable
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
PLANTED_BUGS = ("stale-reads",)


class RegistersWorkload(Workload):
    name = "registers"

    def __init__(
        self,
        seed: int,
        concurrency: int,
        *,
        live_keys: int | None = None,
        ops_per_key: int = 200,
        planted_bug: str | None = None,
        max_steps_per_key: int = 2_000_000,
    ) -> None:
        super().__init__(seed, concurrency, (RECORD,))
        if planted_bug is not None and planted_bug not in PLANTED_BUGS:
            raise ValueError(f"registers has no planted bug {planted_bug!r}")
        self.planted_bug = planted_bug
        self.rotation = KeyRotation(f"reg{seed}-", live_keys or max(8, 2 * concurrency), ops_per_key)
        self.max_steps_per_key = max_steps_per_key
        # What each worker last saw of each key: the version its next CAS expects.
        self._seen: dict[tuple[int, str], int] = {}
        self._counter = 0

    def _value(self, slot: int) -> str:
        self._counter += 1
        return f"w{slot}-{self._counter}"

    def used_keys(self) -> list[str]:
        return list(self.rotation.all)

    def parameters(self) -> dict[str, Any]:
        return {
            "live_keys": len(self.rotation.live()),
            "ops_per_key": self.rotation.ops_per_key,
            "keys_used": len(self.rotation.all),
            "planted_bug": self.planted_bug,
        }

    async def _read(self, client: AsyncClient, key: str) -> dict[str, Any]:
        consistency = "follower" if self.planted_bug == "stale-reads" else "linearizable"
        try:
            rec = await client.get(key, RECORD, consistency=consistency)
        except NotFound:
            return {"value": None, "version": 0}
        return {"value": decode(rec.value), "version": rec.version}

    async def step(
        self, slot: int, process: int, client: AsyncClient, rng: random.Random, ctx: RunContext
    ) -> Outcome:
        key = self.rotation.pick(rng)
        r = rng.random()
        if r < 0.5:
            outcome, out = await record_read(
                ctx, process, "read", key, None, lambda: self._read(client, key)
            )
            if outcome == "ok":
                self._seen[(slot, key)] = int(out["version"])
            return outcome
        if r < 0.75:
            value = self._value(slot)
            outcome, version = await record_write(
                ctx, process, "write", key, value,
                lambda: client.put(key, RECORD, encode(value)),
                lambda v: {"version": v},
            )
        elif r < 0.95:
            value = self._value(slot)
            expected = self._seen.get((slot, key), 0)
            outcome, version = await record_write(
                ctx, process, "cas", key, {"expected_version": expected, "new": value},
                lambda: client.cas(key, RECORD, encode(value), expected),
                lambda v: {"version": v},
            )
        else:
            outcome, version = await record_write(
                ctx, process, "delete", key, None,
                lambda: client.delete(key, RECORD),
                lambda v: {"version": v},
            )
        if outcome == "ok" and version is not None:
            self._seen[(slot, key)] = version
        return outcome

    async def final_read(self, key: str, client: AsyncClient, ctx: RunContext) -> bool:
        outcome, _ = await record_read(ctx, "final", "read", key, None, lambda: self._read(client, key))
        return outcome == "ok"

    def check(self, history: list[Op], partition_of: PartitionOf) -> dict[str, dict[str, Any]]:
        result = check_linearizable(
            history, VersionedRegisterModel(), max_steps_per_key=self.max_steps_per_key
        )
        return {"linearizable": result.to_json()}
