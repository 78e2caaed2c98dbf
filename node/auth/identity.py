"""Who a call is from: a person or service named by a bearer token, or a node.

Roles (policy.py says what each may do):

    clinician     records of patients registered to one of their clinics
    clinic-admin  the patient <-> clinic registrations of their clinics; no records
    analyst       follower reads and scans (analytics); no writes
    auditor       the audit log only
    admin         cluster operations, keys and erasure; no record contents
    break-glass   added to a clinician: emergency access to any patient, with a
                  reason, flagged in the audit log
    node          a cluster node, proven by its node certificate, never by a token
    tls-peer      any caller with a certificate of the cluster's CA and no token:
                  health checks only (a load balancer's probe)

A token can never claim `node`: that identity comes only from a node
certificate verified by TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CLINICIAN = "clinician"
CLINIC_ADMIN = "clinic-admin"
ANALYST = "analyst"
AUDITOR = "auditor"
ADMIN = "admin"
BREAK_GLASS = "break-glass"
NODE = "node"
TLS_PEER = "tls-peer"

# Roles a bearer token may carry (everything but `node`).
TOKEN_ROLES = frozenset({CLINICIAN, CLINIC_ADMIN, ANALYST, AUDITOR, ADMIN, BREAK_GLASS})
ALL_ROLES = TOKEN_ROLES | {NODE, TLS_PEER}


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. Carries no token and no key material."""

    subject: str  # the token's `sub`, or "node-<id>" for a node
    roles: frozenset[str]
    clinics: frozenset[str] = frozenset()
    issuer: str = ""
    node_id: int | None = None  # set only for a node certificate
    token_id: str = ""  # the token's `jti`, when it has one (audit correlation)
    expires_at: float | None = None  # the token's `exp` (Unix seconds)
    cert_fingerprint: str = field(default="", compare=False)  # the TLS peer's certificate

    @classmethod
    def for_node(cls, node_id: int, cert_fingerprint: str = "") -> Identity:
        return cls(subject=f"node-{node_id}", roles=frozenset({NODE}), node_id=node_id,
                   cert_fingerprint=cert_fingerprint)

    @classmethod
    def for_peer(cls, name: str, cert_fingerprint: str) -> Identity:
        """A caller known only by its certificate (no token): health checks only."""
        return cls(subject=f"cert:{name}", roles=frozenset({TLS_PEER}),
                   cert_fingerprint=cert_fingerprint)

    @property
    def role_text(self) -> str:
        """The roles as one stable string, for audit entries and messages."""
        return ",".join(sorted(self.roles))
