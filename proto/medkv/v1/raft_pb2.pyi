from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BootstrapRequest(_message.Message):
    __slots__ = ("from_node", "to_node", "cluster_state")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_STATE_FIELD_NUMBER: _ClassVar[int]
    from_node: int
    to_node: int
    cluster_state: bytes
    def __init__(self, from_node: _Optional[int] = ..., to_node: _Optional[int] = ..., cluster_state: _Optional[bytes] = ...) -> None: ...

class BootstrapAck(_message.Message):
    __slots__ = ("already",)
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    already: bool
    def __init__(self, already: _Optional[bool] = ...) -> None: ...

class GroupMessage(_message.Message):
    __slots__ = ("group", "message")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    group: int
    message: bytes
    def __init__(self, group: _Optional[int] = ..., message: _Optional[bytes] = ...) -> None: ...

class CoalescedHeartbeat(_message.Message):
    __slots__ = ("group", "term", "commit", "context", "response", "reject")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    group: int
    term: int
    commit: int
    context: bytes
    response: bool
    reject: bool
    def __init__(self, group: _Optional[int] = ..., term: _Optional[int] = ..., commit: _Optional[int] = ..., context: _Optional[bytes] = ..., response: _Optional[bool] = ..., reject: _Optional[bool] = ...) -> None: ...

class ClosedTimestamp(_message.Message):
    __slots__ = ("group", "term", "index", "time_ms")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    group: int
    term: int
    index: int
    time_ms: int
    def __init__(self, group: _Optional[int] = ..., term: _Optional[int] = ..., index: _Optional[int] = ..., time_ms: _Optional[int] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("from_node", "to_node", "cluster_id", "messages", "heartbeats", "closed")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    from_node: int
    to_node: int
    cluster_id: int
    messages: _containers.RepeatedCompositeFieldContainer[GroupMessage]
    heartbeats: _containers.RepeatedCompositeFieldContainer[CoalescedHeartbeat]
    closed: _containers.RepeatedCompositeFieldContainer[ClosedTimestamp]
    def __init__(self, from_node: _Optional[int] = ..., to_node: _Optional[int] = ..., cluster_id: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[GroupMessage, _Mapping]]] = ..., heartbeats: _Optional[_Iterable[_Union[CoalescedHeartbeat, _Mapping]]] = ..., closed: _Optional[_Iterable[_Union[ClosedTimestamp, _Mapping]]] = ...) -> None: ...

class RaftBatchAck(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: int
    def __init__(self, received: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("from_node", "to_node", "group", "header", "offset", "data", "last", "total_size")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    from_node: int
    to_node: int
    group: int
    header: bytes
    offset: int
    data: bytes
    last: bool
    total_size: int
    def __init__(self, from_node: _Optional[int] = ..., to_node: _Optional[int] = ..., group: _Optional[int] = ..., header: _Optional[bytes] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., total_size: _Optional[int] = ...) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
