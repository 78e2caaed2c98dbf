"""[auth]/[audit] configuration: strict parsing, and the AccessControl built from it
over a real keyring, a real JWKS file and a real audit log on disk."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from node.auth import Unauthenticated
from node.auth.audit import AuditEvent, verify
from node.auth.setup import AuthConfigError, AuthSettings, build_access_control, parse_auth
from node.auth.tokens import DEFAULT_ISSUER, mint
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import create_key_file
from node.crypto.keyring import open_keyring
from tests.auth.conftest import SigningKeys


@pytest.fixture
def jwks_dir(tmp_path: Path, keys: SigningKeys) -> Path:
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks))
    return tmp_path


def test_no_auth_table_means_none(tmp_path: Path) -> None:
    assert parse_auth({}, tmp_path) is None


def test_full_table_parses(jwks_dir: Path) -> None:
    s = parse_auth({
        "auth": {"jwks_file": "jwks.json", "issuers": ["https://idp.example"], "audience": "ehr",
                 "role_claim": "realm_access.roles", "leeway_seconds": 5},
        "audit": {"dir": "audit-here", "wait_durable": True},
    }, jwks_dir)
    assert isinstance(s, AuthSettings)
    assert s.jwks_file == (jwks_dir / "jwks.json").resolve()
    assert s.tokens.issuers == ("https://idp.example",)
    assert s.tokens.audience == "ehr"
    assert s.tokens.role_claim == "realm_access.roles"
    assert s.tokens.leeway_seconds == 5.0
    assert s.audit_dir == (jwks_dir / "audit-here").resolve()
    assert s.audit_wait_durable is True


def test_defaults(jwks_dir: Path) -> None:
    s = parse_auth({"auth": {"jwks_file": str(jwks_dir / "jwks.json")}}, Path("/nonexistent"))
    assert s is not None
    assert s.tokens.issuers == (DEFAULT_ISSUER,)
    assert s.audit_dir is None and s.audit_wait_durable is False


@pytest.mark.parametrize(("raw", "words"), [
    ({"auth": {}}, "exactly one of jwks_file and jwks_url"),
    ({"auth": {"jwks_file": "jwks.json", "jwks_url": "https://x"}}, "exactly one"),
    ({"auth": {"jwks_file": "missing.json"}}, "no such file"),
    ({"auth": {"jwks_url": "http://idp.example/certs"}}, "https://"),
    ({"auth": {"jwks_file": "jwks.json", "issuer": "x"}}, "unknown key(s) in [auth]: issuer"),
    ({"auth": {"jwks_file": "jwks.json", "issuers": []}}, "issuers"),
    ({"auth": {"jwks_file": "jwks.json", "issuers": [3]}}, "issuers"),
    ({"auth": {"jwks_file": "jwks.json", "audience": ""}}, "audience"),
    ({"auth": {"jwks_file": "jwks.json", "leeway_seconds": -1}}, "leeway_seconds"),
    ({"auth": {"jwks_file": "jwks.json", "leeway_seconds": True}}, "leeway_seconds"),
    ({"auth": "yes"}, "[auth] must be a table"),
    ({"auth": {"jwks_file": "jwks.json"}, "audit": {"wait_durable": "yes"}}, "wait_durable"),
    ({"auth": {"jwks_file": "jwks.json"}, "audit": {"path": "x"}}, "unknown key(s) in [audit]"),
    ({"audit": {"dir": "x"}}, "[audit] needs an [auth] table"),
])
def test_bad_tables_are_refused_by_name(jwks_dir: Path, raw: dict[str, Any], words: str) -> None:
    with pytest.raises(AuthConfigError) as e:
        parse_auth(raw, jwks_dir)
    assert words in str(e.value)


def test_built_access_control_verifies_tokens_and_audits_to_disk(
    jwks_dir: Path, keys: SigningKeys, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    create_key_file(key_file)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keyring = open_keyring(data_dir, key_file, create=True)
    settings = parse_auth({"auth": {"jwks_file": "jwks.json"}}, jwks_dir)
    assert settings is not None
    ac = build_access_control(settings, keyring=keyring, sealer=EnvelopeCodec(keyring),
                              data_dir=data_dir, node_id=3, partitions=16)
    assert ac.verifier is not None and ac.audit is not None
    ident = ac.verifier.verify(mint(keys.ed, subject="dr-lee", roles=["clinician"],
                                    clinics=["north"]))
    assert ident.subject == "dr-lee"
    with pytest.raises(Unauthenticated):
        ac.verifier.verify(mint(keys.other_ed, subject="mallory", roles=["admin"]))

    async def audit_one() -> None:
        ac.audit.start()  # type: ignore[union-attr]
        seq = ac.audit.record(AuditEvent(  # type: ignore[union-attr]
            method="/medkv.v1.KV/Get", outcome="OK", subject="dr-lee", roles=("clinician",),
            clinics=("north",), peer="ipv4:127.0.0.1:5"))
        await ac.audit.durable(seq)  # type: ignore[union-attr]
        await ac.audit.close()  # type: ignore[union-attr]

    asyncio.run(audit_one())
    report = verify(data_dir / "audit", EnvelopeCodec(keyring), ac.audit.log.keys, "node-3")
    assert report.ok and report.entries == 1
