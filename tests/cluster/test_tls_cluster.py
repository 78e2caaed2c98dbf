"""Mutual TLS on a real cluster: clients need a CA-signed certificate, and the
Raft transport accepts only node certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client import Client, MedkvError, TlsConfig
from proto.medkv.v1 import raft_pb2, raft_pb2_grpc
from tests.cluster.harness import LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("tls"), extra=("--tls",))
    try:
        yield c
    finally:
        stop_cluster(c)


def test_clients_with_a_certificate_are_served(tls_cluster: LocalCluster) -> None:
    tls = TlsConfig.from_dir(tls_cluster.data_dir / "certs")
    with Client(tls_cluster.addresses, tls=tls, timeout=20) as kv:
        version = kv.put("tls-patient", "note", b"encrypted in transit")
        assert kv.get("tls-patient", "note").version == version
        assert all(n.up for n in kv.cluster_status().nodes)  # peers reached each other over TLS
    for n in (1, 2, 3):
        log = (tls_cluster.data_dir / f"node-{n}" / "node.log").read_text()
        assert "not encrypted in transit" not in log


def test_a_plaintext_client_is_refused(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    with pytest.raises(MedkvError), Client(tls_cluster.addresses, timeout=3) as kv:
        kv.put("tls-patient", "note", b"x")


def test_the_raft_transport_refuses_client_certificates(tls_cluster: LocalCluster) -> None:
    tls = TlsConfig.from_dir(tls_cluster.data_dir / "certs")
    channel = grpc.secure_channel(tls_cluster.addresses[0], tls.credentials())
    stub = raft_pb2_grpc.RaftTransportStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Stream(iter([raft_pb2.RaftBatch(from_node=2, to_node=1)]), timeout=5))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()
