"""The per-patient append workload's checker.

Each write appends one unique element to one key's list (a patient's record
list); each read returns the whole list. A correct store behaves like one
growing log per key, so:

- ``duplicate``: no element appears twice in a read;
- ``phantom``: no element appears that was never appended to that key;
- ``failed_appeared``: no element whose append definitely failed appears;
- ``premature``: no element appears in a read that finished before its
  append was even invoked;
- ``divergent``: every read is a prefix of one total order per key (so of
  the longest read): readers never disagree on order;
- ``lost``: an acknowledged append appears in every read invoked after the
  append completed (the final read included);
- ``shrunk``: a read invoked after another read completed sees at least as
  many elements (an element once visible, even from an info append, stays);
- ``order``: if append a completed before append b was invoked and both
  appear, a comes first (real-time order of acknowledged appends).

Info appends may or may not appear; nothing is required of them beyond the
checks that follow from being visible.

Op shapes: kind "append", key, value = the element (a JSON scalar, unique
per history); kind "read", key, output {"value": [elements]} (null = empty).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.checkers.models import freeze
from jepsen_like.history import Op

_MAX_PER_TYPE = 20  # violations kept per type; the counts stay exact


@dataclass(slots=True)
class AppendResult:
    valid: bool
    keys: int
    appends: int
    reads: int
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": "append",
            "valid": self.valid,
            "verdict": "valid" if self.valid else "invalid",
            "keys": self.keys,
            "appends": self.appends,
            "reads": self.reads,
            "counts": self.counts,
            "violations": self.violations,
        }


class _Report:
    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.violations: list[dict[str, Any]] = []

    def add(self, kind: str, key: str | None, **detail: Any) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _MAX_PER_TYPE:
            self.violations.append({"type": kind, "key": key, **detail})


def check_append(
    history: Iterable[Op], *, append_kind: str = "append", read_kind: str = "read"
) -> AppendResult:
    """Check an append-workload history; other kinds in `history` are ignored.

    Raises ValueError if the workload appended one element twice (the checks
    rely on elements being unique).
    """
    appends: dict[str | None, dict[Hashable, Op]] = defaultdict(dict)
    reads: dict[str | None, list[tuple[Op, list[Hashable]]]] = defaultdict(list)
    for op in history:
        if op.kind == append_kind:
            element = freeze(op.value)
            if element in appends[op.key]:
                raise ValueError(
                    f"op {op.id}: element appended twice; the workload must make them unique"
                )
            appends[op.key][element] = op
        elif op.kind == read_kind and op.outcome == "ok":
            raw = op.output.get("value") if isinstance(op.output, dict) else None
            reads[op.key].append((op, [freeze(x) for x in (raw or [])]))
    owner: dict[Hashable, str | None] = {}
    for key, elements in appends.items():
        for element in elements:
            owner.setdefault(element, key)
    report = _Report()
    keys = set(appends) | set(reads)
    for key in sorted(keys, key=lambda k: (k is None, k or "")):
        _check_key(key, appends.get(key, {}), reads.get(key, []), owner, report)
    n_reads = sum(len(r) for r in reads.values())
    n_appends = sum(len(a) for a in appends.values())
    return AppendResult(
        valid=not report.counts,
        keys=len(keys),
        appends=n_appends,
        reads=n_reads,
        counts=dict(report.counts),
        violations=report.violations,
    )


def _check_key(
    key: str | None,
    appends: dict[Hashable, Op],
    reads: list[tuple[Op, list[Hashable]]],
    owner: dict[Hashable, str | None],
    report: _Report,
) -> None:
    # Element-level checks on every read.
    for op, elems in reads:
        seen: set[Hashable] = set()
        for element in elems:
            if element in seen:
                report.add("duplicate", key, element=element, read=_summary(op))
            seen.add(element)
            a = appends.get(element)
            if a is None:
                report.add(
                    "phantom",
                    key,
                    element=element,
                    read=_summary(op),
                    appended_to_other_key=element in owner,
                )
            elif a.outcome == "fail":
                report.add(
                    "failed_appeared", key, element=element, read=_summary(op), append=_summary(a)
                )
            elif op.end_ns < a.invoke_ns:
                report.add("premature", key, element=element, read=_summary(op), append=_summary(a))

    if not reads:
        return
    # One total order: every read is a prefix of the longest.
    longest_op, longest = max(reads, key=lambda r: len(r[1]))
    divergent: list[tuple[Op, list[Hashable]]] = []
    for op, elems in reads:
        if elems != longest[: len(elems)]:
            divergent.append((op, elems))
            at = next(i for i, (x, y) in enumerate(zip(elems, longest, strict=False)) if x != y)
            report.add(
                "divergent",
                key,
                index=at,
                read=_summary(op),
                other_read=_summary(longest_op),
                this_element=elems[at],
                other_element=longest[at],
            )
    _check_lost(key, appends, reads, divergent, longest, report)

    # Reads that shrank.
    by_invoke = sorted(reads, key=lambda r: r[0].invoke_ns)
    by_complete = sorted(
        (r for r in reads if not math.isinf(r[0].end_ns)), key=lambda r: r[0].end_ns
    )
    j, best_len, best_op = 0, -1, None
    for op, elems in by_invoke:
        while j < len(by_complete) and by_complete[j][0].end_ns < op.invoke_ns:
            if len(by_complete[j][1]) > best_len:
                best_len, best_op = len(by_complete[j][1]), by_complete[j][0]
            j += 1
        if best_op is not None and len(elems) < best_len:
            report.add(
                "shrunk",
                key,
                read=_summary(op),
                earlier_read=_summary(best_op),
                earlier_len=best_len,
            )

    # Real-time order of appends, along the longest read.
    suffix_min = [math.inf] * (len(longest) + 1)
    for i in range(len(longest) - 1, -1, -1):
        a = appends.get(longest[i])
        done = a.end_ns if a is not None and a.outcome == "ok" else math.inf
        suffix_min[i] = min(suffix_min[i + 1], done)
    for i, element in enumerate(longest):
        b = appends.get(element)
        if b is not None and suffix_min[i + 1] < b.invoke_ns:
            later = next(
                x
                for x in longest[i + 1 :]
                if x in appends and appends[x].outcome == "ok" and appends[x].end_ns < b.invoke_ns
            )
            report.add(
                "order",
                key,
                element=element,
                acked_before_it_was_invoked=later,
                append=_summary(b),
                earlier_append=_summary(appends[later]),
            )


def _check_lost(
    key: str | None,
    appends: dict[Hashable, Op],
    reads: list[tuple[Op, list[Hashable]]],
    divergent: list[tuple[Op, list[Hashable]]],
    longest: list[Hashable],
    report: _Report,
) -> None:
    """Every ok append must be in every read invoked after it completed.

    For reads that are prefixes of the longest read, "contains e" is just
    "longer than e's position", so a suffix minimum of read lengths (in
    invocation order) answers each append in O(log R). The few divergent
    reads are checked element by element.
    """
    divergent_ids = {id(op) for op, _ in divergent}
    prefix_reads = sorted(
        (r for r in reads if id(r[0]) not in divergent_ids), key=lambda r: r[0].invoke_ns
    )
    invokes = [op.invoke_ns for op, _ in prefix_reads]
    suffix_min = [math.inf] * (len(prefix_reads) + 1)
    for i in range(len(prefix_reads) - 1, -1, -1):
        suffix_min[i] = min(suffix_min[i + 1], len(prefix_reads[i][1]))
    position = {element: i for i, element in enumerate(longest)}
    for element, a in appends.items():
        if a.outcome != "ok":
            continue
        done = a.end_ns
        first = bisect.bisect_right(invokes, done)
        pos = position.get(element, math.inf)
        if first < len(prefix_reads) and suffix_min[first] <= pos:
            missing = next(op for op, elems in prefix_reads[first:] if len(elems) <= pos)
            report.add("lost", key, element=element, append=_summary(a), read=_summary(missing))
            continue
        for op, elems in divergent:
            if op.invoke_ns > done and element not in elems:
                report.add("lost", key, element=element, append=_summary(a), read=_summary(op))
                break


def _summary(op: Op) -> dict[str, Any]:
    end = op.end_ns
    return {
        "id": op.id,
        "process": op.process,
        "kind": op.kind,
        "outcome": op.outcome,
        "invoke_ns": op.invoke_ns,
        "complete_ns": None if math.isinf(end) else op.complete_ns,
        **(
            {"output_len": len(op.output.get("value") or [])} if isinstance(op.output, dict) else {}
        ),
    }
