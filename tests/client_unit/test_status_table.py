"""`medkv status` rendering from a constructed ClusterStatusResponse."""

from __future__ import annotations

import json

from client.status_table import (
    DEGRADED,
    OK,
    UNAVAILABLE,
    assess,
    render_status,
    status_dict,
    status_json,
)
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
    assert nodes[0][3] == "-" and nodes[0][6] == "2m05s"  # no member state reported
    parts = rows(text, "PART")
    assert len(parts) == 4
    # Partition 1's leader is node 2: starred in the replica list and named.
    assert parts[1][:7] == ["1", "1,2*,3", "2", "7", "41", "40", "9"]


def test_down_node_and_missing_leader_stand_out() -> None:
    text = render_status(make_status(down=3, leaderless=2))
    # A partition without a leader cannot serve: worse than degraded.
    assert text.splitlines()[0].startswith("medkv cluster: UNAVAILABLE")
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


def reasons_of(text: str) -> list[str]:
    """The '  - ' lines right under the header."""
    out = []
    for line in text.splitlines()[1:]:
        if not line.startswith("  - "):
            break
        out.append(line[4:])
    return out


def test_healthy_cluster_has_no_reasons() -> None:
    status = make_status()
    assert assess(status) == (OK, [])
    assert reasons_of(render_status(status)) == []
    data = status_dict(status)
    assert data["health"] == "OK" and data["reasons"] == []


def test_down_node_is_degraded_and_names_under_replicated_partitions() -> None:
    status = make_status(down=3)
    for p in status.partition_info:  # node 1 or 2 leads every partition
        if p.leader == 3:
            p.leader = 1
    verdict, reasons = assess(status)
    assert verdict == DEGRADED
    assert "node(s) down: 3" in reasons
    assert "under-replicated: partition(s) 0 (2/3), 1 (2/3), 2 (2/3), 3 (2/3)" in reasons
    text = render_status(status)
    assert text.startswith("medkv cluster: DEGRADED")
    assert reasons_of(text) == reasons
    parts = {r[0]: " ".join(r) for r in rows(text, "PART")}
    assert "UNDER-REPLICATED 2/3" in parts["0"]


def test_unreachable_follower_alone_makes_partition_under_replicated() -> None:
    status = make_status()
    status.partition_info[1].replica_status[2].reachable = False  # node 3, leader 2
    verdict, reasons = assess(status)
    assert verdict == DEGRADED
    assert reasons == ["under-replicated: partition(s) 1 (2/3)"]


def test_out_of_service_replica_is_degraded_and_marked() -> None:
    status = make_status()
    status.partition_info[2].replica_status[0].out_of_service = "partition 2 failed a check"
    verdict, reasons = assess(status)
    assert verdict == DEGRADED
    assert "out of service (DATA_LOSS): partition 2 on node 1" in reasons
    assert "under-replicated: partition(s) 2 (2/3)" in reasons
    parts = {r[0]: r for r in rows(render_status(status), "PART")}
    assert parts["2"][1] == "1x,2,3*"


def test_impossible_term_is_never_ok() -> None:
    status = make_status()
    p = status.partition_info[0]
    p.term = 2**64 - 1
    p.replica_status[0].term = 2**64 - 1  # the leader (node 1) took a forged term
    verdict, reasons = assess(status)
    assert verdict == DEGRADED
    assert reasons == [f"impossible term: partition 0 on node 1, term {2**64 - 1}"]
    text = render_status(status)
    assert "IMPOSSIBLE TERM" in " ".join(rows(text, "PART")[0])
    data = json.loads(status_json(status))
    assert data["health"] == "DEGRADED" and data["reasons"] == reasons


def test_term_far_beyond_the_other_replicas_is_impossible() -> None:
    status = make_status()
    status.partition_info[3].replica_status[1].term = 7 + 5_000_000
    assert assess(status)[0] == DEGRADED
    status.partition_info[3].replica_status[1].term = 9  # a couple of elections ahead: fine
    assert assess(status) == (OK, [])


def test_answering_node_is_never_shown_unreachable() -> None:
    status = make_status()
    # The leader of partition 0 (node 1) has not heard node 2 since its last
    # quorum check, and node 2 is the node that answered.
    status.partition_info[0].replica_status[1].reachable = False
    status.nodes[1].up = False
    text = render_status(status)
    assert rows(text, "PART")[0][1] == "1*,2,3"
    assert rows(text, "NODE")[1][2] == "up"
    assert assess(status) == (OK, [])


def test_unreported_partition_is_unavailable() -> None:
    status = make_status()
    del status.partition_info[3]
    verdict, reasons = assess(status)
    assert verdict == UNAVAILABLE
    assert reasons == ["not reported: partition(s) 3"]
    assert status_dict(status)["health"] == "UNAVAILABLE"


def test_replicas_in_motion_are_marked_and_ok_at_quorum() -> None:
    status = make_status()
    for n in status.nodes:
        n.member_state = "active"
    status.nodes.add(node=admin_pb2.NodeInfo(node_id=4, address="127.0.0.1:7104"), up=True,
                     member_state="joining")
    p0 = status.partition_info[0]
    p0.learners.append(4)
    p1 = status.partition_info[1]
    p1.replicas.append(4)  # a joint configuration: 3 leaves, 4 enters
    p1.leaving.append(3)
    p1.replica_status.add(node_id=4, role=admin_pb2.FOLLOWER_ROLE, term=7, reachable=False)
    text = render_status(status)
    assert text.splitlines()[0].startswith("medkv cluster: OK")
    assert "moving 2" in text and "(1 joining)" in text
    nodes = rows(text, "NODE")
    assert [r[3] for r in nodes] == ["active", "active", "active", "joining"]
    parts = {r[0]: r for r in rows(text, "PART")}
    assert parts["0"][1] == "1*,2,3,4+" and "moving" in parts["0"]
    assert parts["1"][1] == "1,2*,3-,4!" and "moving;" in " ".join(parts["1"])
    data = status_dict(status)
    assert data["moving"] == [0, 1] and data["health"] == OK
    assert data["partition_info"][0]["learners"] == [4]
    assert data["partition_info"][1]["leaving"] == [3]
    assert data["nodes"][3]["member_state"] == "joining"
    # Below a quorum of its replicas a moving partition is under-replicated.
    p1.replica_status[0].reachable = False  # node 1 too: 2 of 4 live
    verdict, reasons = assess(status)
    assert verdict == DEGRADED and any("under-replicated: partition(s) 1 (2/4)" in r
                                       for r in reasons)
