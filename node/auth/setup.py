"""From a node's configuration to its access control: the `[auth]` and `[audit]`
tables, and the one place that turns them into an AccessControl.

    [auth]
    jwks_file = "auth/jwks.json"        # or jwks_url = "https://idp.example/certs"
    issuers = ["medkv-local"]           # accepted `iss` values
    audience = "medkv"                  # required in `aud`
    role_claim = "role"                 # dotted path for nested claims (realm_access.roles)
    clinic_claim = "clinics"
    leeway_seconds = 30                 # clock skew allowed on exp / nbf
    refresh_seconds = 300               # a JWKS URL is fetched again after this

    [audit]
    dir = "audit"                       # default DATA_DIR/audit
    wait_durable = false                # answer only once the call's entry is on disk

Parsing is strict like the rest of the configuration: an unknown key, a
missing key source or a relative path that does not exist is a ConfigError
naming it, so a typo never silently weakens access control.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.auth.audit import AUDIT_DIR, AuditKeys, AuditLog, AuditWriter, log_id_for_node
from node.auth.interceptor import AccessControl
from node.auth.policy import PatientRegistry
from node.auth.tokens import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    DEFAULT_LEEWAY,
    KeySourceError,
    TokenSettings,
    TokenVerifier,
    load_key_source,
)

# A node's audit log: a batch is written (one fsync) at most this long after its
# first entry, unless a caller waits for its entry ([audit] wait_durable), and
# HEAD (two fsyncs) follows the files within a second; the chain heads anchored
# in replicated state every few seconds back HEAD up (node.audit_service).
BATCH_WINDOW_S = 0.02
HEAD_INTERVAL_S = 1.0


class AuthConfigError(ValueError):
    """The [auth] or [audit] table is malformed (the caller wraps it in ConfigError)."""


_AUTH_KEYS = {
    "jwks_file", "jwks_url", "issuers", "audience", "role_claim", "clinic_claim",
    "leeway_seconds", "refresh_seconds",
}
_AUDIT_KEYS = {"dir", "wait_durable"}


@dataclass(frozen=True)
class AuthSettings:
    """Which tokens this node accepts and where it keeps its audit log."""

    tokens: TokenSettings = field(default_factory=TokenSettings)
    jwks_file: Path | None = None
    jwks_url: str | None = None
    refresh_seconds: float = 300.0
    audit_dir: Path | None = None  # None: DATA_DIR/audit
    audit_wait_durable: bool = False


def _table(raw: Mapping[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise AuthConfigError(f"[{name}] must be a table")
    unknown = set(values) - allowed
    if unknown:
        raise AuthConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    return values


def _path(value: Any, base_dir: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise AuthConfigError(f"{what} must be a non-empty path")
    p = Path(value)
    return p if p.is_absolute() else (base_dir / p).resolve()


def _text(values: Mapping[str, Any], key: str, default: str) -> str:
    v = values.get(key, default)
    if not isinstance(v, str) or not v:
        raise AuthConfigError(f"[auth] {key} must be a non-empty string")
    return v


def _seconds(values: Mapping[str, Any], table: str, key: str, default: float) -> float:
    v = values.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 86_400:
        raise AuthConfigError(f"[{table}] {key} must be a number of seconds in [0, 86400]")
    return float(v)


def parse_auth(raw: Mapping[str, Any], base_dir: Path) -> AuthSettings | None:
    """The node's [auth]/[audit] settings; None when the file has no [auth] table."""
    if "auth" not in raw:
        if "audit" in raw:
            raise AuthConfigError("[audit] needs an [auth] table (who is audited without tokens?)")
        return None
    auth = _table(raw, "auth", _AUTH_KEYS)
    audit = _table(raw, "audit", _AUDIT_KEYS)
    has_file, has_url = "jwks_file" in auth, "jwks_url" in auth
    if has_file == has_url:
        raise AuthConfigError("[auth] needs exactly one of jwks_file and jwks_url")
    jwks_file = _path(auth["jwks_file"], base_dir, "[auth] jwks_file") if has_file else None
    if jwks_file is not None and not jwks_file.is_file():
        raise AuthConfigError(f"[auth] jwks_file: no such file: {jwks_file}")
    jwks_url = auth.get("jwks_url")
    if jwks_url is not None and (not isinstance(jwks_url, str) or not jwks_url.startswith("https://")):
        raise AuthConfigError("[auth] jwks_url must be an https:// URL")
    issuers = auth.get("issuers", [DEFAULT_ISSUER])
    if isinstance(issuers, str):
        issuers = [issuers]
    if not isinstance(issuers, list) or not issuers or \
            not all(isinstance(i, str) and i for i in issuers):
        raise AuthConfigError("[auth] issuers must be a non-empty list of strings")
    tokens = TokenSettings(
        issuers=tuple(issuers),
        audience=_text(auth, "audience", DEFAULT_AUDIENCE),
        leeway_seconds=_seconds(auth, "auth", "leeway_seconds", DEFAULT_LEEWAY),
        role_claim=_text(auth, "role_claim", "role"),
        clinic_claim=_text(auth, "clinic_claim", "clinics"),
    )
    wait = audit.get("wait_durable", False)
    if not isinstance(wait, bool):
        raise AuthConfigError("[audit] wait_durable must be true or false")
    return AuthSettings(
        tokens=tokens,
        jwks_file=jwks_file,
        jwks_url=jwks_url,
        refresh_seconds=_seconds(auth, "auth", "refresh_seconds", 300.0),
        audit_dir=_path(audit["dir"], base_dir, "[audit] dir") if "dir" in audit else None,
        audit_wait_durable=wait,
    )


def build_access_control(
    settings: AuthSettings,
    *,
    keyring: Any,
    sealer: Any,
    data_dir: Path,
    node_id: int,
    partitions: int,
    registry: PatientRegistry | None = None,
    on_audit_failure: Callable[[BaseException], None] | None = None,
) -> AccessControl:
    """Everything the interceptor needs for one node. Opening the audit log checks
    its chain's tail; a JWKS URL is fetched once here so a node that cannot get
    its keys says so at start. The AuditWriter must be started on the loop."""
    try:
        keys = load_key_source(
            jwks_file=settings.jwks_file, jwks_url=settings.jwks_url,
            refresh_seconds=settings.refresh_seconds,
        )
    except KeySourceError as e:
        raise AuthConfigError(f"[auth]: {e}") from None
    audit_log = AuditLog(
        settings.audit_dir or data_dir / AUDIT_DIR, sealer, AuditKeys.from_keyring(keyring),
        log_id=log_id_for_node(node_id), node_id=node_id, head_interval=HEAD_INTERVAL_S,
    )
    return AccessControl(
        verifier=TokenVerifier(settings.tokens, keys),
        registry=registry,
        audit=AuditWriter(audit_log, on_failure=on_audit_failure, max_delay=BATCH_WINDOW_S),
        partitions=partitions,
        wait_audit_durable=settings.audit_wait_durable,
    )


__all__ = ["AuthConfigError", "AuthSettings", "build_access_control", "parse_auth"]
