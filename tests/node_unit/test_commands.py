"""Raft entry encoding of commands: round trip, malformed input, validation limits."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.commands import (
    BATCH_CHECK,
    BATCH_DELETE,
    BATCH_PUT,
    FORMAT_V1,
    FORMAT_V2,
    Batch,
    BatchOp,
    Command,
    CommandDecodeError,
    CommandError,
    CompareAndSet,
    Delete,
    ErasePatient,
    Noop,
    Put,
    RegisterSession,
    SetSettings,
    decode_command,
    encode_command,
    validate_command,
)
from node.limits import (
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    MAX_ID_BYTES,
    MAX_VALUE_BYTES,
    ValidationError,
)
from tests.node_unit.strategies import commands

CID = b"c" * 16
SECRET = "Jane Q. Patient 1970-01-01"  # must never appear in an error message


def head(**over: Any) -> Any:
    """Write fields; tests override them with deliberately bad values, hence Any."""
    base: dict[str, Any] = {
        "client_id": CID,
        "session": 9,
        "seq": 5,
        "ack_below": 2,
        "ts_ms": 1_700_000_000_000,
        "patient_id": "p1",
    }
    base.update(over)
    return base


@given(commands)
def test_round_trip(cmd: Command) -> None:
    data = encode_command(cmd)
    assert data[0] == FORMAT_V2
    assert decode_command(data) == cmd
    validate_command(cmd)  # every generated command is within the limits


@given(commands)
def test_encoding_is_deterministic_and_compact(cmd: Command) -> None:
    data = encode_command(cmd)
    assert encode_command(decode_command(data)) == data
    if isinstance(cmd, Put):
        # format byte + array header + tag + ids/values + small framing: no field names.
        payload = 16 + len(cmd.patient_id.encode()) + len(cmd.record_id.encode()) + len(cmd.value)
        assert len(data) <= payload + 1 + 1 + 1 + 4 * 9 + 3 * 5


def test_wait_keys_name_the_entry() -> None:
    assert Put(**head(), record_id="r", value=b"v").wait_key == ("write", CID, 9, 5)
    assert RegisterSession(ts_ms=1, client_id=CID, nonce=7).wait_key == ("open", CID, 7, 0)
    s = SetSettings(ts_ms=1, nonce=7, seed=True, changes=(("max_sessions", 5),))
    assert s.wait_key == ("settings", b"", 7, 0)


def test_format_v1_writes_decode_with_session_zero() -> None:
    """An existing log written before registered sessions replays: its writes come
    out with session 0, which the state machine refuses (never a real session)."""
    v1 = bytes([FORMAT_V1]) + msgpack.packb([1, CID, 3, 2, 77, "p", "r", b"v"], use_bin_type=True)
    cmd = decode_command(v1)
    assert cmd == Put(
        client_id=CID, session=0, seq=3, ack_below=2, ts_ms=77, patient_id="p",
        record_id="r", value=b"v",
    )
    erase = bytes([FORMAT_V1]) + msgpack.packb([5, CID, 3, 2, 77, "p"], use_bin_type=True)
    assert decode_command(erase) == ErasePatient(
        client_id=CID, session=0, seq=3, ack_below=2, ts_ms=77, patient_id="p"
    )
    noop = bytes([FORMAT_V1]) + msgpack.packb([0, 5])
    assert decode_command(noop) == Noop(5)
    # v1 never had the session kinds
    with pytest.raises(CommandDecodeError, match="unknown command kind 6"):
        decode_command(bytes([FORMAT_V1]) + msgpack.packb([6, 1, CID, 1], use_bin_type=True))


@given(commands, st.data())
def test_every_truncation_is_rejected_cleanly(cmd: Command, data: st.DataObject) -> None:
    raw = encode_command(cmd)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CommandDecodeError):
        decode_command(raw[:cut])


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    try:
        cmd = decode_command(raw)
    except CommandDecodeError:
        return
    assert encode_command(cmd) == raw or decode_command(encode_command(cmd)) == cmd


@given(commands, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_rejected(cmd: Command, extra: bytes) -> None:
    with pytest.raises(CommandDecodeError):
        decode_command(encode_command(cmd) + extra)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (b"\x03" + msgpack.packb([0, 1]), "unsupported command format 3"),
        (bytes([FORMAT_V2]) + msgpack.packb({"a": 1}), "not an array"),
        (bytes([FORMAT_V2]) + msgpack.packb([99, 1]), "unknown command kind 99"),
        (bytes([FORMAT_V2]) + msgpack.packb([True, 1]), "no kind tag"),
        (bytes([FORMAT_V2]) + msgpack.packb([0, -1]), "ts_ms is not an unsigned integer"),
        (bytes([FORMAT_V2]) + msgpack.packb([1, CID, 1, 1, 0, 0, "p", "r"]), "Put has 8 fields"),
        (
            bytes([FORMAT_V2]) + msgpack.packb([1, "c", 1, 1, 0, 0, "p", "r", b""]),
            "client_id is not bytes",
        ),
        (
            bytes([FORMAT_V2]) + msgpack.packb([1, CID, -1, 1, 0, 0, "p", "r", b""]),
            "session is not an unsigned integer",
        ),
        (
            bytes([FORMAT_V2]) + msgpack.packb([1, CID, 1, 1, 0, 0, b"p", "r", b""]),
            "patient_id is not text",
        ),
        (
            bytes([FORMAT_V2]) + msgpack.packb([4, CID, 1, 1, 0, 0, "p", [[7, "r"]]]),
            "ops[0] has an unknown kind",
        ),
        (bytes([FORMAT_V2]) + msgpack.packb([6, 1, "c", 1]), "client_id is not bytes"),
        (bytes([FORMAT_V2]) + msgpack.packb([7, 1, 1, 1, {}]), "seed is not a boolean"),
        (bytes([FORMAT_V2]) + msgpack.packb([7, 1, 1, True, []]), "settings is not a map"),
        (bytes([FORMAT_V1]) + msgpack.packb([1, CID, 1, 0, 0, "p", "r"]), "Put has 8 fields"),
        (bytes([FORMAT_V2]) + b"\xa3\xff\xfe\xfd", "not well-formed"),  # invalid UTF-8 str
    ],
)
def test_malformed_bytes_raise_clear_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(CommandDecodeError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode_command(raw)


def test_decode_errors_never_quote_the_data() -> None:
    good = encode_command(Put(**head(patient_id=SECRET), record_id=SECRET, value=SECRET.encode()))
    for cut in range(len(good)):
        for mutated in (good[:cut], good[:cut] + b"\xc1" + good[cut + 1 :]):
            try:
                decode_command(mutated)
            except CommandDecodeError as e:
                assert SECRET not in str(e) and "Jane" not in str(e)


def test_encode_refuses_ops_with_fields_of_another_kind() -> None:
    for op in (
        BatchOp("rename", "r"),
        BatchOp(BATCH_DELETE, "r", b"lost value"),
        BatchOp(BATCH_PUT, "r", b"v", 3),
        BatchOp(BATCH_CHECK, "r"),
    ):
        with pytest.raises(CommandError, match=r"ops\[0\]"):
            encode_command(Batch(**head(), ops=(op,)))


def test_encode_error_does_not_quote_text() -> None:
    with pytest.raises(CommandError) as e:
        encode_command(Put(**head(patient_id="\ud800" + SECRET), record_id="r", value=b""))
    assert SECRET not in str(e.value)


# --- validation -------------------------------------------------------------


def invalid(cmd: Command, field: str) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        validate_command(cmd)
    assert e.value.field == field, str(e.value)
    assert SECRET not in str(e.value)
    return e.value


def put(**over: Any) -> Put:
    fields: dict[str, Any] = {"record_id": "r1", "value": b"v"}
    fields.update(over)
    h = head(**{k: fields.pop(k) for k in list(fields) if k in head()})
    return Put(**h, **fields)


def test_id_limits() -> None:
    validate_command(put(patient_id="é" * (MAX_ID_BYTES // 2)))  # 256 bytes exactly
    invalid(put(patient_id=""), "patient_id")
    e = invalid(put(patient_id=SECRET + "é" * (MAX_ID_BYTES // 2)), "patient_id")
    assert "limit is 256" in str(e)
    invalid(put(record_id=SECRET + "\x00"), "record_id")
    invalid(put(record_id=SECRET + "\x1b[31m"), "record_id")
    invalid(put(record_id=SECRET + "\x85"), "record_id")  # C1 control
    invalid(put(record_id="\udc80" + SECRET), "record_id")  # lone surrogate: not UTF-8


def test_value_and_write_id_limits() -> None:
    validate_command(put(value=b"x" * MAX_VALUE_BYTES))
    invalid(put(value=b"x" * (MAX_VALUE_BYTES + 1)), "value")
    invalid(put(client_id=b"short"), "write_id.client_id")
    invalid(put(seq=0, ack_below=0), "write_id.seq")
    invalid(put(seq=3, ack_below=4), "write_id.ack_below")
    invalid(put(seq=1 << 64), "write_id.seq")
    invalid(put(session=1 << 64), "write_id.session")
    invalid(Noop(-1), "ts_ms")


def test_session_and_settings_commands_validate_their_fields() -> None:
    invalid(RegisterSession(ts_ms=1, client_id=b"short", nonce=1), "write_id.client_id")
    invalid(SetSettings(ts_ms=1, nonce=1, seed=False, changes=()), "settings")
    invalid(SetSettings(ts_ms=1, nonce=1, seed=False, changes=(("ttl", 5),)), "settings")
    invalid(
        SetSettings(ts_ms=1, nonce=1, seed=False, changes=(("max_sessions", 0),)),
        "settings.max_sessions",
    )
    invalid(
        SetSettings(
            ts_ms=1, nonce=1, seed=False, changes=(("max_sessions", 5), ("max_sessions", 6))
        ),
        "settings",
    )
    full = (("history_retention", 4), ("max_results_per_session", 8), ("max_sessions", 5),
            ("session_ttl_ms", 60_000))
    carried = SetSettings(ts_ms=1, nonce=1, seed=False, changes=full, cluster_generation=3)
    validate_command(carried)
    assert decode_command(encode_command(carried)) == carried
    plain = SetSettings(ts_ms=1, nonce=1, seed=False, changes=full)
    assert len(msgpack.unpackb(encode_command(plain)[1:])) == 5  # encoded as before
    invalid(SetSettings(ts_ms=1, nonce=1, seed=False, changes=full[:2], cluster_generation=3),
            "settings")
    invalid(SetSettings(ts_ms=1, nonce=1, seed=True, changes=full, cluster_generation=3),
            "settings")


def test_batch_limits() -> None:
    def batch(*ops: BatchOp) -> Batch:
        return Batch(**head(), ops=ops)

    ok = batch(BatchOp(BATCH_CHECK, "a", expected_version=0), BatchOp(BATCH_PUT, "a", b"1"))
    validate_command(ok)  # a check and a write of the same record is the CAS-in-a-batch idiom
    invalid(batch(), "ops")
    invalid(batch(*[BatchOp(BATCH_PUT, f"r{i}", b"") for i in range(MAX_BATCH_OPS + 1)]), "ops")
    validate_command(batch(*[BatchOp(BATCH_PUT, f"r{i}", b"") for i in range(MAX_BATCH_OPS)]))
    big = b"x" * MAX_VALUE_BYTES
    invalid(
        batch(*[BatchOp(BATCH_PUT, f"r{i}", big) for i in range(MAX_BATCH_BYTES // len(big))]),
        "ops",
    )
    invalid(batch(BatchOp(BATCH_PUT, "a", b"1"), BatchOp(BATCH_DELETE, "a")), "ops[1].record_id")
    invalid(batch(BatchOp(BATCH_PUT, SECRET + "\x07", b"1")), "ops[0].record_id")
    invalid(batch(BatchOp("merge", "a")), "ops[0]")
    invalid(batch(BatchOp(BATCH_CHECK, "a")), "ops[0].expected_version")
    invalid(batch(BatchOp(BATCH_DELETE, "a", expected_version=3)), "ops[0].expected_version")
    invalid(batch(BatchOp(BATCH_PUT, "a", b"x" * (MAX_VALUE_BYTES + 1))), "ops[0].value")


def test_other_commands_validate_their_fields() -> None:
    invalid(CompareAndSet(**head(), record_id="", value=b"", expected_version=0), "record_id")
    invalid(Delete(**head(), record_id="r", expected_version=-1), "expected_version")
    invalid(ErasePatient(**head(patient_id=SECRET + "\n")), "patient_id")
