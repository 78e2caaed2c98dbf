"""Each node's /metrics, scraped directly (no Prometheus needed): what the
node exports after writes, an erasure and refused calls, and that none of it
names a patient or a record.

tests/cluster/test_prometheus.py checks the same endpoints through a real
Prometheus and PromQL.
"""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.medkv.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster.harness import (
    PARTITIONS,
    LocalCluster,
    free_base_port,
    start_cluster,
    stop_cluster,
)

pytestmark = [pytest.mark.cluster]

NODES = 3
PATIENTS = [f"metrics-patient-{i:03d}" for i in range(24)]
RECORD = "record-metrics-7f3a"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = free_base_port(NODES)
    # Small snapshots, so a restarted node catches up from one (the snapshot counters).
    c = start_cluster(tmp_path_factory.mktemp("metrics"), nodes=NODES,
                      extra=("--metrics-base-port", str(base), "--raft", "snapshot_every=20",
                             "--raft", "keep_after_snapshot=5"))
    c.metrics_base = base  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        stop_cluster(c)


def scrape(cluster: LocalCluster, node: int, cert: str | None = "client") -> str:
    base = cluster.metrics_base  # type: ignore[attr-defined]
    ctx = ssl.create_default_context(cafile=str(cluster.certs_dir / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(cluster.certs_dir / f"{cert}.pem"),
                            str(cluster.certs_dir / f"{cert}.key"))
    url = f"https://127.0.0.1:{base + node}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return str(r.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_no_metric_names_a_patient_or_record(cluster: LocalCluster) -> None:
    with cluster.client(timeout=20.0) as kv:
        for pid in PATIENTS:
            kv.put(pid, RECORD, b"value")
        kv.erase_patient(PATIENTS[0])
    texts = [scrape(cluster, n) for n in range(1, NODES + 1)]
    for text in texts:
        assert "metrics-patient" not in text and RECORD not in text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                for value in s.labels.values():
                    assert "patient" not in value and "record" not in value, s
    assert sum(sample(t, "medkv_erasures_total", result="success") for t in texts) == 1
    assert sum(sample(t, "medkv_grpc_server_handled_total", grpc_method="Put",
                      grpc_code="OK") for t in texts) >= len(PATIENTS)
    assert sum(sample(t, "medkv_audit_entries_written_total") for t in texts) >= len(PATIENTS)


def test_names_follow_the_conventions(cluster: LocalCluster) -> None:
    text = scrape(cluster, 1)
    families = list(text_string_to_metric_families(text))
    medkv = [f for f in families if f.name.startswith("medkv_")]
    assert len(medkv) >= 40
    for f in families:
        assert f.name.startswith(("medkv_", "process_", "python_")), f.name
        assert not f.name.endswith("_created"), "created series are turned off"
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f.name
    assert sample(text, "medkv_partitions_held") == PARTITIONS
    assert sample(text, "medkv_tls_certificate_expiry_timestamp_seconds", certificate="node") > 0


def test_refused_calls_are_counted_with_their_reason(cluster: LocalCluster) -> None:
    """A call without a token: UNAUTHENTICATED in the gRPC counts (the metrics
    interceptor sits outside access control) and in the refusals by reason."""
    before = scrape(cluster, 1)
    creds = cluster.tls()
    assert creds is not None
    channel = grpc.secure_channel(cluster.addresses[0], creds.credentials())  # no token
    with pytest.raises(grpc.RpcError) as e:
        admin_pb2_grpc.AdminStub(channel).ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)
    channel.close()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = scrape(cluster, 1)
    for name, labels in (
        ("medkv_requests_rejected_total", {"reason": "unauthenticated"}),
        ("medkv_grpc_server_handled_total",
         {"grpc_method": "ClusterStatus", "grpc_code": "UNAUTHENTICATED"}),
    ):
        assert sample(after, name, **labels) == sample(before, name, **labels) + 1, name


def test_a_scrape_without_a_client_certificate_is_refused(cluster: LocalCluster) -> None:
    with pytest.raises(OSError):
        scrape(cluster, 2, cert=None)


def test_snapshot_sends_and_installs_are_counted(cluster: LocalCluster) -> None:
    """Node 3 misses more writes than the leaders keep in their logs, so it
    catches up from snapshots: the leaders count sends, node 3 installs."""
    assert cluster.run("kill-node", "3", timeout=30).returncode == 0
    with cluster.client(timeout=20.0) as kv:
        for i in range(30 * PARTITIONS):  # ~30 writes per partition: past snapshot_every + keep
            kv.put(f"snap-{i}", "r", b"x")
    done = cluster.run("restart-node", "3", timeout=60)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    while True:
        installed = sample(scrape(cluster, 3), "medkv_snapshot_installs_total", result="success")
        sent = sum(sample(scrape(cluster, n), "medkv_snapshot_sends_total", result="success")
                   for n in (1, 2))
        if installed >= 1 and sent >= 1:
            break
        assert time.monotonic() < deadline, f"installed {installed}, sent {sent}"
        time.sleep(0.5)
    assert sample(scrape(cluster, 3), "medkv_snapshot_installs_total", result="failure") == 0
