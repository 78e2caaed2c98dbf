"""End to end against one real secure node, in process (mutual TLS, bearer tokens,
the interceptor, the audit writer): AuditQuery finds a patient's accesses by the
patient's id without the id ever reaching an entry; only an auditor may ask;
AuditVerify checks the anchored head, and catches the log cut short with its
HEAD rolled back after a restart, which the files alone no longer show."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from client import AsyncClient, TlsConfig
from client.errors import MedkvError, PermissionDenied
from node.auth.audit import (
    AUDIT_DIR,
    AuditKeys,
    ChainHead,
    chain_hash_at,
    log_id_for_node,
    write_head,
)
from node.auth.certs import init_ca, issue_client, issue_node
from node.auth.tokens import keygen, load_signing_key, mint
from node.config import parse_config
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import create_key_file
from node.crypto.keyring import open_keyring
from node.server import Node
from tests.cluster_init import init_members

PATIENT = "CANARY-AUDIT-PATIENT-91c2"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        ca = init_ca(root / "certs")
        issue_node(ca, root / "certs", 1, hosts=["127.0.0.1"])
        issue_client(ca, root / "certs", "client")
        keygen(root / "auth")
        self.signing = load_signing_key(root / "auth" / "token-signing.key")
        create_key_file(root / "master.key")
        self.addr = f"127.0.0.1:{_port()}"
        self.tls = TlsConfig.from_dir(root / "certs")

    def config(self) -> object:
        return parse_config({
            "node_id": 1, "listen": self.addr, "data_dir": "data", "partitions": 2,
            "replication": 1, "key_file": "master.key",
            "peers": [{"id": 1, "address": self.addr}],
            "tls": {"ca_file": "certs/ca.pem", "cert_file": "certs/node-1.pem",
                    "key_file": "certs/node-1.key"},
            "auth": {"jwks_file": "auth/jwks.json"},
        }, self.root)

    def client(self, role: str, subject: str) -> AsyncClient:
        token = mint(self.signing, subject=subject, roles=[role], clinics=["north"])
        return AsyncClient(self.addr, tls=self.tls, token=token, clinic="north", timeout=10)


async def _wait_leader(node: Node) -> None:
    for _ in range(200):
        if all(r.is_leader for r in node.host.replicas.values()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the single node did not lead its partitions")


def _cut_log(root: Path, keep: int) -> None:
    """What someone with the node's files and keys could do: cut the tail, roll HEAD back."""
    keyring = open_keyring(root / "data", root / "master.key")
    codec, keys = EnvelopeCodec(keyring), AuditKeys.from_keyring(keyring)
    d, log_id = root / "data" / AUDIT_DIR, log_id_for_node(1)
    seg = sorted(d.glob("audit-*.log"))[-1]
    seg.write_bytes(b"".join(seg.read_bytes().splitlines(keepends=True)[:keep]))
    h = chain_hash_at(d, codec, keys, log_id, keep)
    assert h is not None
    write_head(d, codec, b"medkv/v1 audit " + log_id.encode(), ChainHead(keep, h))


def test_query_and_verify_on_a_secure_node(tmp_path: Path) -> None:
    setup = Setup(tmp_path)

    async def first_run() -> int:
        cfg = setup.config()
        init_members([cfg])  # type: ignore[list-item]
        node = Node(cfg)  # type: ignore[arg-type]
        await node.start()
        try:
            await _wait_leader(node)
            async with setup.client("clinician", "dr-ada") as dr, \
                    setup.client("auditor", "aud-1") as aud:
                await dr.put(PATIENT, "allergies", b"penicillin")
                await dr.get(PATIENT, "allergies")
                await dr.put("someone-else", "notes", b"x")
                with pytest.raises(PermissionDenied):
                    await dr.audit_query(patient_id=PATIENT)

                res = await aud.audit_query(patient_id=PATIENT)
                assert res.complete
                methods = [e.fields["method"].rsplit("/", 1)[-1] for e in res.entries]
                assert "Put" in methods and "Get" in methods
                assert {e.fields["subject"] for e in res.entries} == {"dr-ada"}
                assert all(PATIENT not in json.dumps(e.to_dict()) for e in res.entries)
                times = [e.time for e in res.entries]
                assert times == sorted(times)
                # the refused query was audited, with its outcome (the patient hashed)
                refused = await aud.audit_query(subject="dr-ada", limit=10_000)
                denied = [e for e in refused.entries if e.fields["outcome"] == "PERMISSION_DENIED"]
                assert [e.fields["method"].rsplit("/", 1)[-1] for e in denied] == ["AuditQuery"]
                two = await aud.audit_query(limit=2)
                assert len(two.entries) == 2
                with pytest.raises(MedkvError):
                    await aud.audit_query(limit=20_000)

                (before,) = await aud.audit_verify()
                assert before.ok and before.anchored_head == "" and not before.problems
                anchored = await node.admin.audit.anchor_once()
                assert anchored > 0
                (after,) = await aud.audit_verify()
                assert after.ok and after.anchored_head.startswith(f"{anchored}:")
        finally:
            await node.stop()  # anchors the last head too
        a = node.admin.audit
        assert a._anchored_seq >= anchored
        return a._anchored_seq

    last = asyncio.run(first_run())
    assert not any(PATIENT.encode() in p.read_bytes()
                   for p in (tmp_path / "data").rglob("*") if p.is_file())
    _cut_log(tmp_path, 3)

    async def second_run() -> None:
        cfg = setup.config()
        init_members([cfg])  # type: ignore[list-item]
        node = Node(cfg)  # type: ignore[arg-type]
        await node.start()  # the cut log opens: HEAD agrees with it
        try:
            await _wait_leader(node)
            async with setup.client("auditor", "aud-1") as aud:
                (rep,) = await aud.audit_verify()
                assert not rep.ok
                assert rep.anchored_head.startswith(f"{last}:")
                assert any(f"but the anchored head records entry {last}" in p
                           for p in rep.problems), rep.problems
                assert await node.admin.audit.anchor_once() == 0  # the evidence stays
        finally:
            await node.stop()

    asyncio.run(second_run())


def test_three_nodes_anchor_into_replicated_state_and_answer_together(tmp_path: Path) -> None:
    """Every node's anchor reaches the other replicas of the partition it went into;
    the client merges every node's entries and every node's verification."""
    ca = init_ca(tmp_path / "certs")
    for n in (1, 2, 3):
        issue_node(ca, tmp_path / "certs", n, hosts=["127.0.0.1"])
    issue_client(ca, tmp_path / "certs", "client")
    keygen(tmp_path / "auth")
    create_key_file(tmp_path / "master.key")
    signing = load_signing_key(tmp_path / "auth" / "token-signing.key")
    tls = TlsConfig.from_dir(tmp_path / "certs")
    addrs = {n: f"127.0.0.1:{_port()}" for n in (1, 2, 3)}

    def cfg(n: int) -> object:
        return parse_config({
            "node_id": n, "listen": addrs[n], "data_dir": f"node-{n}", "partitions": 3,
            "replication": 3, "key_file": "master.key",
            "peers": [{"id": i, "address": a} for i, a in addrs.items()],
            "tls": {"ca_file": "certs/ca.pem", "cert_file": f"certs/node-{n}.pem",
                    "key_file": f"certs/node-{n}.key"},
            "auth": {"jwks_file": "auth/jwks.json"},
        }, tmp_path)

    def client(role: str, subject: str) -> AsyncClient:
        token = mint(signing, subject=subject, roles=[role], clinics=["north"])
        return AsyncClient(list(addrs.values()), tls=tls, token=token, clinic="north",
                           timeout=15)

    async def scenario() -> None:
        cfgs = [cfg(n) for n in (1, 2, 3)]
        init_members(cfgs)  # type: ignore[arg-type]
        nodes = [Node(c) for c in cfgs]  # type: ignore[arg-type]
        for node in nodes:
            await node.start()
        try:
            for _ in range(400):
                if all(r.leader for n in nodes for r in n.host.replicas.values()):
                    break
                await asyncio.sleep(0.05)
            async with client("clinician", "dr-ada") as dr, client("auditor", "aud-1") as aud:
                for i in range(6):
                    await dr.put(f"{PATIENT}-{i}", "r", b"v")
                await aud.audit_query(limit=10_000)  # audited on every node as it ends
                res = await aud.audit_query(limit=10_000)
                assert res.complete
                assert {e.node for e in res.entries} == {1, 2, 3}
                assert {e.node for e in res.entries
                        if e.fields["method"].endswith("/AuditQuery")} == {1, 2, 3}
                puts = [e for e in res.entries if e.fields["method"].endswith("/Put")]
                assert len(puts) >= 6 and {e.fields["subject"] for e in puts} == {"dr-ada"}
                assert not any(PATIENT in json.dumps(e.to_dict()) for e in res.entries)

                anchored = {n.cfg.node_id: await n.admin.audit.anchor_once() for n in nodes}
                assert any(anchored.values()), "no node leads a partition?"
                # replicated: every node's replicas end up holding every anchor made
                for _ in range(200):
                    seen = {(n.cfg.node_id, nid) for n in nodes for r in n.host.replicas.values()
                            for nid in r.sm.audit_anchors}
                    if all((holder, nid) in seen for holder in (1, 2, 3)
                           for nid, s in anchored.items() if s):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"anchors not replicated: {seen}")
                results = await aud.audit_verify()
                assert [r.node for r in results] == [1, 2, 3]
                assert all(r.ok and not r.error for r in results), results
                for r in results:
                    if anchored[r.node]:
                        assert r.anchored_head.startswith(f"{anchored[r.node]}:")
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(scenario())
