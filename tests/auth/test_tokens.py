"""Bearer token verification: what is accepted, what is refused, and why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from node.auth import Unauthenticated
from node.auth.tokens import (
    JwksFile,
    JwksUrl,
    KeySourceError,
    StaticKeys,
    TokenSettings,
    TokenVerifier,
    UnknownKey,
    keygen,
    load_signing_key,
    mint,
    public_jwk,
)
from tests.auth.conftest import SigningKeys

ROOT = Path(__file__).resolve().parents[2]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"iss": "medkv-local", "aud": "medkv", "sub": "alice", "exp": now + 600,
                         "iat": now, "role": "clinician", "clinics": ["c1"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def handmade(header: dict[str, Any], payload: dict[str, Any], sign: Any) -> str:
    """A JWS built without PyJWT: base64url(header).base64url(payload).base64url(sig)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def refused(v: TokenVerifier, token: str, words: str) -> str:
    with pytest.raises(Unauthenticated) as ei:
        v.verify(token)
    msg = ei.value.message
    assert words in msg, msg
    for part in token.split("."):  # never the token, nor any part of it
        assert len(part) < 8 or part not in msg
    return msg


# ---- accepted ------------------------------------------------------------------


def test_eddsa_and_es256_tokens_are_accepted(keys: SigningKeys) -> None:
    v = keys.verifier()
    for k in (keys.ed, keys.es):
        ident = v.verify(mint(k, subject="alice", roles=["clinician"], clinics=["c1", "c2"]))
        assert ident.subject == "alice"
        assert ident.roles == {"clinician"}
        assert ident.clinics == {"c1", "c2"}
        assert ident.issuer == "medkv-local"


def test_a_token_signed_by_a_second_library_with_the_right_key_is_accepted(
    keys: SigningKeys,
) -> None:
    """Interop: raw cryptography signatures in the standard JWS encoding verify."""
    v = keys.verifier()
    ed_kid = public_jwk(keys.ed.public_key())["kid"]
    tok = handmade({"alg": "EdDSA", "kid": ed_kid, "typ": "JWT"}, claims(), keys.ed.sign)
    assert v.verify(tok).subject == "alice"

    def es256(data: bytes) -> bytes:  # JWS wants r || s, 32 bytes each, not DER
        r, s = decode_dss_signature(keys.es.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    es_kid = public_jwk(keys.es.public_key())["kid"]
    tok = handmade({"alg": "ES256", "kid": es_kid}, claims(sub="bob"), es256)
    assert v.verify(tok).subject == "bob"


def test_keycloak_style_roles_and_a_single_clinic_claim(keys: SigningKeys) -> None:
    v = keys.verifier(role_claim="realm_access.roles")
    tok = mint(keys.ed, subject="carol", roles=["x"], extra={
        "realm_access": {"roles": ["offline_access", "analyst"]}, "clinic": "c9"})
    ident = v.verify(tok)
    assert ident.roles == {"analyst"}  # unknown roles are ignored
    assert ident.clinics == {"c9"}


def test_clock_skew_within_the_leeway_is_accepted(keys: SigningKeys) -> None:
    now = time.time()
    v = keys.verifier(leeway_seconds=30)
    v.verify(mint(keys.ed, subject="a", roles=["analyst"], now=now - 610, ttl_seconds=600))
    v.verify(mint(keys.ed, subject="a", roles=["analyst"], not_before=now + 10))


# ---- refused --------------------------------------------------------------------


def test_no_alg_none(keys: SigningKeys) -> None:
    v = keys.verifier()
    tok = handmade({"alg": "none", "typ": "JWT"}, claims(), lambda _: b"")
    refused(v, tok, "algorithm 'none' is not accepted")
    refused(v, tok.rsplit(".", 1)[0] + ".", "algorithm 'none' is not accepted")
    refused(v, jwt.encode(claims(), None, algorithm="none"), "'none' is not accepted")


def test_hmac_signed_with_the_public_key_is_refused(keys: SigningKeys) -> None:
    """The classic confusion attack: HS256 keyed with the (public) verification key."""
    v = keys.verifier()
    jwk = public_jwk(keys.ed.public_key())
    for secret in (
        keys.ed.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo),
        keys.ed.public_key().public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw),
        json.dumps(jwk).encode(),
    ):
        for alg, h in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            tok = handmade({"alg": alg, "kid": jwk["kid"]}, claims(),
                           lambda data, s=secret, h=h: hmac.new(s, data, h).digest())
            refused(v, tok, f"algorithm '{alg}' is not accepted")


def test_other_algorithms_are_refused(keys: SigningKeys) -> None:
    v = keys.verifier()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(v, jwt.encode(claims(), rsa_key, algorithm="RS256"), "'RS256' is not accepted")
    es384 = ec.generate_private_key(ec.SECP384R1())
    refused(v, jwt.encode(claims(), es384, algorithm="ES384"), "'ES384' is not accepted")


def test_the_key_must_be_of_the_tokens_algorithm(keys: SigningKeys) -> None:
    """An ES256 header naming the Ed25519 key's kid is refused before any check."""
    v = keys.verifier()
    ed_kid = public_jwk(keys.ed.public_key())["kid"]
    tok = jwt.encode(claims(), keys.es, algorithm="ES256", headers={"kid": ed_kid})
    refused(v, tok, "is an EdDSA key")


def test_wrong_signature(keys: SigningKeys) -> None:
    v = keys.verifier()
    ed_kid = public_jwk(keys.ed.public_key())["kid"]
    forged = jwt.encode(claims(), keys.other_ed, algorithm="EdDSA", headers={"kid": ed_kid})
    refused(v, forged, "signature does not verify")
    # A valid token with its payload swapped for another's: the signature no longer matches.
    good = mint(keys.ed, subject="alice", roles=["clinician"], clinics=["c1"])
    admin = mint(keys.ed, subject="alice", roles=["admin"])
    h, _, s = good.split(".")
    refused(v, f"{h}.{admin.split('.')[1]}.{s}", "signature does not verify")


def test_untrusted_key_id(keys: SigningKeys) -> None:
    v = keys.verifier()
    with pytest.raises(UnknownKey, match="not a trusted key"):
        v.verify(mint(keys.other_ed, subject="a", roles=["admin"]))


def test_expired_and_not_yet_valid(keys: SigningKeys) -> None:
    v = keys.verifier(leeway_seconds=5)
    now = time.time()
    refused(v, mint(keys.ed, subject="a", roles=["clinician"], now=now - 100, ttl_seconds=60),
            "token expired at ")
    refused(v, mint(keys.ed, subject="a", roles=["clinician"], not_before=now + 60),
            "token is not valid before ")


def test_wrong_audience_and_issuer(keys: SigningKeys) -> None:
    v = keys.verifier()
    refused(v, mint(keys.ed, subject="a", roles=["clinician"], audience="other-service"),
            "audience does not include 'medkv'")
    refused(v, mint(keys.ed, subject="a", roles=["clinician"], issuer="https://evil.example"),
            "issuer is not a trusted issuer")
    ok = keys.verifier(issuers=("https://idp.example/realms/medkv", "medkv-local"))
    ok.verify(mint(keys.ed, subject="a", roles=["clinician"],
                   issuer="https://idp.example/realms/medkv"))


@pytest.mark.parametrize("missing", ["exp", "iss", "aud", "sub"])
def test_required_claims(keys: SigningKeys, missing: str) -> None:
    v = keys.verifier()
    kid = public_jwk(keys.ed.public_key())["kid"]
    tok = jwt.encode(claims(**{missing: None}), keys.ed, algorithm="EdDSA", headers={"kid": kid})
    refused(v, tok, f"lacks the required '{missing}' claim")


def test_roles_and_clinics_are_checked(keys: SigningKeys) -> None:
    v = keys.verifier()
    kid = public_jwk(keys.ed.public_key())["kid"]

    def tok(**c: Any) -> str:
        return jwt.encode(claims(**c), keys.ed, algorithm="EdDSA", headers={"kid": kid})

    refused(v, tok(role=None), "names no medkv role")
    refused(v, tok(role="superuser"), "names no medkv role")
    # No token can make its bearer a node: that takes a node certificate.
    refused(v, tok(role="node"), "names no medkv role")
    refused(v, tok(role=7), "must be a string or a list of strings")
    refused(v, tok(clinics=["c1", "bad clinic id with spaces"]), "clinic ids must be")
    refused(v, tok(sub=""), "subject (sub)")


def test_crit_header_and_garbage(keys: SigningKeys) -> None:
    v = keys.verifier()
    kid = public_jwk(keys.ed.public_key())["kid"]
    tok = jwt.encode(claims(), keys.ed, algorithm="EdDSA", headers={"kid": kid, "crit": ["exp"]})
    refused(v, tok, "critical")
    refused(v, "not-a-jwt", "not a well-formed JWT")
    refused(v, "", "empty bearer token")
    refused(v, "a" * 9000, "longer than")


@given(pos=st.integers(min_value=0), char=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0189"))
def test_any_single_character_change_is_refused(keys: SigningKeys, pos: int, char: str) -> None:
    v = keys.verifier()
    tok = mint(keys.ed, subject="alice", roles=["clinician"], clinics=["c1"], now=1_900_000_000.0
               - 10**6, ttl_seconds=10**8)
    i = pos % len(tok)
    if tok[i] == "." or tok[i] == char:
        return
    changed = tok[:i] + char + tok[i + 1:]
    try:
        ident = v.verify(changed)
    except Unauthenticated:
        return
    # base64url's last character can carry unused bits: then it decodes to the same token.
    assert ident == v.verify(tok)


# ---- key sources --------------------------------------------------------------


def test_a_jwks_with_private_key_material_is_refused(keys: SigningKeys) -> None:
    from jwt.algorithms import OKPAlgorithm

    private = OKPAlgorithm.to_jwk(keys.ed, as_dict=True)
    with pytest.raises(KeySourceError, match="private key material"):
        StaticKeys({"keys": [private]})
    with pytest.raises(KeySourceError, match="private key material"):
        StaticKeys({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]})


def test_keys_of_other_types_in_a_providers_jwks_are_skipped(keys: SigningKeys) -> None:
    from jwt.algorithms import RSAAlgorithm

    rsa_pub = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), as_dict=True)
    src = StaticKeys({"keys": [dict(rsa_pub, kid="rsa1", alg="RS256"), *keys.jwks["keys"]]})
    assert "rsa1" not in src.current().keys
    assert len(src.current().keys) == 2


def test_jwks_file_is_reread_when_it_changes(keys: SigningKeys, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(keys.ed.public_key())]}))
    src = JwksFile(path, check_seconds=0)
    v = TokenVerifier(TokenSettings(), src)
    es_tok = mint(keys.es, subject="a", roles=["auditor"])
    with pytest.raises(UnknownKey):
        v.verify(es_tok)
    path.write_text(json.dumps(keys.jwks))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert v.verify(es_tok).roles == {"auditor"}


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any], list[int]]]:
    state: dict[str, Any] = {"keys": []}
    hits: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/jwks", state, hits
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


def test_jwks_url_fetches_an_unknown_key_once_per_interval(
    keys: SigningKeys, jwks_server: tuple[str, dict[str, Any], list[int]]
) -> None:
    import asyncio

    url, state, hits = jwks_server
    state["keys"] = [public_jwk(keys.ed.public_key())]
    clock = [1000.0]
    src = JwksUrl(url, refresh_seconds=300, min_refresh_seconds=30, clock=lambda: clock[0])
    src.refresh()
    v = TokenVerifier(TokenSettings(), src)
    es_tok = mint(keys.es, subject="a", roles=["auditor"])

    async def run() -> None:
        # The provider rotated in the ES256 key; the first token naming it fetches once.
        state["keys"] = keys.jwks["keys"]
        with pytest.raises(UnknownKey):  # within min_refresh_seconds of the start fetch
            await v.averify(es_tok)
        clock[0] += 31
        assert (await v.averify(es_tok)).roles == {"auditor"}
        n = len(hits)
        # A flood of tokens with bogus key ids costs no more fetches within the interval.
        for _ in range(20):
            with pytest.raises(UnknownKey):
                await v.averify(mint(keys.other_ed, subject="x", roles=["admin"]))
        assert len(hits) == n

    asyncio.run(run())
    assert src.fetches == 2


def test_jwks_url_must_be_https_except_localhost() -> None:
    with pytest.raises(KeySourceError, match="use https"):
        JwksUrl("http://idp.example/jwks")


# ---- command line ---------------------------------------------------------------


def run_medkv(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("MEDKV_TOKEN", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "client.cli", *args], input=stdin,
                          capture_output=True, text=True, env=e, cwd=ROOT, timeout=60)


def test_cli_keygen_issue_verify(tmp_path: Path) -> None:
    r = run_medkv("tokens", "keygen", "--dir", str(tmp_path), "--alg", "ES256")
    assert r.returncode == 0, r.stderr
    key = tmp_path / "token-signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert isinstance(load_signing_key(key), ec.EllipticCurvePrivateKey)
    r = run_medkv("tokens", "issue", "--key", str(key), "--sub", "dr-who", "--role", "clinician",
                  "--clinic", "north", "--ttl", "15m")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    r = run_medkv("tokens", "verify", "--jwks", str(tmp_path / "jwks.json"), stdin=token)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["subject"] == "dr-who" and out["roles"] == ["clinician"] and out["clinics"] == ["north"]
    r = run_medkv("tokens", "verify", "--jwks", str(tmp_path / "jwks.json"), "--aud", "else",
                  env={"MEDKV_TOKEN": token})
    assert r.returncode == 1 and "audience does not include 'else'" in r.stderr
    assert token not in r.stderr
    # A piped token wins over $MEDKV_TOKEN (set by `scripts/cluster env`), which
    # may itself be @FILE as for the clients.
    (tmp_path / "tok").write_text(token + "\n")
    r = run_medkv("tokens", "verify", "--jwks", str(tmp_path / "jwks.json"), stdin=token + "\n",
                  env={"MEDKV_TOKEN": "@/nonexistent/other.token"})
    assert r.returncode == 0 and json.loads(r.stdout)["subject"] == "dr-who", r.stderr
    r = run_medkv("tokens", "verify", "--jwks", str(tmp_path / "jwks.json"),
                  env={"MEDKV_TOKEN": f"@{tmp_path / 'tok'}"})
    assert r.returncode == 0 and json.loads(r.stdout)["subject"] == "dr-who", r.stderr


def test_keygen_keeps_earlier_keys_in_the_jwks(tmp_path: Path) -> None:
    _, jwks, kid1 = keygen(tmp_path, "EdDSA")
    old = load_signing_key(tmp_path / "token-signing.key")
    with pytest.raises(KeySourceError, match="refusing to replace"):
        keygen(tmp_path, "EdDSA")
    _, _, kid2 = keygen(tmp_path, "ES256", force=True)
    kids = {k["kid"] for k in json.loads(jwks.read_text())["keys"]}
    assert kids == {kid1, kid2}
    v = TokenVerifier(TokenSettings(), JwksFile(jwks))
    assert v.verify(mint(old, subject="a", roles=["admin"])).subject == "a"


def test_ed25519_keys_only_for_eddsa() -> None:
    assert public_jwk(ed25519.Ed25519PrivateKey.generate().public_key())["alg"] == "EdDSA"
    with pytest.raises(KeySourceError):
        public_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_a_remembered_token_still_expires(keys: SigningKeys) -> None:
    v = keys.verifier(leeway_seconds=0)
    now = time.time()
    tok = mint(keys.ed, subject="a", roles=["clinician"], now=now, ttl_seconds=1.5)
    assert v.verify(tok).subject == "a"
    assert v.verify(tok).subject == "a"  # from the cache
    time.sleep(max(0.0, now + 1.6 - time.time()) + 0.5)
    refused(v, tok, "token expired at")


def test_a_remembered_token_is_refused_once_its_key_is_no_longer_trusted(
    keys: SigningKeys, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks))
    v = TokenVerifier(TokenSettings(), JwksFile(path, check_seconds=0))
    tok = mint(keys.es, subject="a", roles=["auditor"])
    assert v.verify(tok).subject == "a"
    path.write_text(json.dumps({"keys": [public_jwk(keys.ed.public_key())]}))  # ES256 key revoked
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(UnknownKey):
        v.verify(tok)
