"""One group's failure never fails another group's turn.

The host persists every group's Ready in one synced write and sends every
group's messages in one call per turn (group commit). Before, anything one
group brought into that shared step (a value that cannot be encoded, entries
that break the log's invariants, a term too large for the wire) failed the
whole turn, for every partition of the node, on every turn after. Here each
group's part is staged and sent on its own: a group that cannot be persisted
or sent is taken out of service alone (its other replicas serve it, a restart
reloads it from what is on disk), the others' work is written in the same one
synced batch and sent as usual.

Disk errors are not one group's: they still stop the node (node.failstop).

A replica whose stored hard state is impossible (a term that no election can
follow, left by a hostile message accepted before node.raft_guard existed)
is also out of service at open, with a message naming the problem, instead
of failing every turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from consensus.rawnode import RawNode
from consensus.types import Message
from node import failstop
from node.raft_guard import MAX_TERM

log = logging.getLogger("medkv.host")

GroupMessages = Sequence[tuple[int, Message]]


class ImpossibleStoredState(Exception):
    """The stored Raft state of a replica cannot be right; the message says why."""


def check_stored_state(partition: int, node_id: int, raw: RawNode) -> None:
    hs = raw.hard_state()
    if hs.term > MAX_TERM or hs.commit > MAX_TERM or raw.last_index > MAX_TERM:
        raise ImpossibleStoredState(
            f"partition {partition} on node {node_id} holds an impossible Raft state "
            "(a term or index above 2^63-1, from a peer's message accepted before such "
            "messages were refused); this replica stays out of service and its other "
            "replicas serve the partition"
        )


def send_isolated(
    send: Callable[[list[tuple[int, Message]]], None],
    msgs: list[tuple[int, Message]],
    on_group_failure: Callable[[int, Exception], None],
) -> None:
    """Send every group's messages in one call; if that fails, send group by
    group so that only the groups whose messages cannot be sent fail.

    Raft tolerates the duplicates a partial first attempt may cause."""
    try:
        send(msgs)
        return
    except Exception as e:
        failstop.check(e)
    by_group: dict[int, list[tuple[int, Message]]] = {}
    for group, m in msgs:
        by_group.setdefault(group, []).append((group, m))
    for group, gm in by_group.items():
        try:
            send(gm)
        except Exception as e:
            failstop.check(e)
            on_group_failure(group, e)
