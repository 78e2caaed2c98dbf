"""Test-only switches: weakened modes that exist so the fault-injection suite can
prove it catches what they break. Never for production.

They can be turned on only through environment variables whose names say so,
set by a test harness for the node processes it starts (jepsen_like). A
configuration file cannot turn them on (node.config refuses their keys), and
no operator command offers them, so no production setup reaches them by a
typo or a copied example. A node that runs with one on says so, loudly, at
every start.

    MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC=1        PLANTED BUG: the Raft log is never
                                             fsynced; acknowledged writes can be lost
    MEDKV_TEST_ONLY_LOSSY_UNSYNCED_WRITES=1  writes not yet synced are lost by a
                                             kill -9 (node.lossy_db)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

SKIP_RAFT_FSYNC_ENV = "MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC"
LOSSY_UNSYNCED_WRITES_ENV = "MEDKV_TEST_ONLY_LOSSY_UNSYNCED_WRITES"

# The configuration keys these switches once had: a file naming one is refused.
FORMER_CONFIG_KEYS = frozenset({"unsafe_skip_raft_fsync", "lossy_unsynced_writes"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class TestOnlyError(ValueError):
    """A test-only environment variable holds something that is not a boolean."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True)
class TestOnlySwitches:
    __test__ = False  # not a pytest test class, despite the name

    # PLANTED BUG: never fsync the Raft log (with lossy_unsynced_writes, the
    # fault-injection suite must then find lost acknowledged writes).
    skip_raft_fsync: bool = False
    # Writes not yet synced are lost by a kill -9 (node.lossy_db).
    lossy_unsynced_writes: bool = False

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


_ENV = {"skip_raft_fsync": SKIP_RAFT_FSYNC_ENV, "lossy_unsynced_writes": LOSSY_UNSYNCED_WRITES_ENV}

_WARNINGS = {
    "skip_raft_fsync": "the Raft log is NEVER fsynced: acknowledged writes can be lost",
    "lossy_unsynced_writes": "writes not yet synced are rolled back at the next start "
    "(simulated power loss)",
}


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise TestOnlyError(f"{name} must be 1 or 0")


def from_environ(environ: Mapping[str, str] | None = None) -> TestOnlySwitches:
    """The switches the environment turns on (all off when it names none)."""
    env = os.environ if environ is None else environ
    return TestOnlySwitches(**{attr: _flag(env, var) for attr, var in _ENV.items()})


def warn(switches: TestOnlySwitches, log: logging.Logger) -> None:
    """One loud line per switch that is on; called at every start."""
    for f in fields(switches):
        if getattr(switches, f.name):
            log.warning(
                "TEST ONLY (%s is set): %s. This node must never hold real data.",
                _ENV[f.name], _WARNINGS[f.name],
            )
