"""The operations of an atomic per-patient batch.

Build them with the helpers (`ops.put(...)`, `ops.delete(...)`,
`ops.check(...)`) or as plain tuples (`("put", record_id, value)`,
`("delete", record_id)`, `("check", record_id, expected_version)`); both
become the same `BatchOp` on the wire. A check writes nothing: it makes the
whole batch conditional on a record being at a version (0: absent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from client.errors import InvalidArgument
from proto.medkv.v1 import kv_pb2


@dataclass(frozen=True, slots=True)
class Put:
    record_id: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    record_id: str


@dataclass(frozen=True, slots=True)
class Check:
    record_id: str
    expected_version: int


BatchOp = Put | Delete | Check


def put(record_id: str, value: bytes) -> Put:
    return Put(record_id, value)


def delete(record_id: str) -> Delete:
    return Delete(record_id)


def check(record_id: str, expected_version: int) -> Check:
    return Check(record_id, expected_version)


def coerce(op: Any) -> BatchOp:
    """An op object from a helper-built op or a tuple; InvalidArgument otherwise."""
    if isinstance(op, Put | Delete | Check):
        built: BatchOp = op
    elif isinstance(op, tuple) and op and isinstance(op[0], str):
        kind, args = op[0], op[1:]
        if kind == "put" and len(args) == 2:
            built = Put(*args)
        elif kind == "delete" and len(args) == 1:
            built = Delete(*args)
        elif kind == "check" and len(args) == 2:
            built = Check(*args)
        else:
            raise InvalidArgument(f"unknown batch operation {kind!r} with {len(args)} arguments")
    else:
        raise InvalidArgument(
            f"a batch operation must be an op or a tuple, not {type(op).__name__}"
        )
    _validate(built)
    return built


def _validate(op: BatchOp) -> None:
    if not isinstance(op.record_id, str) or not op.record_id:
        raise InvalidArgument("a batch operation needs a non-empty record id")
    if isinstance(op, Put) and not isinstance(op.value, bytes | bytearray | memoryview):
        raise InvalidArgument("a batch put's value must be bytes")
    if isinstance(op, Check) and (
        isinstance(op.expected_version, bool)
        or not isinstance(op.expected_version, int)
        or op.expected_version < 0
    ):
        raise InvalidArgument("a batch check's expected version must be an integer >= 0")


def to_proto(ops: Iterable[Any]) -> list[kv_pb2.BatchOp]:
    """The wire form of a batch; raises InvalidArgument for an empty or malformed one."""
    out: list[kv_pb2.BatchOp] = []
    for raw in ops:
        op = coerce(raw)
        if isinstance(op, Put):
            out.append(
                kv_pb2.BatchOp(put=kv_pb2.BatchPut(record_id=op.record_id, value=bytes(op.value)))
            )
        elif isinstance(op, Delete):
            out.append(kv_pb2.BatchOp(delete=kv_pb2.BatchDelete(record_id=op.record_id)))
        else:
            out.append(
                kv_pb2.BatchOp(
                    check=kv_pb2.BatchCheck(
                        record_id=op.record_id, expected_version=op.expected_version
                    )
                )
            )
    if not out:
        raise InvalidArgument("a batch needs at least one operation")
    return out


__all__ = ["BatchOp", "Check", "Delete", "Put", "check", "coerce", "delete", "put", "to_proto"]
