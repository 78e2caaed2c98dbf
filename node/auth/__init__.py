"""Access control and audit for the medkv node (issue 11).

Who is asking, what they may do, and a record of every access:

    certs        the cluster CA, node and client certificates (`medkv certs`);
                 a node certificate names its node id (SAN URI medkv://node/<id>)
    tokens       bearer tokens: JWT verified against a JWKS (EdDSA, ES256 only);
                 `medkv tokens keygen|issue|verify` for labs and tests
    identity     who a call is from: a token's subject/role/clinics, or a node
    policy       roles -> allowed actions, per-clinic scope; authorize() is pure
    audit        hash-chained, encrypted, append-only audit log (`medkv audit`)
    interceptor  the gRPC server interceptor that ties them together per call
    cli          `python -m node certs|tokens|audit ...`

This package module holds only the error type every part raises, so the
submodules import it without cycles. Messages name the problem and never carry
a token, key material or a patient identifier.
"""

from __future__ import annotations

import grpc


class AuthError(Exception):
    """A call is refused: UNAUTHENTICATED (who?) or PERMISSION_DENIED (not allowed)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unauthenticated(AuthError):
    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, message)


class PermissionDenied(AuthError):
    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.PERMISSION_DENIED, message)


__all__ = ["AuthError", "PermissionDenied", "Unauthenticated"]
