"""MEDKV_TEST_ONLY_CLOCK_OFFSET_S: run one node with a wrong wall clock, for tests.

Sessions must not expire because one node's wall clock is wrong (issue 10,
item 7: on an older main, one node whose clock ran fast expired every session
of every partition it led). A cluster test proves it by starting one real node
whose `time.time()` runs this many seconds off (e.g. 2592000: thirty days
fast). Offsetting the process's wall clock, rather than some medkv-specific
value, is the point: whatever the node reads the wall clock for, it reads the
wrong time, as on a misconfigured host. Monotonic clocks are left alone (a
wrong wall clock does not change how fast time passes).

Only an environment variable named as test-only turns this on, never a
configuration file, and the node says so loudly at startup.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping

ENV = "MEDKV_TEST_ONLY_CLOCK_OFFSET_S"

log = logging.getLogger("medkv.test_clock")


class ClockOffsetError(ValueError):
    """The variable is set but is not a finite number of seconds."""


def offset_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """The offset the variable asks for (0.0 when unset or empty)."""
    raw = environ.get(ENV, "").strip()
    if not raw:
        return 0.0
    try:
        offset = float(raw)
    except ValueError:
        raise ClockOffsetError(f"{ENV} must be a number of seconds") from None
    if not math.isfinite(offset) or abs(offset) > 100 * 365 * 86_400:
        raise ClockOffsetError(f"{ENV} must be a finite number of seconds within 100 years")
    return offset


def install_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """Offset this process's wall clock as the variable says; returns the offset."""
    offset = offset_from_env(environ)
    if offset == 0.0:
        return 0.0
    real_time, real_time_ns = time.time, time.time_ns
    offset_ns = round(offset * 1e9)
    time.time = lambda: real_time() + offset  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + offset_ns  # type: ignore[assignment]
    log.warning(
        "TEST ONLY: %s=%g: this node's wall clock runs %g s off real time. "
        "This switch exists for tests; never set it on a real node.",
        ENV, offset, offset,
    )
    return offset


__all__ = ["ENV", "ClockOffsetError", "install_from_env", "offset_from_env"]
