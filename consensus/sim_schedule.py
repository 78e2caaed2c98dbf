"""What a seed decides about a simulated schedule besides its events.

Drawing these per seed (FoundationDB's "buggify" idea) makes some schedules
calm and others hammer one kind of fault or one corner of the core's
configuration, instead of every schedule being a bit of everything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Rates:
    """Per-time-unit probabilities of the schedule's actions, drawn per seed so
    that some schedules are calm and others hammer one kind of fault."""

    propose: float
    read: float
    crash: float
    partition: float
    membership: float
    transfer: float
    # Targeted nemeses, probabilities per occasion. A new leader may be killed
    # soon after its election (the window in which it replicates older terms'
    # entries) or right after persisting its first entry, which then never
    # leaves (a stranded divergent tail); a leader may die right after it
    # commits something; a crash action may strand a proposal on the leader.
    # Together they produce Raft's figure-8 histories.
    leader_kill: float
    strand_elected: float
    kill_after_commit: float
    strand: float
    figure8: float  # per time unit: start the staged figure-8 history (sim_nemesis)
    # Per Ready that sends a vote (granted or requested) or an append
    # acknowledgement: the node dies right after sending it. Its disk must
    # still hold what the message promised (sim_checks.promises_kept).
    ack_kill: float
    # Per proposed joint change left automatically: transfer leadership at
    # once (half the time to a voter just cut off), so that the automatic
    # leave is refused while the transfer is pending.
    joint_transfer: float

    @staticmethod
    def random(rng: random.Random) -> Rates:
        return Rates(
            propose=rng.choice([0.01, 0.03, 0.08]),
            read=rng.choice([0.0, 0.01, 0.03]),
            crash=rng.choice([0.0, 0.001, 0.003, 0.008]),
            partition=rng.choice([0.0, 0.001, 0.003]),
            membership=rng.choice([0.0, 0.002, 0.005]),
            transfer=rng.choice([0.0, 0.001, 0.004]),
            leader_kill=rng.choice([0.0, 0.0, 0.1, 0.3]),
            strand_elected=rng.choice([0.0, 0.1, 0.3, 0.5]),
            kill_after_commit=rng.choice([0.0, 0.02, 0.1, 0.3]),
            strand=rng.choice([0.0, 0.3, 0.7]),
            figure8=rng.choice([0.0, 0.002, 0.006]),
            ack_kill=rng.choice([0.0, 0.002, 0.01]),
            joint_transfer=rng.choice([0.0, 0.5, 1.0]),
        )


@dataclass
class Knobs:
    """Per-seed Config variations: small messages and windows exercise paging
    and flow control, toggled pre-vote/check-quorum exercise both code paths."""

    pre_vote: bool
    check_quorum: bool
    max_size_per_msg: int
    max_inflight_msgs: int
    max_committed_size_per_ready: int
    snap_every: int  # applied entries between two snapshots of a node
    snap_keep: int  # entries kept below a snapshot when compacting
    ready_per_message: bool  # handle Ready after every message, or once per time unit
    # The state machine records what it applied durably (as the node's does),
    # so a restart resumes with applied past the last snapshot, conf changes
    # included; otherwise it is rebuilt from the last snapshot.
    durable_apply: bool
    # A removed node stays up (until the group has settled) and keeps
    # ticking, campaigning and sending, as one nobody has shut down yet.
    keep_removed: bool

    @staticmethod
    def random(rng: random.Random) -> Knobs:
        return Knobs(
            pre_vote=rng.random() < 0.75,
            check_quorum=rng.random() < 0.75,
            max_size_per_msg=rng.choice([1, 1, 16, 1 << 20]),
            max_inflight_msgs=rng.choice([1, 4, 256]),
            max_committed_size_per_ready=rng.choice([8, 8 << 20]),
            snap_every=rng.choice([5, 20, 60, 1 << 30]),
            snap_keep=rng.choice([0, 3, 20]),
            ready_per_message=rng.random() < 0.5,
            durable_apply=rng.random() < 0.5,
            keep_removed=rng.random() < 0.5,
        )
