"""A slow scan must not keep an erased patient on disk, and must be resumable.

A paged Scan reads from one LevelDB snapshot, which pins every version that
was current when it was taken: while it is open, the compaction of an
erasure's purge keeps the erased values in the files. The purger gives such
scans a short grace period, then releases their snapshot: the scan ends with
ABORTED, naming the resume token, and a new Scan from the last token reads
the rest from a fresh snapshot (no record lost, none twice). The client
library does that resume by itself.

One real node process (one replica per partition), one partition.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from client import Client
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import raw_channel, start_cluster, stop_cluster

pytestmark = pytest.mark.cluster

FILLER = 160
VALUE = 48 * 1024  # large pages: the stream's flow-control window fills and the scan stays open


def test_a_scan_holding_erased_versions_is_aborted_and_resumes(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "c", nodes=1, partitions=1, extra=("--replicas", "1"))
    try:
        with Client(cluster.addresses, timeout=30) as kv:
            for i in range(FILLER):
                kv.put(f"filler-{i:04d}", "obs", bytes([i % 251]) * VALUE)
            kv.put("to-erase", "obs", b"E" * VALUE)
            stub = kv_pb2_grpc.KVStub(raw_channel(cluster.addresses[0]))
            req = kv_pb2.ScanRequest(
                partition=0, page_size=2, read=common_pb2.ReadOptions(consistency=common_pb2.FOLLOWER)
            )
            call = stub.Scan(req, timeout=120)
            seen: list[str] = []
            first = next(call)
            seen += [r.patient_id for r in first.records]
            token = first.resume_token
            assert not first.done

            kv.erase_patient("to-erase")  # its purge must end the scan's snapshot

            log_file = cluster.data_dir / "node-1" / "node.log"
            started = time.monotonic()
            code = None
            message = ""
            try:
                for page in call:
                    # A slow reader until the purge has ended the snapshot (bounded),
                    # so the server is left holding it however slow the purge is.
                    if (time.monotonic() - started < 60.0
                            and "interrupted 1 read snapshot" not in log_file.read_text()):
                        time.sleep(0.5)
                    seen += [r.patient_id for r in page.records]
                    token = page.resume_token or token
                    assert not page.done, "the scan finished before the purge released it"
            except grpc.RpcError as e:
                code, message = e.code(), e.details() or ""
            assert code == grpc.StatusCode.ABORTED, (code, message)
            assert "resume_token" in message and "to-erase" not in message

            # Resume where the last page ended: the rest, from a fresh snapshot.
            rest = stub.Scan(
                kv_pb2.ScanRequest(partition=0, page_size=64, resume_token=token), timeout=120
            )
            resumed: list[str] = []
            for page in rest:
                resumed += [r.patient_id for r in page.records]
            assert "to-erase" not in resumed  # the fresh snapshot is after the erasure
            fillers = [p for p in seen + resumed if p.startswith("filler-")]
            assert sorted(fillers) == [f"filler-{i:04d}" for i in range(FILLER)]  # once each

            # The client library resumes an aborted scan by itself.
            records = list(kv.scan(partitions=[0], page_size=8))
            assert sorted(r.patient_id for r in records) == [
                f"filler-{i:04d}" for i in range(FILLER)
            ]
        deadline = time.monotonic() + 60
        while "partition 0: purged log and files through index" not in log_file.read_text():
            assert time.monotonic() < deadline, "the purge did not complete"
            time.sleep(0.2)
        assert "interrupted 1 read snapshot" in log_file.read_text()
    finally:
        stop_cluster(cluster)
