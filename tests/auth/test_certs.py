"""Certificates: identities in them, file safety, and the Raft from_node check."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.auth import PermissionDenied, certs
from tests.auth.conftest import Pki

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_certificates_name_their_node_id(pki: Pki) -> None:
    cert = load(pki.dir / "node-2.pem")
    assert certs.node_id_of(cert) == 2
    info = certs.describe(cert)
    assert info["kind"] == "node"
    assert "medkv://node/2" in info["subject_alternative_names"]
    assert "127.0.0.1" in info["subject_alternative_names"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_client_certificates_are_not_node_certificates(pki: Pki) -> None:
    cert = load(pki.dir / "client.pem")
    assert certs.node_id_of(cert) is None
    assert certs.client_name_of(cert) == "client"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # cannot serve as a node
    assert certs.node_id_of(load(pki.dir / "ca.pem")) is None


def _forge(ca: certs.CertificateAuthority, cn: str, uris: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return b.sign(ca.key, hashes.SHA256())


def test_a_certificate_whose_names_disagree_is_no_node(pki: Pki) -> None:
    ca = certs.load_ca(pki.dir)
    assert certs.node_id_of(_forge(ca, "medkv-node-1", ["medkv://node/1"])) == 1
    assert certs.node_id_of(_forge(ca, "medkv-node-1", ["medkv://node/2"])) is None
    assert certs.node_id_of(_forge(ca, "medkv-node-1", [])) is None  # a CN alone is not enough
    assert certs.node_id_of(_forge(ca, "medkv-node-1", ["medkv://node/1", "medkv://node/2"])) is None
    assert certs.node_id_of(_forge(ca, "medkv-node-01", ["medkv://node/01"])) is None
    assert certs.node_id_of(_forge(ca, "medkv-node-0", ["medkv://node/0"])) is None


def _peer(path: Path) -> certs.PeerCertificate | None:
    return certs.peer_certificate({certs.PEER_PEM_KEY: [path.read_bytes()]})


def test_require_from_node(pki: Pki) -> None:
    node2 = _peer(pki.dir / "node-2.pem")
    assert node2 is not None and node2.node_id == 2
    assert certs.require_from_node(node2, 2) == 2
    with pytest.raises(PermissionDenied, match="node 2 cannot send messages from node 1"):
        certs.require_from_node(node2, 1)
    with pytest.raises(PermissionDenied, match=r"only node certificates.*client certificate"):
        certs.require_from_node(_peer(pki.dir / "client.pem"), 1)
    with pytest.raises(PermissionDenied, match="presented none"):
        certs.require_from_node(None, 1)
    assert certs.peer_certificate({}) is None


def test_private_keys_are_0600_and_never_replaced_silently(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ca = certs.init_ca(tmp_path)
        certs.issue_node(ca, tmp_path, 3, hosts=["10.0.0.3"], dns=["db3"])
    finally:
        os.umask(old)
    for name in ("ca.key", "node-3.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    with pytest.raises(certs.CertError, match="refusing to replace a CA"):
        certs.init_ca(tmp_path)
    before = (tmp_path / "node-3.key").read_bytes()
    with pytest.raises(certs.CertError, match="use --force"):
        certs.issue_node(ca, tmp_path, 3)
    assert (tmp_path / "node-3.key").read_bytes() == before
    certs.issue_node(ca, tmp_path, 3, force=True)
    assert (tmp_path / "node-3.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "node-3.key").stat().st_mode) == 0o600


def test_expiry_and_bad_input(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path, days=30)
    cert_path, _ = certs.issue_client(ca, tmp_path, "lab-app", days=2)
    cert = load(cert_path)
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=1) < left <= datetime.timedelta(days=2)
    with pytest.raises(certs.CertError, match="--days"):
        certs.issue_client(ca, tmp_path, "x", days=0)
    with pytest.raises(certs.CertError, match="client name"):
        certs.issue_client(ca, tmp_path, "../escape")
    with pytest.raises(certs.CertError, match="client name"):
        certs.issue_client(ca, tmp_path, "node-1")
    with pytest.raises(certs.CertError, match="not an IP address"):
        certs.issue_node(ca, tmp_path, 1, hosts=["db1.example"])
    with pytest.raises(certs.CertError, match="positive integer"):
        certs.issue_node(ca, tmp_path, 0)


def test_load_ca_checks_the_pair(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    certs.init_ca(a)
    certs.init_ca(b)
    (a / "ca.key").write_bytes((b / "ca.key").read_bytes())
    with pytest.raises(certs.CertError, match="is not the key of"):
        certs.load_ca(a)
    with pytest.raises(certs.CertError, match="no such file"):
        certs.load_ca(tmp_path / "none")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MEDKV_TLS_DIR", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


def test_medkv_certs_cli(tmp_path: Path) -> None:
    d = str(tmp_path / "tls")
    r = _run("-m", "client.cli", "certs", "init", "--dir", d)
    assert r.returncode == 0, r.stderr
    r = _run("-m", "client.cli", "certs", "issue", "--dir", d, "node", "4", "--host", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    r = _run("-m", "client.cli", "certs", "issue", "--dir", d, "client", "frontdesk")
    assert r.returncode == 0, r.stderr
    r = _run("-m", "client.cli", "certs", "show", f"{d}/node-4.pem", "--json")
    assert r.returncode == 0 and '"node_id": 4' in r.stdout
    r = _run("-m", "client.cli", "certs", "init", "--dir", d)
    assert r.returncode == 1 and "refusing to replace a CA" in r.stderr
    key = serialization.load_pem_private_key((tmp_path / "tls" / "frontdesk.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_scripts_certs_makes_a_whole_cluster(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    r = _run(str(ROOT / "scripts" / "certs.py"), "--out", str(out), "--nodes", "3")
    assert r.returncode == 0, r.stderr
    for n in (1, 2, 3):
        assert certs.node_id_of(load(out / f"node-{n}.pem")) == n
        assert stat.S_IMODE((out / f"node-{n}.key").stat().st_mode) == 0o600
    assert certs.client_name_of(load(out / "client.pem")) == "client"
    r = _run(str(ROOT / "scripts" / "certs.py"), "--out", str(out), "--nodes", "3")
    assert r.returncode == 1 and "refusing to replace a CA" in r.stderr
