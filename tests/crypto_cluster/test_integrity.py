"""A flipped bit or a swapped block on disk answers DATA_LOSS naming the
partition, never wrong data; the node keeps serving its other partitions and
the cluster keeps serving the damaged one through its other replicas."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import plyvel
import pytest

from client import Client, DataLoss, DeadlineExceeded, Unavailable
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyring import open_keyring
from tests.cluster.harness import patients_per_partition
from tests.crypto_cluster.canaries import codec_key
from tests.crypto_cluster.helpers import node_get, running_cluster, wait_until

pytestmark = pytest.mark.cluster

NODE = 2  # the node whose disk is damaged


def _value(patient: str, record: str) -> bytes:
    return f"observation {record} of {patient}".encode()


def _current_keys(db: plyvel.DB, codec: EnvelopeCodec, partition: int) -> dict[bytes, bytes]:
    """Storage key -> plaintext of every current record of one partition."""
    prefix = b"s" + partition.to_bytes(4, "big") + b"c"
    return {k: codec.open(codec_key(k), v) for k, v in db.iterator(prefix=prefix)}


def _key_holding(records: dict[bytes, bytes], patient: str, record: str) -> bytes:
    return next(k for k, plain in records.items()
                if patient.encode() in plain and record.encode() in plain)


def _linearizable(kv: Client, patient: str, record: str, timeout: float = 30.0) -> bytes:
    """Read through the cluster, waiting out the election that follows a replica
    taking itself out of service (DATA_LOSS or UNAVAILABLE meanwhile, never data)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return kv.get(patient, record).value
        except (DataLoss, Unavailable, DeadlineExceeded):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def test_tampered_and_swapped_values_answer_data_loss_for_their_partition_only(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path / "cluster", extra=()) as cluster, Client(
        cluster.addresses, timeout=20
    ) as kv:
        by_part = patients_per_partition(kv, 1, "integrity")
        flipped_p, swapped_p, healthy_p = sorted(by_part)[:3]
        writes = {(by_part[p][0], r) for p in (flipped_p, swapped_p, healthy_p)
                  for r in ("obs-a", "obs-b")}
        last = max(kv.put(p, r, _value(p, r)) for p, r in sorted(writes))
        address = cluster.addresses[NODE - 1]
        wait_until(lambda: all(node_get(address, p, r, min_version=last)[0] == grpc.StatusCode.OK
                               for p, r in writes), 20, f"node {NODE} applied every write")
        done = cluster.run("kill-node", str(NODE))
        assert done.returncode == 0, done.stderr

        node_dir = cluster.data_dir / f"node-{NODE}"
        codec = EnvelopeCodec(open_keyring(node_dir, cluster.data_dir / "master.key"))
        db = plyvel.DB(str(node_dir / "db"))
        try:
            victim = by_part[flipped_p][0]
            recs = _current_keys(db, codec, flipped_p)
            key = _key_holding(recs, victim, "obs-a")
            sealed = bytearray(db.get(key))
            sealed[len(sealed) // 2] ^= 0x01  # one bit, inside the ciphertext
            db.put(key, bytes(sealed), sync=True)

            other = by_part[swapped_p][0]
            recs = _current_keys(db, codec, swapped_p)
            ka, kb = _key_holding(recs, other, "obs-a"), _key_holding(recs, other, "obs-b")
            va, vb = db.get(ka), db.get(kb)
            db.put(ka, vb, sync=True)  # two intact ciphertexts, each under the other's key
            db.put(kb, va, sync=True)
        finally:
            db.close()

        done = cluster.run("restart-node", str(NODE), timeout=60)
        assert done.returncode == 0, done.stderr

        for patient, record, partition in (
            (victim, "obs-a", flipped_p), (other, "obs-a", swapped_p), (other, "obs-b", swapped_p),
        ):
            code, details, value = node_get(address, patient, record)
            assert code == grpc.StatusCode.DATA_LOSS, (partition, code, details)
            assert f"partition {partition} " in details and f"node {NODE}" in details
            assert patient not in details and record not in details and value == b""
        # The damaged node still serves its other partitions, from its own state.
        healthy = by_part[healthy_p][0]
        for record in ("obs-a", "obs-b"):
            assert node_get(address, healthy, record) == (
                grpc.StatusCode.OK, "", _value(healthy, record))
        # The cluster still serves the damaged partitions, linearizably, with the right data.
        for patient, record in ((victim, "obs-a"), (victim, "obs-b"), (other, "obs-a"),
                                (other, "obs-b")):
            assert _linearizable(kv, patient, record) == _value(patient, record)
        # And still accepts writes to them.
        version = kv.put(victim, "obs-a", b"after the damage")
        assert version > last and kv.get(victim, "obs-a").value == b"after the damage"
