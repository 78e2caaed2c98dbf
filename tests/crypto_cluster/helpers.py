"""Cluster plumbing for the encryption-at-rest tests: bounded waits, raw stubs
aimed at one node, and a cluster that is always stopped."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from client.tls import TLS_DIR_ENV
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc
from tests.cluster.harness import LocalCluster, raw_channel, start_cluster, stop_cluster

SNAPSHOTTING = ("--raft", "snapshot_every=25", "--raft", "keep_after_snapshot=5")


@contextlib.contextmanager
def running_cluster(data_dir: Path, extra: tuple[str, ...] = SNAPSHOTTING) -> Iterator[LocalCluster]:
    cluster = start_cluster(data_dir, nodes=3, extra=extra)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def node_get(
    address: str, patient_id: str, record_id: str, *, follower: bool = True, min_version: int = 0,
    timeout: float = 5.0,
) -> tuple[grpc.StatusCode, str, bytes]:
    """One Get sent to exactly this node (no client routing): (code, details, value)."""
    consistency = common_pb2.FOLLOWER if follower else common_pb2.LINEARIZABLE
    stub = _stub(address)
    req = kv_pb2.GetRequest(
        patient_id=patient_id, record_id=record_id,
        read=common_pb2.ReadOptions(consistency=consistency, min_version=min_version),
    )
    try:
        reply = stub.Get(req, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", b""
    return grpc.StatusCode.OK, "", bytes(reply.record.value)


_STUBS: dict[tuple[str, str | None], Any] = {}


def _stub(address: str) -> Any:
    """One channel per node address and cluster CA for the whole test session
    (reconnects by itself)."""
    key = (address, os.environ.get(TLS_DIR_ENV))
    stub = _STUBS.get(key)
    if stub is None:
        stub = _STUBS[key] = kv_pb2_grpc.KVStub(raw_channel(address))
    return stub


def purged_through(cluster: LocalCluster, node: int, partition: int) -> int:
    """The highest index node's log says it purged partition's data through (0: none)."""
    text = (cluster.data_dir / f"node-{node}" / "node.log").read_text(errors="replace")
    found = re.findall(rf"partition {partition}: purged log and files through index (\d+)", text)
    return max((int(i) for i in found), default=0)
