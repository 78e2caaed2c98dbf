"""How long the event loop stalls: a timer that notes how late it fires.

Everything a node serves (RPCs, Raft ticks, heartbeats) waits while one
callback holds the loop, so the longest delay of a periodic timer is the
longest stall anything caused. Stalls of STALL_LOG_S or more are logged with
the longest so far, which is how benchmarks (scripts/bench-snapshot) read it.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("medkv.loop")

INTERVAL_S = 0.02
STALL_LOG_S = 0.1


class LoopLagProbe:
    def __init__(self) -> None:
        self.longest_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(INTERVAL_S)
            lag = loop.time() - start - INTERVAL_S
            if lag > self.longest_s:
                self.longest_s = lag
            if lag >= STALL_LOG_S:
                log.warning(
                    "event loop stalled for %.0f ms (longest since start %.0f ms)",
                    lag * 1000, self.longest_s * 1000,
                )
