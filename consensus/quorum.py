"""Majority and joint-majority math (etcd-io/raft's quorum package).

A configuration is a set of voter ids. Two questions are asked of it:
  * committed_index: the highest log index known to be stored on a majority,
    given each voter's acknowledged (matched) index;
  * vote_result: whether an election is won, lost, or still open.

A joint configuration (used while changing voters) needs a majority in both
its incoming and outgoing halves; an empty half imposes no constraint, which
is what lets the same code serve a plain (non-joint) configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum

# Committed index of an empty configuration: no constraint, so the joint
# minimum is decided by the other half. Larger than any real log index.
INFINITE_INDEX = 1 << 63


class VoteResult(IntEnum):
    PENDING = 1  # neither won nor lost yet: more votes are needed
    LOST = 2  # cannot be won any more, whatever the missing votes say
    WON = 3


class MajorityConfig(frozenset[int]):
    """A set of voters whose decisions need a simple majority."""

    def committed_index(self, acked: Mapping[int, int]) -> int:
        """The largest index acknowledged by a majority; voters missing from
        `acked` count as having acknowledged index 0."""
        n = len(self)
        if n == 0:
            return INFINITE_INDEX
        get = acked.get
        srt = sorted([get(i, 0) for i in self])
        # srt[k] is acknowledged by the n - k voters at positions >= k; the
        # largest k with n - k >= majority is n - (n // 2 + 1).
        return srt[n - (n // 2 + 1)]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """Voters missing from `votes` have not answered yet."""
        n = len(self)
        if n == 0:
            # An empty configuration agrees with everything, as in joint math.
            return VoteResult.WON
        yes = missing = 0
        for i in self:
            v = votes.get(i)
            if v is None:
                missing += 1
            elif v:
                yes += 1
        q = n // 2 + 1
        if yes >= q:
            return VoteResult.WON
        if yes + missing >= q:
            return VoteResult.PENDING
        return VoteResult.LOST


class JointConfig:
    """The incoming and outgoing voter sets. Outgoing is empty unless the
    group is in the middle of a joint-consensus voter change."""

    __slots__ = ("incoming", "outgoing")

    def __init__(self, incoming: Iterable[int] = (), outgoing: Iterable[int] = ()) -> None:
        self.incoming = MajorityConfig(incoming)
        self.outgoing = MajorityConfig(outgoing)

    def ids(self) -> frozenset[int]:
        return self.incoming | self.outgoing

    def is_joint(self) -> bool:
        return bool(self.outgoing)

    def committed_index(self, acked: Mapping[int, int]) -> int:
        i = self.incoming.committed_index(acked)
        if not self.outgoing:
            return i
        return min(i, self.outgoing.committed_index(acked))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        r1 = self.incoming.vote_result(votes)
        r2 = self.outgoing.vote_result(votes)
        if r1 == r2:
            return r1
        if VoteResult.LOST in (r1, r2):
            return VoteResult.LOST
        # One half won, the other is pending.
        return VoteResult.PENDING

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JointConfig):
            return NotImplemented
        return self.incoming == other.incoming and self.outgoing == other.outgoing

    def __hash__(self) -> int:
        return hash((self.incoming, self.outgoing))

    def __repr__(self) -> str:
        if self.outgoing:
            return f"JointConfig({sorted(self.incoming)}&&{sorted(self.outgoing)})"
        return f"JointConfig({sorted(self.incoming)})"
