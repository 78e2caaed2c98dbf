"""Rate-limited log lines for refusals.

A peer or client that sends bad input once deserves one log line naming the
problem; one that sends it a thousand times a second must not fill the disk
or bury everything else. Each kind of refusal (a key chosen by the caller,
never containing patient data) logs at most once per interval, and the next
line it logs says how many were suppressed meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

DEFAULT_INTERVAL_S = 10.0
_MAX_KEYS = 4096  # bounded memory whatever a sender varies in its garbage


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def log(
        self, level: int, key: Hashable, msg: str, *args: object, exc_info: bool = False,
        extra: dict[str, object] | None = None,
    ) -> bool:
        """Log msg % args unless `key` logged within the interval; True if logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if key not in self._last and len(self._last) >= _MAX_KEYS:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += " (%d more like it in the last %.0fs not logged)"
            args = (*args, skipped, self._interval)
        self._log.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(
        self, key: Hashable, msg: str, *args: object, extra: dict[str, object] | None = None,
    ) -> bool:
        return self.log(logging.INFO, key, msg, *args, extra=extra)
