"""msgpack encoding of the consensus values that cross the wire or hit disk.

Every value is a positional msgpack array (no field names), so the encoding is
compact and fast; entries of a message are one flat array of
(index, term, type, data) quadruples rather than an array per entry. Field
order is the wire format: append new fields at the end, never reorder.

Decoding is strict: anything malformed (wrong shape, wrong types, negative
numbers, unknown enum values) raises CodecError and builds nothing, because
these bytes come from the network.
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)


class CodecError(ConsensusError):
    """The bytes are not a valid encoding of the expected value."""


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def _packb(obj: Any) -> bytes:
    out: bytes = _packer.pack(obj)
    return out


_MAX_U64 = (1 << 64) - 1
_MESSAGE_TYPES = {int(t): t for t in MessageType}
_ENTRY_TYPES = {int(t): t for t in EntryType}
_CC_TYPES = {int(t): t for t in ConfChangeType}
_CC_TRANSITIONS = {int(t): t for t in ConfChangeTransition}


def _unpack(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("expected bytes")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise CodecError(f"invalid msgpack: {type(e).__name__}") from None


def _u64(v: Any, what: str) -> int:
    if type(v) is not int or v < 0 or v > _MAX_U64:
        raise CodecError(f"{what}: expected an unsigned integer")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"{what}: expected bytes")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise CodecError(f"{what}: expected a boolean")
    return v


def _array(v: Any, n: int, what: str) -> list[Any]:
    if type(v) is not list or len(v) != n:
        raise CodecError(f"{what}: expected an array of {n}")
    return v


def _ids(v: Any, what: str) -> tuple[int, ...]:
    if type(v) is not list:
        raise CodecError(f"{what}: expected an array")
    return tuple(_u64(x, what) for x in v)


# -- ConfState / SnapshotMeta / HardState ------------------------------------


def _conf_state_obj(cs: ConfState) -> list[Any]:
    return [
        list(cs.voters),
        list(cs.learners),
        list(cs.voters_outgoing),
        list(cs.learners_next),
        cs.auto_leave,
    ]


def _conf_state_from(o: Any) -> ConfState:
    a = _array(o, 5, "conf_state")
    return ConfState(
        voters=_ids(a[0], "voters"),
        learners=_ids(a[1], "learners"),
        voters_outgoing=_ids(a[2], "voters_outgoing"),
        learners_next=_ids(a[3], "learners_next"),
        auto_leave=_bool(a[4], "auto_leave"),
    )


def encode_conf_state(cs: ConfState) -> bytes:
    return _packb(_conf_state_obj(cs))


def decode_conf_state(data: bytes) -> ConfState:
    return _conf_state_from(_unpack(data))


def _meta_obj(m: SnapshotMeta) -> list[Any]:
    return [m.index, m.term, _conf_state_obj(m.conf_state)]


def _meta_from(o: Any) -> SnapshotMeta:
    a = _array(o, 3, "snapshot meta")
    return SnapshotMeta(
        index=_u64(a[0], "index"), term=_u64(a[1], "term"), conf_state=_conf_state_from(a[2])
    )


def encode_snapshot_meta(m: SnapshotMeta) -> bytes:
    return _packb(_meta_obj(m))


def decode_snapshot_meta(data: bytes) -> SnapshotMeta:
    return _meta_from(_unpack(data))


def encode_snapshot(s: Snapshot) -> bytes:
    return _packb([_meta_obj(s.meta), s.data])


def decode_snapshot(data: bytes) -> Snapshot:
    a = _array(_unpack(data), 2, "snapshot")
    return Snapshot(meta=_meta_from(a[0]), data=_bytes(a[1], "snapshot data"))


def encode_hard_state(hs: HardState) -> bytes:
    return _packb([hs.term, hs.vote, hs.commit])


def decode_hard_state(data: bytes) -> HardState:
    a = _array(_unpack(data), 3, "hard state")
    return HardState(term=_u64(a[0], "term"), vote=_u64(a[1], "vote"), commit=_u64(a[2], "commit"))


# -- ConfChange ---------------------------------------------------------------


def encode_conf_change(cc: ConfChange) -> bytes:
    flat: list[int] = []
    for ch in cc.changes:
        flat.append(int(ch.type))
        flat.append(ch.node_id)
    return _packb([int(cc.transition), flat, cc.context])


def decode_conf_change(data: bytes) -> ConfChange:
    a = _array(_unpack(data), 3, "conf change")
    tr = _CC_TRANSITIONS.get(a[0]) if type(a[0]) is int else None
    if tr is None:
        raise CodecError("conf change: unknown transition")
    flat = a[1]
    if type(flat) is not list or len(flat) % 2:
        raise CodecError("conf change: malformed changes")
    changes = []
    for k in range(0, len(flat), 2):
        t = _CC_TYPES.get(flat[k]) if type(flat[k]) is int else None
        if t is None:
            raise CodecError("conf change: unknown change type")
        changes.append(ConfChangeSingle(type=t, node_id=_u64(flat[k + 1], "node id")))
    return ConfChange(changes=tuple(changes), transition=tr, context=_bytes(a[2], "context"))


# -- Entry / Message ------------------------------------------------------------


def _entries_flat(ents: list[Entry]) -> list[Any]:
    flat: list[Any] = []
    ap = flat.append
    for e in ents:
        ap(e.index)
        ap(e.term)
        ap(e.type)
        ap(e.data)
    return flat


def _entries_from(flat: Any) -> list[Entry]:
    if type(flat) is not list or len(flat) % 4:
        raise CodecError("entries: malformed")
    out: list[Entry] = []
    ap = out.append
    types = _ENTRY_TYPES
    for k in range(0, len(flat), 4):
        idx, term, typ, data = flat[k : k + 4]
        if type(idx) is not int or type(term) is not int or idx < 0 or term < 0:
            raise CodecError("entry: bad index or term")
        if type(data) is not bytes:
            raise CodecError("entry: data must be bytes")
        t = types.get(typ) if type(typ) is int else None
        if t is None:
            raise CodecError("entry: unknown type")
        ap(Entry(idx, term, data, t))
    return out


def encode_entries(ents: list[Entry]) -> bytes:
    return _packb(_entries_flat(ents))


def decode_entries(data: bytes) -> list[Entry]:
    return _entries_from(_unpack(data))


def encode_message(m: Message) -> bytes:
    snap = m.snapshot
    return _packb(
        [
            int(m.type),
            m.to,
            m.frm,
            m.term,
            m.log_term,
            m.index,
            _entries_flat(m.entries) if m.entries else [],
            m.commit,
            m.reject,
            m.reject_hint,
            None if snap is None else [_meta_obj(snap.meta), snap.data],
            m.context,
        ]
    )


def decode_message(data: bytes) -> Message:
    a = _array(_unpack(data), 12, "message")
    mt = _MESSAGE_TYPES.get(a[0]) if type(a[0]) is int else None
    if mt is None:
        raise CodecError("message: unknown type")
    snap_o = a[10]
    snap: Snapshot | None = None
    if snap_o is not None:
        s = _array(snap_o, 2, "snapshot")
        snap = Snapshot(meta=_meta_from(s[0]), data=_bytes(s[1], "snapshot data"))
    return Message(
        type=mt,
        to=_u64(a[1], "to"),
        frm=_u64(a[2], "frm"),
        term=_u64(a[3], "term"),
        log_term=_u64(a[4], "log_term"),
        index=_u64(a[5], "index"),
        entries=_entries_from(a[6]),
        commit=_u64(a[7], "commit"),
        reject=_bool(a[8], "reject"),
        reject_hint=_u64(a[9], "reject_hint"),
        snapshot=snap,
        context=_bytes(a[11], "context"),
    )
