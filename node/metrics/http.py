"""The node's /metrics endpoint: HTTP, or HTTPS with mutual TLS when the node has [tls].

A secure node (one with [tls]) serves its metrics with its own certificate
and REQUIRES a client certificate signed by the cluster CA, like its gRPC
port. The metrics hold no patient data, but they describe the cluster's
topology, load and failures, which is worth something to an attacker; and a
port that answers anyone would be the one exception to "every connection of
a node is mutual TLS". Prometheus presents a client certificate with
`tls_config: {cert_file, key_file}` (docs/monitoring.md shows the scrape
configuration; `medkv certs issue --dir DIR client prometheus` makes one).

prometheus_client's own start_http_server wraps the listening socket, so the
TLS handshake runs in the accept loop and one client that connects and says
nothing blocks every scrape. Here the handshake runs in the request's own
thread, with a timeout.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger("medkv.metrics")

HANDSHAKE_TIMEOUT_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the node's log


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the request's thread: the TLS handshake (bounded), then the request."""
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls_sock = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # no certificate, a wrong one, or silence: nothing is served
        try:
            super().finish_request(tls_sock, client_address)
        finally:
            tls_sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)


def server_ssl_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS 1.2+, the node's certificate, client certificates of the cluster CA required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class MetricsServer:
    """/metrics (and any path: Prometheus asks for /metrics) of one registry."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(_Server):
            address_family = family

        self._httpd = Server((host, port), _QuietHandler)
        self._httpd.ssl_context = ssl_context
        self._httpd.set_app(make_wsgi_app(registry))
        self.port = self._httpd.server_address[1]
        self.scheme = "https" if ssl_context is not None else "http"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="medkv-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
