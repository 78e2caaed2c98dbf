"""`medkv audit query|verify` against the in-test gRPC cluster, and the dispatch that
keeps the offline `medkv audit verify|show|head --data-dir ...` going to the node package."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import grpc
import pytest

from client import Client, RetryPolicy
from client.audit import AuditEntry, merge_entries
from client.cli import build_audit_parser, is_online_audit, main, server_command
from client.errors import PermissionDenied
from tests.client_unit.kvserver import Fault, TestCluster

FAST = RetryPolicy(timeout=3.0, attempt_timeout=1.0, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def cluster() -> Iterator[TestCluster]:
    with TestCluster(nodes=3, partitions=4) as c:
        yield c


def test_dispatch_online_and_offline() -> None:
    assert is_online_audit(["audit", "query", "--patient", "p"])
    assert is_online_audit(["--addr", "h:1", "audit", "verify"])
    assert is_online_audit(["audit", "verify", "--cluster", "--json"])
    for offline in (["audit", "verify", "--data-dir", "d", "--key-file", "k"],
                    ["audit", "verify", "--key-file=k", "--data-dir=d"],
                    ["audit", "show", "--data-dir", "d", "--key-file", "k"],
                    ["audit", "head", "--data-dir", "d", "--key-file", "k"]):
        assert not is_online_audit(offline)
        assert server_command(offline) == [sys.executable, "-m", "node", *offline]
    assert server_command(["audit", "query"]) is None


def test_times_and_limits_are_checked_before_any_call() -> None:
    p = build_audit_parser()
    ns = p.parse_args(["query", "--since", "2026-01-01T00:00", "--until", "1767225601.5",
                       "--limit", "5", "--break-glass", "--jsonl"])
    assert ns.since == 1767225600.0 and ns.until == 1767225601.5 and ns.limit == 5
    for bad in (["query", "--since", "yesterday"], ["query", "--limit", "0"],
                ["query", "--limit", "10001"], ["query", "--until", "-5"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_merge_is_by_time_then_node_and_keeps_the_newest() -> None:
    def e(node: int, seq: int, t: float) -> AuditEntry:
        return AuditEntry(node, seq, t, {"time": t})

    a = [e(1, 1, 5.0), e(1, 2, 7.0)]
    b = [e(2, 1, 5.0), e(2, 2, 6.0)]
    assert [(x.node, x.seq) for x in merge_entries([a, b], None)] == [(1, 1), (2, 1), (2, 2), (1, 2)]
    assert [(x.node, x.seq) for x in merge_entries([a, b], 2)] == [(2, 2), (1, 2)]


def test_client_queries_every_node_and_names_the_silent_ones(cluster: TestCluster) -> None:
    with Client(cluster.seeds(), retry=FAST) as kv:
        res = kv.audit_query(limit=4)
        assert res.complete
        assert [(x.node, x.seq) for x in res.entries] == [(3, 2), (1, 3), (2, 3), (3, 3)]
        times = [x.time for x in res.entries]
        assert times == sorted(times) and times[-1] == 1033.0
        assert len(kv.audit_query().entries) == 9
        cluster.stop_node(3)
        res = kv.audit_query(subject="user-1")
        assert not res.complete and set(res.errors) == {3}
        assert [(x.node, x.seq) for x in res.entries] == [(1, 1), (2, 1)]


def test_a_refusal_is_raised_not_reported_per_node(cluster: TestCluster) -> None:
    cluster.script(Fault("code", method="AuditQuery", times=3, arg=grpc.StatusCode.PERMISSION_DENIED))
    with Client(cluster.seeds(), retry=FAST) as kv, pytest.raises(PermissionDenied):
        kv.audit_query()


def test_cli_query_table_json_and_jsonl(cluster: TestCluster,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    addr = ",".join(cluster.seeds())
    assert main(["--addr", addr, "audit", "query", "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "NODE"] and len(lines) == 4
    assert "BREAK-GLASS: ER" in lines[-1] and "3 entries" in err
    assert main(["audit", "query", "--addr", addr, "--jsonl", "--subject", "user-2"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["node"], d["seq"], d["subject"]) for d in docs] == [
        (1, 2, "user-2"), (2, 2, "user-2"), (3, 2, "user-2")]
    assert main(["--json", "--addr", addr, "audit", "query", "--limit", "1"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["node"] == 3 and doc["seq"] == 3
    cluster.stop_node(1)
    assert main(["--addr", addr, "--timeout", "2", "audit", "query"]) == 1
    assert "node 1 did not answer" in capsys.readouterr().err


def test_cli_verify_table_and_json(cluster: TestCluster,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    addr = ",".join(cluster.seeds())
    assert main(["--addr", addr, "audit", "verify", "--cluster"]) == 1  # node 2 is behind
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NODE", "ADDRESS", "RESULT", "ENTRIES", "HEAD", "ANCHORED"]
    rows = {line.split()[0]: line.split() for line in out[1:4]}
    assert rows["1"][2] == "ok" and rows["2"][2] == "TAMPERED"
    assert out[4].startswith("node 2: the log ends at entry 3 but the anchored head")
    assert main(["--addr", addr, "--json", "audit", "verify"]) == 1
    docs = json.loads(capsys.readouterr().out)
    assert [(d["node"], d["ok"]) for d in docs] == [(1, True), (2, False), (3, True)]
