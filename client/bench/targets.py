"""What the load generator drives: medkv through the public AsyncClient, and
a one-hop Python gRPC echo (Python's own ceiling on this machine). etcd's
target is in client.bench.etcd.

A target turns a workload name into an Operation (client.bench.load) and
names the server processes whose CPU a point accounts for.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from client import AsyncClient, TlsConfig, ops
from client.bench.load import Operation

WORKLOADS = ("put", "get-linearizable", "get-follower", "mixed", "batch")
READ_WORKLOADS = ("get-linearizable", "get-follower", "mixed")
MIXED_WRITE_SHARE = 0.10  # mixed: 90 % linearizable gets, 10 % puts
RECORDS_PER_PATIENT = 8  # puts cycle over this many record ids per worker
PRELOAD_CONCURRENCY = 32


class Target(Protocol):
    system: str

    async def prepare(self, workloads: Sequence[str]) -> None: ...

    def operation(self, workload: str) -> Operation: ...

    def server_pids(self) -> list[int]: ...

    async def close(self) -> None: ...


async def bounded_gather(count: int, make: Any, concurrency: int = PRELOAD_CONCURRENCY) -> None:
    """await make(i) for i in range(count), at most `concurrency` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(count)))


class MedkvTarget:
    """medkv through AsyncClient: puts and linearizable gets go to each
    partition's leader, follower gets to any replica, as the client routes them.

    Patient ids carry a per-run prefix, so a run against a long-lived cluster
    (`--addr`) never touches earlier runs' patients (nor their registration)."""

    system = "medkv"

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        value_size: int = 200,
        keys: int = 1000,
        batch_size: int = 100,
        tls: TlsConfig | None = None,
        token: str | None = None,
        pids: Sequence[int] = (),
        seed: int | None = None,
    ) -> None:
        self.kv = AsyncClient(addresses, timeout=20.0, tls=tls, token=token)
        self.value = os.urandom(value_size)
        self.keys = keys
        self.batch_size = batch_size
        self.prefix = f"bench-{os.urandom(3).hex()}"
        self.rng = random.Random(seed)
        self._pids = list(pids)

    def patient(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    async def prepare(self, workloads: Sequence[str]) -> None:
        """Write the records the read workloads fetch (one per patient)."""
        if any(w in READ_WORKLOADS for w in workloads):
            await bounded_gather(
                self.keys, lambda i: self.kv.put(self.patient(i), "seed", self.value)
            )

    def server_pids(self) -> list[int]:
        return list(self._pids)

    async def close(self) -> None:
        await self.kv.close()

    def operation(self, workload: str) -> Operation:
        kv, rng, value, keys = self.kv, self.rng, self.value, self.keys

        async def put(w: int, seq: int) -> int:
            await kv.put(self.patient(rng.randrange(keys)), f"w{w}-{seq % RECORDS_PER_PATIENT}",
                         value)
            return 1

        async def get_linearizable(w: int, seq: int) -> int:
            await kv.get(self.patient(rng.randrange(keys)), "seed")
            return 1

        async def get_follower(w: int, seq: int) -> int:
            await kv.get(self.patient(rng.randrange(keys)), "seed", consistency="follower")
            return 1

        async def mixed(w: int, seq: int) -> int:
            if rng.random() < MIXED_WRITE_SHARE:
                return await put(w, seq)
            return await get_linearizable(w, seq)

        batch_ops = [ops.put(f"b{j}", value) for j in range(self.batch_size)]

        async def batch(w: int, seq: int) -> int:
            await kv.batch(f"{self.prefix}-b{rng.randrange(keys)}", batch_ops)
            return len(batch_ops)

        table = {"put": put, "get-linearizable": get_linearizable, "get-follower": get_follower,
                 "mixed": mixed, "batch": batch}
        if workload not in table:
            raise ValueError(f"unknown workload {workload!r}")
        return table[workload]


# The echo: one unary method that returns its request's bytes, no protobuf,
# no routing, no storage: what one gRPC hop costs in Python here.
ECHO_SERVICE = "medkv.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


class EchoTarget:
    """A client of client.bench.echo's server, same payload size as medkv's
    values: workload `echo-plain` over plaintext (etcd's transport here) and,
    when the server has certificates, `echo-tls` over mutual TLS with a bearer
    header (medkv's transport)."""

    system = "echo"

    def __init__(self, address: str, *, value_size: int = 200, tls_address: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None, pids: Sequence[int] = ()) -> None:
        self.channels = {"echo-plain": grpc.aio.insecure_channel(address)}
        if tls_address is not None and credentials is not None:
            self.channels["echo-tls"] = grpc.aio.secure_channel(tls_address, credentials)
        self.payload = os.urandom(value_size)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._pids = list(pids)

    @property
    def workloads(self) -> list[str]:
        return sorted(self.channels, reverse=True)  # echo-tls first, as medkv runs

    async def prepare(self, workloads: Sequence[str]) -> None:
        for w in workloads:
            await asyncio.wait_for(self.channels[w].channel_ready(), 20.0)

    def server_pids(self) -> list[int]:
        return list(self._pids)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    def operation(self, workload: str) -> Operation:
        if workload not in self.channels:
            raise ValueError(f"the echo target has {', '.join(self.channels)}, not {workload!r}")
        call = self.channels[workload].unary_unary(ECHO_METHOD)
        payload = self.payload
        metadata = self.metadata if workload == "echo-tls" else None

        async def echo(w: int, seq: int) -> int:
            reply = await call(payload, metadata=metadata, timeout=20.0)
            if len(reply) != len(payload):
                raise RuntimeError("echo returned a different payload")
            return 1

        return echo
