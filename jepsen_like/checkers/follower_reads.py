"""Follower (serializable) reads, checked against the committed writes.

A follower read is not linearizable by design: it returns a replica's applied
state, which may lag. What it must be is a faithful read of *some prefix of
the log*, the one up to the applied index it reports. As etcd's robustness
tests do for serializable reads, we replay what is known of the log (the
writes, each with its version = the Raft index that applied it) and check
each read against the prefix it claims. What is checked, exactly:

``version_reused``
    Two different acknowledged writes of one key report the same version.
``version_above_applied``
    The read's version is above the applied index it reports.
``never_written``
    The (value, version) pair was never written: version 0 must come with
    the absent value (None); a version no acknowledged write of the key has
    must carry the value of an indeterminate (info) write of the key, since
    those may have applied at an index we never learned.
``wrong_value_at_version``
    An acknowledged write of the key has that version but another value.
``stale_for_applied_index``
    An acknowledged write of the key has a version v with
    read.version < v <= applied_index: the replica says it applied that entry,
    yet returned an older value. Info writes, whose versions are unknown,
    cannot be placed and so never cause this.
``below_min_version``
    The client sent a read-your-writes token (min_version) and the replica
    answered with applied_index below it.
``negative_lag``
    The reported lag is negative.
``stale_beyond_claim``
    The read states a staleness s >= 0 (seconds; -1 is "unknown" and claims
    nothing) yet misses a write of its key acknowledged before
    invoke - s - clock_error: its version is below that write's (DESIGN
    invariant 8: a replica never claims to be fresher than it is). The
    read's invoke time is used because the replica measured s at some
    moment after it, so the test is never stricter than the claim; the
    acknowledgement time is when the client saw it, after the commit.
    `clock_error_s` is the error the suite states between its clock and the
    nodes' (staleness is measured on the nodes). A read of an absent record
    (version 0) reflects a write that was a delete.
``over_bound``
    A bounded read (value {"max_staleness": b}) was served stating a
    staleness above b, or unknown: it must have been refused instead.
``beyond_log``
    applied_index + lag (the commit index the replica claims to know) exceeds
    what the log can hold when the read completed: the highest version of an
    acknowledged write invoked before then in the same Raft group, plus one
    index per unacknowledged (info or fail) write invoked before then (each
    may have consumed an index), plus `index_slack` for entries the history
    cannot see (leader no-ops, membership changes, client-internal retries,
    other workloads in the group). A lower bound on lag is not checkable
    from client histories: a follower may not yet have heard of the latest
    commit. Disable with index_slack=None.

Op shapes: writes are the versioned register's (kinds write, cas, delete;
ok output {"version": n}). Follower reads: kind "follower_read", key,
value {"min_version": m, "max_staleness": b} (each optional) or null, ok
output {"value": v, "version": n, "applied_index": a, "lag": l,
"staleness": s} (staleness optional or null: no claim).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.checkers.models import freeze
from jepsen_like.history import Op

_MAX_VIOLATIONS = 50
_ABSENT = None  # the value of a record that does not exist (or was deleted)


@dataclass(slots=True)
class FollowerReadsResult:
    valid: bool
    reads: int
    writes: int
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)
    index_slack: int | None = None
    clock_error_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": "follower_reads",
            "valid": self.valid,
            "verdict": "valid" if self.valid else "invalid",
            "reads": self.reads,
            "writes": self.writes,
            "index_slack": self.index_slack,
            "clock_error_s": self.clock_error_s,
            "counts": self.counts,
            "violations": self.violations,
        }


@dataclass(slots=True)
class _KeyLog:
    """What is known of one key's writes."""

    by_version: dict[int, Hashable] = field(default_factory=dict)  # acknowledged
    writer: dict[int, Op] = field(default_factory=dict)
    versions: list[int] = field(default_factory=list)  # sorted, acknowledged
    # Acknowledged writes by acknowledgement time: (complete_ns, version), and
    # the running maximum of versions in that order.
    acked_at: list[int] = field(default_factory=list)
    acked_max: list[int] = field(default_factory=list)
    maybe_values: set[Hashable] = field(default_factory=set)  # info writes


@dataclass(slots=True)
class _GroupLog:
    """Per Raft group, in invocation order: for the beyond_log bound."""

    invokes: list[int] = field(default_factory=list)
    max_version: list[int] = field(default_factory=list)  # prefix max
    unacked: list[int] = field(default_factory=list)  # prefix count


def _written_value(op: Op) -> Hashable:
    if op.kind == "delete":
        return _ABSENT
    if op.kind == "cas":
        return freeze(op.value["new"]) if isinstance(op.value, dict) else None
    return freeze(op.value)


def check_follower_reads(
    history: Iterable[Op],
    *,
    read_kind: str = "follower_read",
    write_kinds: Collection[str] = ("write", "cas", "delete"),
    group_of: Callable[[str | None], Hashable] | None = None,
    index_slack: int | None = 64,
    clock_error_s: float = 0.0,
) -> FollowerReadsResult:
    """Check every ok follower read of `history` (see the module doc).

    `group_of` maps a key to its Raft group (partition); the default puts all
    keys in one group, which only loosens the beyond_log bound.
    """
    ops = list(history)
    group = group_of or (lambda _key: None)
    counts: dict[str, int] = defaultdict(int)
    violations: list[dict[str, Any]] = []

    def add(kind: str, op: Op, **detail: Any) -> None:
        counts[kind] += 1
        if len(violations) < _MAX_VIOLATIONS:
            violations.append({"type": kind, "key": op.key, "op": _summary(op), **detail})

    logs: dict[str | None, _KeyLog] = defaultdict(_KeyLog)
    group_writes: dict[Hashable, list[Op]] = defaultdict(list)
    n_writes = 0
    for op in ops:
        if op.kind not in write_kinds:
            continue
        n_writes += 1
        group_writes[group(op.key)].append(op)
        log = logs[op.key]
        if op.outcome == "info":
            log.maybe_values.add(_written_value(op))
        elif op.outcome == "ok":
            version = int(op.output["version"])
            if version in log.by_version:
                add("version_reused", op, version=version, other=_summary(log.writer[version]))
                continue
            log.by_version[version] = _written_value(op)
            log.writer[version] = op
    for log in logs.values():
        log.versions = sorted(log.by_version)
        best = 0
        for at, v in sorted((int(w.complete_ns or 0), v) for v, w in log.writer.items()):
            best = max(best, v)
            log.acked_at.append(at)
            log.acked_max.append(best)
    groups = {g: _group_log(ws) for g, ws in group_writes.items()}

    n_reads = 0
    for op in ops:
        if op.kind != read_kind or op.outcome != "ok":
            continue
        n_reads += 1
        out = op.output
        value = freeze(out.get("value"))
        version = int(out.get("version") or 0)
        applied = int(out["applied_index"])
        lag = int(out.get("lag") or 0)
        log = logs.get(op.key) or _KeyLog()
        if version > applied:
            add("version_above_applied", op, version=version, applied_index=applied)
        if version == 0:
            if value is not _ABSENT:
                add("never_written", op, version=version)
        elif version in log.by_version:
            if log.by_version[version] != value:
                add(
                    "wrong_value_at_version",
                    op,
                    version=version,
                    writer=_summary(log.writer[version]),
                )
        elif value not in log.maybe_values:
            add("never_written", op, version=version)
        i = bisect.bisect_right(log.versions, applied) - 1
        if i >= 0 and log.versions[i] > version:
            newer = log.versions[i]
            add(
                "stale_for_applied_index",
                op,
                version=version,
                applied_index=applied,
                newer_write=_summary(log.writer[newer]),
                newer_version=newer,
            )
        token = op.value.get("min_version") if isinstance(op.value, dict) else None
        if token and applied < int(token):
            add("below_min_version", op, applied_index=applied, min_version=int(token))
        if lag < 0:
            add("negative_lag", op, lag=lag)
        staleness = out.get("staleness")
        if staleness is not None:
            _check_staleness(op, float(staleness), version, value, log, clock_error_s, add)
        if index_slack is not None:
            bound = _log_bound(groups.get(group(op.key)), op.end_ns) + index_slack
            if applied + max(lag, 0) > bound:
                add("beyond_log", op, applied_index=applied, lag=lag, bound=bound)
    return FollowerReadsResult(
        valid=not counts,
        reads=n_reads,
        writes=n_writes,
        counts=dict(counts),
        violations=violations,
        index_slack=index_slack,
        clock_error_s=clock_error_s,
    )


def _check_staleness(
    op: Op,
    staleness: float,
    version: int,
    value: Hashable,
    log: _KeyLog,
    clock_error_s: float,
    add: Callable[..., None],
) -> None:
    bound = op.value.get("max_staleness") if isinstance(op.value, dict) else None
    if bound is not None and (staleness < 0 or staleness > float(bound)):
        add("over_bound", op, staleness=staleness, max_staleness=float(bound))
    if staleness < 0:
        return  # unknown: no claim
    cut = op.invoke_ns - round((staleness + clock_error_s) * 1e9)
    i = bisect.bisect_left(log.acked_at, cut) - 1  # acknowledged strictly before the cut
    if i < 0:
        return
    required = log.acked_max[i]
    if version >= required:
        return
    if version == 0 and value is _ABSENT and log.by_version.get(required, 0) is _ABSENT:
        return  # the latest write it must reflect was a delete
    add(
        "stale_beyond_claim",
        op,
        staleness=staleness,
        version=version,
        missed_version=required,
        missed_write=_summary(log.writer[required]),
    )


def _group_log(writes: list[Op]) -> _GroupLog:
    g = _GroupLog()
    best, unacked = 0, 0
    for op in sorted(writes, key=lambda o: o.invoke_ns):
        if op.outcome == "ok":
            best = max(best, int(op.output["version"]))
        else:
            unacked += 1
        g.invokes.append(op.invoke_ns)
        g.max_version.append(best)
        g.unacked.append(unacked)
    return g


def _log_bound(g: _GroupLog | None, before: float) -> int:
    """The highest index the group's log can have reached by time `before`."""
    if g is None:
        return 0
    i = bisect.bisect_left(g.invokes, before) - 1
    if i < 0:
        return 0
    return g.max_version[i] + g.unacked[i]


def _summary(op: Op) -> dict[str, Any]:
    end = op.end_ns
    return {
        "id": op.id,
        "process": op.process,
        "kind": op.kind,
        "outcome": op.outcome,
        "output": op.output,
        "invoke_ns": op.invoke_ns,
        "complete_ns": None if math.isinf(end) else op.complete_ns,
    }
