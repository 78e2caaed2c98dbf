"""RecordStore on real LevelDB: keys, sealing, history, staging, scans, erasure, snapshots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

from node.limits import ValidationError
from node.record_store import (
    CorruptRecordError,
    Record,
    RecordStore,
    SnapshotFormatError,
    blake2b_key_hasher,
)
from tests.node_unit.conftest import HASH_KEY, TaggedXorCodec

MakeStore = Callable[..., RecordStore]
PATIENT = "Jane Q. Patient"
OTHER = "John Roe"


def write(
    store: RecordStore,
    p: str,
    r: str,
    version: int,
    value: bytes = b"",
    deleted: bool = False,
    retention: int = 16,
) -> None:
    stage = store.begin()
    store.write_version(
        stage, p, r, version, value or f"{r}@{version}".encode(), deleted, retention
    )
    store.commit(stage)


def raw_items(db: plyvel.DB) -> list[tuple[bytes, bytes]]:
    return list(db.iterator())


def test_get_history_and_at_version(make_store: MakeStore) -> None:
    s = make_store()
    assert s.get(PATIENT, "allergies") is None
    assert s.history(PATIENT, "allergies", 10) == []
    write(s, PATIENT, "allergies", 3, b"peanuts")
    write(s, PATIENT, "allergies", 8, deleted=True)
    write(s, PATIENT, "allergies", 12, b"penicillin")
    assert s.get(PATIENT, "allergies") == Record(PATIENT, "allergies", b"penicillin", 12)
    assert s.get(PATIENT, "allergies", at_version=2) is None  # before the first version
    assert s.get(PATIENT, "allergies", at_version=3) == Record(PATIENT, "allergies", b"peanuts", 3)
    assert s.get(PATIENT, "allergies", at_version=11) == Record(PATIENT, "allergies", b"", 8, True)
    assert s.get(PATIENT, "allergies", at_version=10**9).version == 12  # type: ignore[union-attr]
    assert [r.version for r in s.history(PATIENT, "allergies", 10)] == [12, 8, 3]
    assert [r.version for r in s.history(PATIENT, "allergies", 2)] == [12, 8]
    assert [r.version for r in s.history(PATIENT, "allergies", 10, before_version=12)] == [8, 3]
    assert [r.version for r in s.history(PATIENT, "allergies", 10, before_version=4)] == [3]
    assert s.history(PATIENT, "allergies", 10)[1].deleted
    assert s.get(OTHER, "allergies") is None  # same record id, another patient


def test_versions_must_increase(make_store: MakeStore) -> None:
    s = make_store()
    write(s, PATIENT, "r", 5)
    with pytest.raises(ValueError):
        write(s, PATIENT, "r", 5)


@pytest.mark.parametrize("retention", [1, 2, 5])
def test_retention_drops_oldest_versions_from_disk(
    db: plyvel.DB, make_store: MakeStore, retention: int
) -> None:
    s = make_store()
    for v in range(1, 11):
        write(s, PATIENT, "r", v, retention=retention)
    kept = list(range(10, 10 - retention, -1))
    assert [r.version for r in s.history(PATIENT, "r", 100)] == kept
    assert s.get(PATIENT, "r", at_version=10 - retention) is None  # aged out
    assert s.get(PATIENT, "r", at_version=11 - retention).version == 11 - retention  # type: ignore[union-attr]
    # Exactly one current key and retention-1 history keys remain on disk.
    history_keys = [k for k, _ in raw_items(db) if k[7:8] == b"h"]
    assert len(history_keys) == retention - 1
    assert len(raw_items(db)) == retention


def test_keys_and_values_on_disk_hold_no_plaintext(db: plyvel.DB, make_store: MakeStore) -> None:
    s = make_store()
    write(s, PATIENT, "hiv-status", 1, b"positive")
    write(s, PATIENT, "hiv-status", 2, b"positive-confirmed")
    stage = s.begin()
    s.put_session(stage, b"k" * 16, b"session blob")
    s.commit(stage)
    for key, value in raw_items(db):
        for secret in (PATIENT.encode(), b"hiv-status", b"positive", b"Jane", b"session blob"):
            assert secret not in key and secret not in value
        assert key.startswith(b"sm/" + (7).to_bytes(4, "big"))
        assert value.startswith(TaggedXorCodec.MARK)  # every value went through the codec


def test_key_layout_groups_a_patient_and_orders_versions(
    db: plyvel.DB, make_store: MakeStore
) -> None:
    s = make_store()
    for i, r in enumerate(["a", "b", "c"]):
        write(s, PATIENT, r, 10 + i)
        write(s, PATIENT, r, 20 + i)
    write(s, OTHER, "a", 30)
    keys = [k[len(b"sm/") :] for k, _ in raw_items(db)]
    current = [k for k in keys if k[4:5] == b"c"]
    assert all(len(k) == 4 + 1 + 32 for k in current)
    hashes = [k[5:21] for k in current]
    # One patient's records are adjacent: its patient hash forms one run.
    runs = [h for i, h in enumerate(hashes) if i == 0 or hashes[i - 1] != h]
    assert len(runs) == 2
    history = sorted(k for k in keys if k[4:5] == b"h")
    assert [
        int.from_bytes(k[-8:], "big") for k in history if k[5:37] == history[0][5:37]
    ] == sorted(int.from_bytes(k[-8:], "big") for k in history if k[5:37] == history[0][5:37])


def test_a_value_moved_to_another_key_fails_loudly(db: plyvel.DB, make_store: MakeStore) -> None:
    s = make_store()
    write(s, PATIENT, "a", 1, b"one")
    write(s, PATIENT, "b", 2, b"two")
    (ka, va), (kb, vb) = raw_items(db)
    db.put(ka, vb)
    db.put(kb, va)
    with pytest.raises(CorruptRecordError):
        s.get(PATIENT, "a")


def test_identity_codec_swap_is_caught_by_the_id_check(db: plyvel.DB) -> None:
    from consensus.storage import IdentityCodec

    s = RecordStore(db, 1, IdentityCodec(), blake2b_key_hasher(b"k" * 32))
    write(s, PATIENT, "a", 1)
    [(key_a, _)] = raw_items(db)
    write(s, PATIENT, "b", 2)
    [value_b] = [v for k, v in raw_items(db) if k != key_a]
    db.put(key_a, value_b)  # b's (unsealed) value now sits under a's key
    with pytest.raises(CorruptRecordError, match="does not match its key"):
        s.get(PATIENT, "a")
    assert s.get(PATIENT, "b") is not None


def test_hash_collision_is_detected_not_served(db: plyvel.DB) -> None:
    s = RecordStore(db, 1, TaggedXorCodec(), lambda data: b"\x00" * 16)
    write(s, PATIENT, "a", 1)
    with pytest.raises(CorruptRecordError):
        s.get(OTHER, "z")


def test_constructor_checks(db: plyvel.DB) -> None:
    with pytest.raises(ValueError):
        blake2b_key_hasher(b"short")
    with pytest.raises(ValueError):
        RecordStore(db, 1, TaggedXorCodec(), lambda d: b"x" * 8)
    with pytest.raises(ValueError):
        RecordStore(db, -1, TaggedXorCodec(), blake2b_key_hasher(b"k" * 32))


def test_stage_reads_see_staged_writes_and_disk_sees_nothing_until_commit(
    db: plyvel.DB, make_store: MakeStore
) -> None:
    s = make_store()
    write(s, PATIENT, "r", 1, b"committed")
    stage = s.begin()
    s.write_version(stage, PATIENT, "r", 2, b"staged", False, 16)
    s.write_version(stage, PATIENT, "r", 3, b"", True, 16)
    s.write_version(stage, PATIENT, "new", 3, b"n", False, 16)
    assert s.get(PATIENT, "r", stage=stage) == Record(PATIENT, "r", b"", 3, True)
    assert [r.version for r in s.history(PATIENT, "r", 10, stage=stage)] == [3, 2, 1]
    assert s.get(PATIENT, "r").value == b"committed"  # type: ignore[union-attr]
    assert s.get(PATIENT, "new") is None
    before = raw_items(db)
    s.commit(stage)
    assert raw_items(db) != before
    assert [r.version for r in s.history(PATIENT, "r", 10)] == [3, 2, 1]
    with pytest.raises(RuntimeError):
        s.commit(stage)  # a stage commits once


def test_discarded_stage_writes_nothing(db: plyvel.DB, make_store: MakeStore) -> None:
    s = make_store()
    stage = s.begin()
    s.write_version(stage, PATIENT, "r", 1, b"x", False, 16)
    stage.discard()
    assert raw_items(db) == []
    with pytest.raises(RuntimeError):
        s.commit(stage)


def test_scan_pages_cover_every_live_record_once(make_store: MakeStore) -> None:
    s = make_store()
    expected = set()
    for i in range(23):
        write(s, f"patient-{i % 5}", f"rec-{i}", 100 + i)
        expected.add((f"patient-{i % 5}", f"rec-{i}"))
    write(s, "patient-0", "rec-0", 200, deleted=True)  # tombstones are not scanned
    expected.discard(("patient-0", "rec-0"))
    seen: list[tuple[str, str]] = []
    token, done, pages = b"", False, 0
    while not done:
        page = s.scan(token, 4)
        assert len(page.records) <= 4
        seen += [(r.patient_id, r.record_id) for r in page.records]
        token, done = page.resume_token, page.done
        pages += 1
        assert pages < 20
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    records, _, done2 = s.scan(b"", 1000)  # unpacks as a tuple too
    assert done2 and len(records) == len(expected)


def test_scan_rejects_foreign_tokens(make_store: MakeStore) -> None:
    a, b = make_store(1), make_store(2)
    write(a, PATIENT, "r", 1)
    write(a, PATIENT, "q", 2)
    token = a.scan(b"", 1).resume_token
    with pytest.raises(ValidationError, match="another partition"):
        b.scan(token, 1)
    with pytest.raises(ValidationError, match="resume_token"):
        a.scan(b"garbage", 1)
    assert len(a.scan(token, 10).records) == 1


def test_read_snapshot_is_isolated_from_later_writes(make_store: MakeStore) -> None:
    s = make_store()
    write(s, PATIENT, "r", 1, b"old")
    with s.read_snapshot() as snap:
        write(s, PATIENT, "r", 2, b"new")
        write(s, PATIENT, "q", 3, b"other")
        assert snap.get(PATIENT, "r") == Record(PATIENT, "r", b"old", 1)
        assert [r.version for r in snap.history(PATIENT, "r", 5)] == [1]
        assert [r.record_id for r in snap.scan(b"", 10).records] == ["r"]
    assert s.get(PATIENT, "r").value == b"new"  # type: ignore[union-attr]


def test_erase_patient_removes_every_key_of_that_patient_only(
    db: plyvel.DB, make_store: MakeStore
) -> None:
    s = make_store()
    for v, r in enumerate(["a", "b", "c"], start=1):
        write(s, PATIENT, r, v)
        write(s, PATIENT, r, v + 10)
    write(s, OTHER, "a", 50)
    assert s.erase_patient(PATIENT) == 3
    assert all(s.get(PATIENT, r) is None for r in "abc")
    assert s.history(PATIENT, "a", 10) == []
    assert s.get(OTHER, "a").version == 50  # type: ignore[union-attr]
    assert len(raw_items(db)) == 1


def test_erase_inside_a_stage_sees_staged_records(db: plyvel.DB, make_store: MakeStore) -> None:
    s = make_store()
    write(s, PATIENT, "a", 1)
    stage = s.begin()
    s.write_version(stage, PATIENT, "b", 2, b"x", False, 16)
    s.write_version(stage, PATIENT, "a", 2, b"y", False, 16)
    assert s.erase_patient(PATIENT, stage) == 2
    assert s.get(PATIENT, "b", stage=stage) is None
    s.commit(stage)
    assert raw_items(db) == []


def test_partitions_are_isolated_and_delete_partition_is_scoped(
    db: plyvel.DB, make_store: MakeStore
) -> None:
    a, b = make_store(1), make_store(2)
    write(a, PATIENT, "r", 1, b"in-a")
    write(b, PATIENT, "r", 2, b"in-b")
    assert a.get(PATIENT, "r").value == b"in-a"  # type: ignore[union-attr]
    a.delete_partition()
    assert a.get(PATIENT, "r") is None
    assert b.get(PATIENT, "r").value == b"in-b"  # type: ignore[union-attr]


def populate(s: RecordStore) -> None:
    for i in range(12):
        for v in range(1, 1 + i % 4 + 1):
            write(s, f"p{i % 3}", f"r{i}", 10 * i + v, deleted=(v == 3), retention=3)
    stage = s.begin()
    s.put_session(stage, b"\x01" * 16, b"blob-1")
    s.put_session(stage, b"\x02" * 16, b"blob-2")
    from node.record_store import PartitionMeta

    s.put_meta(stage, PartitionMeta(200, 4, 12345))
    s.commit(stage)


def logical(s: RecordStore) -> tuple[object, ...]:
    recs = []
    for i in range(12):
        recs.append(s.history(f"p{i % 3}", f"r{i}", 100))
    return (s.meta(), sorted(s.sessions()), recs)


def test_snapshot_restore_round_trip_across_hash_keys_and_chunks(
    tmp_path: Path, make_store: MakeStore
) -> None:
    src = make_store(3)
    populate(src)
    data = src.snapshot_bytes()
    assert b"".join(src.snapshot_chunks(chunk_size=64)) == data
    other_db = plyvel.DB(str(tmp_path / "other"), create_if_missing=True)
    try:
        # Another node: its own database and its own key-hashing key.
        dst = RecordStore(
            other_db, 3, TaggedXorCodec(), blake2b_key_hasher(b"another node's key..............")
        )
        write(dst, "stale", "gone", 1)  # replaced by the restore
        chunks = [data[i : i + 50] for i in range(0, len(data), 50)]
        meta = dst.restore_chunks(chunks)
        assert meta.applied_index == 200
        assert logical(dst) == logical(src)
        assert dst.get("stale", "gone") is None
        with pytest.raises(SnapshotFormatError, match="another partition"):
            RecordStore(other_db, 4, TaggedXorCodec(), blake2b_key_hasher(b"k" * 32)).restore(data)
        # Same hash key: the snapshot of the restored store is byte-identical.
        same = RecordStore(
            other_db.prefixed_db(b"x"), 3, TaggedXorCodec(), blake2b_key_hasher(HASH_KEY)
        )
        same.restore(data)
        assert same.snapshot_bytes() == data
    finally:
        other_db.close()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[: len(d) // 2],
        lambda d: d[:-3],
        lambda d: b"\x09" + d[1:],
        lambda d: d + b"\x90",
        lambda d: d.replace(b"blob-1", b"blob-X")[:-1] + b"\x07",
    ],
)
def test_bad_snapshots_are_rejected_and_change_nothing(
    make_store: MakeStore, db: plyvel.DB, mangle: Callable[[bytes], bytes]
) -> None:
    src = make_store(6)
    populate(src)
    data = src.snapshot_bytes()
    dst = make_store(6)
    write(dst, "keep", "me", 9)
    before = raw_items(db)
    with pytest.raises(SnapshotFormatError):
        dst.restore(mangle(data))
    assert raw_items(db) == before


def test_check_session_hook_can_veto_a_restore(make_store: MakeStore) -> None:
    src = make_store(3)
    populate(src)

    def veto(cid: bytes, blob: bytes) -> None:
        raise ValueError("bad session")

    data = src.snapshot_bytes()
    with pytest.raises(SnapshotFormatError):
        src.restore(data, check_session=veto)
    assert src.snapshot_bytes() == data  # untouched
    src.restore(data, check_session=lambda cid, blob: None)
    assert src.snapshot_bytes() == data
