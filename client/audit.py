"""Audit log results as the clients return them (Admin.AuditQuery / AuditVerify).

Every node keeps its own audit log; a cluster-wide query asks every node of
the routing table and merges the answers by time. A node that did not answer
is named in `errors` rather than silently missing: an audit that quietly
skipped a node would look complete. Entries carry patients and records only
as keyed hashes (the node hashes a queried patient id itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proto.medkv.v1 import admin_pb2


@dataclass(frozen=True)
class AuditEntry:
    """One audit entry of one node (`fields`: the entry as the node wrote it)."""

    node: int
    seq: int
    time: float
    fields: Mapping[str, Any]

    @classmethod
    def from_proto(cls, rec: admin_pb2.AuditRecord) -> AuditEntry:
        doc = json.loads(rec.json)
        if not isinstance(doc, dict):
            raise ValueError(f"node {rec.node} entry {rec.seq}: not a JSON object")
        return cls(int(rec.node), int(rec.seq), float(doc.get("time", 0.0)), doc)

    def to_dict(self) -> dict[str, Any]:
        """The entry as one JSON object (its node and seq included)."""
        return {**self.fields, "node": self.node, "seq": self.seq}


@dataclass
class AuditQueryResult:
    """Entries of every node that answered, oldest first; nodes that did not, with why."""

    entries: list[AuditEntry] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.errors


def merge_entries(per_node: Iterable[Sequence[AuditEntry]], limit: int | None) -> list[AuditEntry]:
    """Every node's entries in one timeline (time, then node, then seq); the newest
    `limit` of them when given (each node already sent at most its newest `limit`)."""
    merged = sorted((e for entries in per_node for e in entries),
                    key=lambda e: (e.time, e.node, e.seq))
    return merged[-limit:] if limit else merged


@dataclass(frozen=True)
class AuditVerifyResult:
    """One node's answer to AuditVerify, or why it gave none (`error`)."""

    node: int
    address: str
    ok: bool = False
    entries: int = 0
    head: str = ""
    anchored_head: str = ""
    problems: tuple[str, ...] = ()
    error: str = ""

    @classmethod
    def from_proto(cls, node: int, address: str,
                   reply: admin_pb2.AuditVerifyResponse) -> AuditVerifyResult:
        return cls(node, address, reply.ok, reply.entries, reply.head, reply.anchored_head,
                   tuple(reply.problems))

    def to_dict(self) -> dict[str, Any]:
        if self.error:
            return {"node": self.node, "address": self.address, "error": self.error}
        return {"node": self.node, "address": self.address, "ok": self.ok,
                "entries": self.entries, "head": self.head or None,
                "anchored_head": self.anchored_head or None, "problems": list(self.problems)}


def _short(head: str) -> str:
    seq, _, h = head.partition(":")
    return f"{seq}:{h[:12]}" if h else (head or "-")


def render_audit_entries(entries: Sequence[AuditEntry]) -> str:
    """A readable table: one line per entry (hashes shortened; --json for all fields)."""
    headers = ("TIME (UTC)", "NODE", "SEQ", "SUBJECT", "ROLES", "METHOD", "OUTCOME", "PATIENT",
               "NOTE")
    rows = []
    for e in entries:
        f = e.fields
        note = ""
        if f.get("break_glass"):
            note = f"BREAK-GLASS: {f.get('break_glass_reason') or '-'}"
        elif f.get("reason"):
            note = str(f["reason"])
        rows.append((
            datetime.fromtimestamp(e.time, UTC).isoformat(timespec="milliseconds")[:-6],
            str(e.node), str(e.seq), str(f.get("subject") or "-"),
            ",".join(f.get("roles") or ()) or "-",
            str(f.get("method", "")).rsplit("/", 1)[-1] or "-",
            str(f.get("outcome", "")), str(f.get("patient") or "-")[:12], note,
        ))
    return _table(headers, rows)


def render_audit_verify(results: Sequence[AuditVerifyResult]) -> str:
    """One row per node, then each problem on its own line."""
    headers = ("NODE", "ADDRESS", "RESULT", "ENTRIES", "HEAD", "ANCHORED")
    rows = []
    notes = []
    for r in results:
        if r.error:
            rows.append((str(r.node), r.address, "NO ANSWER", "-", "-", "-"))
            notes.append(f"node {r.node}: {r.error}")
            continue
        rows.append((str(r.node), r.address, "ok" if r.ok else "TAMPERED", str(r.entries),
                     _short(r.head), _short(r.anchored_head) if r.anchored_head else "none yet"))
        notes += [f"node {r.node}: {p}" for p in r.problems]
    return "\n".join([_table(headers, rows), *notes])


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


__all__ = [
    "AuditEntry", "AuditQueryResult", "AuditVerifyResult", "merge_entries",
    "render_audit_entries", "render_audit_verify",
]
