"""Append: one growing list per patient, the shape of a clinical timeline.

An append reads the list (linearizably) and writes it back one element
longer with a compare-and-set on the version it read, retrying on a version
conflict within the op, as an application would. Every element is unique in
the run, so a read shows exactly which appends took effect and in what order;
`check_append` then finds lost, duplicated, reordered or phantom elements.

Outcome of one append: ``ok`` when a CAS succeeded; ``fail`` only when every
CAS attempt was refused by a version conflict (or nothing was ever sent);
``info`` as soon as one CAS attempt's fate is unknown (it may have applied,
so the op stops there rather than risk appending the element twice).
"""

from __future__ import annotations

import json
import random
from typing import Any

from client import AsyncClient, MedkvError, NotFound, VersionConflict
from jepsen_like.checkers import check_append
from jepsen_like.history import Op, Outcome
from jepsen_like.workloads.common import (
    KeyRotation,
    OutOfTime,
    PartitionOf,
    RunContext,
    Workload,
    classify_write_error,
    error_name,
    record_read,
    remaining,
)

RECORD = "timeline"
MAX_CAS_TRIES = 8


async def read_list(
    client: AsyncClient, key: str, timeout: float | None = None
) -> tuple[list[Any], int]:
    """The list and its version (empty at version 0 when absent)."""
    try:
        rec = await client.get(key, RECORD, timeout=timeout)
    except NotFound:
        return [], 0
    return list(json.loads(rec.value)), rec.version


class AppendWorkload(Workload):
    name = "append"

    def __init__(
        self,
        seed: int,
        concurrency: int,
        *,
        live_keys: int | None = None,
        appends_per_key: int = 120,
    ) -> None:
        super().__init__(seed, concurrency, (RECORD,))
        # Reads count toward rotation too; a key sees about 2x this many ops.
        self.rotation = KeyRotation(
            f"app{seed}-", live_keys or max(3, concurrency // 2), 2 * appends_per_key
        )
        self._counter = 0

    def used_keys(self) -> list[str]:
        return list(self.rotation.all)

    def parameters(self) -> dict[str, Any]:
        return {
            "live_keys": len(self.rotation.live()),
            "ops_per_key": self.rotation.ops_per_key,
            "keys_used": len(self.rotation.all),
        }

    async def step(
        self, slot: int, process: int, client: AsyncClient, rng: random.Random, ctx: RunContext
    ) -> Outcome:
        key = self.rotation.pick(rng)
        if rng.random() < 0.4:
            outcome, _ = await record_read(
                ctx, process, "read", key, None, lambda: self._read(client, key)
            )
            return outcome
        self._counter += 1
        element = (slot + 1) * 10_000_000 + self._counter
        return await self._append(client, ctx, process, key, element)

    async def _read(self, client: AsyncClient, key: str) -> dict[str, Any]:
        elements, _ = await read_list(client, key)
        return {"value": elements}

    async def _append(
        self, client: AsyncClient, ctx: RunContext, process: int, key: str, element: int
    ) -> Outcome:
        op_id = ctx.invoke(process, "append", key, element)
        deadline = ctx.deadline()
        tries = 0  # CAS attempts sent; every earlier one met a version conflict
        while True:
            try:
                elements, version = await read_list(client, key, remaining(deadline))
                timeout = remaining(deadline)
            except (OutOfTime, MedkvError) as exc:
                # Nothing applied: this round's CAS was never sent.
                name = "OUT_OF_TIME" if isinstance(exc, OutOfTime) else error_name(exc)
                ctx.complete(op_id, "fail", {"cas_tries": tries}, name)
                return "fail"
            tries += 1
            new = json.dumps([*elements, element]).encode()
            try:
                await client.cas(key, RECORD, new, version, timeout=timeout)
            except VersionConflict as exc:
                if tries < MAX_CAS_TRIES and not ctx.stop.is_set():
                    continue
                ctx.complete(op_id, "fail", {"cas_tries": tries}, error_name(exc))
                return "fail"
            except MedkvError as exc:
                outcome, _ = classify_write_error(exc)
                ctx.complete(op_id, outcome, {"cas_tries": tries}, error_name(exc))
                return outcome
            ctx.complete(op_id, "ok", {"cas_tries": tries})
            return "ok"

    async def final_read(self, key: str, client: AsyncClient, ctx: RunContext) -> bool:
        outcome, _ = await record_read(ctx, "final", "read", key, None, lambda: self._read(client, key))
        return outcome == "ok"

    def check(self, history: list[Op], partition_of: PartitionOf) -> dict[str, dict[str, Any]]:
        return {"append": check_append(history).to_json()}
