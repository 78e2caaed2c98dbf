"""Turning NodeError into a gRPC status, with the leader hint as trailing metadata."""

from __future__ import annotations

import grpc

from node.errors import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NodeError
from proto.medkv.v1 import common_pb2


async def abort_with(context: grpc.aio.ServicerContext, e: NodeError) -> None:
    """Abort the RPC with e's status; raises (grpc.aio's abort never returns)."""
    md: list[tuple[str, str]] = []
    if e.leader_hint:
        md.append((LEADER_METADATA_KEY, e.leader_hint))
    if e.kind:
        md.append((ERROR_KIND_METADATA_KEY, e.kind))
    await context.abort(e.code, e.message, trailing_metadata=tuple(md))


def to_status(e: NodeError) -> common_pb2.Status:
    """The same error inside a multiplexed BatchCommands reply."""
    return common_pb2.Status(
        code=e.code.value[0], message=e.message, leader_hint=e.leader_hint, error_kind=e.kind
    )
