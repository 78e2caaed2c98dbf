"""A real cluster is secure by default: every call needs a certificate of the
cluster's CA and a bearer token, and the Raft transport accepts only node
certificates, each speaking for its own node. `--insecure` is the one way
to run plaintext, and the node says so in its log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client import Client, MedkvError, TlsConfig
from client.auth import TOKEN_ENV
from client.tls import TLS_DIR_ENV
from node.auth.certs import init_ca, issue_client
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc
from tests.cluster.harness import PARTITIONS, ROOT, LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # No exported credentials: each test says exactly what its client presents.
    c = start_cluster(tmp_path_factory.mktemp("tls"), export_env=False)
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(autouse=True)
def _no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def test_the_default_cluster_is_configured_secure(tls_cluster: LocalCluster) -> None:
    config = (tls_cluster.data_dir / "node-1" / "node.toml").read_text()
    assert "[tls]" in config and "[auth]" in config and "insecure" not in config
    for name in ("admin", "clinician", "clinician-south", "clinic-admin", "analyst", "auditor"):
        assert tls_cluster.token_path(name).stat().st_mode & 0o777 == 0o600
    log = (tls_cluster.data_dir / "node-1" / "node.log").read_text()
    assert "INSECURE" not in log


def test_clients_with_a_certificate_and_a_token_are_served(tls_cluster: LocalCluster) -> None:
    with tls_cluster.client(timeout=20) as kv:
        version = kv.put("tls-patient", "note", b"encrypted in transit")
        assert kv.get("tls-patient", "note").version == version
        assert all(n.up for n in kv.cluster_status().nodes)  # peers reached each other over TLS
    for n in (1, 2, 3):
        log = (tls_cluster.data_dir / f"node-{n}" / "node.log").read_text()
        assert "not encrypted in transit" not in log


def test_a_plaintext_client_is_refused(tls_cluster: LocalCluster) -> None:
    with pytest.raises(MedkvError), Client(tls_cluster.addresses, timeout=3) as kv:
        kv.put("tls-patient", "note", b"x")


def test_a_certificate_without_a_token_is_refused(tls_cluster: LocalCluster) -> None:
    with pytest.raises(MedkvError) as e, Client(
        tls_cluster.addresses, tls=tls_cluster.tls(), timeout=3
    ) as kv:
        kv.put("tls-patient", "note", b"x")
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED, e.value


def test_a_certificate_of_another_ca_is_refused(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    issue_client(ca, tmp_path, "client")
    other = TlsConfig(tls_cluster.certs_dir / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key")
    with pytest.raises(MedkvError), Client(
        tls_cluster.addresses, tls=other, token=tls_cluster.token(), timeout=3
    ) as kv:
        kv.put("tls-patient", "note", b"x")


def test_the_raft_transport_refuses_client_certificates(tls_cluster: LocalCluster) -> None:
    # Even with a token holding every role: only a node certificate speaks Raft.
    channel = tls_cluster.channel(tls_cluster.addresses[0])
    stub = raft_pb2_grpc.RaftTransportStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Stream(iter([raft_pb2.RaftBatch(from_node=2, to_node=1)]), timeout=5))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()


def test_a_node_certificate_speaks_only_for_its_own_node(tls_cluster: LocalCluster) -> None:
    channel = tls_cluster.channel(tls_cluster.addresses[0], as_node=3)
    stub = raft_pb2_grpc.RaftTransportStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Stream(iter([raft_pb2.RaftBatch(from_node=2, to_node=1)]), timeout=5))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The same certificate without a token: cluster status yes, records no.
    status = admin_pb2_grpc.AdminStub(channel).ClusterStatus(
        admin_pb2.ClusterStatusRequest(), timeout=5
    )
    assert status.answered_by == 1
    with pytest.raises(grpc.RpcError) as e:
        kv_pb2_grpc.KVStub(channel).Get(
            kv_pb2.GetRequest(patient_id="tls-patient", record_id="note"), timeout=5
        )
    assert e.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    channel.close()


def test_an_insecure_cluster_serves_plaintext_and_says_so(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "insecure", nodes=1, partitions=2,
                            extra=("--insecure", "--replicas", "1"))
    try:
        assert not cluster.secure and cluster.env() == {}
        config = (tmp_path / "insecure" / "node-1" / "node.toml").read_text()
        assert "insecure = true" in config and "[tls]" not in config and "[auth]" not in config
        assert not (tmp_path / "insecure" / "tokens").exists()
        with Client(cluster.addresses, timeout=20) as kv:
            version = kv.put("lab-patient", "note", b"plaintext")
            assert kv.get("lab-patient", "note").version == version
        log = (tmp_path / "insecure" / "node-1" / "node.log").read_text()
        assert "INSECURE" in log and "insecure = true" in log
    finally:
        stop_cluster(cluster)


def test_a_second_up_reuses_the_ca_the_keys_and_the_tokens(tls_cluster: LocalCluster) -> None:
    d = tls_cluster.data_dir
    kept = [d / "certs" / "ca.pem", d / "certs" / "node-1.key", d / "auth" / "jwks.json",
            d / "auth" / "token-signing.key", tls_cluster.token_path("clinician")]
    before = [p.read_bytes() for p in kept]
    base = int(tls_cluster.addresses[0].rsplit(":", 1)[1]) - 1
    again = tls_cluster.run("up", "--nodes", "3", "--base-port", str(base),
                            "--partitions", str(PARTITIONS), "--timeout", "60", "--tls")
    assert again.returncode == 0, again.stderr
    assert [p.read_bytes() for p in kept] == before
    assert "created" not in again.stderr and "minted" not in again.stderr
    # Switching a running cluster to --insecure is refused, not half done.
    switch = tls_cluster.run("up", "--nodes", "3", "--base-port", str(base),
                             "--partitions", str(PARTITIONS), "--insecure")
    assert switch.returncode != 0 and "down" in switch.stderr
    assert "[auth]" in (d / "node-1" / "node.toml").read_text()


def test_cluster_env_status_and_the_cli_use_the_local_tokens(
    tls_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_script = str(ROOT / "scripts" / "cluster")
    # Another cluster's credentials in the shell: `status` ignores them, `env` replaces them.
    monkeypatch.setenv(TOKEN_ENV, "stale.stale.stale")
    monkeypatch.setenv(TLS_DIR_ENV, "/nowhere")
    env = dict(os.environ)
    status = tls_cluster.run("status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["cluster"] is not None

    def as_(name: str, cli: str) -> subprocess.CompletedProcess[str]:
        script = (f'eval "$({cluster_script} env --data-dir "$DATA_DIR" --as {name})" && '
                  f"{sys.executable} -m client.cli {cli}")
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              timeout=60, check=False,
                              env={**env, "DATA_DIR": str(tls_cluster.data_dir),
                                   "PYTHONPATH": str(ROOT)})

    put = as_("clinician", "put env-patient note --value hello")
    assert put.returncode == 0, put.stderr
    got = as_("clinician", "get env-patient note")
    assert got.returncode == 0 and "hello" in got.stdout, got.stderr
    refused = as_("auditor", "put env-patient note --value nope")
    assert refused.returncode != 0 and "PERMISSION_DENIED" in refused.stderr
    assert as_("admin", "status").returncode == 0
