"""Bearer tokens: standard JWTs, verified against keys the cluster trusts (a JWKS).

Clients send `authorization: Bearer <JWT>` on every call. The token is checked
with PyJWT against a JSON Web Key Set from a file or an https URL (so an
OpenID Connect provider such as Keycloak or Azure AD can issue tokens), and
only these are accepted:

  * algorithms EdDSA (Ed25519) and ES256 (ECDSA P-256, SHA-256). `alg: none`,
    every HMAC algorithm (so the classic "HS256 signed with the public key"
    forgery), RSA and anything else are refused before any key is touched;
    the key a token names must itself be of the token's algorithm.
  * claims: `iss` equal to a configured issuer, `aud` containing the
    configured audience, `exp` required and in the future, `nbf` (if present)
    in the past, both with a small leeway for clock skew; a non-empty `sub`;
    a medkv role in the role claim (default `role`, a string or a list; a
    dotted path such as `realm_access.roles` reads Keycloak's layout); the
    clinics in `clinics` (list) or `clinic` (string).
  * no `crit` header (we understand no extensions, so we must refuse them).

Errors are Unauthenticated with the precise reason ("token expired at ...",
"token audience does not include 'medkv'"), never the token or key material.

Keys: a JwksFile is re-read when the file changes; a JwksUrl is fetched when
its cache is older than `refresh_seconds`, and a token naming an unknown key
id triggers at most one fetch per `min_refresh_seconds` (key rotation at the
provider), so a stream of bogus key ids cannot turn into a stream of fetches.
Fetching never runs on the event loop (TokenVerifier.averify).

Labs and tests mint their own tokens: `medkv tokens keygen --dir DIR` writes a
signing key (0600) and DIR/jwks.json; `medkv tokens issue --key ...` prints a
token; `medkv tokens verify` checks one against a JWKS as a node would.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from node.auth import Unauthenticated
from node.auth.identity import TOKEN_ROLES, Identity

ALLOWED_ALGORITHMS = ("EdDSA", "ES256")
DEFAULT_ISSUER = "medkv-local"
DEFAULT_AUDIENCE = "medkv"
DEFAULT_LEEWAY = 30.0
MAX_TOKEN_BYTES = 8192
MAX_JWKS_BYTES = 1 << 20
SIGNING_KEY_FILE = "token-signing.key"
JWKS_FILE = "jwks.json"
TOKEN_ENV = "MEDKV_TOKEN"
_CLINIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MAX_SUBJECT = 256

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class KeySourceError(Exception):
    """The JWKS cannot be read or holds something it must not (private keys)."""


class UnknownKey(Unauthenticated):
    """The token names a key id the key set does not hold (yet): worth one refresh."""


# ---- keys ------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    algorithm: str  # one of ALLOWED_ALGORITHMS
    key: PublicKey = field(repr=False)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK of a key, with `kid` (RFC 7638 thumbprint), `alg` and `use`."""
    members: tuple[str, ...]
    if isinstance(key, ed25519.Ed25519PublicKey):
        jwk: dict[str, str] = OKPAlgorithm.to_jwk(key, as_dict=True)
        alg, members = "EdDSA", ("crv", "kty", "x")
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        alg, members = "ES256", ("crv", "kty", "x", "y")
    else:
        raise KeySourceError("only Ed25519 and EC P-256 keys are supported")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    thumb = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {**{m: jwk[m] for m in members}, "kid": thumb, "alg": alg, "use": "sig"}


def _jwk_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """One JWK as a verification key, or None if it is not for EdDSA/ES256 signatures.

    Keys of other types (an RSA key an identity provider also publishes) are
    skipped, not an error; a private key in a trust set is an error."""
    if "d" in jwk or "k" in jwk:
        raise KeySourceError(
            f"JWKS key {str(jwk.get('kid', '?'))!r} holds private key material; publish only "
            "public keys"
        )
    if jwk.get("use", "sig") != "sig":
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    key: Any
    try:
        if kty == "OKP" and crv == "Ed25519":
            alg, key = "EdDSA", OKPAlgorithm.from_jwk(dict(jwk))
        elif kty == "EC" and crv == "P-256":
            alg, key = "ES256", ECAlgorithm.from_jwk(dict(jwk))
        else:
            return None
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError) as e:
        raise KeySourceError(f"JWKS key {str(jwk.get('kid', '?'))!r} is malformed: {e}") from None
    if jwk.get("alg", alg) != alg:
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise KeySourceError(
            f"JWKS key {str(jwk.get('kid', '?'))!r} holds private key material; publish only "
            "public keys"
        )
    kid = str(jwk.get("kid") or public_jwk(key)["kid"])
    return VerificationKey(kid, alg, key)


@dataclass(frozen=True)
class KeySet:
    keys: Mapping[str, VerificationKey]

    @classmethod
    def from_jwks(cls, doc: Any, where: str) -> KeySet:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise KeySourceError(f"{where}: not a JWKS (a JSON object with a 'keys' list)")
        keys: dict[str, VerificationKey] = {}
        for jwk in doc["keys"]:
            if not isinstance(jwk, dict):
                raise KeySourceError(f"{where}: a key is not a JSON object")
            k = _jwk_key(jwk)
            if k is not None:
                keys[k.kid] = k
        return cls(keys)

    def find(self, kid: str | None, alg: str) -> VerificationKey:
        if kid is None:
            # A token without a key id: acceptable only when the choice is unambiguous.
            matching = [k for k in self.keys.values() if k.algorithm == alg]
            if len(matching) == 1:
                return matching[0]
            raise Unauthenticated(
                f"token has no key id (kid) and {len(matching)} trusted {alg} keys could match"
            )
        k = self.keys.get(kid)
        if k is None:
            raise UnknownKey(f"token is signed by key {kid!r}, which is not a trusted key")
        if k.algorithm != alg:
            raise Unauthenticated(
                f"token says algorithm {alg} but its key {kid!r} is an {k.algorithm} key"
            )
        return k


class KeySource(Protocol):
    def current(self) -> KeySet: ...

    def refresh_due(self, *, unknown_kid: bool) -> bool:
        """Whether refresh() is worth calling now (cache old, or an unknown kid)."""
        ...

    def refresh(self) -> None:
        """Fetch the keys again (blocking IO: never call it on the event loop)."""
        ...


class StaticKeys:
    """A fixed key set (tests, or keys given inline)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = KeySet.from_jwks(dict(jwks), "inline JWKS")

    def current(self) -> KeySet:
        return self._keys

    def refresh_due(self, *, unknown_kid: bool) -> bool:
        return False

    def refresh(self) -> None:
        return None


class JwksFile:
    """A JWKS file, re-read when its modification time or size changes (checked at
    most once per `check_seconds`), so keys can be rotated without a restart."""

    def __init__(self, path: Path, check_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._keys = self._load()

    def _load(self) -> KeySet:
        try:
            st = self.path.stat()
            if st.st_size > MAX_JWKS_BYTES:
                raise KeySourceError(f"{self.path}: larger than {MAX_JWKS_BYTES} bytes")
            doc = json.loads(self.path.read_bytes())
        except OSError as e:
            raise KeySourceError(f"{self.path}: cannot read the JWKS ({e.strerror})") from None
        except ValueError:
            raise KeySourceError(f"{self.path}: not valid JSON") from None
        keys = KeySet.from_jwks(doc, str(self.path))
        self._stamp = (st.st_mtime_ns, st.st_size)
        return keys

    def current(self) -> KeySet:
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            self._checked = now
            try:
                st = self.path.stat()
                if (st.st_mtime_ns, st.st_size) != self._stamp:
                    with self._lock:
                        self._keys = self._load()
            except (OSError, KeySourceError):
                pass  # keep the last good keys; a half-written file is retried next time
        return self._keys

    def refresh_due(self, *, unknown_kid: bool) -> bool:
        return False

    def refresh(self) -> None:
        return None


class JwksUrl:
    """An identity provider's JWKS endpoint (`jwks_uri` of its OpenID configuration)."""

    def __init__(
        self, url: str, *, refresh_seconds: float = 300.0, min_refresh_seconds: float = 30.0,
        timeout: float = 5.0, clock: Any = time.monotonic,
    ) -> None:
        if not (url.startswith("https://") or url.startswith("http://127.0.0.1")
                or url.startswith("http://localhost")):
            raise KeySourceError(f"JWKS URL {url!r}: use https (plain http only to localhost)")
        self.url = url
        self.refresh_seconds = refresh_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout = timeout
        self._clock = clock
        self._keys = KeySet({})
        self._fetched = -1e18
        self._attempted = -1e18
        self.fetches = 0

    def current(self) -> KeySet:
        return self._keys

    def refresh_due(self, *, unknown_kid: bool) -> bool:
        now = self._clock()
        if now - self._attempted < self.min_refresh_seconds:
            return False
        return unknown_kid or now - self._fetched >= self.refresh_seconds

    def refresh(self) -> None:
        self._attempted = self._clock()
        self.fetches += 1
        try:
            req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read(MAX_JWKS_BYTES + 1)
        except OSError as e:
            raise KeySourceError(f"JWKS URL {self.url}: cannot fetch ({e})") from None
        if len(body) > MAX_JWKS_BYTES:
            raise KeySourceError(f"JWKS URL {self.url}: larger than {MAX_JWKS_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError:
            raise KeySourceError(f"JWKS URL {self.url}: not valid JSON") from None
        self._keys = KeySet.from_jwks(doc, self.url)
        self._fetched = self._clock()


# ---- verification ----------------------------------------------------------


@dataclass(frozen=True)
class TokenSettings:
    """The `[auth]` settings that decide which tokens a node accepts."""

    issuers: tuple[str, ...] = (DEFAULT_ISSUER,)
    audience: str = DEFAULT_AUDIENCE
    leeway_seconds: float = DEFAULT_LEEWAY
    role_claim: str = "role"  # a dotted path reads nested claims (realm_access.roles)
    clinic_claim: str = "clinics"  # also accepted: the singular `clinic`


def _claim(payload: Mapping[str, Any], path: str) -> Any:
    cur: Any = payload
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise Unauthenticated(f"token claim {what!r} must be a string or a list of strings")


def _when(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return "an invalid time"


class TokenVerifier:
    """Turns a bearer token into an Identity, or raises Unauthenticated saying why."""

    def __init__(
        self, settings: TokenSettings, keys: KeySource, *, cache_size: int = 4096,
        clock: Any = time.time,
    ) -> None:
        if not settings.issuers or not settings.audience:
            raise ValueError("token verification needs an issuer and an audience")
        self.settings = settings
        self.keys = keys
        self._refreshing: asyncio.Task[None] | None = None
        self._clock = clock
        # A client sends the same token on every call; a signature check costs
        # ~0.2 ms. Verified tokens are remembered (by SHA-256, not the token) with
        # the key set they were verified under and their validity window, which
        # is checked again on every use.
        self._cache: OrderedDict[bytes, tuple[KeySet, Identity, float, float]] = OrderedDict()
        self._cache_size = cache_size

    def expired(self, ident: Identity) -> bool:
        """Whether a token verified earlier has expired since, by the same clock
        and leeway as verify (a long stream checks its token again)."""
        return (ident.expires_at is not None
                and self._clock() >= ident.expires_at + self.settings.leeway_seconds)

    def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"bearer token is longer than {MAX_TOKEN_BYTES} bytes")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            keyset, ident, not_before, expires = hit
            now = self._clock()
            leeway = self.settings.leeway_seconds
            if keyset is self.keys.current() and not_before - leeway <= now < expires + leeway:
                self._cache.move_to_end(digest)
                return ident
            del self._cache[digest]  # expired, or the trusted keys changed: check afresh
        keyset = self.keys.current()
        ident, not_before = self._verify(token, keyset)
        if self._cache_size > 0 and ident.expires_at is not None:
            self._cache[digest] = (keyset, ident, not_before, ident.expires_at)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return ident

    def _verify(self, token: str, keyset: KeySet) -> tuple[Identity, float]:
        s = self.settings
        if not token:
            raise Unauthenticated("empty bearer token")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"bearer token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("bearer token is not a well-formed JWT") from None
        except jwt.InvalidTokenError as e:  # e.g. an unsupported `crit` extension
            raise Unauthenticated(f"token header refused: {str(e)[:100]}") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise Unauthenticated(
                f"token algorithm {shown!r} is not accepted (allowed: {', '.join(ALLOWED_ALGORITHMS)})"
            )
        if "crit" in header:
            raise Unauthenticated("token has critical header extensions (crit), which medkv refuses")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 128):
            raise Unauthenticated("token key id (kid) is malformed")
        key = keyset.find(kid, alg)
        try:
            payload = jwt.decode(
                token, key.key, algorithms=[key.algorithm], audience=s.audience,
                issuer=list(s.issuers), leeway=s.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"token expired at {_when(self._peek(token, 'exp'))}") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                f"token is not valid before {_when(self._peek(token, 'nbf'))}") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"token audience does not include {s.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"token issuer is not a trusted issuer ({', '.join(map(repr, s.issuers))})"
            ) from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"token lacks the required {e.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(f"token signature does not verify with key {key.kid!r}") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(f"token algorithm {alg!r} is not accepted") from None
        except jwt.InvalidTokenError as e:
            raise Unauthenticated(f"token is invalid: {type(e).__name__}") from None
        nbf = payload.get("nbf")
        return self._identity(payload), float(nbf) if isinstance(nbf, int | float) else -math.inf

    @staticmethod
    def _peek(token: str, claim: str) -> Any:
        try:
            return jwt.decode(token, options={"verify_signature": False}).get(claim)
        except jwt.InvalidTokenError:
            return None

    def _identity(self, payload: Mapping[str, Any]) -> Identity:
        s = self.settings
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > _MAX_SUBJECT:
            raise Unauthenticated(f"token subject (sub) must be 1-{_MAX_SUBJECT} characters")
        named = _strings(_claim(payload, s.role_claim), s.role_claim)
        roles = frozenset(r for r in named if r in TOKEN_ROLES)
        if not roles:
            raise Unauthenticated(
                f"token names no medkv role in claim {s.role_claim!r} "
                f"(roles: {', '.join(sorted(TOKEN_ROLES))})"
            )
        clinics = _strings(_claim(payload, s.clinic_claim), s.clinic_claim)
        clinics += _strings(payload.get("clinic"), "clinic") if s.clinic_claim != "clinic" else []
        for c in clinics:
            if not _CLINIC.fullmatch(c):
                raise Unauthenticated(
                    "token clinic ids must be 1-64 letters, digits, '.', '_', ':' or '-'"
                )
        jti = payload.get("jti")
        exp = payload.get("exp")
        return Identity(
            subject=sub, roles=roles, clinics=frozenset(clinics), issuer=str(payload["iss"]),
            token_id=jti if isinstance(jti, str) and len(jti) <= 128 else "",
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )

    async def averify(self, token: str) -> Identity:
        """verify(), fetching the key set off the event loop when a URL's keys are due
        (in the background) or the token names a key we have not seen (awaited once)."""
        if self.keys.refresh_due(unknown_kid=False) and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        try:
            return self.verify(token)
        except UnknownKey:
            if not self.keys.refresh_due(unknown_kid=True):
                raise
            await self._refresh()
            return self.verify(token)

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.keys.refresh)
        except KeySourceError:
            pass  # keep the keys we have; the failure shows as unknown keys
        finally:
            self._refreshing = None


def load_key_source(
    *, jwks_file: Path | None = None, jwks_url: str | None = None, refresh_seconds: float = 300.0
) -> KeySource:
    if (jwks_file is None) == (jwks_url is None):
        raise KeySourceError("give exactly one of jwks_file and jwks_url")
    if jwks_file is not None:
        return JwksFile(jwks_file)
    assert jwks_url is not None
    src = JwksUrl(jwks_url, refresh_seconds=refresh_seconds)
    src.refresh()  # at start: a node that cannot get its keys says so at once
    return src


# ---- minting (labs and tests) ----------------------------------------------


def load_signing_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise KeySourceError(f"{path}: cannot read the signing key ({e.strerror})") from None
    except ValueError:
        raise KeySourceError(f"{path}: not a PEM private key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise KeySourceError(f"{path}: only Ed25519 and EC P-256 signing keys are supported")


def mint(
    key: PrivateKey, *, subject: str, roles: Sequence[str], clinics: Sequence[str] = (),
    issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE, ttl_seconds: float = 3600.0,
    not_before: float | None = None, now: float | None = None, extra: Mapping[str, Any] | None = None,
) -> str:
    """A signed token (EdDSA for an Ed25519 key, ES256 for P-256), kid = key thumbprint."""
    jwk = public_jwk(key.public_key())
    t = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": issuer, "aud": audience, "sub": subject, "iat": int(t),
        "exp": int(t + ttl_seconds), "jti": _b64url(os.urandom(12)),
        "role": list(roles) if len(roles) != 1 else roles[0],
    }
    if clinics:
        claims["clinics"] = list(clinics)
    if not_before is not None:
        claims["nbf"] = int(not_before)
    claims.update(extra or {})
    return jwt.encode(claims, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"], "typ": "JWT"})


def keygen(directory: Path, alg: str = "EdDSA", *, force: bool = False) -> tuple[Path, Path, str]:
    """DIR/token-signing.key (0600) and its public key added to DIR/jwks.json.

    Earlier keys stay in jwks.json, so tokens already issued keep verifying
    while the new key takes over (remove old keys from the JWKS to revoke them)."""
    from node.auth.certs import write_private_key

    directory.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = directory / SIGNING_KEY_FILE, directory / JWKS_FILE
    if key_path.exists() and not force:
        raise KeySourceError(f"{key_path} exists; refusing to replace a signing key (use --force)")
    if alg == "EdDSA":
        key: PrivateKey = ed25519.Ed25519PrivateKey.generate()
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeySourceError(f"--alg {alg}: choose EdDSA or ES256")
    write_private_key(key_path, key, replace=force)  # type: ignore[arg-type]
    jwk = public_jwk(key.public_key())
    doc: dict[str, Any] = {"keys": []}
    if jwks_path.exists():
        doc = json.loads(jwks_path.read_text())
        KeySet.from_jwks(doc, str(jwks_path))  # never extend a file we could not read back
    doc["keys"] = [k for k in doc["keys"] if k.get("kid") != jwk["kid"]] + [jwk]
    tmp = jwks_path.with_name(f".{jwks_path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, jwks_path)
    return key_path, jwks_path, jwk["kid"]


# ---- command line ----------------------------------------------------------


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 900, 15m, 8h or 30d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="medkv tokens", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    kg = sub.add_parser("keygen", help="a token signing key and the JWKS nodes trust")
    kg.add_argument("--dir", type=Path, required=True)
    kg.add_argument("--alg", choices=ALLOWED_ALGORITHMS, default="EdDSA")
    kg.add_argument("--force", action="store_true", help="replace the signing key (old JWKS keys stay)")

    iss = sub.add_parser("issue", help="mint a token (prints it on stdout)")
    iss.add_argument("--key", type=Path, required=True, help=f"signing key ({SIGNING_KEY_FILE})")
    iss.add_argument("--sub", required=True, help="subject: the person or service")
    iss.add_argument("--role", action="append", required=True,
                     choices=sorted(TOKEN_ROLES), help="role (repeatable)")
    iss.add_argument("--clinic", action="append", default=[], help="clinic id (repeatable)")
    iss.add_argument("--iss", default=DEFAULT_ISSUER, help="issuer (default %(default)s)")
    iss.add_argument("--aud", default=DEFAULT_AUDIENCE, help="audience (default %(default)s)")
    iss.add_argument("--ttl", type=_duration, default=3600.0, help="lifetime (default 1h)")
    iss.add_argument("--not-before", type=_duration, default=None, metavar="DELAY",
                     help="valid only from DELAY from now (nbf)")

    ver = sub.add_parser("verify", help="check a token as a node would (token from stdin "
                                        f"or ${TOKEN_ENV})")
    ver.add_argument("--jwks", type=Path, required=True)
    ver.add_argument("--iss", action="append", default=None)
    ver.add_argument("--aud", default=DEFAULT_AUDIENCE)
    return ap


def _token_to_verify() -> str:
    """What `tokens verify` checks: a token piped on stdin (`verify < FILE` means
    that file, even with $MEDKV_TOKEN set, as `eval "$(scripts/cluster env ...)"`
    leaves it), else $MEDKV_TOKEN, which may be `@FILE` as for every client."""
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        if piped:
            return piped
    text = os.environ.get(TOKEN_ENV, "").strip()
    if text.startswith("@"):
        return Path(text[1:]).expanduser().read_text(encoding="utf-8").strip()
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "keygen":
            key_path, jwks_path, kid = keygen(args.dir, args.alg, force=args.force)
            print(f"tokens: signing key {key_path} (0600, kid {kid}); trust {jwks_path}",
                  file=sys.stderr)
        elif args.cmd == "issue":
            now = time.time()
            nbf = now + args.not_before if args.not_before is not None else None
            print(mint(load_signing_key(args.key), subject=args.sub, roles=args.role,
                       clinics=args.clinic, issuer=args.iss, audience=args.aud,
                       ttl_seconds=args.ttl, not_before=nbf, now=now))
        else:
            token = _token_to_verify()
            settings = TokenSettings(issuers=tuple(args.iss or [DEFAULT_ISSUER]), audience=args.aud)
            ident = TokenVerifier(settings, JwksFile(args.jwks)).verify(token)
            print(json.dumps({"subject": ident.subject, "roles": sorted(ident.roles),
                              "clinics": sorted(ident.clinics), "issuer": ident.issuer,
                              "expires": _when(ident.expires_at)}, sort_keys=True))
    except KeySourceError as e:
        print(f"medkv tokens: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the @FILE of $MEDKV_TOKEN
        print(f"medkv tokens: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    except Unauthenticated as e:
        print(f"medkv tokens: refused: {e.message}", file=sys.stderr)
        return 1
    return 0
