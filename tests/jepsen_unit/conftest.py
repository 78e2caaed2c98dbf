"""These unit tests talk to a plaintext in-process fake server: no cluster's
MEDKV_TLS_DIR / MEDKV_TOKEN (tests/cluster/harness.py exports them while a
real cluster runs) may reach them."""

from __future__ import annotations

import pytest

from client.auth import TOKEN_ENV
from client.tls import TLS_DIR_ENV


@pytest.fixture(autouse=True)
def _no_cluster_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
