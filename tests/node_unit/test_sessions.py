"""SessionTable: at-most-once bookkeeping, ack_below, deterministic expiry and eviction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.sessions import (
    ClientSession,
    Outcome,
    SessionFormatError,
    SessionTable,
    StoredResult,
    decode_session,
    encode_session,
)

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
OK = StoredResult(7, None, "")


def table(ttl: int = 1000, max_sessions: int = 10, max_results: int = 256) -> SessionTable:
    return SessionTable(ttl, max_sessions, max_results)


def test_first_write_is_new_then_its_retry_is_a_duplicate() -> None:
    t = table()
    assert t.check(A, 1, 0) == (Outcome.NEW, None)
    t.record(A, 1, 0, index=10, result=OK)
    assert t.check(A, 1, 0) == (Outcome.DUPLICATE, OK)
    assert t.check(A, 2, 0) == (Outcome.NEW, None)
    assert t.check(B, 1, 0) == (Outcome.NEW, None)


def test_error_results_are_remembered_too() -> None:
    t = table()
    failed = StoredResult(0, "FAILED_PRECONDITION", "record: version is 3, expected 2")
    t.record(A, 1, 0, 1, failed)
    assert t.check(A, 1, 0) == (Outcome.DUPLICATE, failed)


def test_ack_below_forgets_results_and_refuses_older_seqs() -> None:
    t = table()
    for seq in (1, 2, 3):
        t.record(A, seq, 0, seq, StoredResult(seq, None, ""))
    t.record(A, 4, 3, 4, StoredResult(4, None, ""))  # the client holds replies of 1 and 2
    s = t.get(A)
    assert s is not None and sorted(s.results) == [3, 4] and s.floor == 3
    assert t.check(A, 2, 3) == (Outcome.EXPIRED, None)  # never re-applied
    assert t.check(A, 3, 3)[0] is Outcome.DUPLICATE


def test_a_duplicate_refreshes_the_session_and_may_raise_the_floor() -> None:
    t = table()
    t.record(A, 1, 0, 1, OK)
    t.record(A, 2, 0, 2, OK)
    t.take_changes()
    t.touch(A, ack_below=2, index=9)
    s = t.get(A)
    assert s is not None and s.last_index == 9 and sorted(s.results) == [2]
    assert A in t.take_changes()[0]


def test_missing_session_with_acknowledgements_is_expired_not_new() -> None:
    t = table()
    assert t.check(A, 50, 40) == (Outcome.EXPIRED, None)
    assert t.check(A, 50, 1) == (Outcome.NEW, None)  # nothing acknowledged yet: a new client


def test_idle_sessions_expire_by_the_command_clock() -> None:
    t = table(ttl=1000)
    t.advance(5_000)
    t.record(A, 1, 0, 1, OK)
    t.advance(5_500)
    t.record(B, 1, 0, 2, OK)
    t.advance(6_000)  # A idle exactly ttl: kept
    assert t.get(A) is not None
    t.advance(6_001)  # A idle more than ttl: dropped; B stays
    assert t.get(A) is None and t.get(B) is not None
    assert t.check(A, 2, 2) == (Outcome.EXPIRED, None)
    puts, dropped = t.take_changes()
    assert dropped == {A} and set(puts) == {B}


def test_clock_never_goes_back() -> None:
    t = table(ttl=100)
    t.advance(1_000)
    t.advance(10)  # a new leader whose clock is behind
    assert t.clock_ms == 1_000
    t.record(A, 1, 0, 1, OK)
    assert t.get(A).last_active_ms == 1_000  # type: ignore[union-attr]


def test_lru_eviction_is_by_last_use_index() -> None:
    t = table(max_sessions=2)
    t.record(A, 1, 0, 1, OK)
    t.record(B, 1, 0, 2, OK)
    t.touch(A, 0, 3)  # A is now the most recently used
    t.record(C, 1, 0, 4, OK)
    assert t.get(B) is None and t.get(A) is not None and t.get(C) is not None
    assert len(t) == 2


def test_too_many_unacknowledged_results_forget_the_oldest_safely() -> None:
    t = table(max_results=3)
    for seq in (1, 2, 5, 6):
        t.record(A, seq, 0, seq, StoredResult(seq, None, ""))
    s = t.get(A)
    assert s is not None and sorted(s.results) == [2, 5, 6] and s.floor == 2
    assert t.check(A, 1, 0) == (Outcome.EXPIRED, None)  # forgotten: refused, never re-applied
    assert t.check(A, 3, 0) == (Outcome.NEW, None)  # never applied, still allowed


def test_load_rebuilds_lru_order_from_last_index() -> None:
    t = table(max_sessions=2)
    blobs = [
        (A, encode_session(ClientSession(30, 100, 0, {1: OK}))),
        (B, encode_session(ClientSession(10, 100, 0, {1: OK}))),
    ]
    t.load(100, blobs)
    t.record(C, 1, 0, 40, OK)
    assert t.get(B) is None  # lowest last_index went first, whatever the load order


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.dictionaries(
        st.integers(0, 2**64 - 1),
        st.builds(
            StoredResult,
            st.integers(0, 2**64 - 1),
            st.none() | st.text(max_size=20),
            st.text(max_size=40),
        ),
        max_size=5,
    ),
)
def test_session_blob_round_trip(
    idx: int, ts: int, floor: int, results: dict[int, StoredResult]
) -> None:
    s = ClientSession(idx, ts, floor, results)
    blob = encode_session(s)
    assert decode_session(blob) == s
    assert encode_session(decode_session(blob)) == blob


@pytest.mark.parametrize(
    "blob", [b"", b"\x02\x90", b"\x01\xc1", b"\x01\x93\x01\x02\x03", b"\x01\x94\x01\x02\x03\x01"]
)
def test_malformed_session_blobs_raise(blob: bytes) -> None:
    with pytest.raises(SessionFormatError):
        decode_session(blob)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SessionTable(0, 1)
    with pytest.raises(ValueError):
        SessionTable(1, 0)
