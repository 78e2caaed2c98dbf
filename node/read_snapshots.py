"""Every long-lived LevelDB read snapshot of a node, so an erasure can end them.

A LevelDB snapshot pins every version that was current when it was taken: a
compaction keeps a value shadowed by a newer delete as long as some snapshot
older than the delete is open. A paged scan holds one for as long as its
client takes to read every page, so an erased patient's records could stay in
the files for as long as any analytics job reads slowly. The snapshot is
database-wide (LevelDB has one sequence for every key), so a scan of any
partition pins the erased versions of every other partition too.

The erasure purger (node.erasure) therefore asks the snapshots opened before
its cutoff to end: it waits a short while for them to finish on their own,
then interrupts the rest. An interrupted snapshot releases its LevelDB
snapshot at once and raises SnapshotInterrupted on its next read; the Scan RPC
answers ABORTED and the client resumes from its last resume token, on a fresh
snapshot taken after the erasure.

Everything here runs on the event loop (reads and the purger alike), so a
snapshot is never released while a read is using it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

log = logging.getLogger("medkv.read_snapshots")


class SnapshotInterrupted(Exception):
    """The read snapshot was released so that erased data can leave the disk."""


class ReadSnapshotHandle:
    """One registered snapshot: its opening serial and how to release it."""

    __slots__ = ("_registry", "_release", "interrupted", "partition", "released", "serial")

    def __init__(
        self,
        registry: ReadSnapshotRegistry,
        serial: int,
        partition: int,
        release: Callable[[], None],
    ) -> None:
        self._registry = registry
        self._release = release
        self.serial = serial
        self.partition = partition
        self.interrupted = False
        self.released = False

    def check(self) -> None:
        """Raise SnapshotInterrupted if an erasure took this snapshot away."""
        if self.interrupted:
            raise SnapshotInterrupted(
                f"partition {self.partition}: this read's snapshot was released so that an "
                "erasure can complete; resume from the last resume_token"
            )

    def release(self) -> None:
        """Release the LevelDB snapshot (idempotent) and leave the registry."""
        if self.released:
            return
        self.released = True
        self._registry._open.pop(self.serial, None)
        self._release()

    def interrupt(self) -> None:
        self.interrupted = True
        self.release()


class ReadSnapshotRegistry:
    """The node's open read snapshots, by opening serial (monotonic)."""

    def __init__(self) -> None:
        self._serials = itertools.count(1)
        self._open: dict[int, ReadSnapshotHandle] = {}

    def register(self, partition: int, release: Callable[[], None]) -> ReadSnapshotHandle:
        handle = ReadSnapshotHandle(self, next(self._serials), partition, release)
        self._open[handle.serial] = handle
        return handle

    def cutoff(self) -> int:
        """A serial above every snapshot opened so far: those below it may pin
        versions deleted before this call."""
        return next(self._serials)

    def older_than(self, cutoff: int) -> list[ReadSnapshotHandle]:
        return [h for s, h in self._open.items() if s < cutoff]

    def __len__(self) -> int:
        return len(self._open)

    async def end_older_than(self, cutoff: int, grace: float) -> int:
        """Wait up to `grace` seconds for the snapshots opened before `cutoff`
        to be released by their readers, then interrupt the rest; returns how
        many were interrupted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.older_than(cutoff) and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        left = self.older_than(cutoff)
        for h in left:
            h.interrupt()
        if left:
            log.warning(
                "interrupted %d read snapshot(s) that pinned erased data; their scans resume "
                "on a fresh snapshot", len(left),
            )
        return len(left)


__all__ = ["ReadSnapshotHandle", "ReadSnapshotRegistry", "SnapshotInterrupted"]
