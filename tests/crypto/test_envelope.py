"""EnvelopeCodec: round trips, loud failures on any tampering, nonce uniqueness."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.storage import ValueCodec
from node.crypto import IntegrityError, UnknownKeyError
from node.crypto.envelope import (
    HEADER_BYTES,
    NONCE_BYTES,
    OVERHEAD,
    EnvelopeCodec,
    NonceSequence,
    PlaintextCodec,
    key_id_of,
)
from node.crypto.keyfile import generate_master_key
from node.crypto.keyring import Keyring

from .conftest import fresh_keyring

keys = st.binary(min_size=0, max_size=64)
plaintexts = st.binary(min_size=0, max_size=2048)


@pytest.fixture(scope="module")
def shared_codec(tmp_path_factory: pytest.TempPathFactory) -> EnvelopeCodec:
    return EnvelopeCodec(fresh_keyring(tmp_path_factory.mktemp("env"), generate_master_key()))


def _nonce(sealed: bytes) -> bytes:
    return sealed[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]


def test_envelope_codec_is_a_value_codec(codec: EnvelopeCodec) -> None:
    as_protocol: ValueCodec = codec  # checked by mypy
    assert as_protocol.open(b"k", as_protocol.seal(b"k", b"v")) == b"v"


@given(key=keys, plaintext=plaintexts)
def test_round_trip(shared_codec: EnvelopeCodec, key: bytes, plaintext: bytes) -> None:
    sealed = shared_codec.seal(key, plaintext)
    assert len(sealed) == len(plaintext) + OVERHEAD
    assert key_id_of(sealed) == shared_codec.keyring.active_key_id
    assert shared_codec.open(key, sealed) == plaintext
    if len(plaintext) >= 8:
        assert plaintext not in sealed


@given(key=keys, plaintext=plaintexts, data=st.data())
def test_any_altered_byte_fails_loudly(
    shared_codec: EnvelopeCodec, key: bytes, plaintext: bytes, data: st.DataObject
) -> None:
    sealed = shared_codec.seal(key, plaintext)
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(sealed)
    tampered[index] ^= flip
    with pytest.raises(IntegrityError) as exc:
        shared_codec.open(key, bytes(tampered))
    msg = str(exc.value)
    assert any(w in msg for w in ("authentication failed", "format byte", "data key id"))
    if len(plaintext) >= 4:
        assert repr(plaintext) not in msg and plaintext.hex() not in msg


@given(plaintext=plaintexts, data=st.data())
def test_truncated_value_fails(shared_codec: EnvelopeCodec, plaintext: bytes, data: st.DataObject) -> None:
    sealed = shared_codec.seal(b"rec/1", plaintext)
    cut = data.draw(st.integers(0, len(sealed) - 1), label="length")
    with pytest.raises(IntegrityError, match=r"truncated|authentication failed"):
        shared_codec.open(b"rec/1", sealed[:cut])


@given(a=keys, b=keys, plaintext=plaintexts)
def test_value_moved_to_another_storage_key_fails(
    shared_codec: EnvelopeCodec, a: bytes, b: bytes, plaintext: bytes
) -> None:
    if a == b:
        return
    sealed = shared_codec.seal(a, plaintext)
    with pytest.raises(IntegrityError, match=r"authentication failed for a value under data key id \d+"):
        shared_codec.open(b, sealed)


def test_two_values_swapped_between_keys_both_fail(codec: EnvelopeCodec) -> None:
    one, two = codec.seal(b"p/1", b"first record"), codec.seal(b"p/2", b"second record")
    for key, sealed in ((b"p/1", two), (b"p/2", one)):
        with pytest.raises(IntegrityError) as exc:
            codec.open(key, sealed)
        assert "record" not in str(exc.value) and "p/" not in str(exc.value)


def test_relabelled_key_id_fails(codec: EnvelopeCodec) -> None:
    old = codec.seal(b"k", b"value")
    codec.keyring.rotate_data()
    relabelled = bytearray(old)
    relabelled[1:5] = codec.keyring.active_key_id.to_bytes(4, "big")
    with pytest.raises(IntegrityError, match="authentication failed"):
        codec.open(b"k", bytes(relabelled))
    assert codec.open(b"k", old) == b"value"  # the genuine one still opens


def test_wrong_master_key_means_no_value_opens(tmp_path: Path, codec: EnvelopeCodec) -> None:
    sealed = codec.seal(b"k", b"secret")
    other = EnvelopeCodec(Keyring.create(tmp_path / "elsewhere", generate_master_key()))
    assert other.keyring.active_key_id == codec.keyring.active_key_id  # same id, other key
    with pytest.raises(IntegrityError, match="authentication failed for a value under data key id 1"):
        other.open(b"k", sealed)


def test_value_under_a_retired_key_names_the_key_id(codec: EnvelopeCodec) -> None:
    sealed = codec.seal(b"k", b"v")
    codec.keyring.rotate_data()
    codec.keyring.retire_data_keys([1])
    with pytest.raises(UnknownKeyError, match="data key id 1 is not in keyring"):
        codec.open(b"k", sealed)


def test_not_an_envelope(codec: EnvelopeCodec) -> None:
    with pytest.raises(IntegrityError, match="format byte 0x00"):
        codec.open(b"k", bytes(OVERHEAD + 5))


def test_rotate_data_switches_new_seals_and_keeps_old_readable(codec: EnvelopeCodec) -> None:
    before = codec.seal(b"k", b"old")
    new_id = codec.keyring.rotate_data()
    after = codec.seal(b"k", b"new")
    assert (key_id_of(before), key_id_of(after)) == (1, new_id)
    assert codec.open(b"k", before) == b"old" and codec.open(b"k", after) == b"new"
    assert not codec.is_current(before) and codec.is_current(after)
    assert key_id_of(codec.reseal(b"k", before)) == new_id


def test_nonces_never_repeat_across_threads_and_codec_instances(keyring: Keyring) -> None:
    codecs = [EnvelopeCodec(keyring), EnvelopeCodec(keyring)]  # as two processes would
    per_thread = 5_000
    results: list[list[bytes]] = [[] for _ in range(4)]

    def work(slot: int) -> None:
        c = codecs[slot % 2]
        results[slot] = [_nonce(c.seal(b"k", b"")) for _ in range(per_thread)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    nonces = [n for r in results for n in r]
    assert len(nonces) == 4 * per_thread
    assert len(set(nonces)) == len(nonces)


def test_a_forked_child_never_reuses_the_parents_nonces(codec: EnvelopeCodec) -> None:
    parent_before = {_nonce(codec.seal(b"k", b"")) for _ in range(100)}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: seal and report, then leave without running pytest's teardown
        try:
            os.close(read_end)
            os.write(write_end, b"".join(_nonce(codec.seal(b"k", b"")) for _ in range(100)))
        finally:
            os._exit(0)
    os.close(write_end)
    child = b""
    while chunk := os.read(read_end, 65536):
        child += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_after = {_nonce(codec.seal(b"k", b"")) for _ in range(100)}
    child_nonces = {child[i : i + NONCE_BYTES] for i in range(0, len(child), NONCE_BYTES)}
    assert len(child_nonces) == 100
    assert not child_nonces & (parent_before | parent_after)


def test_counter_exhaustion_draws_a_fresh_prefix() -> None:
    seq = NonceSequence()
    first = seq.next()
    seq._state = (seq._state[0], itertools.count((1 << 32) - 1))  # the prefix's last counter
    last = seq.next()
    assert last[:8] == first[:8] and last[8:] == b"\xff\xff\xff\xff"
    renewed = seq.next()
    assert renewed[:8] != first[:8] and renewed[8:] == bytes(4)


def test_plaintext_codec_must_be_asked_for_explicitly() -> None:
    with pytest.raises(ValueError, match="benchmarks"):
        PlaintextCodec()
    plain = PlaintextCodec(benchmark_only=True)
    assert plain.open(b"k", plain.seal(b"k", b"v")) == b"v"
