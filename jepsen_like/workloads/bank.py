"""Bank: money moves between one patient's accounts in atomic batches.

Each patient has a few account records (think: a care budget split across
services). A transfer reads two accounts linearizably and then sends ONE
batch: a check of each account's version plus the two new balances, so it
applies entirely or not at all, and only if nothing changed in between.
Money is neither created nor destroyed, so every consistent read of all of a
patient's accounts totals the same.

A consistent read (`read_all`) reads every account at ONE version: first a
linearizable read of one account, whose reply carries the serving leader's
applied index V (every entry up to V is applied there); then every account
with at_version=V, which medkv answers with the version current at index V
(verified on a real cluster: a record written at 2 and 4 reads as version 2
at V=3, as 4 at V=4 and at any V beyond; NOT_FOUND before its first write).
Those reads are linearizable too, so they reach a leader whose applied index
is at least V. A read that saw half a batch, a lost or doubled transfer shows
as a wrong total in `check_bank`.
"""

from __future__ import annotations

import random
from typing import Any

from client import AsyncClient, VersionConflict, ops
from client.retry import Deadline
from jepsen_like.checkers import check_bank
from jepsen_like.history import Op, Outcome
from jepsen_like.workloads.common import (
    OutOfTime,
    PartitionOf,
    RunContext,
    Workload,
    classify_write_error,
    error_name,
    record_read,
    remaining,
)

INITIAL_BALANCE = 100
MAX_TRANSFER = 10


class BankWorkload(Workload):
    name = "bank"

    def __init__(
        self, seed: int, concurrency: int, *, patients: int | None = None, accounts: int = 4
    ) -> None:
        super().__init__(seed, concurrency, tuple(f"acct-{i}" for i in range(accounts)))
        self.patients = [f"bank{seed}-{i}" for i in range(patients or max(3, concurrency))]
        self.accounts = list(self.record_ids)
        self.total = INITIAL_BALANCE * accounts
        self.ready: list[str] = []  # patients whose opening batch was acknowledged

    def used_keys(self) -> list[str]:
        return list(self.ready)

    def parameters(self) -> dict[str, Any]:
        return {
            "patients": len(self.patients),
            "accounts": len(self.accounts),
            "total_per_patient": self.total,
        }

    async def setup(self, client: AsyncClient, ctx: RunContext) -> None:
        """Open every patient's accounts in one batch (retried until acknowledged)."""
        for patient in self.patients:
            batch = [ops.check(a, 0) for a in self.accounts] + [
                ops.put(a, str(INITIAL_BALANCE).encode()) for a in self.accounts
            ]
            maybe_opened = False
            for _ in range(5):
                op_id = ctx.invoke("setup", "open", patient, dict.fromkeys(self.accounts, INITIAL_BALANCE))
                try:
                    version = await client.batch(patient, batch)
                except Exception as exc:
                    outcome, out = classify_write_error(exc)
                    ctx.complete(op_id, outcome, out, error_name(exc))
                    if isinstance(exc, VersionConflict) and maybe_opened:
                        # An earlier attempt whose fate was unknown did open
                        # them (nobody else writes these records).
                        self.ready.append(patient)
                        break
                    maybe_opened = maybe_opened or outcome == "info"
                    continue
                ctx.complete(op_id, "ok", {"version": version})
                self.ready.append(patient)
                break
        if not self.ready:
            raise RuntimeError("bank: no patient's accounts could be opened")

    async def read_all(
        self, client: AsyncClient, patient: str, deadline: Deadline | None = None
    ) -> dict[str, Any]:
        deadline = deadline or Deadline(30.0)
        first = await client.get(patient, self.accounts[0], timeout=remaining(deadline))
        at = first.applied_index
        balances: dict[str, int] = {}
        for account in self.accounts:
            rec = await client.get(patient, account, at_version=at, timeout=remaining(deadline))
            balances[account] = int(rec.value)
        return {"balances": balances, "at_version": at}

    async def step(
        self, slot: int, process: int, client: AsyncClient, rng: random.Random, ctx: RunContext
    ) -> Outcome:
        patient = rng.choice(self.ready)
        if rng.random() < 0.4:
            outcome, _ = await record_read(
                ctx, process, "read_all", patient, None,
                lambda: self.read_all(client, patient, ctx.deadline()),
            )
            return outcome
        src, dst = rng.sample(self.accounts, 2)
        amount = rng.randint(1, MAX_TRANSFER)
        value = {"from": src, "to": dst, "amount": amount}
        op_id = ctx.invoke(process, "transfer", patient, value)
        deadline = ctx.deadline()
        try:
            a = await client.get(patient, src, timeout=remaining(deadline))
            b = await client.get(patient, dst, timeout=remaining(deadline))
            timeout = remaining(deadline)
        except Exception as exc:
            name = "OUT_OF_TIME" if isinstance(exc, OutOfTime) else error_name(exc)
            ctx.complete(op_id, "fail", None, name)  # the batch was never sent
            return "fail"
        have = int(a.value)
        if have < amount:
            ctx.complete(op_id, "fail", {"insufficient": True})
            return "fail"
        batch = [
            ops.check(src, a.version),
            ops.check(dst, b.version),
            ops.put(src, str(have - amount).encode()),
            ops.put(dst, str(int(b.value) + amount).encode()),
        ]
        try:
            version = await client.batch(patient, batch, timeout=timeout)
        except Exception as exc:
            outcome, out = classify_write_error(exc)
            ctx.complete(op_id, outcome, out, error_name(exc))
            return outcome
        ctx.complete(op_id, "ok", {"version": version})
        return "ok"

    async def final_read(self, key: str, client: AsyncClient, ctx: RunContext) -> bool:
        outcome, _ = await record_read(
            ctx, "final", "read_all", key, None,
            lambda: self.read_all(client, key, ctx.deadline()),
        )
        return outcome == "ok"

    def check(self, history: list[Op], partition_of: PartitionOf) -> dict[str, dict[str, Any]]:
        result = check_bank(
            history,
            dict.fromkeys(self.ready, self.total),
            accounts={p: self.accounts for p in self.ready},
        )
        return {"bank": result.to_json()}
