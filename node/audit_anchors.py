"""Audit chain heads anchored in a partition's replicated state.

Each node's audit log (node/auth/audit.py) is tamper-evident on its own only
up to its HEAD file: someone who cuts the log's tail and rolls HEAD back with
it leaves a log that verifies. So every node regularly proposes an AuditAnchor
entry (node/commands.py, kind 9) carrying its durable chain head; the state
machine keeps, per partition, the newest anchor of every node, and AuditVerify
checks the node's log against the highest one any local replica holds.

The rule is monotonic: an anchor replaces the one recorded for its node only
if its seq is higher. A lower one (a late duplicate, a proposal from before a
restart) changes nothing, and so does a different hash at the same seq: the
first recorded stays, and verification then names the rewritten entry. An
anchor names a node, a sequence number and a hash: no patient data.

Stored as one blob per partition (`P "m" "audit"`, record_store) and carried
by snapshots; its encoding is deterministic (sorted by node id) so replicas
hold byte-identical state. This module imports nothing of the node: the
record store uses it to check a received snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgpack

from node.commands import AUDIT_CHAIN_HASH_BYTES, AuditAnchor

_BLOB_VERSION = 1


@dataclass(frozen=True, slots=True)
class Anchor:
    """The newest chain head of one node recorded in one partition."""

    node_id: int
    seq: int
    chain_hash: bytes
    ts_ms: int  # the log-clock stamp of the entry that recorded it
    index: int  # the Raft index of that entry

    @property
    def head_text(self) -> str:
        """SEQ:HASH, as node.auth.audit.ChainHead.text() and `medkv audit head` print it."""
        return f"{self.seq}:{self.chain_hash.hex()}"


def apply_anchor(
    anchors: Mapping[int, Anchor], cmd: AuditAnchor, index: int
) -> tuple[dict[int, Anchor] | None, str]:
    """The anchors after `cmd` (a new dict; None when nothing changes) and a note
    saying why nothing changed ("" when it did). Monotonic per node."""
    have = anchors.get(cmd.node_id)
    if have is not None and cmd.seq <= have.seq:
        if cmd.seq == have.seq and cmd.chain_hash != have.chain_hash:
            return None, (f"node {cmd.node_id} anchored a different hash at seq {cmd.seq} "
                          "before; the first one stays")
        return None, f"node {cmd.node_id} has an anchor at seq {have.seq} already"
    out = dict(anchors)
    out[cmd.node_id] = Anchor(cmd.node_id, cmd.seq, cmd.chain_hash, cmd.ts_ms, index)
    return out, ""


def encode_anchors(anchors: Mapping[int, Anchor]) -> bytes:
    rows = [[a.node_id, a.seq, a.chain_hash, a.ts_ms, a.index]
            for _, a in sorted(anchors.items())]
    return bytes(msgpack.packb([_BLOB_VERSION, rows], use_bin_type=True))


def _uint(v: object) -> int:
    if type(v) is not int or v < 0:
        raise ValueError("audit anchors: a field is not an unsigned integer")
    return v


def decode_anchors(blob: bytes) -> dict[int, Anchor]:
    """Raises ValueError for a blob that is not an anchor table (never quotes it)."""
    try:
        doc = msgpack.unpackb(blob, raw=False, use_list=True, strict_map_key=True)
    except Exception:
        raise ValueError("audit anchors: not well-formed msgpack") from None
    if not (type(doc) is list and len(doc) == 2 and doc[0] == _BLOB_VERSION
            and type(doc[1]) is list):
        raise ValueError("audit anchors: unknown layout")
    out: dict[int, Anchor] = {}
    for row in doc[1]:
        if type(row) is not list or len(row) != 5:
            raise ValueError("audit anchors: a row is malformed")
        node_id, seq, h, ts_ms, index = row
        if type(h) is not bytes or len(h) != AUDIT_CHAIN_HASH_BYTES:
            raise ValueError("audit anchors: a chain hash is malformed")
        a = Anchor(_uint(node_id), _uint(seq), h, _uint(ts_ms), _uint(index))
        if a.node_id == 0 or a.node_id in out:
            raise ValueError("audit anchors: a node id is invalid or repeated")
        out[a.node_id] = a
    return out


def check_anchors_blob(blob: bytes) -> None:
    """For a received snapshot (record_store.SnapshotParser): raises ValueError."""
    decode_anchors(blob)


__all__ = ["Anchor", "apply_anchor", "check_anchors_blob", "decode_anchors", "encode_anchors"]
