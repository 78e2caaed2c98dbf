"""Write sessions on the client side: one registered session per partition.

A node remembers the result of a write per (session, seq) and answers a retry
with it instead of applying the write twice (Raft thesis §6.3). The session is
opened by KV.OpenSession on the partition's leader (a replicated entry whose
Raft index is the session id), lazily, by the first write to that partition;
concurrent first writes share one OpenSession. Sequence numbers count from 1
within each session, and `ack_below` (the lowest seq still in flight) lets the
node forget the replies the client holds.

When a session is gone (it stayed idle longer than the cluster's session TTL)
a write naming it is refused and never applied: the node answers
FAILED_PRECONDITION with kind `session-expired`. What the client may do then
depends on what the write's earlier attempts might have done:

  * every earlier attempt is known to have applied nothing: it was never sent,
    or the node refused it before it reached the Raft log (kind `not-applied`),
    or there was no earlier attempt. Then no copy of this write can ever apply
    (the refused one is final, the old session can never reopen: ids are Raft
    indexes), so the client opens a new session and sends the write once more
    in it. This is the common case: a client idle past the TTL, whose next
    write meets the expiry at its first attempt.
  * some earlier attempt may have reached the log (a lost reply, a timeout, a
    leader that failed while the write was in flight): that attempt may have
    applied before the session expired. Sending it again in a new session
    could apply it twice, so the client raises SessionExpired, saying the
    write may or may not have been applied; the caller decides (read, then
    write again if appropriate).

Results the node dropped because the client had more writes in flight in one
session than the node remembers (OpenSession's max_results) answer
`result-forgotten` (ResultForgotten), never retried either; the client avoids
it by keeping at most max_results writes in flight per session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from proto.medkv.v1 import common_pb2, kv_pb2


class PartitionSession:
    """One open session on one partition: its id, its next seq, what is in flight."""

    def __init__(
        self, client_id: bytes, partition: int, reply: kv_pb2.OpenSessionResponse
    ) -> None:
        self.client_id = client_id
        self.id = int(reply.session)
        self.partition = partition
        self.ttl_ms = int(reply.ttl_ms)
        self.max_in_flight = max(1, int(reply.max_results) or 1)
        self.next_seq = 1
        self.in_flight: set[int] = set()
        self._slots = asyncio.Semaphore(self.max_in_flight)

    async def begin(self) -> int:
        """A new seq for one logical write (waits while max_in_flight are in flight)."""
        await self._slots.acquire()
        seq = self.next_seq
        self.next_seq += 1
        self.in_flight.add(seq)
        return seq

    def end(self, seq: int) -> None:
        # Also on failure: a write given up on is never retried again, so the
        # node may forget it.
        if seq in self.in_flight:
            self.in_flight.discard(seq)
            self._slots.release()

    def write_id(self, seq: int) -> common_pb2.WriteId:
        # Recomputed per attempt: other writes may have finished meanwhile.
        return common_pb2.WriteId(
            client_id=self.client_id,
            session=self.id,
            seq=seq,
            ack_below=min(self.in_flight, default=seq),
        )


Opener = Callable[[int], Awaitable[kv_pb2.OpenSessionResponse]]


class Sessions:
    """The client's sessions, one per partition it has written to."""

    def __init__(self, client_id: bytes) -> None:
        self.client_id = client_id
        self._current: dict[int, PartitionSession] = {}
        self._opening: dict[int, asyncio.Future[PartitionSession]] = {}

    def get(self, partition: int) -> PartitionSession | None:
        return self._current.get(partition)

    async def current(self, partition: int, open_session: Opener) -> PartitionSession:
        """The partition's session, opened now if there is none (one opener at a time)."""
        session = self._current.get(partition)
        if session is not None:
            return session
        pending = self._opening.get(partition)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[PartitionSession] = asyncio.get_running_loop().create_future()
        self._opening[partition] = fut
        try:
            reply = await open_session(partition)
            session = PartitionSession(self.client_id, partition, reply)
            self._current[partition] = session
            fut.set_result(session)
            return session
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            self._opening.pop(partition, None)

    def discard(self, session: PartitionSession) -> None:
        """The node no longer knows this session: the next write opens a new one
        (once, however many writes noticed it)."""
        if self._current.get(session.partition) is session:
            del self._current[session.partition]


__all__ = ["PartitionSession", "Sessions"]
