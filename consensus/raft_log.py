"""The Raft log: stable storage plus the unstable tail (etcd-io/raft's log.go).

Index bookkeeping, always applied <= applying <= committed:
  * committed: known to be stored on a quorum;
  * applying: the last entry handed to the application to apply;
  * applied: the last entry the application reported applied (advance).

Committed entries are handed out only once they are persisted locally
(below unstable.offset), which is what the persistence contract in
storage.py promises the application.
"""

from __future__ import annotations

from consensus.log_unstable import Unstable
from consensus.storage import NO_LIMIT, Storage, limit_size_total, payload_size
from consensus.types import (
    CompactedError,
    ConsensusError,
    Entry,
    EntryType,
    Snapshot,
    UnavailableError,
)


class RaftLog:
    def __init__(self, storage: Storage, max_applying_size: int = NO_LIMIT) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applying = first - 1
        self.applied = first - 1
        self.max_applying_size = max_applying_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed} applied={self.applied} "
            f"applying={self.applying} unstable.offset={self.unstable.offset} "
            f"len(unstable)={len(self.unstable.entries)})"
        )

    # -- bounds -----------------------------------------------------------

    def first_index(self) -> int:
        s = self.unstable.snapshot
        if s is not None:
            return s.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.meta.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term of entry i; raises CompactedError / UnavailableError outside
        [first_index() - 1, last_index()]."""
        u = self.unstable
        k = i - u.offset
        if k >= 0:
            if k < len(u.entries):
                return u.entries[k].term
            raise UnavailableError(f"index {i} is past the last index")
        s = u.snapshot
        if s is not None:
            if i == s.meta.index:
                return s.meta.term
            raise CompactedError(f"index {i} is below the unstable snapshot")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Whether a log ending at (lasti, term) is at least as up to date as ours
        (Raft §5.4.1: compare last terms, then lengths)."""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # -- appending --------------------------------------------------------

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: list[Entry]
    ) -> int | None:
        """Follower side of APP: append ents after (index, log_term) if our log
        has that entry. Returns the index of the last new entry, or None on a
        mismatch."""
        if not self.match_term(index, log_term):
            return None
        lastnewi = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci:
                if ci <= self.committed:
                    raise ConsensusError(
                        f"entry {ci} conflicts with committed entry (committed {self.committed})"
                    )
                start = ci - (index + 1)
                self.append(ents if start == 0 else ents[start:])
        self.commit_to(min(committed, lastnewi))
        return lastnewi

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise ConsensusError(f"append after {after} is below committed {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry of ents that is new or conflicts with our
        log by term; 0 if all of them are already in the log."""
        last = self.last_index()
        first = ents[0].index
        if first > last:
            return first  # pipelined appends: nothing overlaps
        overlap = min(len(ents), last - first + 1)
        for k in range(overlap):
            e = ents[k]
            if not self.match_term(e.index, e.term):
                return e.index
        if overlap < len(ents):
            return ents[overlap].index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= index whose term is <= term, and that term.

        Used by both sides of a rejected append to skip a whole term of
        mismatching entries per round trip (thesis §5.3's optimization).
        An unknown term (compacted) is returned as a possible match with term 0.
        """
        while index > 0:
            try:
                our = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    # -- reading ----------------------------------------------------------

    def entries(self, i: int, max_size: int = NO_LIMIT) -> list[Entry]:
        """Entries from i to the end of the log, limited by size."""
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int = NO_LIMIT) -> list[Entry]:
        """Entries [lo, hi), at least one if lo < hi, within max_size bytes."""
        return self.slice_sized(lo, hi, max_size)[0]

    def slice_sized(self, lo: int, hi: int, max_size: int = NO_LIMIT) -> tuple[list[Entry], int]:
        """slice(), and the payload size of the entries returned."""
        if lo > hi:
            raise ConsensusError(f"invalid slice {lo} > {hi}")
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(f"slice from {lo} below first index {fi}")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"slice to {hi} past last index {self.last_index()}")
        if lo == hi:
            return [], 0
        u = self.unstable
        off = u.offset
        if lo >= off:
            return limit_size_total(u.entries[lo - off : hi - off], max_size)
        stable_hi = min(hi, off)
        ents = self.storage.entries(lo, stable_hi, max_size)
        size = payload_size(ents)
        if hi <= off or len(ents) < stable_hi - lo:
            return ents, size  # done, or the size limit was reached in storage
        room = max_size - size
        if room <= 0:
            return ents, size
        rest, rest_size = limit_size_total(u.entries[: hi - off], room)
        if rest_size > room:
            return ents, size  # even the first unstable entry does not fit
        return ents + rest, size + rest_size

    def entries_sized(self, i: int, max_size: int = NO_LIMIT) -> tuple[list[Entry], int]:
        """entries(), and their payload size (for flow control)."""
        last = self.last_index()
        if i > last:
            return [], 0
        return self.slice_sized(i, last + 1, max_size)

    def all_entries(self) -> list[Entry]:
        while True:
            try:
                return self.entries(self.first_index())
            except CompactedError:
                continue  # raced with compaction: try again

    def snapshot(self) -> Snapshot:
        s = self.unstable.snapshot
        if s is not None:
            return s
        return self.storage.snapshot()

    # -- unstable handoff ---------------------------------------------------

    def next_unstable_ents(self) -> list[Entry]:
        return self.unstable.next_entries()

    def has_next_unstable_ents(self) -> bool:
        u = self.unstable
        return u.offset_in_progress - u.offset < len(u.entries)

    def has_next_or_in_progress_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def next_unstable_snapshot(self) -> Snapshot | None:
        return self.unstable.next_snapshot()

    def accept_unstable(self) -> None:
        self.unstable.accept_in_progress()

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    # -- commit / apply ------------------------------------------------------

    def max_appliable_index(self) -> int:
        """Committed AND persisted: only those may be applied."""
        return min(self.committed, self.unstable.offset - 1)

    def has_next_committed_ents(self) -> bool:
        if self.unstable.snapshot is not None:
            return False
        return self.applying < self.max_appliable_index()

    def next_committed_ents(self) -> list[Entry]:
        if self.unstable.snapshot is not None:
            return []  # the snapshot must be applied first
        lo = self.applying + 1
        hi = self.max_appliable_index() + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, self.max_applying_size)

    def has_pending_conf_change(self) -> bool:
        """A committed but not yet applied conf change exists (campaigning now
        could use a configuration that is about to change)."""
        lo = self.applied + 1
        hi = self.committed + 1
        if lo >= hi:
            return False
        try:
            ents = self.slice(lo, hi)
        except (CompactedError, UnavailableError):
            return False
        conf = EntryType.CONF_CHANGE
        return any(e.type == conf for e in ents)

    def commit_to(self, tocommit: int) -> None:
        if self.committed < tocommit:
            if self.last_index() < tocommit:
                raise ConsensusError(
                    f"commit {tocommit} is past the last index {self.last_index()}"
                )
            self.committed = tocommit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit up to max_index only if that entry is of `term` (the leader's
        current term): Raft figure 8 forbids committing older terms by counting."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def accept_applying(self, index: int) -> None:
        self.applying = max(self.applying, index)

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if self.committed < index or index < self.applied:
            raise ConsensusError(
                f"applied({index}) out of range [applied({self.applied}), "
                f"committed({self.committed})]"
            )
        self.applied = index
        if self.applying < index:
            self.applying = index

    def restore(self, s: Snapshot) -> None:
        self.committed = s.meta.index
        self.unstable.restore(s)
