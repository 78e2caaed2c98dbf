"""What a leader knows about each follower's log (etcd-io/raft's tracker package).

Each follower is in one of three states:
  * PROBE: the leader does not know where the follower's log matches its own;
    it sends one append at a time and waits for the answer (or a heartbeat
    response) before sending the next, walking `next` back on rejections;
  * REPLICATE: the logs match up to `match`; the leader streams appends
    optimistically, advancing `next` as it sends, bounded by the in-flight
    window (count and bytes);
  * SNAPSHOT: the follower needs entries the leader has compacted away; a
    snapshot is on its way and nothing else is sent until it is reported.

The tracker also holds the group's configuration (voters, learners) and the
votes of the current election.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum

from consensus.inflights import Inflights
from consensus.quorum import JointConfig, VoteResult
from consensus.types import ConfState


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    """The leader's view of one follower (or of itself)."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(
        self,
        next_index: int,
        inflights: Inflights,
        is_learner: bool = False,
        match: int = 0,
        recent_active: bool = False,
    ) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        # PROBE: one append was sent, wait for its answer or a heartbeat
        # response. REPLICATE: the in-flight window is full.
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0  # SNAPSHOT: index of the snapshot being sent
        self.recent_active = recent_active  # heard from since the last quorum check
        self.is_learner = is_learner
        self.inflights = inflights
        # The highest commit index sent to the follower (in an append or
        # heartbeat): lets the leader tell it about a newer one without waiting
        # for the next heartbeat.
        self.sent_commit = 0

    def clone(self) -> Progress:
        """A copy for a tentative configuration change; shares nothing mutable."""
        p = Progress(self.next, self.inflights.clone(), self.is_learner, self.match)
        p.state = self.state
        p.msg_app_flow_paused = self.msg_app_flow_paused
        p.pending_snapshot = self.pending_snapshot
        p.recent_active = self.recent_active
        p.sent_commit = self.sent_commit
        return p

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            # The snapshot (if it arrived) covers pending_snapshot: probe after it.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1
        self.sent_commit = snapshot_index

    def sent_entries(self, count: int, nbytes: int) -> None:
        """Account for an append of `count` entries starting at self.next."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next += count
                self.inflights.add(self.next - 1, nbytes)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == ProgressState.PROBE and count:
            self.msg_app_flow_paused = True

    def maybe_update(self, n: int) -> bool:
        """The follower acknowledged index n. False if that is old news."""
        if n <= self.match:
            return False
        self.match = n
        if self.next <= n:
            self.next = n + 1
        self.msg_app_flow_paused = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append whose previous index was `rejected`;
        `match_hint` is where its log may match. False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # an old, out-of-order rejection
            # Pipelined appends went astray: restart from the known match.
            self.next = self.match + 1
            self.sent_commit = min(self.sent_commit, self.next - 1)
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.sent_commit = min(self.sent_commit, self.next - 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.SNAPSHOT:
            return True
        return self.msg_app_flow_paused

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next}"
            f"{' learner' if self.is_learner else ''}"
            f"{' paused' if self.is_paused() else ''}"
            f" inflight={self.inflights.count()})"
        )


class TrackerConfig:
    """A group's membership: (joint) voters, learners and the joint-exit plan."""

    __slots__ = ("auto_leave", "learners", "learners_next", "voters")

    def __init__(
        self,
        voters: JointConfig | None = None,
        learners: frozenset[int] = frozenset(),
        learners_next: frozenset[int] = frozenset(),
        auto_leave: bool = False,
    ) -> None:
        self.voters = voters if voters is not None else JointConfig()
        self.learners = learners
        # Voters of the outgoing half being demoted to learners: they become
        # learners when the joint configuration is left (a node cannot be a
        # voter and a learner at once).
        self.learners_next = learners_next
        self.auto_leave = auto_leave

    def conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.voters.incoming)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters.outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )

    def __repr__(self) -> str:
        return f"TrackerConfig({self.conf_state()})"


ProgressMap = dict[int, Progress]


class ProgressTracker:
    """Configuration, per-node progress and the votes of the current election."""

    def __init__(self, max_inflight: int, max_inflight_bytes: int) -> None:
        self.config = TrackerConfig()
        self.progress: ProgressMap = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes

    def new_inflights(self) -> Inflights:
        return Inflights(self.max_inflight, self.max_inflight_bytes)

    def conf_state(self) -> ConfState:
        return self.config.conf_state()

    def is_singleton(self) -> bool:
        v = self.config.voters
        return len(v.incoming) == 1 and not v.outgoing

    def committed(self) -> int:
        """The largest index stored on a (joint) quorum of voters."""
        prs = self.progress
        acked = {i: pr.match for i, pr in prs.items() if not pr.is_learner}
        return self.config.voters.committed_index(acked)

    def visit(self) -> Iterator[tuple[int, Progress]]:
        """Every node's progress, in ascending id order (deterministic output)."""
        prs = self.progress
        for i in sorted(prs):
            yield i, prs[i]

    def quorum_active(self) -> bool:
        """Whether a quorum was heard from since the last check."""
        votes = {i: pr.recent_active for i, pr in self.progress.items() if not pr.is_learner}
        return self.config.voters.vote_result(votes) == VoteResult.WON

    def voter_nodes(self) -> list[int]:
        return sorted(self.config.voters.ids())

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        # Only the first answer from a node counts in an election.
        if node_id not in self.votes:
            self.votes[node_id] = granted

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        voters = self.config.voters.ids()
        for i, v in self.votes.items():
            if i not in voters:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.config.voters.vote_result(self.votes)
