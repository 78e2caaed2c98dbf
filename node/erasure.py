"""Erasure purges: making an erased patient's bytes leave this node's disk, off the Raft loop.

An ErasePatient deletes the patient's keys when it applies, but older copies
stay behind: in the Raft log entries that carried the writes (and the erasure,
which names the patient), in the stored Raft snapshot, and in LevelDB files
until a compaction rewrites them. A snapshot install leaves the same kind of
leftovers (the replaced state and log). Each of those is recorded as an
erasure obligation in the same write as the apply or the restore
(RecordStore.obligations), so a crash, a restart or a replica out of service
at the time cannot skip the purge: the obligation stays until the purge is
done.

The purger works through them in the background:
  1. settle briefly, so a burst of erasures costs one purge per partition;
  2. per partition with obligations: drop the Raft log through the applied
     index, storing a snapshot built from a LevelDB read snapshot in slices
     of a few milliseconds (only the store-and-truncate step runs between
     two Raft turns, on the writer thread), unless the log already starts
     past the erasure;
  3. ask the LevelDB read snapshots opened so far (slow scans) to end, and
     interrupt those still open after a grace period: an open snapshot keeps
     deleted versions in the files (node.read_snapshots);
  4. have LevelDB rewrite the partition's key ranges and its Raft log's, in
     slices with pauses between them, in a thread of its own, so writes,
     heartbeats and elections go on meanwhile;
  5. delete the obligations.
A failed round is retried after a few seconds. A partition out of service on
this node (DATA_LOSS) keeps its obligations; they are completed when it is
opened again. An erasure of a patient with no records recorded none, and
costs nothing here.

MEDKV_TEST_ONLY_HOLD_ERASURE_PURGE=1 (environment only, logged loudly) holds
every purge, so a test can crash a node between an apply and its purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from node import failstop
from node.host import MultiRaftHost
from node.record_store import OBLIGATION_ERASE, Obligation, obligations_in
from node.storage_layout import STATE_PREFIX, StorageLayout

log = logging.getLogger("medkv.erasure")

HOLD_ENV = "MEDKV_TEST_ONLY_HOLD_ERASURE_PURGE"


@dataclass(frozen=True)
class PurgeSettings:
    settle_s: float = 0.5  # coalescing window after the first obligation
    retry_s: float = 5.0  # after a failed round
    snapshot_grace_s: float = 2.0  # read snapshots get this long to end by themselves
    slices: int = 10  # per key range (records, history, log)
    slice_pause_s: float = 0.05  # between two compaction slices


class ErasurePurger:
    """Completes this node's erasure obligations in the background (see module doc)."""

    def __init__(
        self, host: MultiRaftHost, layout: StorageLayout, settings: PurgeSettings | None = None
    ) -> None:
        self.host = host
        self.layout = layout
        self.settings = settings or PurgeSettings()
        self._state_db: Any = layout.db.prefixed_db(STATE_PREFIX)
        self._due: set[int] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medkv-purge")
        self.held = os.environ.get(HOLD_ENV, "") not in ("", "0")
        self.rounds = 0  # purge rounds run (for tests and status)
        self.completed = 0  # obligations completed

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        if self.held:
            log.warning(
                "TEST ONLY: %s is set: erasure purges are HELD; erased data stays on this "
                "node's disk until a restart without it", HOLD_ENV,
            )
        # Obligations recorded before the last stop or crash.
        for p in self.host.held_partitions():
            try:
                pending = obligations_in(self._state_db, p)
            except Exception as e:
                failstop.check(e)
                log.error("partition %d: erasure obligations unreadable: %s", p, type(e).__name__)
                continue
            if pending:
                log.info("partition %d: %d erasure purge(s) pending from before", p, len(pending))
                self._due.add(p)
        if self._due:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="erasure-purger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        # A compaction slice in progress finishes before the database closes.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown, True)

    def notify(self, partition: int) -> None:
        """Called on the loop when a partition recorded an obligation."""
        self._due.add(partition)
        if self._wake is not None:
            self._wake.set()

    # ---- the background task ---------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.settings.settle_s)  # coalesce a burst of erasures
            self._wake.clear()
            if self.held or not self._due:
                continue
            due, self._due = self._due, set()
            try:
                retry = await self.purge(due)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failstop.check(e)
                log.exception("erasure purge failed; retrying in %gs", self.settings.retry_s)
                retry = due
            if retry:
                self._due |= retry
                loop.call_later(self.settings.retry_s, self._wake.set)

    async def purge(self, partitions: set[int]) -> set[int]:
        """One round over the given partitions; returns those to retry."""
        self.rounds += 1
        retry: set[int] = set()
        todo: dict[int, tuple[list[Obligation], bool]] = {}
        for p in sorted(partitions):
            pending = obligations_in(self._state_db, p)
            if not pending:
                continue
            try:
                in_service = await self._drop_log(p, pending)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failstop.check(e)
                log.warning("partition %d: dropping the log for an erasure failed: %s; retrying",
                            p, type(e).__name__)
                retry.add(p)
                continue
            todo[p] = (pending, in_service)
        if not todo:
            return retry
        # Every deletion is written now: read snapshots opened from here on do
        # not pin erased versions; older ones must end.
        registry = self.layout.read_snapshots
        await registry.end_older_than(registry.cutoff(), self.settings.snapshot_grace_s)
        for p, (pending, in_service) in todo.items():
            try:
                await self._compact_files(p)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failstop.check(e)
                log.warning("partition %d: compacting files for an erasure failed: %s; retrying",
                            p, type(e).__name__)
                retry.add(p)
                continue
            through = max(ob.index for ob in pending)
            if not in_service:
                # Files are rewritten, but the log of a replica out of service
                # could not be dropped: the obligations wait for its reopening.
                log.warning(
                    "partition %d is out of service on this node: its erasure obligations "
                    "stay recorded and are completed when it is opened again", p,
                )
                continue
            r = self.host.replicas.get(p)
            if r is None:
                continue  # dropped meanwhile: its obligations went with its data
            r.sm.store.complete_obligations(pending)
            self.completed += len(pending)
            log.info("partition %d: purged log and files through index %d", p, through)
        return retry

    async def _drop_log(self, partition: int, pending: list[Obligation]) -> bool:
        """Drop the group's log through the applied index if an erasure asks for
        it; False when the replica is out of service (nothing can be dropped)."""
        r = self.host.replicas.get(partition)
        if r is None or r.broken:
            return False
        erased = [ob.index for ob in pending if ob.kind == OBLIGATION_ERASE]
        # A snapshot install already dropped every entry up to its index.
        if not erased or r.storage.first_index() - 1 >= max(erased):
            return True
        # On the loop, between applies: the applied index and the membership
        # in force there. A snapshot is metadata only (its data is read from
        # the state machine when one is sent, node.snapshots), so dropping the
        # log costs no build.
        index = r.sm.applied_index
        conf = r.raw.status().conf_state
        await self.host.compact_log(partition, index, conf)
        return not r.broken

    async def _compact_files(self, partition: int) -> None:
        r = self.host.replicas.get(partition)
        upto = r.storage.last_index() if r is not None and not r.broken else 1 << 40
        loop = asyncio.get_running_loop()
        for start, stop in self.layout.purge_slices(partition, upto, self.settings.slices):
            await loop.run_in_executor(self._thread, self.layout.compact_slice, start, stop)
            await asyncio.sleep(self.settings.slice_pause_s)


__all__ = ["HOLD_ENV", "ErasurePurger", "PurgeSettings"]
