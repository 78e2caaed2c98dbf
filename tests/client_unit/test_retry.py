"""Retry policy: backoff bounds, full jitter, the total deadline, what retries."""

from __future__ import annotations

import random

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.retry import Attempts, RetryPolicy, is_retryable


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_ceiling_doubles_then_caps() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    assert [policy.backoff_ceiling(n) for n in (1, 2, 3, 4, 5, 6)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    assert policy.backoff_ceiling(10_000) == 1.0


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=30))
def test_full_jitter_waits_stay_within_the_ceiling(seed: int, failures: int) -> None:
    policy = RetryPolicy(timeout=1e9, initial_backoff=0.05, max_backoff=2.0)
    attempts = Attempts(policy, clock=FakeClock(), rng=random.Random(seed))
    for n in range(1, failures + 1):
        wait = attempts.wait_after(grpc.StatusCode.UNAVAILABLE)
        assert wait is not None
        assert 0.0 <= wait <= policy.backoff_ceiling(n)


def test_jitter_spreads_waits() -> None:
    policy = RetryPolicy(timeout=1e9, initial_backoff=1.0, max_backoff=1.0)
    waits = {
        Attempts(policy, clock=FakeClock(), rng=random.Random(s)).wait_after(
            grpc.StatusCode.UNAVAILABLE
        )
        for s in range(20)
    }
    assert len(waits) == 20


@given(st.integers(min_value=0, max_value=2**32), st.floats(min_value=0.05, max_value=30.0))
def test_the_total_deadline_bounds_attempts_and_waits(seed: int, timeout: float) -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        timeout=timeout, attempt_timeout=0.7, initial_backoff=0.01, max_backoff=0.5
    )
    attempts = Attempts(policy, clock=clock, rng=random.Random(seed))
    start = clock.now
    for _ in range(100_000):
        attempt = attempts.attempt_timeout()
        if attempt is None:
            break
        assert attempt <= min(0.7, start + timeout - clock.now) + 1e-9
        clock.now += attempt  # the attempt times out
        wait = attempts.wait_after(grpc.StatusCode.DEADLINE_EXCEEDED)
        if wait is None:
            break
        clock.now += wait
    else:
        raise AssertionError("the attempts never ended")
    assert clock.now - start <= timeout + 1e-9
    assert attempts.deadline.expired() or attempts.deadline.remaining() < 0.01


def test_per_call_timeout_overrides_the_policy() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(timeout=10.0), 0.5, clock=clock)
    assert attempts.attempt_timeout() == 0.5
    clock.now += 0.5
    assert attempts.attempt_timeout() is None


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_final_codes_give_up_at_once(code: grpc.StatusCode) -> None:
    assert not is_retryable(code)
    assert Attempts(RetryPolicy(), clock=FakeClock()).wait_after(code) is None


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    ],
)
def test_transient_codes_retry(code: grpc.StatusCode) -> None:
    assert is_retryable(code)
    assert Attempts(RetryPolicy(), clock=FakeClock()).wait_after(code) is not None


def test_redirects_skip_the_wait_a_bounded_number_of_times() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=0.5, immediate_hops=2)
    attempts = Attempts(policy, clock=FakeClock(), rng=random.Random(1))
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert attempts.wait_after(unavailable, redirected=True) == 0.0
    assert attempts.wait_after(unavailable, redirected=True) == 0.0
    third = attempts.wait_after(unavailable, redirected=True)
    assert third is not None and third > 0.0  # ping-ponging hints back off
    assert attempts.wait_after(unavailable, redirected=True) == 0.0  # a fresh run of hops


def test_policy_rejects_nonsense() -> None:
    for kwargs in (
        {"timeout": 0},
        {"attempt_timeout": -1},
        {"initial_backoff": 2.0, "max_backoff": 1.0},
        {"multiplier": 0.5},
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]
