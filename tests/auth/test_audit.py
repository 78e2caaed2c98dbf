"""The audit log: round trip, recovery, and tamper detection that names where."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.auth.audit import (
    AUDIT_DIR,
    AuditError,
    AuditEvent,
    AuditKeys,
    AuditLog,
    AuditWriter,
    ChainHead,
    read_entries,
    read_head,
    verify,
)
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import create_key_file
from node.crypto.keyring import Keyring, open_keyring

ROOT = Path(__file__).resolve().parents[2]
CANARY_PATIENT = "CANARY-PATIENT-7f3a9c"
CANARY_RECORD = "CANARY-RECORD-allergies-42"
LOG_ID = "node-1"


class Node:
    """A data dir with a keyring, as a node has: the audit log's keys come from it."""

    def __init__(self, root: Path) -> None:
        self.key_file = root / "master.key"
        self.data_dir = root / "data"
        create_key_file(self.key_file)
        self.keyring: Keyring = open_keyring(self.data_dir, self.key_file, create=True)
        self.codec = EnvelopeCodec(self.keyring)
        self.keys = AuditKeys.from_keyring(self.keyring)
        self.dir = self.data_dir / AUDIT_DIR

    def log(self, **kw: object) -> AuditLog:
        return AuditLog(self.dir, self.codec, self.keys, log_id=LOG_ID, node_id=1, **kw)  # type: ignore[arg-type]

    def verify(self, expect: ChainHead | None = None) -> list[str]:
        return verify(self.dir, self.codec, self.keys, LOG_ID, expect).problems


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def event(i: int, **kw: object) -> AuditEvent:
    base: dict[str, object] = dict(
        method="/medkv.v1.KV/Get", outcome="OK", subject=f"user-{i % 3}", roles=["clinician"],
        clinics=["north"], permission="record.read", partition=i % 16,
        patient_id=CANARY_PATIENT if i % 2 else f"patient-{i}", record_ids=[CANARY_RECORD],
        request_id=f"r{i}", peer="ipv4:127.0.0.1:5555", time=1_700_000_000.0 + i,
    )
    base.update(kw)
    return AuditEvent(**base)  # type: ignore[arg-type]


def write(node: Node, n: int, batch: int = 4, **kw: object) -> AuditLog:
    log = node.log(**kw)
    for i in range(1, n + 1):
        log.append(event(i))
        if i % batch == 0:
            log.flush()
    log.flush()
    return log


def lines(node: Node) -> tuple[Path, list[bytes]]:
    segs = sorted(node.dir.glob("audit-*.log"))
    assert len(segs) == 1
    return segs[0], segs[0].read_bytes().splitlines(keepends=True)


def test_round_trip_and_reopen(node: Node) -> None:
    log = write(node, 10)
    head = log.durable_head()
    assert head.seq == 10
    entries = [e for _, e in read_entries(node.dir, node.codec, LOG_ID)]
    assert [e["seq"] for e in entries if e] == list(range(1, 11))
    first = entries[0]
    assert first is not None and first["subject"] == "user-1" and first["outcome"] == "OK"
    assert first["patient"] == node.keys.patient_hash(CANARY_PATIENT)
    assert node.verify() == []
    # Reopening continues the chain where it ended.
    again = node.log()
    assert again.head() == head
    again.append(event(11))
    again.flush()
    assert node.verify() == []
    assert verify(node.dir, node.codec, node.keys, LOG_ID).head.seq == 11  # type: ignore[union-attr]


def test_files_hold_no_plaintext_patient_data(node: Node) -> None:
    """Canary scan: neither the ids nor anything else of an entry is readable on disk."""
    log = write(node, 20)
    log.append(event(21, break_glass=True, break_glass_reason="unconscious in ER",
                     outcome="PERMISSION_DENIED", reason="permission record.read denied"))
    log.flush()
    for p in node.dir.iterdir():
        data = p.read_bytes()
        for canary in (CANARY_PATIENT, CANARY_RECORD, "user-1", "clinician", "north", "KV/Get"):
            assert canary.encode() not in data, (p.name, canary)
            assert base64.b64encode(canary.encode())[:12] not in data
        if p.name != "LOG_ID":
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # And decrypted entries hold the patient and record only as keyed hashes.
    for _, e in read_entries(node.dir, node.codec, LOG_ID):
        assert e is not None
        text = json.dumps(e)
        assert CANARY_PATIENT not in text and CANARY_RECORD not in text


def test_patient_hashes_are_the_same_on_every_node_of_a_cluster(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    create_key_file(key_file)
    a = AuditKeys.from_keyring(open_keyring(tmp_path / "a", key_file, create=True))
    b = AuditKeys.from_keyring(open_keyring(tmp_path / "b", key_file, create=True))
    assert a.patient_hash("p1") == b.patient_hash("p1") != a.patient_hash("p2")
    other = tmp_path / "other.key"
    create_key_file(other)
    c = AuditKeys.from_keyring(open_keyring(tmp_path / "c", other, create=True))
    assert c.patient_hash("p1") != a.patient_hash("p1")


def test_an_edited_line_is_named(node: Node) -> None:
    write(node, 8)
    seg, ls = lines(node)
    raw = bytearray(base64.b64decode(ls[4]))
    raw[30] ^= 0x01
    ls[4] = base64.b64encode(bytes(raw)) + b"\n"
    seg.write_bytes(b"".join(ls))
    problems = node.verify()
    assert any("line 5: entry does not authenticate" in p for p in problems), problems
    with pytest.raises(AuditError, match="does not authenticate"):
        # The last line is checked at open; an edit elsewhere is found by verify.
        ls[-1] = ls[-1][:-5] + b"AAAA\n"
        seg.write_bytes(b"".join(ls))
        node.log()


def test_a_deleted_line_is_named(node: Node) -> None:
    write(node, 8)
    seg, ls = lines(node)
    del ls[3]
    seg.write_bytes(b"".join(ls))
    problems = node.verify()
    assert problems == [f"{seg.name} line 4: entries 4..4 are missing before entry 5: deleted"]


def test_a_reordered_pair_is_named(node: Node) -> None:
    write(node, 8)
    seg, ls = lines(node)
    ls[2], ls[3] = ls[3], ls[2]
    seg.write_bytes(b"".join(ls))
    problems = node.verify()
    assert f"{seg.name} line 3: entry 4 comes before entry 3: reordered" in problems
    assert f"{seg.name} line 4: entry 3 comes after entry 4: reordered" in problems


def test_a_truncated_tail_is_detected_by_head_and_by_the_anchor(node: Node) -> None:
    log = write(node, 8)
    anchor = log.durable_head()
    seg, ls = lines(node)
    seg.write_bytes(b"".join(ls[:6]))
    assert node.verify() == [
        "the log ends at entry 6 but HEAD records entry 8: truncated (the tail was removed)"]
    with pytest.raises(AuditError, match="truncated or rewritten"):
        node.log()  # a node does not quietly continue a cut log
    # Cut HEAD too (rolled back to an older copy): the anchored head still tells.
    (node.dir / "HEAD").unlink()
    assert any("HEAD" in p and "missing" in p for p in node.verify())
    problems = node.verify(expect=anchor)
    assert ("the log ends at entry 6 but the anchored head records entry 8: truncated "
            "(the tail was removed)") in problems


def test_an_entry_rewritten_by_someone_holding_the_keys_breaks_the_chain(node: Node) -> None:
    """Re-sealing an edited entry passes authentication; the chain does not."""
    write(node, 6)
    seg, ls = lines(node)
    ad = b"medkv/v1 audit " + LOG_ID.encode()
    entry = msgpack.unpackb(node.codec.open(ad, base64.b64decode(ls[2])))
    entry["outcome"] = "PERMISSION_DENIED"  # hide an access that succeeded
    plain = msgpack.packb(entry)
    ls[2] = base64.b64encode(node.codec.seal(ad, plain)) + b"\n"
    seg.write_bytes(b"".join(ls))
    problems = node.verify()
    assert problems == [f"{seg.name} line 4: entry 4 does not chain to entry 3 "
                        f"({seg.name} line 3): entry 3 or 4 was rewritten"]


def test_a_torn_last_line_is_a_warning_and_is_cut_at_open(node: Node) -> None:
    write(node, 5)
    seg, ls = lines(node)
    seg.write_bytes(b"".join(ls) + ls[0][:40])  # a crash in the middle of the next batch
    rep = verify(node.dir, node.codec, node.keys, LOG_ID)
    assert rep.ok and rep.warnings and "incomplete last line" in rep.warnings[0]
    log = node.log()
    assert log.head().seq == 5
    log.append(event(6))
    log.flush()
    assert node.verify() == []


def test_segments_rotate_and_verify_across_them(node: Node) -> None:
    write(node, 30, batch=3, segment_bytes=2000)
    segs = sorted(node.dir.glob("audit-*.log"))
    assert len(segs) > 3
    assert node.verify() == []
    segs[1].unlink()  # a whole middle segment removed
    problems = node.verify()
    assert len(problems) == 1 and "are missing before entry" in problems[0]
    segs[0].unlink()
    assert any("the log starts at entry" in p for p in node.verify())


def test_another_nodes_log_is_refused(node: Node) -> None:
    write(node, 2)
    with pytest.raises(AuditError, match="names log 'node-1', not 'node-2'"):
        AuditLog(node.dir, node.codec, node.keys, log_id="node-2")


def test_key_ids_in_use_follow_data_key_rotation(node: Node) -> None:
    log = write(node, 3)
    assert log.key_ids_in_use() == {1}
    node.keyring.rotate_data()
    log.append(event(4))
    log.flush()
    assert log.key_ids_in_use() == {1, 2}
    assert node.verify() == []


@settings(deadline=None)
@given(n=st.integers(min_value=2, max_value=25), data=st.data())
def test_any_tampering_is_detected(tmp_path_factory: pytest.TempPathFactory, n: int,
                                   data: st.DataObject) -> None:
    node = Node(tmp_path_factory.mktemp("audit"))
    log = write(node, n, batch=data.draw(st.integers(min_value=1, max_value=7)))
    anchor = log.durable_head()
    seg, ls = lines(node)
    kind = data.draw(st.sampled_from(["edit", "delete", "swap", "truncate", "duplicate"]))
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    if kind == "edit":
        raw = bytearray(base64.b64decode(ls[i]))
        raw[data.draw(st.integers(min_value=0, max_value=len(raw) - 1))] ^= 1 << data.draw(
            st.integers(min_value=0, max_value=7))
        ls[i] = base64.b64encode(bytes(raw)) + b"\n"
    elif kind == "delete":
        del ls[i]
    elif kind == "swap":
        j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i))
        ls[i], ls[j] = ls[j], ls[i]
    elif kind == "truncate":
        ls = ls[:i]
        if data.draw(st.booleans()):
            (node.dir / "HEAD").unlink()
    else:
        ls.insert(i, ls[i])
    seg.write_bytes(b"".join(ls))
    assert node.verify(expect=anchor), kind


def test_writer_group_commit_and_durable_wait(node: Node) -> None:
    log = node.log()

    async def run() -> None:
        w = AuditWriter(log)
        w.start()
        seqs = [w.record(event(i)) for i in range(1, 201)]
        await asyncio.gather(*(w.durable(s) for s in seqs[::20]))
        assert log.durable_head().seq >= 181
        await w.close()

    asyncio.run(run())
    assert log.durable_head().seq == 200
    assert node.verify() == []


def test_writer_failure_is_reported(node: Node) -> None:
    log = node.log()
    failures: list[BaseException] = []

    async def run() -> None:
        w = AuditWriter(log, on_failure=failures.append)
        w.start()
        # The segment the next flush creates is taken by a directory: the write fails.
        (node.dir / "audit-000000000001.log").mkdir()
        seq = w.record(event(1))
        with pytest.raises(AuditError, match="audit log write failed"):
            await asyncio.wait_for(w.durable(seq), 10)

    asyncio.run(run())
    assert failures and isinstance(failures[0], OSError)


def run_audit(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "audit", args[0], "--data-dir", str(node.data_dir),
         "--key-file", str(node.key_file), *args[1:]],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_cli_verify_show_head(node: Node) -> None:
    log = write(node, 6)
    r = run_audit(node, "head")
    assert r.returncode == 0 and r.stdout.strip() == log.durable_head().text()
    r = run_audit(node, "verify")
    assert r.returncode == 0 and r.stdout.startswith("ok: 6 entries"), r.stdout + r.stderr
    r = run_audit(node, "show", "--patient", CANARY_PATIENT, "--json")
    assert r.returncode == 0, r.stderr
    shown = [json.loads(x) for x in r.stdout.splitlines()]
    assert [e["seq"] for e in shown] == [1, 3, 5]
    r = run_audit(node, "show", "--subject", "user-2")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    assert CANARY_PATIENT not in r.stdout
    seg, ls = lines(node)
    seg.write_bytes(b"".join(ls[:2] + ls[3:]))
    r = run_audit(node, "verify", "--expect-head", log.durable_head().text())
    assert r.returncode == 1
    assert "TAMPERED" in r.stdout and "entries 3..3 are missing" in r.stdout


AD = b"medkv/v1 audit " + LOG_ID.encode()  # what the log binds HEAD to


def test_head_follows_the_files_within_its_interval(node: Node) -> None:
    """HEAD costs two fsyncs, so a busy node rewrites it at most every head_interval;
    a forced flush (a clean close) always brings it up to date."""
    log = node.log(head_interval=3600)
    log.append(event(1))
    log.flush()  # the first flush always writes HEAD
    assert read_head(node.dir, node.codec, AD).seq == 1  # type: ignore[union-attr]
    log.append(event(2))
    log.flush()
    assert log.durable_head().seq == 2 and log.head_stale
    assert read_head(node.dir, node.codec, AD).seq == 1  # type: ignore[union-attr]
    assert node.verify() == []  # HEAD behind the files is not a truncation
    log.flush(force_head=True)
    assert read_head(node.dir, node.codec, AD).seq == 2  # type: ignore[union-attr]
    assert not log.head_stale


def test_the_writer_brings_a_stale_head_up_to_date_when_traffic_stops(node: Node) -> None:
    async def run() -> None:
        log = node.log(head_interval=0.2)
        writer = AuditWriter(log, max_delay=0.001)
        writer.start()
        await writer.durable(writer.record(event(1)))
        await writer.durable(writer.record(event(2)))  # within the interval: HEAD may lag
        deadline = asyncio.get_running_loop().time() + 5
        while log.head_stale and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert read_head(node.dir, node.codec, AD).seq == 2  # type: ignore[union-attr]
        writer.record(event(3))
        await writer.close()  # a clean close leaves HEAD at the last entry
        assert read_head(node.dir, node.codec, AD).seq == 3  # type: ignore[union-attr]

    asyncio.run(run())


def test_a_data_key_rotation_reseals_the_log_so_the_old_key_can_go(node: Node) -> None:
    log = node.log(segment_bytes=600)  # several segments
    for i in range(12):
        log.append(event(i))
        log.flush()
    head = log.durable_head()
    assert log.key_ids_in_use() == {1}
    node.keyring.rotate_data()
    assert log.reseal() == 12
    assert log.key_ids_in_use() == {2}
    assert node.keyring.retire_data_keys([1]) == [1]
    assert node.verify(head) == []  # same chain, same head: only the envelopes changed
    log.append(event(99))
    log.flush()
    reopened = node.log()  # opens cleanly under the new key alone
    assert reopened.durable_head().seq == 13
    entries = [e for _, e in read_entries(node.dir, node.codec, LOG_ID)]
    assert None not in entries and [e["seq"] for e in entries][-2:] == [12, 13]  # type: ignore[index]
