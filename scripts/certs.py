"""Certificates for mutual TLS: a cluster CA, one certificate per node, clients.

    scripts/certs --out DIR --nodes 3 [--host 127.0.0.1 ...] [--dns db1.example ...]
                  [--client NAME ...] [--days 365]

Writes DIR/ca.pem and DIR/ca.key, DIR/node-<i>.pem/.key (common name
medkv-node-<i>: only these may speak the Raft transport) and
DIR/<client>.pem/.key for each client name (default: "client"). Private keys
are created with mode 0600. Every node certificate names every --host (IP)
and --dns name, so one set serves a local cluster or a few hosts; for real
hosts give each node its own name. Keep ca.key offline once done.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medkv"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def make_ca(out: Path, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("medkv cluster CA")
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    (out / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "ca.key", key)
    return key, cert


def make_leaf(
    out: Path, stem: str, cn: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    hosts: list[str], dns: list[str], days: int,
) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
    sans += [x509.DNSName(d) for d in dns]
    cert = (
        _builder(_name(cn), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / f"{stem}.key", key)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--host", action="append", default=[], help="IP address in node certs")
    ap.add_argument("--dns", action="append", default=[], help="DNS name in node certs")
    ap.add_argument("--client", action="append", default=[], help="client certificate names")
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args(argv)
    hosts = args.host or ["127.0.0.1"]
    dns = args.dns or ["localhost"]
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "ca.pem").exists():
        print(f"certs: {args.out / 'ca.pem'} exists; refusing to replace a CA", file=sys.stderr)
        return 1
    ca = make_ca(args.out, args.days)
    for n in range(1, args.nodes + 1):
        make_leaf(args.out, f"node-{n}", f"medkv-node-{n}", ca, hosts, dns, args.days)
    for name in args.client or ["client"]:
        make_leaf(args.out, name, f"medkv-client-{name}", ca, [], [name], args.days)
    print(f"certs: CA, {args.nodes} node and {len(args.client or ['client'])} client "
          f"certificate(s) in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
