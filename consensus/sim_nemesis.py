"""A targeted nemesis that walks a Raft group into the history of figure 8.

Random faults alone reach the dangerous history of the Raft paper's figure 8
(an entry of an old term stored on a majority, then overwritten) only once in
thousands of schedules, because it needs several crashes in the right order.
This nemesis stages it, the way Jepsen's nemeses target known weak spots,
while the network, timing and everything else stay random:

1. the leader A persists a proposal it never sends (crash after persisting);
   A stays down;
2. the next leader B persists its first entry (same index, newer term) and
   dies before sending it; B stays down; A restarts;
3. when A leads again and first advances its commit index, it dies right
   after persisting it, before telling anyone; B restarts, A stays down a
   while longer.

Correct Raft commits nothing in step 3 before A's own-term entry is on a
majority, so B cannot win and nothing changes. A core that commits an older
term's entry by counting replicas lets B win and overwrite it, which the
safety checks catch.

The nemesis only picks crash points and restart times; it never touches Raft
state. It gives up (releasing the nodes it holds down) if the history goes
elsewhere, e.g. another node wins an election it should not.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import IntEnum

from consensus.sim_node import CrashPoint, SimNode

HOLD = 1 << 62  # a restart time that never comes
GIVE_UP_AFTER = 1500  # virtual time units a staged history may take


class Stage(IntEnum):
    IDLE = 0
    STRAND_A = 1  # A is armed to crash after persisting its next Ready
    STRAND_B = 2  # A is down; waiting for the next leader B
    KILL_A = 3  # B is down, A restarted; waiting for A to commit as leader


class Figure8Nemesis:
    def __init__(self, rng: random.Random, log: Callable[[str], None]) -> None:
        self._rng = rng
        self._log = log
        self.stage = Stage.IDLE
        self.a: SimNode | None = None
        self.b: SimNode | None = None
        self._deadline = 0
        self.staged = 0  # histories started
        self.completed = 0  # histories walked to the end

    @property
    def active(self) -> bool:
        return self.stage != Stage.IDLE

    def start(self, now: int, leader: SimNode) -> None:
        """Arm the leader; the caller then gives it a proposal to strand."""
        self.stage = Stage.STRAND_A
        self.a, self.b = leader, None
        self._deadline = now + GIVE_UP_AFTER
        leader.crash_point = CrashPoint.AFTER_PERSIST
        self.staged += 1
        self._log(f"figure8: strand a proposal on n{leader.id}")

    def _soon(self, now: int) -> int:
        return now + self._rng.randint(5, 40)

    def stop(self, now: int) -> None:
        """Give up: release every node held down."""
        for n in (self.a, self.b):
            if n is not None and not n.alive and n.restart_at == HOLD:
                n.restart_at = self._soon(now)
        if self.active:
            self._log(f"figure8: gave up at stage {self.stage.name}")
        self.stage = Stage.IDLE
        self.a = self.b = None

    def tick(self, now: int) -> None:
        if self.active and now > self._deadline:
            self.stop(now)

    def on_leader(self, node: SimNode, now: int) -> CrashPoint | None:
        """A node just became leader: maybe it must die after persisting."""
        if self.stage == Stage.STRAND_B and node is not self.a:
            self.b = node
            return CrashPoint.AFTER_PERSIST
        if self.stage == Stage.KILL_A and node is not self.a:
            self.stop(now)
        return None

    def on_commit(self, node: SimNode) -> CrashPoint | None:
        """A leader is about to persist a higher commit index."""
        if self.stage == Stage.KILL_A and node is self.a:
            return CrashPoint.AFTER_PERSIST
        return None

    def on_crash(self, node: SimNode, now: int) -> None:
        """Called after every crash, to hold down or release the actors."""
        if self.stage == Stage.STRAND_A and node is self.a:
            node.restart_at = HOLD
            self.stage = Stage.STRAND_B
        elif self.stage == Stage.STRAND_B and node is self.b:
            node.restart_at = HOLD
            assert self.a is not None
            self.a.restart_at = self._soon(now)
            self.stage = Stage.KILL_A
            self._log(f"figure8: n{node.id} stranded too; restart n{self.a.id}")
        elif self.stage == Stage.KILL_A and node is self.a:
            assert self.b is not None
            node.restart_at = now + self._rng.randint(200, 500)
            self.b.restart_at = self._soon(now)
            self.completed += 1
            self._log(f"figure8: n{node.id} died after committing; restart n{self.b.id}")
            self.stage = Stage.IDLE
            self.a = self.b = None
