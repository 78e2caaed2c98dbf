"""The committed generated modules must be exactly what scripts/gen-proto makes."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto" / "medkv" / "v1"


def test_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), "--out", str(tmp_path)], check=True)
    fresh = tmp_path / "proto" / "medkv" / "v1"
    generated = sorted(p.name for p in fresh.iterdir() if "_pb2" in p.name)
    committed = sorted(p.name for p in PROTO_DIR.iterdir() if "_pb2" in p.name)
    assert generated == committed, "a .proto file was added or removed without scripts/gen-proto"
    _, mismatch, errors = filecmp.cmpfiles(fresh, PROTO_DIR, generated, shallow=False)
    assert not mismatch and not errors, (
        f"generated code is stale for {mismatch + errors}: run scripts/gen-proto and commit"
    )


def test_every_write_request_carries_a_write_id() -> None:
    from proto.medkv.v1 import kv_pb2

    for name in ("PutRequest", "CompareAndSetRequest", "DeleteRequest", "BatchRequest"):
        fields = getattr(kv_pb2, name).DESCRIPTOR.fields_by_name
        assert fields["write_id"].message_type.full_name == "medkv.v1.WriteId", name
    from proto.medkv.v1 import admin_pb2, common_pb2

    assert "session" in common_pb2.WriteId.DESCRIPTOR.fields_by_name
    assert "session" in admin_pb2.ErasePatientRequest.DESCRIPTOR.fields_by_name


def test_every_read_reply_states_version_and_applied_index() -> None:
    from proto.medkv.v1 import common_pb2, kv_pb2

    assert "version" in common_pb2.Record.DESCRIPTOR.fields_by_name
    assert "applied_index" in common_pb2.ReadState.DESCRIPTOR.fields_by_name
    for name in ("GetResponse", "HistoryResponse", "ScanResponse"):
        assert "read_state" in getattr(kv_pb2, name).DESCRIPTOR.fields_by_name, name


def test_services_are_complete() -> None:
    from proto.medkv.v1 import admin_pb2, kv_pb2, raft_pb2

    kv = {m.name for m in kv_pb2.DESCRIPTOR.services_by_name["KV"].methods}
    assert kv == {
        "OpenSession", "Put", "Get", "CompareAndSet", "Delete", "History", "Batch", "Scan",
        "BatchCommands", "SharePatient",
    }
    admin = {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods}
    assert {
        "ClusterStatus", "PartitionStatus", "RoutingTable", "TransferLeader", "SetSettings",
        "GetSettings", "AuditQuery", "AuditVerify", "PrepareReplica", "ChangeReplicas",
        "DropReplica", "SyncSettings",
    } <= admin
    raft = raft_pb2.DESCRIPTOR.services_by_name["RaftTransport"].methods_by_name
    assert raft["Stream"].client_streaming and raft["Stream"].server_streaming
    assert raft["Snapshot"].client_streaming
