from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[Consistency]
    LINEARIZABLE: _ClassVar[Consistency]
    FOLLOWER: _ClassVar[Consistency]
    BOUNDED: _ClassVar[Consistency]
CONSISTENCY_UNSPECIFIED: Consistency
LINEARIZABLE: Consistency
FOLLOWER: Consistency
BOUNDED: Consistency

class WriteId(_message.Message):
    __slots__ = ("client_id", "seq", "ack_below", "session")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACK_BELOW_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: bytes
    seq: int
    ack_below: int
    session: int
    def __init__(self, client_id: _Optional[bytes] = ..., seq: _Optional[int] = ..., ack_below: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("patient_id", "record_id", "value", "version", "deleted")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    record_id: str
    value: bytes
    version: int
    deleted: bool
    def __init__(self, patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ReadState(_message.Message):
    __slots__ = ("partition", "node_id", "applied_index", "commit_index", "lag_entries", "staleness_seconds", "from_leader")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    STALENESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FROM_LEADER_FIELD_NUMBER: _ClassVar[int]
    partition: int
    node_id: int
    applied_index: int
    commit_index: int
    lag_entries: int
    staleness_seconds: float
    from_leader: bool
    def __init__(self, partition: _Optional[int] = ..., node_id: _Optional[int] = ..., applied_index: _Optional[int] = ..., commit_index: _Optional[int] = ..., lag_entries: _Optional[int] = ..., staleness_seconds: _Optional[float] = ..., from_leader: _Optional[bool] = ...) -> None: ...

class ReadOptions(_message.Message):
    __slots__ = ("consistency", "max_staleness_ms", "min_version")
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    consistency: Consistency
    max_staleness_ms: int
    min_version: int
    def __init__(self, consistency: _Optional[_Union[Consistency, str]] = ..., max_staleness_ms: _Optional[int] = ..., min_version: _Optional[int] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message", "leader_hint", "error_kind", "epoch")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEADER_HINT_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    leader_hint: str
    error_kind: str
    epoch: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., leader_hint: _Optional[str] = ..., error_kind: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...
