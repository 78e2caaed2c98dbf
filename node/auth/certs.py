"""Certificates for mutual TLS: a cluster CA, node certificates, client certificates.

    medkv certs init  --dir DIR [--days 3650]
    medkv certs issue --dir DIR node ID [--host IP ...] [--dns NAME ...] [--days 365] [--force]
    medkv certs issue --dir DIR client NAME [--days 365] [--force]
    medkv certs show  FILE.pem [--json]

Files (the layout node/tls.py, client/tls.py and scripts/cluster already read):
DIR/ca.pem and DIR/ca.key; DIR/node-<id>.pem/.key; DIR/<name>.pem/.key for a
client. Private keys are created with mode 0600 (fixed at creation, so never
readable by others even for an instant) and never overwritten without --force.
Keep ca.key offline once the certificates are issued.

Identity is in the certificate, checked by every node on every call:
  * a node certificate names its node id twice, as the SAN URI
    `medkv://node/<id>` and the common name `medkv-node-<id>`; the two must
    agree. It is valid for TLS server and client use (a node serves and dials).
  * a client certificate names the client as SAN URI `medkv://client/<name>`
    (common name `medkv-client-<name>`) and is valid for TLS client use only,
    so it can never serve as a node nor speak the Raft transport.
A client certificate only proves the caller is one of the cluster's clients;
what it may do is decided by its bearer token (tokens.py). The Raft transport
accepts only node certificates, and only messages whose `from_node` is the id
the certificate names (require_from_node).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.auth import PermissionDenied

NODE_URI_PREFIX = "medkv://node/"
CLIENT_URI_PREFIX = "medkv://client/"
NODE_CN_PREFIX = "medkv-node-"
CLIENT_CN_PREFIX = "medkv-client-"
CA_DAYS = 3650
LEAF_DAYS = 365
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# grpc's auth_context key for the verified peer's leaf certificate (PEM).
PEER_PEM_KEY = "x509_pem_cert"


class CertError(Exception):
    """A certificate cannot be made or read; the message names the file and the problem."""


# ---- writing ---------------------------------------------------------------


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, *, replace: bool) -> None:
    """PKCS#8 PEM at mode 0600: written to a fresh O_EXCL temp file, then renamed.

    The mode is given at creation (the umask can only remove bits), so the key
    is never readable by others; without `replace` an existing key is kept."""
    if path.exists() and not replace:
        raise CertError(f"{path} exists; refusing to replace a private key (use --force)")
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medkv"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise CertError(f"--days must be at least 1, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # A few minutes back, so a peer whose clock is slightly behind accepts it.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not ca, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def ca_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "ca.pem", directory / "ca.key"


def init_ca(directory: Path, days: int = CA_DAYS) -> CertificateAuthority:
    """A new cluster CA in DIR/ca.pem + DIR/ca.key; refuses to replace an existing one."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = ca_paths(directory)
    if cert_path.exists() or key_path.exists():
        raise CertError(f"{cert_path} exists; refusing to replace a CA (its certificates "
                        "would all stop working)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("medkv cluster CA")
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(key_path, key, replace=False)
    _write_cert(cert_path, cert)
    return CertificateAuthority(key, cert)


def load_ca(directory: Path) -> CertificateAuthority:
    cert_path, key_path = ca_paths(directory)
    for p in (cert_path, key_path):
        if not p.exists():
            raise CertError(f"{p}: no such file (run `medkv certs init --dir {directory}` first)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as e:
        raise CertError(f"{cert_path} / {key_path}: not a PEM certificate and key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertError(f"{key_path} is not the key of {cert_path}")
    return CertificateAuthority(key, cert)


def _issue(
    ca: CertificateAuthority, directory: Path, stem: str, cn: str, sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier], days: int, force: bool,
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertError(f"{cert_path} exists; use --force to issue a new one in its place")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value \
        if _has_ext(ca.cert, x509.SubjectKeyIdentifier) else None
    builder = (
        _builder(_name(cn), ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if ca_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    write_private_key(key_path, key, replace=force)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _has_ext(cert: x509.Certificate, ext: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(ext)
    except x509.ExtensionNotFound:
        return False
    return True


def issue_node(
    ca: CertificateAuthority, directory: Path, node_id: int, *, hosts: Sequence[str] = (),
    dns: Sequence[str] = (), days: int = LEAF_DAYS, force: bool = False,
) -> tuple[Path, Path]:
    """DIR/node-<id>.pem/.key naming the node id; valid for every --host IP and --dns name."""
    if node_id < 1:
        raise CertError(f"a node id is a positive integer, not {node_id}")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"{NODE_URI_PREFIX}{node_id}")]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            raise CertError(f"--host {h!r} is not an IP address (use --dns for names)") from None
    sans += [x509.DNSName(d) for d in dns]
    return _issue(
        ca, directory, f"node-{node_id}", f"{NODE_CN_PREFIX}{node_id}", sans,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days, force,
    )


def issue_client(
    ca: CertificateAuthority, directory: Path, name: str, *, days: int = LEAF_DAYS,
    force: bool = False,
) -> tuple[Path, Path]:
    """DIR/<name>.pem/.key: a client certificate (TLS client use only)."""
    if not _CLIENT_NAME.fullmatch(name) or name == "ca" or name.startswith("node-"):
        raise CertError(
            f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(not 'ca' and not starting with 'node-')"
        )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"{CLIENT_URI_PREFIX}{name}")]
    return _issue(
        ca, directory, name, f"{CLIENT_CN_PREFIX}{name}", sans,
        [ExtendedKeyUsageOID.CLIENT_AUTH], days, force,
    )


# ---- reading identities ----------------------------------------------------


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def node_id_of(cert: x509.Certificate) -> int | None:
    """The node id a node certificate names, or None if it is not a node certificate.

    A node certificate has exactly one `medkv://node/<id>` URI, a common name
    `medkv-node-<id>` naming the same id, and is not a CA. Anything else
    (a client certificate, a certificate whose two names disagree) is None."""
    ids = [u[len(NODE_URI_PREFIX):] for u in _uris(cert) if u.startswith(NODE_URI_PREFIX)]
    if len(ids) != 1 or not ids[0].isdigit() or _is_ca(cert):
        return None
    node_id = int(ids[0])
    if node_id < 1 or _common_name(cert) != f"{NODE_CN_PREFIX}{node_id}" or ids[0] != str(node_id):
        return None
    return node_id


def client_name_of(cert: x509.Certificate) -> str | None:
    names = [u[len(CLIENT_URI_PREFIX):] for u in _uris(cert) if u.startswith(CLIENT_URI_PREFIX)]
    return names[0] if len(names) == 1 else None


@dataclass(frozen=True)
class PeerCertificate:
    """What a verified peer certificate says about who is calling."""

    node_id: int | None  # set only for a node certificate
    client_name: str | None
    common_name: str
    fingerprint: str  # SHA-256 of the DER, hex: names the certificate in the audit log


@lru_cache(maxsize=256)
def _parse_peer(pem: bytes) -> PeerCertificate:
    cert = x509.load_pem_x509_certificate(pem)
    return PeerCertificate(
        node_id=node_id_of(cert),
        client_name=client_name_of(cert),
        common_name=_common_name(cert),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> PeerCertificate | None:
    """The caller's certificate from a grpc auth_context, or None without TLS.

    The TLS layer has already verified it against the cluster CA (the server
    requires client certificates), so this only reads the names. Parsed
    certificates are cached: a long-lived connection presents the same one
    on every call."""
    pems = auth_context.get(PEER_PEM_KEY) or []
    if not pems:
        return None
    try:
        return _parse_peer(bytes(pems[0]))
    except ValueError:
        return None


def require_from_node(peer: PeerCertificate | None, from_node: int) -> int:
    """The certificate's node id, if it is a node certificate naming `from_node`.

    Raises PermissionDenied otherwise: a client certificate, no certificate,
    or a node certificate of another node (a node may speak only for itself)."""
    if peer is None or peer.node_id is None:
        raise PermissionDenied(
            "the Raft transport accepts only node certificates (this caller presented "
            + ("none" if peer is None else "a client certificate") + ")"
        )
    if peer.node_id != from_node:
        raise PermissionDenied(
            f"the certificate of node {peer.node_id} cannot send messages from node {from_node}"
        )
    return peer.node_id


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """What `medkv certs show` prints: names, validity, usage; never key material."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(getattr(g, "value", g)) for g in san]
    except x509.ExtensionNotFound:
        names = []
    node_id = node_id_of(cert)
    kind = "ca" if _is_ca(cert) else "node" if node_id is not None else (
        "client" if client_name_of(cert) is not None else "other")
    return {
        "kind": kind,
        "node_id": node_id,
        "client": client_name_of(cert),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "subject_alternative_names": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


# ---- command line ----------------------------------------------------------

TLS_DIR_ENV = "MEDKV_TLS_DIR"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="medkv certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    default_dir = os.environ.get(TLS_DIR_ENV)

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, default=Path(default_dir) if default_dir else None,
                       required=default_dir is None,
                       help=f"certificate directory (default ${TLS_DIR_ENV})")

    init = sub.add_parser("init", help="create the cluster CA (ca.pem, ca.key)")
    add_dir(init)
    init.add_argument("--days", type=int, default=CA_DAYS)

    issue = sub.add_parser("issue", help="issue a node or client certificate")
    add_dir(issue)
    isub = issue.add_subparsers(dest="kind", required=True, metavar="node ID | client NAME")
    node = isub.add_parser("node", help="a node certificate naming its node id")
    node.add_argument("node_id", type=int)
    node.add_argument("--host", action="append", default=[], help="IP address (repeatable)")
    node.add_argument("--dns", action="append", default=[], help="DNS name (repeatable)")
    client = isub.add_parser("client", help="a client certificate")
    client.add_argument("name")
    for p in (node, client):
        p.add_argument("--days", type=int, default=LEAF_DAYS)
        p.add_argument("--force", action="store_true", help="replace an existing certificate")

    show = sub.add_parser("show", help="print a certificate's identity and validity")
    show.add_argument("file", type=Path)
    show.add_argument("--json", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "init":
            init_ca(args.dir, args.days)
            print(f"certs: CA in {args.dir}/ca.pem (keep ca.key offline once done)", file=sys.stderr)
        elif args.cmd == "issue":
            ca = load_ca(args.dir)
            if args.kind == "node":
                cert, _ = issue_node(ca, args.dir, args.node_id, hosts=args.host or ["127.0.0.1"],
                                     dns=args.dns or ["localhost"], days=args.days, force=args.force)
            else:
                cert, _ = issue_client(ca, args.dir, args.name, days=args.days, force=args.force)
            print(f"certs: {cert} and its key (0600)", file=sys.stderr)
        else:
            try:
                cert_obj = x509.load_pem_x509_certificate(args.file.read_bytes())
            except (OSError, ValueError) as e:
                raise CertError(f"{args.file}: not a readable PEM certificate ({e})") from None
            info = describe(cert_obj)
            if args.json:
                print(json.dumps(info, sort_keys=True))
            else:
                for k, v in info.items():
                    print(f"{k:28} {v}")
    except CertError as e:
        print(f"medkv certs: {e}", file=sys.stderr)
        return 1
    return 0
