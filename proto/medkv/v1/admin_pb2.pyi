from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNKNOWN: _ClassVar[ReplicaRole]
    FOLLOWER_ROLE: _ClassVar[ReplicaRole]
    CANDIDATE_ROLE: _ClassVar[ReplicaRole]
    LEADER_ROLE: _ClassVar[ReplicaRole]
    LEARNER_ROLE: _ClassVar[ReplicaRole]
    PRE_CANDIDATE_ROLE: _ClassVar[ReplicaRole]

class MasterRotationStep(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASTER_STEP_UNSPECIFIED: _ClassVar[MasterRotationStep]
    MASTER_REWRAP: _ClassVar[MasterRotationStep]
    MASTER_INSTALL: _ClassVar[MasterRotationStep]
ROLE_UNKNOWN: ReplicaRole
FOLLOWER_ROLE: ReplicaRole
CANDIDATE_ROLE: ReplicaRole
LEADER_ROLE: ReplicaRole
LEARNER_ROLE: ReplicaRole
PRE_CANDIDATE_ROLE: ReplicaRole
MASTER_STEP_UNSPECIFIED: MasterRotationStep
MASTER_REWRAP: MasterRotationStep
MASTER_INSTALL: MasterRotationStep

class PrepareReplicaRequest(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    def __init__(self, partition: _Optional[int] = ...) -> None: ...

class PrepareReplicaResponse(_message.Message):
    __slots__ = ("node_id", "created")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    created: bool
    def __init__(self, node_id: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

class ChangeReplicasRequest(_message.Message):
    __slots__ = ("partition", "add", "remove")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    partition: int
    add: _containers.RepeatedScalarFieldContainer[int]
    remove: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, partition: _Optional[int] = ..., add: _Optional[_Iterable[int]] = ..., remove: _Optional[_Iterable[int]] = ...) -> None: ...

class ChangeReplicasResponse(_message.Message):
    __slots__ = ("leader", "voters")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    leader: int
    voters: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, leader: _Optional[int] = ..., voters: _Optional[_Iterable[int]] = ...) -> None: ...

class DropReplicaRequest(_message.Message):
    __slots__ = ("partition", "force")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    partition: int
    force: bool
    def __init__(self, partition: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DropReplicaResponse(_message.Message):
    __slots__ = ("node_id", "dropped")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    dropped: bool
    def __init__(self, node_id: _Optional[int] = ..., dropped: _Optional[bool] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node_id", "role", "term", "commit_index", "applied_index", "match_index", "lag_entries", "reachable", "out_of_service")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SERVICE_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    role: ReplicaRole
    term: int
    commit_index: int
    applied_index: int
    match_index: int
    lag_entries: int
    reachable: bool
    out_of_service: str
    def __init__(self, node_id: _Optional[int] = ..., role: _Optional[_Union[ReplicaRole, str]] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., match_index: _Optional[int] = ..., lag_entries: _Optional[int] = ..., reachable: _Optional[bool] = ..., out_of_service: _Optional[str] = ...) -> None: ...

class PartitionInfo(_message.Message):
    __slots__ = ("partition", "replicas", "leader", "term", "commit_index", "applied_index", "replica_status", "learners", "leaving", "moving")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STATUS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    MOVING_FIELD_NUMBER: _ClassVar[int]
    partition: int
    replicas: _containers.RepeatedScalarFieldContainer[int]
    leader: int
    term: int
    commit_index: int
    applied_index: int
    replica_status: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    learners: _containers.RepeatedScalarFieldContainer[int]
    leaving: _containers.RepeatedScalarFieldContainer[int]
    moving: bool
    def __init__(self, partition: _Optional[int] = ..., replicas: _Optional[_Iterable[int]] = ..., leader: _Optional[int] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., replica_status: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., learners: _Optional[_Iterable[int]] = ..., leaving: _Optional[_Iterable[int]] = ..., moving: _Optional[bool] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "up", "leaders", "replicas", "version", "uptime_seconds", "member_state")
    NODE_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    LEADERS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_STATE_FIELD_NUMBER: _ClassVar[int]
    node: NodeInfo
    up: bool
    leaders: int
    replicas: int
    version: str
    uptime_seconds: float
    member_state: str
    def __init__(self, node: _Optional[_Union[NodeInfo, _Mapping]] = ..., up: _Optional[bool] = ..., leaders: _Optional[int] = ..., replicas: _Optional[int] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., member_state: _Optional[str] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ("local_only",)
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    local_only: bool
    def __init__(self, local_only: _Optional[bool] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("answered_by", "partitions", "replication_factor", "nodes", "partition_info")
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_INFO_FIELD_NUMBER: _ClassVar[int]
    answered_by: int
    partitions: int
    replication_factor: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    partition_info: _containers.RepeatedCompositeFieldContainer[PartitionInfo]
    def __init__(self, answered_by: _Optional[int] = ..., partitions: _Optional[int] = ..., replication_factor: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., partition_info: _Optional[_Iterable[_Union[PartitionInfo, _Mapping]]] = ...) -> None: ...

class PartitionStatusRequest(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    def __init__(self, partition: _Optional[int] = ...) -> None: ...

class PartitionStatusResponse(_message.Message):
    __slots__ = ("answered_by", "info")
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    answered_by: int
    info: PartitionInfo
    def __init__(self, answered_by: _Optional[int] = ..., info: _Optional[_Union[PartitionInfo, _Mapping]] = ...) -> None: ...

class RoutingTableRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoutingTableResponse(_message.Message):
    __slots__ = ("epoch", "partitions", "replication_factor", "virtual_nodes", "nodes", "partition_info")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_NODES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_INFO_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    partitions: int
    replication_factor: int
    virtual_nodes: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    partition_info: _containers.RepeatedCompositeFieldContainer[PartitionInfo]
    def __init__(self, epoch: _Optional[int] = ..., partitions: _Optional[int] = ..., replication_factor: _Optional[int] = ..., virtual_nodes: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., partition_info: _Optional[_Iterable[_Union[PartitionInfo, _Mapping]]] = ...) -> None: ...

class TransferLeaderRequest(_message.Message):
    __slots__ = ("partition", "target_node")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    partition: int
    target_node: int
    def __init__(self, partition: _Optional[int] = ..., target_node: _Optional[int] = ...) -> None: ...

class TransferLeaderResponse(_message.Message):
    __slots__ = ("leader",)
    LEADER_FIELD_NUMBER: _ClassVar[int]
    leader: int
    def __init__(self, leader: _Optional[int] = ...) -> None: ...

class ErasePatientRequest(_message.Message):
    __slots__ = ("client_id", "seq", "patient_id", "session")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    client_id: bytes
    seq: int
    patient_id: str
    session: int
    def __init__(self, client_id: _Optional[bytes] = ..., seq: _Optional[int] = ..., patient_id: _Optional[str] = ..., session: _Optional[int] = ...) -> None: ...

class ClusterSettings(_message.Message):
    __slots__ = ("session_ttl_ms", "history_retention", "max_sessions", "max_results_per_session")
    SESSION_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    session_ttl_ms: int
    history_retention: int
    max_sessions: int
    max_results_per_session: int
    def __init__(self, session_ttl_ms: _Optional[int] = ..., history_retention: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_results_per_session: _Optional[int] = ...) -> None: ...

class SetSettingsRequest(_message.Message):
    __slots__ = ("partition", "session_ttl_ms", "history_retention", "max_sessions", "max_results_per_session")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    session_ttl_ms: int
    history_retention: int
    max_sessions: int
    max_results_per_session: int
    def __init__(self, partition: _Optional[int] = ..., session_ttl_ms: _Optional[int] = ..., history_retention: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_results_per_session: _Optional[int] = ...) -> None: ...

class SetSettingsResponse(_message.Message):
    __slots__ = ("partition", "settings", "generation")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    settings: ClusterSettings
    generation: int
    def __init__(self, partition: _Optional[int] = ..., settings: _Optional[_Union[ClusterSettings, _Mapping]] = ..., generation: _Optional[int] = ...) -> None: ...

class GetSettingsRequest(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    def __init__(self, partition: _Optional[int] = ...) -> None: ...

class GetSettingsResponse(_message.Message):
    __slots__ = ("partition", "settings", "generation", "answered_by", "applied_index", "open_sessions", "cluster_generation_applied", "cluster_settings", "cluster_generation")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_GENERATION_APPLIED_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_GENERATION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    settings: ClusterSettings
    generation: int
    answered_by: int
    applied_index: int
    open_sessions: int
    cluster_generation_applied: int
    cluster_settings: ClusterSettings
    cluster_generation: int
    def __init__(self, partition: _Optional[int] = ..., settings: _Optional[_Union[ClusterSettings, _Mapping]] = ..., generation: _Optional[int] = ..., answered_by: _Optional[int] = ..., applied_index: _Optional[int] = ..., open_sessions: _Optional[int] = ..., cluster_generation_applied: _Optional[int] = ..., cluster_settings: _Optional[_Union[ClusterSettings, _Mapping]] = ..., cluster_generation: _Optional[int] = ...) -> None: ...

class SyncSettingsRequest(_message.Message):
    __slots__ = ("partition", "generation")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    generation: int
    def __init__(self, partition: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class SyncSettingsResponse(_message.Message):
    __slots__ = ("partition", "generation", "proposed")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_FIELD_NUMBER: _ClassVar[int]
    partition: int
    generation: int
    proposed: bool
    def __init__(self, partition: _Optional[int] = ..., generation: _Optional[int] = ..., proposed: _Optional[bool] = ...) -> None: ...

class ErasePatientResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class DataKeyStatus(_message.Message):
    __slots__ = ("key_id", "created", "active", "values")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key_id: int
    created: str
    active: bool
    values: int
    def __init__(self, key_id: _Optional[int] = ..., created: _Optional[str] = ..., active: _Optional[bool] = ..., values: _Optional[int] = ...) -> None: ...

class ReEncryptionStatus(_message.Message):
    __slots__ = ("state", "target_key_id", "done", "total_estimate", "resealed", "percent", "error", "retired_key_ids")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    RESEALED_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETIRED_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    state: str
    target_key_id: int
    done: int
    total_estimate: int
    resealed: int
    percent: float
    error: str
    retired_key_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, state: _Optional[str] = ..., target_key_id: _Optional[int] = ..., done: _Optional[int] = ..., total_estimate: _Optional[int] = ..., resealed: _Optional[int] = ..., percent: _Optional[float] = ..., error: _Optional[str] = ..., retired_key_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class KeyStatusRequest(_message.Message):
    __slots__ = ("count_values",)
    COUNT_VALUES_FIELD_NUMBER: _ClassVar[int]
    count_values: bool
    def __init__(self, count_values: _Optional[bool] = ...) -> None: ...

class KeyStatusResponse(_message.Message):
    __slots__ = ("node_id", "keyring_master_key_id", "key_file_master_key_id", "staged_master_key_id", "active_data_key_id", "data_keys", "reencryption")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYRING_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FILE_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STAGED_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DATA_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    REENCRYPTION_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    keyring_master_key_id: str
    key_file_master_key_id: str
    staged_master_key_id: str
    active_data_key_id: int
    data_keys: _containers.RepeatedCompositeFieldContainer[DataKeyStatus]
    reencryption: ReEncryptionStatus
    def __init__(self, node_id: _Optional[int] = ..., keyring_master_key_id: _Optional[str] = ..., key_file_master_key_id: _Optional[str] = ..., staged_master_key_id: _Optional[str] = ..., active_data_key_id: _Optional[int] = ..., data_keys: _Optional[_Iterable[_Union[DataKeyStatus, _Mapping]]] = ..., reencryption: _Optional[_Union[ReEncryptionStatus, _Mapping]] = ...) -> None: ...

class RotateDataKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateDataKeyResponse(_message.Message):
    __slots__ = ("node_id", "active_data_key_id", "started", "reencryption")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_DATA_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    REENCRYPTION_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    active_data_key_id: int
    started: bool
    reencryption: ReEncryptionStatus
    def __init__(self, node_id: _Optional[int] = ..., active_data_key_id: _Optional[int] = ..., started: _Optional[bool] = ..., reencryption: _Optional[_Union[ReEncryptionStatus, _Mapping]] = ...) -> None: ...

class RotateMasterKeyRequest(_message.Message):
    __slots__ = ("new_master_key_id", "step")
    NEW_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    new_master_key_id: str
    step: MasterRotationStep
    def __init__(self, new_master_key_id: _Optional[str] = ..., step: _Optional[_Union[MasterRotationStep, str]] = ...) -> None: ...

class RotateMasterKeyResponse(_message.Message):
    __slots__ = ("node_id", "keyring_master_key_id", "key_file_master_key_id", "staged_master_key_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYRING_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FILE_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STAGED_MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    keyring_master_key_id: str
    key_file_master_key_id: str
    staged_master_key_id: str
    def __init__(self, node_id: _Optional[int] = ..., keyring_master_key_id: _Optional[str] = ..., key_file_master_key_id: _Optional[str] = ..., staged_master_key_id: _Optional[str] = ...) -> None: ...

class AuditQueryRequest(_message.Message):
    __slots__ = ("patient_id", "subject", "since", "until", "limit", "break_glass_only")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_ONLY_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    subject: str
    since: float
    until: float
    limit: int
    break_glass_only: bool
    def __init__(self, patient_id: _Optional[str] = ..., subject: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., limit: _Optional[int] = ..., break_glass_only: _Optional[bool] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("node", "seq", "json")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    node: int
    seq: int
    json: str
    def __init__(self, node: _Optional[int] = ..., seq: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class AuditQueryResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class AuditVerifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditVerifyResponse(_message.Message):
    __slots__ = ("node", "ok", "entries", "head", "anchored_head", "problems")
    NODE_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_HEAD_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    node: int
    ok: bool
    entries: int
    head: str
    anchored_head: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[int] = ..., ok: _Optional[bool] = ..., entries: _Optional[int] = ..., head: _Optional[str] = ..., anchored_head: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemberInfo(_message.Message):
    __slots__ = ("node_id", "address", "client_address", "state", "replicas", "system_voter")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_VOTER_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    client_address: str
    state: str
    replicas: int
    system_voter: bool
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., client_address: _Optional[str] = ..., state: _Optional[str] = ..., replicas: _Optional[int] = ..., system_voter: _Optional[bool] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("cluster_id", "epoch", "members", "answered_by", "system_leader", "system_applied")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_LEADER_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_APPLIED_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    epoch: int
    members: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    answered_by: int
    system_leader: int
    system_applied: int
    def __init__(self, cluster_id: _Optional[str] = ..., epoch: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ..., answered_by: _Optional[int] = ..., system_leader: _Optional[int] = ..., system_applied: _Optional[int] = ...) -> None: ...

class InitClusterRequest(_message.Message):
    __slots__ = ("partitions", "replication", "cluster_id")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    partitions: int
    replication: int
    cluster_id: str
    def __init__(self, partitions: _Optional[int] = ..., replication: _Optional[int] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class InitNodeResult(_message.Message):
    __slots__ = ("node_id", "ok", "already", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    ok: bool
    already: bool
    error: str
    def __init__(self, node_id: _Optional[int] = ..., ok: _Optional[bool] = ..., already: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class InitClusterResponse(_message.Message):
    __slots__ = ("cluster_id", "already_initialized", "partitions", "replication", "nodes")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_INITIALIZED_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    already_initialized: bool
    partitions: int
    replication: int
    nodes: _containers.RepeatedCompositeFieldContainer[InitNodeResult]
    def __init__(self, cluster_id: _Optional[str] = ..., already_initialized: _Optional[bool] = ..., partitions: _Optional[int] = ..., replication: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[InitNodeResult, _Mapping]]] = ...) -> None: ...

class AddNodeRequest(_message.Message):
    __slots__ = ("node_id", "address", "client_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    client_address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., client_address: _Optional[str] = ...) -> None: ...

class AddNodeResponse(_message.Message):
    __slots__ = ("node_id", "state", "epoch", "already")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    state: str
    epoch: int
    already: bool
    def __init__(self, node_id: _Optional[int] = ..., state: _Optional[str] = ..., epoch: _Optional[int] = ..., already: _Optional[bool] = ...) -> None: ...

class DecommissionNodeRequest(_message.Message):
    __slots__ = ("node_id", "dead")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    dead: bool
    def __init__(self, node_id: _Optional[int] = ..., dead: _Optional[bool] = ...) -> None: ...

class DecommissionNodeResponse(_message.Message):
    __slots__ = ("node_id", "state", "replicas", "epoch")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    state: str
    replicas: int
    epoch: int
    def __init__(self, node_id: _Optional[int] = ..., state: _Optional[str] = ..., replicas: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...
