"""A real Prometheus server for tests: Debian's `prometheus` binary, started on
a free 127.0.0.1 port in its own directory, scraping a local cluster's
metrics endpoints every second with the cluster's client certificate, and
stopped (its process gone) at the end.

Absent binaries skip the tests with the reason, unless MEDKV_REQUIRE_PROMETHEUS=1
(.ci/run sets it): then they fail, so CI cannot go green by skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "monitoring" / "medkv-alerts.yml"
DASHBOARD = ROOT / "docs" / "monitoring" / "grafana-dashboard.json"
REQUIRE_ENV = "MEDKV_REQUIRE_PROMETHEUS"
JOB = "medkv"


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`, or skip (fail with MEDKV_REQUIRE_PROMETHEUS=1)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if path is not None:
        return path
    reason = (f"{name} is not installed (Debian: `apt-get install prometheus`); "
              f"with {REQUIRE_ENV}=1 this is a failure")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_for(rules: str, duration: str = "1s") -> str:
    """The shipped rules with every `for:` shortened: what a test can wait for."""
    return re.sub(r"(?m)^(\s*for:\s*)\S+", rf"\g<1>{duration}", rules)


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    directory: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: a bad query, with Prometheus's reason
            return json.loads(e.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = self.api("/api/v1/query", query=expr)
        assert reply["status"] == "success", f"{expr}: {reply}"
        return list(reply["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an expression, None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait(self, expr: str, check: Any, timeout: float, what: str) -> list[dict[str, Any]]:
        """Poll `expr` until check(result) holds; fail with the last result after timeout."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout:.0f}s; last {expr} = {result}")

    def firing(self) -> set[str]:
        return {r["metric"]["alertname"] for r in self.query('ALERTS{alertstate="firing"}')}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_prometheus(directory: Path, targets: list[str], certs: Path | None,
                     rules: str | None = None) -> Prometheus:
    """Prometheus scraping `targets` (host:port) every second as job "medkv";
    HTTPS with DIR/certs' client certificate when `certs` is given."""
    binary = tool("prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    job: dict[str, Any] = {
        "job_name": JOB,
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "static_configs": [{"targets": targets}],
    }
    if certs is not None:
        job["scheme"] = "https"
        job["tls_config"] = {
            "ca_file": str(certs / "ca.pem"),
            "cert_file": str(certs / "client.pem"),
            "key_file": str(certs / "client.key"),
        }
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [job],
    }
    if rules is not None:
        (directory / "rules.yml").write_text(rules)
        config["rule_files"] = [str(directory / "rules.yml")]
    # JSON is YAML: no YAML library needed to write the configuration.
    (directory / "prometheus.yml").write_text(json.dumps(config, indent=2))
    log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [binary, f"--config.file={directory / 'prometheus.yml'}",
         f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory,
    )
    log.close()
    prom = Prometheus(process, f"http://127.0.0.1:{port}", directory)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {process.returncode}:\n"
                + (directory / "prometheus.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return prom
        except OSError:
            pass
        time.sleep(0.2)
    prom.stop()
    raise AssertionError("prometheus did not become ready within 30s")
