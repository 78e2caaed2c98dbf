"""`medkv status`: the cluster's health as text a person reads at a glance.

A one-line verdict first (nodes up, partitions with a leader, worst lag) and,
under it, the reasons it is not OK; then the nodes, then one row per
partition: replicas with the leader starred, unreachable ones marked '!' and
out-of-service ones 'x', term, commit and applied index, and the lag of the
slowest replica. Problems are flagged in a last column so they stand out
without colour. `status_json` is the same information for machines, with the
verdict as "health" and its "reasons".

The verdict (assess): UNAVAILABLE when a partition has no live leader or was
not reported; DEGRADED when a node is down, a partition has fewer live
replicas than the replication factor, a replica is out of service
(DATA_LOSS) or reports an impossible term; OK otherwise. The answering node
is never shown unreachable: it answered.

The control plane's work in progress is shown, not judged: each node's
member state (joining, active, decommissioning) in a MEMBER column, and
partitions being moved (learners being added '+', voters leaving a joint
configuration '-', or placed elsewhere by the cluster state) marked
"moving" and counted in the header. A moving partition needs only a quorum
of its replicas live to be OK (it is gaining or losing one on purpose), and
a decommissioning node that is down is on its way out: neither makes the
cluster DEGRADED.
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


DECOMMISSIONING = "decommissioning"


def moving(info: admin_pb2.PartitionInfo) -> bool:
    """A move is pending or in flight: learners, a joint configuration, or
    the cluster state places the partition elsewhere."""
    return bool(info.moving or info.learners or info.leaving)


def moving_partitions(status: admin_pb2.ClusterStatusResponse) -> list[int]:
    return sorted(p.partition for p in status.partition_info if moving(p))


def _leaving_nodes(status: admin_pb2.ClusterStatusResponse) -> set[int]:
    return {n.node.node_id for n in status.nodes if n.member_state == DECOMMISSIONING}


def down_nodes(status: admin_pb2.ClusterStatusResponse) -> set[int]:
    """Nodes that did not answer; never the node that answered this status."""
    return {n.node.node_id for n in status.nodes if not n.up and n.node.node_id != status.answered_by}


def has_live_leader(info: admin_pb2.PartitionInfo, down: set[int]) -> bool:
    """A leader is known and its node is up (a dead node's last report does not count)."""
    return bool(info.leader) and info.leader not in down


def partitions_with_leader(status: admin_pb2.ClusterStatusResponse) -> int:
    down = down_nodes(status)
    return sum(1 for p in status.partition_info if has_live_leader(p, down))


def _max_lag(info: admin_pb2.PartitionInfo) -> int:
    return max((r.lag_entries for r in info.replica_status), default=0)


# Raft terms are stored as int64 (node.group_persist.MAX_TERM): anything above
# is impossible. A term more than TERM_GAP above every other replica's term of
# the same partition is as suspect: a term advances by one per election, so
# such a gap means a peer's message with a forged or corrupt term was taken.
MAX_TERM = (1 << 63) - 1
TERM_GAP = 1_000_000

OK = "OK"
DEGRADED = "DEGRADED"  # every partition serves, with less redundancy or a fault
UNAVAILABLE = "UNAVAILABLE"  # at least one partition cannot serve (no leader / unreported)


def _unreachable(info: admin_pb2.PartitionInfo, down: set[int], answered_by: int) -> set[int]:
    """Replicas shown '!': their node is down or the leader does not hear them;
    never the node that answered (it is obviously up)."""
    gone = {r.node_id for r in info.replica_status if not r.reachable} | down
    return {n for n in info.replicas if n in gone and n != answered_by}


def _out_of_service(info: admin_pb2.PartitionInfo) -> set[int]:
    return {r.node_id for r in info.replica_status if r.out_of_service}


def impossible_terms(info: admin_pb2.PartitionInfo) -> list[tuple[int, int]]:
    """(node, term) pairs no honest replica of this partition can hold; node 0
    means the partition's own reported term."""
    terms = [(r.node_id, r.term) for r in info.replica_status if r.term]
    if info.term and not any(t == info.term for _, t in terms):
        terms.append((0, info.term))
    bad = []
    for node, term in terms:
        others = [t for n, t in terms if n != node]
        if term > MAX_TERM or (others and term > max(others) + TERM_GAP):
            bad.append((node, term))
    return bad


def live_replicas(info: admin_pb2.PartitionInfo, down: set[int], answered_by: int) -> int:
    """Replicas whose node is up, heard by the leader and in service."""
    gone = _unreachable(info, down, answered_by) | _out_of_service(info)
    return sum(1 for n in info.replicas if n not in gone)


def _nodes(ns: Sequence[int]) -> str:
    return ",".join(str(n) for n in sorted(ns))


def assess(status: admin_pb2.ClusterStatusResponse) -> tuple[str, list[str]]:
    """The header's verdict and its reasons, worst first.

    UNAVAILABLE: a partition has no live leader or was not reported at all.
    DEGRADED: every partition has a leader, but a node is down, a partition
    has fewer live replicas than the replication factor, a replica is out of
    service (DATA_LOSS), or a replica reports an impossible term.
    A partition being moved counts as under-replicated only below a quorum
    of its replicas; a down node being decommissioned is no reason.
    OK only when none of these holds."""
    down = down_nodes(status)
    parts = sorted(status.partition_info, key=lambda p: p.partition)
    rf = status.replication_factor
    unavailable: list[str] = []
    degraded: list[str] = []
    leaderless = [p.partition for p in parts if not has_live_leader(p, down)]
    if leaderless:
        unavailable.append(f"no leader: partition(s) {_nodes(leaderless)}")
    reported = {p.partition for p in parts}
    missing = [p for p in range(status.partitions) if p not in reported]
    if missing:
        unavailable.append(f"not reported: partition(s) {_nodes(missing)}")
    down_staying = down - _leaving_nodes(status)
    if down_staying:
        degraded.append(f"node(s) down: {_nodes(sorted(down_staying))}")
    under = []
    for p in parts:
        live = live_replicas(p, down, status.answered_by)
        want = max(rf, len(p.replicas))
        if live < want and not (moving(p) and live >= len(p.replicas) // 2 + 1):
            under.append(f"{p.partition} ({live}/{want})")
    if under:
        degraded.append(f"under-replicated: partition(s) {', '.join(under)}")
    for p in parts:
        for n in sorted(_out_of_service(p)):
            degraded.append(f"out of service (DATA_LOSS): partition {p.partition} on node {n}")
        for n, term in impossible_terms(p):
            where = f"on node {n}" if n else "reported"
            degraded.append(f"impossible term: partition {p.partition} {where}, term {term}")
    if unavailable:
        return UNAVAILABLE, unavailable + degraded
    if degraded:
        return DEGRADED, degraded
    return OK, []


def _replicas_cell(info: admin_pb2.PartitionInfo, down: set[int], answered_by: int) -> str:
    unreachable = _unreachable(info, down, answered_by)
    broken = _out_of_service(info)
    cells = []
    for node in info.replicas:
        mark = "*" if node == info.leader else ""
        if node in broken:
            mark += "x"
        elif node in unreachable:
            mark += "!"
        if node in info.leaving:
            mark += "-"
        cells.append(f"{node}{mark}")
    cells += [f"{node}+" for node in info.learners]
    return ",".join(cells)


def _problems(
    info: admin_pb2.PartitionInfo, down: set[int], lag_warn: int, rf: int, answered_by: int
) -> str:
    notes = []
    if not info.leader:
        notes.append("NO LEADER")
    elif not has_live_leader(info, down):
        notes.append("LEADER DOWN")
    unreachable = _unreachable(info, down, answered_by)
    if unreachable:
        notes.append(f"{len(unreachable)} replica(s) unreachable")
    broken = _out_of_service(info)
    if broken:
        notes.append(f"{len(broken)} out of service")
    want = max(rf, len(info.replicas))
    live = live_replicas(info, down, answered_by)
    if moving(info):
        notes.append("moving")
    if live < want:
        quorum = moving(info) and live >= len(info.replicas) // 2 + 1
        notes.append(f"{live}/{want} live" if quorum else f"UNDER-REPLICATED {live}/{want}")
    if impossible_terms(info):
        notes.append("IMPOSSIBLE TERM")
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
    verdict, reasons = assess(status)
    in_motion = moving_partitions(status)
    members = [n.member_state for n in nodes if n.member_state not in ("", "active")]
    changing = ", ".join(f"{members.count(m)} {m}" for m in sorted(set(members)))
    lines = [
        f"medkv cluster: {verdict}  "
        f"nodes {len(nodes) - len(down)}/{len(nodes)} up{f' ({changing})' if changing else ''}  "
        f"partitions {led}/{status.partitions} with a leader  "
        + (f"moving {len(in_motion)}  " if in_motion else "")
        + f"replication {status.replication_factor}  "
        f"max lag {worst}  "
        f"(answered by node {status.answered_by})",
    ]
    lines += [f"  - {r}" for r in reasons]
    lines.append("")
    lines += _table(
        ["NODE", "ADDRESS", "STATE", "MEMBER", "LEADS", "REPLICAS", "UPTIME", "VERSION"],
        [
            [
                str(n.node.node_id),
                n.node.address,
                "up" if n.up or n.node.node_id == status.answered_by else "DOWN",
                n.member_state or "-",
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
                _replicas_cell(p, down, status.answered_by),
                str(p.leader) if p.leader else "-",
                str(p.term),
                str(p.commit_index),
                str(p.applied_index),
                str(_max_lag(p)),
                _problems(p, down, lag_warn, status.replication_factor, status.answered_by),
            ]
            for p in parts
        ],
    )
    missing = status.partitions - len(parts)
    if missing > 0:
        lines.append(f"({missing} partition(s) not reported by the answering node)")
    lines.append("")
    lines.append(
        "* leader   ! unreachable   x out of service (DATA_LOSS)   + learner being added   "
        "- leaving (joint configuration)   "
        "LAG: entries behind the leader's commit (slowest replica)"
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
    out: dict[str, Any] = _numbers(data)
    verdict, reasons = assess(status)
    out["health"] = verdict
    out["reasons"] = reasons
    out["moving"] = moving_partitions(status)
    return out


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
        "learners",
        "leaving",
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


_ROLES = {
    admin_pb2.LEADER_ROLE: "leader",
    admin_pb2.FOLLOWER_ROLE: "follower",
    admin_pb2.CANDIDATE_ROLE: "candidate",
    admin_pb2.PRE_CANDIDATE_ROLE: "pre-candidate",
    admin_pb2.LEARNER_ROLE: "learner",
}


def render_partition(reply: admin_pb2.PartitionStatusResponse) -> str:
    """`medkv partition P`: a header line, then one row per replica."""
    info = reply.info
    lines = [
        f"partition {info.partition}: leader {info.leader or 'none'}, term {info.term}, "
        f"commit {info.commit_index}, applied {info.applied_index} "
        f"(answered by node {reply.answered_by})"
    ]
    rows = []
    by_node = {r.node_id: r for r in info.replica_status}
    for n in info.replicas:
        r = by_node.get(n)
        if r is None:
            rows.append([str(n), "?", "", "", "", "", "", "no report"])
            continue
        state = "OUT OF SERVICE" if r.out_of_service else ("ok" if r.reachable else "unreachable")
        rows.append([
            str(n), _ROLES.get(r.role, "unknown"), str(r.term), str(r.commit_index),
            str(r.applied_index), str(r.match_index), str(r.lag_entries), state,
        ])
    lines += _table(
        ["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "MATCH", "LAG", "STATE"], rows
    )
    return "\n".join(lines)


def partition_json(reply: admin_pb2.PartitionStatusResponse) -> str:
    """The reply as JSON, proto field names, 64-bit ints as numbers (as status_json)."""
    data = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
    )
    return json.dumps(_numbers(data), indent=2, sort_keys=True)


__all__ = [
    "DEGRADED",
    "OK",
    "UNAVAILABLE",
    "assess",
    "down_nodes",
    "has_live_leader",
    "impossible_terms",
    "live_replicas",
    "moving",
    "moving_partitions",
    "partitions_with_leader",
    "render_status",
    "status_dict",
    "status_json",
]
