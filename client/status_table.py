"""`medkv status`: the cluster's health as text a person reads at a glance.

A one-line verdict first (nodes up, partitions with a leader, worst lag),
then the nodes, then one row per partition: replicas with the leader starred
and unreachable ones marked, term, commit and applied index, and the lag of
the slowest replica. Problems are flagged in a last column so they stand out
without colour. `status_json` is the same information for machines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from proto.medkv.v1 import admin_pb2


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _uptime(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def down_nodes(status: admin_pb2.ClusterStatusResponse) -> set[int]:
    return {n.node.node_id for n in status.nodes if not n.up}


def has_live_leader(info: admin_pb2.PartitionInfo, down: set[int]) -> bool:
    """A leader is known and its node is up (a dead node's last report does not count)."""
    return bool(info.leader) and info.leader not in down


def partitions_with_leader(status: admin_pb2.ClusterStatusResponse) -> int:
    down = down_nodes(status)
    return sum(1 for p in status.partition_info if has_live_leader(p, down))


def _max_lag(info: admin_pb2.PartitionInfo) -> int:
    return max((r.lag_entries for r in info.replica_status), default=0)


def _replicas_cell(info: admin_pb2.PartitionInfo, down: set[int]) -> str:
    unreachable = {r.node_id for r in info.replica_status if not r.reachable} | down
    cells = []
    for node in info.replicas:
        mark = "*" if node == info.leader else ""
        if node in unreachable:
            mark += "!"
        cells.append(f"{node}{mark}")
    return ",".join(cells)


def _problems(info: admin_pb2.PartitionInfo, down: set[int], lag_warn: int) -> str:
    notes = []
    if not info.leader:
        notes.append("NO LEADER")
    elif not has_live_leader(info, down):
        notes.append("LEADER DOWN")
    unreachable = [
        n
        for n in info.replicas
        if n in down or any(r.node_id == n and not r.reachable for r in info.replica_status)
    ]
    if unreachable:
        notes.append(f"{len(unreachable)} replica(s) unreachable")
    if _max_lag(info) > lag_warn:
        notes.append("lagging")
    return "; ".join(notes)


def render_status(status: admin_pb2.ClusterStatusResponse, *, lag_warn: int = 100) -> str:
    """The human-readable status table."""
    nodes = sorted(status.nodes, key=lambda n: n.node.node_id)
    down = down_nodes(status)
    parts = sorted(status.partition_info, key=lambda p: p.partition)
    led = partitions_with_leader(status)
    worst = max((_max_lag(p) for p in parts), default=0)
    healthy = not down and led == len(parts) and len(parts) == status.partitions
    verdict = "OK" if healthy else "DEGRADED"
    lines = [
        f"medkv cluster: {verdict}  "
        f"nodes {len(nodes) - len(down)}/{len(nodes)} up  "
        f"partitions {led}/{status.partitions} with a leader  "
        f"replication {status.replication_factor}  "
        f"max lag {worst}  "
        f"(answered by node {status.answered_by})",
        "",
    ]
    lines += _table(
        ["NODE", "ADDRESS", "STATE", "LEADS", "REPLICAS", "UPTIME", "VERSION"],
        [
            [
                str(n.node.node_id),
                n.node.address,
                "up" if n.up else "DOWN",
                str(n.leaders),
                str(n.replicas),
                _uptime(n.uptime_seconds),
                n.version or "-",
            ]
            for n in nodes
        ],
    )
    lines.append("")
    lines += _table(
        ["PART", "REPLICAS", "LEADER", "TERM", "COMMIT", "APPLIED", "LAG", "PROBLEMS"],
        [
            [
                str(p.partition),
                _replicas_cell(p, down),
                str(p.leader) if p.leader else "-",
                str(p.term),
                str(p.commit_index),
                str(p.applied_index),
                str(_max_lag(p)),
                _problems(p, down, lag_warn),
            ]
            for p in parts
        ],
    )
    missing = status.partitions - len(parts)
    if missing > 0:
        lines.append(f"({missing} partition(s) not reported by the answering node)")
    lines.append("")
    lines.append(
        "* leader   ! unreachable   LAG: entries behind the leader's commit (slowest replica)"
    )
    return "\n".join(lines)


def status_dict(status: admin_pb2.ClusterStatusResponse) -> dict[str, Any]:
    """The status as plain JSON-able data; proto field names, 64-bit ints as numbers."""
    data = json_format.MessageToDict(
        status,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    # MessageToDict renders uint64 as strings (JSON number precision); these
    # are ids and log indices far below 2**53, so numbers read better.
    return _numbers(data)  # type: ignore[no-any-return]


_UINT64_FIELDS = frozenset(
    {
        "answered_by",
        "node_id",
        "leader",
        "term",
        "commit_index",
        "applied_index",
        "match_index",
        "lag_entries",
        "replicas",
    }
)


def _numbers(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in _UINT64_FIELDS and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def status_json(status: admin_pb2.ClusterStatusResponse) -> str:
    return json.dumps(status_dict(status), indent=2, sort_keys=True)


__all__ = [
    "down_nodes",
    "has_live_leader",
    "partitions_with_leader",
    "render_status",
    "status_dict",
    "status_json",
]
