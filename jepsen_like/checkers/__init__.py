"""Checkers for fault-injection histories (see `jepsen_like.history` for the format).

Each checker takes a history and returns a result with `valid: bool` and a
`to_json()` for the run's summary. The linearizability checker can also say
"unknown" (search budget exhausted), in which case `valid` is False and
`verdict` is "unknown".
"""

from jepsen_like.checkers.append import AppendResult, check_append
from jepsen_like.checkers.bank import BankResult, check_bank
from jepsen_like.checkers.erasure import ErasureResult, check_erasure
from jepsen_like.checkers.follower_reads import FollowerReadsResult, check_follower_reads
from jepsen_like.checkers.linearizable import (
    KeyResult,
    LinearizabilityResult,
    check_key,
    check_linearizable,
)
from jepsen_like.checkers.models import Model, RegisterModel, VersionedRegisterModel

__all__ = [
    "AppendResult",
    "BankResult",
    "ErasureResult",
    "FollowerReadsResult",
    "KeyResult",
    "LinearizabilityResult",
    "Model",
    "RegisterModel",
    "VersionedRegisterModel",
    "check_append",
    "check_bank",
    "check_erasure",
    "check_follower_reads",
    "check_key",
    "check_linearizable",
]
