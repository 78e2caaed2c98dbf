"""The commands a partition's Raft log carries, and their byte encoding.

An entry's data is one format byte followed by one msgpack array. The format
byte lets a later release change the layout while old logs and snapshots still
decode; only FORMAT_V1 exists today. Arrays with small integer tags keep the
entries compact: they are written to every replica's log and sent over the
network at least twice.

Layout (v1), after the format byte:
  Noop:          [0, ts_ms]
  Put:           [1, client_id, seq, ack_below, ts_ms, patient_id, record_id, value]
  CompareAndSet: [2, client_id, seq, ack_below, ts_ms, patient_id, record_id, value, expected]
  Delete:        [3, client_id, seq, ack_below, ts_ms, patient_id, record_id, expected | nil]
  Batch:         [4, client_id, seq, ack_below, ts_ms, patient_id, [op, ...]]
                   op: [0, record_id, value] put | [1, record_id] delete
                       | [2, record_id, expected] check
  ErasePatient:  [5, client_id, seq, ack_below, ts_ms, patient_id]

`ts_ms` is the proposing leader's wall clock; the state machine uses it (never
its own clock) to expire client sessions identically on every replica.

Decoding checks structure and types only; `validate_command` checks the
documented limits (node.limits). No error message here ever quotes a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from node.limits import (
    ValidationError,
    validate_batch_shape,
    validate_id,
    validate_uint64,
    validate_value,
    validate_write_id,
)

FORMAT_V1 = 0x01

_NOOP, _PUT, _CAS, _DELETE, _BATCH, _ERASE = 0, 1, 2, 3, 4, 5

BATCH_PUT = "put"
BATCH_DELETE = "delete"
BATCH_CHECK = "check"
_OP_TAGS = {BATCH_PUT: 0, BATCH_DELETE: 1, BATCH_CHECK: 2}


class CommandError(ValueError):
    """A command that cannot be encoded or decoded (INVALID_ARGUMENT)."""


class CommandDecodeError(CommandError):
    """Entry data that is not a command of a known format."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Write:
    """What every write carries: its at-most-once identity and the leader's clock."""

    client_id: bytes
    seq: int
    ack_below: int
    ts_ms: int
    patient_id: str

    @property
    def write_key(self) -> tuple[bytes, int]:
        """(client_id, seq): how a proposer finds this write's result."""
        return (self.client_id, self.seq)


@dataclass(frozen=True, slots=True, kw_only=True)
class Put(_Write):
    record_id: str
    value: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareAndSet(_Write):
    """Write only if the record is at expected_version (0: absent or deleted)."""

    record_id: str
    value: bytes
    expected_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete(_Write):
    """Write a tombstone; with expected_version, only if the record is at it."""

    record_id: str
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class BatchOp:
    """One operation of a batch.

    kind "put": write value. "delete": write a tombstone (value stays b"").
    "check": a guard, the batch applies only if the record is at
    expected_version (0: absent or deleted); it writes nothing.
    """

    kind: str
    record_id: str
    value: bytes = b""
    expected_version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch(_Write):
    """Atomic operations on one patient's records: all apply, or none does."""

    ops: tuple[BatchOp, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErasePatient(_Write):
    """Remove every record and every retained version of one patient (right to erasure)."""


@dataclass(frozen=True, slots=True)
class Noop:
    """Carries only the leader's clock; advances session expiry."""

    ts_ms: int


WriteCommand = Put | CompareAndSet | Delete | Batch | ErasePatient
Command = WriteCommand | Noop


# --- encoding -------------------------------------------------------------


def _op_fields(op: BatchOp, i: int) -> list[Any]:
    # Each kind carries only its own fields; refuse rather than silently drop
    # a value or version that the decoder would not give back.
    if op.kind == BATCH_PUT and op.expected_version is None:
        return [0, op.record_id, op.value]
    if op.kind == BATCH_DELETE and op.expected_version is None and op.value == b"":
        return [1, op.record_id]
    if op.kind == BATCH_CHECK and op.expected_version is not None and op.value == b"":
        return [2, op.record_id, op.expected_version]
    raise CommandError(f"ops[{i}]: kind must be put, delete or check, with only that kind's fields")


def _fields(cmd: Command) -> list[Any]:
    if isinstance(cmd, Noop):
        return [_NOOP, cmd.ts_ms]
    head = [cmd.client_id, cmd.seq, cmd.ack_below, cmd.ts_ms, cmd.patient_id]
    if isinstance(cmd, Put):
        return [_PUT, *head, cmd.record_id, cmd.value]
    if isinstance(cmd, CompareAndSet):
        return [_CAS, *head, cmd.record_id, cmd.value, cmd.expected_version]
    if isinstance(cmd, Delete):
        return [_DELETE, *head, cmd.record_id, cmd.expected_version]
    if isinstance(cmd, Batch):
        return [_BATCH, *head, [_op_fields(op, i) for i, op in enumerate(cmd.ops)]]
    if isinstance(cmd, ErasePatient):
        return [_ERASE, *head]
    raise CommandError(f"not a command: {type(cmd).__name__}")


def encode_command(cmd: Command) -> bytes:
    """The bytes of a Raft entry. Validate first (validate_command): this checks only types."""
    fields = _fields(cmd)
    try:
        body: bytes = msgpack.packb(fields, use_bin_type=True)
    except (UnicodeEncodeError, OverflowError, TypeError, ValueError):
        # The library's messages quote the offending text; ours must not.
        raise CommandError(
            f"cannot encode {type(cmd).__name__}: a field has an invalid type or value"
        ) from None
    return bytes([FORMAT_V1]) + body


# --- decoding -------------------------------------------------------------


def _uint(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise CommandDecodeError(f"{what} is not an unsigned integer")
    return v


def _text(v: object, what: str) -> str:
    if type(v) is not str:
        raise CommandDecodeError(f"{what} is not text")
    return v


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        raise CommandDecodeError(f"{what} is not bytes")
    return v


def _arity(fields: list[Any], n: int, what: str) -> None:
    if len(fields) != n:
        raise CommandDecodeError(f"{what} has {len(fields)} fields, expected {n}")


def _decode_op(raw: object, i: int) -> BatchOp:
    what = f"ops[{i}]"
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise CommandDecodeError(f"{what} is not a tagged array")
    tag = raw[0]
    if tag == 0:
        _arity(raw, 3, what)
        return BatchOp(
            BATCH_PUT, _text(raw[1], f"{what}.record_id"), _bytes(raw[2], f"{what}.value")
        )
    if tag == 1:
        _arity(raw, 2, what)
        return BatchOp(BATCH_DELETE, _text(raw[1], f"{what}.record_id"))
    if tag == 2:
        _arity(raw, 3, what)
        return BatchOp(
            BATCH_CHECK,
            _text(raw[1], f"{what}.record_id"),
            expected_version=_uint(raw[2], f"{what}.expected_version"),
        )
    raise CommandDecodeError(f"{what} has an unknown kind")


def _decode_v1(fields: list[Any]) -> Command:
    if not fields or type(fields[0]) is not int:
        raise CommandDecodeError("command has no kind tag")
    tag = fields[0]
    if tag == _NOOP:
        _arity(fields, 2, "Noop")
        return Noop(_uint(fields[1], "ts_ms"))
    if tag not in (_PUT, _CAS, _DELETE, _BATCH, _ERASE):
        raise CommandDecodeError(f"unknown command kind {tag}")
    if len(fields) < 6:
        raise CommandDecodeError("write command is too short")
    head: dict[str, Any] = {
        "client_id": _bytes(fields[1], "client_id"),
        "seq": _uint(fields[2], "seq"),
        "ack_below": _uint(fields[3], "ack_below"),
        "ts_ms": _uint(fields[4], "ts_ms"),
        "patient_id": _text(fields[5], "patient_id"),
    }
    if tag == _PUT:
        _arity(fields, 8, "Put")
        return Put(
            **head, record_id=_text(fields[6], "record_id"), value=_bytes(fields[7], "value")
        )
    if tag == _CAS:
        _arity(fields, 9, "CompareAndSet")
        return CompareAndSet(
            **head,
            record_id=_text(fields[6], "record_id"),
            value=_bytes(fields[7], "value"),
            expected_version=_uint(fields[8], "expected_version"),
        )
    if tag == _DELETE:
        _arity(fields, 8, "Delete")
        expected = None if fields[7] is None else _uint(fields[7], "expected_version")
        return Delete(**head, record_id=_text(fields[6], "record_id"), expected_version=expected)
    if tag == _BATCH:
        _arity(fields, 7, "Batch")
        if type(fields[6]) is not list:
            raise CommandDecodeError("ops is not an array")
        return Batch(**head, ops=tuple(_decode_op(op, i) for i, op in enumerate(fields[6])))
    _arity(fields, 6, "ErasePatient")
    return ErasePatient(**head)


def decode_command(data: bytes) -> Command:
    """The command in a Raft entry's data. Raises CommandDecodeError if it is not one."""
    if not data:
        raise CommandDecodeError("empty entry data is not a command")
    if data[0] != FORMAT_V1:
        raise CommandDecodeError(f"unsupported command format {data[0]}")
    try:
        fields = msgpack.unpackb(data[1:], raw=False, use_list=True, strict_map_key=True)
    except Exception:
        # ExtraData, truncated input, invalid UTF-8, ...: the library's message
        # may quote the bytes, so say only what kind of failure it was.
        raise CommandDecodeError("command body is not well-formed msgpack") from None
    if type(fields) is not list:
        raise CommandDecodeError("command body is not an array")
    return _decode_v1(fields)


# --- validation -----------------------------------------------------------


def validate_batch(cmd: Batch) -> None:
    """The ops of a batch: kinds, per-op fields, and the batch-wide limits."""
    for i, op in enumerate(cmd.ops):
        if op.kind not in _OP_TAGS:
            raise ValidationError(f"ops[{i}]", "kind must be put, delete or check")
        validate_id(op.record_id, f"ops[{i}].record_id")
        if op.kind == BATCH_PUT:
            validate_value(op.value, f"ops[{i}].value")
        elif op.value != b"":
            raise ValidationError(f"ops[{i}].value", f"must be empty for a {op.kind}")
        if op.kind == BATCH_CHECK:
            if op.expected_version is None:
                raise ValidationError(f"ops[{i}].expected_version", "is required for a check")
            validate_uint64(op.expected_version, f"ops[{i}].expected_version")
        elif op.expected_version is not None:
            raise ValidationError(f"ops[{i}].expected_version", f"is not allowed for a {op.kind}")
    validate_batch_shape(
        (op.record_id, op.value if op.kind == BATCH_PUT else None, op.kind != BATCH_CHECK)
        for op in cmd.ops
    )


def validate_command(cmd: Command) -> None:
    """Check a command against the documented limits. Raises ValidationError."""
    validate_uint64(cmd.ts_ms, "ts_ms")
    if isinstance(cmd, Noop):
        return
    validate_write_id(cmd.client_id, cmd.seq, cmd.ack_below)
    validate_id(cmd.patient_id, "patient_id")
    if isinstance(cmd, Put | CompareAndSet):
        validate_id(cmd.record_id, "record_id")
        validate_value(cmd.value, "value")
        if isinstance(cmd, CompareAndSet):
            validate_uint64(cmd.expected_version, "expected_version")
    elif isinstance(cmd, Delete):
        validate_id(cmd.record_id, "record_id")
        if cmd.expected_version is not None:
            validate_uint64(cmd.expected_version, "expected_version")
    elif isinstance(cmd, Batch):
        validate_batch(cmd)
    elif not isinstance(cmd, ErasePatient):
        raise ValidationError("command", "is of an unknown kind")


__all__ = [
    "BATCH_CHECK",
    "BATCH_DELETE",
    "BATCH_PUT",
    "FORMAT_V1",
    "Batch",
    "BatchOp",
    "Command",
    "CommandDecodeError",
    "CommandError",
    "CompareAndSet",
    "Delete",
    "ErasePatient",
    "Noop",
    "Put",
    "WriteCommand",
    "decode_command",
    "encode_command",
    "validate_batch",
    "validate_command",
]
