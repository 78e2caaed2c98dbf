"""Mutual TLS for every connection of a node: clients to it, it to its peers.

With a [tls] table in the configuration the node listens only with TLS and
requires a client certificate signed by the cluster's CA, and dials its peers
with its own certificate. A node certificate names its node id (SAN URI
medkv://node/<id> and common name medkv-node-<id>, node/auth/certs.py); the
Raft transport accepts streams only from those, so a clinic's client
certificate cannot inject Raft messages or snapshots. Certificates are made by
`medkv certs` (or `scripts/certs` for a whole local cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from node.auth.certs import peer_certificate

NODE_CN_PREFIX = "medkv-node-"


@dataclass(frozen=True)
class TlsSettings:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca_file.read_bytes(), self.cert_file.read_bytes(), self.key_file.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def peer_common_name(context: grpc.aio.ServicerContext) -> str:
    """The common name of the caller's verified certificate, or "" without TLS."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else ""


def is_node_peer(context: grpc.aio.ServicerContext, tls: TlsSettings | None) -> bool:
    """Without TLS there is nothing to check; with it, only node certificates pass
    (both names in the certificate must agree on one node id)."""
    if tls is None:
        return True
    peer = peer_certificate(context.auth_context())
    return peer is not None and peer.node_id is not None


def peer_node_id(context: grpc.aio.ServicerContext, tls: TlsSettings | None) -> int | None:
    """The node id the caller's certificate names; None without TLS or for a
    certificate that names no node."""
    if tls is None:
        return None
    peer = peer_certificate(context.auth_context())
    return None if peer is None else peer.node_id
