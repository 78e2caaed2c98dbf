"""The documented input limits of the key-value service, and their validators.

Everything a client sends is checked here before it is proposed to Raft, and
the state machine checks decoded commands again (a bad entry must fail the same
way on every replica rather than wedge the partition).

Error messages name the field and the problem but never echo the value: the
values are patient identifiers and clinical data, which must not reach logs or
error replies (invariant 5).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_ID_BYTES = 256
"""patient_id and record_id: at most this many UTF-8 bytes."""

MAX_VALUE_BYTES = 1 << 20
"""A record's value: at most 1 MiB."""

MAX_BATCH_OPS = 128
"""Operations in one atomic batch."""

MAX_BATCH_BYTES = 4 << 20
"""Sum over a batch's operations of record_id bytes plus value bytes."""

CLIENT_ID_BYTES = 16
"""WriteId.client_id is exactly this long (random, chosen by the client)."""

MAX_UINT64 = (1 << 64) - 1
"""seq, ack_below, versions and ts_ms travel as uint64."""

DEFAULT_HISTORY_LIMIT = 100
"""History page size when the request says 0."""

MAX_HISTORY_LIMIT = 1000
"""Largest history page served at once."""

DEFAULT_SCAN_PAGE = 256
"""Scan page size when the request says 0."""

MAX_SCAN_PAGE = 4096
"""Largest scan page served at once."""

# C0 controls, DEL and C1 controls (Unicode category Cc). They have no place in
# an identifier and make logs and terminals lie about what they show.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class ValidationError(ValueError):
    """Input that breaks a documented limit; maps to INVALID_ARGUMENT.

    `field` is a path such as "ops[3].record_id"; `reason` says what is wrong
    without quoting the offending value.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def validate_id(value: object, field: str) -> None:
    """A patient_id or record_id: non-empty UTF-8 text, <= MAX_ID_BYTES, no controls."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if not value:
        raise ValidationError(field, "must not be empty")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: not representable in UTF-8.
        raise ValidationError(field, "is not valid UTF-8") from None
    if len(encoded) > MAX_ID_BYTES:
        raise ValidationError(field, f"is {len(encoded)} bytes, the limit is {MAX_ID_BYTES}")
    if _CONTROL.search(value):
        raise ValidationError(field, "contains a control character")


def validate_ids(patient_id: object, record_id: object | None, field_prefix: str = "") -> None:
    """patient_id, and record_id unless None, named `{field_prefix}patient_id` etc."""
    validate_id(patient_id, f"{field_prefix}patient_id")
    if record_id is not None:
        validate_id(record_id, f"{field_prefix}record_id")


def validate_value(value: object, field: str = "value") -> None:
    """A record value: bytes, at most MAX_VALUE_BYTES."""
    if not isinstance(value, bytes):
        raise ValidationError(field, "must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise ValidationError(field, f"is {len(value)} bytes, the limit is {MAX_VALUE_BYTES}")


def validate_uint64(value: object, field: str) -> None:
    # bool is an int subclass; True as a version is a bug, not a version.
    if type(value) is not int:
        raise ValidationError(field, "must be an integer")
    if not 0 <= value <= MAX_UINT64:
        raise ValidationError(field, "is outside the uint64 range")


def validate_client_id(client_id: object, field: str = "write_id.client_id") -> None:
    """A client id: exactly CLIENT_ID_BYTES bytes."""
    if not isinstance(client_id, bytes):
        raise ValidationError(field, "must be bytes")
    if len(client_id) != CLIENT_ID_BYTES:
        raise ValidationError(field, f"is {len(client_id)} bytes, it must be {CLIENT_ID_BYTES}")


def validate_write_id(client_id: object, seq: object, ack_below: object = 0) -> None:
    """A WriteId: 16-byte client_id, seq > 0, ack_below <= seq.

    ack_below > seq would claim the client already holds this very reply.
    (The session is checked by the service and, authoritatively, at apply.)
    """
    validate_client_id(client_id)
    validate_uint64(seq, "write_id.seq")
    validate_uint64(ack_below, "write_id.ack_below")
    assert isinstance(seq, int) and isinstance(ack_below, int)
    if seq == 0:
        raise ValidationError("write_id.seq", "must be greater than 0")
    if ack_below > seq:
        raise ValidationError("write_id.ack_below", "must not exceed seq")


def validate_batch_shape(ops: Iterable[tuple[str, bytes | None, bool]]) -> None:
    """The limits of a batch as a whole, given (record_id, value or None, is_write) per op.

    Per-op fields are validated by the caller; this checks the count, the total
    size and that no record is written twice (the outcome would depend on op
    order, which a reader of the batch should not have to reason about).
    """
    count = 0
    total = 0
    written: set[str] = set()
    for i, (record_id, value, is_write) in enumerate(ops):
        count += 1
        if count > MAX_BATCH_OPS:
            raise ValidationError("ops", f"has more than {MAX_BATCH_OPS} operations")
        total += len(record_id.encode("utf-8")) + (len(value) if value is not None else 0)
        if total > MAX_BATCH_BYTES:
            raise ValidationError("ops", f"total more than {MAX_BATCH_BYTES} bytes")
        if is_write:
            if record_id in written:
                raise ValidationError(f"ops[{i}].record_id", "is written twice in one batch")
            written.add(record_id)
    if count == 0:
        raise ValidationError("ops", "must not be empty")


def clamp_page(requested: int, field: str, default: int, maximum: int) -> int:
    """A page size: 0 means the default; above the maximum is an error, not a silent cut."""
    validate_uint64(requested, field)
    if requested == 0:
        return default
    if requested > maximum:
        raise ValidationError(field, f"is above the maximum of {maximum}")
    return requested
