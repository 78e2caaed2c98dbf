"""The node's keyring: data keys wrapped by the master key (envelope encryption).

DATA_DIR/keyring (JSON, mode 0600) holds this node's data keys, each a random
256-bit AES key with a small integer id, stored wrapped: AES-256-GCM under a
subkey derived from the master key, associated data = the data key id, so a
wrapped key cannot be passed off under another id. One data key is active
(new values are sealed under it); older ones stay until no value refers to
them (reencrypt.py), then they are retired (destroyed). Ids are never reused.

The file records which master key id wrapped it, and carries an HMAC (under
another master subkey) over everything, so a keyring opened with the wrong
master, or edited, fails loudly before any key is used. Every write is
crash-safe (keyfile.atomic_write: temp, fsync, rename, fsync dir), and a new
data key is on disk before anything is sealed under it.

The keyring also holds the index key (Keyring.index_key): the secret for
keyed hashing of storage keys, so they reveal no patient id. It is derived
from the cluster's master key when the keyring is created, so every replica
of a cluster stores a record under the same key and a scan's resume token
means the same position on any replica; from then on it is stored wrapped
and never changes (every storage key depends on it), so a master rotation
only re-wraps it. A node created after a master rotation derives it from the
new master: its scan tokens are then refused by older nodes (the token
carries the key's fingerprint), never misread.

Master rotation (MasterRotation) re-wraps the data keys and touches no data.
It uses a staged key file next to the configured one, `KEY_FILE.next`:

    1. stage    write the new master to KEY_FILE.next (0600, atomic)
    2. rewrap   rewrite the keyring wrapped by the new master
    3. install  rename KEY_FILE.next over KEY_FILE

open_keyring() accepts the key in KEY_FILE *or* in KEY_FILE.next, whichever
id the keyring names, so a crash between any two steps (or inside one: each
is a single atomic rename) leaves a state that opens, and running the
rotation again finishes it. The previous master is kept inside the keyring,
wrapped by the new one ("old masters"), so that a rotation interrupted on
some nodes can still be completed or undone; forget_old_masters() drops
them once the rotation is done everywhere.

A cluster shares one master, so rotating it across a cluster is two-phase:
first copy the new key file to KEY_FILE.next on every host and restart each
node (each can then unwrap patient keys under either master), then, host by
host, stop the node, run `keys rotate-master`, start it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.crypto import KeyFileError, KeyringError, UnknownKeyError
from node.crypto.keyfile import (
    KEY_BYTES,
    MasterKey,
    atomic_write,
    create_key_file,
    generate_master_key,
    install_key_file,
    load_master_key,
)

KEYRING_FILE = "keyring"
FORMAT = "medkv-keyring"
FORMAT_VERSION = 1
MAX_DATA_KEY_ID = 0xFFFFFFFF  # ids are 4 bytes in every sealed value
_NONCE_BYTES = 12
_WRAP_PURPOSE = b"medkv/v1 keyring wrap"
_MAC_PURPOSE = b"medkv/v1 keyring mac"
_DATA_KEY_AD = b"medkv/v1 data key "
_OLD_MASTER_AD = b"medkv/v1 old master "
_INDEX_KEY_AD = b"medkv/v1 index key"


def keyring_path(data_dir: Path) -> Path:
    return Path(data_dir) / KEYRING_FILE


def staged_key_path(key_file: Path) -> Path:
    """Where a master rotation stages the incoming key: KEY_FILE.next."""
    key_file = Path(key_file)
    return key_file.with_name(key_file.name + ".next")


@dataclass(frozen=True)
class DataKeyInfo:
    """What `keys status` shows about one data key (no key material)."""

    key_id: int
    created: str
    active: bool


@dataclass(frozen=True)
class _DataKey:
    key_id: int
    created: str
    key: bytes = field(repr=False)
    aead: AESGCM = field(repr=False, compare=False)


@dataclass(frozen=True)
class _State:
    """An immutable snapshot: readers take `self._state` once, writers swap it."""

    master: MasterKey
    previous_master_id: str | None
    active_id: int
    next_id: int
    keys: Mapping[int, _DataKey]
    old_masters: Mapping[str, MasterKey]
    index_key: bytes = field(repr=False)


INDEX_KEY_PURPOSE = b"medkv storage-key hashing v1"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _data_key_ad(key_id: int) -> bytes:
    return _DATA_KEY_AD + struct.pack(">I", key_id)


def _wrap(wrap_key: bytes, secret: bytes, ad: bytes) -> str:
    nonce = os.urandom(_NONCE_BYTES)  # few wraps per master: random nonces are ample
    return base64.b64encode(nonce + AESGCM(wrap_key).encrypt(nonce, secret, ad)).decode("ascii")


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mac(master: MasterKey, body: Mapping[str, Any]) -> str:
    return hmac.new(master.derive(_MAC_PURPOSE), _canonical(body), hashlib.sha256).hexdigest()


def _make_data_key(key_id: int, key: bytes, created: str) -> _DataKey:
    return _DataKey(key_id=key_id, created=created, key=key, aead=AESGCM(key))


class Keyring:
    """Thread-safe: codecs read it from any thread while rotations write it."""

    def __init__(self, path: Path, state: _State, extra_masters: Sequence[MasterKey] = ()) -> None:
        self.path = path
        self._state = state
        self._extra_masters = {m.key_id: m for m in extra_masters}
        self._lock = threading.Lock()

    # ---- creation and loading

    @classmethod
    def create(cls, data_dir: Path, master: MasterKey) -> Keyring:
        """A new keyring with one active data key. Refuses to replace an existing one."""
        path = keyring_path(data_dir)
        if path.exists():
            raise KeyringError(f"keyring {path} already exists; refusing to replace it")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        first = _make_data_key(1, os.urandom(KEY_BYTES), _now())
        index_key = master.derive(INDEX_KEY_PURPOSE)
        state = _State(master, None, 1, 2, {1: first}, {}, index_key)
        _write(path, state)
        return cls(path, state)

    @classmethod
    def open(cls, data_dir: Path, masters: Sequence[MasterKey]) -> Keyring:
        """Open DATA_DIR/keyring with whichever of `masters` wrapped it. The other
        masters are kept for unwrapping patient keys (known_masters)."""
        path = keyring_path(data_dir)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"no keyring at {path} (the node creates it on first start)"
            ) from None
        state = _parse(path, raw, masters)
        return cls(path, state, [m for m in masters if m.key_id != state.master.key_id])

    # ---- reading

    @property
    def master(self) -> MasterKey:
        return self._state.master

    @property
    def index_key(self) -> bytes:
        """The 256-bit secret for keyed hashing of storage keys: derived from the
        master when the keyring was created (the same on every replica), stored
        since then and never changed, so a master rotation does not move records."""
        return self._state.index_key

    @property
    def master_key_id(self) -> str:
        return self._state.master.key_id

    @property
    def previous_master_key_id(self) -> str | None:
        return self._state.previous_master_id

    @property
    def active_key_id(self) -> int:
        return self._state.active_id

    @property
    def next_data_key_id(self) -> int:
        return self._state.next_id

    @property
    def data_key_ids(self) -> list[int]:
        return sorted(self._state.keys)

    @property
    def old_master_key_ids(self) -> list[str]:
        return sorted(self._state.old_masters)

    def data_keys(self) -> list[DataKeyInfo]:
        s = self._state
        return [
            DataKeyInfo(k.key_id, k.created, k.key_id == s.active_id)
            for k in sorted(s.keys.values(), key=lambda k: k.key_id)
        ]

    def aead(self, key_id: int) -> AESGCM:
        """The AES-GCM instance of data key `key_id`; UnknownKeyError if not held."""
        dk = self._state.keys.get(key_id)
        if dk is None:
            raise UnknownKeyError(
                f"data key id {key_id} is not in keyring {self.path} "
                "(it was retired, or the value is corrupt)"
            )
        return dk.aead

    def active(self) -> tuple[int, AESGCM]:
        """The active key id and its AES-GCM instance, read consistently."""
        s = self._state
        return s.active_id, s.keys[s.active_id].aead

    def known_masters(self) -> dict[str, MasterKey]:
        """Every master this node can unwrap with: the current one, old ones
        kept in the keyring, and a staged KEY_FILE.next."""
        s = self._state
        known = dict(self._extra_masters)
        known.update(s.old_masters)
        known[s.master.key_id] = s.master
        return known

    # ---- rotation

    def rotate_data(self) -> int:
        """Add a new active data key and return its id. The keyring is durable on
        disk before the key becomes active, so nothing is ever sealed under a key
        a crash could lose. Old keys stay readable."""
        with self._lock:
            s = self._state
            if s.next_id > MAX_DATA_KEY_ID:
                raise KeyringError(f"keyring {self.path} has used every data key id")
            new = _make_data_key(s.next_id, os.urandom(KEY_BYTES), _now())
            state = replace(s, active_id=new.key_id, next_id=s.next_id + 1,
                            keys={**s.keys, new.key_id: new})
            _write(self.path, state)
            self._state = state
            return new.key_id

    def retire_data_keys(self, key_ids: Iterable[int]) -> list[int]:
        """Destroy data keys (not the active one). Call only once no value refers to
        them (reencrypt.ReEncryptor.retire_old_keys checks). Returns the ids retired."""
        with self._lock:
            s = self._state
            drop = sorted(set(key_ids) & set(s.keys))
            if s.active_id in drop:
                raise KeyringError(f"data key {s.active_id} is active and cannot be retired")
            if not drop:
                return []
            state = replace(s, keys={i: k for i, k in s.keys.items() if i not in drop})
            _write(self.path, state)
            self._state = state
            return drop

    def rotate_master(self, new_master: MasterKey) -> None:
        """Re-wrap every data key (and old master) under `new_master`, in one
        atomic keyring write. The data is untouched. The old master is kept,
        wrapped by the new one, to unwrap patient keys in older log entries."""
        with self._lock:
            s = self._state
            if new_master.key_id == s.master.key_id:
                raise KeyringError(
                    f"keyring {self.path} is already wrapped by master key id {new_master.key_id}"
                )
            kept = {k: v for k, v in s.old_masters.items() if k != new_master.key_id}
            kept[s.master.key_id] = s.master
            state = replace(s, master=new_master, previous_master_id=s.master.key_id,
                            old_masters=kept)
            _write(self.path, state)
            self._state = state
            self._extra_masters.pop(new_master.key_id, None)

    def forget_old_masters(self) -> list[str]:
        """Destroy the old masters kept in the keyring. Only once every Raft log
        on this node is compacted past the last master rotation."""
        with self._lock:
            s = self._state
            gone = sorted(s.old_masters)
            if gone:
                state = replace(s, old_masters={})
                _write(self.path, state)
                self._state = state
            return gone


# ---- the file format


def _serialize(state: _State) -> bytes:
    wrap_key = state.master.derive(_WRAP_PURPOSE)
    body: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "master_key_id": state.master.key_id,
        "previous_master_key_id": state.previous_master_id,
        "active_data_key_id": state.active_id,
        "next_data_key_id": state.next_id,
        "data_keys": [
            {"id": k.key_id, "created": k.created,
             "wrapped": _wrap(wrap_key, k.key, _data_key_ad(k.key_id))}
            for k in sorted(state.keys.values(), key=lambda k: k.key_id)
        ],
        "old_master_keys": [
            {"id": m.key_id,
             "wrapped": _wrap(wrap_key, m.key, _OLD_MASTER_AD + m.key_id_bytes)}
            for m in sorted(state.old_masters.values(), key=lambda m: m.key_id)
        ],
        "index_key": {"wrapped": _wrap(wrap_key, state.index_key, _INDEX_KEY_AD)},
    }
    body["mac"] = _mac(state.master, body)  # computed before "mac" is in body
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write(path: Path, state: _State) -> None:
    atomic_write(path, _serialize(state))


def _parse(path: Path, raw: bytes, masters: Sequence[MasterKey]) -> _State:
    def corrupt(problem: str) -> KeyringError:
        return KeyringError(f"keyring {path} is corrupt: {problem}")

    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt("not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise corrupt(f"not a {FORMAT} file")
    if doc.get("version") != FORMAT_VERSION:
        raise KeyringError(
            f"keyring {path} has format version {doc.get('version')!r}; "
            f"this medkv reads version {FORMAT_VERSION}"
        )
    master_id = doc.get("master_key_id")
    master = next((m for m in masters if m.key_id == master_id), None)
    if master is None:
        held = ", ".join(m.key_id for m in masters) or "none"
        raise KeyringError(
            f"keyring {path} is wrapped by master key id {master_id}, but the key file(s) "
            f"given hold id(s) {held}: use the cluster's current master key file"
        )
    mac = doc.pop("mac", None)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(master, doc)):
        raise KeyringError(
            f"keyring {path} failed its integrity check under master key id {master_id}: "
            "the key file does not hold that master key, or the keyring was altered"
        )
    wrap_key = AESGCM(master.derive(_WRAP_PURPOSE))

    def unwrap(entry: Any, ad: bytes, what: str) -> bytes:
        try:
            blob = base64.b64decode(entry["wrapped"], validate=True)
            secret = wrap_key.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], ad)
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
            raise corrupt(f"{what} does not unwrap under master key id {master_id}") from None
        if len(secret) != KEY_BYTES:
            raise corrupt(f"{what} has the wrong size")
        return secret

    try:
        keys: dict[int, _DataKey] = {}
        for entry in doc["data_keys"]:
            key_id = int(entry["id"])
            secret = unwrap(entry, _data_key_ad(key_id), f"data key {key_id}")
            keys[key_id] = _make_data_key(key_id, secret, str(entry["created"]))
        old: dict[str, MasterKey] = {}
        for entry in doc["old_master_keys"]:
            rid = str(entry["id"])
            secret = unwrap(entry, _OLD_MASTER_AD + bytes.fromhex(rid), f"old master {rid}")
            old[rid] = MasterKey(key_id=rid, key=secret)
        index_key = unwrap(doc["index_key"], _INDEX_KEY_AD, "the index key")
        active = int(doc["active_data_key_id"])
        next_id = int(doc["next_data_key_id"])
        previous = doc["previous_master_key_id"]
    except (KeyError, TypeError, ValueError, KeyFileError):
        raise corrupt("unexpected structure") from None
    if active not in keys:
        raise corrupt(f"the active data key {active} is missing")
    if keys and next_id <= max(keys):
        raise corrupt("next_data_key_id is not above every data key id")
    return _State(master, previous if isinstance(previous, str) else None, active, next_id,
                  keys, old, index_key)


# ---- the node's view: key file (+ staged key) and data dir


def load_masters(key_file: Path) -> list[MasterKey]:
    """The configured master, plus the staged KEY_FILE.next when one exists."""
    masters = [load_master_key(key_file)]
    staged = staged_key_path(key_file)
    if staged.exists():
        masters.append(load_master_key(staged))
    return masters


def open_keyring(data_dir: Path, key_file: Path, *, create: bool = False) -> Keyring:
    """The node's keyring, opened with the configured key file or a staged one
    (see the module docstring). With create=True a missing keyring is created
    under the configured master (the node's first start)."""
    masters = load_masters(key_file)
    if create and not keyring_path(data_dir).exists():
        return Keyring.create(data_dir, masters[0])
    return Keyring.open(data_dir, masters)


class MasterRotation:
    """Offline master key rotation for one node, resumable after a crash.

    Each step is idempotent and leaves a state open_keyring() reads; run()
    performs whichever steps remain. The node must be stopped (the CLI holds
    the LevelDB lock while this runs).
    """

    def __init__(self, key_file: Path, data_dir: Path, new_key_file: Path | None = None) -> None:
        self.key_file = Path(key_file)
        self.data_dir = Path(data_dir)
        self.new_key_file = Path(new_key_file) if new_key_file is not None else None
        self.staged = staged_key_path(self.key_file)

    def stage(self) -> MasterKey:
        """Step 1: the new master in KEY_FILE.next (from new_key_file, or generated).
        An already staged key is reused (resume) unless it contradicts new_key_file."""
        wanted = load_master_key(self.new_key_file) if self.new_key_file is not None else None
        if self.staged.exists():
            staged = load_master_key(self.staged)
            if wanted is not None and wanted.key_id != staged.key_id:
                raise KeyringError(
                    f"a rotation to master key id {staged.key_id} is already staged in "
                    f"{self.staged}; finish it first (run again without --new-key-file)"
                )
            return staged
        current = load_master_key(self.key_file)
        new = wanted if wanted is not None else generate_master_key()
        if new.key_id == current.key_id:
            raise KeyringError(f"{self.new_key_file} holds the current master key id {new.key_id}")
        create_key_file(self.staged, new)
        return new

    def rewrap(self) -> None:
        """Step 2: the keyring re-wrapped by the staged master (one atomic write)."""
        new = load_master_key(self.staged)
        keyring = open_keyring(self.data_dir, self.key_file)
        if keyring.master_key_id != new.key_id:
            keyring.rotate_master(new)

    def install(self) -> None:
        """Step 3: KEY_FILE.next renamed over KEY_FILE (atomic)."""
        new = load_master_key(self.staged)
        keyring = Keyring.open(self.data_dir, [new])  # refuses unless step 2 is done
        if keyring.master_key_id == new.key_id:
            install_key_file(self.staged, self.key_file)

    def pending(self) -> bool:
        return self.staged.exists()

    def run(self) -> MasterKey:
        new = self.stage()
        self.rewrap()
        self.install()
        return new
