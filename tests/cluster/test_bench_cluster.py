"""scripts/bench against a real local cluster, very briefly: every workload
and the echo produce a point with the JSON fields docs/benchmarks.md
describes and figures that make sense together. No timing assertions: the
figures themselves may be anything a slow machine gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.bench.cli import main
from client.bench.targets import WORKLOADS
from tests.cluster.harness import start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEVELS = (1, 4)


def test_bench_json_has_every_point_with_sane_figures(tmp_path: Path) -> None:
    c = start_cluster(tmp_path / "cluster", partitions=4)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    try:
        code = main([
            "--addr", ",".join(c.addresses), "--workloads", ",".join(WORKLOADS),
            "--concurrency", ",".join(map(str, LEVELS)), "--warmup", "0.2", "--duration", "0.6",
            "--keys", "40", "--batch-size", "20", "--echo", "--json", str(out), "--plot", str(png),
        ])
    finally:
        stop_cluster(c)
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1
    assert doc["machine"]["cpus"] >= 1 and len(doc["machine"]["loadavg_before"]) == 3
    assert doc["config"]["workloads"] == list(WORKLOADS)
    assert len(doc["systems"]["medkv"]["server_pids"]) == 3  # found behind the ports
    got = {(p["system"], p["workload"], p["concurrency"]): p for p in doc["points"]}
    want = {("medkv", w, n) for w in WORKLOADS for n in LEVELS}
    want |= {("echo", w, n) for w in ("echo-tls", "echo-plain") for n in LEVELS}
    assert set(got) == want
    for key, p in got.items():
        lat, cpu = p["latency_ms"], p["cpu"]
        assert p["ops"] > 0 and p["ops_per_s"] > 0, key
        assert p["errors"] == 0, (key, p["first_error"])
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"], key
        assert p["seconds"] >= 0.6, key
        assert p["ops_per_s"] == pytest.approx(p["ops"] / p["seconds"], rel=1e-3), key
        assert cpu["server_ms_per_op"] is not None and cpu["server_ms_per_op"] >= 0, key
        assert cpu["loadgen_ms_per_op"] is not None and cpu["loadgen_ms_per_op"] >= 0, key
        per_call = 20 if p["workload"] == "batch" else 1
        assert p["records"] == per_call * p["calls"], key
    # The servers did some work for the writes, whatever the clock resolution.
    assert sum(got[("medkv", "put", n)]["cpu"]["server_s"] for n in LEVELS) > 0
    assert doc["comparison"] == []  # no etcd in this run
    if png.exists():  # written when matplotlib is installed (scripts/bench installs it)
        assert png.read_bytes()[:4] == b"\x89PNG"
