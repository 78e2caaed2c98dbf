"""ReEncryptor: batched, resumable re-encryption after rotate_data, under live writes."""

from __future__ import annotations

import itertools
import os
import random
import threading
from pathlib import Path

import plyvel
import pytest

from consensus.leveldb_storage import GroupUpdate, LevelDBLogStore
from consensus.types import ConfState, Entry, HardState
from node.crypto import IntegrityError
from node.crypto.envelope import EnvelopeCodec, key_id_of
from node.crypto.keyring import Keyring, open_keyring
from node.crypto.reencrypt import Progress, ReEncryptionIncomplete, ReEncryptor

PREFIXES = [b"a/", b"b/"]
CURSOR = b"\x00meta/cursor"


def _fill(db: plyvel.DB, codec: EnvelopeCodec, n: int, prefix: bytes = b"a/") -> dict[bytes, bytes]:
    model = {}
    with db.write_batch() as wb:
        for i in range(n):
            key = (prefix if i % 3 else b"b/") + b"%06d" % i
            model[key] = os.urandom(random.randint(0, 300))
            wb.put(key, codec.seal(key, model[key]))
    return model


def _contents(db: plyvel.DB, codec: EnvelopeCodec) -> dict[bytes, bytes]:
    return {k: codec.open(k, v) for k, v in db.iterator() if k != CURSOR}


def _key_ids(db: plyvel.DB) -> set[int]:
    return {key_id_of(v) for k, v in db.iterator() if k != CURSOR}


def test_a_pass_reseals_everything_then_old_keys_retire(db: plyvel.DB, codec: EnvelopeCodec) -> None:
    model = _fill(db, codec, 1234)
    new_id = codec.keyring.rotate_data()
    reenc = ReEncryptor(db, codec, PREFIXES, CURSOR, batch_size=100)
    seen: list[Progress] = []
    final = reenc.run(on_progress=seen.append)
    assert final.finished and final.done == 1234 and final.resealed == 1234
    assert final.total_estimate == 1234 and final.target_key_id == new_id
    assert [p.done for p in seen[:3]] == [100, 200, 300]
    assert all(a.done <= b.done for a, b in itertools.pairwise(seen))
    assert _key_ids(db) == {new_id}
    assert _contents(db, codec) == model
    assert reenc.step() == final  # a finished pass does nothing more
    assert reenc.retire_old_keys() == [1]
    assert codec.keyring.data_key_ids == [new_id]
    assert _contents(db, codec) == model


def test_values_outside_the_prefixes_are_not_touched(db: plyvel.DB, codec: EnvelopeCodec) -> None:
    outside = codec.seal(b"z/1", b"elsewhere")
    db.put(b"z/1", outside)
    _fill(db, codec, 50)
    codec.keyring.rotate_data()
    ReEncryptor(db, codec, PREFIXES, CURSOR).run()
    assert db.get(b"z/1") == outside
    assert ReEncryptor(db, codec, PREFIXES, CURSOR).referenced_key_ids(include_cursor=False) == {2: 50}


def test_an_interrupted_run_resumes_where_it_stopped(
    data_dir: Path, key_file: Path, db: plyvel.DB, codec: EnvelopeCodec
) -> None:
    model = _fill(db, codec, 2000)
    codec.keyring.rotate_data()
    first = ReEncryptor(db, codec, PREFIXES, CURSOR, batch_size=300).run(max_steps=2)
    assert (first.done, first.finished) == (600, False)
    done_raw = {k: v for k, v in db.iterator() if k != CURSOR and key_id_of(v) == 2}
    assert len(done_raw) == 600
    db.close()  # the process dies here

    db2 = plyvel.DB(str(data_dir / "db"))
    try:
        codec2 = EnvelopeCodec(open_keyring(data_dir, key_file))
        again = ReEncryptor(db2, codec2, PREFIXES, CURSOR, batch_size=300)
        assert again.progress() == first
        assert again.step().done == 900  # continues, does not start over
        final = again.run()
        assert final.finished and final.done == 2000 and final.resealed == 2000
        for k, v in done_raw.items():
            assert db2.get(k) == v, "a value re-sealed before the crash was re-sealed again"
        assert _contents(db2, codec2) == model
    finally:
        db2.close()


class _CrashingCodec(EnvelopeCodec):
    """Dies (raises) at its n-th seal, as a process killed in the middle of a step."""

    def __init__(self, keyring: Keyring, crash_at: int) -> None:
        super().__init__(keyring)
        self.left = crash_at

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        self.left -= 1
        if self.left == 0:
            raise SystemExit("simulated crash")
        return super().seal(key, plaintext)


def test_a_crash_inside_a_step_writes_nothing_of_it(db: plyvel.DB, codec: EnvelopeCodec) -> None:
    model = _fill(db, codec, 500)
    codec.keyring.rotate_data()
    ReEncryptor(db, codec, PREFIXES, CURSOR, batch_size=100).run(max_steps=1)
    before = dict(db.iterator())
    crashing = _CrashingCodec(codec.keyring, crash_at=50)
    with pytest.raises(SystemExit):
        ReEncryptor(db, crashing, PREFIXES, CURSOR, batch_size=100).step()
    assert dict(db.iterator()) == before  # one WriteBatch: all of the step or none
    resumed = ReEncryptor(db, codec, PREFIXES, CURSOR, batch_size=100)
    assert resumed.progress() is not None and resumed.progress().done == 100  # type: ignore[union-attr]
    assert resumed.run().resealed == 500
    assert _contents(db, codec) == model


def test_a_second_rotation_mid_pass_restarts_toward_the_newest_key(
    db: plyvel.DB, codec: EnvelopeCodec
) -> None:
    model = _fill(db, codec, 700)
    codec.keyring.rotate_data()
    reenc = ReEncryptor(db, codec, PREFIXES, CURSOR, batch_size=100)
    reenc.run(max_steps=3)
    newest = codec.keyring.rotate_data()
    final = reenc.run()
    assert final.target_key_id == newest and final.done == 700
    assert _key_ids(db) == {newest}
    assert sorted(reenc.retire_old_keys()) == [1, 2]
    assert _contents(db, codec) == model


def test_a_late_write_under_an_old_key_blocks_retirement(db: plyvel.DB, codec: EnvelopeCodec) -> None:
    _fill(db, codec, 100)
    presealed = codec.seal(b"a/late", b"sealed before the rotation, written after the pass")
    codec.keyring.rotate_data()
    reenc = ReEncryptor(db, codec, PREFIXES, CURSOR)
    reenc.run()
    db.put(b"a/late", presealed)
    with pytest.raises(ReEncryptionIncomplete, match="key 1: 1"):
        reenc.retire_old_keys()
    assert codec.keyring.data_key_ids == [1, 2]  # nothing retired
    assert not reenc.progress().finished  # type: ignore[union-attr]
    reenc.run()
    assert reenc.retire_old_keys() == [1]
    assert codec.open(b"a/late", db.get(b"a/late")).startswith(b"sealed before")


def test_retiring_before_a_finished_pass_is_refused(db: plyvel.DB, codec: EnvelopeCodec) -> None:
    _fill(db, codec, 10)
    codec.keyring.rotate_data()
    with pytest.raises(ReEncryptionIncomplete, match="has not finished"):
        ReEncryptor(db, codec, PREFIXES, CURSOR).retire_old_keys()


def test_a_foreign_value_stops_the_pass_loudly_and_writes_nothing(
    db: plyvel.DB, codec: EnvelopeCodec
) -> None:
    _fill(db, codec, 10)
    db.put(b"a/zzz", b"not sealed at all, and long enough to look like a value")
    codec.keyring.rotate_data()
    before = dict(db.iterator())
    with pytest.raises(IntegrityError, match="format byte"):
        ReEncryptor(db, codec, PREFIXES, CURSOR).step()
    assert dict(db.iterator()) == before


def test_rotation_and_reencryption_under_a_live_write_load_lose_nothing(
    db: plyvel.DB, codec: EnvelopeCodec
) -> None:
    """A writer thread keeps updating and deleting keys through the codec while the
    main thread rotates twice and re-encrypts; afterwards every value equals the
    writer's last write and everything is under the newest key."""
    model = _fill(db, codec, 600)
    lock = threading.Lock()
    stop = threading.Event()
    rng = random.Random(7)
    writes = 0
    errors: list[BaseException] = []

    def writer() -> None:
        nonlocal writes
        try:
            while not stop.is_set() and writes < 200_000:
                batch = []
                for _ in range(5):
                    key = rng.choice(PREFIXES) + b"%06d" % rng.randrange(900)
                    value = os.urandom(rng.randint(0, 200)) if rng.random() < 0.9 else None
                    # Sealed before taking the lock: a seal can land after the pass.
                    batch.append((key, value, codec.seal(key, value) if value is not None else b""))
                with lock:
                    with db.write_batch() as wb:
                        for key, value, sealed in batch:
                            if value is None:
                                wb.delete(key)
                            else:
                                wb.put(key, sealed)
                    for key, value, _ in batch:
                        if value is None:
                            model.pop(key, None)
                        else:
                            model[key] = value
                    writes += len(batch)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reenc = ReEncryptor(db, codec, PREFIXES, CURSOR, batch_size=50, lock=lock)
        codec.keyring.rotate_data()
        reenc.run(max_steps=4)
        codec.keyring.rotate_data()
        for _attempt in range(20):
            reenc.run()
            try:
                retired = reenc.retire_old_keys()
                break
            except ReEncryptionIncomplete:
                continue
        else:
            pytest.fail("re-encryption never caught up with the writer")
        assert sorted(retired) == [1, 2]
        writes_during = writes
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert writes_during > 0, "the writer did not overlap the re-encryption"
    assert _contents(db, codec) == model
    assert _key_ids(db) == {3}


def test_the_raft_log_store_reads_back_after_rotation_and_retirement(
    data_dir: Path, key_file: Path, db: plyvel.DB, codec: EnvelopeCodec
) -> None:
    store = LevelDBLogStore(db, prefix=b"r", codec=codec)
    store.bootstrap(7, ConfState(voters=(1, 2, 3)))
    entries = [Entry(index=i, term=1 + i // 100, data=os.urandom(64)) for i in range(1, 301)]
    store.write([GroupUpdate(7, HardState(term=3, vote=1, commit=250), entries)])
    codec.keyring.rotate_data()
    reenc = ReEncryptor(db, codec, [b"r"], CURSOR, batch_size=64)
    reenc.run()
    assert reenc.retire_old_keys() == [1]
    fresh = LevelDBLogStore(db, prefix=b"r", codec=EnvelopeCodec(open_keyring(data_dir, key_file)))
    group = fresh.group(7)
    assert group.entries(1, 301) == entries
    assert group.hard_state() == HardState(term=3, vote=1, commit=250)
