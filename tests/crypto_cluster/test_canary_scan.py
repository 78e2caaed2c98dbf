"""No patient data on disk, and none left behind by an erasure, on a real 3-node cluster.

(a) Records holding canaries (names, record numbers, free-text notes, the
    patient ids) are written, overwritten (history), deleted and snapshotted;
    the cluster is stopped and every file of every data directory, node logs
    included, is scanned for every canary as UTF-8, UTF-16, base64 and hex:
    no hit. Controls: the same scanner finds a canary planted in a file, and a
    scan that decrypts with the keys finds every canary, so the data is there
    and the raw scan could have seen it.
(b) After erase-patient has been applied and purged on every replica, the
    stopped cluster is opened with the master key and every node's keyring:
    every value decrypts, and no plaintext (nor anything msgpack decodes it
    into) holds the erased patient's canaries, while the same scan finds a
    kept patient's canaries on every node. A second scan decrypts every
    envelope left anywhere in the files, deleted or not (keystream_scan),
    with the same outcome.
"""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest

from client import Client, NotFound, PermissionDenied
from tests.crypto_cluster.canaries import (
    Patient,
    decrypting_scan,
    forms,
    keystream_scan,
    scan_files,
)
from tests.crypto_cluster.helpers import node_get, purged_through, running_cluster, wait_until

pytestmark = pytest.mark.cluster

NODES = (1, 2, 3)
FILLER = 240  # spread over 8 partitions with snapshot_every=25: every partition snapshots


def _write_patients(kv: Client, patients: list[Patient]) -> int:
    """Several versions per record (history), a tombstone, then filler writes so
    every partition takes snapshots that include the canary records."""
    last = 0
    for p in patients:
        for n in range(6):
            last = max(last, kv.put(p.patient_id, f"obs-{n % 3}", p.record(n)))
        last = max(last, kv.delete(p.patient_id, "obs-2"))
    for i in range(FILLER):
        last = max(last, kv.put(f"filler-{i}", "obs", b"x" * 64))
    return last


def _all_applied(addresses: list[str], patients: list[Patient]) -> bool:
    """Every node serves every patient's latest record from its own state."""
    return all(
        node_get(a, p.patient_id, "obs-0")[0] == grpc.StatusCode.OK
        and node_get(a, p.patient_id, "obs-0")[2] == p.record(3)
        for a in addresses for p in patients
    )


def test_no_canary_in_any_file_of_a_stopped_cluster(tmp_path: Path) -> None:
    patients = [Patient.new() for _ in range(4)]
    canaries = [c for p in patients for c in p.canaries]
    with running_cluster(tmp_path / "cluster") as cluster, Client(
        cluster.addresses, timeout=20
    ) as kv:
        _write_patients(kv, patients)
        wait_until(lambda: _all_applied(cluster.addresses, patients), 30, "every replica applied")
    hits, files = scan_files(cluster.data_dir, canaries)
    assert files >= 3 * 5, f"only {files} files scanned"
    assert hits == [], f"patient data found in files: {hits[:5]}"
    for node in NODES:
        assert "INFO" in (cluster.data_dir / f"node-{node}" / "node.log").read_text()

    # Control 1: the data IS on disk, sealed; decrypting with the keys finds all of it,
    # in records and in stored snapshots.
    key_file = cluster.data_dir / "master.key"
    for node in NODES:
        scan = decrypting_scan(cluster.data_dir / f"node-{node}", key_file, canaries)
        assert scan.undecryptable == 0 and scan.values > 100
        assert scan.snapshots > 0, "no stored snapshot: the test did not cover snapshots"
        assert {h.canary for h in scan.hits} == set(canaries)
        raw_hits, opened = keystream_scan(cluster.data_dir / f"node-{node}", key_file, canaries)
        assert opened > 100 and {h.canary for h in raw_hits} == set(canaries)

    # Control 2: the raw scanner finds canaries planted in plaintext, in every encoding.
    planted = cluster.data_dir / "node-2" / "db" / "planted.bin"
    one, two, three = patients[0].name, patients[1].mrn, patients[2].note
    planted.write_bytes(
        b"\x00junk" + one.encode("utf-16-le") + b"\x01" * 7
        + base64.b64encode(b"ab" + two.encode()) + b"\n" + three.encode().hex().upper().encode()
    )
    hits, _ = scan_files(cluster.data_dir, canaries)
    assert {h.where for h in hits} == {str(planted)}
    found = {(h.canary, h.form) for h in hits}
    assert (one, "utf-16-le") in found and (two, "b64+2") in found and (three, "HEX") in found
    assert {h.canary for h in hits} == {one, two, three}
    assert all(forms(c)["utf-8"] not in planted.read_bytes() for c in (one, two, three))


def test_erased_patient_cannot_be_recovered_even_with_the_keys(tmp_path: Path) -> None:
    erased, kept = Patient.new(), Patient.new()
    with running_cluster(tmp_path / "cluster") as cluster, Client(
        cluster.addresses, timeout=20
    ) as kv:
        _write_patients(kv, [erased, kept])
        wait_until(lambda: _all_applied(cluster.addresses, [erased, kept]), 30,
                   "every replica applied the writes")
        partition = kv.routing_table().partition_of(erased.patient_id)
        version = kv.erase_patient(erased.patient_id)
        assert version > 0
        # Erasure removes the patient's clinic registration too: a clinician's
        # read is refused like any unregistered patient's; a replica read (the
        # ops token is also an analyst's) finds nothing.
        with pytest.raises(PermissionDenied):
            kv.get(erased.patient_id, "obs-0")
        with pytest.raises(NotFound):
            kv.get(erased.patient_id, "obs-0", consistency="follower", min_version=version)
        assert kv.get(kept.patient_id, "obs-0").value == kept.record(3)
        for address in cluster.addresses:  # each replica applied the erasure...
            code, _, _ = node_get(address, erased.patient_id, "obs-0", min_version=version)
            assert code == grpc.StatusCode.NOT_FOUND, (address, code)
        wait_until(  # ...and purged its log, snapshot and files through it
            lambda: all(purged_through(cluster, n, partition) >= version for n in NODES),
            30, "every replica purged the erased partition",
        )
    hits, _ = scan_files(cluster.data_dir, erased.canaries + kept.canaries)
    assert hits == []
    key_file = cluster.data_dir / "master.key"
    for node in NODES:
        scan = decrypting_scan(
            cluster.data_dir / f"node-{node}", key_file, erased.canaries + kept.canaries
        )
        assert scan.values > 100 and scan.undecryptable == 0
        leaked = [h for h in scan.hits if h.canary in erased.canaries]
        assert leaked == [], f"node {node}: erased patient's data recovered: {leaked[:5]}"
        assert {h.canary for h in scan.hits} == set(kept.canaries), f"node {node}"
        # Deleted values not yet compacted away would still be in the files:
        # decrypt every envelope left anywhere in them, live or not.
        raw_hits, opened = keystream_scan(
            cluster.data_dir / f"node-{node}", key_file, erased.canaries + kept.canaries
        )
        assert opened > 100
        leaked = [h for h in raw_hits if h.canary in erased.canaries]
        assert leaked == [], f"node {node}: erased bytes left in files: {leaked[:5]}"
        assert {h.canary for h in raw_hits} == set(kept.canaries), f"node {node}"
