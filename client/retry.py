"""When and how long to wait before trying a call again.

Pure policy, no IO: the async client's call loop asks an `Attempts` object
what to do after each failure, so the rules (which codes are safe to retry,
exponential backoff with full jitter, one total deadline per call) are tested
on their own with a fake clock and a seeded random source.

Retrying a write is safe only because every attempt carries the same WriteId:
the state machine answers a duplicate with the first result (Raft thesis
§6.3). Codes that describe the request itself (bad input, missing record,
version mismatch, permission) are final: asking again cannot change them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

# Transient by nature: a leader change, an overloaded or paused node, a lost reply.
RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)


def is_retryable(code: grpc.StatusCode) -> bool:
    """True for codes a fresh attempt (same WriteId for writes) may turn into success."""
    return code in RETRYABLE_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings of one client; every call may override `timeout`.

    timeout          total seconds one call may take, all attempts and waits included
    attempt_timeout  seconds one RPC attempt may take, so a paused node costs one
                     attempt instead of the whole deadline
    initial_backoff  ceiling of the first wait; doubles (multiplier) per failure
    max_backoff      ceiling of any one wait
    immediate_hops   consecutive leader-hint redirects followed without waiting;
                     beyond that, hints ping-ponging during an election back off too
    """

    timeout: float = 10.0
    attempt_timeout: float = 2.0
    initial_backoff: float = 0.02
    max_backoff: float = 1.0
    multiplier: float = 2.0
    immediate_hops: int = 2

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.attempt_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if self.immediate_hops < 0:
            raise ValueError("immediate_hops must not be negative")

    def backoff_ceiling(self, failures: int) -> float:
        """The largest wait after `failures` consecutive failures (1 = first failure)."""
        exponent = max(0, failures - 1)
        # Bounded exponent: multiplier ** large would overflow to inf anyway.
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** min(exponent, 64))


class Deadline:
    """One call's total time budget on a monotonic clock."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.timeout = timeout
        self.expires_at = clock() + timeout

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self._clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0


# Attempts with less time than this left are not worth starting.
_MIN_ATTEMPT_SECONDS = 0.005


class Attempts:
    """The retry state of one call: its deadline, failures so far, redirect hops."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.deadline = Deadline(policy.timeout if timeout is None else timeout, clock)
        self._rng = rng or random.Random()
        self.failures = 0
        self.attempts = 0
        self._hops = 0

    def attempt_timeout(self) -> float | None:
        """The timeout of the next attempt, or None when the deadline leaves no room."""
        remaining = self.deadline.remaining()
        if remaining < _MIN_ATTEMPT_SECONDS:
            return None
        self.attempts += 1
        return min(self.policy.attempt_timeout, remaining)

    def wait_after(self, code: grpc.StatusCode, *, redirected: bool = False) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now.

        `redirected` marks a failure that named a new leader: following it at
        once is one hop, not a guess, so it skips the wait (a bounded number of
        times in a row).
        """
        if not is_retryable(code):
            return None
        remaining = self.deadline.remaining()
        if remaining < _MIN_ATTEMPT_SECONDS:
            return None
        if redirected and self._hops < self.policy.immediate_hops:
            self._hops += 1
            return 0.0
        self._hops = 0
        self.failures += 1
        # Full jitter (uniform in [0, ceiling]) spreads clients that failed together.
        wait = self._rng.uniform(0.0, self.policy.backoff_ceiling(self.failures))
        return min(wait, remaining)


__all__ = ["RETRYABLE_CODES", "Attempts", "Deadline", "RetryPolicy", "is_retryable"]
