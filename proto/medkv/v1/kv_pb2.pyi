from proto.medkv.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenSessionRequest(_message.Message):
    __slots__ = ("client_id", "partition")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    client_id: bytes
    partition: int
    def __init__(self, client_id: _Optional[bytes] = ..., partition: _Optional[int] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session", "partition", "ttl_ms", "max_results")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    session: int
    partition: int
    ttl_ms: int
    max_results: int
    def __init__(self, session: _Optional[int] = ..., partition: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., max_results: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("write_id", "patient_id", "record_id", "value")
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    write_id: _common_pb2.WriteId
    patient_id: str
    record_id: str
    value: bytes
    def __init__(self, write_id: _Optional[_Union[_common_pb2.WriteId, _Mapping]] = ..., patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("version", "read_state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    read_state: _common_pb2.ReadState
    def __init__(self, version: _Optional[int] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("patient_id", "record_id", "read", "at_version")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    AT_VERSION_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    record_id: str
    read: _common_pb2.ReadOptions
    at_version: int
    def __init__(self, patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., at_version: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("record", "read_state")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    record: _common_pb2.Record
    read_state: _common_pb2.ReadState
    def __init__(self, record: _Optional[_Union[_common_pb2.Record, _Mapping]] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ...) -> None: ...

class CompareAndSetRequest(_message.Message):
    __slots__ = ("write_id", "patient_id", "record_id", "value", "expected_version")
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    write_id: _common_pb2.WriteId
    patient_id: str
    record_id: str
    value: bytes
    expected_version: int
    def __init__(self, write_id: _Optional[_Union[_common_pb2.WriteId, _Mapping]] = ..., patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., value: _Optional[bytes] = ..., expected_version: _Optional[int] = ...) -> None: ...

class CompareAndSetResponse(_message.Message):
    __slots__ = ("version", "read_state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    read_state: _common_pb2.ReadState
    def __init__(self, version: _Optional[int] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("write_id", "patient_id", "record_id", "has_expected_version", "expected_version")
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    write_id: _common_pb2.WriteId
    patient_id: str
    record_id: str
    has_expected_version: bool
    expected_version: int
    def __init__(self, write_id: _Optional[_Union[_common_pb2.WriteId, _Mapping]] = ..., patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., has_expected_version: _Optional[bool] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("version", "read_state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    read_state: _common_pb2.ReadState
    def __init__(self, version: _Optional[int] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("patient_id", "record_id", "read", "limit", "before_version")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    record_id: str
    read: _common_pb2.ReadOptions
    limit: int
    before_version: int
    def __init__(self, patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., limit: _Optional[int] = ..., before_version: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("versions", "read_state")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Record]
    read_state: _common_pb2.ReadState
    def __init__(self, versions: _Optional[_Iterable[_Union[_common_pb2.Record, _Mapping]]] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ...) -> None: ...

class BatchOp(_message.Message):
    __slots__ = ("put", "delete", "check")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    put: BatchPut
    delete: BatchDelete
    check: BatchCheck
    def __init__(self, put: _Optional[_Union[BatchPut, _Mapping]] = ..., delete: _Optional[_Union[BatchDelete, _Mapping]] = ..., check: _Optional[_Union[BatchCheck, _Mapping]] = ...) -> None: ...

class BatchPut(_message.Message):
    __slots__ = ("record_id", "value")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    value: bytes
    def __init__(self, record_id: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class BatchDelete(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class BatchCheck(_message.Message):
    __slots__ = ("record_id", "expected_version")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    expected_version: int
    def __init__(self, record_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("write_id", "patient_id", "ops")
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    write_id: _common_pb2.WriteId
    patient_id: str
    ops: _containers.RepeatedCompositeFieldContainer[BatchOp]
    def __init__(self, write_id: _Optional[_Union[_common_pb2.WriteId, _Mapping]] = ..., patient_id: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[BatchOp, _Mapping]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("version", "read_state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    read_state: _common_pb2.ReadState
    def __init__(self, version: _Optional[int] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("partition", "read", "resume_token", "page_size", "limit")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    partition: int
    read: _common_pb2.ReadOptions
    resume_token: bytes
    page_size: int
    limit: int
    def __init__(self, partition: _Optional[int] = ..., read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., resume_token: _Optional[bytes] = ..., page_size: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("records", "read_state", "resume_token", "done")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    READ_STATE_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_common_pb2.Record]
    read_state: _common_pb2.ReadState
    resume_token: bytes
    done: bool
    def __init__(self, records: _Optional[_Iterable[_Union[_common_pb2.Record, _Mapping]]] = ..., read_state: _Optional[_Union[_common_pb2.ReadState, _Mapping]] = ..., resume_token: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class KVRequest(_message.Message):
    __slots__ = ("request_id", "put", "get", "cas", "delete", "history", "batch", "open_session", "timeout_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    put: PutRequest
    get: GetRequest
    cas: CompareAndSetRequest
    delete: DeleteRequest
    history: HistoryRequest
    batch: BatchRequest
    open_session: OpenSessionRequest
    timeout_ms: int
    def __init__(self, request_id: _Optional[int] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., cas: _Optional[_Union[CompareAndSetRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., history: _Optional[_Union[HistoryRequest, _Mapping]] = ..., batch: _Optional[_Union[BatchRequest, _Mapping]] = ..., open_session: _Optional[_Union[OpenSessionRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class KVResponse(_message.Message):
    __slots__ = ("request_id", "status", "put", "get", "cas", "delete", "history", "batch", "open_session")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    status: _common_pb2.Status
    put: PutResponse
    get: GetResponse
    cas: CompareAndSetResponse
    delete: DeleteResponse
    history: HistoryResponse
    batch: BatchResponse
    open_session: OpenSessionResponse
    def __init__(self, request_id: _Optional[int] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., get: _Optional[_Union[GetResponse, _Mapping]] = ..., cas: _Optional[_Union[CompareAndSetResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., history: _Optional[_Union[HistoryResponse, _Mapping]] = ..., batch: _Optional[_Union[BatchResponse, _Mapping]] = ..., open_session: _Optional[_Union[OpenSessionResponse, _Mapping]] = ...) -> None: ...

class BatchCommandsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[KVRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[KVRequest, _Mapping]]] = ...) -> None: ...

class BatchCommandsResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[KVResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[KVResponse, _Mapping]]] = ...) -> None: ...

class SharePatientRequest(_message.Message):
    __slots__ = ("patient_id", "clinic", "revoke")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLINIC_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    clinic: str
    revoke: bool
    def __init__(self, patient_id: _Optional[str] = ..., clinic: _Optional[str] = ..., revoke: _Optional[bool] = ...) -> None: ...

class SharePatientResponse(_message.Message):
    __slots__ = ("clinics", "index")
    CLINICS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    clinics: _containers.RepeatedScalarFieldContainer[str]
    index: int
    def __init__(self, clinics: _Optional[_Iterable[str]] = ..., index: _Optional[int] = ...) -> None: ...
