"""medkv's metrics as a real Prometheus sees them (issue 15).

A secure 3-node cluster with every node's metrics endpoint on (HTTPS, mutual
TLS), and Debian's Prometheus scraping it every second with the cluster's
client certificate and the shipped alert rules (their `for:` shortened to
1s). Everything is asserted through Prometheus's HTTP API, in PromQL: the
queries an operator would type.

The tests run in file order on one cluster: the node kill comes last.
Skipped when prometheus is not installed; failing instead with
MEDKV_REQUIRE_PROMETHEUS=1 (.ci/run).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import (
    PARTITIONS,
    LocalCluster,
    free_base_port,
    start_cluster,
    stop_cluster,
)
from tests.cluster.prometheus_server import (
    ALERTS,
    DASHBOARD,
    Prometheus,
    short_for,
    start_prometheus,
    tool,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODES = 3
PATIENTS = [f"prom-patient-{i:03d}" for i in range(40)]
# Grafana's variables in the dashboard, replaced by what they stand for here.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$job": "medkv", "${job}": "medkv"}


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return tool("prometheus")  # skips (or fails) before any cluster starts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str,
            ) -> Iterator[LocalCluster]:
    metrics_base = free_base_port(NODES)
    c = start_cluster(tmp_path_factory.mktemp("prom-cluster"), nodes=NODES,
                      extra=("--metrics-base-port", str(metrics_base)))
    c.metrics_base = metrics_base  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="module")
def prom(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    base = cluster.metrics_base  # type: ignore[attr-defined]
    targets = [f"127.0.0.1:{base + i}" for i in range(1, NODES + 1)]
    p = start_prometheus(tmp_path_factory.mktemp("prometheus"), targets, cluster.certs_dir,
                         rules=short_for(ALERTS.read_text()))
    try:
        p.wait('up{job="medkv"} == 1', lambda r: len(r) == NODES, 30, "every node scraped")
        yield p
    finally:
        p.stop()
        assert p.process.poll() is not None


def _count(expected: int) -> Any:
    return lambda r: len(r) == 1 and int(float(r[0]["value"][1])) == expected


def test_every_partition_has_a_leader(prom: Prometheus) -> None:
    prom.wait("count(max by (partition) (medkv_partition_is_leader) == 1)", _count(PARTITIONS),
              20, "a leader for every partition")
    # Every replica agrees there is one, and no node sees a partition without quorum.
    prom.wait("count(medkv_partition_has_leader == 1)", _count(PARTITIONS * NODES), 20,
              "every replica knows its leader")
    assert prom.value("sum(medkv_partitions_without_quorum)") == 0
    assert prom.value("sum(medkv_partitions_under_replicated)") == 0
    assert prom.value("sum(medkv_partitions_led)") == PARTITIONS
    assert {r["metric"]["node_id"] for r in prom.query("medkv_node_info")} == {"1", "2", "3"}


def test_commits_rise_under_a_write_load(prom: Prometheus, cluster: LocalCluster) -> None:
    committed = "sum(max by (partition) (medkv_raft_commit_index))"
    prom.wait(committed, lambda r: len(r) == 1, 10, "commit indexes scraped")
    before = prom.value(committed)
    assert before is not None
    with cluster.client(timeout=20.0) as kv:
        for pid in PATIENTS:
            kv.put(pid, "note", b"metrics load")
    # Each put is one entry (plus the sessions it opened): the sum must rise by at least as many.
    prom.wait(committed, lambda r: float(r[0]["value"][1]) >= before + len(PATIENTS), 20,
              "commits counted")
    prom.wait("sum(rate(medkv_proposals_committed_total[10s])) > 0", lambda r: len(r) == 1, 10,
              "a commit rate")
    prom.wait('sum(medkv_grpc_server_handled_total{grpc_method="Put",grpc_code="OK"})',
              lambda r: r and float(r[0]["value"][1]) >= len(PATIENTS), 10, "Put calls counted")
    prom.wait("sum(medkv_log_fsync_duration_seconds_count)", lambda r: r and float(
        r[0]["value"][1]) > 0, 10, "fsyncs timed")


def test_no_label_holds_a_patient_or_record_id(prom: Prometheus) -> None:
    """Every series of every medkv metric, after writes to known patients."""
    prom.wait('sum(medkv_grpc_server_handled_total{grpc_method="Put"})',
              lambda r: r and float(r[0]["value"][1]) >= len(PATIENTS), 10, "the writes scraped")
    reply = prom.api("/api/v1/series", **{"match[]": '{job="medkv"}'})
    assert reply["status"] == "success"
    values = {v for series in reply["data"] for v in series.values()}
    assert len(reply["data"]) > 100
    assert not [v for v in values if "prom-patient" in v or v == "note"]


def _dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash["panels"])
    for var in dash["templating"]["list"]:  # label_values(METRIC, LABEL): METRIC must query
        q = var.get("query")
        text = q.get("query") if isinstance(q, dict) else None
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", text or "")
        if m:
            exprs.append(m.group(1))
    return exprs


def test_every_dashboard_expression_is_a_valid_query(prom: Prometheus) -> None:
    exprs = _dashboard_expressions()
    assert len(exprs) >= 20
    empty = []
    for expr in exprs:
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        reply = prom.api("/api/v1/query", query=expr)
        assert reply["status"] == "success", f"{expr}: {reply.get('error')}"
        if not reply["data"]["result"]:
            empty.append(expr)
    # Valid is not enough: a misspelt metric name is valid PromQL returning nothing.
    # Only metrics that are still empty on a healthy, idle-ish cluster may return nothing.
    allowed_empty = ("medkv_erasure", "medkv_erasures", "medkv_snapshot", "medkv_proposals_failed",
                     "medkv_requests_rejected", "medkv_key_reencryption")
    unexpected = [e for e in empty if not any(a in e for a in allowed_empty)]
    assert not unexpected, f"dashboard expressions returning no data: {unexpected}"


def test_a_killed_node_is_down_and_its_partitions_under_replicated(
    prom: Prometheus, cluster: LocalCluster,
) -> None:
    victim = 3
    base = cluster.metrics_base  # type: ignore[attr-defined]
    instance = f"127.0.0.1:{base + victim}"
    started = time.monotonic()
    done = cluster.run("kill-node", str(victim), timeout=30)
    assert done.returncode == 0, done.stderr
    prom.wait('up{job="medkv"} == 0', lambda r: [x["metric"]["instance"] for x in r] == [instance],
              15, "the killed node shown down")
    # With 3 replicas on 3 nodes every partition has one on the victim.
    prom.wait("count(max by (partition) (medkv_partition_under_replicated) == 1)",
              _count(PARTITIONS), 20, "every partition under-replicated")
    prom.wait("count(max by (partition) (medkv_partition_is_leader) == 1)", _count(PARTITIONS),
              20, "the survivors lead every partition")
    deadline = time.monotonic() + 20
    while not {"MedkvNodeDown", "MedkvPartitionUnderReplicated"} <= prom.firing():
        assert time.monotonic() < deadline, f"alerts firing: {prom.firing()}"
        time.sleep(0.5)
    assert "MedkvPartitionNoLeader" not in prom.firing()
    alert = prom.query('ALERTS{alertname="MedkvNodeDown",alertstate="firing"}')
    assert [a["metric"]["instance"] for a in alert] == [instance]
    assert time.monotonic() - started < 60


def test_the_shipped_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = tool("promtool")
    for rules in (ALERTS.read_text(), short_for(ALERTS.read_text())):
        path = tmp_path / "rules.yml"
        path.write_text(rules)
        done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS: 9 rules found" in done.stdout
