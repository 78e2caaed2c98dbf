"""An in-memory Storage with the write side (etcd-io/raft's MemoryStorage).

For tests, the simulator and the benchmark. "Persisting" a Ready means
calling apply_snapshot / append / set_hard_state on it; a simulated crash
that loses unsynced state simply does not call them.

Layout: self._ents[0] is a dummy entry at the snapshot index (holding its
term), so entry i lives at self._ents[i - self._ents[0].index].
"""

from __future__ import annotations

from consensus.storage import NO_LIMIT, limit_size
from consensus.types import (
    CompactedError,
    ConfState,
    ConsensusError,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)


class SnapshotOutOfDateError(ConsensusError):
    """A snapshot older than the one already held was applied or created."""


class MemoryStorage:
    def __init__(
        self, conf_state: ConfState | None = None, hard_state: HardState | None = None
    ) -> None:
        """conf_state bootstraps a brand-new group: its membership at index 0, term 0."""
        self._hard_state = hard_state if hard_state is not None else HardState()
        self._snapshot = Snapshot(
            meta=SnapshotMeta(index=0, term=0, conf_state=conf_state or ConfState())
        )
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- read side (Storage) -------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.meta.conf_state

    def entries(self, lo: int, hi: int, max_size: int = NO_LIMIT) -> list[Entry]:
        ents = self._ents
        off = ents[0].index
        if lo <= off:
            raise CompactedError(f"entries from {lo}: compacted up to {off}")
        if hi > off + len(ents):
            raise UnavailableError(f"entries to {hi}: last index is {off + len(ents) - 1}")
        if len(ents) == 1:
            return []  # only the dummy entry
        out = ents[lo - off : hi - off]
        if max_size >= NO_LIMIT:
            return out
        return limit_size(out, max_size)

    def term(self, index: int) -> int:
        ents = self._ents
        k = index - ents[0].index
        if k < 0:
            raise CompactedError(f"term({index}): compacted")
        if k >= len(ents):
            raise UnavailableError(f"term({index}): past the last index")
        return ents[k].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def clone(self) -> MemoryStorage:
        """An independent copy: the simulator keeps one as the durable state
        while unsynced writes may still be lost by a crash. Entries are
        shared (they are never modified)."""
        c = MemoryStorage.__new__(MemoryStorage)
        c._hard_state = self._hard_state
        c._snapshot = self._snapshot
        c._ents = list(self._ents)
        return c

    # -- write side ------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader.

        A snapshot at index 0 is accepted only by a blank replica (no
        membership yet): it carries the bootstrap membership and no data.
        """
        cur = self._snapshot.meta
        idx = snap.meta.index
        blank = cur.index == 0 and cur.conf_state == ConfState() and len(self._ents) == 1
        if idx < cur.index or (idx == cur.index and not blank):
            raise SnapshotOutOfDateError(f"snapshot {idx} is not newer than {cur.index}")
        self._snapshot = snap
        self._ents = [Entry(idx, snap.meta.term)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the application's state as of `index` (which must be applied)."""
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.meta.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot at {index} is past the last index")
        term = self.term(index)
        self._snapshot = Snapshot(
            meta=SnapshotMeta(index=index, term=term, conf_state=conf_state), data=data
        )
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including index; term(index) stays answerable.
        The application compacts only up to a snapshot it has created."""
        off = self._ents[0].index
        if index <= off:
            raise CompactedError(f"compact({index}): already compacted up to {off}")
        if index > self.last_index():
            raise UnavailableError(f"compact({index}): past the last index")
        k = index - off
        head = Entry(index, self._ents[k].term)
        self._ents = [head, *self._ents[k + 1 :]]

    def append(self, entries: list[Entry]) -> None:
        """Persist entries, truncating any conflicting suffix first. Entries at
        or below the compaction point are skipped."""
        if not entries:
            return
        ents = self._ents
        first = ents[0].index + 1
        e0 = entries[0].index
        last = e0 + len(entries) - 1
        if last < first:
            return  # all compacted away already
        if first > e0:
            entries = entries[first - e0 :]
            e0 = first
        k = e0 - ents[0].index
        n = len(ents)
        if k == n:
            ents.extend(entries)
        elif k < n:
            del ents[k:]
            ents.extend(entries)
        else:
            raise ConsensusError(
                f"missing log entries: last index {self.last_index()}, appending at {e0}"
            )
