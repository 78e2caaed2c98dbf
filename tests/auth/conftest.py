"""Shared fixtures: a cluster PKI, a second (foreign) CA, token signing keys and a JWKS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from node.auth import certs
from node.auth.tokens import StaticKeys, TokenSettings, TokenVerifier, public_jwk


@dataclass(frozen=True)
class Pki:
    dir: Path
    foreign: Path  # a second CA with its own client and node-1 certificates


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = certs.init_ca(d)
    for n in (1, 2):
        certs.issue_node(ca, d, n, hosts=["127.0.0.1"], dns=["localhost"])
    certs.issue_client(ca, d, "client")
    f = tmp_path_factory.mktemp("foreign-pki")
    fca = certs.init_ca(f)
    certs.issue_client(fca, f, "client")
    certs.issue_node(fca, f, 1, hosts=["127.0.0.1"])
    return Pki(d, f)


@dataclass(frozen=True)
class SigningKeys:
    ed: ed25519.Ed25519PrivateKey
    es: ec.EllipticCurvePrivateKey
    other_ed: ed25519.Ed25519PrivateKey  # not trusted

    @property
    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [public_jwk(self.ed.public_key()), public_jwk(self.es.public_key())]}

    def verifier(self, **settings: object) -> TokenVerifier:
        return TokenVerifier(TokenSettings(**settings), StaticKeys(self.jwks))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def keys() -> SigningKeys:
    return SigningKeys(
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate(),
    )
