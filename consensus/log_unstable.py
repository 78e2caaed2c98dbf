"""The not-yet-persisted tail of the log (etcd-io/raft's log_unstable.go).

Entries [offset, offset + len(entries)) and possibly an incoming snapshot
live here until the application reports them persisted (RawNode.advance).
Entries handed to the application in a Ready but not yet acknowledged are
"in progress": they start at offset and end before offset_in_progress, so a
second Ready does not hand them out again.
"""

from __future__ import annotations

from consensus.types import Entry, Snapshot


class Unstable:
    __slots__ = ("entries", "offset", "offset_in_progress", "snapshot", "snapshot_in_progress")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset  # index of entries[0]
        self.offset_in_progress = offset  # entries below this were handed out
        self.snapshot_in_progress = False

    def next_entries(self) -> list[Entry]:
        """Entries not yet handed out for persisting."""
        k = self.offset_in_progress - self.offset
        if k >= len(self.entries):
            return []
        return self.entries[k:]

    def next_snapshot(self) -> Snapshot | None:
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Everything unstable now was handed out in a Ready."""
        if self.entries:
            self.offset_in_progress = self.offset + len(self.entries)
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to index (of term) are persisted. Ignored if the entry was
        since replaced by a conflicting one (the term no longer matches)."""
        k = index - self.offset
        if k < 0 or k >= len(self.entries):
            return
        if self.entries[k].term != term:
            return
        if k + 1 == len(self.entries):
            self.entries = []
        else:
            del self.entries[: k + 1]
        self.offset = index + 1
        if self.offset_in_progress < self.offset:
            self.offset_in_progress = self.offset

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, s: Snapshot) -> None:
        self.offset = s.meta.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = s
        self.snapshot_in_progress = False

    def truncate_and_append(self, ents: list[Entry]) -> None:
        """Append, first dropping any entries at or after ents[0].index."""
        first = ents[0].index
        n = len(self.entries)
        if first == self.offset + n:
            # The common case: a direct continuation.
            self.entries.extend(ents)
        elif first <= self.offset:
            # Replaces everything unstable (and a suffix of the stable log,
            # which the application truncates when it persists these).
            self.entries = list(ents)
            self.offset = first
            self.offset_in_progress = first
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(ents)
            if self.offset_in_progress > first:
                self.offset_in_progress = first
