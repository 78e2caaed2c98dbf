"""The simulator's network: drops, delays, duplicates, reorders and partitions.

Every decision comes from the rng handed in (derived from the schedule's
seed), and in-flight messages are ordered by (delivery time, send sequence),
so a schedule replays exactly. Reordering is a consequence of random delays;
a small share of messages is held back much longer than the rest.

Messages travel encoded (consensus.codec, the real wire format) and every
delivery decodes a fresh copy: like a real transport, no Entry object is
ever shared between two nodes, or between two deliveries of a duplicate.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from consensus.codec import decode_message, encode_message
from consensus.types import Message, MessageType


@dataclass(slots=True)
class NetworkFaults:
    """Per-schedule fault rates; `calm()` is what the final quiet phase uses."""

    drop: float = 0.0  # probability that a message is lost
    duplicate: float = 0.0  # probability that a message is delivered twice
    max_delay: int = 5  # delays are uniform in 1..max_delay time units
    long_delay: float = 0.0  # probability of a delay up to long_delay_max instead
    long_delay_max: int = 200

    @staticmethod
    def calm() -> NetworkFaults:
        return NetworkFaults(drop=0.0, duplicate=0.0, max_delay=3, long_delay=0.0)

    @staticmethod
    def random(rng: random.Random) -> NetworkFaults:
        return NetworkFaults(
            drop=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.01, 0.05]),
            max_delay=rng.choice([1, 3, 8, 20]),
            long_delay=rng.choice([0.0, 0.005, 0.02]),
            long_delay_max=rng.choice([50, 200, 600]),
        )


@dataclass(slots=True)
class InFlight:
    """A message on the wire. `lost` messages still reach their delivery time so
    the sender's transport can report a failed send, as a real one would."""

    at: int
    seq: int
    wire: bytes
    type: MessageType
    frm: int
    to: int
    sender_incarnation: int
    lost: bool

    def message(self) -> Message:
        return decode_message(self.wire)

    def __lt__(self, other: InFlight) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)


class SimNetwork:
    def __init__(self, rng: random.Random, faults: NetworkFaults) -> None:
        self._rng = rng
        self.faults = faults
        self._queue: list[InFlight] = []
        self._seq = 0
        self._side: dict[int, int] = {}  # node id -> partition side; absent = side 0
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    # --- partitions ---------------------------------------------------------

    def partition(self, sides: dict[int, int]) -> None:
        """Nodes on different sides cannot exchange messages (checked at send and
        at delivery, so messages in flight when the partition starts are cut too)."""
        self._side = dict(sides)

    def heal(self) -> None:
        self._side = {}

    @property
    def partitioned(self) -> bool:
        return len(set(self._side.values())) > 1

    def connected(self, a: int, b: int) -> bool:
        return self._side.get(a, 0) == self._side.get(b, 0)

    # --- traffic ------------------------------------------------------------

    def _delay(self) -> int:
        f = self.faults
        if f.long_delay and self._rng.random() < f.long_delay:
            return self._rng.randint(1, f.long_delay_max)
        return self._rng.randint(1, f.max_delay)

    def _push(self, at: int, wire: bytes, msg: Message, incarnation: int, lost: bool) -> None:
        self._seq += 1
        item = InFlight(at, self._seq, wire, msg.type, msg.frm, msg.to, incarnation, lost)
        heapq.heappush(self._queue, item)

    def send(self, now: int, msg: Message, sender_incarnation: int) -> None:
        self.sent += 1
        f = self.faults
        wire = encode_message(msg)
        lost = not self.connected(msg.frm, msg.to) or (f.drop > 0 and self._rng.random() < f.drop)
        if lost:
            self.dropped += 1
        self._push(now + self._delay(), wire, msg, sender_incarnation, lost)
        if not lost and f.duplicate > 0 and self._rng.random() < f.duplicate:
            self.duplicated += 1
            self._push(now + self._delay(), wire, msg, sender_incarnation, False)

    def due(self, now: int) -> list[InFlight]:
        """Pop every message whose delivery time has come, in delivery order;
        messages crossing a partition at delivery time are marked lost."""
        out: list[InFlight] = []
        q = self._queue
        while q and q[0].at <= now:
            item = heapq.heappop(q)
            if not item.lost and not self.connected(item.frm, item.to):
                item.lost = True
                self.dropped += 1
            out.append(item)
        return out

    def in_flight(self) -> int:
        return len(self._queue)
