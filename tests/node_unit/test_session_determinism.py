"""Session expiry is a rule of the log: replicas fed the same log agree (issue 10, item 7).

Hypothesis draws a log of session registrations, writes (new ones and
retries, in open, expired, foreign and never-opened sessions), settings
changes and seeds, with leader stamps that go back as well as forward. The log
is applied by three replicas that differ in everything a node owns: their
[limits] configuration (TTL, retention, max_sessions), their wall clock (one
thirty days fast, one a year slow) and how the host splits entries into apply
rounds. Each replica must give the same answer for every entry and end with a
byte-identical snapshot, and the answers must be those of a small model of
the contract (docs/sessions.md): expiry when log time - last use > TTL, with
log time the running max of stamps and TTL the replicated setting; no
eviction; a write in a session that is not open refused and never applied; a
retry answered with its first result.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from node.commands import Command, Noop, Put, RegisterSession, SetSettings, encode_command
from node.config import parse_config
from node.settings import seed_from_limits
from node.state_machine import (
    RESOURCE_EXHAUSTED,
    SESSION_EXPIRED,
    SESSION_NOT_OWNED,
    ApplyResult,
    PartitionStateMachine,
)
from node.storage_layout import StorageLayout, plaintext_codec_for_tests

CLIENTS = [bytes([i]) * 16 for i in range(3)]
NEVER_OPENED = 1 << 40

# What each replica's node was configured with, and how wrong its wall clock is.
REPLICAS: list[tuple[dict[str, Any], float]] = [
    ({"session_ttl_s": 2.0, "history_retention": 1, "max_sessions": 1}, 0.0),
    ({"session_ttl_s": 86_400.0, "history_retention": 100, "max_sessions": 10_000}, 30 * 86_400.0),
    ({"session_ttl_s": 5.0, "history_retention": 3, "max_sessions": 2}, -365 * 86_400.0),
]


# ---- the log ------------------------------------------------------------------

writes = st.tuples(
    st.just("write"),
    st.integers(-1, 3),  # the k-th latest registration (-1: a session never opened)
    st.integers(1, 2),  # seq: 2 values, so retries are frequent
    st.integers(0, 9).map(lambda n: n == 0),  # now and then, in another client's session
)
_STEP = {
    "register": st.tuples(st.just("register"), st.integers(0, 2)),
    "write": writes,
    "settings": st.tuples(
        st.just("settings"), st.sampled_from([1_000, 2_000, 5_000]), st.sampled_from([1, 2, 3, 5])
    ),
    "seed": st.tuples(st.just("seed"), st.integers(0, len(REPLICAS) - 1)),
    "noop": st.tuples(st.just("noop")),
}
# Mostly writes (new ones and retries); the rest move sessions, settings and time.
steps = st.sampled_from(
    ["register"] * 3 + ["write"] * 8 + ["settings", "seed", "noop"]
).flatmap(_STEP.__getitem__)


def build_log(drawn: list[tuple[tuple[Any, ...], int]]) -> list[Command]:
    """Commands for the drawn steps; entry i (0-based) lands at Raft index i + 1."""
    log: list[Command] = []
    registrations: list[int] = []  # the indexes of RegisterSession entries: session ids
    owners: dict[int, int] = {}  # session id -> the client that registered it
    stamp = 0
    for step, delta in drawn:
        stamp = max(0, stamp + delta)  # leaders' stamps: mostly forward, sometimes back
        index = len(log) + 1
        kind = step[0]
        if kind == "register":
            registrations.append(index)
            owners[index] = step[1]
            log.append(RegisterSession(ts_ms=stamp, client_id=CLIENTS[step[1]], nonce=index))
        elif kind == "write":
            _, which, seq, foreign = step
            if which >= 0 and registrations:
                session = registrations[-1 - which % len(registrations)]
                owner = owners[session]
            else:
                session, owner = NEVER_OPENED, 0
            client = (owner + 1) % len(CLIENTS) if foreign else owner
            log.append(
                Put(
                    client_id=CLIENTS[client], session=session, seq=seq, ack_below=0,
                    ts_ms=stamp, patient_id="p", record_id=f"r{seq}", value=bytes([index % 256]),
                )
            )
        elif kind == "settings":
            changes = (("max_sessions", step[2]), ("session_ttl_ms", step[1]))
            log.append(SetSettings(ts_ms=stamp, nonce=index, seed=False, changes=changes))
        elif kind == "seed":
            # Each node's leader proposes its own configuration as the seed.
            seed = seed_from_limits(limits_of(step[1]))
            log.append(
                SetSettings(ts_ms=stamp, nonce=index, seed=True, changes=tuple(sorted(seed.items())))
            )
        else:
            log.append(Noop(ts_ms=stamp))
    return log


def limits_of(replica: int) -> Any:
    return config_of(replica, Path("/nonexistent")).limits


def config_of(replica: int, base: Path) -> Any:
    limits, _ = REPLICAS[replica]
    return parse_config(
        {
            "node_id": replica + 1, "listen": "127.0.0.1:1", "data_dir": f"n{replica}",
            "partitions": 1, "replication": 1,
            "peers": [{"id": replica + 1, "address": "127.0.0.1:1"}],
            "insecure": True,  # the host alone: access control is tested elsewhere
            "limits": limits,
        },
        base,
    )


# ---- the model ------------------------------------------------------------------


@dataclass
class ModelSession:
    owner: bytes
    last_use: int
    results: dict[int, int] = field(default_factory=dict)


@dataclass
class Model:
    """The exactly-once contract, written as plainly as possible."""

    ttl: int = 3_600_000  # node.settings.DEFAULTS
    max_sessions: int = 10_000
    generation: int = 0
    log_time: int = 0
    sessions: dict[int, ModelSession] = field(default_factory=dict)

    def expire(self) -> None:
        self.sessions = {
            sid: s for sid, s in self.sessions.items() if self.log_time - s.last_use <= self.ttl
        }

    def apply(self, index: int, c: Command) -> tuple[int, str | None, bool]:
        """(version, error code, duplicate) of entry `index`."""
        self.log_time = max(self.log_time, c.ts_ms)
        self.expire()
        if isinstance(c, Noop):
            return 0, None, False
        if isinstance(c, SetSettings):
            if c.seed and self.generation:
                return self.generation, None, False
            changes = dict(c.changes)
            self.ttl = changes.get("session_ttl_ms", self.ttl)
            self.max_sessions = changes.get("max_sessions", self.max_sessions)
            self.generation = index
            self.expire()
            return index, None, False
        if isinstance(c, RegisterSession):
            if len(self.sessions) >= self.max_sessions:
                return 0, RESOURCE_EXHAUSTED, False
            self.sessions[index] = ModelSession(c.client_id, self.log_time)
            return index, None, False
        assert isinstance(c, Put)
        s = self.sessions.get(c.session)
        if s is None:
            return 0, SESSION_EXPIRED, False
        if s.owner != c.client_id:
            return 0, SESSION_NOT_OWNED, False
        s.last_use = self.log_time
        if c.seq in s.results:
            return s.results[c.seq], None, True
        s.results[c.seq] = index
        return index, None, False


# ---- the replicas ---------------------------------------------------------------


def run_replica(replica: int, entries: list[bytes], base: Path, rng: random.Random) -> tuple[
    list[ApplyResult], bytes
]:
    """Apply the log on a replica configured and clocked as REPLICAS[replica] says."""
    _, offset = REPLICAS[replica]
    real_time, real_ns = time.time, time.time_ns
    cfg = config_of(replica, base)
    with (
        mock.patch("time.time", lambda: real_time() + offset),
        mock.patch("time.time_ns", lambda: real_ns() + int(offset * 1e9)),
    ):
        layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
        try:
            sm: PartitionStateMachine = layout.state_machine(0)
            results: list[ApplyResult] = []
            i = 0
            while i < len(entries):  # rounds of different sizes on each replica
                k = rng.randint(1, 6)
                chunk = entries[i : i + k]
                results += sm.apply([(i + j + 1, 1, d) for j, d in enumerate(chunk)])
                i += len(chunk)
            return results, sm.snapshot()
        finally:
            layout.close()


@settings(
    max_examples=80, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    # Stamp steps in multiples of 500 ms, so idle time often equals the TTL exactly.
    drawn=st.lists(
        st.tuples(steps, st.sampled_from(range(-1_000, 1_501, 500))), min_size=1, max_size=40
    ),
    split_seed=st.integers(0, 1_000),
)
def test_replicas_with_different_clocks_and_configs_decide_every_entry_identically(
    drawn: list[tuple[tuple[Any, ...], int]], split_seed: int
) -> None:
    log = build_log(drawn)
    entries = [encode_command(c) for c in log]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            run_replica(r, entries, Path(tmp) / f"r{r}", random.Random(split_seed + r))
            for r in range(len(REPLICAS))
        ]
    answers = [results for results, _ in runs]
    assert answers[0] == answers[1] == answers[2]
    assert runs[0][1] == runs[1][1] == runs[2][1]  # byte-identical state
    model = Model()
    expected = [model.apply(i + 1, c) for i, c in enumerate(log)]
    got = [(r.version, r.error_code, r.duplicate) for r in answers[0]]
    assert got == expected
    for _, err, dup in expected:
        event(f"outcome {err or ('duplicate' if dup else 'ok')}")
    # Exactly once: no (session, seq) applied a second time, whatever came between.
    applied = [
        (c.session, c.seq)
        for c, (_, err, dup) in zip(log, expected, strict=True)
        if isinstance(c, Put) and err is None and not dup
    ]
    assert len(applied) == len(set(applied))
