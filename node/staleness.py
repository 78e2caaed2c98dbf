"""How stale a replica's applied state may be, stated honestly (DESIGN invariant 8).

The only fact a replica can build a staleness claim on is a *confirmed pair*
(C, t): "at time t, commit index C was the leader's, and a quorum confirmed
that leader afterwards" (a ReadIndex round, so a deposed leader cannot make
one). Every write acknowledged before t has an index <= C. A replica that has
applied C therefore reflects every write acknowledged before t, and its
staleness at `now` is at most now - t, plus the error between the clock that
read t and the clock that reads now (zero on the leader's own monotonic
clock; [raft] max_clock_offset_ms across nodes).

Comparing the applied index with the replica's *own* commit index, as this
node once did, proves nothing: a follower behind a slow link learns of
commits late, so it looked current while it was far behind.

Pure bookkeeping, no clocks of its own: callers pass times in, so it is
testable against a model (tests/node_unit/test_staleness.py).
"""

from __future__ import annotations

import bisect

UNKNOWN = -1.0  # the staleness of a replica that has no applied pair


class ConfirmedPairs:
    """The confirmed pairs one replica knows, for one clock.

    `best_at` is the latest t of a pair the replica has applied (C <= applied).
    Pairs not applied yet wait in `pending`, a Pareto front: strictly
    increasing in both C and t (a pair with a higher C and an earlier t than
    another is useless: the other becomes usable no later and says more).
    The front is bounded; when it is full it is thinned, which can only make
    the stated staleness larger, never smaller.
    """

    def __init__(self, clock_error_s: float, max_pending: int = 128) -> None:
        if clock_error_s < 0:
            raise ValueError("clock_error_s must be >= 0")
        if max_pending < 2:
            raise ValueError("max_pending must be >= 2")
        self.clock_error_s = clock_error_s
        self.max_pending = max_pending
        self.best_at: float | None = None
        self.pending: list[tuple[int, float]] = []  # (C, t), increasing in both
        self.applied = 0
        # The leader's commit index in the pair with the latest t seen: what
        # lag counts against (a replica's own commit index may lag behind it).
        self.latest: tuple[float, int] | None = None

    def observe(self, index: int, at: float) -> None:
        """Record a confirmed pair (index C, time t)."""
        if self.latest is None or at >= self.latest[0]:
            self.latest = (at, index)
        if index <= self.applied:
            if self.best_at is None or at > self.best_at:
                self.best_at = at
            return
        if self.best_at is not None and at <= self.best_at:
            return  # once applied, it would say nothing new
        pend = self.pending
        i = bisect.bisect_left(pend, (index, float("-inf")))
        # A pair at or below index with a later-or-equal time dominates it.
        if i > 0 and pend[i - 1][1] >= at:
            return
        if i < len(pend) and pend[i][0] == index and pend[i][1] >= at:
            return
        # It dominates the pairs from i on with an earlier-or-equal time
        # (their index is >= its own): contiguous, as the front rises in t.
        j = i
        while j < len(pend) and pend[j][1] <= at:
            j += 1
        pend[i:j] = [(index, at)]
        if len(pend) > self.max_pending:
            # Thin to every other pair, keeping the newest.
            kept = pend[-1::-2][::-1]
            pend[:] = kept

    def advance(self, applied: int) -> None:
        """The replica has applied up to `applied` (never decreases)."""
        if applied <= self.applied:
            return
        self.applied = applied
        pend = self.pending
        k = bisect.bisect_right(pend, (applied, float("inf")))
        if k:
            at = pend[k - 1][1]  # the front increases in t: the last usable is the latest
            if self.best_at is None or at > self.best_at:
                self.best_at = at
            del pend[:k]

    def staleness(self, now: float) -> float:
        """Seconds by which the applied state may trail the truth at `now`,
        or UNKNOWN (-1.0) when no applied pair exists."""
        if self.best_at is None:
            return UNKNOWN
        return max(0.0, now - self.best_at) + self.clock_error_s

    def lag(self, own_commit: int) -> int:
        """Entries between the applied index and the leader's commit index as
        last announced (or this replica's own commit index, if higher)."""
        known = max(own_commit, self.latest[1] if self.latest else 0)
        return max(0, known - self.applied)


class ReplicaFreshness:
    """Everything one replica knows about how fresh it is.

    Two sets of pairs, because two clocks: `own` holds the confirmations this
    replica made as leader, timed on its own monotonic clock (no error);
    `shared` holds the same ones and those announced by leaders, on the wall
    clock, which is compared across nodes and so carries max_clock_offset.
    Both are honest upper bounds, so the stated staleness is the smaller.

    As leader it also schedules the periodic confirmation (a ReadIndex round
    whose context is `closed_ctx`) whose result is announced to followers.
    """

    def __init__(self, max_clock_offset_s: float) -> None:
        self.own = ConfirmedPairs(0.0)
        self.shared = ConfirmedPairs(max_clock_offset_s)
        self.issued: dict[bytes, tuple[float, float]] = {}  # read ctx -> (mono, wall) at issue
        self.closed_ctx = b""
        self.closed_issued = 0.0  # monotonic time the last periodic round was issued
        self.newest: tuple[int, float] | None = None  # newest (C, wall t) confirmed here

    def issue(self, ctx: bytes, mono: float, wall: float, *, closed: bool = False) -> None:
        """A ReadIndex round with this context was started at these times."""
        self.issued[ctx] = (mono, wall)
        if closed:
            self.closed_ctx = ctx
            self.closed_issued = mono

    def confirm(self, ctx: bytes, index: int) -> bool:
        """The round `ctx` confirmed commit index `index`. True when it was the
        periodic round, i.e. when the newest pair is due to be announced."""
        at = self.issued.pop(ctx, None)
        if at is not None:
            mono, wall = at
            self.own.observe(index, mono)
            self.shared.observe(index, wall)
            if self.newest is None or wall >= self.newest[1]:
                self.newest = (index, wall)
        if ctx and ctx == self.closed_ctx:
            self.closed_ctx = b""
            return self.newest is not None
        return False

    def closed_due(self, mono: float, interval_s: float, give_up_s: float) -> bool:
        """Is a periodic round due? One at a time; one whose answer never came
        (lost leadership, no quorum) is abandoned after give_up_s."""
        if self.closed_ctx:
            if mono - self.closed_issued < give_up_s:
                return False
            self.closed_ctx = b""
            # Rounds that old will not be answered: keep `issued` bounded.
            for ctx, (t, _) in list(self.issued.items()):
                if mono - t >= give_up_s:
                    del self.issued[ctx]
        return mono - self.closed_issued >= interval_s

    def not_leader(self) -> None:
        """Leadership is gone: its pending rounds will never be answered."""
        self.issued.clear()
        self.closed_ctx = b""

    def heard(self, index: int, wall: float) -> None:
        """A leader announced the pair (index, wall)."""
        self.shared.observe(index, wall)

    def advance(self, applied: int) -> None:
        self.own.advance(applied)
        self.shared.advance(applied)

    def staleness(self, mono: float, wall: float) -> float:
        known = [s for s in (self.own.staleness(mono), self.shared.staleness(wall)) if s >= 0]
        return min(known) if known else UNKNOWN

    def lag(self, own_commit: int) -> int:
        return self.shared.lag(own_commit)
