"""Errors the node answers with, each carrying its gRPC status.

Messages name the field, partition or condition at fault and never echo a
patient identifier or a record value.
"""

from __future__ import annotations

import grpc


class NodeError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, leader_hint: str = "", kind: str = "", partition: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.leader_hint = leader_hint
        # The partition the refusal is about, when one: the `partition` field
        # of a JSON log line (node.logfmt). Never sent to the caller.
        self.partition = partition
        # Which of several reasons behind one status code (trailing metadata
        # medkv-error): version-conflict, too-stale, session-expired,
        # result-forgotten, or not-applied (a write refused before it reached
        # the Raft log: that attempt certainly applied nothing).
        self.kind = kind


class InvalidArgument(NodeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(NodeError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(NodeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(NodeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(NodeError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(NodeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(NodeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(NodeError):
    """The operation was cut short and can be resumed (a scan whose read
    snapshot an erasure released: resume from the last resume token)."""

    code = grpc.StatusCode.ABORTED


class DataLoss(NodeError):
    code = grpc.StatusCode.DATA_LOSS


NOT_APPLIED = "not-applied"

LEADER_METADATA_KEY = "medkv-leader"
ERROR_KIND_METADATA_KEY = "medkv-error"


class StartupError(Exception):
    """The node cannot start or cannot go on (unusable key file, data directory
    locked, its Raft loop failed): the process exits non-zero with the message."""
