"""Typed exceptions for every way a medkv call can fail.

Each exception carries the gRPC status code and the server's message, so a
caller can branch on the type and an operator can still read what the node
said. The mapping from a status to a type lives here, once, for the sync
client, the async client and the command line alike.

FAILED_PRECONDITION means two different things in the contract: a version
mismatch on a conditional write, or a bounded read refused because the replica
is too stale. Which one it is follows from the kind of call (a read can only be
refused for staleness), with an optional `medkv-error` trailing metadata value
taking precedence when a node sends one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc

# The trailing metadata key a node may use to name the precise error kind.
ERROR_KIND_KEY = "medkv-error"


class MedkvError(Exception):
    """Base of every medkv client error."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    # How many RPC attempts the call had sent when it failed (0: none).
    attempts: int = 0
    # Of those, how many may have reached the Raft log (a write's attempt that
    # failed without the node saying `not-applied`).
    unsure_attempts: int = 0
    # The node's precise reason (`medkv-error` metadata / Status.error_kind), if any.
    kind: str = ""

    def __init__(self, message: str = "", code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        name = self.code.name if self.code is not None else "UNKNOWN"
        return f"{name}: {self.message}" if self.message else name


class NotFound(MedkvError):
    """No such record (or no such version of it)."""

    code = grpc.StatusCode.NOT_FOUND


class VersionConflict(MedkvError):
    """A compare-and-set, conditional delete or batch check saw another version."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self,
        message: str = "",
        code: grpc.StatusCode | None = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message, code)
        self.expected = expected
        self.actual = actual


class TooStale(MedkvError):
    """A bounded read was refused: every replica tried lagged beyond the bound."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class SessionExpired(MedkvError):
    """The write's session is no longer open on its partition (idle past the TTL).

    The node refused this attempt and applies nothing for it. When an earlier
    attempt of the same write may have reached the log, it may have applied
    before the session expired: the client then raises this instead of
    sending the write again in a new session (see client/sessions.py). When
    no earlier attempt can have applied, the client opens a new session and
    sends the write again by itself; this is then never raised.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResultForgotten(SessionExpired):
    """The session no longer remembers this write's result (more writes were in
    flight in it than the node keeps). It may have been applied; never retried."""


class Unavailable(MedkvError):
    """No node could serve the call in time (no leader, no quorum, unreachable)."""

    code = grpc.StatusCode.UNAVAILABLE


class InvalidArgument(MedkvError):
    """The request was malformed or oversized; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(MedkvError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(MedkvError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(MedkvError):
    """The call's total deadline passed. A write's outcome is then unknown."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(MedkvError):
    """The cluster pushed back (overload) for longer than the call's deadline."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLoss(MedkvError):
    """A node's integrity check failed on disk. Never retried: it must be seen."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[MedkvError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}

_KINDS: dict[str, type[MedkvError]] = {
    "version-conflict": VersionConflict,
    "too-stale": TooStale,
    "session-expired": SessionExpired,
    "result-forgotten": ResultForgotten,
}

_EXPECTED = re.compile(r"expected(?:[ _]version)?\D{0,4}(\d+)", re.IGNORECASE)
_ACTUAL = re.compile(
    r"(?:actual|current|found|got|version is|is at)(?:[ _]version)?\D{0,4}(\d+)", re.IGNORECASE
)


def _first_int(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    return int(match.group(1)) if match else None


def from_status(
    code: grpc.StatusCode,
    message: str,
    *,
    is_read: bool,
    metadata: Mapping[str, str] | None = None,
) -> MedkvError:
    """The typed exception for one gRPC status returned by a node.

    `is_read` resolves FAILED_PRECONDITION: a read is refused only for
    staleness, a write only for a version mismatch or an expired session.
    """
    kind = (metadata or {}).get(ERROR_KIND_KEY, "")
    error = _typed(code, message, kind, is_read)
    error.kind = kind
    return error


def _typed(code: grpc.StatusCode, message: str, kind: str, is_read: bool) -> MedkvError:
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        cls = _KINDS.get(kind)
        if cls is None:
            if is_read:
                cls = TooStale
            elif "session" in message.lower():
                cls = SessionExpired
            else:
                cls = VersionConflict
        if cls is VersionConflict:
            return VersionConflict(
                message, code, _first_int(_EXPECTED, message), _first_int(_ACTUAL, message)
            )
        return cls(message, code)
    return _BY_CODE.get(code, MedkvError)(message, code)


def from_rpc_error(error: grpc.RpcError, *, is_read: bool) -> MedkvError:
    """The typed exception for a failed gRPC call (sync or aio)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return from_status(
        code or grpc.StatusCode.UNKNOWN,
        details or "",
        is_read=is_read,
        metadata=metadata_dict(trailing),
    )


def metadata_dict(metadata: object) -> dict[str, str]:
    """gRPC metadata (a sequence of key/value pairs, or None) as a dict of strings."""
    out: dict[str, str] = {}
    if not metadata:
        return out
    for item in metadata:  # type: ignore[attr-defined]
        key, value = item[0], item[1]
        out[str(key).lower()] = (
            value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        )
    return out


__all__ = [
    "DataLoss",
    "DeadlineExceeded",
    "InvalidArgument",
    "MedkvError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ResultForgotten",
    "SessionExpired",
    "TooStale",
    "Unauthenticated",
    "Unavailable",
    "VersionConflict",
    "from_rpc_error",
    "from_status",
    "metadata_dict",
]
