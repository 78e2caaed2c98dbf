"""What every workload shares: the run context, outcome classification,
recording one client call as one history op, and bounded key rotation.

Outcomes follow `jepsen_like.history`: a write whose fate the client cannot
know (a timeout, UNAVAILABLE after the request was sent, a lost connection)
is ``info``, never ``fail``; only answers that prove nothing was applied
(version conflict, not found, invalid argument, or an error before any
attempt left the client) are ``fail``. A read that got no answer is ``fail``:
it observed nothing, so it constrains nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import grpc

from client import (
    AsyncClient,
    DeadlineExceeded,
    InvalidArgument,
    MedkvError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VersionConflict,
)
from client.retry import Deadline
from jepsen_like.history import HistoryRecorder, Op, Outcome

T = TypeVar("T")

PartitionOf = Callable[[str], int]


def derive_rng(seed: int, label: str) -> random.Random:
    """An independent, reproducible random stream per (seed, purpose)."""
    digest = hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def error_name(exc: BaseException) -> str:
    """A short error class for the history: a status code name, never a message."""
    if isinstance(exc, MedkvError) and exc.code is not None:
        return str(exc.code.name)
    return type(exc).__name__


def classify_write_error(exc: BaseException) -> tuple[Outcome, Any]:
    """(outcome, output) of a write that raised `exc`."""
    if isinstance(exc, VersionConflict):
        return "fail", {"precondition_failed": True}
    if isinstance(exc, NotFound | InvalidArgument):
        return "fail", None
    if isinstance(exc, Unavailable | DeadlineExceeded | ResourceExhausted) and exc.attempts == 0:
        return "fail", None  # no attempt ever left the client
    # Sent and unanswered, DATA_LOSS while in flight, an expired session after
    # a retry, anything unexpected: it may have been applied.
    return "info", None


@dataclass
class RunContext:
    """What workers share during a run."""

    recorder: HistoryRecorder
    concurrency: int
    seed: int
    stop: asyncio.Event
    # One call's time budget, retries included. Ops made of several calls
    # (an append's read-CAS loop, a transfer, a read_all) share one
    # `deadline()`, so a fault costs every op a bounded stall.
    op_timeout: float = 4.0
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # TLS + the run's token, for raw stubs that bypass the client (set once the
    # cluster is up; None: a plaintext channel, as in unit tests).
    credentials: grpc.ChannelCredentials | None = None

    def channel(self, address: str) -> grpc.aio.Channel:
        """A raw channel to one node with the run's credentials."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(address, self.credentials)

    def deadline(self) -> Deadline:
        """The deadline of one multi-call op (twice a single call's budget)."""
        return Deadline(2 * self.op_timeout)

    def invoke(
        self, process: int | str, kind: str, key: str | None, value: Any, meta: dict[str, Any] | None = None
    ) -> int:
        return self.recorder.invoke(process, kind, key, value, meta)

    def complete(
        self, op_id: int, outcome: Outcome, output: Any = None, error: str | None = None
    ) -> Op:
        self.counts[outcome] += 1
        if error is not None:
            self.errors[error] += 1
        return self.recorder.complete(op_id, outcome, output, error)


async def record_write(
    ctx: RunContext,
    process: int | str,
    kind: str,
    key: str,
    value: Any,
    call: Callable[[], Awaitable[T]],
    output: Callable[[T], Any],
) -> tuple[Outcome, T | None]:
    """Invoke, run and complete one write op; returns its outcome and result."""
    op_id = ctx.invoke(process, kind, key, value)
    try:
        result = await call()
    except Exception as exc:
        outcome, out = classify_write_error(exc)
        ctx.complete(op_id, outcome, out, error_name(exc))
        return outcome, None
    ctx.complete(op_id, "ok", output(result))
    return "ok", result


async def record_read(
    ctx: RunContext,
    process: int | str,
    kind: str,
    key: str | None,
    value: Any,
    call: Callable[[], Awaitable[Any]],
) -> tuple[Outcome, Any]:
    """Invoke, run and complete one read op: `call` returns the op's output."""
    op_id = ctx.invoke(process, kind, key, value)
    try:
        out = await call()
    except Exception as exc:
        ctx.complete(op_id, "fail", None, error_name(exc))
        return "fail", None
    ctx.complete(op_id, "ok", out)
    return "ok", out


class OutOfTime(Exception):
    """A multi-call op ran out of its deadline before its next call."""


def remaining(deadline: Deadline) -> float:
    """Seconds left for the next call of a multi-call op; OutOfTime if none."""
    left = deadline.remaining()
    if left < 0.05:
        raise OutOfTime
    return left


class KeyRotation:
    """A fixed number of live keys; each is retired after `ops_per_key` ops.

    Linearizability checking costs grow steeply with one key's history, so
    (as Jepsen's independent keys do) every key gets a bounded number of ops
    and a fresh key takes its place: long runs stay checkable.
    """

    def __init__(self, prefix: str, live: int, ops_per_key: int) -> None:
        self.prefix = prefix
        self.ops_per_key = ops_per_key
        self._next = 0
        self._live: list[str] = []
        self._used: dict[str, int] = {}
        self.all: list[str] = []
        for _ in range(live):
            self._live.append(self._fresh())

    def _fresh(self) -> str:
        key = f"{self.prefix}{self._next}"
        self._next += 1
        self._used[key] = 0
        self.all.append(key)
        return key

    def pick(self, rng: random.Random) -> str:
        i = rng.randrange(len(self._live))
        key = self._live[i]
        self._used[key] += 1
        if self._used[key] >= self.ops_per_key:
            self._live[i] = self._fresh()
        return key

    def live(self) -> list[str]:
        return list(self._live)


class Workload(ABC):
    """One workload family: how workers generate ops, the final reads, the checks.

    `step` runs one op (a few RPCs at most) and returns its outcome; the
    runner calls it in a loop per worker until the run's stop event is set,
    retiring the process id after an ``info`` op (its op may still apply).
    """

    name: ClassVar[str]

    def __init__(self, seed: int, concurrency: int, record_ids: tuple[str, ...] = ("r",)) -> None:
        self.seed = seed
        self.concurrency = concurrency
        # The records every key (a patient id) of this workload has.
        self.record_ids = record_ids
        # How many fault windows the run had (set before check(): some
        # checkers' slack grows with the faults).
        self.fault_windows = 0

    async def setup(self, client: AsyncClient, ctx: RunContext) -> None:  # noqa: B027 - optional hook
        """Initial state, recorded in the history like any op."""

    @abstractmethod
    async def step(
        self, slot: int, process: int, client: AsyncClient, rng: random.Random, ctx: RunContext
    ) -> Outcome: ...

    @abstractmethod
    def used_keys(self) -> list[str]:
        """Every patient id the run used (for the final reads and the bitflip probe)."""

    @abstractmethod
    async def final_read(self, key: str, client: AsyncClient, ctx: RunContext) -> bool:
        """One final read of `key` after healing, recorded in the history; True if it succeeded."""

    @abstractmethod
    def check(self, history: list[Op], partition_of: PartitionOf) -> dict[str, dict[str, Any]]:
        """Checker name -> the checker's `to_json()`."""

    def parameters(self) -> dict[str, Any]:
        """What the summary should record about this workload's shape."""
        return {}


def encode(value: Any) -> bytes:
    """Workload values travel as UTF-8 text (strings, or JSON for lists)."""
    return str(value).encode()


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


__all__ = [
    "KeyRotation",
    "OutOfTime",
    "PartitionOf",
    "RunContext",
    "Workload",
    "classify_write_error",
    "decode",
    "derive_rng",
    "encode",
    "error_name",
    "record_read",
    "record_write",
    "remaining",
]
