"""Operation histories: what the clients asked, what they were told, and when.

A history is a list of `Op`, stored on disk as JSON lines (one op per line).
Every checker in `jepsen_like.checkers` reads this one format.

Outcomes follow Jepsen's convention:

- ``ok``: the operation took effect, and `output` is what the system answered;
- ``fail``: the operation definitely did not take effect (a checker may drop it);
- ``info``: indeterminate (timeout, lost connection): it may have taken effect
  at any moment after its invocation, or never. For checking, an info op
  completes at +infinity (`Op.end_ns`); `complete_ns` still holds the time the
  client gave up, which the report uses for latency plots.

Times are integer nanoseconds of a monotonic clock, counted from the start of
the run, so histories from different processes compare only when they share a
start (`HistoryRecorder(start_ns=...)`).

Values (`value`, `output`) must be JSON values: the workloads use synthetic
strings and integers, never patient data. JSON has no tuples: they come back
as lists, which the models freeze again before comparing.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["ok", "fail", "info"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "info")


@dataclass(slots=True)
class Op:
    """One client operation, from invocation to completion.

    `outcome` is None only while the operation is still in flight inside a
    `HistoryRecorder`; histories handed to checkers have no pending ops.
    """

    id: int
    process: int | str
    kind: str
    key: str | None
    value: Any
    invoke_ns: int
    outcome: Outcome | None = None
    complete_ns: int | None = None
    output: Any = None
    # A short error class ("DEADLINE_EXCEEDED", "UNAVAILABLE"), never a message
    # that could carry patient data.
    error: str | None = None
    # Free-form, JSON-able annotations a workload wants to keep (node, attempt).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def end_ns(self) -> float:
        """When the op is known to have finished, for checking: +inf for info."""
        if self.outcome == "info" or self.complete_ns is None:
            return math.inf
        return float(self.complete_ns)

    @property
    def latency_ns(self) -> int | None:
        """Observed latency (info ops included: the time until the client gave up)."""
        if self.complete_ns is None:
            return None
        return self.complete_ns - self.invoke_ns

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "process": self.process,
            "kind": self.kind,
            "key": self.key,
            "value": self.value,
            "outcome": self.outcome,
            "invoke_ns": self.invoke_ns,
            "complete_ns": self.complete_ns,
            "output": self.output,
        }
        if self.error is not None:
            d["error"] = self.error
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        outcome = d.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise ValueError(f"op {d.get('id')}: unknown outcome {outcome!r}")
        complete = d.get("complete_ns")
        return cls(
            id=int(d["id"]),
            process=d["process"],
            kind=str(d["kind"]),
            key=d.get("key"),
            value=d.get("value"),
            invoke_ns=int(d["invoke_ns"]),
            outcome=outcome,
            complete_ns=None if complete is None else int(complete),
            output=d.get("output"),
            error=d.get("error"),
            meta=dict(d.get("meta") or {}),
        )


def dump_history(path: str | Path, history: Iterable[Op]) -> None:
    """Write ops as JSON lines, atomically (a crash never leaves half a file)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for op in history:
            f.write(json.dumps(op.to_json(), separators=(",", ":"), allow_nan=False))
            f.write("\n")
    tmp.replace(target)


def load_history(path: str | Path) -> list[Op]:
    """Read a JSONL history; blank lines are skipped, ops come back sorted by id."""
    ops: list[Op] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ops.append(Op.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a history op ({e})") from e
    ops.sort(key=lambda o: o.id)
    return ops


class HistoryRecorder:
    """Records a history as clients run; safe to call from threads and asyncio.

    The lock is held only for a dict update, so calling it from an event loop
    never blocks the loop in practice.
    """

    def __init__(
        self,
        start_ns: int | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._clock = clock_ns
        self.start_ns = clock_ns() if start_ns is None else start_ns
        self._lock = threading.Lock()
        self._ops: dict[int, Op] = {}
        self._next_id = 0

    def now_ns(self) -> int:
        """Nanoseconds since the run started, on the recorder's clock."""
        return self._clock() - self.start_ns

    def invoke(
        self,
        process: int | str,
        kind: str,
        key: str | None = None,
        value: Any = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Record that `process` is about to send an operation; returns its id."""
        with self._lock:
            op_id = self._next_id
            self._next_id += 1
            self._ops[op_id] = Op(
                id=op_id,
                process=process,
                kind=kind,
                key=key,
                value=value,
                invoke_ns=self.now_ns(),
                meta=dict(meta or {}),
            )
        return op_id

    def complete(
        self,
        op_id: int,
        outcome: Outcome,
        output: Any = None,
        error: str | None = None,
    ) -> Op:
        """Record the answer (or the lack of one) for an invoked operation."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        now = self.now_ns()
        with self._lock:
            op = self._ops[op_id]
            if op.outcome is not None:
                raise ValueError(f"op {op_id} was already completed as {op.outcome}")
            op.outcome = outcome
            op.complete_ns = max(now, op.invoke_ns)
            op.output = output
            op.error = error
            return replace(op, meta=dict(op.meta))

    def ops(self) -> list[Op]:
        """A snapshot, in invocation order; pending ops have outcome None."""
        with self._lock:
            return [replace(op, meta=dict(op.meta)) for op in self._ops.values()]

    def history(self) -> list[Op]:
        """A snapshot for checking: ops still pending become info (never answered)."""
        out = self.ops()
        for op in out:
            if op.outcome is None:
                op.outcome = "info"
                op.error = op.error or "PENDING_AT_END"
        return out

    def dump(self, path: str | Path) -> None:
        dump_history(path, self.history())
