"""`medkv status` rendering from a constructed ClusterStatusResponse."""

from __future__ import annotations

import json

from client.status_table import render_status, status_dict, status_json
from proto.medkv.v1 import admin_pb2


def make_status(
    down: int | None = None, leaderless: int | None = None
) -> admin_pb2.ClusterStatusResponse:
    status = admin_pb2.ClusterStatusResponse(answered_by=2, partitions=4, replication_factor=3)
    for n in (1, 2, 3):
        status.nodes.add(
            node=admin_pb2.NodeInfo(node_id=n, address=f"127.0.0.1:710{n}"),
            up=n != down,
            leaders=1 if n != down else 0,
            replicas=4,
            version="0.1.0",
            uptime_seconds=125.0,
        )
    for p in range(4):
        leader = 0 if p == leaderless else (p % 3) + 1
        info = status.partition_info.add(
            partition=p,
            replicas=[1, 2, 3],
            leader=leader,
            term=7,
            commit_index=40 + p,
            applied_index=39 + p,
        )
        for n in (1, 2, 3):
            info.replica_status.add(
                node_id=n,
                role=admin_pb2.LEADER_ROLE if n == leader else admin_pb2.FOLLOWER_ROLE,
                term=7,
                lag_entries=0 if n == leader else 3 * n,
                reachable=n != down,
            )
    return status


def rows(text: str, first: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    out = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        out.append(line.split())
    return out


def test_healthy_cluster_reads_ok() -> None:
    text = render_status(make_status())
    assert text.splitlines()[0].startswith("medkv cluster: OK")
    assert "nodes 3/3 up" in text and "partitions 4/4 with a leader" in text
    nodes = rows(text, "NODE")
    assert [r[:3] for r in nodes] == [
        ["1", "127.0.0.1:7101", "up"],
        ["2", "127.0.0.1:7102", "up"],
        ["3", "127.0.0.1:7103", "up"],
    ]
    assert nodes[0][5] == "2m05s"
    parts = rows(text, "PART")
    assert len(parts) == 4
    # Partition 1's leader is node 2: starred in the replica list and named.
    assert parts[1][:7] == ["1", "1,2*,3", "2", "7", "41", "40", "9"]


def test_down_node_and_missing_leader_stand_out() -> None:
    text = render_status(make_status(down=3, leaderless=2))
    assert text.splitlines()[0].startswith("medkv cluster: DEGRADED")
    assert "nodes 2/3 up" in text and "partitions 3/4 with a leader" in text
    nodes = rows(text, "NODE")
    assert nodes[2][2] == "DOWN"
    parts = {r[0]: r for r in rows(text, "PART")}
    assert parts["2"][2] == "-"
    assert "NO LEADER" in " ".join(parts["2"])
    assert "3!" in parts["0"][1]  # the unreachable replica is marked
    assert "unreachable" in " ".join(parts["0"])


def test_lagging_replicas_are_flagged() -> None:
    text = render_status(make_status(), lag_warn=5)
    parts = {r[0]: r for r in rows(text, "PART")}
    assert "lagging" in " ".join(parts["0"])


def test_json_has_numbers_and_every_field() -> None:
    status = make_status(down=1)
    data = json.loads(status_json(status))
    assert data == status_dict(status)
    assert data["answered_by"] == 2
    assert data["partition_info"][1]["leader"] == 2
    assert data["partition_info"][1]["replicas"] == [1, 2, 3]
    assert data["nodes"][0]["up"] is False
    assert data["nodes"][0]["node"]["address"] == "127.0.0.1:7101"


def test_a_leader_on_a_down_node_does_not_count() -> None:
    status = make_status(down=1)  # node 1 led partitions 0 and 3
    text = render_status(status)
    assert "partitions 2/4 with a leader" in text
    parts = {r[0]: " ".join(r) for r in rows(text, "PART")}
    assert "LEADER DOWN" in parts["0"] and "LEADER DOWN" in parts["3"]
    assert "LEADER DOWN" not in parts["1"]
