"""The medkv Python client.

    from client import Client, ops

    with Client(["127.0.0.1:7101", "127.0.0.1:7102"]) as kv:
        version = kv.put("patient-1", "allergies", b"penicillin")
        record = kv.get("patient-1", "allergies")                      # linearizable
        stale = kv.get("patient-1", "allergies", consistency="follower")
        kv.batch("patient-1", [ops.check("allergies", version), ops.put("notes", b"...")])
        for page in kv.scan_pages():                                   # analytics, replicas
            print(page.partition, page.staleness, len(page.records))

`AsyncClient` has the same methods as coroutines (scans as async iterators).
Both take `tls=TlsConfig...` (else $MEDKV_TLS_DIR) and `token=` (a JWT or
`@FILE`, else $MEDKV_TOKEN; sent on every call, only over TLS), see
docs/security.md.
Errors are the typed exceptions of client.errors, all MedkvError subclasses.
"""

from __future__ import annotations

from client import errors, ops
from client.async_client import AsyncClient
from client.auth import TokenError
from client.errors import (
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    MedkvError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ResultForgotten,
    SessionExpired,
    TooStale,
    Unauthenticated,
    Unavailable,
    VersionConflict,
)
from client.records import ReadInfo, Record, ScanPage, Sharing
from client.retry import RetryPolicy
from client.sync_client import Client
from client.tls import TlsConfig

__all__ = [
    "AsyncClient",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "InvalidArgument",
    "MedkvError",
    "NotFound",
    "PermissionDenied",
    "ReadInfo",
    "Record",
    "ResourceExhausted",
    "ResultForgotten",
    "RetryPolicy",
    "ScanPage",
    "SessionExpired",
    "Sharing",
    "TlsConfig",
    "TokenError",
    "TooStale",
    "Unauthenticated",
    "Unavailable",
    "VersionConflict",
    "errors",
    "ops",
]
