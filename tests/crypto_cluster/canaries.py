"""Canary strings and the scanners that look for them on disk.

A canary is a random marker that stands for patient data (a name, a record
number, a free-text note, the patient id itself). The raw scanner looks for
it in every file as plain UTF-8, UTF-16 (both byte orders), base64 (every
alignment, standard and URL-safe alphabets) and hex (both cases). The
decrypting scanner opens every LevelDB value of a node with its keyring, as
an attacker holding the master key could, and looks in the plaintexts and in
everything msgpack decodes them into.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import plyvel
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from node.crypto import CryptoError
from node.crypto.envelope import FORMAT_V1, EnvelopeCodec
from node.crypto.keyring import open_keyring
from node.storage_layout import RAFT_PREFIX, STATE_PREFIX


def new_canary(kind: str) -> str:
    """A marker no file can hold by chance: a kind word and 96 random bits."""
    return f"{kind}{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Patient:
    """One patient's identifiers and the canaries their records carry."""

    patient_id: str
    name: str
    mrn: str
    note: str

    @classmethod
    def new(cls) -> Patient:
        return cls(new_canary("pt"), new_canary("Name"), new_canary("MRN"), new_canary("Note"))

    @property
    def canaries(self) -> list[str]:
        return [self.patient_id, self.name, self.mrn, self.note]

    def record(self, n: int) -> bytes:
        """A FHIR-like resource carrying every canary (and some non-ASCII text)."""
        return json.dumps({
            "resourceType": "Observation",
            "subject": {"reference": f"Patient/{self.patient_id}", "display": self.name},
            "identifier": [{"system": "urn:mrn", "value": self.mrn}],
            "note": [{"text": f"Patientin klagt über Schmerzen ({n}) — {self.note}"}],
        }, ensure_ascii=False).encode("utf-8")


def _base64_forms(raw: bytes) -> dict[str, bytes]:
    """The part of base64(…raw…) that does not depend on the neighbouring bytes,
    for each of the three alignments raw can have in a longer encoded stream."""
    out: dict[str, bytes] = {}
    for shift in range(3):
        for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            enc = encode(b"\x00" * shift + raw)
            out[f"{name}+{shift}"] = enc[math.ceil(shift * 8 / 6) : len(enc) - 4]
    return out


def forms(canary: str) -> dict[str, bytes]:
    raw = canary.encode("utf-8")
    return {
        "utf-8": raw,
        "utf-16-le": canary.encode("utf-16-le"),
        "utf-16-be": canary.encode("utf-16-be"),
        "hex": raw.hex().encode("ascii"),
        "HEX": raw.hex().upper().encode("ascii"),
        **_base64_forms(raw),
    }


@dataclass(frozen=True)
class Hit:
    where: str  # a file path, or node/storage-key description for decrypted values
    canary: str
    form: str


def find_in(data: bytes, canaries: Iterable[str], where: str) -> list[Hit]:
    return [
        Hit(where, c, name) for c in canaries for name, f in forms(c).items() if f in data
    ]


def scan_files(root: Path, canaries: Iterable[str]) -> tuple[list[Hit], int]:
    """Every regular file under root: (hits, files scanned)."""
    wanted = list(canaries)
    hits: list[Hit] = []
    files = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files += 1
            hits += find_in(path.read_bytes(), wanted, str(path))
    return hits, files


def _leaves(obj: Any, depth: int = 0) -> Iterator[bytes]:
    """Every str/bytes inside a decoded msgpack object; bytes that are msgpack
    themselves (a Raft entry's command) are decoded too."""
    if isinstance(obj, str):
        yield obj.encode("utf-8")
    elif isinstance(obj, bytes | bytearray):
        yield bytes(obj)
        if depth < 6:
            for inner in _msgpack_objects(bytes(obj)):
                yield from _leaves(inner, depth + 1)
    elif isinstance(obj, list | tuple):
        for x in obj:
            yield from _leaves(x, depth)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(k, depth)
            yield from _leaves(v, depth)


def _msgpack_objects(data: bytes) -> list[Any]:
    """The msgpack objects a plaintext holds, with or without a leading format byte
    (record store values and snapshots start with 0x01, then a msgpack stream)."""
    for body in (data, data[1:]):
        try:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            unpacker.feed(body)
            objs = list(unpacker)
            if objs:
                return objs
        except Exception:  # not msgpack at this offset: try the next
            continue
    return []


@dataclass
class DecryptedScan:
    values: int = 0
    undecryptable: int = 0
    snapshots: int = 0  # stored Raft snapshot data values among them
    hits: list[Hit] = field(default_factory=list)


def codec_key(storage_key: bytes) -> bytes:
    """The key a value's associated data binds (node.storage_layout's convention):
    the Raft log store seals under the full key, the state machines under the
    key without the STATE_PREFIX of their prefixed_db."""
    if storage_key.startswith(STATE_PREFIX):
        return storage_key[len(STATE_PREFIX):]
    return storage_key


def decrypting_scan(node_dir: Path, key_file: Path, canaries: Iterable[str]) -> DecryptedScan:
    """Open every value of one node's LevelDB with its keyring and the master key,
    and look for the canaries in each plaintext and its msgpack contents."""
    wanted = list(canaries)
    codec = EnvelopeCodec(open_keyring(node_dir, key_file))
    out = DecryptedScan()
    db = plyvel.DB(str(node_dir / "db"), create_if_missing=False)
    try:
        for key, sealed in db.iterator():
            out.values += 1
            # Raft keys: prefix | group (8 bytes) | kind | index; "d" is snapshot data.
            if key.startswith(RAFT_PREFIX) and key[len(RAFT_PREFIX) + 8 : len(RAFT_PREFIX) + 9] == b"d":
                out.snapshots += 1
            try:
                plain = codec.open(codec_key(key), sealed)
            except CryptoError:
                out.undecryptable += 1
                continue
            where = f"{node_dir.name} key {key[:1]!r}…"
            found = find_in(plain, wanted, where)
            for leaf in _leaves(_msgpack_objects(plain)):
                found += find_in(leaf, wanted, where + " (msgpack)")
            out.hits += found
    finally:
        db.close()
    return out


def _data_keys(node_dir: Path, key_file: Path) -> dict[int, bytes]:
    """The node's data keys in the clear, as an attacker with the master key has them."""
    keyring = open_keyring(node_dir, key_file)
    return {kid: dk.key for kid, dk in keyring._state.keys.items()}


def keystream_scan(
    node_dir: Path, key_file: Path, canaries: Iterable[str], window: int = 1 << 15
) -> tuple[list[Hit], int]:
    """Decrypt every sealed value left anywhere in the node's files, live or not.

    LevelDB keeps deleted values in its files until a compaction rewrites
    them, so scanning live keys is not enough. AES-GCM is counter mode
    underneath: with the data key, the bytes after any envelope header
    (0xE1, key id, 12-byte nonce) decrypt without the associated data or the
    length, from counter block nonce || 2. Every header occurrence in every
    file is decrypted over `window` bytes and searched. Returns (hits,
    envelopes decrypted)."""
    wanted = list(canaries)
    keys = _data_keys(node_dir, key_file)
    hits: list[Hit] = []
    opened = 0
    for path in sorted(node_dir.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        for key_id, key in keys.items():
            header = bytes([FORMAT_V1]) + key_id.to_bytes(4, "big")
            at = data.find(header)
            while at >= 0:
                nonce = data[at + 5 : at + 17]
                body = data[at + 17 : at + 17 + window]
                if len(nonce) == 12 and body:
                    ctr = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02"))
                    plain = ctr.encryptor().update(body)
                    opened += 1
                    hits += find_in(plain, wanted, f"{path} @{at}")
                at = data.find(header, at + 1)
    return hits, opened


__all__ = [
    "RAFT_PREFIX",
    "DecryptedScan",
    "Hit",
    "Patient",
    "codec_key",
    "decrypting_scan",
    "find_in",
    "forms",
    "keystream_scan",
    "new_canary",
    "scan_files",
]
