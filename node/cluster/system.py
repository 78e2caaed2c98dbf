"""The system Raft group's state machine: the cluster state, applied from its log.

The system group is one more Raft group on the node's multi-Raft host
(group id SYSTEM_GROUP, which no partition can have): voters on up to five
members (ClusterState.system_voters), learners on every other member, so
each node reads membership and placement from its own replica of the same
log. Its log is small (one entry per membership or placement change) and is
never compacted, so a replica that joins later replays it from the start.

Durability: the state and the index it reflects are written together, one
sealed value, at every apply that changed something (rarely: a few entries
per membership change). Replaying from that index after a crash is
idempotent, as for partitions (node.state_machine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from consensus.storage import ValueCodec
from node.cluster.state import (
    SET_SETTINGS,
    SYSTEM_GROUP,
    ClusterState,
    ClusterStateError,
    Command,
    apply,
)
from node.commands import WaitKey
from node.state_machine import ApplyResult

log = logging.getLogger("medkv.cluster")

# Under the state key space (node.storage_layout STATE_PREFIX), after every
# partition's 4-byte prefix.
STATE_KEY = SYSTEM_GROUP.to_bytes(4, "big") + b"cluster-state"

REFUSED = "REFUSED"


def wait_key(request: bytes) -> WaitKey:
    return ("system", request, 0, 0)


class SystemStateMachine:
    """Applies system commands to the cluster state and keeps it on disk."""

    def __init__(self, db: Any, codec: ValueCodec) -> None:
        # db: the state key space (plyvel prefixed db); codec seals every value.
        self._db = db
        self._codec = codec
        self.state: ClusterState | None = None
        self._applied = 0
        self.purge_due = False  # the host asks every state machine; never set here
        self.log_time_ms = 0  # the host's leader clock starts from it
        # Told (on the event loop, after the write) whenever the state changed.
        self.on_change: list[Callable[[ClusterState], None]] = []
        raw = db.get(STATE_KEY)
        if raw is not None:
            applied, obj = msgpack.unpackb(
                self._codec.open(STATE_KEY, raw), raw=False, strict_map_key=False
            )
            self._applied = int(applied)
            self.state = ClusterState.from_obj(obj)

    @property
    def applied_index(self) -> int:
        return self._applied

    def initialize(self, state: ClusterState) -> None:
        """The state at index 0, before the first entry: what every initial
        member is bootstrapped with. A no-op when a state is already stored."""
        if self.state is not None:
            return
        self._write(0, state)
        self.state = state

    def _write(self, applied: int, state: ClusterState) -> None:
        data = msgpack.packb([applied, state.to_obj()], use_bin_type=True)
        self._db.put(STATE_KEY, self._codec.seal(STATE_KEY, data))

    def apply(self, entries: Sequence[tuple[int, int, bytes]]) -> list[ApplyResult]:
        results: list[ApplyResult] = []
        state = self.state
        changed = False
        applied = self._applied
        for index, _term, data in entries:
            if index <= applied:
                results.append(ApplyResult(index, 0, None, "already applied", duplicate=True))
                continue
            applied = index
            if not data:  # a new leader's empty entry
                results.append(ApplyResult(index, 0))
                continue
            try:
                cmd = Command.decode(data)
            except ClusterStateError as e:
                results.append(ApplyResult(index, 0, REFUSED, str(e)))
                continue
            if state is None:
                results.append(ApplyResult(index, 0, REFUSED, "the cluster is not initialized",
                                           wait_key=wait_key(cmd.request)))
                continue
            new, outcome = apply(state, cmd)
            if outcome.ok:
                changed = changed or new != state
                state = new
                # The answer's number: the settings generation for a
                # set-settings (what `medkv settings set` reports), else the epoch.
                number = state.settings_generation if cmd.kind == SET_SETTINGS else state.epoch
                results.append(ApplyResult(index, number, wait_key=wait_key(cmd.request)))
            else:
                results.append(ApplyResult(index, 0, REFUSED, outcome.message,
                                           wait_key=wait_key(cmd.request)))
        if applied != self._applied:
            if state is not None:
                self._write(applied, state)
            self._applied = applied
        if changed and state is not None:
            self.state = state
            for listener in list(self.on_change):
                try:
                    listener(state)
                except Exception:  # a listener's bug must not fail the apply
                    log.exception("a cluster-state listener failed")
        return results


def initial_conf(state: ClusterState) -> Any:
    """The system group's membership at index 0: the state's system voters,
    every other live member a learner."""
    from consensus.types import ConfState

    voters = state.system_voters()
    learners = tuple(m.id for m in state.live_members() if m.id not in voters)
    return ConfState(voters=voters, learners=learners)
