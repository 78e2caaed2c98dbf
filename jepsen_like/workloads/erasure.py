"""Erasure: patients are written, read in every mode, and erased; none comes back.

Workers put unique values into a few records of live patients, erase a live
patient now and then (it leaves the pool at once: nobody writes it again,
though a write already in flight may still land after the erasure, which the
checker allows), and read live and erased patients alike in every read mode
medkv has: linearizable, follower (with and without a min_version token at
the erasure), bounded staleness, history, and a scan of the patient's
partition. Each read records what it found and the applied index of the
replica that served it.

After healing, every erased patient is read on EVERY replica of its
partition directly (no routing), follower mode with min_version at the
erasure, Get and History: a replica that caught up by snapshot, restarted
between an erasure and its purge, or serves from an old read snapshot must
answer NOT_FOUND / no versions. `check_erasure` judges the whole history
(see jepsen_like.checkers.erasure).
"""

from __future__ import annotations

import random
from typing import Any

import grpc
import grpc.aio

from client import AsyncClient, NotFound
from client.records import Record
from jepsen_like.checkers import check_erasure
from jepsen_like.history import Op, Outcome
from jepsen_like.workloads.common import (
    PartitionOf,
    RunContext,
    Workload,
    decode,
    encode,
    record_read,
    record_write,
)
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc

RECORDS = ("r0", "r1")
ERASE_SHARE = 0.06
SCAN_SHARE = 0.03
BOUNDED_STALENESS_S = 1.0
DIRECT_TIMEOUT_S = 3.0


def _found(records: list[Record]) -> list[dict[str, Any]]:
    return [
        {
            "patient": r.patient_id,
            "value": decode(r.value),
            "version": r.version,
            "applied_index": r.applied_index,
        }
        for r in records
        if not r.deleted
    ]


class ErasureWorkload(Workload):
    name = "erasure"

    def __init__(self, seed: int, concurrency: int, *, live_patients: int | None = None) -> None:
        super().__init__(seed, concurrency, RECORDS)
        self.prefix = f"era{seed}-"
        self._next = 0
        self.live: list[str] = []
        self.all: list[str] = []
        for _ in range(live_patients or max(6, 2 * concurrency)):
            self.live.append(self._fresh())
        self.erased: dict[str, int] = {}  # patient -> acknowledged erasure version
        self.erasing: set[str] = set()  # erasure sent, outcome not (yet) ok
        self._counter = 0
        self.partition_of: PartitionOf | None = None  # known after setup

    def _fresh(self) -> str:
        patient = f"{self.prefix}{self._next}"
        self._next += 1
        self.all.append(patient)
        return patient

    def used_keys(self) -> list[str]:
        return list(self.all)

    def parameters(self) -> dict[str, Any]:
        return {
            "live_patients": len(self.live),
            "patients_used": len(self.all),
            "erased": len(self.erased),
            "erasures_unknown": len(self.erasing),
        }

    # -- reads -------------------------------------------------------------------

    async def _get(
        self, client: AsyncClient, patient: str, consistency: str, token: int | None
    ) -> dict[str, Any]:
        found: list[Record] = []
        applied = 0
        for record in RECORDS:
            try:
                rec = await client.get(
                    patient, record, consistency=consistency, min_version=token,
                    max_staleness=BOUNDED_STALENESS_S if consistency == "bounded" else None,
                )
            except NotFound:
                continue
            found.append(rec)
            applied = max(applied, rec.applied_index)
        return {"found": _found(found), "applied_index": applied}

    async def _history(self, client: AsyncClient, patient: str, consistency: str) -> dict[str, Any]:
        found: list[Record] = []
        for record in RECORDS:
            try:
                found += await client.history(patient, record, consistency=consistency)
            except NotFound:
                continue
        return {"found": _found(found), "applied_index": max((r.applied_index for r in found), default=0)}

    async def _scan(self, client: AsyncClient, partition: int) -> dict[str, Any]:
        found: list[Record] = []
        async for rec in client.scan(partitions=[partition], consistency="follower", timeout=8.0):
            if rec.patient_id.startswith(self.prefix):
                found.append(rec)
        return {"found": _found(found), "applied_index": 0}

    async def _read(
        self, ctx: RunContext, process: int, client: AsyncClient, rng: random.Random, patient: str
    ) -> Outcome:
        r = rng.random()
        token = self.erased.get(patient) if rng.random() < 0.5 else None
        if r < 0.3:
            mode, call = "linearizable", lambda: self._get(client, patient, "linearizable", None)
        elif r < 0.6:
            mode, call = "follower", lambda: self._get(client, patient, "follower", token)
        elif r < 0.8:
            mode, call = "bounded", lambda: self._get(client, patient, "bounded", None)
            token = None
        else:
            consistency = "linearizable" if rng.random() < 0.5 else "follower"
            mode, call = f"history-{consistency}", lambda: self._history(client, patient, consistency)
            token = None
        value: dict[str, Any] = {"mode": mode}
        if token:
            value["min_version"] = token
        outcome, _ = await record_read(ctx, process, "read", patient, value, call)
        return outcome

    # -- the workload --------------------------------------------------------------

    async def step(
        self, slot: int, process: int, client: AsyncClient, rng: random.Random, ctx: RunContext
    ) -> Outcome:
        r = rng.random()
        if r < ERASE_SHARE and len(self.live) > 1:
            i = rng.randrange(len(self.live))
            patient = self.live[i]
            self.live[i] = self._fresh()  # leaves the pool before the erasure is sent
            self.erasing.add(patient)
            outcome, version = await record_write(
                ctx, process, "erase", patient, None,
                lambda: client.erase_patient(patient),
                lambda v: {"version": v},
            )
            if outcome == "ok" and version is not None:
                self.erasing.discard(patient)
                self.erased[patient] = version
            elif outcome == "fail":
                self.erasing.discard(patient)
            return outcome
        if r < ERASE_SHARE + SCAN_SHARE and self.partition_of is not None:
            patient = rng.choice(list(self.erased) or self.live)
            partition = self.partition_of(patient)
            outcome, _ = await record_read(
                ctx, process, "read", None, {"mode": "scan", "partition": partition},
                lambda: self._scan(client, partition),
            )
            return outcome
        if r < 0.5:
            patient = self.live[rng.randrange(len(self.live))]
            self._counter += 1
            value = f"w{slot}-{self._counter}"
            record = rng.choice(RECORDS)
            outcome, _ = await record_write(
                ctx, process, "write", patient, value,
                lambda: client.put(patient, record, encode(value)),
                lambda v: {"version": v},
            )
            return outcome
        pool = list(self.erased) if self.erased and rng.random() < 0.6 else self.live
        return await self._read(ctx, process, client, rng, rng.choice(pool))

    async def setup(self, client: AsyncClient, ctx: RunContext) -> None:
        self.partition_of = (await client.routing_table()).partition_of

    async def final_read(self, key: str, client: AsyncClient, ctx: RunContext) -> bool:
        outcome, _ = await record_read(
            ctx, "final", "read", key, {"mode": "linearizable"},
            lambda: self._get(client, key, "linearizable", None),
        )
        if outcome != "ok":
            return False
        version = self.erased.get(key)
        if version is None:
            return True
        table = await client.routing_table()
        partition = table.partition_of(key)
        for node in table.replicas[partition]:
            address = table.nodes[node]
            outcome, _ = await record_read(
                ctx, "final", "read", key,
                {"mode": f"replica-{node}", "min_version": version},
                lambda address=address: self._direct(ctx, address, key, version),  # type: ignore[misc]
            )
            if outcome != "ok":
                return False
        return True

    async def _direct(
        self, ctx: RunContext, address: str, patient: str, version: int
    ) -> dict[str, Any]:
        """Get and History of every record on exactly the replica at `address`,
        follower mode, after it applied the erasure (min_version)."""
        read = common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER, min_version=version)
        found: list[dict[str, Any] | None] = []
        async with ctx.channel(address) as channel:
            stub: Any = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            for record in RECORDS:
                try:
                    reply = await stub.Get(
                        kv_pb2.GetRequest(patient_id=patient, record_id=record, read=read),
                        timeout=DIRECT_TIMEOUT_S,
                    )
                    found += [_direct_found(reply.record, reply.read_state)]
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                try:
                    hist = await stub.History(
                        kv_pb2.HistoryRequest(
                            patient_id=patient, record_id=record, read=read, limit=100
                        ),
                        timeout=DIRECT_TIMEOUT_S,
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    continue
                found += [_direct_found(v, hist.read_state) for v in hist.versions]
        return {"found": [f for f in found if f is not None], "applied_index": version}

    def check(self, history: list[Op], partition_of: PartitionOf) -> dict[str, dict[str, Any]]:
        return {"erasure": check_erasure(history).to_json()}


def _direct_found(rec: common_pb2.Record, state: common_pb2.ReadState) -> dict[str, Any] | None:
    if rec.deleted:
        return None
    return {
        "patient": rec.patient_id,
        "value": decode(rec.value),
        "version": rec.version,
        "applied_index": state.applied_index,
    }


__all__ = ["ErasureWorkload"]
