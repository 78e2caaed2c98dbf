"""Status codes become typed exceptions carrying the code and the server's message."""

from __future__ import annotations

import grpc
import pytest

from client import errors
from client.errors import from_status


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.DATA_LOSS, errors.DataLoss),
        (grpc.StatusCode.INTERNAL, errors.MedkvError),
    ],
)
def test_each_code_has_its_type(code: grpc.StatusCode, cls: type[errors.MedkvError]) -> None:
    for is_read in (True, False):
        error = from_status(code, "the node said so", is_read=is_read)
        assert type(error) is cls
        assert isinstance(error, errors.MedkvError)
        assert error.code == code and error.message == "the node said so"
        assert str(error) == f"{code.name}: the node said so"


def test_failed_precondition_depends_on_the_call() -> None:
    stale = from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "partition 3 is too stale: lag 12 entries",
        is_read=True,
    )
    assert type(stale) is errors.TooStale
    conflict = from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "partition 3: record: version is 9, expected 4",
        is_read=False,
    )
    assert type(conflict) is errors.VersionConflict
    assert isinstance(conflict, errors.VersionConflict)
    assert (conflict.expected, conflict.actual) == (4, 9)
    other = from_status(
        grpc.StatusCode.FAILED_PRECONDITION, "version mismatch: expected 3, actual 5", is_read=False
    )
    assert isinstance(other, errors.VersionConflict)
    assert (other.expected, other.actual) == (3, 5)
    expired = from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "partition 1: client session expired or seq already acknowledged",
        is_read=False,
    )
    assert type(expired) is errors.SessionExpired


def test_an_explicit_error_kind_wins() -> None:
    md = {errors.ERROR_KIND_KEY: "session-expired"}
    error = from_status(grpc.StatusCode.FAILED_PRECONDITION, "x", is_read=False, metadata=md)
    assert type(error) is errors.SessionExpired
    md = {errors.ERROR_KIND_KEY: "too-stale"}
    error = from_status(grpc.StatusCode.FAILED_PRECONDITION, "x", is_read=False, metadata=md)
    assert type(error) is errors.TooStale


def test_metadata_dict_accepts_bytes_and_none() -> None:
    assert errors.metadata_dict(None) == {}
    assert errors.metadata_dict((("Medkv-Leader", b"1@h:1"), ("medkv-epoch", "2"))) == {
        "medkv-leader": "1@h:1",
        "medkv-epoch": "2",
    }


def test_errors_are_catchable_by_family() -> None:
    with pytest.raises(errors.MedkvError):
        raise errors.TooStale("lag")
    assert errors.TooStale("x").code == grpc.StatusCode.FAILED_PRECONDITION
