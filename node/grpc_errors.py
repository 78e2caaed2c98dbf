"""Turning NodeError into a gRPC status, with the leader hint as trailing metadata.

Refusals of bad input (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) leave one log
line each, rate-limited per method and status, naming the method and the
problem (messages never quote patient data): an operator sees that a client
misbehaves without a flood, and without a traceback.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable

import grpc

from node.errors import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NodeError
from node.rate_log import RateLimitedLog
from proto.medkv.v1 import common_pb2

# The RPC method being served (set by node.rpc_handlers), for log lines.
current_method: contextvars.ContextVar[str] = contextvars.ContextVar(
    "medkv_current_method", default="?"
)

_LOGGED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
_refusals = RateLimitedLog(logging.getLogger("medkv.rpc"))


# Paths of this node (data dir, key file, ...) -> the name an answer uses instead:
# errors from storage and key files name their files for the operator's log,
# but no endpoint tells a caller where the node keeps them.
_HIDDEN_PATHS: list[tuple[str, str]] = []


def hide_paths(paths: dict[str, str]) -> None:
    """Set the node's paths that answers replace by their names (longest first)."""
    _HIDDEN_PATHS[:] = sorted(((p, n) for p, n in paths.items() if p),
                              key=lambda pn: -len(pn[0]))


def public_message(message: str) -> str:
    """The message as a caller may see it: the node's paths replaced by their names."""
    for path, name in _HIDDEN_PATHS:
        if path in message:
            message = message.replace(path, name)
    return message


def log_refusal(e: NodeError) -> None:
    if e.code in _LOGGED:
        method = current_method.get()
        _refusals.info(
            (method, e.code), "refused %s: %s %s", method, e.code.name, e.message,
            extra={"partition": e.partition} if e.partition is not None else None,
        )


EPOCH_METADATA_KEY = "medkv-epoch"
_epoch_source: list[Callable[[], int]] = []


def set_epoch_source(source: Callable[[], int]) -> None:
    """Where abort_with reads the node's placement epoch (node.server)."""
    _epoch_source[:] = [source]


async def abort_with(context: grpc.aio.ServicerContext, e: NodeError) -> None:
    """Abort the RPC with e's status; raises (grpc.aio's abort never returns).

    UNAVAILABLE carries the node's placement epoch: a client that routed by
    an older table (the partition moved) learns it here and refreshes."""
    log_refusal(e)
    md: list[tuple[str, str]] = []
    if e.leader_hint:
        md.append((LEADER_METADATA_KEY, e.leader_hint))
    if e.code == grpc.StatusCode.UNAVAILABLE and _epoch_source:
        md.append((EPOCH_METADATA_KEY, str(_epoch_source[0]())))
    if e.kind:
        md.append((ERROR_KIND_METADATA_KEY, e.kind))
    await context.abort(e.code, public_message(e.message), trailing_metadata=tuple(md))


def to_status(e: NodeError) -> common_pb2.Status:
    """The same error inside a multiplexed BatchCommands reply."""
    log_refusal(e)
    epoch = (_epoch_source[0]() if e.code == grpc.StatusCode.UNAVAILABLE and _epoch_source
             else 0)
    return common_pb2.Status(
        code=e.code.value[0], message=public_message(e.message), leader_hint=e.leader_hint,
        error_kind=e.kind, epoch=epoch,
    )
