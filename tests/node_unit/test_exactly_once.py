"""Exactly-once without holes, on one partition's state machine (issue 10, item 7).

Each test is one way the LRU session table let a retried write apply twice or
let replicas disagree: a spray of new client ids evicting live sessions,
settings read from each node's own configuration, an old log's writes, and a
retry after its session expired.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import plyvel

from node.commands import FORMAT_V1, Put, RegisterSession, SetSettings, encode_command
from node.record_store import RecordStore, blake2b_key_hasher
from node.settings import DEFAULTS
from node.state_machine import (
    RESOURCE_EXHAUSTED,
    SESSION_EXPIRED,
    ApplyResult,
    PartitionStateMachine,
)
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec

EARLY = b"e" * 16


def open_sm(path: Path) -> tuple[plyvel.DB, PartitionStateMachine]:
    db = plyvel.DB(str(path), create_if_missing=True)
    store = RecordStore(db.prefixed_db(b"sm/"), 1, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY))
    return db, PartitionStateMachine(store)


def apply(sm: PartitionStateMachine, *datas: bytes) -> list[ApplyResult]:
    start = sm.applied_index + 1
    return sm.apply([(start + i, 1, d) for i, d in enumerate(datas)])


def put(session: int, seq: int, ts: int, value: bytes, client: bytes = EARLY) -> bytes:
    return encode_command(
        Put(
            client_id=client, session=session, seq=seq, ack_below=seq, ts_ms=ts,
            patient_id="p", record_id="r", value=value,
        )
    )


def test_a_spray_of_new_clients_never_makes_an_early_retry_apply_twice(tmp_path: Path) -> None:
    """20,000 new client ids open sessions after an early write: the table is
    full at the default max_sessions (10,000), the rest are refused, and the
    early write's retry gets its first result, not a second application."""
    db, sm = open_sm(tmp_path / "a")
    try:
        (reg,) = apply(sm, encode_command(RegisterSession(ts_ms=1_000, client_id=EARLY, nonce=0)))
        session = reg.version
        early = put(session, 1, 1_000, b"early")
        (first,) = apply(sm, early)
        assert first.ok
        started = time.monotonic()
        spray = [
            encode_command(
                RegisterSession(ts_ms=1_000 + i // 100, client_id=i.to_bytes(16, "big"), nonce=i)
            )
            for i in range(20_000)
        ]
        results: list[ApplyResult] = []
        for k in range(0, len(spray), 500):  # rounds, as the host hands them over
            results += apply(sm, *spray[k : k + 500])
        opened = sum(r.ok for r in results)
        assert opened == DEFAULTS.max_sessions - 1  # the early client holds one
        assert {r.error_code for r in results if not r.ok} == {RESOURCE_EXHAUSTED}
        (again,) = apply(sm, early)
        assert again.duplicate and again.version == first.version
        assert [v.version for v in sm.history("p", "r")] == [first.version]
        print(f"20,000 registrations applied in {time.monotonic() - started:.1f}s")
    finally:
        db.close()


def test_a_retry_after_its_session_expired_is_refused_and_never_applied(tmp_path: Path) -> None:
    db, sm = open_sm(tmp_path / "a")
    try:
        apply(sm, encode_command(SetSettings(
            ts_ms=0, nonce=1, seed=False, changes=(("session_ttl_ms", 10_000),)
        )))
        (reg,) = apply(sm, encode_command(RegisterSession(ts_ms=0, client_id=EARLY, nonce=0)))
        write = put(reg.version, 1, 0, b"once")
        (first,) = apply(sm, write)
        (other,) = apply(sm, encode_command(RegisterSession(ts_ms=10_001, client_id=b"o" * 16, nonce=1)))
        assert other.ok and sm.session_count == 1  # EARLY's session expired at that entry
        (again,) = apply(sm, write)
        assert again.error_code == SESSION_EXPIRED and not again.duplicate
        assert [v.version for v in sm.history("p", "r")] == [first.version]
    finally:
        db.close()


def test_replicas_take_settings_from_the_log_not_their_configuration(tmp_path: Path) -> None:
    """Two replicas whose nodes were configured with different TTLs each seed the
    log with their own value; only the first seed in the log applies, on both,
    and both then expire the same session at the same entry."""
    seed_a = SetSettings(ts_ms=0, nonce=1, seed=True, changes=(("session_ttl_ms", 2_000),))
    seed_b = SetSettings(ts_ms=0, nonce=2, seed=True, changes=(("session_ttl_ms", 3_600_000),))
    log = [
        encode_command(seed_a),
        encode_command(seed_b),  # lost the race: changes nothing anywhere
        encode_command(RegisterSession(ts_ms=0, client_id=EARLY, nonce=0)),
    ]
    log.append(put(3, 1, 0, b"once"))
    log.append(encode_command(RegisterSession(ts_ms=2_500, client_id=b"o" * 16, nonce=1)))
    log.append(put(3, 1, 2_500, b"once"))  # the retry, after EARLY's session expired
    answers = []
    for name in ("a", "b"):
        db, sm = open_sm(tmp_path / name)
        try:
            answers.append(apply(sm, *log))
            assert sm.settings.session_ttl_ms == 2_000 and sm.settings_generation == 1
            assert [v.value for v in sm.history("p", "r")] == [b"once"]
        finally:
            db.close()
    assert answers[0] == answers[1]
    assert answers[0][1].message == "settings were already set"
    assert answers[0][-1].error_code == SESSION_EXPIRED


def test_writes_of_an_old_log_are_refused_identically(tmp_path: Path) -> None:
    """A log written before registered sessions (command format v1) still
    replays: its writes carry no session and are refused, never applied by
    guessing, the same on every replica."""
    v1_put = bytes([FORMAT_V1]) + msgpack.packb(
        [1, EARLY, 1, 0, 1_700_000_000_000, "p", "r", b"old"], use_bin_type=True
    )
    db, sm = open_sm(tmp_path / "a")
    try:
        (res,) = apply(sm, v1_put)
        assert res.error_code == SESSION_EXPIRED and "no session" in res.message
        assert sm.get("p", "r") is None
        assert sm.log_time_ms == 1_700_000_000_000  # its stamp still moves log time
    finally:
        db.close()
