"""TLS for the client: the cluster's CA and this client's certificate.

Nodes configured with [tls] require a client certificate signed by the
cluster's CA (`scripts/certs` makes one: client.pem / client.key beside ca.pem).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

TLS_DIR_ENV = "MEDKV_TLS_DIR"


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def from_dir(cls, directory: str | Path, name: str = "client") -> TlsConfig:
        """ca.pem, NAME.pem and NAME.key in one directory, as scripts/certs writes them."""
        d = Path(directory)
        return cls(d / "ca.pem", d / f"{name}.pem", d / f"{name}.key")

    @classmethod
    def from_env(cls) -> TlsConfig | None:
        directory = os.environ.get(TLS_DIR_ENV)
        return cls.from_dir(directory) if directory else None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes(),
            certificate_chain=self.cert_file.read_bytes(),
        )
