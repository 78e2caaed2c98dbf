"""Clinic scope on a real secure cluster: the patient <-> clinic registration is
replicated state, checked where the data is (issue 11).

Four nodes, three replicas per partition, so some node holds no replica of a
patient's partition (its interceptor can only defer). Every identity is a token
minted from the cluster's signing key. Runs under the heavy-test lock:

    flock /tmp/medkv-heavy.lock python -m pytest tests/cluster/test_registry_cluster.py -x -q
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from client import Client, MedkvError, PermissionDenied
from client.auth import secure_channel_credentials, token_source
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import LocalCluster, start_cluster, stop_cluster

PATIENT = "CANARY-REGISTRY-PATIENT-7c1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("registry"), nodes=4, partitions=4)
    try:
        yield c
    finally:
        stop_cluster(c)


def as_(cluster: LocalCluster, name: str, roles: list[str], clinics: list[str],
        **kw: object) -> Client:
    return cluster.client(token=cluster.mint(name, roles, clinics), **kw)  # type: ignore[arg-type]


def not_yours(perm: str, clinics: str) -> str:
    return f"permission {perm} denied: the patient is not registered to your clinic(s) ({clinics})"


def test_clinic_scope_end_to_end(cluster: LocalCluster) -> None:
    north = as_(cluster, "dr-north", ["clinician"], ["north"])
    south = as_(cluster, "dr-south", ["clinician"], ["south"])
    ca_north = as_(cluster, "ca-north", ["clinic-admin"], ["north"])
    with north, south, ca_north:
        # the first write registers the patient to the writer's only clinic
        v1 = north.put(PATIENT, "allergies", b"penicillin")
        assert north.get(PATIENT, "allergies").value == b"penicillin"

        # another clinic: refused for reads and writes, in the policy's words,
        # and an unknown patient gets exactly the same answer
        with pytest.raises(PermissionDenied) as read:
            south.get(PATIENT, "allergies")
        assert not_yours("record.read", "south") in read.value.message
        with pytest.raises(PermissionDenied) as unknown:
            south.get(PATIENT + "-nobody", "allergies")
        assert unknown.value.message == read.value.message
        with pytest.raises(PermissionDenied) as write:
            south.put(PATIENT, "allergies", b"none")
        assert not_yours("record.write", "south") in write.value.message
        for e in (read, unknown, write):
            assert PATIENT not in e.value.message and "north" not in e.value.message
        assert north.get(PATIENT, "allergies").version == v1  # nothing applied

        # sharing: the patient's clinic admin adds south; south now reads and
        # writes, on the leader and on every follower (replicated registration)
        shared = ca_north.share_patient(PATIENT, "south")
        assert shared.clinics == ("north", "south")
        south.put(PATIENT, "notes", b"seen in south", timeout=10)
        for _ in range(6):
            rec = south.get(PATIENT, "allergies", consistency="follower",
                            min_version=shared.index)
            assert rec.value == b"penicillin"

        # revoking north: north is out; the last clinic cannot be revoked
        ca_south = as_(cluster, "ca-south", ["clinic-admin"], ["south"])
        with ca_south:
            assert ca_south.share_patient(PATIENT, "north", revoke=True).clinics == ("south",)
            with pytest.raises(PermissionDenied):
                north.get(PATIENT, "allergies")
            with pytest.raises(MedkvError) as last:
                ca_south.share_patient(PATIENT, "south", revoke=True)
            assert last.value.code == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(PermissionDenied):  # north's admin has no say any more
                ca_north.share_patient(PATIENT, "north")


def test_break_glass_and_erasure(cluster: LocalCluster) -> None:
    patient = PATIENT + "-er"
    east = as_(cluster, "dr-east", ["clinician"], ["east"])
    er_no_reason = as_(cluster, "er-0", ["clinician", "break-glass"], ["west"])
    er = as_(cluster, "er-1", ["clinician", "break-glass"], ["west"],
             break_glass_reason="unconscious patient, ER")
    admin = as_(cluster, "admin", ["admin"], [])
    with east, er_no_reason, er, admin:
        east.put(patient, "vitals", b"bp 120/80")
        with pytest.raises(PermissionDenied, match="break-glass access needs a reason"):
            er_no_reason.get(patient, "vitals")
        assert er.get(patient, "vitals").value == b"bp 120/80"
        er.put(patient, "notes", b"admitted via ER")  # applies; registers nothing
        assert east.get(patient, "notes").value == b"admitted via ER"

        # erasure removes the registration with the records: east is a stranger now,
        # and the next clinic's first write registers the patient afresh
        admin.erase_patient(patient)
        with pytest.raises(PermissionDenied):
            east.get(patient, "vitals")
        west = as_(cluster, "dr-west", ["clinician"], ["west"])
        with west:
            west.put(patient, "vitals", b"new")
            with pytest.raises(PermissionDenied):
                east.put(patient, "vitals", b"x")


def test_a_node_without_the_partition_defers_to_the_holders(cluster: LocalCluster) -> None:
    """The interceptor of a node that holds no replica lets the call through as
    deferred; that node can only redirect, and the holder decides."""
    patient = PATIENT + "-deferred"
    north = as_(cluster, "dr-north-2", ["clinician"], ["north"])
    with north:
        north.put(patient, "r", b"v")
        table = north.routing_table()
        holders = set(table.replicas[table.partition_of(patient)])
        addresses = dict(table.nodes)
    outsider = next(i for i in sorted(addresses) if i not in holders)
    tls = cluster.tls()
    assert tls is not None
    creds = secure_channel_credentials(
        tls.credentials(), token_source(cluster.mint("dr-south-2", ["clinician"], ["south"]))
    )
    with grpc.secure_channel(addresses[outsider], creds) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Get(kv_pb2.GetRequest(patient_id=patient, record_id="r",
                                       read=common_pb2.ReadOptions(
                                           consistency=common_pb2.LINEARIZABLE)), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # a redirect, not the data
        holder = sorted(holders)[0]
    with grpc.secure_channel(addresses[holder], creds) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Get(kv_pb2.GetRequest(patient_id=patient, record_id="r",
                                       read=common_pb2.ReadOptions(
                                           consistency=common_pb2.FOLLOWER)), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
