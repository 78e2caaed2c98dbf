"""The Raft state machine (etcd-io/raft's raft.go), pure and deterministic.

Inputs: step(message), tick(), and the application's conf-change/apply
acknowledgements. Outputs accumulate in self.msgs, self.read_states and the
log's unstable part, and RawNode packages them into a Ready. There is no IO,
no clock (time is the number of tick() calls) and no global randomness
(election jitter comes from the injected random.Random).

The behaviour per role lives in one step function each: step_leader,
step_candidate (also the pre-candidate) and step_follower. step() handles
what is common: term comparison, vote requests, and local triggers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consensus import codec, confchange
from consensus.progress import Progress, ProgressMap, ProgressState, ProgressTracker, TrackerConfig
from consensus.quorum import VoteResult
from consensus.raft_log import RaftLog
from consensus.read_only import ReadOnly
from consensus.storage import Storage, payload_size
from consensus.types import (
    EMPTY_SNAPSHOT,
    CompactedError,
    ConfChange,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    ReadState,
    Snapshot,
    SnapshotTemporarilyUnavailable,
    SoftState,
    StateRole,
    UnavailableError,
    UncommittedLimitExceeded,
)

# Campaign kinds; CAMPAIGN_TRANSFER is also the VOTE context that lets a
# leadership-transfer election bypass the followers' leader lease.
CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"
CAMPAIGN_TRANSFER = b"CampaignTransfer"

TEST_ONLY_BUGS = frozenset(
    {"commit_prior_term_by_count", "vote_twice", "read_without_quorum", "auto_leave_once"}
)

_APP = MessageType.APP
_APP_RESP = MessageType.APP_RESP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
_PROP = MessageType.PROP
_LEADER_MESSAGES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
_APPEND_OR_HEARTBEAT = frozenset({MessageType.APP, MessageType.HEARTBEAT})
_REPLICATE = ProgressState.REPLICATE
_PROBE = ProgressState.PROBE
_SNAPSHOT = ProgressState.SNAPSHOT


@dataclass
class Config:
    """Parameters of one Raft replica. Ticks are the unit of time."""

    id: int
    storage: Storage
    rng: random.Random
    election_tick: int = 10
    heartbeat_tick: int = 1
    # The last index the application applied before a restart: entries up to
    # it are not handed out again, and conf changes up to it are replayed from
    # the log onto the snapshot's membership (Raft._restore_applied).
    applied: int = 0
    max_size_per_msg: int = 1 << 20  # bytes of entry data per APP message
    max_committed_size_per_ready: int = 8 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 32 << 20
    max_uncommitted_entries_size: int = 64 << 20  # leader drops proposals beyond this
    check_quorum: bool = True
    pre_vote: bool = True
    disable_proposal_forwarding: bool = False
    test_only_bug: str | None = None  # planted bugs for simulator tests; None in production

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("id must be positive")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")
        if self.max_inflight_bytes <= 0:
            raise ValueError("max_inflight_bytes must be positive")
        if self.max_size_per_msg <= 0 or self.max_committed_size_per_ready <= 0:
            raise ValueError("message and ready sizes must be positive")
        if self.test_only_bug is not None and self.test_only_bug not in TEST_ONLY_BUGS:
            raise ValueError(f"unknown test_only_bug {self.test_only_bug!r}")


_VOTE_RESP_OF = {
    MessageType.VOTE: MessageType.VOTE_RESP,
    MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP,
}


class Raft:
    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.rng = c.rng
        self.raft_log = RaftLog(c.storage, c.max_committed_size_per_ready)
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.trk = ProgressTracker(c.max_inflight_msgs, c.max_inflight_bytes)
        self.election_timeout = c.election_tick
        self.heartbeat_timeout = c.heartbeat_tick
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        # Planted bugs: read here once and nowhere else.
        self._bug_commit_by_count = c.test_only_bug == "commit_prior_term_by_count"
        self._bug_vote_twice = c.test_only_bug == "vote_twice"
        self._bug_read_without_quorum = c.test_only_bug == "read_without_quorum"
        self._bug_auto_leave_once = c.test_only_bug == "auto_leave_once"
        self._bug_auto_leave_tried = False

        self.term = 0
        self.vote = 0
        self.lead = 0
        self.state = StateRole.FOLLOWER
        self.is_learner = False
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []
        self.lead_transferee = 0
        # The index of the latest conf change proposed by this leader: another
        # may be proposed only once it is applied.
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        # Broadcasting appends is deferred to the next Ready, so that many
        # proposals between two Readies travel in one APP per follower.
        self._bcast_pending = False
        self._step_fn: Callable[[Message], None] = self.step_follower
        self._tick_fn: Callable[[], None] = self.tick_election

        hs, cs = c.storage.initial_state()
        cfg, prs = confchange.restore(cs, self.raft_log.last_index(), self.trk)
        restored = self.switch_to_config(cfg, prs)
        if restored != _normalized(cs):
            raise ConsensusError("restored configuration does not match the stored one")
        if not hs.is_empty():
            self._load_state(hs)
        self._restore_applied(c)
        self.become_follower(self.term, 0)

    # -- state snapshots -------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(leader=self.lead, role=self.state)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.raft_log.committed)

    def _load_state(self, hs: HardState) -> None:
        log = self.raft_log
        if hs.commit < log.committed or hs.commit > log.last_index():
            raise ConsensusError(
                f"stored commit {hs.commit} is out of range [{log.committed}, {log.last_index()}]"
            )
        log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def _restore_applied(self, c: Config) -> None:
        """Resume from the application's applied index, with the membership
        as of that index.

        The stored ConfState is the one of the last snapshot. Conf changes
        between the snapshot and c.applied were applied by the application
        before the restart and are not handed out again (only entries after
        applied are), so they are replayed here from the log: otherwise a
        node restarting after two changes past its snapshot comes back with
        the old membership, whose majorities need not overlap the real ones
        (two leaders in one term). Entries up to the snapshot index are never
        handed out again either: the snapshot holds their effect, the
        membership included.

        The commit index is raised to applied if it lags: the application
        applies only committed entries, and a commit-only hard state is
        written without a sync (rawnode.ready), so a crash may lose it while
        the application's own record of what it applied survived.
        """
        log = self.raft_log
        snap_index = c.storage.snapshot().meta.index
        if 0 < c.applied < snap_index:
            raise ConsensusError(
                f"applied index {c.applied} is below the stored snapshot at {snap_index}: "
                "the state machine is older than the snapshot (an unfinished install?)"
            )
        applied = max(c.applied, snap_index)  # 0: resume from the snapshot
        if applied <= 0:
            return
        if applied > log.last_index():
            raise ConsensusError(
                f"applied index {applied} is past the last stored index {log.last_index()}: "
                "the log lost entries the application had applied"
            )
        if applied > log.committed:
            log.committed = applied
        if applied > snap_index:
            try:
                ents = log.slice(snap_index + 1, applied + 1)
            except CompactedError:
                raise ConsensusError(
                    f"entries {snap_index + 1}..{applied} after the snapshot were compacted: "
                    "the membership as of the applied index cannot be rebuilt"
                ) from None
            conf = EntryType.CONF_CHANGE
            for e in ents:
                if e.type == conf:
                    self.apply_conf_change(codec.decode_conf_change(e.data))
        log.applied_to(applied)

    # -- sending -------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if m.frm == 0:
            m.frm = self.id  # forwarded messages keep their origin
        t = m.type
        if t in _VOTE_TYPES:
            if m.term == 0:
                raise ConsensusError(f"{t.name} must carry a term")
        elif t != _PROP and t != MessageType.READ_INDEX:
            # Proposals and read requests forwarded to the leader carry no
            # term: they are treated there as local messages.
            m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send the entries `to` lacks (or a snapshot if they are compacted).
        Returns whether a message was sent."""
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        log = self.raft_log
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
        except (CompactedError, UnavailableError):
            return self.maybe_send_snapshot(to, pr)
        ents: list[Entry] = []
        nbytes = 0
        # A throttled follower gets only empty appends (from heartbeat
        # responses) so that lost appends cannot stall it forever.
        if pr.state != _REPLICATE or not pr.inflights.full():
            try:
                ents, nbytes = log.entries_sized(pr.next, self.max_msg_size)
            except CompactedError:
                return self.maybe_send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        commit = log.committed
        self.send(Message(_APP, to=to, index=prev, log_term=prev_term, entries=ents, commit=commit))
        pr.sent_entries(len(ents), nbytes)
        pr.sent_commit = commit
        return True

    def maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a node that is likely down
        try:
            snap = self.raft_log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        pr.become_snapshot(snap.meta.index)
        self.send(Message(MessageType.SNAP, to=to, snapshot=snap))
        return True

    def bcast_append(self) -> None:
        for nid in self.trk.progress:
            if nid != self.id:
                self.maybe_send_append(nid, True)

    def flush_appends(self) -> None:
        """Send the appends deferred since the last Ready."""
        if self._bcast_pending:
            self._bcast_pending = False
            if self.state == StateRole.LEADER:
                self.bcast_append()

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        pr = self.trk.progress[to]
        # A follower may not have the leader's committed entries yet: never
        # tell it to commit past what it is known to hold.
        commit = min(pr.match, self.raft_log.committed)
        self.send(Message(_HEARTBEAT, to=to, commit=commit, context=ctx))
        pr.sent_commit = commit

    def bcast_heartbeat(self) -> None:
        self.bcast_heartbeat_with_ctx(self.read_only.last_pending_request_ctx())

    def bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        for nid in self.trk.progress:
            if nid != self.id:
                self.send_heartbeat(nid, ctx)

    def send_timeout_now(self, to: int) -> None:
        self.send(Message(MessageType.TIMEOUT_NOW, to=to))

    # -- commit / append ---------------------------------------------------------

    def maybe_commit(self) -> bool:
        mci = self.trk.committed()
        log = self.raft_log
        if self._bug_commit_by_count:
            # PLANTED BUG: commit whatever a quorum stores, of any term,
            # violating Raft's figure 8 rule.
            mci = min(mci, log.last_index())
            if mci > log.committed:
                log.commit_to(mci)
                return True
            return False
        return log.maybe_commit(mci, self.term)

    def append_entry(self, es: list[Entry]) -> bool:
        """Leader: append new entries of its term. False (nothing appended) if
        the uncommitted-size budget is exhausted.

        The log gets fresh Entry objects: the proposed ones may be shared (a
        duplicated or retransmitted in-process message) and must not change.
        """
        if not self._increase_uncommitted_size(payload_size(es)):
            return False
        li = self.raft_log.last_index()
        term = self.term
        self._append_own([Entry(li + k, term, e.data, e.type) for k, e in enumerate(es, 1)])
        return True

    def propose_data(self, datas: Sequence[bytes]) -> None:
        """Propose normal commands: on a leader, straight into the log without
        building a PROP message (the hot path); elsewhere through step()."""
        if self.state != StateRole.LEADER:
            self.step(Message(_PROP, frm=self.id, entries=[Entry(0, 0, d) for d in datas]))
            return
        self._check_can_propose()
        if not self._increase_uncommitted_size(sum(map(len, datas))):
            raise UncommittedLimitExceeded("too many uncommitted entries")
        li = self.raft_log.last_index()
        term = self.term
        self._append_own([Entry(li + k, term, d) for k, d in enumerate(datas, 1)])

    def _append_own(self, ents: list[Entry]) -> None:
        # The leader's own Progress does not advance here: its entries count
        # toward a quorum only once they are on its disk (on_persisted, from
        # RawNode.advance), as etcd-io/raft's leader self-acknowledges on its
        # storage append response. A single-voter group commits then.
        self.raft_log.append(ents)
        self._bcast_pending = True

    def on_persisted(self, index: int, term: int) -> None:
        """The application persisted the log up to (index, term) (RawNode.advance).

        A leader acknowledges its own entries here, as a follower does with
        APP_RESP: counting them toward commit before they are durable would
        let an entry commit with the leader's vote while only a minority
        stores it, should the leader crash before its write (a driver that
        persists asynchronously, or sends before persisting, could then
        lose a committed entry)."""
        if self.state != StateRole.LEADER:
            return
        pr = self.trk.progress.get(self.id)
        if pr is None or not self.raft_log.match_term(index, term):
            return  # removed, or those entries were replaced since
        if pr.maybe_update(index) and self.maybe_commit():
            self._release_pending_read_index_messages()
            self._bcast_pending = True

    def _increase_uncommitted_size(self, s: int) -> bool:
        u = self.uncommitted_size
        if u > 0 and s > 0 and u + s > self.max_uncommitted_size:
            # Always admit a proposal when nothing is outstanding, so a
            # single large entry cannot wedge the group.
            return False
        self.uncommitted_size = u + s
        return True

    def reduce_uncommitted_size(self, s: int) -> None:
        u = self.uncommitted_size - s
        self.uncommitted_size = u if u > 0 else 0

    def committed_entry_in_current_term(self) -> bool:
        return self.raft_log.term_or_zero(self.raft_log.committed) == self.term

    # -- role transitions ----------------------------------------------------------

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.trk.reset_votes()
        log = self.raft_log
        last = log.last_index()
        # Only what is on our disk counts as our own acknowledgement (on_persisted).
        persisted = min(last, log.unstable.offset - 1)
        new_inflights = self.trk.new_inflights
        prs = self.trk.progress
        for nid, old in prs.items():
            pr = Progress(last + 1, new_inflights(), is_learner=old.is_learner)
            if nid == self.id:
                pr.match = persisted
            prs[nid] = pr
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []
        self._bcast_pending = False

    def reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )

    def become_follower(self, term: int, lead: int) -> None:
        self._step_fn = self.step_follower
        self.reset(term)
        self._tick_fn = self.tick_election
        self.lead = lead
        self.state = StateRole.FOLLOWER

    def become_candidate(self) -> None:
        if self.state == StateRole.LEADER:
            raise ConsensusError("invalid transition leader -> candidate")
        self._step_fn = self.step_candidate
        self.reset(self.term + 1)
        self._tick_fn = self.tick_election
        self.vote = self.id
        self.state = StateRole.CANDIDATE

    def become_pre_candidate(self) -> None:
        if self.state == StateRole.LEADER:
            raise ConsensusError("invalid transition leader -> pre-candidate")
        # A pre-candidate changes neither term nor vote: that is the point.
        self._step_fn = self.step_candidate
        self.trk.reset_votes()
        self._tick_fn = self.tick_election
        self.lead = 0
        self.state = StateRole.PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.state == StateRole.FOLLOWER:
            raise ConsensusError("invalid transition follower -> leader")
        self._step_fn = self.step_leader
        self.reset(self.term)
        self._tick_fn = self.tick_heartbeat
        self.lead = self.id
        self.state = StateRole.LEADER
        pr = self.trk.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conservatively treat any uncommitted tail as holding a conf change.
        self.pending_conf_index = self.raft_log.last_index()
        # An entry of our own term: committing it commits everything before
        # it (figure 8), and unblocks ReadIndex.
        if not self.append_entry([Entry(0, 0)]):
            raise ConsensusError("empty entry was dropped")

    # -- ticking -------------------------------------------------------------------

    def tick(self) -> None:
        self._tick_fn()

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MessageType.HUP, frm=self.id))

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MessageType.CHECK_QUORUM, frm=self.id))
            # A transfer that did not finish within an election timeout is abandoned.
            if self.state == StateRole.LEADER and self.lead_transferee != 0:
                self.abort_leader_transfer()
        if self.state != StateRole.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MessageType.BEAT, frm=self.id))
        self._maybe_auto_leave(on_apply=False)

    def promotable(self) -> bool:
        """Whether this node may campaign: a voter not busy restoring a snapshot."""
        pr = self.trk.progress.get(self.id)
        return (
            pr is not None
            and not pr.is_learner
            and not self.raft_log.has_next_or_in_progress_snapshot()
        )

    # -- elections -----------------------------------------------------------------

    def hup(self, kind: bytes) -> None:
        if self.state == StateRole.LEADER:
            return
        if not self.promotable():
            return
        if self.raft_log.has_pending_conf_change():
            # The configuration is about to change; campaigning under the old
            # one could elect a leader the new one does not recognise.
            return
        self.campaign(kind)

    def campaign(self, kind: bytes) -> None:
        if not self.promotable():
            return
        if kind == CAMPAIGN_PRE_ELECTION:
            self.become_pre_candidate()
            vote_type = MessageType.PRE_VOTE
            term = self.term + 1  # the term we would campaign in
        else:
            self.become_candidate()
            vote_type = MessageType.VOTE
            term = self.term
        if self.poll(self.id, _VOTE_RESP_OF[vote_type], True) == VoteResult.WON:
            # A single-voter group wins at once.
            if kind == CAMPAIGN_PRE_ELECTION:
                self.campaign(CAMPAIGN_ELECTION)
            else:
                self.become_leader()
            return
        log = self.raft_log
        last_index = log.last_index()
        last_term = log.last_term()
        ctx = CAMPAIGN_TRANSFER if kind == CAMPAIGN_TRANSFER else b""
        for nid in self.trk.voter_nodes():
            if nid == self.id:
                continue
            self.send(
                Message(
                    vote_type, to=nid, term=term, index=last_index, log_term=last_term, context=ctx
                )
            )

    def poll(self, nid: int, t: MessageType, granted: bool) -> VoteResult:
        self.trk.record_vote(nid, granted)
        return self.trk.tally_votes()[2]

    # -- the step function -----------------------------------------------------------

    def step(self, m: Message) -> None:
        mt = m.term
        if mt != self.term and mt != 0:
            if mt > self.term:
                t = m.type
                if t == MessageType.VOTE or t == MessageType.PRE_VOTE:
                    force = m.context == CAMPAIGN_TRANSFER
                    in_lease = (
                        self.check_quorum
                        and self.lead != 0
                        and self.election_elapsed < self.election_timeout
                    )
                    if not force and in_lease:
                        # We heard from a leader within the election timeout:
                        # this candidate is disruptive (e.g. it was
                        # partitioned). Neither update our term nor vote.
                        return
                if t == MessageType.PRE_VOTE:
                    pass  # a pre-vote never changes our term
                elif t == MessageType.PRE_VOTE_RESP and not m.reject:
                    # Granted pre-votes carry the term we would campaign in;
                    # the term rises only if the pre-election is won.
                    pass
                elif t in _LEADER_MESSAGES:
                    self.become_follower(mt, m.frm)
                else:
                    self.become_follower(mt, 0)
            else:
                t = m.type
                if (self.check_quorum or self.pre_vote) and t in _APPEND_OR_HEARTBEAT:
                    # A stale leader (e.g. one that was partitioned): tell it
                    # our term so it steps down. Without this, with
                    # check_quorum/pre_vote it could keep disrupting us.
                    self.send(Message(_APP_RESP, to=m.frm))
                elif t == MessageType.PRE_VOTE:
                    self.send(
                        Message(MessageType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True)
                    )
                return  # otherwise ignore messages of older terms

        t = m.type
        if t == MessageType.HUP:
            self.hup(CAMPAIGN_PRE_ELECTION if self.pre_vote else CAMPAIGN_ELECTION)
        elif t == MessageType.VOTE or t == MessageType.PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step_fn(m)

    def _handle_vote_request(self, m: Message) -> None:
        # We may vote for a node we already voted for (a retransmission), for
        # anyone if we have neither voted nor know a leader in this term, and
        # (pre-vote only) for a future term.
        can_vote = (
            self.vote == m.frm
            or (self.vote == 0 and self.lead == 0)
            or (m.type == MessageType.PRE_VOTE and m.term > self.term)
        )
        if not can_vote and self._bug_vote_twice and m.type == MessageType.VOTE:
            can_vote = True  # PLANTED BUG: a second vote in the same term
        resp = _VOTE_RESP_OF[m.type]
        if can_vote and self.raft_log.is_up_to_date(m.index, m.log_term):
            # The response carries the request's term (for a pre-vote it is
            # a term we are not in yet). For a real vote, the vote is in the
            # hard state of this Ready, persisted before the response leaves.
            self.send(Message(resp, to=m.frm, term=m.term))
            if m.type == MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.send(Message(resp, to=m.frm, term=self.term, reject=True))

    # -- leader ----------------------------------------------------------------------

    def step_leader(self, m: Message) -> None:
        t = m.type
        # Messages about the group as a whole.
        if t == _PROP:
            self._leader_propose(m)
            return
        if t == MessageType.BEAT:
            self.bcast_heartbeat()
            return
        if t == MessageType.CHECK_QUORUM:
            if not self.trk.quorum_active():
                self.become_follower(self.term, 0)
            # Everyone but us must prove liveness again before the next check.
            for nid, other in self.trk.progress.items():
                if nid != self.id:
                    other.recent_active = False
            return
        if t == MessageType.READ_INDEX:
            self._leader_read_index(m)
            return

        # Messages about one follower.
        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return
        if t == _APP_RESP:
            self._leader_append_response(m, pr)
        elif t == _HEARTBEAT_RESP:
            pr.recent_active = True
            pr.msg_app_flow_paused = False
            if pr.match < self.raft_log.last_index() or pr.state == _PROBE:
                self.send_append(m.frm)
            if m.context:
                acks = self.read_only.recv_ack(m.frm, m.context)
                if acks is not None and self.trk.config.voters.vote_result(acks) == VoteResult.WON:
                    for rs in self.read_only.advance(m.context):
                        self._respond_to_read_index(rs.req, rs.index)
        elif t == MessageType.SNAP_STATUS:
            if pr.state != _SNAPSHOT:
                return
            if m.reject:
                # Failed: probe from where we were (the snapshot never arrived).
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a heartbeat response before probing: the follower may
            # still be applying the snapshot.
            pr.msg_app_flow_paused = True
        elif t == MessageType.UNREACHABLE:
            # Pipelined appends were probably lost: fall back to probing.
            if pr.state == _REPLICATE:
                pr.become_probe()
        elif t == MessageType.TRANSFER_LEADER:
            self._leader_transfer(m, pr)

    def _check_can_propose(self) -> None:
        if self.id not in self.trk.progress:
            raise ProposalDropped("this node was removed from the group")
        if self.lead_transferee != 0:
            raise ProposalDropped("leadership transfer in progress")

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise ConsensusError("empty proposal")
        self._check_can_propose()
        log = self.raft_log
        conf = EntryType.CONF_CHANGE
        pending_conf_index = 0
        for k, e in enumerate(m.entries):
            if e.type != conf:
                continue
            try:
                cc = codec.decode_conf_change(e.data)
            except ConsensusError:
                raise ProposalDropped("malformed conf change") from None
            already_pending = pending_conf_index or self.pending_conf_index > log.applied
            already_joint = self.trk.config.voters.is_joint()
            wants_leave = cc.leave_joint()
            if already_pending:
                raise ProposalDropped("another conf change is not applied yet")
            if already_joint and not wants_leave:
                raise ProposalDropped("must leave the joint configuration first")
            if not already_joint and wants_leave:
                raise ProposalDropped("not in a joint configuration")
            pending_conf_index = log.last_index() + k + 1
        if not self.append_entry(m.entries):
            raise UncommittedLimitExceeded("too many uncommitted entries")
        if pending_conf_index:
            self.pending_conf_index = pending_conf_index

    def _leader_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        log = self.raft_log
        if m.reject:
            if m.index == 0 and m.reject_hint == 0:
                # Even index 0 was rejected: the follower is blank (added by a
                # conf change, knows no membership). Only a snapshot, which
                # carries the membership, can start it.
                if pr.state != _SNAPSHOT:
                    self.maybe_send_snapshot(m.frm, pr)
                return
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of ours whose term is above the follower's
                # term at the hint: they cannot match.
                next_probe = log.find_conflict_by_term(m.reject_hint, m.log_term)[0]
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == _REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return

        if pr.maybe_update(m.index) or (pr.match == m.index and pr.state != _REPLICATE):
            st = pr.state
            if st == _REPLICATE:
                pr.inflights.free_le(m.index)
            elif st == _PROBE:
                pr.become_replicate()
            elif pr.match + 1 >= log.first_index():
                # SNAPSHOT, and the follower now has what the log continues from.
                pr.become_probe()
                pr.become_replicate()
            if self.maybe_commit():
                self._release_pending_read_index_messages()
                self._bcast_pending = True
            elif pr.sent_commit < log.committed and pr.sent_commit < pr.next - 1:
                # The follower may not know the latest commit index.
                self.send_append(m.frm)
            if m.frm != self.id:
                while self.maybe_send_append(m.frm, False):
                    pass
            if m.frm == self.lead_transferee and pr.match == log.last_index():
                self.send_timeout_now(m.frm)

    def _leader_transfer(self, m: Message, pr: Progress) -> None:
        if pr.is_learner:
            return  # a learner cannot lead
        target = m.frm
        if self.lead_transferee != 0:
            if self.lead_transferee == target:
                return  # already in progress
            self.abort_leader_transfer()
        if target == self.id:
            return
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        self.lead_transferee = target
        if pr.match == self.raft_log.last_index():
            self.send_timeout_now(target)
        else:
            self.send_append(target)  # catch it up first; TIMEOUT_NOW follows its ack

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = 0

    def _leader_read_index(self, m: Message) -> None:
        if self.trk.is_singleton() or self._bug_read_without_quorum:
            # (PLANTED BUG when not a singleton: no quorum round, so a deposed
            # leader that does not know it yet serves stale reads.)
            self._respond_to_read_index(m, self.raft_log.committed)
            return
        if not self.committed_entry_in_current_term():
            # Our commit index may lag behind the previous leader's: wait
            # until an entry of our term commits.
            self.pending_read_index_messages.append(m)
            return
        self._send_read_index_round(m)

    def _send_read_index_round(self, m: Message) -> None:
        self.read_only.add_request(self.raft_log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self.bcast_heartbeat_with_ctx(m.context)

    def _release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages:
            return
        if not self.committed_entry_in_current_term():
            return
        msgs = self.pending_read_index_messages
        self.pending_read_index_messages = []
        for m in msgs:
            self._send_read_index_round(m)

    def _respond_to_read_index(self, req: Message, index: int) -> None:
        if req.frm == 0 or req.frm == self.id:
            self.read_states.append(ReadState(index=index, context=req.context))
        else:
            self.send(
                Message(MessageType.READ_INDEX_RESP, to=req.frm, index=index, context=req.context)
            )

    # -- candidate -----------------------------------------------------------------------

    def step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = (
            MessageType.PRE_VOTE_RESP
            if self.state == StateRole.PRE_CANDIDATE
            else MessageType.VOTE_RESP
        )
        if t == _PROP:
            raise ProposalDropped("no leader (election in progress)")
        if t == _APP:
            self.become_follower(m.term, m.frm)
            self.handle_append_entries(m)
        elif t == _HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self.handle_heartbeat(m)
        elif t == MessageType.SNAP:
            self.become_follower(m.term, m.frm)
            self.handle_snapshot(m)
        elif t == my_resp:
            res = self.poll(m.frm, t, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateRole.PRE_CANDIDATE:
                    self.campaign(CAMPAIGN_ELECTION)
                else:
                    self.become_leader()
            elif res == VoteResult.LOST:
                # A pre-candidate that lost goes back to its current term.
                self.become_follower(self.term, 0)
        elif t == MessageType.READ_INDEX and m.frm in (0, self.id):
            raise ProposalDropped("no leader to serve a read index")
        # TIMEOUT_NOW, TRANSFER_LEADER and the rest are ignored without a leader.

    # -- follower --------------------------------------------------------------------------

    def step_follower(self, m: Message) -> None:
        t = m.type
        if t == _APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append_entries(m)
        elif t == _HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif t == MessageType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif t == _PROP:
            if self.lead == 0:
                raise ProposalDropped("no leader")
            if self.disable_proposal_forwarding:
                raise ProposalDropped("not the leader and forwarding is disabled")
            m.to = self.lead
            self.send(m)
        elif t == MessageType.TRANSFER_LEADER:
            if self.lead == 0:
                return
            m.to = self.lead
            self.send(m)
        elif t == MessageType.TIMEOUT_NOW:
            # The leader chose us: campaign at once, skipping the pre-vote
            # and bypassing the others' leases.
            self.hup(CAMPAIGN_TRANSFER)
        elif t == MessageType.READ_INDEX:
            if self.lead == 0:
                raise ProposalDropped("no leader to serve a read index")
            m.to = self.lead
            self.send(m)
        elif t == MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(index=m.index, context=m.context))

    def handle_append_entries(self, m: Message) -> None:
        log = self.raft_log
        if m.index < log.committed:
            # Everything up to committed matches; tell the leader where we are.
            self.send(Message(_APP_RESP, to=m.frm, index=log.committed))
            return
        if not self.trk.progress:
            # Blank replica: without a membership it must not accept entries
            # (it could not interpret their conf changes). Rejecting index 0
            # asks the leader for a snapshot.
            self.send(Message(_APP_RESP, to=m.frm, index=0, reject=True, reject_hint=0))
            return
        mlast = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if mlast is not None:
            self.send(Message(_APP_RESP, to=m.frm, index=mlast))
            return
        # Reject, with a hint of where our log may match the leader's: the
        # largest index <= m.index whose term is <= m.log_term.
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            Message(
                _APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: Message) -> None:
        self.raft_log.commit_to(m.commit)
        self.send(Message(_HEARTBEAT_RESP, to=m.frm, context=m.context))

    def handle_snapshot(self, m: Message) -> None:
        s = m.snapshot if m.snapshot is not None else EMPTY_SNAPSHOT
        if self.restore(s):
            self.send(Message(_APP_RESP, to=m.frm, index=self.raft_log.last_index()))
        else:
            self.send(Message(_APP_RESP, to=m.frm, index=self.raft_log.committed))

    def restore(self, s: Snapshot) -> bool:
        """Adopt a snapshot from the leader. False if it brings nothing new."""
        log = self.raft_log
        meta = s.meta
        blank = not self.trk.progress
        cs = meta.conf_state
        has_members = bool(cs.voters or cs.learners)
        if blank and has_members:
            # A blank replica takes any membership-bearing snapshot, even the
            # bootstrap one at index 0.
            if meta.index < log.committed:
                return False
        elif meta.index <= log.committed:
            return False
        if self.state != StateRole.FOLLOWER:
            # Only a follower can get a snapshot from a leader of its term;
            # be defensive rather than corrupt state.
            self.become_follower(self.term + 1, 0)
            return False
        if not blank and log.match_term(meta.index, meta.term):
            # We already have the snapshot's last entry: just fast-forward
            # the commit index; the log carries the same configuration.
            log.commit_to(meta.index)
            return False
        log.restore(s)
        self.trk.progress = {}
        cfg, prs = confchange.restore(cs, log.last_index(), self.trk)
        self.switch_to_config(cfg, prs)
        return True

    # -- membership ------------------------------------------------------------------------

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        changer = confchange.Changer(self.trk, self.raft_log.last_index())
        cfg, prs = changer.apply(cc)
        return self.switch_to_config(cfg, prs)

    def switch_to_config(self, cfg: TrackerConfig, prs: ProgressMap) -> ConfState:
        self._bug_auto_leave_tried = False
        self.trk.config = cfg
        self.trk.progress = prs
        cs = cfg.conf_state()
        pr = prs.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if (pr is None or self.is_learner) and self.state == StateRole.LEADER:
            # Removed or demoted: step down so the remaining voters elect a
            # leader of their own (they time out and campaign).
            self.become_follower(self.term, 0)
            return cs
        if self.state != StateRole.LEADER or not cs.voters:
            return cs
        # The quorum may have changed: maybe commit, and start replicating to
        # nodes that were just added.
        if self.maybe_commit():
            self._bcast_pending = True
        else:
            for nid in self.trk.progress:
                if nid != self.id:
                    self.maybe_send_append(nid, False)
        if self.lead_transferee != 0 and self.lead_transferee not in cfg.voters.ids():
            self.abort_leader_transfer()
        return cs

    def applied_to(self, index: int) -> None:
        """The application applied entries up to index (RawNode.advance)."""
        log = self.raft_log
        if index > log.applied:
            log.applied_to(index)
        self._maybe_auto_leave(on_apply=True)

    def _maybe_auto_leave(self, on_apply: bool) -> None:
        """Leader: leave an auto-leave joint configuration once it is applied.

        Called after every apply and on every leader tick, so that leaving
        cannot be forgotten: the leave proposal may be dropped (a leadership
        transfer is in progress) or lost with a leader change (the new
        leader's pending_conf_index covers its whole log, so it proposes the
        leave once its own first entry is applied), and a quiet group
        applies nothing more that would retry it. pending_conf_index past
        applied means a conf change (the leave itself) is still in flight.
        """
        if (
            self.state != StateRole.LEADER
            or not self.trk.config.auto_leave
            or self.pending_conf_index > self.raft_log.applied
        ):
            return
        if self.lead_transferee != 0:
            # Proposals are refused during a transfer; the next tick retries.
            if self._bug_auto_leave_once and on_apply:
                self._bug_auto_leave_tried = True  # PLANTED BUG: this attempt was the only one
            return
        if self._bug_auto_leave_once and (not on_apply or self._bug_auto_leave_tried):
            return  # PLANTED BUG: no retry, on ticks or later applies
        leave = Entry(0, 0, codec.encode_conf_change(ConfChange()), EntryType.CONF_CHANGE)
        # Dropped only if the budget or the leadership is gone: retried on the next tick.
        with contextlib.suppress(ProposalDropped):
            self.step(Message(_PROP, frm=self.id, entries=[leave]))


def _normalized(cs: ConfState) -> ConfState:
    return ConfState(
        voters=tuple(sorted(set(cs.voters))),
        learners=tuple(sorted(set(cs.learners))),
        voters_outgoing=tuple(sorted(set(cs.voters_outgoing))),
        learners_next=tuple(sorted(set(cs.learners_next))),
        auto_leave=cs.auto_leave,
    )


_VOTE_TYPES = frozenset(
    {
        MessageType.VOTE,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE,
        MessageType.PRE_VOTE_RESP,
    }
)

__all__ = [
    "CAMPAIGN_ELECTION",
    "CAMPAIGN_PRE_ELECTION",
    "CAMPAIGN_TRANSFER",
    "Config",
    "Raft",
]
