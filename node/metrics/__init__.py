"""Prometheus metrics of one node (docs/monitoring.md lists them).

  * node.metrics.instruments: counters and histograms updated as things
    happen (fsync and apply durations, failed proposals, refusals, snapshots);
  * node.metrics.collector: everything read from the node's state at scrape
    time (leaders, indexes, lag, quorum, replication, key rotation, audit);
  * node.metrics.grpc_calls: the interceptor counting gRPC calls by method and code;
  * node.metrics.http: the endpoint ([metrics] listen), HTTPS with mutual TLS
    on a node with [tls].

Each node has its own registry: nothing goes to prometheus_client's global
one, so several nodes in one process (tests) never mix their numbers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from node.config import split_host_port
from node.errors import StartupError
from node.metrics.collector import NodeCollector
from node.metrics.http import MetricsServer, server_ssl_context
from node.metrics.instruments import NodeMetrics

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.metrics")

__all__ = ["NodeMetrics", "NodeMetricsEndpoint"]


class NodeMetricsEndpoint:
    """The node's scrape-time collector, registered in its registry, and the
    HTTP(S) server when [metrics] listen is set."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # No `_created` series beside every counter and histogram: they double
        # the series for nothing medkv's rules or dashboard use. (Process-wide:
        # prometheus_client has no per-registry switch; a node is one process.)
        disable_created_metrics()
        registry = node.metrics.registry
        self.collector = NodeCollector(node)
        registry.register(self.collector)
        # process_* (CPU, memory, open files, start time) and python_* of this process.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.server: MetricsServer | None = None

    @property
    def url(self) -> str | None:
        """Where the metrics are served, once started; None when off."""
        if self.server is None:
            return None
        host, _ = split_host_port(self.node.cfg.metrics.listen, "[metrics] listen")
        host = f"[{host}]" if ":" in host else host
        return f"{self.server.scheme}://{host}:{self.server.port}/metrics"

    def start(self) -> None:
        """On the node's loop: bind the collector to it, serve if configured."""
        self.collector.bind(asyncio.get_running_loop())
        cfg = self.node.cfg
        if not cfg.metrics.listen:
            return
        host, port = split_host_port(cfg.metrics.listen, "[metrics] listen")
        tls = cfg.tls
        try:
            ctx = (server_ssl_context(tls.ca_file, tls.cert_file, tls.key_file)
                   if tls is not None else None)
            self.server = MetricsServer(self.node.metrics.registry, host, port, ctx)
        except OSError as e:
            raise StartupError(
                f"[metrics] listen = {cfg.metrics.listen!r}: cannot serve metrics there "
                f"({e.strerror or e})") from None
        self.server.start()
        log.info("node %d serves Prometheus metrics at %s%s", cfg.node_id, self.url,
                 " (client certificate of the cluster CA required)" if tls is not None else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
