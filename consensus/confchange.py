"""Applying membership changes to a configuration (etcd-io/raft's confchange).

Scheme: joint consensus (Raft thesis §4.3, etcd's ConfChangeV2), with
single-voter changes allowed as the "simple" special case.

Why not single-server changes alone: Ongaro's single-server membership
change (thesis §4.1) is unsafe when a leader change interleaves with
uncommitted configuration entries (the bug he described on raft-dev in 2015:
two successive one-voter changes proposed by different leaders can yield two
disjoint majorities; the fix needs a new leader to commit an entry of its own
term before changing membership again). Joint consensus does not depend on
that subtlety: while in the joint configuration C_old,new every decision
(election or commit) needs a majority of C_old AND of C_new, so no two
majorities can ever be disjoint, and any number of voters can change at once.

How it is used:
  * ConfChange.transition AUTO: a change touching at most one voter is applied
    directly ("simple"); anything else enters a joint configuration that the
    leader leaves automatically (it proposes an empty ConfChange once the
    joint one is applied).
  * JOINT_IMPLICIT: always joint, left automatically.
  * JOINT_EXPLICIT: always joint; the application leaves it by proposing an
    empty ConfChange.
  * Demoting a voter to learner during a joint change records it in
    learners_next: it stays an (outgoing) voter until the joint config is left.

The leader keeps at most one conf change in flight (raft.py refuses another
until the previous one is applied), and every function here validates the
result and returns new objects, leaving the input untouched on error.
"""

from __future__ import annotations

from collections.abc import Iterable

from consensus.progress import Progress, ProgressMap, ProgressTracker, TrackerConfig
from consensus.quorum import JointConfig
from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    ConsensusError,
)


class ConfChangeError(ConsensusError):
    """The configuration change is invalid in the current configuration."""


def enter_joint_needed(cc: ConfChange) -> tuple[bool, bool]:
    """(use joint consensus?, leave it automatically?) for a non-empty change."""
    if cc.transition == ConfChangeTransition.AUTO:
        # Joint is needed only when more than one voter changes; a
        # learner-only change or a single voter change applies directly.
        if len(cc.changes) > 1:
            return True, True
        return False, False
    if cc.transition == ConfChangeTransition.JOINT_IMPLICIT:
        return True, True
    if cc.transition == ConfChangeTransition.JOINT_EXPLICIT:
        return True, False
    raise ConfChangeError(f"unknown transition {cc.transition}")


class Changer:
    """Computes the configuration (and progress map) that results from a change.

    `last_index` initializes the progress of newly added nodes.
    """

    def __init__(self, tracker: ProgressTracker, last_index: int) -> None:
        self.tracker = tracker
        self.last_index = last_index

    # -- public operations ------------------------------------------------

    def apply(self, cc: ConfChange) -> tuple[TrackerConfig, ProgressMap]:
        """Dispatch as etcd's raft.applyConfChange does."""
        if cc.leave_joint():
            return self.leave_joint()
        joint, auto_leave = enter_joint_needed(cc)
        if joint:
            return self.enter_joint(auto_leave, cc.changes)
        return self.simple(cc.changes)

    def enter_joint(
        self, auto_leave: bool, changes: Iterable[ConfChangeSingle]
    ) -> tuple[TrackerConfig, ProgressMap]:
        cfg, prs = self._check_and_copy()
        if cfg.voters.outgoing:
            raise ConfChangeError("configuration is already joint")
        if not cfg.voters.incoming:
            raise ConfChangeError("cannot make a zero-voter configuration joint")
        # The current voters become the outgoing half; changes apply to incoming.
        voters = JointConfig(cfg.voters.incoming, cfg.voters.incoming)
        st = _Mutable(voters, cfg.learners, cfg.learners_next, prs)
        self._apply(st, changes)
        new = st.freeze(auto_leave)
        self._check_invariants(new, prs)
        return new, prs

    def leave_joint(self) -> tuple[TrackerConfig, ProgressMap]:
        cfg, prs = self._check_and_copy()
        if not cfg.voters.outgoing:
            raise ConfChangeError("cannot leave a non-joint configuration")
        learners = set(cfg.learners)
        for nid in cfg.learners_next:
            learners.add(nid)
            prs[nid].is_learner = True
        incoming = cfg.voters.incoming
        for nid in cfg.voters.outgoing:
            if nid not in incoming and nid not in learners:
                del prs[nid]  # removed by the joint change
        new = TrackerConfig(JointConfig(incoming), frozenset(learners), frozenset(), False)
        self._check_invariants(new, prs)
        return new, prs

    def simple(self, changes: Iterable[ConfChangeSingle]) -> tuple[TrackerConfig, ProgressMap]:
        cfg, prs = self._check_and_copy()
        if cfg.voters.outgoing:
            raise ConfChangeError("cannot apply a simple change in a joint configuration")
        st = _Mutable(cfg.voters, cfg.learners, cfg.learners_next, prs)
        self._apply(st, changes)
        new = st.freeze(False)
        changed = cfg.voters.incoming ^ new.voters.incoming
        if len(changed) > 1:
            raise ConfChangeError("more than one voter changed without joint consensus")
        self._check_invariants(new, prs)
        return new, prs

    # -- internals --------------------------------------------------------

    def _check_and_copy(self) -> tuple[TrackerConfig, ProgressMap]:
        cfg = self.tracker.config
        prs = {i: pr.clone() for i, pr in self.tracker.progress.items()}
        self._check_invariants(cfg, prs)
        return cfg, prs

    def _apply(self, st: _Mutable, changes: Iterable[ConfChangeSingle]) -> None:
        for ch in changes:
            if ch.node_id <= 0:
                raise ConfChangeError("node id must be positive")
            if ch.type == ConfChangeType.ADD_VOTER:
                self._make_voter(st, ch.node_id)
            elif ch.type == ConfChangeType.ADD_LEARNER:
                self._make_learner(st, ch.node_id)
            elif ch.type == ConfChangeType.REMOVE_NODE:
                self._remove(st, ch.node_id)
            else:
                raise ConfChangeError(f"unknown change type {ch.type}")
        if not st.incoming:
            raise ConfChangeError("removed all voters")

    def _init_progress(self, st: _Mutable, nid: int, is_learner: bool) -> None:
        if is_learner:
            st.learners.add(nid)
        else:
            st.incoming.add(nid)
        # A new node counts as recently active, or the next quorum check could
        # depose the leader before the node had a chance to answer. Next is
        # the last index, so the first probe carries an entry and goes out at
        # once (a new node most likely needs much more: the probe finds out).
        st.prs[nid] = Progress(
            max(self.last_index, 1),
            self.tracker.new_inflights(),
            is_learner=is_learner,
            recent_active=True,
        )

    def _make_voter(self, st: _Mutable, nid: int) -> None:
        pr = st.prs.get(nid)
        if pr is None:
            self._init_progress(st, nid, is_learner=False)
            return
        pr.is_learner = False
        st.learners.discard(nid)
        st.learners_next.discard(nid)
        st.incoming.add(nid)

    def _make_learner(self, st: _Mutable, nid: int) -> None:
        pr = st.prs.get(nid)
        if pr is None:
            self._init_progress(st, nid, is_learner=True)
            return
        if pr.is_learner:
            return
        # Remove it as a voter of the incoming half, keeping its progress.
        st.incoming.discard(nid)
        st.learners.discard(nid)
        st.learners_next.discard(nid)
        if nid in st.outgoing:
            # Still an outgoing voter: it becomes a learner on leaving joint.
            st.learners_next.add(nid)
        else:
            pr.is_learner = True
            st.learners.add(nid)

    def _remove(self, st: _Mutable, nid: int) -> None:
        if nid not in st.prs:
            return
        st.incoming.discard(nid)
        st.learners.discard(nid)
        st.learners_next.discard(nid)
        if nid not in st.outgoing:
            # Outgoing voters keep their progress until the joint config is left.
            del st.prs[nid]

    @staticmethod
    def _check_invariants(cfg: TrackerConfig, prs: ProgressMap) -> None:
        ids = cfg.voters.ids() | cfg.learners | cfg.learners_next
        for nid in ids:
            if nid not in prs:
                raise ConfChangeError(f"no progress for node {nid}")
        for nid in cfg.learners_next:
            if nid not in cfg.voters.outgoing:
                raise ConfChangeError(f"node {nid} is in learners_next but not outgoing")
            if prs[nid].is_learner:
                raise ConfChangeError(f"node {nid} in learners_next is already a learner")
        for nid in cfg.learners:
            if nid in cfg.voters.ids():
                raise ConfChangeError(f"node {nid} is both learner and voter")
            if not prs[nid].is_learner:
                raise ConfChangeError(f"learner {nid} is not marked as one")
        for nid in cfg.voters.ids():
            if prs[nid].is_learner:
                raise ConfChangeError(f"voter {nid} is marked as a learner")
        if not cfg.voters.outgoing:
            if cfg.learners_next:
                raise ConfChangeError("learners_next outside a joint configuration")
            if cfg.auto_leave:
                raise ConfChangeError("auto_leave outside a joint configuration")


class _Mutable:
    """Scratch state while applying a list of single changes."""

    def __init__(
        self,
        voters: JointConfig,
        learners: frozenset[int],
        learners_next: frozenset[int],
        prs: ProgressMap,
    ) -> None:
        self.incoming = set(voters.incoming)
        self.outgoing = frozenset(voters.outgoing)
        self.learners = set(learners)
        self.learners_next = set(learners_next)
        self.prs = prs

    def freeze(self, auto_leave: bool) -> TrackerConfig:
        return TrackerConfig(
            JointConfig(self.incoming, self.outgoing),
            frozenset(self.learners),
            frozenset(self.learners_next),
            auto_leave if self.outgoing else False,
        )


def restore(
    cs: ConfState, last_index: int, tracker: ProgressTracker
) -> tuple[TrackerConfig, ProgressMap]:
    """The configuration described by a ConfState (from a snapshot or bootstrap).

    Progress of every member starts at last_index + 1 in the probe state.
    """
    prs: ProgressMap = {}
    for nid in set(cs.voters) | set(cs.voters_outgoing) | set(cs.learners_next):
        prs[nid] = Progress(last_index + 1, tracker.new_inflights(), recent_active=True)
    for nid in cs.learners:
        prs[nid] = Progress(
            last_index + 1, tracker.new_inflights(), is_learner=True, recent_active=True
        )
    cfg = TrackerConfig(
        JointConfig(cs.voters, cs.voters_outgoing),
        frozenset(cs.learners),
        frozenset(cs.learners_next),
        cs.auto_leave,
    )
    if any(n <= 0 for n in prs):
        raise ConfChangeError("node id must be positive")
    Changer._check_invariants(cfg, prs)
    return cfg, prs
