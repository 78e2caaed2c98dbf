"""Log time: the clock that session expiry reads, carried in the Raft log.

Replicas must agree on when a session expires, so expiry never reads a
node's clock at apply time. Instead the leader stamps every proposal with a
time (`ts_ms` in each command) and apply takes

    log_time = max(log_time, stamp)          (node.log_clock.advance)

so log time is a function of the log alone and never moves backwards.

What a leader stamps is *not* its wall clock. Main used the wall clock, and
one node whose clock ran two hours fast expired every session of every
partition it led (and max() kept that time forever). A LeaderClock starts,
when its node becomes leader, from the log time it has applied, and adds only
the time its monotonic clock has measured since:

    stamp = base + (monotonic_now - monotonic_at_base)

Consequences, each one on purpose:
  * log time advances at most as fast as real time (up to the monotonic
    clocks' rate error, parts per million): a stamp is never ahead of what
    really elapsed since the log time it started from, so a session is never
    expired before TTL of real idle time has passed. Wall-clock steps, NTP
    slews and a misconfigured clock on any node change nothing.
  * time when no leader stamps anything (an election, a whole-cluster outage,
    an idle partition whose leader changes) is not counted: sessions then
    live longer than TTL of real time, the safe direction. The bound that
    matters for memory is max_sessions, which never depends on time.
  * a new leader whose applied state lags starts a little behind the log; its
    first stamps may be below log time and change nothing (max), and
    `observe` moves its base up to every log time it applies.

Log time of a fresh partition starts at 0; only differences are meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def advance(log_time_ms: int, stamp_ms: int) -> int:
    """The log time after applying an entry stamped stamp_ms: never backwards."""
    return stamp_ms if stamp_ms > log_time_ms else log_time_ms


class LeaderClock:
    """Stamps for one leader's proposals: its applied log time plus monotonic elapsed time."""

    __slots__ = ("_anchor", "_base_ms", "_monotonic")

    def __init__(self, base_ms: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        if base_ms < 0:
            raise ValueError("log time is never negative")
        self._monotonic = monotonic
        self._base_ms = base_ms
        self._anchor = monotonic()

    def now_ms(self) -> int:
        """The stamp for a proposal made now."""
        elapsed = self._monotonic() - self._anchor
        return self._base_ms + max(0, int(elapsed * 1000))

    def observe(self, log_time_ms: int) -> None:
        """The log applied up to log_time_ms: never stamp below it again.

        Moving the base up only when the log is ahead keeps the bound above:
        log time itself was never ahead of real time."""
        if log_time_ms > self.now_ms():
            self._base_ms = log_time_ms
            self._anchor = self._monotonic()


__all__ = ["LeaderClock", "advance"]
