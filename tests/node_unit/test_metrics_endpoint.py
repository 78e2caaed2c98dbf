"""The metrics endpoint's TLS, its configuration, and the metric names' conventions.

In-process, no node: the endpoint (node.metrics.http) is served from a
registry with the node's instruments; node processes are tested in
tests/cluster/test_metrics_cluster.py and against a real Prometheus in
tests/cluster/test_prometheus.py.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.auth.certs import init_ca, issue_client, issue_node
from node.config import ConfigError, parse_config
from node.metrics.http import MetricsServer, server_ssl_context
from node.metrics.instruments import REJECT_REASONS, NodeMetrics


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    ca = init_ca(d)
    issue_node(ca, d, 1, hosts=["127.0.0.1"])
    issue_client(ca, d, "prometheus")
    other = tmp_path_factory.mktemp("other-ca")
    issue_client(init_ca(other), other, "stranger")
    (d / "stranger.pem").write_bytes((other / "stranger.pem").read_bytes())
    (d / "stranger.key").write_bytes((other / "stranger.key").read_bytes())
    return d


@pytest.fixture
def served(certs: Path) -> Iterator[tuple[NodeMetrics, MetricsServer]]:
    metrics = NodeMetrics()
    ctx = server_ssl_context(certs / "ca.pem", certs / "node-1.pem", certs / "node-1.key")
    server = MetricsServer(metrics.registry, "127.0.0.1", 0, ctx)
    server.start()
    try:
        yield metrics, server
    finally:
        server.stop()


def _client_ctx(certs: Path, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if name is not None:
        ctx.load_cert_chain(str(certs / f"{name}.pem"), str(certs / f"{name}.key"))
    return ctx


def _get(port: int, ctx: ssl.SSLContext) -> str:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=5) as r:
        return str(r.read().decode())


def test_a_client_certificate_of_the_cluster_ca_is_required(
    certs: Path, served: tuple[NodeMetrics, MetricsServer],
) -> None:
    metrics, server = served
    metrics.reject("unauthenticated")
    assert server.scheme == "https"
    text = _get(server.port, _client_ctx(certs, "prometheus"))
    assert 'medkv_requests_rejected_total{reason="unauthenticated"} 1.0' in text
    for name in (None, "stranger"):  # no certificate; one from another CA
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError, OSError)):
            _get(server.port, _client_ctx(certs, name))


def test_a_silent_client_does_not_block_scrapes(
    certs: Path, served: tuple[NodeMetrics, MetricsServer],
) -> None:
    """The handshake runs in the request's thread: a connection that never
    speaks holds only its own thread, not the accept loop."""
    _, server = served
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        silent.settimeout(1)
        start = time.monotonic()
        assert "medkv_log_fsync_duration_seconds_bucket" in _get(
            server.port, _client_ctx(certs, "prometheus"))
        assert time.monotonic() - start < 3


def test_plain_http_without_tls() -> None:
    metrics = NodeMetrics()
    server = MetricsServer(metrics.registry, "127.0.0.1", 0, None)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert b"medkv_apply_duration_seconds" in r.read()
    finally:
        server.stop()


def test_names_follow_prometheus_conventions() -> None:
    """medkv_ prefix, counters end in _total, durations in base units
    (_seconds), and the label values are fixed enumerations."""
    metrics = NodeMetrics()
    metrics.grpc_handled.labels("unary", "medkv.v1.KV", "Put", "OK").inc()
    metrics.grpc_seconds.labels("medkv.v1.KV", "Put").observe(0.01)
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    assert families
    for f in families:
        assert f.name.startswith("medkv_"), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f.name
        for s in f.samples:
            if f.type == "counter" and not s.name.endswith("_created"):
                assert s.name.endswith("_total"), s.name
            assert not ({"patient", "patient_id", "record", "record_id"} & set(s.labels)), s
    rejected = {s.labels["reason"] for f in families if f.name == "medkv_requests_rejected"
                for s in f.samples}
    assert rejected == set(REJECT_REASONS)


def test_unknown_reason_is_counted_as_other() -> None:
    metrics = NodeMetrics()
    metrics.reject("a reason nobody listed")
    assert metrics.registry.get_sample_value(
        "medkv_requests_rejected_total", {"reason": "other"}) == 1.0


BASE = {
    "node_id": 1, "listen": "127.0.0.1:7101", "data_dir": "d", "insecure": True,
    "peers": [{"id": 1, "address": "127.0.0.1:7101"}],
    "replication": 1,
}


@pytest.mark.parametrize("listen", ["127.0.0.1:9101", "[::1]:9101", "0.0.0.0:9101", ""])
def test_metrics_listen_accepted(tmp_path: Path, listen: str) -> None:
    cfg = parse_config({**BASE, "metrics": {"listen": listen}}, tmp_path)
    assert cfg.metrics.listen == listen


def test_metrics_off_by_default(tmp_path: Path) -> None:
    assert parse_config(dict(BASE), tmp_path).metrics.listen == ""


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"listen": "9101"}, '[metrics] listen must be "host:port"'),
        ({"listen": "127.0.0.1:99999"}, '[metrics] listen must be "host:port"'),
        ({"listen": 9101}, "[metrics] listen must be a string"),
        ({"listen": "127.0.0.1:7101"}, "[metrics] listen must differ from the gRPC listen"),
        ({"port": 1}, "unknown key(s) in [metrics]: port"),
    ],
)
def test_metrics_mistakes_are_named(tmp_path: Path, metrics: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "metrics": metrics}, tmp_path)
    assert message in str(e.value)


class _StubKeys:
    def reencryption(self) -> object:
        from node.key_rotation import ReEncryptionState

        return ReEncryptionState("idle")


def _stub_node() -> object:
    from types import SimpleNamespace

    from node.config import NodeConfig

    cfg = NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=Path("/nonexistent"),
                     peers={1: "127.0.0.1:1"}, replication=1, insecure=True)
    host = SimpleNamespace(replicas={}, broken_at_start={3: "damaged"}, node_id=1,
                           pending_writes=2)
    return SimpleNamespace(cfg=cfg, access=None, host=host, keys=_StubKeys(),
                           purger=SimpleNamespace(completed=0, rounds=0))


def test_a_stalled_loop_does_not_hang_the_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's state is read on its loop; a loop that does not answer in
    time gives a scrape of the event counters and a failure count, not a hang."""
    import asyncio
    import threading

    from node.metrics import collector as collector_module

    monkeypatch.setattr(collector_module, "COLLECT_TIMEOUT_S", 0.3)
    c = collector_module.NodeCollector(_stub_node())  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    stall = threading.Event()
    bound = threading.Event()

    def bind() -> None:
        c.bind(loop)
        bound.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(bind)
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert bound.wait(5)
        names = {m.name for m in c.collect()}
        assert "medkv_partitions_held" in names and c.failures == 0
        values = {s.name: s.value for m in c.collect() for s in m.samples}
        assert values["medkv_partitions_out_of_service"] == 1
        assert values["medkv_proposals_pending"] == 2
        loop.call_soon_threadsafe(stall.wait, 5)  # the loop stalls
        start = time.monotonic()
        names = {m.name for m in c.collect()}
        assert time.monotonic() - start < 2
        assert "medkv_partitions_held" not in names and c.failures == 1
        assert "medkv_node_info" in names
    finally:
        stall.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
