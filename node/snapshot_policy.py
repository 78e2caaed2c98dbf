"""When a partition's Raft log is snapshotted and compacted.

The host (node.host) drives the Raft groups and asks this policy, once per
turn for each group it advanced, whether that group is due a snapshot. The
erasure purger (node.erasure) asks it to drop a group's log through an index
right away. Either way only metadata is stored: a snapshot's data is the
state machine itself, streamed from a LevelDB snapshot when a follower needs
it (node.snapshots). Every log-store write runs on the host's writer thread,
never interleaved with a Raft step (the core reads the log store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from consensus.leveldb_storage import SnapshotOutOfDateError
from consensus.types import ConfState
from node.cluster.state import SYSTEM_GROUP

if TYPE_CHECKING:
    from node.host import MultiRaftHost, Replica

# The host's logger: these lines were the host's before the policy had a
# module of its own, and operators filter on it.
log = logging.getLogger("medkv.host")


class SnapshotPolicy:
    """The host's snapshot and log-compaction decisions."""

    def __init__(self, host: MultiRaftHost) -> None:
        self._host = host

    async def maybe_snapshot(self, r: Replica) -> None:
        """Snapshot a partition every snapshot_every applied entries and compact
        its log, keeping a tail so a briefly slow follower still catches up
        from the log instead of a full snapshot. Awaited inside the turn: the
        log store is single-threaded and no Raft step may read it meanwhile."""
        host = self._host
        if r.broken or r.since_snapshot < host.cfg.raft.snapshot_every or r.partition == SYSTEM_GROUP:
            return  # the system log stays whole: a replica that joins replays it
        index = r.applied
        conf = r.raw.status().conf_state
        keep = host.cfg.raft.keep_after_snapshot
        r.since_snapshot = 0

        def persist() -> None:
            # Metadata only: the data is the state machine itself, streamed
            # from a LevelDB snapshot when a follower needs it (node.snapshots).
            host.log_store.create_snapshot(r.partition, index, conf, b"")
            if index > keep:
                host.log_store.compact(r.partition, index - keep)

        await asyncio.get_running_loop().run_in_executor(host.writer, persist)

    async def compact_log(self, partition: int, index: int, conf: ConfState) -> bool:
        """Store a snapshot at applied index `index` with membership `conf`
        (metadata only: its data is read from the state machine when one is
        sent, node.snapshots) and drop the group's log through `index`: the
        purge of an erasure's log entries. Runs between two Raft turns, on the
        writer thread (the Raft core reads the log store). False when there was nothing to do: the
        log starts past `index` already (a snapshot install dropped it) or
        the replica is out of service."""
        host = self._host
        r = host.replicas.get(partition)
        if r is None or r.broken:
            return False

        def persist() -> bool:
            if r.broken or index <= r.storage.first_index() - 1:
                return False
            # A snapshot at or past index may be stored already (a periodic
            # one, or one installed meanwhile), but it kept entries behind it
            # for slow followers: the log must still go through index.
            with contextlib.suppress(SnapshotOutOfDateError):
                host.log_store.create_snapshot(partition, index, conf, b"")
            host.log_store.compact(partition, index)
            return True

        done: bool = await host._between_turns(persist)
        if done:
            r.since_snapshot = 0
            log.info(
                "partition %d: dropped the Raft log through index %d", partition, index,
                extra={"partition": partition},
            )
        return done
