"""ReadIndex bookkeeping: linearizable reads without writing to the log.

The leader records the commit index when a read arrives, then broadcasts a
heartbeat carrying the read's context. Once a quorum has answered that
heartbeat (or any later one: acks are cumulative in queue order), the leader
knows it was still the leader when the read arrived, so the recorded index is
at least as new as every write acknowledged before the read began. The read
may be served once the state machine has applied that index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.types import Message


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message  # the READ_INDEX request (frm 0 or the leader itself: a local read)
    index: int  # the leader's commit index when the request arrived
    acks: dict[int, bool] = field(default_factory=dict)


class ReadOnly:
    """Pending read requests, in arrival order, keyed by their context."""

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.context
        if ctx in self.pending:
            return  # a duplicate context is one read
        self.pending[ctx] = ReadIndexStatus(req=m, index=index)
        self.queue.append(ctx)

    def recv_ack(self, node_id: int, context: bytes) -> dict[int, bool] | None:
        """Record that node_id answered the heartbeat carrying `context`.
        Returns the acks so far, or None if the context is unknown."""
        rs = self.pending.get(context)
        if rs is None:
            return None
        rs.acks[node_id] = True
        return rs.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Release every request up to and including the one with `context`:
        a quorum that acked a later heartbeat confirms the earlier reads too."""
        try:
            pos = self.queue.index(context)
        except ValueError:
            return []
        done = self.queue[: pos + 1]
        del self.queue[: pos + 1]
        return [self.pending.pop(ctx) for ctx in done]

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
