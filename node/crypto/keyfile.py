"""The master key file: the root of the node's key hierarchy.

One cluster shares ONE master key file. `python -m node keys init --key-file
PATH` creates it once; the operator then copies that same file to every host
of the cluster (for example `install -m 600 master.key HOST:/etc/medkv/`) and
names it as `key_file` in each node's configuration. Every node needs the same
master key because the storage-key hashing key is derived from it when a
node's keyring is created, so every replica stores a record under the same
key (scan resume tokens then work on any replica); each node's own data keys
are wrapped under it too (keyring.py). Keep the key file out of the data directory and out of its
backups: a backup of the data alone must be useless.

File format (text, versioned, with a checksum that catches truncation and
stray edits before the key is ever used):

    medkv-master-key v1
    id: <16 hex digits: a random 64-bit key id>
    key: <base64 of the 32-byte (256-bit) key>
    checksum: <first 8 bytes of SHA-256 over version, id and key, in hex>

Safety rules enforced here:
  * Creation never exposes the key: the file is first written to a fresh
    temporary name opened with O_EXCL and mode 0600 fixed at creation (the
    umask can only remove bits), fsynced, then hard-linked to its final name,
    which fails if that name exists. So the final path either does not exist
    or holds the complete key, and an existing key is never overwritten.
  * Loading refuses a file that group or others can read or write, showing
    the mode and the chmod that fixes it, and never prints key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.crypto import KeyFileError

KEY_BYTES = 32  # AES-256
KEY_ID_BYTES = 8
FORMAT_VERSION = 1
_MAGIC = "medkv-master-key"
_MAX_FILE_BYTES = 4096  # a valid file is ~130 bytes; anything far larger is not ours
_UNSAFE_BITS = stat.S_IRWXG | stat.S_IRWXO  # any group/other permission


@dataclass(frozen=True)
class MasterKey:
    """A 256-bit master key and its public id. repr() never shows the key."""

    key_id: str  # 16 lowercase hex digits
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise KeyFileError(f"a master key must be {KEY_BYTES} bytes, not {len(self.key)}")
        try:
            raw_id = bytes.fromhex(self.key_id)
        except ValueError:
            raw_id = b""
        if len(raw_id) != KEY_ID_BYTES or self.key_id != raw_id.hex():
            raise KeyFileError(f"a master key id must be {2 * KEY_ID_BYTES} lowercase hex digits")

    @property
    def key_id_bytes(self) -> bytes:
        return bytes.fromhex(self.key_id)

    def derive(self, purpose: bytes) -> bytes:
        """A 256-bit subkey for one purpose (HKDF-SHA256). Each use of the master
        (wrapping data keys, MACing the keyring, wrapping patient keys) gets its
        own subkey, so no two uses ever share an AES-GCM key or nonce space."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(
            self.key
        )


def generate_master_key() -> MasterKey:
    return MasterKey(key_id=os.urandom(KEY_ID_BYTES).hex(), key=os.urandom(KEY_BYTES))


def _checksum(key_id: str, key: bytes) -> str:
    h = hashlib.sha256(f"{_MAGIC} v{FORMAT_VERSION}\n{key_id}\n".encode() + key)
    return h.digest()[:8].hex()


def encode_key_file(master: MasterKey) -> bytes:
    return (
        f"{_MAGIC} v{FORMAT_VERSION}\n"
        f"id: {master.key_id}\n"
        f"key: {base64.b64encode(master.key).decode('ascii')}\n"
        f"checksum: {_checksum(master.key_id, master.key)}\n"
    ).encode("ascii")


def parse_key_file(path: Path, data: bytes) -> MasterKey:
    """Parse a key file's bytes. Errors name the path and the problem only."""

    def malformed(problem: str) -> KeyFileError:
        return KeyFileError(f"master key file {path} is malformed: {problem}")

    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise malformed("it is not a medkv key file (non-ASCII bytes)") from None
    lines = text.splitlines()
    if not lines or not lines[0].startswith(_MAGIC + " v"):
        raise malformed(f"the first line is not '{_MAGIC} v{FORMAT_VERSION}'")
    version = lines[0][len(_MAGIC) + 2 :]
    if version != str(FORMAT_VERSION):
        raise KeyFileError(
            f"master key file {path} has format version {version!r}; "
            f"this medkv reads version {FORMAT_VERSION}"
        )
    if len(lines) != 4:
        raise malformed(f"expected 4 lines, found {len(lines)}")
    fields: dict[str, str] = {}
    for lineno, (line, name) in enumerate(zip(lines[1:], ("id", "key", "checksum"), strict=True), 2):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise malformed(f"line {lineno} should start with '{prefix}'")
        fields[name] = line[len(prefix) :].strip()
    key_id = fields["id"]
    try:
        if len(bytes.fromhex(key_id)) != KEY_ID_BYTES or key_id != key_id.lower():
            raise ValueError
    except ValueError:
        raise malformed(f"the id is not {2 * KEY_ID_BYTES} lowercase hex digits") from None
    try:
        key = base64.b64decode(fields["key"], validate=True)
    except (binascii.Error, ValueError):
        raise malformed("the key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"master key file {path} holds a {len(key)}-byte ({8 * len(key)}-bit) key; "
            f"medkv needs a {KEY_BYTES}-byte ({8 * KEY_BYTES}-bit) key"
        )
    if fields["checksum"] != _checksum(key_id, key):
        raise malformed("checksum mismatch (the file is corrupt or was edited)")
    return MasterKey(key_id=key_id, key=key)


def load_master_key(path: Path | str) -> MasterKey:
    """Load and validate the master key file at `path`.

    Raises KeyFileError naming the path and the problem: missing, not a
    regular file, unreadable, group/other permissions (with the chmod that
    fixes it), malformed, or a key of the wrong size.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(
            f"master key file {path} does not exist "
            f"(create it once with: python -m node keys init --key-file {path}, "
            "then copy that same file to every node)"
        ) from None
    except PermissionError:
        raise KeyFileError(
            f"master key file {path} cannot be read by this user (permission denied); "
            "run the node as the file's owner"
        ) from None
    except OSError as e:
        raise KeyFileError(f"master key file {path} cannot be opened: {e.strerror}") from None
    try:
        # fstat on the open descriptor: the mode we check is the file we read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"master key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & _UNSAFE_BITS:
            who = []
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                who.append("readable")
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                who.append("writable")
            access = " and ".join(who) or "accessible"
            raise KeyFileError(
                f"master key file {path} has mode {mode:04o}: it is {access} by group/others; "
                f"refusing to use it. Fix with: chmod 600 {path}"
            )
        data = b""
        while len(data) <= _MAX_FILE_BYTES and (chunk := os.read(fd, _MAX_FILE_BYTES + 1)):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise KeyFileError(f"master key file {path} is malformed: larger than {_MAX_FILE_BYTES} bytes")
    return parse_key_file(path, data)


def fsync_dir(directory: Path) -> None:
    """Make a rename/link/unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_private_file(path: Path, data: bytes) -> None:
    """Create `path` (must not exist) with mode 0600 from the first instant, write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed the owner's bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Durably replace `path` with `data` (mode 0600): write a temporary file,
    fsync it, rename it over `path`, fsync the directory. A crash at any point
    leaves either the old complete file or the new complete file at `path`;
    a stale temporary left by a crash is removed by the next write."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    _write_new_private_file(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_key_file(path: Path | str, master: MasterKey | None = None) -> MasterKey:
    """Create the master key file at `path` with a new random key (or `master`).

    Never overwrites: raises KeyFileError if `path` exists. Returns the key.
    """
    path = Path(path)
    master = master if master is not None else generate_master_key()
    if not path.parent.is_dir():
        raise KeyFileError(f"cannot create master key file {path}: {path.parent} is not a directory")
    if path.exists() or path.is_symlink():
        raise KeyFileError(f"master key file {path} already exists; refusing to overwrite it")
    for stale in path.parent.glob(f".{path.name}.new-*"):
        stale.unlink(missing_ok=True)  # key material left by a creation that crashed
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
    _write_new_private_file(tmp, encode_key_file(master))
    try:
        os.link(tmp, path)  # atomic, and fails if `path` appeared meanwhile
    except FileExistsError:
        raise KeyFileError(f"master key file {path} already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return master


def install_key_file(staged: Path, path: Path) -> None:
    """Atomically move a complete staged key file over `path` (master rotation)."""
    os.replace(staged, path)
    fsync_dir(path.parent)
