"""Codec round trips (hypothesis) and strict rejection of malformed input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus import codec
from consensus.codec import CodecError
from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
small = st.integers(min_value=0, max_value=1 << 40)
ids = st.lists(st.integers(1, 1 << 32), max_size=5).map(tuple)
conf_states = st.builds(
    ConfState,
    voters=ids,
    learners=ids,
    voters_outgoing=ids,
    learners_next=ids,
    auto_leave=st.booleans(),
)
metas = st.builds(SnapshotMeta, index=u64, term=u64, conf_state=conf_states)
snapshots = st.builds(Snapshot, meta=metas, data=st.binary(max_size=64))
entries = st.builds(
    Entry,
    index=u64,
    term=u64,
    data=st.binary(max_size=64),
    type=st.sampled_from(list(EntryType)),
)
messages = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    to=u64,
    frm=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=5),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=32),
)
conf_changes = st.builds(
    ConfChange,
    changes=st.lists(
        st.builds(ConfChangeSingle, type=st.sampled_from(list(ConfChangeType)), node_id=small),
        max_size=4,
    ).map(tuple),
    transition=st.sampled_from(list(ConfChangeTransition)),
    context=st.binary(max_size=16),
)


@given(messages)
def test_message_round_trip(m: Message) -> None:
    out = codec.decode_message(codec.encode_message(m))
    assert out == m
    assert type(out.type) is MessageType
    assert all(type(e.type) is EntryType for e in out.entries)


@given(conf_changes)
def test_conf_change_round_trip(cc: ConfChange) -> None:
    out = codec.decode_conf_change(codec.encode_conf_change(cc))
    assert out == cc


@given(conf_states)
def test_conf_state_round_trip(cs: ConfState) -> None:
    assert codec.decode_conf_state(codec.encode_conf_state(cs)) == cs


@given(st.builds(HardState, term=u64, vote=u64, commit=u64))
def test_hard_state_round_trip(hs: HardState) -> None:
    assert codec.decode_hard_state(codec.encode_hard_state(hs)) == hs


@given(metas)
def test_snapshot_meta_round_trip(m: SnapshotMeta) -> None:
    assert codec.decode_snapshot_meta(codec.encode_snapshot_meta(m)) == m


@given(snapshots)
def test_snapshot_round_trip(s: Snapshot) -> None:
    assert codec.decode_snapshot(codec.encode_snapshot(s)) == s


@given(st.lists(entries, max_size=10))
def test_entries_round_trip(ents: list[Entry]) -> None:
    assert codec.decode_entries(codec.encode_entries(ents)) == ents


def test_encoding_is_compact() -> None:
    m = Message(
        MessageType.APP,
        to=2,
        frm=1,
        term=3,
        log_term=3,
        index=100,
        commit=99,
        entries=[Entry(101 + k, 3, b"x" * 200) for k in range(10)],
    )
    size = len(codec.encode_message(m))
    # 10 x 200 bytes of payload plus a few bytes per entry and per message.
    assert size < 2000 + 10 * 12 + 40


@given(st.binary(max_size=64))
def test_decode_garbage_raises_codec_error_only(data: bytes) -> None:
    for fn in (
        codec.decode_message,
        codec.decode_conf_change,
        codec.decode_conf_state,
        codec.decode_hard_state,
        codec.decode_snapshot_meta,
        codec.decode_snapshot,
    ):
        with contextlib.suppress(CodecError):
            fn(data)


def _raw(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


@pytest.mark.parametrize(
    "obj",
    [
        [99, 1, 2, 3, 4, 5, [], 6, False, 0, None, b""],  # unknown message type
        [10, -1, 2, 3, 4, 5, [], 6, False, 0, None, b""],  # negative id
        [10, 1, 2, 3, 4, 5, [1, 2, 0], 6, False, 0, None, b""],  # truncated entries
        [10, 1, 2, 3, 4, 5, [1, 2, 0, "str"], 6, False, 0, None, b""],  # entry data not bytes
        [10, 1, 2, 3, 4, 5, [1, 2, 7, b""], 6, False, 0, None, b""],  # unknown entry type
        [10, 1, 2, 3, 4, 5, [], 6, "no", 0, None, b""],  # reject not bool
        [10, 1, 2, 3, 4, 5, [], 6, False, 0, [1], b""],  # bad snapshot
        [10, 1, 2, 3, 4, 5, 0, 6, False, 0, None, b""],  # entries not an array
        [10, 1, 2],  # too short
        {"type": 10},  # not an array
    ],
)
def test_malformed_messages_rejected(obj: object) -> None:
    with pytest.raises(CodecError):
        codec.decode_message(_raw(obj))


def test_malformed_conf_change_rejected() -> None:
    with pytest.raises(CodecError):
        codec.decode_conf_change(_raw([9, [], b""]))
    with pytest.raises(CodecError):
        codec.decode_conf_change(_raw([0, [0], b""]))
    with pytest.raises(CodecError):
        codec.decode_conf_change(_raw([0, [5, 1], b""]))
    with pytest.raises(CodecError):
        codec.decode_conf_change(b"\xc1")
