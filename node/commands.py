"""The commands a partition's Raft log carries, and their byte encoding.

An entry's data is one format byte followed by one msgpack array. The format
byte lets a release change the layout while old logs and snapshots still
decode. Arrays with small integer tags keep the entries compact: they are
written to every replica's log and sent over the network at least twice.

Layout (v2, written today), after the format byte; `head` is
client_id, session, seq, ack_below, ts_ms, patient_id:
  Noop:            [0, ts_ms]
  Put:             [1, head..., record_id, value]
  CompareAndSet:   [2, head..., record_id, value, expected]
  Delete:          [3, head..., record_id, expected | nil]
  Batch:           [4, head..., [op, ...]]
                     op: [0, record_id, value] put | [1, record_id] delete
                         | [2, record_id, expected] check
  ErasePatient:    [5, head...]
  RegisterSession: [6, ts_ms, client_id, nonce]
  SetSettings:     [7, ts_ms, nonce, seed, {name: value, ...}(, cluster_generation)]
  SharePatient:    [8, ts_ms, nonce, patient_id, clinic, revoke, [caller clinic, ...]]
  AuditAnchor:     [9, ts_ms, node_id, seq, chain_hash (32 bytes)]

SetSettings carries a trailing cluster_generation when it brings the cluster
state's settings into the partition (node.cluster.settings_sync); an entry
without it (a seed, a per-partition change from before settings were cluster
state) decodes as before.

Put, CompareAndSet, Delete and Batch may carry one more, trailing element:
the write's `auth` [[caller clinic, ...], register_clinic | nil, break_glass]
(WriteAuth), set by a node with access control. An entry without it (every
entry written before it existed, an insecure node's, an admin's erasure)
decodes exactly as before and is applied without a clinic check.

v1 (written before sessions were registered) is the same without `session`
in the head and without kinds 6 and 7. It still decodes, so an old log can be
replayed: its writes come out with session 0, which no session ever has, and
apply refuses them, identically on every replica (see state_machine).

`ts_ms` is the proposing leader's log-clock stamp (node.log_clock), never a
wall clock; the state machine uses it to expire sessions identically on every
replica. `nonce` lets the proposer find the result of an entry whose result
it cannot name in advance (a session id is the index the entry lands at).

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
    validate_client_id,
    validate_id,
    validate_uint64,
    validate_value,
    validate_write_id,
)
from node.settings import NAMES as SETTING_NAMES
from node.settings import validate_changes

FORMAT_V1 = 0x01  # before registered sessions: decoded, never written
FORMAT_V2 = 0x02

_NOOP, _PUT, _CAS, _DELETE, _BATCH, _ERASE, _REGISTER, _SETTINGS = 0, 1, 2, 3, 4, 5, 6, 7
_SHARE = 8
_AUDIT_ANCHOR = 9
AUDIT_CHAIN_HASH_BYTES = 32

# How a proposer finds its entry's result: ("write", client_id, session, seq),
# ("open", client_id, nonce, 0), ("settings", b"", nonce, 0), ("share", b"", nonce, 0)
# or ("anchor", b"", node_id, seq).
WaitKey = tuple[str, bytes, int, int]

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
    session: int  # 0 only in entries decoded from format v1: refused at apply
    seq: int
    ack_below: int
    ts_ms: int
    patient_id: str

    @property
    def wait_key(self) -> WaitKey:
        """How the proposer finds this write's result among the applied entries."""
        return ("write", self.client_id, self.session, self.seq)


@dataclass(frozen=True, slots=True)
class WriteAuth:
    """Who proposed a record write, for the clinic check at apply (state_machine).

    clinics: the caller's clinics (from its token). register_clinic: the clinic a
    patient nobody has registered yet is registered to by this write (None: such
    a write is refused). break_glass: the caller has the break-glass role and
    gave a reason, so the write applies to any patient (the audit log flags it).
    The check runs at apply, against the replicated registration, so it is the
    same on every replica and cannot race a concurrent SharePatient."""

    clinics: frozenset[str]
    register_clinic: str | None = None
    break_glass: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _AuthedWrite(_Write):
    """A record write: may carry the proposer's WriteAuth (None: not checked)."""

    auth: WriteAuth | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Put(_AuthedWrite):
    record_id: str
    value: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareAndSet(_AuthedWrite):
    """Write only if the record is at expected_version (0: absent or deleted)."""

    record_id: str
    value: bytes
    expected_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete(_AuthedWrite):
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
class Batch(_AuthedWrite):
    """Atomic operations on one patient's records: all apply, or none does."""

    ops: tuple[BatchOp, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErasePatient(_Write):
    """Remove every record and every retained version of one patient (right to erasure)."""


@dataclass(frozen=True, slots=True)
class Noop:
    """Carries only the leader's clock; advances session expiry."""

    ts_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterSession:
    """Open a write session owned by client_id; its id is this entry's index.

    The owner is checked against every write in the session (state_machine:
    the one place that binds a session to who may use it)."""

    ts_ms: int
    client_id: bytes
    nonce: int

    @property
    def wait_key(self) -> WaitKey:
        return ("open", self.client_id, self.nonce, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSettings:
    """Change cluster settings (node.settings) from this entry on.

    seed: the one-time proposal from a leader's configuration; it applies only
    while the partition has never applied a SetSettings.
    cluster_generation: the cluster state's settings generation this entry
    carries (every setting named); 0 for a seed or an old per-partition
    change. Apply skips one not newer than the partition's (node.state_machine),
    so a late duplicate never undoes a newer generation."""

    ts_ms: int
    nonce: int
    seed: bool
    changes: tuple[tuple[str, int], ...]  # sorted by name: one encoding per content
    cluster_generation: int = 0

    @property
    def wait_key(self) -> WaitKey:
        return ("settings", b"", self.nonce, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SharePatient:
    """Register a patient to one more clinic, or revoke one (KV.SharePatient).

    caller_clinics: the clinics of whoever asked; apply allows the change when
    the patient is registered to one of them, or is unregistered and `clinic`
    is one of them (policy Scope.OWN_CLINIC, decided on the replicated state)."""

    ts_ms: int
    nonce: int
    patient_id: str
    clinic: str
    revoke: bool
    caller_clinics: frozenset[str]

    @property
    def wait_key(self) -> WaitKey:
        return ("share", b"", self.nonce, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditAnchor:
    """Node node_id's audit log reached entry `seq` with chain hash `chain_hash`
    (node.auth.audit.ChainHead). Replicated so that a node's log cut short or
    rewritten, HEAD file included, no longer matches what the cluster recorded
    (node.audit_anchors). Carries no patient data."""

    ts_ms: int
    node_id: int
    seq: int
    chain_hash: bytes  # AUDIT_CHAIN_HASH_BYTES

    @property
    def wait_key(self) -> WaitKey:
        return ("anchor", b"", self.node_id, self.seq)


WriteCommand = Put | CompareAndSet | Delete | Batch | ErasePatient
AuthedWrite = Put | CompareAndSet | Delete | Batch
Command = WriteCommand | Noop | RegisterSession | SetSettings | SharePatient | AuditAnchor


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
    if isinstance(cmd, RegisterSession):
        return [_REGISTER, cmd.ts_ms, cmd.client_id, cmd.nonce]
    if isinstance(cmd, SetSettings):
        out = [_SETTINGS, cmd.ts_ms, cmd.nonce, cmd.seed, dict(cmd.changes)]
        return [*out, cmd.cluster_generation] if cmd.cluster_generation else out
    if isinstance(cmd, SharePatient):
        return [_SHARE, cmd.ts_ms, cmd.nonce, cmd.patient_id, cmd.clinic, cmd.revoke,
                sorted(cmd.caller_clinics)]
    if isinstance(cmd, AuditAnchor):
        return [_AUDIT_ANCHOR, cmd.ts_ms, cmd.node_id, cmd.seq, cmd.chain_hash]
    head = [cmd.client_id, cmd.session, cmd.seq, cmd.ack_below, cmd.ts_ms, cmd.patient_id]
    if isinstance(cmd, ErasePatient):
        return [_ERASE, *head]
    if isinstance(cmd, Put):
        out = [_PUT, *head, cmd.record_id, cmd.value]
    elif isinstance(cmd, CompareAndSet):
        out = [_CAS, *head, cmd.record_id, cmd.value, cmd.expected_version]
    elif isinstance(cmd, Delete):
        out = [_DELETE, *head, cmd.record_id, cmd.expected_version]
    elif isinstance(cmd, Batch):
        out = [_BATCH, *head, [_op_fields(op, i) for i, op in enumerate(cmd.ops)]]
    else:
        raise CommandError(f"not a command: {type(cmd).__name__}")
    if cmd.auth is not None:
        # Sorted: one encoding per content, so replicas' logs are byte-identical.
        a = cmd.auth
        out.append([sorted(a.clinics), a.register_clinic, a.break_glass])
    return out


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
    return bytes([FORMAT_V2]) + body


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


def _clinics(v: object, what: str) -> frozenset[str]:
    if type(v) is not list:
        raise CommandDecodeError(f"{what} is not an array")
    return frozenset(_text(c, what) for c in v)


def _decode_auth(raw: object) -> WriteAuth:
    if type(raw) is not list or len(raw) != 3:
        raise CommandDecodeError("auth is not a 3-element array")
    clinics = _clinics(raw[0], "auth.clinics")
    register = None if raw[1] is None else _text(raw[1], "auth.register_clinic")
    if type(raw[2]) is not bool:
        raise CommandDecodeError("auth.break_glass is not a boolean")
    return WriteAuth(clinics, register, raw[2])


def _split_auth(fields: list[Any], n: int, what: str) -> WriteAuth | None:
    """The optional trailing auth element of a record write of n fields without it."""
    if len(fields) == n + 1:
        return _decode_auth(fields[n])
    _arity(fields, n, what)
    return None


def _decode(fields: list[Any], version: int) -> Command:
    if not fields or type(fields[0]) is not int:
        raise CommandDecodeError("command has no kind tag")
    tag = fields[0]
    if tag == _NOOP:
        _arity(fields, 2, "Noop")
        return Noop(_uint(fields[1], "ts_ms"))
    if tag == _REGISTER and version >= FORMAT_V2:
        _arity(fields, 4, "RegisterSession")
        return RegisterSession(
            ts_ms=_uint(fields[1], "ts_ms"),
            client_id=_bytes(fields[2], "client_id"),
            nonce=_uint(fields[3], "nonce"),
        )
    if tag == _SETTINGS and version >= FORMAT_V2:
        if len(fields) != 6:
            _arity(fields, 5, "SetSettings")
        if type(fields[3]) is not bool:
            raise CommandDecodeError("seed is not a boolean")
        if type(fields[4]) is not dict:
            raise CommandDecodeError("settings is not a map")
        changes = tuple(
            sorted((_text(k, "setting name"), _uint(v, "setting value")) for k, v in fields[4].items())
        )
        return SetSettings(
            ts_ms=_uint(fields[1], "ts_ms"), nonce=_uint(fields[2], "nonce"),
            seed=fields[3], changes=changes,
            cluster_generation=_uint(fields[5], "cluster_generation") if len(fields) == 6 else 0,
        )
    if tag == _SHARE and version >= FORMAT_V2:
        _arity(fields, 7, "SharePatient")
        if type(fields[5]) is not bool:
            raise CommandDecodeError("revoke is not a boolean")
        return SharePatient(
            ts_ms=_uint(fields[1], "ts_ms"), nonce=_uint(fields[2], "nonce"),
            patient_id=_text(fields[3], "patient_id"), clinic=_text(fields[4], "clinic"),
            revoke=fields[5], caller_clinics=_clinics(fields[6], "caller_clinics"),
        )
    if tag == _AUDIT_ANCHOR and version >= FORMAT_V2:
        _arity(fields, 5, "AuditAnchor")
        return AuditAnchor(
            ts_ms=_uint(fields[1], "ts_ms"), node_id=_uint(fields[2], "node_id"),
            seq=_uint(fields[3], "seq"), chain_hash=_bytes(fields[4], "chain_hash"),
        )
    if tag not in (_PUT, _CAS, _DELETE, _BATCH, _ERASE):
        raise CommandDecodeError(f"unknown command kind {tag}")
    # v1 heads have no session: shift them into the v2 layout with session 0.
    if version == FORMAT_V1:
        fields = [tag, fields[1] if len(fields) > 1 else None, 0, *fields[2:]]
    if len(fields) < 7:
        raise CommandDecodeError("write command is too short")
    head: dict[str, Any] = {
        "client_id": _bytes(fields[1], "client_id"),
        "session": _uint(fields[2], "session"),
        "seq": _uint(fields[3], "seq"),
        "ack_below": _uint(fields[4], "ack_below"),
        "ts_ms": _uint(fields[5], "ts_ms"),
        "patient_id": _text(fields[6], "patient_id"),
    }
    if tag == _PUT:
        auth = _split_auth(fields, 9, "Put")
        return Put(
            **head, record_id=_text(fields[7], "record_id"), value=_bytes(fields[8], "value"),
            auth=auth,
        )
    if tag == _CAS:
        auth = _split_auth(fields, 10, "CompareAndSet")
        return CompareAndSet(
            **head,
            record_id=_text(fields[7], "record_id"),
            value=_bytes(fields[8], "value"),
            expected_version=_uint(fields[9], "expected_version"),
            auth=auth,
        )
    if tag == _DELETE:
        auth = _split_auth(fields, 9, "Delete")
        expected = None if fields[8] is None else _uint(fields[8], "expected_version")
        return Delete(
            **head, record_id=_text(fields[7], "record_id"), expected_version=expected, auth=auth
        )
    if tag == _BATCH:
        auth = _split_auth(fields, 8, "Batch")
        if type(fields[7]) is not list:
            raise CommandDecodeError("ops is not an array")
        return Batch(
            **head, ops=tuple(_decode_op(op, i) for i, op in enumerate(fields[7])), auth=auth
        )
    _arity(fields, 7, "ErasePatient")
    return ErasePatient(**head)


def decode_command(data: bytes) -> Command:
    """The command in a Raft entry's data. Raises CommandDecodeError if it is not one."""
    if not data:
        raise CommandDecodeError("empty entry data is not a command")
    if data[0] not in (FORMAT_V1, FORMAT_V2):
        raise CommandDecodeError(f"unsupported command format {data[0]}")
    try:
        fields = msgpack.unpackb(data[1:], raw=False, use_list=True, strict_map_key=True)
    except Exception:
        # ExtraData, truncated input, invalid UTF-8, ...: the library's message
        # may quote the bytes, so say only what kind of failure it was.
        raise CommandDecodeError("command body is not well-formed msgpack") from None
    if type(fields) is not list:
        raise CommandDecodeError("command body is not an array")
    return _decode(fields, data[0])


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


MAX_CLINIC_BYTES = 128


def validate_clinic(clinic: object, field: str = "clinic") -> None:
    """A clinic name: non-empty text of at most MAX_CLINIC_BYTES bytes (never quoted)."""
    if type(clinic) is not str or not clinic:
        raise ValidationError(field, "must be a non-empty clinic name")
    if len(clinic.encode("utf-8", "surrogatepass")) > MAX_CLINIC_BYTES:
        raise ValidationError(field, f"must be at most {MAX_CLINIC_BYTES} bytes")


def validate_command(cmd: Command) -> None:
    """Check a command against the documented limits. Raises ValidationError."""
    validate_uint64(cmd.ts_ms, "ts_ms")
    if isinstance(cmd, Noop):
        return
    if isinstance(cmd, RegisterSession):
        validate_client_id(cmd.client_id)
        validate_uint64(cmd.nonce, "nonce")
        return
    if isinstance(cmd, SharePatient):
        validate_uint64(cmd.nonce, "nonce")
        validate_id(cmd.patient_id, "patient_id")
        validate_clinic(cmd.clinic, "clinic")
        for c in cmd.caller_clinics:
            validate_clinic(c, "caller_clinics")
        return
    if isinstance(cmd, SetSettings):
        validate_uint64(cmd.nonce, "nonce")
        names = [name for name, _ in cmd.changes]
        if not names or len(set(names)) != len(names):
            raise ValidationError("settings", "must name each changed setting once")
        validate_changes(dict(cmd.changes))
        validate_uint64(cmd.cluster_generation, "cluster_generation")
        if cmd.cluster_generation and (cmd.seed or set(names) != set(SETTING_NAMES)):
            raise ValidationError(
                "settings", "a cluster generation names every setting and is no seed"
            )
        return
    if isinstance(cmd, AuditAnchor):
        validate_uint64(cmd.node_id, "node_id")
        validate_uint64(cmd.seq, "seq")
        if cmd.node_id == 0:
            raise ValidationError("node_id", "must be a node id (1 or more)")
        if len(cmd.chain_hash) != AUDIT_CHAIN_HASH_BYTES:
            raise ValidationError("chain_hash", f"must be {AUDIT_CHAIN_HASH_BYTES} bytes")
        return
    validate_write_id(cmd.client_id, cmd.seq, cmd.ack_below)
    validate_uint64(cmd.session, "write_id.session")
    validate_id(cmd.patient_id, "patient_id")
    if not isinstance(cmd, ErasePatient) and cmd.auth is not None:
        for c in cmd.auth.clinics:
            validate_clinic(c, "auth.clinics")
        if cmd.auth.register_clinic is not None:
            validate_clinic(cmd.auth.register_clinic, "auth.register_clinic")
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
    "AUDIT_CHAIN_HASH_BYTES",
    "BATCH_CHECK",
    "BATCH_DELETE",
    "BATCH_PUT",
    "FORMAT_V1",
    "FORMAT_V2",
    "MAX_CLINIC_BYTES",
    "AuditAnchor",
    "AuthedWrite",
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
    "RegisterSession",
    "SetSettings",
    "SharePatient",
    "WaitKey",
    "WriteAuth",
    "WriteCommand",
    "decode_command",
    "encode_command",
    "validate_batch",
    "validate_clinic",
    "validate_command",
]
