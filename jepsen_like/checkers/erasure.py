"""Erasure: an erased patient's data never comes back, on any replica, in any read mode.

The right to erasure is a promise about every copy: once ErasePatient has
applied at index E, no read that is "after" it may return anything the
patient had written before it. "After" is judged two ways, because reads in
medkv come in two kinds:

- a linearizable read (kind ``read``, mode ``linearizable``) that began after
  the erasure was acknowledged: real-time order, as Jepsen judges any read;
- any read (linearizable, follower, bounded, history, scan, a direct read of
  one replica) that reports it was served by a replica whose applied index is
  at least E, or that asked for min_version >= E: that replica says it has
  applied the erasure, so nothing from before it may remain. This is what
  catches a follower, a replica that caught up from a snapshot, or a scan's
  read snapshot that still serves the patient's old data.

A read that shows a record of the patient is matched with the write that
produced it by its value (every workload value is unique): its "origin" is
that write's acknowledged version, or, for a write whose fate was unknown
(info), the version the read reports. A record is a reappearance when its
origin is at or below E and the read is after the erasure by either rule.
A write of the patient racing with or following the erasure legitimately
recreates data (origin above E) and is never flagged.

Violations:

``reappeared``
    data from at or before the erasure, in a read after it (see above);
``never_written``
    a record value no write of the patient ever carried (it cannot be
    placed; it is reported, since erased data could hide behind it).

An erasure whose outcome is unknown (info) has no known index and is counted
in ``unchecked_erasures``; a failed one never happened.

Op shapes (synthetic values only):
  kind "write", key patient, value v, ok output {"version": n};
  kind "erase", key patient, ok output {"version": E};
  kind "read", key patient (or null for a scan), value
  {"mode": m, "min_version": t (optional)}, ok output
  {"found": [{"patient": p, "value": v, "version": n, "applied_index": a}, ...],
   "applied_index": a} (the top-level applied index is the serving replica's
  when nothing was found; each record carries the one of the page it came in).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.history import Op

_MAX_VIOLATIONS = 50
LINEARIZABLE = "linearizable"


@dataclass(slots=True)
class ErasureResult:
    valid: bool
    erasures: int
    unchecked_erasures: int
    reads: int
    observations: int
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": "erasure",
            "valid": self.valid,
            "verdict": "valid" if self.valid else "invalid",
            "erasures": self.erasures,
            "unchecked_erasures": self.unchecked_erasures,
            "reads": self.reads,
            "observations": self.observations,
            "counts": self.counts,
            "violations": self.violations,
        }


@dataclass(slots=True)
class _Erasure:
    op: Op
    index: int


@dataclass(slots=True)
class _Patient:
    erasures: list[_Erasure] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # value -> acknowledged version
    maybe: set[str] = field(default_factory=set)  # values of info writes


def check_erasure(history: Iterable[Op]) -> ErasureResult:
    """Check every ok read of `history` against every ok erasure (see the module doc)."""
    ops = list(history)
    patients: dict[str, _Patient] = defaultdict(_Patient)
    unchecked = 0
    for op in ops:
        if op.key is None:
            continue
        if op.kind == "erase":
            if op.outcome == "ok":
                patients[op.key].erasures.append(_Erasure(op, int(op.output["version"])))
            elif op.outcome == "info":
                unchecked += 1
        elif op.kind == "write":
            if op.outcome == "ok":
                patients[op.key].acked[str(op.value)] = int(op.output["version"])
            elif op.outcome == "info":
                patients[op.key].maybe.add(str(op.value))

    counts: dict[str, int] = defaultdict(int)
    violations: list[dict[str, Any]] = []
    n_reads = n_obs = 0

    def add(kind: str, op: Op, **detail: Any) -> None:
        counts[kind] += 1
        if len(violations) < _MAX_VIOLATIONS:
            violations.append({"type": kind, "read": _summary(op), **detail})

    for op in ops:
        if op.kind != "read" or op.outcome != "ok" or not isinstance(op.output, dict):
            continue
        n_reads += 1
        params = op.value if isinstance(op.value, dict) else {}
        mode = str(params.get("mode") or LINEARIZABLE)
        token = int(params.get("min_version") or 0)
        for found in op.output.get("found") or ():
            n_obs += 1
            patient = str(found.get("patient") or op.key or "")
            known = patients.get(patient)
            if known is None or not known.erasures:
                continue  # never erased: other checkers judge it
            value = str(found["value"])
            version = int(found["version"])
            applied = int(found.get("applied_index") or 0)
            if value in known.acked:
                origin = known.acked[value]
            elif value in known.maybe:
                origin = version
            else:
                add("never_written", op, patient=patient, version=version)
                continue
            for e in known.erasures:
                if origin > e.index:
                    continue
                why = []
                if mode == LINEARIZABLE and op.invoke_ns > e.op.end_ns:
                    why.append("linearizable read began after the erasure was acknowledged")
                if applied >= e.index:
                    why.append("served by a replica that had applied the erasure")
                if token >= e.index:
                    why.append("asked for min_version at or past the erasure")
                if why:
                    add(
                        "reappeared", op, patient=patient, mode=mode, version=version,
                        origin=origin, applied_index=applied, erased_at=e.index,
                        erasure=_summary(e.op), why=why,
                    )
                    break
    return ErasureResult(
        valid=not counts,
        erasures=sum(len(p.erasures) for p in patients.values()),
        unchecked_erasures=unchecked,
        reads=n_reads,
        observations=n_obs,
        counts=dict(counts),
        violations=violations,
    )


def _summary(op: Op) -> dict[str, Any]:
    end = op.end_ns
    return {
        "id": op.id,
        "process": op.process,
        "kind": op.kind,
        "key": op.key,
        "value": op.value,
        "invoke_ns": op.invoke_ns,
        "complete_ns": None if math.isinf(end) else op.complete_ns,
    }


__all__ = ["ErasureResult", "check_erasure"]
