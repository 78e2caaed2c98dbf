"""Bearer tokens on the client side: every call carries `authorization: Bearer <JWT>`.

Where the token comes from, first match wins: the `--token` option (or the
`token=` argument), then $MEDKV_TOKEN. Either may be the token itself or
`@PATH`, a file holding it; a file is re-read when it changes, so an agent
that renews tokens (an OpenID Connect client) can rewrite it under a running
client.

The clients add the header to each call's metadata themselves (reading the
source per call): grpc's call-credentials plugins run on a thread per call,
which measured 1.6x the cost of the whole call in a Python client. For raw
grpc stubs, call credentials are the convenient form:

    creds = secure_channel_credentials(tls.credentials(), token_source("..."))
    channel = grpc.aio.secure_channel(address, creds)

grpc sends call credentials only over TLS, which is what we want: a bearer
token in clear text is a password in clear text (the clients refuse a token
without TLS for the same reason). For break-glass access and
for naming the clinic a new patient is registered to, call_metadata() adds
the two request headers the node reads.

This module imports grpc only (client/ never imports node internals); the
header names here are the contract with node/auth/interceptor.py.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc

from client.errors import MedkvError

TOKEN_ENV = "MEDKV_TOKEN"
AUTHORIZATION = "authorization"
CLINIC_METADATA = "medkv-clinic"
BREAK_GLASS_METADATA = "medkv-break-glass-reason"


class TokenError(MedkvError):
    """No usable token (an unreadable token file, an empty or malformed token).

    Its message names the file, never the token."""

    code = grpc.StatusCode.UNAUTHENTICATED


# RFC 6750 b64token: what a bearer token may consist of. Checked before the
# token goes into a header, so a pasted token with a stray space or quote is
# refused here with a clear message instead of by grpc (whose error could
# echo the header).
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _checked(token: str, where: str) -> str:
    token = token.strip()
    if not token:
        raise TokenError(f"{where} is empty")
    if not _B64TOKEN.fullmatch(token):
        raise TokenError(f"{where} is not a bearer token (a JWT: letters, digits, '-_.~+/=')")
    return token


class TokenSource(Protocol):
    def token(self) -> str: ...


class StaticToken:
    def __init__(self, token: str) -> None:
        self._token = _checked(token, "the bearer token")

    def token(self) -> str:
        return self._token

    def __repr__(self) -> str:  # never print a token
        return "StaticToken(<redacted>)"


class FileToken:
    """A token in a file, re-read when the file's inode, modification time or size
    changes (an agent that renews by rename makes a new inode even within one
    mtime tick)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self.token()  # fail now, not on the first call

    def token(self) -> str:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with self._lock:
                    text = _checked(self.path.read_text(), f"token file {self.path}")
                    self._token, self._stamp = text, stamp
        except OSError as e:
            if not self._token:
                raise TokenError(f"token file {self.path}: {e.strerror}") from None
        return self._token

    def __repr__(self) -> str:
        return f"FileToken({str(self.path)!r})"


def token_source(value: str | None = None) -> TokenSource | None:
    """The token from `value`, else $MEDKV_TOKEN; `@PATH` reads a file. None if neither."""
    text = value if value else os.environ.get(TOKEN_ENV, "")
    text = text.strip()
    if not text:
        return None
    if text.startswith("@"):
        return FileToken(os.path.expanduser(text[1:]))
    return StaticToken(text)


class _BearerPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            callback(((AUTHORIZATION, f"Bearer {self.source.token()}"),), None)
        except TokenError as e:
            callback((), e)


def call_credentials(source: TokenSource) -> grpc.CallCredentials:
    """Per-call credentials that ask `source` for the token on every call."""
    return grpc.metadata_call_credentials(_BearerPlugin(source), name="medkv-bearer")


def secure_channel_credentials(
    tls: grpc.ChannelCredentials, source: TokenSource | None
) -> grpc.ChannelCredentials:
    """TLS channel credentials, plus the bearer token on every call when there is one."""
    if source is None:
        return tls
    return grpc.composite_channel_credentials(tls, call_credentials(source))


def call_metadata(
    *, clinic: str | None = None, break_glass_reason: str | None = None
) -> tuple[tuple[str, str], ...]:
    """Extra request metadata: the clinic to register a new patient to, and the
    reason for break-glass access (recorded in the audit log)."""
    md: list[tuple[str, str]] = []
    if clinic:
        md.append((CLINIC_METADATA, clinic))
    if break_glass_reason:
        md.append((BREAK_GLASS_METADATA, break_glass_reason))
    return tuple(md)


def bearer_metadata(source: TokenSource) -> Callable[[], tuple[tuple[str, str], ...]]:
    """For channels where call credentials cannot be used: a function giving the header."""
    return lambda: ((AUTHORIZATION, f"Bearer {source.token()}"),)
