"""The per-patient bank workload's checker.

Each patient (a key) has a fixed set of accounts, each one record of that
patient; a transfer moves an amount between two of them in one atomic batch
(one Raft entry), so money is neither created nor destroyed. Every read of
all of a patient's accounts (a `read_all`, one snapshot) must therefore
total that patient's constant. A read that sees half a transfer, a lost
update, or a transfer applied twice shows up as a wrong total.

Checked on every ok read_all:
- ``wrong_total``: the balances do not add up to the patient's total;
- ``negative``: a balance is below zero (unless `allow_negative`);
- ``accounts``: the read's account set differs from the expected one (when
  `accounts` is given).

Op shapes: kind "transfer", key, value {"from": a, "to": b, "amount": n}
(not checked itself: its effect shows in the reads); kind "read_all", key,
output {"balances": {account: int}}.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.history import Op

_MAX_VIOLATIONS = 50  # kept in full; counts stay exact


@dataclass(slots=True)
class BankResult:
    valid: bool
    keys: int
    reads: int
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": "bank",
            "valid": self.valid,
            "verdict": "valid" if self.valid else "invalid",
            "keys": self.keys,
            "reads": self.reads,
            "counts": self.counts,
            "violations": self.violations,
        }


def check_bank(
    history: Iterable[Op],
    totals: int | Mapping[str, int],
    *,
    accounts: Collection[str] | Mapping[str, Collection[str]] | None = None,
    allow_negative: bool = False,
    read_kind: str = "read_all",
) -> BankResult:
    """Check every ok `read_all` of `history`.

    `totals` is one constant for every patient, or a constant per key.
    `accounts` is one account set for every patient, or a set per key.
    Raises ValueError for a read of a key with no known total.
    """
    counts: dict[str, int] = defaultdict(int)
    violations: list[dict[str, Any]] = []
    keys: set[str | None] = set()
    n_reads = 0

    def add(kind: str, op: Op, **detail: Any) -> None:
        counts[kind] += 1
        if len(violations) < _MAX_VIOLATIONS:
            violations.append({"type": kind, "key": op.key, "read": _summary(op), **detail})

    for op in history:
        if op.kind != read_kind or op.outcome != "ok":
            continue
        n_reads += 1
        keys.add(op.key)
        balances = op.output.get("balances") if isinstance(op.output, dict) else None
        if not isinstance(balances, dict):
            raise ValueError(f"op {op.id}: a read_all output needs {{'balances': {{...}}}}")
        expected_total = _lookup(totals, op)
        total = sum(balances.values())
        if total != expected_total:
            add("wrong_total", op, total=total, expected=expected_total, balances=balances)
        if not allow_negative:
            negative = sorted(a for a, b in balances.items() if b < 0)
            if negative:
                add("negative", op, accounts=negative, balances=balances)
        if accounts is not None:
            want = set(accounts[op.key] if isinstance(accounts, Mapping) else accounts)  # type: ignore[index]
            got = set(balances)
            if got != want:
                add(
                    "accounts",
                    op,
                    missing=sorted(want - got),
                    unexpected=sorted(got - want),
                )
    return BankResult(
        valid=not counts,
        keys=len(keys),
        reads=n_reads,
        counts=dict(counts),
        violations=violations,
    )


def _lookup(totals: int | Mapping[str, int], op: Op) -> int:
    if isinstance(totals, int):
        return totals
    if op.key not in totals:
        raise ValueError(f"op {op.id}: no total given for its key")
    return totals[op.key]  # type: ignore[index]


def _summary(op: Op) -> dict[str, Any]:
    end = op.end_ns
    return {
        "id": op.id,
        "process": op.process,
        "invoke_ns": op.invoke_ns,
        "complete_ns": None if math.isinf(end) else op.complete_ns,
    }
