"""The interceptor over a real grpc.aio server with mutual TLS on 127.0.0.1.

The servicers are small in-test implementations of the medkv services (not the
node yet): what is under test is who gets through to them, what the callers
are told, and what the audit log records. Every call is real HTTP/2 + TLS.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client.auth import (
    FileToken,
    StaticToken,
    call_metadata,
    secure_channel_credentials,
    token_source,
)
from node.auth.audit import AUDIT_DIR, AuditKeys, AuditLog, AuditWriter, read_entries, verify
from node.auth.identity import Identity
from node.auth.interceptor import AccessControl, AuthInterceptor, current_call
from node.auth.policy import InMemoryRegistry, Registration
from node.auth.tokens import TokenSettings, mint
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import create_key_file
from node.crypto.keyring import open_keyring
from node.logfmt import REQUEST_ID
from node.tls import TlsSettings
from proto.medkv.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    kv_pb2,
    kv_pb2_grpc,
    raft_pb2,
    raft_pb2_grpc,
)
from tests.auth.conftest import Pki, SigningKeys

CANARY = "CANARY-PATIENT-55e1"
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


@dataclass
class Seen:
    """What reached the servicers (and who the servicer was told was calling)."""

    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, subject)
    raft_batches: int = 0
    request_ids: list[str] = field(default_factory=list)  # node.logfmt.REQUEST_ID as served


def _who() -> str:
    c = current_call()
    return c.identity.subject if c else "?"


class KV(kv_pb2_grpc.KVServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen
        self.store: dict[tuple[str, str], bytes] = {}

    async def Put(self, request: Any, context: Any) -> Any:
        self.seen.calls.append(("Put", _who()))
        self.store[(request.patient_id, request.record_id)] = request.value
        return kv_pb2.PutResponse(version=len(self.store))

    async def Get(self, request: Any, context: Any) -> Any:
        self.seen.calls.append(("Get", _who()))
        value = self.store.get((request.patient_id, request.record_id))
        if value is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such record")
        return kv_pb2.GetResponse(record=common_pb2.Record(
            patient_id=request.patient_id, record_id=request.record_id, value=value, version=1))

    async def Scan(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.seen.calls.append(("Scan", _who()))
        for i in range(2):
            yield kv_pb2.ScanResponse(done=i == 1)

    async def BatchCommands(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            out = []
            for req in batch.requests:
                self.seen.calls.append((req.WhichOneof("request") or "", _who()))
                r = kv_pb2.KVResponse(request_id=req.request_id)
                if req.WhichOneof("request") == "get":
                    r.get.CopyFrom(kv_pb2.GetResponse())
                else:
                    r.put.CopyFrom(kv_pb2.PutResponse(version=1))
                out.append(r)
            yield kv_pb2.BatchCommandsResponse(responses=out)


class Admin(admin_pb2_grpc.AdminServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ClusterStatus(self, request: Any, context: Any) -> Any:
        self.seen.calls.append(("ClusterStatus", _who()))
        self.seen.request_ids.append(REQUEST_ID.get())
        return admin_pb2.ClusterStatusResponse(answered_by=1)

    async def TransferLeader(self, request: Any, context: Any) -> Any:
        self.seen.calls.append(("TransferLeader", _who()))
        return admin_pb2.TransferLeaderResponse(leader=request.target_node)


class Raft(raft_pb2_grpc.RaftTransportServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def Stream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            self.seen.raft_batches += 1
        yield raft_pb2.RaftBatchAck(received=self.seen.raft_batches)

    async def Snapshot(self, request_iterator: Any, context: Any) -> Any:
        n = 0
        async for _ in request_iterator:
            n += 1
        self.seen.calls.append(("Snapshot", _who()))
        return raft_pb2.SnapshotAck(accepted=True, message=f"{n} chunks")


class Cluster:
    """One server, and channels for each kind of caller."""

    def __init__(self, pki: Pki, keys: SigningKeys, tmp: Path) -> None:
        self.pki, self.keys, self.tmp = pki, keys, tmp
        self.seen = Seen()
        key_file = tmp / "master.key"
        create_key_file(key_file)
        keyring = open_keyring(tmp / "data", key_file, create=True)
        self.codec = EnvelopeCodec(keyring)
        self.audit_keys = AuditKeys.from_keyring(keyring)
        self.audit_dir = tmp / "data" / AUDIT_DIR
        self.log = AuditLog(self.audit_dir, self.codec, self.audit_keys, log_id="node-1", node_id=1)
        self.registry = InMemoryRegistry({CANARY: {"north"}, "p-south": {"south"}})
        self.channels: list[grpc.aio.Channel] = []

    async def start(self) -> None:
        self.writer = AuditWriter(self.log)
        self.writer.start()
        ac = AccessControl(verifier=self.keys.verifier(), registry=self.registry,
                           audit=self.writer, partitions=16)
        self.server = grpc.aio.server(interceptors=[AuthInterceptor(ac)])
        kv_pb2_grpc.add_KVServicer_to_server(KV(self.seen), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(Admin(self.seen), self.server)
        raft_pb2_grpc.add_RaftTransportServicer_to_server(Raft(self.seen), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), self.server)
        creds = self.tls(self.pki.dir, "node-1").server_credentials()
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()

    async def stop(self) -> None:
        for ch in self.channels:
            await ch.close()
        await self.server.stop(None)
        await self.writer.close()

    @staticmethod
    def tls(d: Path, name: str) -> TlsSettings:
        return TlsSettings(d / "ca.pem", d / f"{name}.pem", d / f"{name}.key")

    def channel(self, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
        ch = grpc.aio.secure_channel(f"127.0.0.1:{self.port}", creds)
        self.channels.append(ch)
        return ch

    def client(self, name: str = "client", d: Path | None = None) -> grpc.aio.Channel:
        return self.channel(self.tls(d or self.pki.dir, name).channel_credentials())

    def token(self, sub: str, roles: Sequence[str], clinics: Sequence[str] = (), **kw: Any) -> str:
        return mint(self.keys.ed, subject=sub, roles=roles, clinics=clinics, **kw)


def md(token: str | None, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return ((("authorization", f"Bearer {token}"),) if token else ()) + tuple(extra)


async def code_of(aw: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await aw
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def get(patient: str, record: str = "r1", consistency: int = 0) -> kv_pb2.GetRequest:
    return kv_pb2.GetRequest(patient_id=patient, record_id=record,
                             read=common_pb2.ReadOptions(consistency=consistency))


def put(patient: str, record: str = "r1") -> kv_pb2.PutRequest:
    return kv_pb2.PutRequest(patient_id=patient, record_id=record, value=b"v")


def run(pki: Pki, keys: SigningKeys, tmp: Path, body: Any) -> Cluster:
    cluster = Cluster(pki, keys, tmp)

    async def main() -> None:
        await cluster.start()
        try:
            await asyncio.wait_for(body(cluster), 120)
        finally:
            await cluster.stop()

    asyncio.run(main())
    return cluster


def entries(c: Cluster) -> list[dict[str, Any]]:
    out = []
    for _, e in read_entries(c.audit_dir, c.codec, "node-1"):
        assert e is not None
        out.append(e)
    return out


def test_kv_and_admin_calls_by_token(pki: Pki, keys: SigningKeys, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        kv = kv_pb2_grpc.KVStub(c.client())
        admin = admin_pb2_grpc.AdminStub(c.client())
        alice = c.token("alice", ["clinician"], ["north"])
        # A clinician writes and reads her clinic's patient.
        assert (await code_of(kv.Put(put(CANARY), metadata=md(alice))))[0] == grpc.StatusCode.OK
        r = await kv.Get(get(CANARY), metadata=md(alice))
        assert r.record.value == b"v"
        # ... and not the other clinic's: refused before the servicer, naming the permission.
        code, msg = await code_of(kv.Get(get("p-south"), metadata=md(alice)))
        assert code == DENIED
        assert msg == ("permission record.read denied: the patient is not registered to your "
                       "clinic(s) (north)")
        # A servicer error passes through (and is audited with its code).
        assert (await code_of(kv.Get(get(CANARY, "nope"), metadata=md(alice))))[0] == \
            grpc.StatusCode.NOT_FOUND
        # No token, a bad one, an expired one, a wrong audience, alg none: UNAUTHENTICATED.
        for token, words in (
            (None, "no bearer token"),
            ("garbage", "not a well-formed JWT"),
            (c.token("alice", ["clinician"], ["north"], now=time.time() - 7200), "token expired"),
            (c.token("alice", ["clinician"], ["north"], not_before=time.time() + 600),
             "not valid before"),
            (c.token("alice", ["clinician"], ["north"], audience="billing"), "audience"),
            (c.token("alice", ["clinician"], ["north"], issuer="https://evil"), "issuer"),
            ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", "'none' is not accepted"),
            (mint(keys.other_ed, subject="alice", roles=["admin"]), "not a trusted key"),
        ):
            code, msg = await code_of(kv.Get(get(CANARY), metadata=md(token)))
            assert code == UNAUTH and words in msg, (code, msg)
            assert token is None or token not in msg
        assert (await code_of(kv.Get(get(CANARY), metadata=(("authorization", "Basic x"),))))[0] \
            == UNAUTH
        # Roles: an analyst scans and reads from replicas, never writes.
        ana = c.token("ana", ["analyst"])
        pages = [p async for p in kv.Scan(kv_pb2.ScanRequest(partition=3), metadata=md(ana))]
        assert len(pages) == 2
        assert (await code_of(kv.Get(get(CANARY, consistency=common_pb2.FOLLOWER),
                                     metadata=md(ana))))[0] == grpc.StatusCode.OK
        code, msg = await code_of(kv.Put(put(CANARY), metadata=md(ana)))
        assert code == DENIED and "record.write" in msg
        code, msg = await code_of(kv.Get(get(CANARY), metadata=md(ana)))
        assert code == DENIED and "reads from replicas only" in msg
        # A clinician cannot scan (a unary-stream refusal).
        code, msg = await code_of(kv.Scan(kv_pb2.ScanRequest(partition=3), metadata=md(alice))
                                  .read())
        assert code == DENIED and "record.scan" in msg
        # Admin: cluster operations, no record contents.
        root = c.token("root", ["admin"])
        r2 = await admin.TransferLeader(admin_pb2.TransferLeaderRequest(partition=1, target_node=2),
                                        metadata=md(root))
        assert r2.leader == 2
        assert (await code_of(kv.Get(get(CANARY), metadata=md(root))))[0] == DENIED
        assert (await code_of(admin.TransferLeader(admin_pb2.TransferLeaderRequest(),
                                                   metadata=md(alice))))[0] == DENIED
        # Break-glass: another clinic's patient with a reason, flagged.
        er = c.token("dr-er", ["clinician", "break-glass"], ["north"])
        code, msg = await code_of(kv.Get(get("p-south"), metadata=md(er)))
        assert code == DENIED and "needs a reason" in msg
        c.seen.calls.clear()
        await code_of(kv.Get(get("p-south"), metadata=md(
            er, *call_metadata(break_glass_reason="unconscious, no records at hand"))))
        assert c.seen.calls == [("Get", "dr-er")]  # the servicer saw who was calling
        # Health needs only the certificate; a node certificate alone may ask for status.
        h = health_pb2_grpc.HealthStub(c.client())
        assert (await h.Check(health_pb2.HealthCheckRequest())).status == \
            health_pb2.HealthCheckResponse.SERVING
        node_admin = admin_pb2_grpc.AdminStub(c.client("node-2"))
        assert (await node_admin.ClusterStatus(admin_pb2.ClusterStatusRequest())).answered_by == 1
        code, msg = await code_of(kv_pb2_grpc.KVStub(c.client("node-2")).Get(get(CANARY)))
        assert code == DENIED and "role node lacks it" in msg

    c = run(pki, keys, tmp_path, body)
    log = entries(c)
    assert verify(c.audit_dir, c.codec, c.audit_keys, "node-1").ok
    outcomes = [(e["subject"], e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in log]
    assert ("alice", "Put", "OK") in outcomes
    assert ("alice", "Get", "PERMISSION_DENIED") in outcomes
    assert ("alice", "Get", "NOT_FOUND") in outcomes
    assert ("", "Get", "UNAUTHENTICATED") in outcomes  # who could not be told, what was tried
    assert ("ana", "Scan", "OK") in outcomes
    assert ("root", "TransferLeader", "OK") in outcomes
    assert ("node-2", "ClusterStatus", "OK") in outcomes
    assert not any(m == "Check" for _, m, _ in outcomes)  # health checks touch no data
    bg = [e for e in log if e["break_glass"]]
    assert len(bg) == 1 and bg[0]["subject"] == "dr-er" and bg[0]["outcome"] == "NOT_FOUND"
    assert bg[0]["break_glass_reason"] == "unconscious, no records at hand"
    refused = next(e for e in log if e["outcome"] == "PERMISSION_DENIED")
    assert refused["reason"].startswith("permission ")
    assert refused["patient"] == c.audit_keys.patient_hash(refused_patient(log, c))
    unauth = [e for e in log if e["outcome"] == "UNAUTHENTICATED"]
    assert len(unauth) == 9
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") and e["cert"] for e in unauth)
    for p in c.audit_dir.iterdir():  # canary scan of the files the calls produced
        assert CANARY.encode() not in p.read_bytes()
        assert b"alice" not in p.read_bytes()
    assert CANARY not in json.dumps(log)


def refused_patient(log: list[dict[str, Any]], c: Cluster) -> str:
    first = next(e for e in log if e["outcome"] == "PERMISSION_DENIED")
    for p in (CANARY, "p-south"):
        if c.audit_keys.patient_hash(p) == first["patient"]:
            return p
    raise AssertionError("no known patient")


def test_raft_transport_accepts_only_the_nodes_own_messages(
    pki: Pki, keys: SigningKeys, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        async def batches(*from_nodes: int) -> AsyncIterator[raft_pb2.RaftBatch]:
            for f in from_nodes:
                yield raft_pb2.RaftBatch(from_node=f, to_node=1)

        async def chunks(from_node: int) -> AsyncIterator[raft_pb2.SnapshotChunk]:
            for i in range(3):
                yield raft_pb2.SnapshotChunk(from_node=from_node, to_node=1, group=1, offset=i,
                                             last=i == 2)

        async def stream(ch: grpc.aio.Channel, *from_nodes: int, token: str | None = None
                         ) -> tuple[grpc.StatusCode, str]:
            call = raft_pb2_grpc.RaftTransportStub(ch).Stream(batches(*from_nodes),
                                                                metadata=md(token))
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as e:
                return e.code(), e.details() or ""
            return grpc.StatusCode.OK, ""

        node2 = c.client("node-2")
        assert await stream(node2, 2, 2, 2) == (grpc.StatusCode.OK, "")
        assert c.seen.raft_batches == 3
        # A node certificate speaking for another node: refused at that message.
        code, msg = await stream(node2, 2, 3)
        assert code == DENIED and msg == \
            "the certificate of node 2 cannot send messages from node 3"
        assert c.seen.raft_batches == 4  # the forged batch never reached the servicer
        # A client certificate, even with an admin token: refused before any message.
        admin = c.token("root", ["admin"])
        code, msg = await stream(c.client(), 1, token=admin)
        assert code == DENIED and "accepts only node certificates" in msg
        assert c.seen.raft_batches == 4
        # Snapshots likewise.
        snap = raft_pb2_grpc.RaftTransportStub(node2)
        ack = await snap.Snapshot(chunks(2))
        assert ack.accepted and ack.message == "3 chunks"
        code, msg = await code_of(snap.Snapshot(chunks(1)))
        assert code == DENIED and "cannot send messages from node 1" in msg
        code, _ = await code_of(raft_pb2_grpc.RaftTransportStub(c.client()).Snapshot(chunks(1)))
        assert code == DENIED

    c = run(pki, keys, tmp_path, body)
    log = entries(c)
    raft = [(e["subject"], e["outcome"]) for e in log if "RaftTransport" in e["method"]]
    assert ("node-2", "OK") in raft and ("node-2", "PERMISSION_DENIED") in raft
    assert ("", "PERMISSION_DENIED") in raft  # the client certificate


def test_certificates_from_another_ca_or_none_do_not_connect(
    pki: Pki, keys: SigningKeys, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        token = c.token("alice", ["clinician"], ["north"])
        for ch in (
            c.client("client", pki.foreign),  # a client certificate of another CA
            c.client("node-1", pki.foreign),  # a "node 1" of another CA
            c.channel(grpc.ssl_channel_credentials(
                root_certificates=(pki.dir / "ca.pem").read_bytes())),  # no certificate
        ):
            code, _ = await code_of(kv_pb2_grpc.KVStub(ch).Get(get(CANARY), metadata=md(token),
                                                              timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE
        assert c.seen.calls == []

    run(pki, keys, tmp_path, body)


def test_batch_commands_authorizes_each_request(pki: Pki, keys: SigningKeys, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        alice = c.token("alice", ["clinician"], ["north"])
        reqs = [
            kv_pb2.KVRequest(request_id=1, get=get(CANARY)),
            kv_pb2.KVRequest(request_id=2, get=get("p-south")),
            kv_pb2.KVRequest(request_id=3, put=put(CANARY)),
            kv_pb2.KVRequest(request_id=4, put=put("p-south")),
        ]

        async def requests() -> AsyncIterator[kv_pb2.BatchCommandsRequest]:
            yield kv_pb2.BatchCommandsRequest(requests=reqs[:2])
            yield kv_pb2.BatchCommandsRequest(requests=reqs[2:])

        stub = kv_pb2_grpc.KVStub(c.client())
        replies: dict[int, kv_pb2.KVResponse] = {}
        async for resp in stub.BatchCommands(requests(), metadata=md(alice)):
            for r in resp.responses:
                replies[r.request_id] = r
        assert sorted(replies) == [1, 2, 3, 4]
        assert replies[1].status.code == 0 and replies[3].status.code == 0
        for rid in (2, 4):
            assert replies[rid].status.code == DENIED.value[0]
            assert "not registered to your clinic(s) (north)" in replies[rid].status.message
        assert sorted(c.seen.calls) == [("get", "alice"), ("put", "alice")]
        # An admin may not open the stream at all.
        root = c.token("root", ["admin"])

        async def nothing_yet() -> AsyncIterator[kv_pb2.BatchCommandsRequest]:
            # Sends nothing: the refusal comes before any request is read, and a
            # client write racing the server's abort would surface as grpc's own
            # INTERNAL "Internal error from Core" instead of the refusal.
            await asyncio.Event().wait()
            yield kv_pb2.BatchCommandsRequest()

        call = stub.BatchCommands(nothing_yet(), metadata=md(root))
        code, msg = await code_of(call.read())
        assert code == DENIED and "record.stream" in msg, (code, msg)

    c = run(pki, keys, tmp_path, body)
    got = sorted((e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in entries(c)
                 if e["subject"] == "alice")
    assert got == [("BatchCommands", "OK"), ("Get", "OK"), ("Get", "PERMISSION_DENIED"),
                   ("Put", "OK"), ("Put", "PERMISSION_DENIED")]


def test_client_call_credentials_carry_the_token(
    pki: Pki, keys: SigningKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"

    async def body(c: Cluster) -> None:
        tls = c.tls(pki.dir, "client").channel_credentials()
        monkeypatch.setenv("MEDKV_TOKEN", c.token("alice", ["clinician"], ["north"]))
        src = token_source(None)
        assert isinstance(src, StaticToken) and "eyJ" not in repr(src)
        kv = kv_pb2_grpc.KVStub(c.channel(secure_channel_credentials(tls, src)))
        assert (await code_of(kv.Put(put(CANARY))))[0] == grpc.StatusCode.OK
        # A token file, renewed under a running client: the next call carries the new one.
        token_file.write_text(c.token("ana", ["analyst"]))
        src2 = token_source(f"@{token_file}")
        assert isinstance(src2, FileToken)
        kv2 = kv_pb2_grpc.KVStub(c.channel(secure_channel_credentials(tls, src2)))
        assert (await code_of(kv2.Put(put(CANARY))))[0] == DENIED
        token_file.write_text(c.token("bob", ["clinician"], ["north"]) + "\n")
        import os
        os.utime(token_file, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert (await code_of(kv2.Put(put(CANARY))))[0] == grpc.StatusCode.OK
        assert [s for _, s in c.seen.calls] == ["alice", "bob"]

    c = run(pki, keys, tmp_path, body)
    assert {e["subject"] for e in entries(c)} == {"alice", "ana", "bob"}


def test_deferred_checks_where_the_data_is(pki: Pki, keys: SigningKeys, tmp_path: Path) -> None:
    """A node that cannot see the registration passes the call on as deferred; the
    servicer checks the patient against its replica's registration (check_patient)."""
    from node.auth import PermissionDenied
    from node.auth.policy import Registration

    outcomes: list[str] = []

    class DeferringKV(KV):
        async def Get(self, request: Any, context: Any) -> Any:
            auth = current_call()
            assert auth is not None and auth.decision.deferred
            try:
                auth.check_patient(request.patient_id,
                                   Registration(frozenset({request.record_id})))
            except PermissionDenied as e:
                outcomes.append("denied")
                await context.abort(DENIED, e.message)
            outcomes.append("allowed")
            return kv_pb2.GetResponse()

        async def BatchCommands(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            auth = current_call()
            assert auth is not None
            async for batch in request_iterator:
                for req in batch.requests:
                    try:
                        auth.check_patient(req.get.patient_id,
                                           Registration(frozenset({req.get.record_id})),
                                           method="/medkv.v1.KV/Get")
                        outcomes.append("allowed")
                    except PermissionDenied:
                        outcomes.append("denied")
                yield kv_pb2.BatchCommandsResponse()

    async def body(c: Cluster) -> None:
        server = grpc.aio.server(interceptors=[AuthInterceptor(AccessControl(
            verifier=keys.verifier(), registry=None, audit=c.writer))])
        kv_pb2_grpc.add_KVServicer_to_server(DeferringKV(c.seen), server)
        port = server.add_secure_port("127.0.0.1:0", c.tls(pki.dir, "node-1").server_credentials())
        await server.start()
        try:
            ch = grpc.aio.secure_channel(f"127.0.0.1:{port}",
                                         c.tls(pki.dir, "client").channel_credentials())
            c.channels.append(ch)
            stub = kv_pb2_grpc.KVStub(ch)
            alice = md(c.token("alice", ["clinician"], ["north"]))
            assert (await code_of(stub.Get(get("p", "north"), metadata=alice)))[0] == \
                grpc.StatusCode.OK
            code, msg = await code_of(stub.Get(get("p", "south"), metadata=alice))
            assert code == DENIED and "not registered to your clinic(s) (north)" in msg

            async def reqs() -> AsyncIterator[kv_pb2.BatchCommandsRequest]:
                yield kv_pb2.BatchCommandsRequest(requests=[
                    kv_pb2.KVRequest(request_id=1, get=get("p", "north")),
                    kv_pb2.KVRequest(request_id=2, get=get("p", "south"))])

            async for _ in stub.BatchCommands(reqs(), metadata=alice):
                pass
        finally:
            await server.stop(None)

    run(pki, keys, tmp_path, body)
    assert outcomes == ["allowed", "denied", "allowed", "denied"]


def test_the_request_id_is_in_the_logging_context_of_the_call(
    pki: Pki, keys: SigningKeys, tmp_path: Path
) -> None:
    """JSON log lines (node.logfmt) written while serving a call carry its
    request id: the client's medkv-request-id, or one the node makes up."""

    outside = REQUEST_ID.get()  # another test may have left one in this thread's context

    async def body(c: Cluster) -> None:
        admin = admin_pb2_grpc.AdminStub(c.client("node-2"))
        await admin.ClusterStatus(admin_pb2.ClusterStatusRequest(),
                                  metadata=(("medkv-request-id", "cli-42"),))
        await admin.ClusterStatus(admin_pb2.ClusterStatusRequest())
        await admin.ClusterStatus(admin_pb2.ClusterStatusRequest())

    c = run(pki, keys, tmp_path, body)
    given, made1, made2 = c.seen.request_ids
    assert given == "cli-42"
    assert made1 and made2 and made1 != made2 and "cli-42" not in (made1, made2)
    assert REQUEST_ID.get() == outside  # set in the call's own context only


def test_identity_for_node_has_no_clinics() -> None:
    n = Identity.for_node(4, "ab")
    assert n.subject == "node-4" and n.roles == {"node"} and not n.clinics


def test_a_replicas_registration_can_allow_but_never_refuse() -> None:
    """The node's registry is a replica's applied state, which may trail the log: a
    patient registered a moment ago can still look unregistered there. Such a
    refusal becomes a deferral, decided where the data is (after the read index, or
    at apply); a fixed, authoritative registry refuses at once."""
    from node.auth.interceptor import _Call
    from node.auth.policy import UNREGISTERED, RequestFacts

    class Trailing:
        authoritative = False

        def lookup(self, patient_id: str) -> Registration:
            return UNREGISTERED

    alice = Identity("alice", frozenset({"clinician"}), frozenset({"north"}))
    analyst = Identity("ana", frozenset({"analyst"}))
    facts = RequestFacts(patient_id="p-new", registration=UNREGISTERED)
    for registry, refused in ((Trailing(), False), (InMemoryRegistry({}), True)):
        call = _Call.__new__(_Call)
        call.ac = AccessControl(verifier=None, registry=registry)  # type: ignore[arg-type]
        call.identity = alice
        d = call.decide("/medkv.v1.KV/Get", facts)
        assert d.allowed is not refused and d.deferred is not refused
        # a refusal that does not rest on the registration stands either way
        call.identity = analyst
        assert not call.decide("/medkv.v1.KV/Get", facts).allowed


def test_a_stream_checks_each_request_like_its_call_and_stops_when_the_token_expires(
    pki: Pki, keys: SigningKeys, tmp_path: Path
) -> None:
    """Inside BatchCommands, opening a session needs the session permission as
    OpenSession does (an analyst has none), and a token that expires while the
    stream is open stops being honoured at the next batch."""

    async def body(c: Cluster) -> None:
        stub = kv_pb2_grpc.KVStub(c.client("client"))

        async def one(token: str, reqs: list[kv_pb2.KVRequest], pause: float = 0.0
                      ) -> list[kv_pb2.KVResponse]:
            async def batches() -> AsyncIterator[kv_pb2.BatchCommandsRequest]:
                for i, r in enumerate(reqs):
                    if i:
                        await asyncio.sleep(pause)
                    yield kv_pb2.BatchCommandsRequest(requests=[r])

            got: list[kv_pb2.KVResponse] = []
            async for resp in stub.BatchCommands(batches(), metadata=md(token)):
                got.extend(resp.responses)
            return sorted(got, key=lambda r: r.request_id)

        analyst = c.token("ann", ["analyst"], ["north"])
        got = await one(analyst, [kv_pb2.KVRequest(
            request_id=1, open_session=kv_pb2.OpenSessionRequest(partition=0))])
        assert got[0].status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert ("open_session", "ann") not in c.seen.calls

        # Expired by its `exp` already, but inside the verifier's leeway for
        # about two more seconds: accepted when the stream opens, then not.
        leeway = TokenSettings().leeway_seconds
        short = c.token("dr-ada", ["clinician"], ["north"], ttl_seconds=2.0 - leeway)
        got = await one(short, [kv_pb2.KVRequest(request_id=i, get=get(CANARY))
                                for i in (1, 2)], pause=2.5)
        assert got[0].status.code == 0
        assert got[1].status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "token expired" in got[1].status.message

    run(pki, keys, tmp_path, body)
