"""Per-patient keys: round trips, binding, log wrapping, and erasure (crypto-shredding)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import plyvel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.crypto import IntegrityError, UnknownKeyError
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import generate_master_key
from node.crypto.keyring import Keyring, MasterRotation, open_keyring
from node.crypto.patient_keys import (
    LOG_WRAP_BYTES,
    LOG_WRAP_FORMAT,
    SEALED_OVERHEAD,
    PatientKeyCodec,
    compact_ranges,
    prefix_range,
)

MASTER = generate_master_key()
CODEC = PatientKeyCodec(MASTER)
aads = st.binary(max_size=48)
plaintexts = st.binary(max_size=2048)


@given(aad=aads, plaintext=plaintexts)
def test_round_trip(aad: bytes, plaintext: bytes) -> None:
    key_id, dek = CODEC.new_patient_key()
    sealed = CODEC.seal_for_patient(dek, key_id, aad, plaintext)
    assert len(sealed) == len(plaintext) + SEALED_OVERHEAD
    assert CODEC.open_for_patient(dek, key_id, aad, sealed) == plaintext


@given(aad=aads, other_aad=aads, plaintext=plaintexts, data=st.data())
def test_any_mismatch_or_alteration_fails(
    aad: bytes, other_aad: bytes, plaintext: bytes, data: st.DataObject
) -> None:
    key_id, dek = CODEC.new_patient_key()
    other_id, other_dek = CODEC.new_patient_key()
    sealed = CODEC.seal_for_patient(dek, key_id, aad, plaintext)
    if other_aad != aad:
        with pytest.raises(IntegrityError, match="authentication failed"):
            CODEC.open_for_patient(dek, key_id, other_aad, sealed)  # other purpose/place
    with pytest.raises(IntegrityError):
        CODEC.open_for_patient(dek, other_id, aad, sealed)  # labelled as another patient
    with pytest.raises(IntegrityError):
        CODEC.open_for_patient(other_dek, key_id, aad, sealed)  # another patient's key
    index = data.draw(st.integers(0, len(sealed) - 1))
    tampered = bytearray(sealed)
    tampered[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError):
        CODEC.open_for_patient(dek, key_id, aad, bytes(tampered))
    with pytest.raises(IntegrityError):
        CODEC.open_for_patient(dek, key_id, aad, sealed[: data.draw(st.integers(0, len(sealed) - 1))])


@given(st.data())
def test_log_wrap_round_trip_on_another_node_with_the_same_master(data: st.DataObject) -> None:
    key_id, dek = CODEC.new_patient_key()
    wrapped = CODEC.wrap_for_log(dek, key_id)
    assert len(wrapped) == LOG_WRAP_BYTES and wrapped[0] == LOG_WRAP_FORMAT
    assert dek not in wrapped
    replica = PatientKeyCodec(MASTER)  # another node: same cluster master
    assert replica.unwrap_from_log(key_id, wrapped) == dek
    other_id, _ = CODEC.new_patient_key()
    with pytest.raises(IntegrityError, match="authentication failed"):
        replica.unwrap_from_log(other_id, wrapped)
    index = data.draw(st.integers(1 + 8, len(wrapped) - 1))  # past the master id
    tampered = bytearray(wrapped)
    tampered[index] ^= 0x40
    with pytest.raises(IntegrityError):
        replica.unwrap_from_log(key_id, bytes(tampered))


def test_a_node_without_the_wrapping_master_says_which_it_lacks() -> None:
    key_id, dek = CODEC.new_patient_key()
    wrapped = CODEC.wrap_for_log(dek, key_id)
    with pytest.raises(UnknownKeyError, match=f"master key id {MASTER.key_id}"):
        PatientKeyCodec(generate_master_key()).unwrap_from_log(key_id, wrapped)


def test_patient_keys_survive_a_master_rotation_in_both_directions(
    data_dir: Path, key_file: Path, keyring: Keyring
) -> None:
    before = PatientKeyCodec.from_keyring(keyring)
    key_id, dek = before.new_patient_key()
    old_blob = before.wrap_for_log(dek, key_id)  # in a Raft entry written before rotation
    # Rolling rotation, phase 1: the new master staged on this node.
    new = MasterRotation(key_file, data_dir).stage()
    staged_only = PatientKeyCodec.from_keyring(open_keyring(data_dir, key_file))
    rotated_elsewhere = PatientKeyCodec(new).wrap_for_log(dek, key_id)  # from a rotated leader
    assert staged_only.unwrap_from_log(key_id, rotated_elsewhere) == dek
    # Phase 2: this node rotates too; entries from before still apply.
    MasterRotation(key_file, data_dir).run()
    after = PatientKeyCodec.from_keyring(open_keyring(data_dir, key_file))
    assert after.unwrap_from_log(key_id, old_blob) == dek
    assert after.wrap_for_log(dek, key_id)[1:9] == new.key_id_bytes


def test_bad_key_sizes_are_programming_errors() -> None:
    key_id, dek = CODEC.new_patient_key()
    with pytest.raises(ValueError):
        CODEC.seal_for_patient(dek[:16], key_id, b"", b"x")
    with pytest.raises(ValueError):
        CODEC.seal_for_patient(dek, key_id[:8], b"", b"x")


# ---- erasure: the node's steps on a real LevelDB, then an attacker with the master key


AAD = b"record/1"
PATIENT_KEYS = b"pk/"
RAFT_LOG = b"log/"
RECORDS = b"rec/"


def _attack(db_dir: Path, keyring: Keyring, key_id: bytes, record: bytes) -> bool:
    """Everything an attacker holding the master key can derive from what is left:
    every data key in the keyring, every LevelDB value opened, every 32-byte window
    of those values as a DEK guess, and every log-wrap blob unwrapped with the
    master. True if any guess opens the patient's record ciphertext."""
    envelope = EnvelopeCodec(keyring)
    patient = PatientKeyCodec.from_keyring(keyring)
    guesses = {keyring.master.key, *(dk.key for dk in keyring._state.keys.values())}
    db = plyvel.DB(str(db_dir))
    try:
        for key, sealed in db.iterator():
            plain = envelope.open(key, sealed)
            guesses.update(plain[i : i + 32] for i in range(len(plain) - 31))
            for i in range(len(plain) - LOG_WRAP_BYTES + 1):
                if plain[i] == LOG_WRAP_FORMAT:
                    with contextlib.suppress(IntegrityError):
                        guesses.add(patient.unwrap_from_log(key_id, plain[i : i + LOG_WRAP_BYTES]))
    finally:
        db.close()
    for guess in guesses:
        try:
            patient.open_for_patient(guess, key_id, AAD, record)
            return True
        except IntegrityError:
            continue
    return False


def _on_disk(db_dir: Path, sealed: bytes) -> bool:
    """Whether any file of the database still holds this sealed value. Looks for its
    last 32 bytes (ciphertext and tag): random, so snappy keeps them as one literal
    run, while the header and nonce prefix may be compressed against neighbours."""
    needle = sealed[-32:]
    return any(needle in p.read_bytes() for p in db_dir.iterdir() if p.is_file())


def test_after_erasure_the_master_key_and_keyring_cannot_open_the_patients_data(
    data_dir: Path, keyring: Keyring, codec: EnvelopeCodec
) -> None:
    db_dir = data_dir / "db"
    db = plyvel.DB(str(db_dir), create_if_missing=True)
    patient = PatientKeyCodec.from_keyring(keyring)
    key_id, dek = patient.new_patient_key()
    # The leader proposes the key (wrapped for the log); the replica applies it.
    log_key = RAFT_LOG + b"%08d" % 1
    log_value = b"create-patient-key:" + patient.wrap_for_log(dek, key_id)
    pk_key = PATIENT_KEYS + key_id
    record = patient.seal_for_patient(dek, key_id, AAD, b"diagnosis: something private")
    sealed = {
        log_key: codec.seal(log_key, log_value),
        pk_key: codec.seal(pk_key, patient.unwrap_from_log(key_id, log_value[19:])),
        RECORDS + b"1": codec.seal(RECORDS + b"1", record),
    }
    for k, v in sealed.items():
        db.put(k, v, sync=True)
    for _ in range(2, 50):  # other patients' traffic
        other_id, other_dek = patient.new_patient_key()
        k = PATIENT_KEYS + other_id
        db.put(k, codec.seal(k, other_dek))
    db.close()
    assert _attack(db_dir, keyring, key_id, record), "the attack must work before erasure"

    db = plyvel.DB(str(db_dir))
    db.delete(pk_key, sync=True)  # (a) erase the DEK ...
    db.close()
    assert _attack(db_dir, keyring, key_id, record), "the log entry still carries the DEK"

    db = plyvel.DB(str(db_dir))
    db.delete(log_key, sync=True)  # (b) ... and compact the log past the erase index
    db.delete(RECORDS + b"1", sync=True)
    assert _on_disk(db_dir, sealed[pk_key]) and _on_disk(db_dir, sealed[log_key])
    # (c) drop deleted values from SST and WAL files
    compact_ranges(db, [prefix_range(PATIENT_KEYS), prefix_range(RAFT_LOG), prefix_range(RECORDS)])
    db.close()
    assert not _on_disk(db_dir, sealed[pk_key]), "the sealed DEK is still in a LevelDB file"
    assert not _on_disk(db_dir, sealed[log_key]), "the sealed log entry is still in a file"
    assert not _attack(db_dir, keyring, key_id, record)


def test_prefix_range_bounds() -> None:
    assert prefix_range(b"pk/") == (b"pk/", b"pk0")
    assert prefix_range(b"a\xff") == (b"a\xff", b"b")
    with pytest.raises(ValueError):
        prefix_range(b"\xff\xff")
