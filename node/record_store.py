"""The one place where a partition's records become bytes in LevelDB.

Everything a partition keeps on disk goes through this module: current
records, retained history versions, client-session blobs and the partition's
metadata. Every value is passed through `codec.seal(storage_key, plaintext)`
on the way down and `codec.open` on the way up, so encryption at rest
(node/crypto.py) plugs in here and nowhere else; binding each ciphertext to
its storage key makes a swapped block fail instead of reading as another
record.

Storage keys carry no plaintext identifiers. Layout, relative to the `db`
given (pass the node's dedicated prefixed_db for state-machine data):

    P = partition, 4 bytes big-endian
    ph = key_hasher(b"p" + patient_id)                          16 bytes
    rh = key_hasher(b"r" + len(patient_id) (2 bytes) + patient_id + record_id)
                                                                16 bytes
    P "c" ph rh             current record: latest version + the list of
                            retained older versions
    P "h" ph rh version     an older version (version: 8 bytes big-endian)
    P "s" session_id        one client session (opaque blob, node.sessions)
    P "p" ph                the patient's registration: the clinics it is
                            registered to (issue 11, node.auth.policy); the
                            patient id and clinics are inside the sealed value
    P "m" "applied"         applied index, applied term, log time
    P "m" "settings"        the replicated cluster settings in force (opaque, node.settings)
    P "m" "audit"           the newest audit chain head of every node (node.audit_anchors)
    P "e" index kind        an erasure obligation (index: 8 bytes; kind: one
                            byte, "e" an erasure applied at index, "i" a snapshot
                            installed at index): older copies of deleted data
                            may still be in the Raft log and the LevelDB files,
                            and must be purged (node.erasure). No patient id.

The kind byte comes right after the partition so that current records form
one contiguous range (a scan never steps over history), while one patient's
keys stay adjacent within each range (erasure is two short range walks) and a
record's versions sort by version. The plaintext ids live inside the sealed
value, which is how scans and snapshots return them.

Writes go into a WriteStage (one per apply round) that reads see through, and
reach LevelDB as one WriteBatch in commit().
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol

import msgpack

from consensus.storage import ValueCodec
from node.audit_anchors import check_anchors_blob
from node.limits import DEFAULT_SCAN_PAGE, ValidationError
from node.read_snapshots import ReadSnapshotHandle, ReadSnapshotRegistry

KEY_HASH_BYTES = 16
_FORMAT = 0x01  # leading byte of every stored value and of snapshots

_CURRENT = b"c"
_HISTORY = b"h"
_SESSION = b"s"
_REGISTRATION = b"p"
_META = b"m"
_META_APPLIED = _META + b"applied"
_META_SETTINGS = _META + b"settings"
_META_AUDIT = _META + b"audit"
_OBLIGATION = b"e"
_OBLIGATION_KEY_LEN = 4 + 1 + 8 + 1
OBLIGATION_ERASE = "erase"
OBLIGATION_SNAPSHOT_INSTALL = "snapshot-install"
_OBLIGATION_KINDS = {OBLIGATION_ERASE: b"e", OBLIGATION_SNAPSHOT_INSTALL: b"i"}
_OBLIGATION_NAMES = {v: k for k, v in _OBLIGATION_KINDS.items()}
_CURRENT_KEY_LEN = 4 + 1 + 2 * KEY_HASH_BYTES

_SNAPSHOT_MAGIC = "medkv-partition-snapshot"


class CorruptRecordError(Exception):
    """Stored bytes that fail to open or decode, or do not match their key (DATA_LOSS)."""


class SnapshotFormatError(ValueError):
    """Snapshot bytes that are truncated, malformed or for another partition."""


class LevelDB(Protocol):
    """What the store needs of a plyvel.DB or a prefixed_db (both untyped)."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterator(self, **kwargs: Any) -> Any: ...

    def write_batch(self, **kwargs: Any) -> Any: ...

    def snapshot(self) -> Any: ...


def blake2b_key_hasher(key: bytes) -> Callable[[bytes], bytes]:
    """The default key hasher: 16-byte keyed blake2b.

    The key (16..64 bytes) is what keeps storage keys from being a dictionary
    of hashed patient ids: without it anyone could hash candidate ids and find
    them on disk. The node passes a dedicated secret key.
    """
    if not 16 <= len(key) <= 64:
        raise ValueError("key hasher key must be 16 to 64 bytes")
    secret = bytes(key)

    def hasher(data: bytes) -> bytes:
        return hashlib.blake2b(
            data, digest_size=KEY_HASH_BYTES, key=secret, person=b"medkv-keys"
        ).digest()

    return hasher


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one record (mirrors medkv.v1.Record). deleted: a tombstone."""

    patient_id: str
    record_id: str
    value: bytes
    version: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class PartitionMeta:
    applied_index: int = 0
    applied_term: int = 0
    clock_ms: int = 0  # log time: the newest leader stamp applied (node.log_clock)


@dataclass(frozen=True, slots=True, order=True)
class Obligation:
    """A purge this replica owes: deleted data older than `index` may still be
    in its Raft log and in its LevelDB files (see node.erasure).

    kind is OBLIGATION_ERASE (an ErasePatient applied at index deleted keys)
    or OBLIGATION_SNAPSHOT_INSTALL (a snapshot installed at index replaced the
    whole state, and the log before it: the replaced data may include records
    the leader had erased)."""

    index: int
    kind: str


class ScanPage(NamedTuple):
    """One page of a scan; unpacks as (records, resume_token, done)."""

    records: list[Record]
    resume_token: bytes  # opaque; pass back to continue after this page
    done: bool


@dataclass(frozen=True, slots=True)
class _Current:
    record: Record
    retained: tuple[int, ...]  # versions kept under "h", oldest first


class WriteStage:
    """The writes of one apply round, readable before they are committed.

    Holds the sealed bytes for the WriteBatch and the plaintext for reads, so
    a read inside the round neither hits the disk nor decrypts again.
    """

    __slots__ = ("_closed", "_plain", "_sealed", "obligations")

    def __init__(self) -> None:
        self._sealed: dict[bytes, bytes | None] = {}
        self._plain: dict[bytes, bytes | None] = {}
        self._closed = False
        self.obligations: list[Obligation] = []  # erasure obligations staged in this round

    def _put(self, key: bytes, plaintext: bytes, sealed: bytes) -> None:
        self._check_open()
        self._sealed[key] = sealed
        self._plain[key] = plaintext

    def _delete(self, key: bytes) -> None:
        self._check_open()
        self._sealed[key] = None
        self._plain[key] = None

    def _lookup(self, key: bytes) -> tuple[bool, bytes | None]:
        if key in self._plain:
            return True, self._plain[key]
        return False, None

    def _keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return [k for k in self._sealed if k.startswith(prefix)]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this write stage was already committed or discarded")

    def discard(self) -> None:
        """Drop every staged write (after a failed apply round)."""
        self._sealed.clear()
        self._plain.clear()
        self._closed = True

    def __len__(self) -> int:
        return len(self._sealed)


def _pack(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return bytes([_FORMAT]) + body


def _unpack(data: bytes) -> Any:
    if not data or data[0] != _FORMAT:
        raise CorruptRecordError("stored value has an unknown format")
    try:
        return msgpack.unpackb(data[1:], raw=False, use_list=True, strict_map_key=True)
    except Exception:
        raise CorruptRecordError("stored value is not well-formed") from None


def _is_uint(v: object) -> bool:
    return type(v) is int and v >= 0


class ReadSnapshot:
    """Reads of one RecordStore as of one instant (a LevelDB snapshot).

    Registered with the node's ReadSnapshotRegistry: an erasure may interrupt
    it (its next read raises SnapshotInterrupted), because an open snapshot
    keeps erased versions in the files (node.read_snapshots)."""

    def __init__(self, store: RecordStore, snap: Any, handle: ReadSnapshotHandle | None) -> None:
        self._store = store
        self._snap = snap
        self._handle = handle
        self._closed = False
        self._meta: PartitionMeta | None = None

    def _reader(self) -> Any:
        if self._handle is not None:
            self._handle.check()
        if self._closed:
            raise RuntimeError("this read snapshot is closed")
        return self._snap

    @property
    def meta(self) -> PartitionMeta:
        """Applied index/term as of the snapshot."""
        if self._meta is None:
            self._meta = self._store._read_meta(self._reader())
        return self._meta

    def get(self, patient_id: str, record_id: str, at_version: int = 0) -> Record | None:
        return self._store._get(patient_id, record_id, at_version, None, self._reader())

    def history(
        self, patient_id: str, record_id: str, limit: int, before_version: int = 0
    ) -> list[Record]:
        return self._store._history(
            patient_id, record_id, limit, before_version, None, self._reader()
        )

    def scan(self, resume_token: bytes = b"", limit: int = DEFAULT_SCAN_PAGE) -> ScanPage:
        return self._store._scan(resume_token, limit, self._reader())

    def close(self) -> None:
        """Release the LevelDB snapshot (idempotent; an interrupted one already is)."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.release()
        else:
            self._snap.close()

    def __enter__(self) -> ReadSnapshot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RecordStore:
    """One partition's records, history, sessions and metadata in LevelDB."""

    def __init__(
        self,
        db: LevelDB,
        partition: int,
        codec: ValueCodec,
        key_hasher: Callable[[bytes], bytes],
        read_snapshots: ReadSnapshotRegistry | None = None,
    ) -> None:
        if not 0 <= partition < 1 << 32:
            raise ValueError("partition must fit in 32 bits")
        if len(key_hasher(b"probe")) != KEY_HASH_BYTES:
            raise ValueError(f"key_hasher must return {KEY_HASH_BYTES} bytes")
        self._db = db
        self._partition = partition
        self._codec = codec
        self._hash = key_hasher
        self._prefix = partition.to_bytes(4, "big")
        self._read_snapshots = read_snapshots if read_snapshots is not None else ReadSnapshotRegistry()

    @property
    def partition(self) -> int:
        return self._partition

    # --- keys -------------------------------------------------------------

    def _patient_hash(self, patient_id: str) -> bytes:
        return self._hash(b"p" + patient_id.encode("utf-8"))

    def _record_hash(self, patient_id: str, record_id: str) -> bytes:
        p = patient_id.encode("utf-8")
        # Length-prefixed so ("ab", "c") and ("a", "bc") never collide.
        return self._hash(b"r" + len(p).to_bytes(2, "big") + p + record_id.encode("utf-8"))

    def _record_keys(self, patient_id: str, record_id: str) -> tuple[bytes, bytes]:
        """(current key, history key prefix) of one record."""
        tail = self._patient_hash(patient_id) + self._record_hash(patient_id, record_id)
        return self._prefix + _CURRENT + tail, self._prefix + _HISTORY + tail

    # --- low-level get/put through the codec ------------------------------

    def _open(self, key: bytes, sealed: bytes) -> bytes:
        try:
            return self._codec.open(key, sealed)
        except Exception as e:
            # The codec protocol names no error type; a failed open of data we
            # wrote ourselves is corruption or tampering either way.
            raise CorruptRecordError("stored value failed to open") from e

    def _get_plain(self, key: bytes, stage: WriteStage | None, reader: Any = None) -> bytes | None:
        if stage is not None:
            staged, plain = stage._lookup(key)
            if staged:
                return plain
        sealed = (reader if reader is not None else self._db).get(key)
        return None if sealed is None else self._open(key, sealed)

    def _stage_put(self, stage: WriteStage, key: bytes, plaintext: bytes) -> None:
        stage._put(key, plaintext, self._codec.seal(key, plaintext))

    # --- record encoding --------------------------------------------------

    @staticmethod
    def _encode_current(rec: Record, retained: Iterable[int]) -> bytes:
        return _pack(
            [rec.patient_id, rec.record_id, rec.version, rec.deleted, rec.value, list(retained)]
        )

    @staticmethod
    def _encode_history(rec: Record) -> bytes:
        return _pack([rec.patient_id, rec.record_id, rec.version, rec.deleted, rec.value])

    @staticmethod
    def _decode_record(fields: Any, arity: int) -> Record:
        if not (type(fields) is list and len(fields) == arity):
            raise CorruptRecordError("stored record has the wrong shape")
        p, r, version, deleted, value = fields[:5]
        if not (type(p) is str and type(r) is str and _is_uint(version)):
            raise CorruptRecordError("stored record has the wrong field types")
        if type(deleted) is not bool or type(value) is not bytes:
            raise CorruptRecordError("stored record has the wrong field types")
        return Record(p, r, value, version, deleted)

    def _decode_current(self, plain: bytes) -> _Current:
        fields = _unpack(plain)
        rec = self._decode_record(fields, 6)
        retained = fields[5]
        if type(retained) is not list or not all(_is_uint(v) for v in retained):
            raise CorruptRecordError("stored record has a malformed version list")
        return _Current(rec, tuple(retained))

    def _load_current(
        self, patient_id: str, record_id: str, stage: WriteStage | None, reader: Any = None
    ) -> tuple[_Current | None, bytes, bytes]:
        ck, hp = self._record_keys(patient_id, record_id)
        plain = self._get_plain(ck, stage, reader)
        if plain is None:
            return None, ck, hp
        cur = self._decode_current(plain)
        if cur.record.patient_id != patient_id or cur.record.record_id != record_id:
            # A 128-bit keyed-hash collision, or a block moved under another key.
            raise CorruptRecordError("stored record does not match its key")
        return cur, ck, hp

    def _load_history(
        self, hist_prefix: bytes, version: int, stage: WriteStage | None, reader: Any = None
    ) -> Record:
        key = hist_prefix + version.to_bytes(8, "big")
        plain = self._get_plain(key, stage, reader)
        if plain is None:
            raise CorruptRecordError("a retained version is missing")
        rec = self._decode_record(_unpack(plain), 5)
        if rec.version != version:
            raise CorruptRecordError("stored version does not match its key")
        return rec

    # --- reads -------------------------------------------------------------

    def get(
        self, patient_id: str, record_id: str, at_version: int = 0, stage: WriteStage | None = None
    ) -> Record | None:
        """The version current at `at_version` (0: the latest), or None.

        A tombstone comes back as a Record with deleted=True. None also when
        every version at or before `at_version` has aged out of retention.
        With a stage, reads see the stage's uncommitted writes.
        """
        return self._get(patient_id, record_id, at_version, stage, None)

    def _get(
        self,
        patient_id: str,
        record_id: str,
        at_version: int,
        stage: WriteStage | None,
        reader: Any,
    ) -> Record | None:
        cur, _, hp = self._load_current(patient_id, record_id, stage, reader)
        if cur is None:
            return None
        if at_version == 0 or cur.record.version <= at_version:
            return cur.record
        older = [v for v in cur.retained if v <= at_version]
        if not older:
            return None
        return self._load_history(hp, max(older), stage, reader)

    def history(
        self,
        patient_id: str,
        record_id: str,
        limit: int,
        before_version: int = 0,
        stage: WriteStage | None = None,
    ) -> list[Record]:
        """Retained versions (tombstones included), newest first, below before_version (0: all)."""
        return self._history(patient_id, record_id, limit, before_version, stage, None)

    def _history(
        self,
        patient_id: str,
        record_id: str,
        limit: int,
        before_version: int,
        stage: WriteStage | None,
        reader: Any,
    ) -> list[Record]:
        if limit <= 0:
            raise ValueError("limit must be positive")
        cur, _, hp = self._load_current(patient_id, record_id, stage, reader)
        if cur is None:
            return []
        out: list[Record] = []
        for v in (cur.record.version, *reversed(cur.retained)):
            if len(out) == limit:
                break
            if before_version and v >= before_version:
                continue
            out.append(
                cur.record if v == cur.record.version else self._load_history(hp, v, stage, reader)
            )
        return out

    # --- registrations (patient <-> clinics) -------------------------------

    def _registration_key(self, patient_id: str) -> bytes:
        return self._prefix + _REGISTRATION + self._patient_hash(patient_id)

    @staticmethod
    def _decode_registration(plain: bytes) -> tuple[str, frozenset[str]]:
        fields = _unpack(plain)
        if not (type(fields) is list and len(fields) == 2 and type(fields[0]) is str
                and type(fields[1]) is list and all(type(c) is str for c in fields[1])):
            raise CorruptRecordError("stored registration has the wrong shape")
        return fields[0], frozenset(fields[1])

    def registration(
        self, patient_id: str, stage: WriteStage | None = None, reader: Any = None
    ) -> frozenset[str]:
        """The clinics the patient is registered to (empty: unregistered).
        With a stage, sees the stage's uncommitted writes."""
        key = self._registration_key(patient_id)
        plain = self._get_plain(key, stage, reader)
        if plain is None:
            return frozenset()
        p, clinics = self._decode_registration(plain)
        if p != patient_id:
            raise CorruptRecordError("stored registration does not match its key")
        return clinics

    def put_registration(
        self, stage: WriteStage, patient_id: str, clinics: Iterable[str]
    ) -> None:
        """Set the patient's clinics (none: delete the registration)."""
        key = self._registration_key(patient_id)
        ordered = sorted(set(clinics))
        if not ordered:
            stage._delete(key)
            return
        self._stage_put(stage, key, _pack([patient_id, ordered]))

    def scan(self, resume_token: bytes = b"", limit: int = DEFAULT_SCAN_PAGE) -> ScanPage:
        """Up to `limit` live records of the partition in storage-key order (opaque).

        Committed state only. Tombstones are skipped. The token is the storage
        key of the last record examined; a token from another partition or of
        the wrong shape is rejected.
        """
        return self._scan(resume_token, limit, self._db)

    def _scan(self, resume_token: bytes, limit: int, reader: Any) -> ScanPage:
        if limit <= 0:
            raise ValueError("limit must be positive")
        lo = self._prefix + _CURRENT
        hi = self._prefix + bytes([_CURRENT[0] + 1])
        if resume_token:
            if len(resume_token) != _CURRENT_KEY_LEN or not resume_token.startswith(lo):
                if len(resume_token) == _CURRENT_KEY_LEN and resume_token[4:5] == _CURRENT:
                    raise ValidationError("resume_token", "belongs to another partition")
                raise ValidationError("resume_token", "is not a scan token")
            it = reader.iterator(start=resume_token, include_start=False, stop=hi)
        else:
            it = reader.iterator(start=lo, stop=hi)
        records: list[Record] = []
        last = resume_token
        done = True
        with it:
            for key, sealed in it:
                if len(records) == limit:
                    done = False
                    break
                last = key
                cur = self._decode_current(self._open(key, sealed))
                if not cur.record.deleted:
                    records.append(cur.record)
        return ScanPage(records, last, done)

    def read_snapshot(self, register: bool = True) -> ReadSnapshot:
        """A consistent view of the committed state, for reads that span several
        calls (a paged scan). Use as a context manager; it pins LevelDB's
        snapshot until closed. Registered snapshots may be interrupted by an
        erasure; register=False is for the purger's own short reads."""
        snap = self._db.snapshot()
        if not register:
            return ReadSnapshot(self, snap, None)
        return ReadSnapshot(self, snap, self._read_snapshots.register(self._partition, snap.close))

    def meta(self) -> PartitionMeta:
        """Applied index/term and session clock, as committed."""
        return self._read_meta(None)

    def _read_meta(self, reader: Any) -> PartitionMeta:
        plain = self._get_plain(self._prefix + _META_APPLIED, None, reader)
        if plain is None:
            return PartitionMeta()
        fields = _unpack(plain)
        if not (type(fields) is list and len(fields) == 3 and all(_is_uint(v) for v in fields)):
            raise CorruptRecordError("partition metadata is malformed")
        return PartitionMeta(*fields)

    def settings_blob(self) -> bytes | None:
        """The committed cluster settings (node.settings), None if never set."""
        return self._get_plain(self._prefix + _META_SETTINGS, None, None)

    def anchors_blob(self) -> bytes | None:
        """The committed audit anchors (node.audit_anchors), None if none was recorded."""
        return self._get_plain(self._prefix + _META_AUDIT, None, None)

    def sessions(self) -> Iterator[tuple[bytes, bytes]]:
        """(session key, session blob) of every committed session, in key order."""
        prefix = self._prefix + _SESSION
        with self._db.iterator(prefix=prefix) as it:
            for key, sealed in it:
                yield key[len(prefix) :], self._open(key, sealed)

    # --- staged writes -------------------------------------------------------

    def begin(self) -> WriteStage:
        return WriteStage()

    def commit(self, stage: WriteStage, sync: bool = False) -> None:
        """Write a stage as one WriteBatch. sync=False is safe: the Raft log is
        durable and replay from the committed applied index is idempotent."""
        stage._check_open()
        with self._db.write_batch(transaction=True, sync=sync) as wb:
            for key, sealed in stage._sealed.items():
                if sealed is None:
                    wb.delete(key)
                else:
                    wb.put(key, sealed)
        stage.discard()

    def write_version(
        self,
        stage: WriteStage,
        patient_id: str,
        record_id: str,
        version: int,
        value: bytes,
        deleted: bool,
        retention: int,
    ) -> None:
        """Make `version` the record's current version (a tombstone if deleted).

        The previous current version moves to history; beyond `retention`
        versions in all (current included), the oldest are dropped.
        """
        if retention < 1:
            raise ValueError("retention must be at least 1")
        cur, ck, hp = self._load_current(patient_id, record_id, stage)
        retained: list[int] = []
        if cur is not None:
            if version <= cur.record.version:
                raise ValueError("a record's versions must increase")
            retained = list(cur.retained)
            self._stage_put(
                stage, hp + cur.record.version.to_bytes(8, "big"), self._encode_history(cur.record)
            )
            retained.append(cur.record.version)
        while len(retained) > retention - 1:
            stage._delete(hp + retained.pop(0).to_bytes(8, "big"))
        rec = Record(patient_id, record_id, b"" if deleted else value, version, deleted)
        self._stage_put(stage, ck, self._encode_current(rec, retained))

    def erase_patient(
        self, patient_id: str, stage: WriteStage | None = None, *, index: int = 0
    ) -> int:
        """Delete every key of one patient (current, history and its
        registration); returns the number of records that existed. Without a stage, commits at once.

        With `index` (the erasure's log index), an erasure that deleted any key
        (on disk or staged in this round) also stages its obligation, so the
        purge it owes is recorded in the same write as the deletion. An
        erasure of a patient with no keys owes nothing."""
        own = stage is None
        st = self.begin() if stage is None else stage
        ph = self._patient_hash(patient_id)
        erased = 0
        found = False
        for kind in (_CURRENT, _HISTORY, _REGISTRATION):
            prefix = self._prefix + kind + ph
            keys: set[bytes] = set(st._keys_with_prefix(prefix))
            with self._db.iterator(prefix=prefix, include_value=False) as it:
                keys.update(it)
            for key in sorted(keys):
                found = True
                if kind == _CURRENT and self._get_plain(key, st) is not None:
                    erased += 1
                st._delete(key)
        if found and index > 0:
            self._stage_obligation(st, Obligation(index, OBLIGATION_ERASE))
        if own:
            self.commit(st)
        return erased

    # --- erasure obligations ------------------------------------------------

    def _obligation_key(self, ob: Obligation) -> bytes:
        return self._prefix + _OBLIGATION + ob.index.to_bytes(8, "big") + _OBLIGATION_KINDS[ob.kind]

    def _stage_obligation(self, stage: WriteStage, ob: Obligation) -> None:
        self._stage_put(stage, self._obligation_key(ob), _pack([ob.kind, ob.index]))
        stage.obligations.append(ob)

    def obligations(self) -> list[Obligation]:
        """The purges this replica still owes, oldest first (from the keys alone:
        a partition whose values fail their integrity check still lists them)."""
        return obligations_in(self._db, self._partition)

    def complete_obligations(self, done: Iterable[Obligation]) -> None:
        """Forget obligations whose purge finished (after the purge, never before:
        a crash in between repeats the purge, which is harmless)."""
        with self._db.write_batch(transaction=True) as wb:
            for ob in done:
                wb.delete(self._obligation_key(ob))

    OBLIGATION_KIND = _OBLIGATION  # what a snapshot install keeps (node.snapshots)

    def stage_snapshot_install_obligation(self, stage: WriteStage, index: int) -> None:
        """A snapshot installed at `index` replaced the state and the log before
        it, which may hold data the sender had erased: the purge it owes goes
        into the install's last write (node.snapshots)."""
        self._stage_obligation(stage, Obligation(index, OBLIGATION_SNAPSHOT_INSTALL))

    def put_session(self, stage: WriteStage, key: bytes, blob: bytes) -> None:
        self._stage_put(stage, self._prefix + _SESSION + key, blob)

    def delete_session(self, stage: WriteStage, key: bytes) -> None:
        stage._delete(self._prefix + _SESSION + key)

    def put_settings(self, stage: WriteStage, blob: bytes) -> None:
        self._stage_put(stage, self._prefix + _META_SETTINGS, blob)

    def put_anchors(self, stage: WriteStage, blob: bytes) -> None:
        self._stage_put(stage, self._prefix + _META_AUDIT, blob)

    def put_meta(self, stage: WriteStage, meta: PartitionMeta) -> None:
        fields = [meta.applied_index, meta.applied_term, meta.clock_ms]
        self._stage_put(stage, self._prefix + _META_APPLIED, _pack(fields))

    # --- snapshots ------------------------------------------------------------
    #
    # A snapshot is logical, not a copy of disk: plaintext ids and values,
    # re-hashed and re-sealed by the receiver, so replicas need not share
    # hashing or data keys. It is a stream of msgpack objects after one format
    # byte:
    #   [magic, 1, partition, applied_index, applied_term, clock_ms]
    #   ["g", settings blob]                                           once, if ever set
    #   ["a", audit anchors blob]                                      once, if any
    #   ["r", patient_id, record_id, [[version, deleted, value], ...newest first]]  per record
    #   ["s", client_id, blob]                                                       per session
    #   ["p", patient_id, [clinic, ...]]                                       per registration
    #   ["end", record_count, session_count] or, with registrations,
    #   ["end", record_count, session_count, registration_count]
    # Records come in storage-key order and sessions in client_id order, so
    # replicas with the same key_hasher produce byte-identical snapshots.

    def snapshot_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The partition's state as a stream of chunks, read from one LevelDB snapshot."""
        snap = self._db.snapshot()
        try:
            yield from self._snapshot_from(snap, chunk_size)
        finally:
            snap.close()

    def _snapshot_from(self, snap: Any, chunk_size: int) -> Iterator[bytes]:
        meta = self._read_meta(snap)
        buf = bytearray([_FORMAT])
        buf += msgpack.packb(
            [
                _SNAPSHOT_MAGIC,
                1,
                self._partition,
                meta.applied_index,
                meta.applied_term,
                meta.clock_ms,
            ],
            use_bin_type=True,
        )
        settings = self._get_plain(self._prefix + _META_SETTINGS, None, snap)
        if settings is not None:
            buf += msgpack.packb(["g", settings], use_bin_type=True)
        anchors = self._get_plain(self._prefix + _META_AUDIT, None, snap)
        if anchors is not None:
            buf += msgpack.packb(["a", anchors], use_bin_type=True)
        n_records = 0
        with snap.iterator(prefix=self._prefix + _CURRENT) as it:
            for key, sealed in it:
                cur = self._decode_current(self._open(key, sealed))
                hp = self._prefix + _HISTORY + key[5:]
                versions = [[cur.record.version, cur.record.deleted, cur.record.value]]
                for v in reversed(cur.retained):
                    h = self._load_history(hp, v, None, snap)
                    versions.append([h.version, h.deleted, h.value])
                buf += msgpack.packb(
                    ["r", cur.record.patient_id, cur.record.record_id, versions], use_bin_type=True
                )
                n_records += 1
                if len(buf) >= chunk_size:
                    yield bytes(buf)
                    buf.clear()
        n_sessions = 0
        with snap.iterator(prefix=self._prefix + _SESSION) as it:
            for key, sealed in it:
                buf += msgpack.packb(["s", key[5:], self._open(key, sealed)], use_bin_type=True)
                n_sessions += 1
                if len(buf) >= chunk_size:
                    yield bytes(buf)
                    buf.clear()
        n_regs = 0
        with snap.iterator(prefix=self._prefix + _REGISTRATION) as it:
            for key, sealed in it:
                patient, clinics = self._decode_registration(self._open(key, sealed))
                buf += msgpack.packb(["p", patient, sorted(clinics)], use_bin_type=True)
                n_regs += 1
                if len(buf) >= chunk_size:
                    yield bytes(buf)
                    buf.clear()
        # Without registrations the end marker keeps its old shape, so such a
        # snapshot is byte-identical to one of a release without them.
        end = ["end", n_records, n_sessions] + ([n_regs] if n_regs else [])
        buf += msgpack.packb(end, use_bin_type=True)
        yield bytes(buf)

    def snapshot_bytes(self) -> bytes:
        return b"".join(self.snapshot_chunks())

    def snapshot_stream(self, snap: Any, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """snapshot_chunks over a LevelDB snapshot the caller took (and closes):
        the sender takes it on the event loop, where it matches applied_index,
        and iterates it in a worker thread."""
        return self._snapshot_from(snap, chunk_size)

    def read_meta(self, reader: Any = None) -> PartitionMeta:
        """The metadata as of a LevelDB snapshot (None: as committed)."""
        return self._read_meta(reader)

    def restore(
        self,
        data: bytes,
        check_session: Callable[[bytes, bytes], None] | None = None,
        check_settings: Callable[[bytes], None] | None = None,
    ) -> PartitionMeta:
        return self.restore_chunks([data], check_session, check_settings)

    def restore_chunks(
        self,
        chunks: Iterable[bytes],
        check_session: Callable[[bytes, bytes], None] | None = None,
        check_settings: Callable[[bytes], None] | None = None,
    ) -> PartitionMeta:
        """Replace the partition's whole state with a snapshot's, atomically.

        The snapshot is parsed and checked in full before anything is written;
        `check_session(key, blob)` and `check_settings(blob)` may raise to
        reject a session or the settings. Returns the restored metadata.
        Holds the whole state in memory: for small partitions and tests; the
        node installs received snapshots in bounded batches (node.snapshots).
        """
        parser = SnapshotParser(self._partition, check_session, check_settings)
        stage = WriteStage()
        for chunk in chunks:
            for item in parser.feed(chunk):
                self.stage_item(stage, item)
        meta = parser.finish()
        self.put_meta(stage, meta)
        # The replaced state and log may hold data the snapshot's sender had
        # erased: the purge this owes is recorded in the same write.
        self.stage_snapshot_install_obligation(stage, meta.applied_index)
        obligations = self._prefix + _OBLIGATION
        with self._db.write_batch(transaction=True) as wb:
            with self._db.iterator(prefix=self._prefix, include_value=False) as it:
                for key in it:
                    if key not in stage._sealed and not key.startswith(obligations):
                        wb.delete(key)
            for key, sealed in stage._sealed.items():
                assert sealed is not None
                wb.put(key, sealed)
        stage.discard()
        return meta

    def stage_item(self, stage: WriteStage, item: SnapshotItem) -> int:
        """Re-key and seal one checked snapshot item into `stage`; returns the
        sealed bytes added. A record already in the stage is refused (the
        node's batched install sees repeats only within one batch)."""
        added = 0
        if isinstance(item, SnapshotRecord):
            recs = item.versions
            ck, hp = self._record_keys(item.patient_id, item.record_id)
            if ck in stage._sealed:
                raise SnapshotFormatError("snapshot repeats a record")
            for h in recs[1:]:
                key = hp + h.version.to_bytes(8, "big")
                self._stage_put(stage, key, self._encode_history(h))
                added += len(stage._sealed[key] or b"")
            self._stage_put(
                stage, ck, self._encode_current(recs[0], [h.version for h in reversed(recs[1:])])
            )
            added += len(stage._sealed[ck] or b"")
        elif isinstance(item, SnapshotSettings):
            self.put_settings(stage, item.blob)
            added += len(item.blob)
        elif isinstance(item, SnapshotRegistration):
            key = self._registration_key(item.patient_id)
            if key in stage._sealed:
                raise SnapshotFormatError("snapshot repeats a registration")
            self.put_registration(stage, item.patient_id, item.clinics)
            added += len(stage._sealed[key] or b"")
        elif isinstance(item, SnapshotAnchors):
            self.put_anchors(stage, item.blob)
            added += len(item.blob)
        else:
            self.put_session(stage, item.client_id, item.blob)
            added += len(item.blob)
        return added

    def keys_outside(
        self, kinds: tuple[bytes, ...], reader: Any, batch: int
    ) -> Iterator[list[bytes]]:
        """Every key of the partition except those of the given kind bytes, in
        lists of at most `batch` (read from `reader`, a LevelDB snapshot)."""
        skip = tuple(self._prefix + kind for kind in kinds)
        out: list[bytes] = []
        with reader.iterator(prefix=self._prefix, include_value=False) as it:
            for key in it:
                if key.startswith(skip):
                    continue
                out.append(key)
                if len(out) >= batch:
                    yield out
                    out = []
        if out:
            yield out

    @property
    def key_prefix(self) -> bytes:
        """The partition's key prefix (relative to the store's db)."""
        return self._prefix

    @property
    def db(self) -> LevelDB:
        return self._db

    @property
    def codec(self) -> ValueCodec:
        return self._codec

    def delete_partition(self) -> None:
        """Remove every key of this partition (after the replica moved away)."""
        with (
            self._db.write_batch(transaction=True) as wb,
            self._db.iterator(prefix=self._prefix, include_value=False) as it,
        ):
            for key in it:
                wb.delete(key)


class SnapshotRecord(NamedTuple):
    """One record of a snapshot: its versions, newest first."""

    patient_id: str
    record_id: str
    versions: list[Record]


class SnapshotSession(NamedTuple):
    client_id: bytes  # the session's storage key (its id), as the sender stored it
    blob: bytes


class SnapshotSettings(NamedTuple):
    """The replicated cluster settings in force at the snapshot (node.settings)."""

    blob: bytes


class SnapshotRegistration(NamedTuple):
    """A patient's clinics (node.auth.policy.Registration), never empty."""

    patient_id: str
    clinics: frozenset[str]



class SnapshotAnchors(NamedTuple):
    """The audit chain heads recorded in the partition (node.audit_anchors)."""

    blob: bytes


SnapshotItem = (
    SnapshotRecord | SnapshotSession | SnapshotSettings | SnapshotRegistration | SnapshotAnchors
)


class SnapshotParser:
    """Checks a snapshot stream as its chunks arrive: the header first (of
    this partition), well-formed items, the end marker's counts, nothing
    after it. Holds at most one chunk and one item, so a stream of any size
    is checked in bounded memory; feed() yields each item once it is checked.
    """

    def __init__(
        self,
        partition: int,
        check_session: Callable[[bytes, bytes], None] | None = None,
        check_settings: Callable[[bytes], None] | None = None,
    ) -> None:
        self._partition = partition
        self._check_session = check_session
        self._check_settings = check_settings
        self._settings_seen = False
        self._anchors_seen = False
        self._unpacker = msgpack.Unpacker(
            raw=False, use_list=True, strict_map_key=True, max_buffer_size=0
        )
        self._first = True
        self.meta: PartitionMeta | None = None
        self.counts = [0, 0]  # records, sessions
        self.registrations = 0
        self.ended = False

    def feed(self, chunk: bytes) -> Iterator[SnapshotItem]:
        try:
            if self._first and chunk:
                if chunk[0] != _FORMAT:
                    raise SnapshotFormatError("snapshot has an unknown format")
                chunk = chunk[1:]
                self._first = False
            self._unpacker.feed(chunk)
            for obj in self._unpacker:
                if self.ended:
                    raise SnapshotFormatError("snapshot has data after its end")
                if self.meta is None:
                    self.meta = self._header(obj)
                elif type(obj) is list and obj and obj[0] == "end":
                    expected = ["end", *self.counts]
                    if self.registrations:
                        expected.append(self.registrations)
                    if obj != expected:
                        raise SnapshotFormatError("snapshot counts do not match its contents")
                    self.ended = True
                else:
                    yield self._item(obj)
        except SnapshotFormatError:
            raise
        except (ValidationError, CorruptRecordError, ValueError) as e:
            raise SnapshotFormatError(f"snapshot content is invalid: {type(e).__name__}") from None
        except Exception:
            raise SnapshotFormatError("snapshot is not well-formed") from None

    def finish(self) -> PartitionMeta:
        """The snapshot's metadata, once its end marker was seen."""
        if self.meta is None or not self.ended:
            raise SnapshotFormatError("snapshot is truncated")
        return self.meta

    def _header(self, obj: Any) -> PartitionMeta:
        if not (type(obj) is list and len(obj) == 6 and obj[0] == _SNAPSHOT_MAGIC and obj[1] == 1):
            raise SnapshotFormatError("snapshot header is malformed")
        if not all(_is_uint(v) for v in obj[2:]):
            raise SnapshotFormatError("snapshot header is malformed")
        if obj[2] != self._partition:
            raise SnapshotFormatError("snapshot is of another partition")
        return PartitionMeta(obj[3], obj[4], obj[5])

    def _item(self, obj: Any) -> SnapshotItem:
        if type(obj) is not list or not obj:
            raise SnapshotFormatError("snapshot item is malformed")
        if obj[0] == "r" and len(obj) == 4:
            _, p, r, versions = obj
            if (
                type(p) is not str
                or type(r) is not str
                or type(versions) is not list
                or not versions
            ):
                raise SnapshotFormatError("snapshot record is malformed")
            recs: list[Record] = []
            for v in versions:
                if not (type(v) is list and len(v) == 3 and _is_uint(v[0]) and v[0] > 0):
                    raise SnapshotFormatError("snapshot version is malformed")
                if type(v[1]) is not bool or type(v[2]) is not bytes:
                    raise SnapshotFormatError("snapshot version is malformed")
                if recs and v[0] >= recs[-1].version:
                    raise SnapshotFormatError("snapshot versions are not newest first")
                recs.append(Record(p, r, v[2], v[0], v[1]))
            self.counts[0] += 1
            return SnapshotRecord(p, r, recs)
        if obj[0] == "g" and len(obj) == 2:
            if type(obj[1]) is not bytes or self._settings_seen or self.counts != [0, 0] \
                    or self.registrations:
                raise SnapshotFormatError("snapshot settings are malformed")
            if self._check_settings is not None:
                self._check_settings(obj[1])
            self._settings_seen = True
            return SnapshotSettings(obj[1])
        if obj[0] == "a" and len(obj) == 2:
            if type(obj[1]) is not bytes or self._anchors_seen or self.counts != [0, 0]:
                raise SnapshotFormatError("snapshot audit anchors are malformed")
            check_anchors_blob(obj[1])
            self._anchors_seen = True
            return SnapshotAnchors(obj[1])
        if obj[0] == "s" and len(obj) == 3:
            _, cid, blob = obj
            if type(cid) is not bytes or type(blob) is not bytes:
                raise SnapshotFormatError("snapshot session is malformed")
            if self._check_session is not None:
                self._check_session(cid, blob)
            self.counts[1] += 1
            return SnapshotSession(cid, blob)
        if obj[0] == "p" and len(obj) == 3:
            _, p, clinics = obj
            if (type(p) is not str or type(clinics) is not list or not clinics
                    or not all(type(c) is str and c for c in clinics)
                    or len(set(clinics)) != len(clinics)):
                raise SnapshotFormatError("snapshot registration is malformed")
            self.registrations += 1
            return SnapshotRegistration(p, frozenset(clinics))
        raise SnapshotFormatError("snapshot item has an unknown kind")


def obligations_in(db: LevelDB, partition: int) -> list[Obligation]:
    """The erasure obligations stored for one partition, oldest first, read from
    the keys only (no value is opened: they hold nothing the purge needs)."""
    prefix = partition.to_bytes(4, "big") + _OBLIGATION
    out: list[Obligation] = []
    with db.iterator(prefix=prefix, include_value=False) as it:
        for key in it:
            kind = _OBLIGATION_NAMES.get(key[-1:])
            if len(key) != _OBLIGATION_KEY_LEN or kind is None:
                raise CorruptRecordError("an erasure obligation key is malformed")
            out.append(Obligation(int.from_bytes(key[5:13], "big"), kind))
    return out


__all__ = [
    "KEY_HASH_BYTES",
    "OBLIGATION_ERASE",
    "OBLIGATION_SNAPSHOT_INSTALL",
    "CorruptRecordError",
    "LevelDB",
    "Obligation",
    "PartitionMeta",
    "ReadSnapshot",
    "Record",
    "RecordStore",
    "ScanPage",
    "SnapshotAnchors",
    "SnapshotFormatError",
    "SnapshotItem",
    "SnapshotParser",
    "SnapshotRecord",
    "SnapshotRegistration",
    "SnapshotSession",
    "SnapshotSettings",
    "WriteStage",
    "blake2b_key_hasher",
    "obligations_in",
]
