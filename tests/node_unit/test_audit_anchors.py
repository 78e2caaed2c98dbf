"""AuditAnchor (command kind 9): codec, validation, and how the state machine keeps
the newest chain head per node: monotonic, deterministic, carried by snapshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import plyvel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.audit_anchors import Anchor, apply_anchor, decode_anchors, encode_anchors
from node.commands import (
    FORMAT_V1,
    FORMAT_V2,
    AuditAnchor,
    CommandDecodeError,
    decode_command,
    encode_command,
    validate_command,
)
from node.limits import ValidationError
from node.record_store import RecordStore, SnapshotFormatError, blake2b_key_hasher
from node.snapshots import install_staged
from node.state_machine import PartitionStateMachine
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec
from tests.node_unit.snapshot_helpers import apply_writes, chunks_of, send_side, stream
from tests.node_unit.test_snapshot_stream import Pair, _direct
from tests.node_unit.test_state_machine import PARTITION, Feeder, open_sm

H1, H2, H3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32

anchors = st.builds(
    lambda ts, node_id, seq, h: AuditAnchor(ts_ms=ts, node_id=node_id, seq=seq, chain_hash=h),
    st.integers(0, 2**64 - 1), st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
)


def anchor(node_id: int, seq: int, h: bytes = H1, ts: int = 1_000) -> AuditAnchor:
    return AuditAnchor(ts_ms=ts, node_id=node_id, seq=seq, chain_hash=h)


# ---- codec ------------------------------------------------------------------------


@given(anchors)
def test_round_trip_is_exact_and_compact(cmd: AuditAnchor) -> None:
    data = encode_command(cmd)
    assert data[0] == FORMAT_V2
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data
    validate_command(cmd)
    # format byte, array header, tag, three uint64s (<= 9 bytes each), bin8 header + 32 bytes
    assert len(data) <= 1 + 1 + 1 + 3 * 9 + 2 + 32


@given(anchors, st.data())
def test_truncations_are_rejected(cmd: AuditAnchor, data: st.DataObject) -> None:
    raw = encode_command(cmd)
    with pytest.raises(CommandDecodeError):
        decode_command(raw[: data.draw(st.integers(0, len(raw) - 1))])


def test_layout_and_wait_key() -> None:
    cmd = anchor(3, 42, H2, ts=77)
    assert encode_command(cmd) == bytes([FORMAT_V2]) + msgpack.packb([9, 77, 3, 42, H2],
                                                                      use_bin_type=True)
    assert cmd.wait_key == ("anchor", b"", 3, 42)


@pytest.mark.parametrize("fields, reason", [
    ([9, 1, 2, 3], "AuditAnchor has 4 fields"),
    ([9, 1, 2, 3, "ab" * 16], "chain_hash is not bytes"),
    ([9, 1, -2, 3, H1], "node_id is not an unsigned integer"),
    ([9, 1, 2, None, H1], "seq is not an unsigned integer"),
])
def test_malformed_anchors_are_decode_errors(fields: list[object], reason: str) -> None:
    with pytest.raises(CommandDecodeError, match=reason):
        decode_command(bytes([FORMAT_V2]) + msgpack.packb(fields, use_bin_type=True))


def test_v1_logs_never_had_anchors() -> None:
    with pytest.raises(CommandDecodeError, match="unknown command kind 9"):
        decode_command(bytes([FORMAT_V1]) + msgpack.packb([9, 1, 2, 3, H1], use_bin_type=True))


@pytest.mark.parametrize("cmd, field", [
    (anchor(0, 1), "node_id"),
    (AuditAnchor(ts_ms=1, node_id=1, seq=1, chain_hash=b"short"), "chain_hash"),
    (AuditAnchor(ts_ms=1, node_id=1, seq=2**64, chain_hash=H1), "seq"),
])
def test_validation(cmd: AuditAnchor, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        validate_command(cmd)


# ---- the table ----------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 50), st.sampled_from([H1, H2]))))
def test_apply_is_monotonic_per_node(seq_of_anchors: list[tuple[int, int, bytes]]) -> None:
    """Whatever the order: each node ends at its highest seq, with the hash first
    recorded at that seq; the encoded table survives a round trip byte for byte."""
    table: dict[int, Anchor] = {}
    first_at: dict[tuple[int, int], bytes] = {}
    for i, (node, seq, h) in enumerate(seq_of_anchors, 1):
        before = table.get(node)
        new, note = apply_anchor(table, anchor(node, seq, h), i)
        if new is None:
            assert before is not None and seq <= before.seq and note
        else:
            assert before is None or seq > before.seq
            table = new
            first_at.setdefault((node, seq), h)
    for node, a in table.items():
        assert a.seq == max(s for n, s, _ in seq_of_anchors if n == node)
        assert a.chain_hash == first_at[(node, a.seq)]
    blob = encode_anchors(table)
    assert decode_anchors(blob) == table
    assert encode_anchors(decode_anchors(blob)) == blob


@pytest.mark.parametrize("blob", [
    b"", b"\xc1", msgpack.packb([2, []]), msgpack.packb([1, [[1, 2, b"x", 3, 4]]]),
    msgpack.packb([1, [[0, 2, H1, 3, 4]]]),
    msgpack.packb([1, [[1, 2, H1, 3, 4], [1, 5, H1, 3, 4]]]),
])
def test_bad_tables_are_refused(blob: bytes) -> None:
    with pytest.raises(ValueError, match="audit anchors"):
        decode_anchors(blob)


# ---- the state machine -------------------------------------------------------------


def test_state_machine_keeps_the_highest_anchor_per_node(db: plyvel.DB) -> None:
    sm = open_sm(db)
    feed = Feeder(sm)
    r = feed.one(anchor(1, 10, H1))
    assert r.ok and r.version == 10 and r.wait_key == ("anchor", b"", 1, 10) and not r.message
    feed(anchor(2, 5, H2), anchor(1, 7, H3))  # lower: ignored
    r = feed.one(anchor(1, 10, H2))  # same seq, other hash: the first stays
    assert r.ok and r.version == 10 and "different hash" in r.message
    assert sm.audit_anchors[1].seq == 10 and sm.audit_anchors[1].chain_hash == H1
    assert sm.audit_anchors[2].seq == 5
    feed.one(anchor(1, 11, H3, ts=5_000))
    assert sm.audit_anchors[1].seq == 11 and sm.audit_anchors[1].head_text == "11:" + "03" * 32
    assert sm.log_time_ms >= 5_000  # the stamp advances log time like any command
    # durable: a reopened state machine reads the same table
    again = PartitionStateMachine(sm.store)
    assert again.audit_anchors == sm.audit_anchors
    # a replay of the same entries changes nothing
    assert all(r.duplicate for r in Feeder(again).sm.apply([(1, 1, encode_command(anchor(1, 99)))]))
    assert again.audit_anchors[1].seq == 11


def test_snapshot_carries_the_anchors(db: plyvel.DB) -> None:
    sm = open_sm(db)
    Feeder(sm)(anchor(1, 10, H1), anchor(3, 4, H2))
    snap = sm.snapshot()
    other = PartitionStateMachine(RecordStore(
        db.prefixed_db(b"other/"), PARTITION, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY)))
    Feeder(other).one(anchor(1, 500, H3))  # replaced wholesale by the snapshot
    other.restore(snap)
    assert other.audit_anchors == sm.audit_anchors
    assert other.snapshot() == snap  # byte-identical replicas


def test_a_snapshot_with_a_malformed_anchor_table_is_refused(db: plyvel.DB) -> None:
    sm = open_sm(db)
    Feeder(sm).one(anchor(1, 10, H1))
    snap = sm.snapshot()
    good = msgpack.packb(["a", encode_anchors(sm.audit_anchors)], use_bin_type=True)
    bad = msgpack.packb(["a", b"\x93\x01\x02"], use_bin_type=True)
    assert good in snap
    other = PartitionStateMachine(RecordStore(
        db.prefixed_db(b"other/"), PARTITION, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY)))
    with pytest.raises(SnapshotFormatError):
        other.restore(snap.replace(good, bad))
    assert other.audit_anchors == {}


def test_a_streamed_snapshot_install_carries_the_anchors(tmp_path: Path) -> None:
    """The node's path: chunks staged as they arrive, then installed in batches."""
    pair = Pair(tmp_path)
    try:
        apply_writes(pair.src, [("p", "r", b"v", False)])
        Feeder(pair.src, term=2)(anchor(1, 10, H1), anchor(2, 20, H2))
        apply_writes(pair.dst, [], term=1)
        Feeder(pair.dst, term=1).one(anchor(1, 99, H3))  # replaced by the snapshot's

        async def go() -> None:
            msg, declared, data = await send_side(pair.src_mgr)
            _, got = await pair.dst_mgr.receive(stream(chunks_of(msg, declared, data, 7)), 1 << 30)
            assert got.snapshot is not None
            install_staged(pair.dst.store, got.snapshot.meta.index, got.snapshot.meta.term,
                           _direct)

        asyncio.run(go())
        pair.dst.reload()
        assert pair.dst.audit_anchors == pair.src.audit_anchors
        assert set(pair.dst.audit_anchors) == {1, 2}
    finally:
        pair.close()
