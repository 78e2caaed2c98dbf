"""The window of APP messages sent to one follower but not yet acknowledged.

A leader in the replicate state sends appends optimistically (pipelining);
this window bounds that optimism by message count and by payload bytes, so a
slow follower cannot make the leader buffer unbounded data in the transport.
"""

from __future__ import annotations

from collections import deque


class Inflights:
    """FIFO of (last index, payload bytes) of in-flight appends."""

    __slots__ = ("_bytes", "_queue", "max_bytes", "max_count", "total_bytes")

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        if max_count <= 0:
            raise ValueError("max_count must be positive")
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0 = no byte limit
        self._queue: deque[int] = deque()
        self._bytes: deque[int] = deque()
        self.total_bytes = 0

    def add(self, index: int, nbytes: int) -> None:
        """Record an append whose last entry is `index`. Indexes must increase."""
        if self.full():
            raise OverflowError("adding to a full inflights window")
        self._queue.append(index)
        self._bytes.append(nbytes)
        self.total_bytes += nbytes

    def free_le(self, to: int) -> None:
        """Forget every append whose last index is <= to (they were acknowledged)."""
        q = self._queue
        if not q or q[0] > to:
            return
        b = self._bytes
        freed = 0
        while q and q[0] <= to:
            q.popleft()
            freed += b.popleft()
        self.total_bytes -= freed

    def full(self) -> bool:
        return len(self._queue) >= self.max_count or (
            self.max_bytes > 0 and self.total_bytes >= self.max_bytes
        )

    def count(self) -> int:
        return len(self._queue)

    def reset(self) -> None:
        self._queue.clear()
        self._bytes.clear()
        self.total_bytes = 0

    def clone(self) -> Inflights:
        c = Inflights(self.max_count, self.max_bytes)
        c._queue.extend(self._queue)
        c._bytes.extend(self._bytes)
        c.total_bytes = self.total_bytes
        return c
