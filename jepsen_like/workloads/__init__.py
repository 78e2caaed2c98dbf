"""The workload families the runner can drive (see each module's docstring)."""

from __future__ import annotations

from jepsen_like.workloads.append import AppendWorkload
from jepsen_like.workloads.bank import BankWorkload
from jepsen_like.workloads.common import RunContext, Workload
from jepsen_like.workloads.erasure import ErasureWorkload
from jepsen_like.workloads.follower_reads import FollowerReadsWorkload
from jepsen_like.workloads.registers import PLANTED_BUGS as REGISTER_BUGS
from jepsen_like.workloads.registers import RegistersWorkload

WORKLOADS: dict[str, type[Workload]] = {
    RegistersWorkload.name: RegistersWorkload,
    AppendWorkload.name: AppendWorkload,
    FollowerReadsWorkload.name: FollowerReadsWorkload,
    BankWorkload.name: BankWorkload,
    ErasureWorkload.name: ErasureWorkload,
}


def make_workload(
    name: str, seed: int, concurrency: int, *, planted_bug: str | None = None
) -> Workload:
    """A workload by name; `planted_bug` only where the workload defines it."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if planted_bug in REGISTER_BUGS:
        if name != RegistersWorkload.name:
            raise ValueError(f"the planted bug {planted_bug!r} belongs to the registers workload")
        return RegistersWorkload(seed, concurrency, planted_bug=planted_bug)
    return WORKLOADS[name](seed, concurrency)


__all__ = [
    "WORKLOADS",
    "AppendWorkload",
    "BankWorkload",
    "ErasureWorkload",
    "FollowerReadsWorkload",
    "RegistersWorkload",
    "RunContext",
    "Workload",
    "make_workload",
]
