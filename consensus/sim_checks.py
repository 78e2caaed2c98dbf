"""The simulator's safety checks: Raft's invariants, checked incrementally.

Everything is compared through hash chains so that each check costs O(1) per
event instead of comparing whole logs:

* a node's *log chain* at index i hashes (term, type, data) of entries 1..i of
  its stable log, so equal chains at i mean equal prefixes up to i (Log
  Matching is then "same index and term => same chain");
* a node's *state chain* at index i hashes (type, data) of every entry it
  applied up to i, so equal state chains mean identical applied histories.

The chains live beside each node's MemoryStorage (LogChain is "on disk": it is
updated only when the node persists), and snapshots carry both chains so a
replica restored from one can keep checking.
"""

from __future__ import annotations

import bisect
import hashlib
import struct

from consensus.types import ConfState, Entry, HardState

ZERO = b"\x00" * 16
_TERM_TYPE = struct.Struct(">QB")


def log_link(prev: bytes, term: int, etype: int, data: bytes) -> bytes:
    return hashlib.blake2b(prev + _TERM_TYPE.pack(term, etype) + data, digest_size=16).digest()


def state_link(prev: bytes, etype: int, data: bytes) -> bytes:
    return hashlib.blake2b(prev + bytes((etype,)) + data, digest_size=16).digest()


class Violation(Exception):
    """A Raft invariant broke. `kind` names it; the message carries the detail
    (node ids, terms and indexes only: never entry data)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class LogChain:
    """Log-chain hashes of a node's stable log, from first_index()-1 on."""

    __slots__ = ("base", "hashes")

    def __init__(self, base: int = 0, base_hash: bytes = ZERO) -> None:
        self.base = base
        self.hashes = [base_hash]

    @property
    def last(self) -> int:
        return self.base + len(self.hashes) - 1

    def at(self, index: int) -> bytes | None:
        k = index - self.base
        if 0 <= k < len(self.hashes):
            return self.hashes[k]
        return None

    def append(self, entries: list[Entry]) -> None:
        """Mirror MemoryStorage.append: truncate a conflicting suffix, skip
        entries at or below the compaction point."""
        ents = [e for e in entries if e.index > self.base]
        if not ents:
            return
        k = ents[0].index - self.base
        if k > len(self.hashes):
            raise Violation("log gap", f"append at {ents[0].index} after last {self.last}")
        del self.hashes[k:]
        h = self.hashes[-1]
        for e in ents:
            h = log_link(h, e.term, e.type, e.data)
            self.hashes.append(h)

    def clone(self) -> LogChain:
        c = LogChain(self.base)
        c.hashes = list(self.hashes)
        return c

    def reset(self, index: int, chain: bytes) -> None:
        self.base = index
        self.hashes = [chain]

    def compact(self, index: int) -> None:
        k = index - self.base
        if k > 0:
            del self.hashes[:k]
            self.base = index


class SafetyChecker:
    """Global records of one schedule and the invariant checks against them."""

    def __init__(self, initial_conf: ConfState | None = None) -> None:
        self.leaders: dict[int, int] = {}  # term -> the one node that led it
        # The group's membership history: (index of a conf change, the
        # configuration it produced), in index order.
        self.conf_index: list[int] = [0]
        self.confs: list[ConfState] = [_norm(initial_conf or ConfState())]
        self.log_by_index_term: dict[tuple[int, int], bytes] = {}  # -> log chain
        self.committed: dict[int, bytes] = {}  # index -> log chain of the committed entry
        self.commit_frontier = 0  # highest commit index any node has persisted
        # term t -> highest commit index a node persisted while at term t: those
        # entries were committed in a term <= t, so every leader of a term > t has them.
        self.commit_by_term: dict[int, int] = {}
        self.applied: dict[int, tuple[int, bytes, bytes]] = {}  # index -> (type, data, chain)
        self.read_floor: dict[bytes, int] = {}  # read ctx -> commit frontier when requested
        self.reads_checked = 0

    # --- election safety ----------------------------------------------------

    def leader_elected(self, term: int, node_id: int) -> bool:
        """Returns True the first time this term gets its leader."""
        prev = self.leaders.get(term)
        if prev is None:
            self.leaders[term] = node_id
            return True
        if prev != node_id:
            raise Violation("election safety", f"nodes {prev} and {node_id} both led term {term}")
        return False

    # --- log matching -------------------------------------------------------

    def entries_persisted(self, node_id: int, entries: list[Entry], chain: LogChain) -> None:
        table = self.log_by_index_term
        for e in entries:
            h = chain.at(e.index)
            if h is None:
                continue  # below the node's compaction point: skipped by storage too
            key = (e.index, e.term)
            seen = table.get(key)
            if seen is None:
                table[key] = h
            elif seen != h:
                raise Violation(
                    "log matching",
                    f"node {node_id}: entry {e.index} term {e.term} differs from another "
                    "node's entry with the same index and term, or its prefix does",
                )

    def snapshot_installed(self, node_id: int, index: int, term: int, log_chain: bytes) -> None:
        key = (index, term)
        seen = self.log_by_index_term.get(key)
        if seen is None:
            self.log_by_index_term[key] = log_chain
        elif seen != log_chain and index > 0:
            raise Violation(
                "log matching", f"node {node_id}: snapshot at {index} term {term} disagrees"
            )

    # --- commits and leader completeness ------------------------------------

    def commit_persisted(self, node_id: int, term: int, commit: int, chain: LogChain) -> None:
        if commit > chain.last:
            raise Violation(
                "commit past log", f"node {node_id}: commit {commit} > last index {chain.last}"
            )
        h = chain.at(commit)
        if h is None:
            return
        seen = self.committed.get(commit)
        if seen is not None and seen != h:
            raise Violation(
                "committed entry changed",
                f"node {node_id}: committed log differs from another node's at {commit}",
            )
        if commit > self.commit_frontier:
            for i in range(max(self.commit_frontier + 1, chain.base), commit + 1):
                hi = chain.at(i)
                assert hi is not None
                self.committed[i] = hi
            self.commit_frontier = commit
        elif seen is None:
            self.committed[commit] = h
        if commit > self.commit_by_term.get(term, 0):
            self.commit_by_term[term] = commit

    def leader_completeness(self, node_id: int, term: int, chain: LogChain) -> None:
        """Called once the new leader of `term` has persisted its log."""
        need = max((c for t, c in self.commit_by_term.items() if t < term), default=0)
        if need == 0:
            return
        if chain.last < need:
            raise Violation(
                "leader completeness",
                f"node {node_id} leads term {term} with last index {chain.last}, "
                f"but {need} was committed in an earlier term",
            )
        at = max(need, chain.base)
        want = self.committed.get(at)
        if want is not None and chain.at(at) != want:
            raise Violation(
                "leader completeness",
                f"node {node_id} leads term {term} without the committed entry at {at}",
            )

    # --- state machine safety -----------------------------------------------

    def entry_applied(
        self, node_id: int, index: int, etype: int, data: bytes, chain: bytes
    ) -> bool:
        """Returns True when this is the first application of `index` anywhere."""
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = (etype, data, chain)
            return True
        if seen[2] != chain or seen[0] != etype or seen[1] != data:
            raise Violation(
                "state machine safety",
                f"node {node_id} applied a different entry (or history) at index {index}",
            )
        return False

    def state_restored(self, node_id: int, index: int, chain: bytes) -> None:
        if index == 0:
            return
        seen = self.applied.get(index)
        if seen is None:
            raise Violation("snapshot", f"node {node_id}: snapshot at unapplied index {index}")
        if seen[2] != chain:
            raise Violation(
                "state machine safety", f"node {node_id}: snapshot state at {index} differs"
            )

    # --- membership ---------------------------------------------------------

    def conf_applied(self, node_id: int, index: int, cs: ConfState) -> None:
        """A node applied the conf change at index, which produced cs."""
        cs = _norm(cs)
        k = bisect.bisect_left(self.conf_index, index)
        if k < len(self.conf_index) and self.conf_index[k] == index:
            if self.confs[k] != cs:
                raise Violation(
                    "membership",
                    f"node {node_id}: the conf change at {index} gave {cs}, "
                    f"elsewhere {self.confs[k]}",
                )
            return
        self.conf_index.insert(k, index)
        self.confs.insert(k, cs)

    def conf_at(self, index: int) -> ConfState:
        return self.confs[bisect.bisect_right(self.conf_index, index) - 1]

    def conf_restored(self, node_id: int, applied: int, cs: ConfState, how: str) -> None:
        """A node (re)started or installed a snapshot at applied: its
        membership must be the group's as of applied. A blank replica (no
        membership yet) is exempt."""
        if cs == ConfState():
            return
        want = self.conf_at(applied)
        if _norm(cs) != want:
            raise Violation(
                "membership",
                f"node {node_id} {how} at applied {applied} with {_norm(cs)}, "
                f"but the group's configuration there is {want}",
            )

    # --- durability of what was sent ----------------------------------------

    def promises_kept(
        self,
        node_id: int,
        hs: HardState,
        last_index: int,
        vote: tuple[int, int],
        ack: tuple[int, int],
    ) -> None:
        """After a crash, the node's disk must still back what it sent: a vote
        (granted, or asked for itself) and an append acknowledgement. A node
        that sent them before persisting (or without syncing) forgets them,
        and may then vote twice in one term or lose a committed entry."""
        vt, cand = vote
        if vt and (hs.term < vt or (hs.term == vt and hs.vote != cand)):
            raise Violation(
                "durability",
                f"node {node_id} voted for {cand} in term {vt}, but after a crash its disk "
                f"holds term {hs.term} vote {hs.vote}",
            )
        at, ai = ack
        if at and (hs.term < at or (hs.term == at and last_index < ai)):
            raise Violation(
                "durability",
                f"node {node_id} acknowledged index {ai} in term {at}, but after a crash its "
                f"disk holds term {hs.term} and entries up to {last_index}",
            )

    # --- linearizable reads -------------------------------------------------

    def read_requested(self, ctx: bytes) -> None:
        self.read_floor[ctx] = self.commit_frontier

    def read_served(self, node_id: int, index: int, ctx: bytes, applied: int) -> None:
        floor = self.read_floor.get(ctx)
        if floor is None:
            raise Violation("read", f"node {node_id}: ReadState for a read never requested")
        if applied < index:
            raise Violation("read", f"node {node_id}: served at {index} with applied {applied}")
        if index < floor:
            raise Violation(
                "linearizable read",
                f"node {node_id}: read index {index} misses entries committed up to {floor} "
                "before the read was requested",
            )
        self.reads_checked += 1


def _norm(cs: ConfState) -> ConfState:
    return ConfState(
        voters=tuple(sorted(cs.voters)),
        learners=tuple(sorted(cs.learners)),
        voters_outgoing=tuple(sorted(cs.voters_outgoing)),
        learners_next=tuple(sorted(cs.learners_next)),
        auto_leave=cs.auto_leave,
    )
