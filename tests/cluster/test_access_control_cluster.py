"""Access control on a real cluster, started as `scripts/cluster up` starts it
(mutual TLS and bearer tokens by default): every RPC of KV, Admin and
RaftTransport refuses every kind of bad token, every role is held to what it
may do, certificates are checked, sessions belong to their subject, and the
audit log records what happened without a byte of patient data in clear.

Requests here are raw bytes through generic stubs, so every method of the
three services is covered, including ones added later (the method list comes
from the service descriptors)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from client import Client, MedkvError, TlsConfig
from node.auth.certs import init_ca, issue_client, issue_node
from node.auth.tokens import load_signing_key, mint
from proto.medkv.v1 import admin_pb2, kv_pb2, raft_pb2
from tests.cluster.harness import LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

SERVICES = [
    (kv_pb2, "KV"), (admin_pb2, "Admin"), (raft_pb2, "RaftTransport"),
]
METHODS = [
    (f"/{mod.DESCRIPTOR.package}.{svc}/{m.name}", m.client_streaming, m.server_streaming)
    for mod, svc in SERVICES
    for m in mod.DESCRIPTOR.services_by_name[svc].methods
]
RAFT = {m for m, _, _ in METHODS if "/medkv.v1.RaftTransport/" in m}
CANARY = "CANARY-7f3e9a"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("acl"))
    try:
        yield c
    finally:
        stop_cluster(c)


def _signing_key(c: LocalCluster) -> Any:
    return load_signing_key(c.data_dir / "auth" / "token-signing.key")


def token(c: LocalCluster, sub: str, roles: list[str], clinics: list[str] = (), **kw: Any) -> str:  # type: ignore[assignment]
    return mint(_signing_key(c), subject=sub, roles=roles, clinics=list(clinics), **kw)


def channel(c: LocalCluster, cert: str = "client", certs: Path | None = None, node: int = 0) -> grpc.Channel:
    d = certs or c.data_dir / "certs"
    creds = grpc.ssl_channel_credentials(
        (c.data_dir / "certs" / "ca.pem").read_bytes(),
        (d / f"{cert}.key").read_bytes(), (d / f"{cert}.pem").read_bytes(),
    )
    return grpc.secure_channel(c.addresses[node], creds)


def call(ch: grpc.Channel, method: str, cs: bool, ss: bool, tok: str | None,
         body: bytes = b"", extra: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """One raw call; its status code."""
    return call_details(ch, method, cs, ss, tok, body, extra)[0]


def call_details(ch: grpc.Channel, method: str, cs: bool, ss: bool, tok: str | None,
                 body: bytes = b"", extra: tuple[tuple[str, str], ...] = ()
                 ) -> tuple[grpc.StatusCode, str]:
    """One raw call; its status code and message."""
    md = (*((("authorization", f"Bearer {tok}"),) if tok is not None else ()), *extra)
    ident = bytes
    try:
        if not cs and not ss:
            ch.unary_unary(method, request_serializer=ident, response_deserializer=ident)(
                body, metadata=md, timeout=10)
        elif not cs and ss:
            list(ch.unary_stream(method, request_serializer=ident, response_deserializer=ident)(
                body, metadata=md, timeout=10))
        elif cs and not ss:
            ch.stream_unary(method, request_serializer=ident, response_deserializer=ident)(
                iter([body]), metadata=md, timeout=10)
        else:
            list(ch.stream_stream(method, request_serializer=ident, response_deserializer=ident)(
                iter([body]), metadata=md, timeout=10))
    except grpc.RpcError as e:
        return e.code(), e.details() or ""  # type: ignore[no-any-return]
    return grpc.StatusCode.OK, ""


def _alg_none(c: LocalCluster) -> str:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return (b64({"alg": "none", "typ": "JWT"}) + "." + b64({
        "iss": "medkv-local", "aud": "medkv", "sub": "mallory", "role": ["admin"],
        "exp": now + 600, "iat": now}) + ".")


BAD_TOKENS = {
    "none": lambda c: None,
    "expired": lambda c: token(c, "t", ["admin", "clinician", "auditor", "analyst"], ["test"],
                               ttl_seconds=-120),
    "not yet valid": lambda c: token(c, "t", ["admin"], not_before=time.time() + 600),
    "wrong signature": lambda c: mint(ed25519.Ed25519PrivateKey.generate(), subject="t",
                                      roles=["admin"]),
    "wrong issuer": lambda c: token(c, "t", ["admin"], issuer="someone-else"),
    "wrong audience": lambda c: token(c, "t", ["admin"], audience="not-medkv"),
    "alg none": _alg_none,
    "garbage": lambda c: "not.a.jwt",
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_every_rpc_refuses_a_bad_token(cluster: LocalCluster, case: str) -> None:
    tok = BAD_TOKENS[case](cluster)
    ch = channel(cluster)
    try:
        for method, cs, ss in METHODS:
            code = call(ch, method, cs, ss, tok)
            want = grpc.StatusCode.PERMISSION_DENIED if method in RAFT else \
                grpc.StatusCode.UNAUTHENTICATED
            assert code == want, f"{case}: {method} answered {code.name}"
    finally:
        ch.close()
    with Client(cluster.addresses, tls=TlsConfig.from_dir(cluster.data_dir / "certs"),
                token=token(cluster, "ok", ["admin"]), timeout=20) as kv:
        assert all(n.up for n in kv.cluster_status().nodes)  # and nothing broke


# Which methods each role may call at all (scope aside); everything else is
# PERMISSION_DENIED. From the issue's words: clinician records, analyst follower
# reads and scans, auditor the audit log, admin cluster operations and keys.
ALLOWED = {
    "clinician": {"Put", "Get", "CompareAndSet", "Delete", "History", "Batch", "BatchCommands",
                  "OpenSession", "RoutingTable"},
    "analyst": {"Scan", "Get", "History", "BatchCommands", "RoutingTable", "ClusterStatus",
                "PartitionStatus", "GetSettings", "ListNodes"},
    "auditor": {"AuditQuery", "AuditVerify", "RoutingTable", "ClusterStatus", "PartitionStatus",
                "GetSettings", "ListNodes"},
    "admin": {"TransferLeader", "ErasePatient", "RotateDataKey", "RotateMasterKey", "KeyStatus",
              "SetSettings", "GetSettings", "ClusterStatus", "PartitionStatus", "RoutingTable",
              "OpenSession", "ListNodes", "InitCluster", "AddNode",
              "DecommissionNode"},
    "clinic-admin": {"SharePatient", "RoutingTable", "ClusterStatus", "PartitionStatus",
                     "GetSettings", "ListNodes"},
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_every_role_is_refused_what_it_may_not_do(cluster: LocalCluster, role: str) -> None:
    tok = token(cluster, f"{role}-1", [role], ["north"])
    ch = channel(cluster)
    try:
        for method, cs, ss in METHODS:
            name = method.rsplit("/", 1)[1]
            # An empty request names no patient, so a method the role holds may
            # still be refused for its scope (the tests below try scopes); here
            # the role either holds the method's permission or is told it lacks it.
            code, details = call_details(ch, method, cs, ss, tok)
            if method in RAFT:
                assert code == grpc.StatusCode.PERMISSION_DENIED, f"{role}: {method} {code.name}"
                assert "only node certificates" in details
            elif name not in ALLOWED[role]:
                assert code == grpc.StatusCode.PERMISSION_DENIED, f"{role}: {method} {code.name}"
                assert f"role {role} lacks it" in details, details
            else:
                assert code != grpc.StatusCode.UNAUTHENTICATED, f"{role}: {method}"
                assert "lacks it" not in details, f"{role}: {method}: {details}"
    finally:
        ch.close()


def _client(c: LocalCluster, tok: str, **kw: Any) -> Client:
    return Client(c.addresses, tls=TlsConfig.from_dir(c.data_dir / "certs"), token=tok,
                  timeout=20, **kw)


def test_a_clinician_reaches_only_their_clinics_patients(cluster: LocalCluster) -> None:
    north = token(cluster, "dr-north", ["clinician"], ["north"])
    south = token(cluster, "dr-south", ["clinician"], ["south"])
    with _client(cluster, north) as kv:
        v = kv.put("acl-p1", "allergies", b"penicillin")
        assert kv.get("acl-p1", "allergies").version == v
    with _client(cluster, south) as kv:
        for attempt in (lambda: kv.get("acl-p1", "allergies"),
                        lambda: kv.put("acl-p1", "allergies", b"overwritten"),
                        lambda: kv.history("acl-p1", "allergies")):
            with pytest.raises(MedkvError) as e:
                attempt()
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "acl-p1" not in str(e.value) and "north" not in str(e.value)
        # a patient nobody registered is refused with the same words: no existence leak
        with pytest.raises(MedkvError) as unknown:
            kv.get("acl-nobody", "allergies")
        assert unknown.value.code == grpc.StatusCode.PERMISSION_DENIED
    with _client(cluster, north) as kv:
        assert kv.get("acl-p1", "allergies").value == b"penicillin"  # unchanged


def test_break_glass_needs_a_reason_and_is_flagged(cluster: LocalCluster) -> None:
    with _client(cluster, token(cluster, "dr-north", ["clinician"], ["north"])) as kv:
        kv.put("acl-p2", "notes", b"x")
    er = token(cluster, "dr-er", ["clinician", "break-glass"], ["south"])
    with _client(cluster, er) as kv, pytest.raises(MedkvError) as e:
        kv.get("acl-p2", "notes")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "reason" in str(e.value)
    with _client(cluster, er, break_glass_reason="unconscious patient in ER") as kv:
        assert kv.get("acl-p2", "notes").value == b"x"


def test_an_analyst_reads_replicas_only_and_never_writes(cluster: LocalCluster) -> None:
    with _client(cluster, token(cluster, "dr-north", ["clinician"], ["north"])) as kv:
        kv.put("acl-p3", "labs", b"hb 13")
    with _client(cluster, token(cluster, "ana", ["analyst"])) as kv:
        with pytest.raises(MedkvError) as e:
            kv.get("acl-p3", "labs")  # linearizable: the leader's path
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        deadline = time.monotonic() + 20
        while True:
            try:
                assert kv.get("acl-p3", "labs", consistency="follower").value == b"hb 13"
                break
            except MedkvError as err:
                assert err.code == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(MedkvError) as w:
            kv.put("acl-p3", "labs", b"forged")
        assert w.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_an_admin_erases_but_cannot_read_records(cluster: LocalCluster) -> None:
    with _client(cluster, token(cluster, "dr-north", ["clinician"], ["north"])) as kv:
        kv.put("acl-p4", "labs", b"x")
    with _client(cluster, token(cluster, "ops", ["admin"])) as kv:
        with pytest.raises(MedkvError) as e:
            kv.get("acl-p4", "labs")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED and "record.read" in str(e.value)
        kv.erase_patient("acl-p4")


def test_a_session_belongs_to_its_subject(cluster: LocalCluster) -> None:
    """Bob, who knows Alice's client id and session id, cannot write in her session."""
    import grpc as g

    from proto.medkv.v1 import common_pb2, kv_pb2_grpc

    alice = token(cluster, "alice", ["clinician"], ["north"])
    bob = token(cluster, "bob", ["clinician"], ["north"])
    client_id = os.urandom(16)
    with _client(cluster, alice) as kv:
        kv.put("acl-p5", "a", b"1")  # registers the patient to north
        p = kv.routing_table().partitions
    from proto.placement import partition_of

    part = partition_of("acl-p5", p)
    for node in range(3):  # find the partition's leader by asking each node
        ch = channel(cluster, node=node)
        stub = kv_pb2_grpc.KVStub(ch)
        try:
            opened = stub.OpenSession(kv_pb2.OpenSessionRequest(client_id=client_id, partition=part),
                                      metadata=(("authorization", f"Bearer {alice}"),), timeout=10)
        except g.RpcError:
            ch.close()
            continue
        wid = common_pb2.WriteId(client_id=client_id, seq=1, session=opened.session)
        req = kv_pb2.PutRequest(patient_id="acl-p5", record_id="b", value=b"2", write_id=wid)
        with pytest.raises(g.RpcError) as e:
            stub.Put(req, metadata=(("authorization", f"Bearer {bob}"),), timeout=10)
        assert e.value.code() == g.StatusCode.PERMISSION_DENIED
        # and Alice's own write in it still applies at seq 1: Bob advanced nothing
        stub.Put(req, metadata=(("authorization", f"Bearer {alice}"),), timeout=10)
        ch.close()
        return
    pytest.fail("no node accepted OpenSession for the partition")


def test_certificates_are_checked(cluster: LocalCluster, tmp_path: Path) -> None:
    admin = token(cluster, "ops", ["admin"])
    # a client certificate on the Raft transport, even with an admin token
    ch = channel(cluster)
    assert call(ch, "/medkv.v1.RaftTransport/Stream", True, True, admin,
                raft_pb2.RaftBatch(from_node=2, to_node=1).SerializeToString()) \
        == grpc.StatusCode.PERMISSION_DENIED
    ch.close()
    # a node certificate claiming another node id
    ch = channel(cluster, cert="node-3")
    assert call(ch, "/medkv.v1.RaftTransport/Stream", True, True, None,
                raft_pb2.RaftBatch(from_node=2, to_node=1).SerializeToString()) \
        == grpc.StatusCode.PERMISSION_DENIED
    ch.close()
    # a certificate from another CA does not even connect
    other = tmp_path / "other"
    ca = init_ca(other)
    issue_client(ca, other, "client")
    issue_node(ca, other, 2, hosts=["127.0.0.1"])
    for cert in ("client", "node-2"):
        ch = channel(cluster, cert=cert, certs=other)
        assert call(ch, "/medkv.v1.Admin/ClusterStatus", False, False, admin) \
            == grpc.StatusCode.UNAVAILABLE
        ch.close()


def test_the_audit_log_records_accesses_and_holds_no_patient_data(cluster: LocalCluster) -> None:
    north = token(cluster, "dr-canary", ["clinician"], ["north"])
    with _client(cluster, north) as kv:
        kv.put(CANARY, f"{CANARY}-record", f"{CANARY}-value".encode())
        kv.get(CANARY, f"{CANARY}-record")
    with _client(cluster, token(cluster, "dr-south", ["clinician"], ["south"])) as kv, \
            pytest.raises(MedkvError):
        kv.get(CANARY, f"{CANARY}-record")
    time.sleep(0.5)  # group commit
    found = []
    for n in (1, 2, 3):
        audit = cluster.data_dir / f"node-{n}" / "audit"
        files = [p for p in audit.iterdir() if p.is_file()]
        assert files
        for p in files:
            data = p.read_bytes()
            for needle in (CANARY.encode(), b"dr-canary", b"north"):
                # the subject and clinic are not patient data, but the files are
                # sealed, so nothing at all is readable in them
                if needle in data:
                    found.append((p.name, needle))
    assert not found


def test_a_token_signed_by_another_library_is_accepted(cluster: LocalCluster) -> None:
    """Interop on a real node: a JWS built with raw `cryptography` signatures (not
    PyJWT, which minted every other token here) and the cluster's key works."""
    from node.auth.tokens import public_jwk

    key = _signing_key(cluster)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = {"alg": "EdDSA", "typ": "JWT", "kid": public_jwk(key.public_key())["kid"]}
    claims = {"iss": "medkv-local", "aud": "medkv", "sub": "interop", "role": "admin",
              "iat": now, "exp": now + 600}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    tok = f"{signing_input}.{b64(key.sign(signing_input.encode()))}"
    ch = channel(cluster)
    try:
        assert call(ch, "/medkv.v1.Admin/ClusterStatus", False, False, tok) == grpc.StatusCode.OK
        forged = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
        assert call(ch, "/medkv.v1.Admin/ClusterStatus", False, False, forged) \
            == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ch.close()
