"""node/audit_service.py: AuditQuery filtering, AuditVerify against the anchored head,
and anchoring (which partition, when, and never over a log that was cut)."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node import commands as cmd
from node.audit_anchors import Anchor, apply_anchor
from node.audit_service import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    PAGE_RECORDS,
    AuditFilter,
    AuditService,
    parse_query,
    query_log,
)
from node.auth.audit import AuditLog, AuditWriter, ChainHead, chain_hash_at, write_head
from node.errors import FailedPrecondition, InvalidArgument
from node.state_machine import ApplyResult
from proto.medkv.v1 import admin_pb2
from tests.auth.test_audit import CANARY_PATIENT, LOG_ID, Node, event


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def filled(node: Node, n: int = 40) -> AuditLog:
    log = node.log()
    for i in range(1, n + 1):
        bg = i % 10 == 0
        log.append(event(i, break_glass=bg, break_glass_reason="ER" if bg else ""))
        if i % 7 == 0:
            log.flush()
    log.flush()
    return log


# ---- requests -----------------------------------------------------------------------


@pytest.mark.parametrize("req, field", [
    (admin_pb2.AuditQueryRequest(limit=MAX_LIMIT + 1), "limit"),
    (admin_pb2.AuditQueryRequest(since=-1), "since"),
    (admin_pb2.AuditQueryRequest(until=float("nan")), "until"),
    (admin_pb2.AuditQueryRequest(since=float("inf")), "since"),
    (admin_pb2.AuditQueryRequest(since=20, until=10), "since"),
    (admin_pb2.AuditQueryRequest(patient_id="a\x00b"), "patient_id"),
    (admin_pb2.AuditQueryRequest(subject="s" * 300), "subject"),
])
def test_bad_queries_are_invalid_argument(node: Node, req: admin_pb2.AuditQueryRequest,
                                          field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{field}") as e:
        parse_query(req, node.log())
    assert CANARY_PATIENT not in str(e.value)


def test_the_patient_id_is_hashed_before_anything_else(node: Node) -> None:
    f = parse_query(admin_pb2.AuditQueryRequest(patient_id=CANARY_PATIENT), node.log())
    assert f.patient_hash == node.keys.patient_hash(CANARY_PATIENT)
    assert CANARY_PATIENT not in repr(f)
    assert f.limit == DEFAULT_LIMIT and f.since is None and f.until is None


# ---- filtering --------------------------------------------------------------------------


def seqs(log: AuditLog, **kw: Any) -> list[int]:
    return [e["seq"] for e in query_log(log, AuditFilter(**kw))]


def test_filters(node: Node) -> None:
    log = filled(node)
    t0 = 1_700_000_000.0
    assert seqs(log) == list(range(1, 41))
    assert seqs(log, limit=5) == [36, 37, 38, 39, 40]  # the newest, oldest first
    assert seqs(log, patient_hash=node.keys.patient_hash(CANARY_PATIENT)) == list(range(1, 41, 2))
    assert seqs(log, patient_hash=node.keys.patient_hash("nobody")) == []
    assert seqs(log, subject="user-0") == list(range(3, 41, 3))
    assert seqs(log, since=t0 + 10, until=t0 + 12) == [10, 11, 12]  # both ends inclusive
    assert seqs(log, break_glass_only=True) == [10, 20, 30, 40]
    assert seqs(log, break_glass_only=True, subject="user-1", limit=1) == [40]


def test_query_streams_pages_after_flushing_and_the_json_names_no_patient(node: Node) -> None:
    log = node.log()
    svc = AuditService(fake_node(log))  # type: ignore[arg-type]

    async def run() -> list[admin_pb2.AuditQueryResponse]:
        w = svc.writer
        assert w is not None
        w.start()
        for i in range(1, 601):
            w.record(event(i))  # appended, not yet on disk: the query flushes first
        pages = [p async for p in svc.query(admin_pb2.AuditQueryRequest(
            patient_id=CANARY_PATIENT, limit=300))]
        await w.close()
        return pages

    pages = asyncio.run(run())
    assert [len(p.records) for p in pages] == [PAGE_RECORDS, 300 - PAGE_RECORDS]
    recs = [r for p in pages for r in p.records]
    assert [r.seq for r in recs] == list(range(1, 601, 2))[-300:]
    assert all(r.node == 1 for r in recs)
    doc = json.loads(recs[0].json)
    assert doc["patient"] == node.keys.patient_hash(CANARY_PATIENT)
    assert all(CANARY_PATIENT not in r.json for r in recs)


def test_an_insecure_node_keeps_no_log() -> None:
    svc = AuditService(fake_node(None))  # type: ignore[arg-type]

    async def run() -> None:
        with pytest.raises(FailedPrecondition, match="insecure = true"):
            await svc.verify()
        with pytest.raises(FailedPrecondition, match="insecure = true"):
            async for _ in svc.query(admin_pb2.AuditQueryRequest()):
                pass
        assert await svc.anchor_once() == 0

    asyncio.run(run())


# ---- a node as the service sees it: a log, a writer, replicas with anchor tables ----------


@dataclass
class FakeReplica:
    is_leader: bool = True
    broken: str = ""
    installing: bool = False
    anchors: dict[int, Anchor] = field(default_factory=dict)

    @property
    def sm(self) -> Any:
        return SimpleNamespace(audit_anchors=self.anchors)


class FakeHost:
    def __init__(self, replicas: dict[int, FakeReplica]) -> None:
        self.replicas = replicas
        self.proposed: list[tuple[int, cmd.AuditAnchor]] = []
        self.index = 0

    async def propose(self, partition: int, wait_key: Any, encode: Any, timeout: float) -> Any:
        c = cmd.decode_command(encode(123))
        assert isinstance(c, cmd.AuditAnchor) and c.wait_key == wait_key
        self.proposed.append((partition, c))
        self.index += 1
        r = self.replicas[partition]
        new, note = apply_anchor(r.anchors, c, self.index)
        if new is not None:
            r.anchors = new
        return ApplyResult(self.index, r.anchors[c.node_id].seq, None, note, wait_key=wait_key)


def fake_node(log: AuditLog | None, replicas: dict[int, FakeReplica] | None = None) -> Any:
    access = None if log is None else SimpleNamespace(audit=AuditWriter(log))
    return SimpleNamespace(cfg=SimpleNamespace(node_id=1), access=access,
                           host=FakeHost(replicas if replicas is not None else {0: FakeReplica()}))


def test_anchoring_takes_led_partitions_in_turn_and_only_when_the_head_moved(node: Node) -> None:
    log = filled(node, 5)
    replicas = {0: FakeReplica(), 1: FakeReplica(is_leader=False), 2: FakeReplica(),
                3: FakeReplica(broken="corrupt")}
    fake = fake_node(log, replicas)
    svc = AuditService(fake)

    async def run() -> None:
        assert await svc.anchor_once() == 5
        assert await svc.anchor_once() == 0  # the head did not move
        log.append(event(6))
        log.flush()
        assert await svc.anchor_once() == 6
        log.append(event(7))
        log.flush()
        assert await svc.anchor_once() == 7

    asyncio.run(run())
    assert [p for p, _ in fake.host.proposed] == [0, 2, 0]
    assert [c.seq for _, c in fake.host.proposed] == [5, 6, 7]
    assert fake.host.proposed[-1][1].chain_hash.hex() == log.durable_head().hash
    a = svc.highest_anchor()
    assert a is not None and a.head_text == log.durable_head().text()


def test_a_node_leading_nothing_skips_the_interval(node: Node) -> None:
    fake = fake_node(filled(node, 3), {0: FakeReplica(is_leader=False)})
    assert asyncio.run(AuditService(fake).anchor_once()) == 0
    assert fake.host.proposed == []


def cut_and_roll_back_head(node: Node, log: AuditLog, keep: int) -> None:
    """Remove every entry after `keep` and roll HEAD back to match: the file checks alone
    cannot tell any more."""
    seg = sorted(node.dir.glob("audit-*.log"))[-1]
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(b"".join(lines[:keep]))
    h = chain_hash_at(node.dir, node.codec, node.keys, LOG_ID, keep)
    assert h is not None
    write_head(node.dir, node.codec, log._ad, ChainHead(keep, h))
    assert node.verify() == []  # the log, on its own, looks fine


def test_verify_catches_a_cut_log_with_its_head_rolled_back(node: Node) -> None:
    log = filled(node, 20)
    fake = fake_node(log)
    svc = AuditService(fake)
    assert asyncio.run(svc.anchor_once()) == 20
    ok = asyncio.run(svc.verify())
    assert ok.ok and ok.entries == 20 and ok.head == ok.anchored_head == log.durable_head().text()
    assert list(ok.problems) == []
    cut_and_roll_back_head(node, log, 12)
    reopened = node.log()  # the node restarts over the cut log: nothing at open tells
    assert reopened.durable_head().seq == 12
    fake.access = SimpleNamespace(audit=AuditWriter(reopened))
    rep = asyncio.run(svc.verify())
    assert not rep.ok and rep.entries == 12 and rep.head.startswith("12:")
    assert rep.anchored_head.startswith("20:")
    assert list(rep.problems) == [
        "the log ends at entry 12 but the anchored head records entry 20: truncated "
        "(the tail was removed)"]


def test_a_cut_log_that_grew_past_its_anchor_is_never_anchored_again(node: Node) -> None:
    """Otherwise the next, higher anchor would match the rewrite and replace the evidence."""
    log = filled(node, 20)
    fake = fake_node(log)
    assert asyncio.run(AuditService(fake).anchor_once()) == 20
    cut_and_roll_back_head(node, log, 12)
    regrown = node.log()
    for i in range(13, 31):
        regrown.append(event(i))
    regrown.flush()
    fake.access = SimpleNamespace(audit=AuditWriter(regrown))
    svc = AuditService(fake)  # a restarted process: it trusts nothing it did not check
    assert asyncio.run(svc.anchor_once()) == 0
    assert [c.seq for _, c in fake.host.proposed] == [20]
    assert asyncio.run(svc.anchor_once()) == 0  # halted for good
    rep = asyncio.run(svc.verify())
    assert not rep.ok and any("entry 20 differs from the anchored head" in p for p in rep.problems)


def test_verify_names_no_file_path(node: Node) -> None:
    """A HEAD that does not open is reported by its name, not the node's path."""
    log = filled(node, 5)
    svc = AuditService(fake_node(log))
    (node.dir / "HEAD").write_bytes(b"not sealed\n")
    rep = asyncio.run(svc.verify())
    assert not rep.ok and rep.problems
    assert not any(str(node.dir) in p or str(node.data_dir) in p for p in rep.problems), rep.problems


def test_a_restarted_node_with_an_intact_log_keeps_anchoring(node: Node, tmp_path: Path) -> None:
    log = filled(node, 20)
    fake = fake_node(log)
    assert asyncio.run(AuditService(fake).anchor_once()) == 20
    again = node.log()
    again.append(event(21))
    again.flush()
    fake.access = SimpleNamespace(audit=AuditWriter(again))
    assert asyncio.run(AuditService(fake).anchor_once()) == 21
    shutil.rmtree(tmp_path / "data" / "audit")  # sanity: the helper is not vacuous
    assert chain_hash_at(node.dir, node.codec, node.keys, LOG_ID, 5) is None
