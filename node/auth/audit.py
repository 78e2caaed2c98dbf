"""The audit log: every access, append-only, hash-chained, encrypted at rest.

    medkv audit verify --data-dir DIR --key-file KEY [--expect-head SEQ:HASH] [--json]
    medkv audit show   --data-dir DIR --key-file KEY [--subject S] [--patient P]
                       [--since T] [--until T] [--json]
    medkv audit head   --data-dir DIR --key-file KEY

(On a running cluster, `medkv audit query|verify` ask the nodes instead:
Admin.AuditQuery / AuditVerify, node/audit_service.py.)

Every call a node answers (reads and scans included, refusals too) becomes one
entry: when, which node and peer address, who (subject, roles, clinics, token
id), what (method, permission, partition, patient and records as keyed
hashes), the outcome (gRPC status code) and, for a refusal, the reason.
Break-glass access is flagged with its reason.

No patient identifier is ever in an entry in clear: patient and record ids
are keyed BLAKE2b hashes under a key derived from the node's index key (the cluster-wide
storage-key hashing secret, node/crypto/keyring.py), so every node hashes a
patient to the same value and an auditor can find a patient's accesses by
hashing the id with the same key (`show --patient`), while the file alone
reveals nothing. On top of that every entry is sealed like all data at rest
(EnvelopeCodec: AES-256-GCM under the node's active data key, associated data
binding it to this log), so the files are ciphertext.

Tamper evidence: entry n carries its sequence number and the chain hash of
entry n-1; chain hash(n) = BLAKE2b keyed with the chain key over entry n's
plaintext (the exact bytes sealed). An
edited entry fails authentication (or, re-sealed by someone holding the keys,
breaks the chain at the next entry); a deleted entry leaves a gap in the
sequence; a reordered pair shows as a sequence out of order; a truncated tail
is shorter than the head recorded in AUDIT_DIR/HEAD (sealed; a node rewrites
it within a second of each batch and at every clean close) and, against a rollback of HEAD too, than the chain heads the
node writes into replicated state (head(): the anchor; verify(expect_head=)).

Files: AUDIT_DIR/audit-<first seq, 12 digits>.log, one base64 line per entry
(a sealed msgpack map; `show --json` prints it as JSON),
a new segment every `segment_bytes`; AUDIT_DIR/HEAD. Entries are appended in
memory (append(): hash the ids, assign the seq; cheap, any thread) and
chained, sealed and written in batches (flush(): one write and one fsync per
batch, then HEAD); AuditWriter does that off the
event loop as group commit: a batch is whatever accumulated during the
previous fsync.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.crypto import CryptoError
from node.crypto.keyfile import atomic_write, fsync_dir

FORMAT_VERSION = 1
SEGMENT_PREFIX = "audit-"
SEGMENT_SUFFIX = ".log"
HEAD_FILE = "HEAD"
LOG_ID_FILE = "LOG_ID"
AUDIT_DIR = "audit"  # under the node's data dir
DEFAULT_SEGMENT_BYTES = 16 << 20
_AD_PREFIX = b"medkv/v1 audit "
_PATIENT_PURPOSE = b"medkv/v1 audit patient hash"
_CHAIN_PURPOSE = b"medkv/v1 audit chain"
_HASH_BYTES = 16  # hex-encoded to 32 characters: identifiers, not security margins


class AuditError(Exception):
    """The audit log cannot be opened or written; names the file, never an entry's content."""


class Sealer(Protocol):
    """What seals the entries: node.crypto.envelope.EnvelopeCodec in a node."""

    def seal(self, key: bytes, plaintext: bytes) -> bytes: ...

    def open(self, key: bytes, sealed: bytes) -> bytes: ...


@dataclass(frozen=True)
class AuditKeys:
    """The two MAC keys: one hashes patient/record ids, one chains the entries."""

    patient_key: bytes = field(repr=False)
    chain_key: bytes = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes) -> AuditKeys:
        def hk(purpose: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)

        return cls(hk(_PATIENT_PURPOSE), hk(_CHAIN_PURPOSE))

    @classmethod
    def from_keyring(cls, keyring: Any) -> AuditKeys:
        """From the keyring's index key: the same on every node of a cluster, never rotated."""
        return cls.derive(keyring.index_key)

    # Keyed BLAKE2b is a MAC by design (RFC 7693) and costs a fraction of an
    # HMAC-SHA256 set-up per call; these run on every access.
    def patient_hash(self, patient_id: str) -> str:
        return hashlib.blake2b(b"patient\0" + patient_id.encode(), key=self.patient_key,
                               digest_size=_HASH_BYTES).hexdigest()

    def record_hash(self, patient_id: str, record_id: str) -> str:
        msg = b"record\0" + patient_id.encode() + b"\0" + record_id.encode()
        return hashlib.blake2b(msg, key=self.patient_key, digest_size=_HASH_BYTES).hexdigest()

    def chain(self, plaintext: bytes) -> str:
        return hashlib.blake2b(plaintext, key=self.chain_key, digest_size=32).hexdigest()

    def genesis(self, log_id: str) -> str:
        return self.chain(b"genesis\0" + log_id.encode())


@dataclass(slots=True)  # built once per call: a frozen init costs twice as much
class AuditEvent:
    """One access, as the interceptor sees it (raw ids: append() hashes them)."""

    method: str
    outcome: str  # the gRPC status code name: OK, PERMISSION_DENIED, UNAUTHENTICATED, ...
    subject: str = ""  # "" when the caller could not be authenticated
    roles: Sequence[str] = ()
    clinics: Sequence[str] = ()
    permission: str = ""
    partition: int | None = None
    patient_id: str | None = field(default=None, repr=False)
    record_ids: Sequence[str] = field(default=(), repr=False)
    reason: str = ""  # why it was refused (names no patient data)
    break_glass: bool = False
    break_glass_reason: str = ""
    request_id: str = ""
    peer: str = ""  # the caller's address
    token_id: str = ""
    cert: str = ""  # the caller's certificate fingerprint
    time: float | None = None  # default: when appended


@dataclass(frozen=True)
class ChainHead:
    """The newest entry's sequence number and chain hash: what gets anchored."""

    seq: int
    hash: str

    def text(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        seq, _, h = text.partition(":")
        if not seq.isdigit() or len(h) != 64:
            raise ValueError(f"{text!r} is not SEQ:HASH (a chain head, as `medkv audit head` prints)")
        return cls(int(seq), h)


def _encode(entry: dict[str, Any]) -> bytes:
    # The chain hashes these exact bytes (authenticated by the seal), so no
    # canonical form is needed: readers hash what they decrypt.
    return bytes(msgpack.packb(entry, use_bin_type=True))


def _decode(plain: bytes) -> Any:
    return msgpack.unpackb(plain, raw=False, strict_map_key=True)


def _segment_name(first_seq: int) -> str:
    return f"{SEGMENT_PREFIX}{first_seq:012d}{SEGMENT_SUFFIX}"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
        num = p.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
        if num.isdigit():
            out.append((int(num), p))
    return sorted(out)


class AuditLog:
    """One node's audit log. Thread-safe: append() from anywhere, flush() from one place."""

    def __init__(
        self, directory: Path, sealer: Sealer, keys: AuditKeys, *, log_id: str,
        node_id: int = 0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.time, head_interval: float = 0.0,
    ) -> None:
        self.directory = Path(directory)
        # HEAD is rewritten by a flush at most this often (0: every flush), and by
        # every forced flush (a clean close). Each rewrite costs two fsyncs; a node
        # flushing dozens of batches a second keeps HEAD within a second of the
        # files, and its anchors in replicated state cover the rest.
        self.head_interval = head_interval
        self._head_written_at = float("-inf")
        self._head_seq = -1  # the seq HEAD holds; unknown until this log writes it
        self.sealer = sealer
        self.keys = keys
        self.log_id = log_id
        self.node_id = node_id
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._ad = _AD_PREFIX + log_id.encode()
        self._lock = threading.Lock()  # seq and buffer
        self._io_lock = threading.Lock()  # one flush at a time; the chain
        self._buffer: list[dict[str, Any]] = []
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_log_id(self.directory, log_id)
        self._seq, self._hash = self._recover()
        self._chained_seq = self._seq
        self._durable = ChainHead(self._seq, self._hash)
        segs = _segments(self.directory)
        self._segment: Path | None = segs[-1][1] if segs else None

    # ---- opening

    def _open_line(self, line: bytes, where: str) -> tuple[dict[str, Any], bytes]:
        try:
            sealed = base64.b64decode(line, validate=True)
            plain = self.sealer.open(self._ad, sealed)
            entry = _decode(plain)
        except (binascii.Error, ValueError, CryptoError, msgpack.UnpackException):
            raise AuditError(
                f"{where}: the entry does not authenticate (edited, corrupt, or from another "
                "log); run `medkv audit verify` and keep the files for investigation"
            ) from None
        if not isinstance(entry, dict):
            raise AuditError(f"{where}: not an audit entry")
        return entry, plain

    def _recover(self) -> tuple[int, str]:
        """(last seq, its chain hash): from the last complete line, after cutting off a
        line torn by a crash mid-write. Refuses a log that ends before HEAD (truncated)."""
        head = read_head(self.directory, self.sealer, self._ad)
        segs = _segments(self.directory)
        last: tuple[int, str] | None = None
        for _, path in reversed(segs):
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # A crash in the middle of a batch: drop the partial line (never durable).
                cut = data.rfind(b"\n") + 1
                with open(path, "r+b") as f:
                    f.truncate(cut)
                    os.fsync(f.fileno())
                data = data[:cut]
            lines = data.splitlines()
            if lines:
                entry, plain = self._open_line(lines[-1], f"{path.name} line {len(lines)}")
                last = (int(entry["seq"]), self.keys.chain(plain))
                break
        seq, h = last if last is not None else (0, self.keys.genesis(self.log_id))
        if head is not None and (head.seq > seq or (head.seq == seq and head.hash != h)):
            raise AuditError(
                f"audit log {self.directory} ends at entry {seq} but its HEAD records entry "
                f"{head.seq}: the log was truncated or rewritten; run `medkv audit verify`"
            )
        return seq, h

    # ---- writing

    def append(self, event: AuditEvent) -> int:
        """Add one entry; returns its seq. Cheap (ids hashed, no encryption): the
        entry is encoded, chained and sealed by the next flush, off the event loop."""
        k = self.keys
        entry: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "seq": 0,
            "prev": "",
            "time": round(event.time if event.time is not None else self._clock(), 6),
            "node": self.node_id,
            "peer": event.peer,
            "subject": event.subject,
            "roles": sorted(event.roles),
            "clinics": sorted(event.clinics),
            "token_id": event.token_id,
            "cert": event.cert,
            "method": event.method,
            "permission": event.permission,
            "partition": event.partition,
            "patient": k.patient_hash(event.patient_id) if event.patient_id is not None else None,
            "records": [k.record_hash(event.patient_id or "", r) for r in event.record_ids],
            "outcome": event.outcome,
            "reason": event.reason,
            "break_glass": event.break_glass,
            "break_glass_reason": event.break_glass_reason,
            "request_id": event.request_id,
        }
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._buffer.append(entry)
            return self._seq

    @property
    def pending(self) -> int:
        return len(self._buffer)

    @property
    def last_seq(self) -> int:
        """The newest appended entry's seq (durable or not)."""
        return self._seq

    def head(self) -> ChainHead:
        """The newest chained entry (everything flushed so far)."""
        return ChainHead(self._chained_seq, self._hash)

    def durable_head(self) -> ChainHead:
        """The newest entry on disk: the one to anchor in replicated state."""
        return self._durable

    def flush(self, *, force_head: bool = False) -> ChainHead:
        """Chain, seal and write every appended entry (one write, one fsync), then HEAD
        (when `head_interval` has passed since the last rewrite, or `force_head`).
        Blocking IO and CPU: run it off the event loop (AuditWriter does)."""
        with self._io_lock:
            with self._lock:
                entries, self._buffer = self._buffer, []
            if not entries:
                if force_head or self._head_due():
                    self._write_head(self._durable)
                return self._durable
            h = self._hash
            lines = []
            for entry in entries:
                entry["prev"] = h
                plain = _encode(entry)
                lines.append(base64.b64encode(self.sealer.seal(self._ad, plain)) + b"\n")
                h = self.keys.chain(plain)
            head = ChainHead(int(entries[-1]["seq"]), h)
            first = int(entries[0]["seq"])
            seg = self._segment
            if seg is None or seg.stat().st_size >= self.segment_bytes:
                seg = self.directory / _segment_name(first)
                new = True
            else:
                new = False
            fd = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                data = memoryview(b"".join(lines))
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._chained_seq, self._hash = head.seq, head.hash
            if new:
                fsync_dir(self.directory)
                self._segment = seg
            self._durable = head
            if force_head or self._head_due():
                self._write_head(head)
            return head

    @property
    def head_stale(self) -> bool:
        """HEAD does not record the newest durable entry yet."""
        return self._durable.seq not in (0, self._head_seq)

    def _head_due(self) -> bool:
        return time.monotonic() - self._head_written_at >= self.head_interval

    def _write_head(self, head: ChainHead) -> None:
        if head.seq == 0 or head.seq == self._head_seq:
            return  # nothing to record, or HEAD says it already
        write_head(self.directory, self.sealer, self._ad, head)
        self._head_seq = head.seq
        self._head_written_at = time.monotonic()

    def reseal(self) -> int:
        """Seal every entry again under the sealer's active key, for a data key
        rotation that wants to retire the old keys: the plaintexts, seqs and chain
        hashes do not change (the chain is over plaintext), only the envelopes. Each
        segment is replaced atomically, so a crash leaves it old or new, both
        readable while the old key exists. A line that does not open (a torn tail)
        is kept as it is. Blocking: run it off the event loop. Returns the count."""
        count = 0
        with self._io_lock:
            for _, path in _segments(self.directory):
                out = []
                for line in path.read_bytes().splitlines():
                    try:
                        plain = self.sealer.open(self._ad, base64.b64decode(line, validate=True))
                    except (binascii.Error, ValueError, CryptoError):
                        out.append(line)
                        continue
                    out.append(base64.b64encode(self.sealer.seal(self._ad, plain)))
                    count += 1
                if out:
                    atomic_write(path, b"\n".join(out) + b"\n")
            if self._durable.seq:
                write_head(self.directory, self.sealer, self._ad, self._durable)
                self._head_seq = self._durable.seq
                self._head_written_at = time.monotonic()
        return count

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        """No flush runs inside (appends still do): the files and HEAD agree while a
        reader looks at both. Blocking: use it off the event loop."""
        with self._io_lock:
            yield

    def key_ids_in_use(self) -> set[int]:
        """The data key ids the sealed entries are under (headers only, no decryption):
        a data key still listed here must not be retired."""
        ids: set[int] = set()
        for _, path in _segments(self.directory):
            for line in path.read_bytes().splitlines():
                with contextlib.suppress(binascii.Error, ValueError):
                    ids.add(int.from_bytes(base64.b64decode(line[:8])[1:5], "big"))
        return ids


def write_head(directory: Path, sealer: Sealer, ad: bytes, head: ChainHead) -> None:
    body = json.dumps({"seq": head.seq, "hash": head.hash}).encode()
    atomic_write(directory / HEAD_FILE, base64.b64encode(sealer.seal(ad + b" HEAD", body)) + b"\n")


def read_head(directory: Path, sealer: Sealer, ad: bytes) -> ChainHead | None:
    path = directory / HEAD_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(sealer.open(ad + b" HEAD", base64.b64decode(path.read_bytes().strip(),
                                                                      validate=True)))
        return ChainHead(int(doc["seq"]), str(doc["hash"]))
    except (binascii.Error, ValueError, KeyError, TypeError, CryptoError):
        raise AuditError(f"{path}: does not authenticate (edited or corrupt)") from None


class AuditWriter:
    """Group commit for an AuditLog on an asyncio loop: flushes run in a thread, one
    at a time, each taking everything appended while the previous one ran.

    `on_failure` is called with the exception if a flush fails: an access that
    cannot be audited must not go on being served (the node fail-stops)."""

    def __init__(self, log: AuditLog, on_failure: Callable[[BaseException], None] | None = None,
                 max_delay: float = 0.005) -> None:
        self.log = log
        self.on_failure = on_failure
        self.max_delay = max_delay
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, event: AuditEvent) -> int:
        seq = self.log.append(event)
        self._wake.set()
        return seq

    async def durable(self, seq: int) -> None:
        """Wait until entry `seq` is on disk."""
        if self.log.durable_head().seq >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        while not self._closing or self.log.pending:
            if self.log.head_stale:
                # HEAD lags the files (AuditLog.head_interval): bring it up to date
                # once the interval is over, even if no new entry comes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.log.head_interval)
            else:
                await self._wake.wait()
            self._wake.clear()
            if self.max_delay and not self._waiters:
                await asyncio.sleep(self.max_delay)  # let a batch form
            try:
                head = await asyncio.to_thread(self.log.flush)
            except Exception as e:
                for _, fut in self._waiters:
                    if not fut.done():
                        fut.set_exception(AuditError(f"audit log write failed: {e}"))
                self._waiters.clear()
                if self.on_failure is not None:
                    self.on_failure(e)
                return
            keep = []
            for seq, fut in self._waiters:
                if seq <= head.seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((seq, fut))
            self._waiters = keep
            if self._closing and not self.log.pending:
                return

    async def close(self) -> None:
        """Flush everything and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            await asyncio.to_thread(self.log.flush, force_head=True)
        else:
            await asyncio.to_thread(self.log.flush, force_head=True)


# ---- reading and verification ------------------------------------------------


@dataclass
class VerifyReport:
    entries: int = 0
    head: ChainHead | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Read:
    seq: int
    prev: str
    hash: str
    where: str


def read_entries(
    directory: Path, sealer: Sealer, log_id: str, torn: list[str] | None = None,
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(where, entry or None when it does not authenticate), in file order.

    A last line without its newline (a crash mid-write, never made durable nor
    counted in HEAD) is skipped and named in `torn`."""
    for where, entry, _ in _read_raw(directory, sealer, log_id, torn):
        yield where, entry


def _read_raw(
    directory: Path, sealer: Sealer, log_id: str, torn: list[str] | None = None,
) -> Iterator[tuple[str, dict[str, Any] | None, bytes]]:
    ad = _AD_PREFIX + log_id.encode()
    for _, path in _segments(Path(directory)):
        lines = path.read_bytes().split(b"\n")
        if lines[-1] != b"" and torn is not None:
            torn.append(f"{path.name} line {len(lines)}")
        for i, line in enumerate(lines[:-1], 1):
            where = f"{path.name} line {i}"
            try:
                plain = sealer.open(ad, base64.b64decode(line, validate=True))
                entry = _decode(plain)
                yield where, entry if isinstance(entry, dict) else None, plain
            except (binascii.Error, ValueError, CryptoError, msgpack.UnpackException):
                yield where, None, b""


def chain_hash_at(
    directory: Path, sealer: Sealer, keys: AuditKeys, log_id: str, seq: int,
) -> str | None:
    """The chain hash of entry `seq` as the files hold it (None: not there or does
    not authenticate). Reads only the segment that should hold it."""
    if seq <= 0:
        return None
    ad = _AD_PREFIX + log_id.encode()
    segs = [path for first, path in _segments(Path(directory)) if first <= seq]
    if not segs:
        return None
    for line in segs[-1].read_bytes().split(b"\n")[:-1]:
        try:
            plain = sealer.open(ad, base64.b64decode(line, validate=True))
            entry = _decode(plain)
        except (binascii.Error, ValueError, CryptoError, msgpack.UnpackException):
            continue
        if isinstance(entry, dict) and entry.get("seq") == seq:
            return keys.chain(plain)
    return None


def verify(
    directory: Path, sealer: Sealer, keys: AuditKeys, log_id: str,
    expect_head: ChainHead | None = None,
) -> VerifyReport:
    """Check every entry and the chain; name where each break is.

    Detects: an entry that does not authenticate (edited without the keys), a
    chain break (an entry rewritten with the keys), a gap (deleted entries), a
    sequence out of order (reordered entries), a duplicate, a missing start,
    and a tail shorter than HEAD or than `expect_head` (truncated)."""
    directory = Path(directory)
    rep = VerifyReport()
    reads: list[_Read] = []
    torn: list[str] = []
    for where, entry, plain in _read_raw(directory, sealer, log_id, torn):
        if entry is None:
            rep.problems.append(f"{where}: entry does not authenticate (edited or corrupt)")
            continue
        reads.append(_Read(int(entry.get("seq", -1)), str(entry.get("prev", "")),
                           keys.chain(plain), where))
    rep.entries = len(reads)
    rep.warnings += [f"{w}: incomplete last line (a crash during a write; never durable)"
                     for w in torn]
    by_seq: dict[int, _Read] = {}
    for r in reads:
        if r.seq in by_seq:
            rep.problems.append(f"{r.where}: entry {r.seq} appears again (first at "
                                f"{by_seq[r.seq].where}): duplicated")
        else:
            by_seq[r.seq] = r
    seen = set(by_seq)
    if reads:
        first = min(seen)
        if first != 1:
            rep.problems.append(f"the log starts at entry {first}: entries 1..{first - 1} "
                                "were removed")
        elif by_seq[1].prev != keys.genesis(log_id):
            rep.problems.append(f"{by_seq[1].where}: entry 1 does not start this log's chain")
    for a, b in itertools.pairwise(reads):
        if b.seq == a.seq + 1:
            continue
        if b.seq <= a.seq:
            rep.problems.append(f"{b.where}: entry {b.seq} comes after entry {a.seq}: reordered")
            continue
        missing = [s for s in range(a.seq + 1, b.seq) if s not in seen]
        if missing:
            rep.problems.append(
                f"{b.where}: entries {missing[0]}..{missing[-1]} are missing before entry "
                f"{b.seq}: deleted"
            )
        else:
            rep.problems.append(f"{b.where}: entry {b.seq} comes before entry {a.seq + 1}: "
                                "reordered")
    for s, r in sorted(by_seq.items()):
        prev = by_seq.get(s - 1)
        if prev is not None and r.prev != prev.hash:
            rep.problems.append(
                f"{r.where}: entry {s} does not chain to entry {s - 1} ({prev.where}): "
                f"entry {s - 1} or {s} was rewritten"
            )
    last = max(seen) if seen else 0
    rep.head = ChainHead(last, by_seq[last].hash) if seen else None
    try:
        head_file = read_head(directory, sealer, _AD_PREFIX + log_id.encode())
    except AuditError as e:
        rep.problems.append(str(e))
        head_file = None
    else:
        if head_file is None and reads:
            rep.problems.append(f"{directory / HEAD_FILE} is missing although the log has "
                                "entries: removed (the tail may have been cut with it)")
    for name, want in (("HEAD", head_file), ("the anchored head", expect_head)):
        if want is None:
            continue
        got = by_seq.get(want.seq)
        if want.seq > last:
            rep.problems.append(
                f"the log ends at entry {last} but {name} records entry {want.seq}: "
                "truncated (the tail was removed)"
            )
        elif got is not None and got.hash != want.hash:
            rep.problems.append(f"{got.where}: entry {want.seq} differs from {name}: rewritten")
    return rep


# ---- command line ----------------------------------------------------------


def _open_node_log(data_dir: Path, key_file: Path, audit_dir: Path | None) -> tuple[Path, Sealer, AuditKeys]:
    from node.crypto.envelope import EnvelopeCodec
    from node.crypto.keyring import open_keyring

    keyring = open_keyring(data_dir, key_file)
    return (audit_dir or data_dir / AUDIT_DIR), EnvelopeCodec(keyring), AuditKeys.from_keyring(keyring)


def _time_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: an ISO time or Unix seconds") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="medkv audit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, text in (("verify", "check the chain; name every break"),
                       ("show", "print entries (filters: --subject, --patient, --since, --until)"),
                       ("head", "print the chain head (SEQ:HASH) for anchoring")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--data-dir", type=Path, required=True, help="the node's data directory")
        p.add_argument("--key-file", type=Path, required=True, help="the cluster's master key file")
        p.add_argument("--audit-dir", type=Path, default=None, help="default DATA_DIR/audit")
        p.add_argument("--log-id", default=None, help="default: node-<id> from the entries")
        p.add_argument("--json", action="store_true")
        if name == "verify":
            p.add_argument("--expect-head", type=ChainHead.parse, default=None, metavar="SEQ:HASH",
                           help="the anchored chain head the log must reach")
        if name == "show":
            p.add_argument("--subject")
            p.add_argument("--patient", help="a patient id (hashed with the cluster's key)")
            p.add_argument("--since", type=_time_arg)
            p.add_argument("--until", type=_time_arg)
    return ap


def log_id_for_node(node_id: int) -> str:
    return f"node-{node_id}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        directory, sealer, keys = _open_node_log(args.data_dir, args.key_file, args.audit_dir)
    except (CryptoError, OSError) as e:
        print(f"medkv audit: {e}", file=sys.stderr)
        return 1
    log_id = args.log_id or _guess_log_id(directory)
    if args.cmd in ("verify", "head"):
        rep = verify(directory, sealer, keys, log_id, getattr(args, "expect_head", None))
        if args.cmd == "head":
            print(rep.head.text() if rep.head else "0:" + keys.genesis(log_id))
            return 0 if rep.ok else 1
        if args.json:
            print(json.dumps({"ok": rep.ok, "entries": rep.entries,
                              "head": rep.head.text() if rep.head else None,
                              "problems": rep.problems, "warnings": rep.warnings}))
        else:
            for p in rep.problems:
                print(f"TAMPERED: {p}")
            print(f"{'ok' if rep.ok else 'FAILED'}: {rep.entries} entries, head "
                  f"{rep.head.text() if rep.head else 'none'}")
        return 0 if rep.ok else 1
    want_patient = keys.patient_hash(args.patient) if args.patient else None
    for where, entry in read_entries(directory, sealer, log_id):
        if entry is None:
            print(f"medkv audit: {where}: entry does not authenticate (run verify)", file=sys.stderr)
            continue
        if ((args.subject and entry.get("subject") != args.subject)
                or (want_patient and entry.get("patient") != want_patient)
                or (args.since is not None and entry["time"] < args.since)
                or (args.until is not None and entry["time"] > args.until)):
            continue
        if args.json:
            print(json.dumps(entry, sort_keys=True))
        else:
            when = datetime.fromtimestamp(entry["time"], UTC).isoformat(timespec="milliseconds")
            flag = " BREAK-GLASS" if entry.get("break_glass") else ""
            print(f"{entry['seq']:>8} {when} {entry['subject'] or '-':20} "
                  f"{','.join(entry['roles']) or '-':12} {entry['method'].rsplit('/', 1)[-1]:14} "
                  f"{entry['outcome']:18} patient={entry['patient'] or '-'}{flag}")
    return 0


def _guess_log_id(directory: Path) -> str:
    marker = directory / LOG_ID_FILE
    if marker.exists():
        return marker.read_text().strip()
    raise SystemExit(f"medkv audit: {marker} is missing; pass --log-id node-<id>")


def write_log_id(directory: Path, log_id: str) -> None:
    """AUDIT_DIR/LOG_ID names the log (not secret: node-<id>). A log never changes id."""
    path = Path(directory) / LOG_ID_FILE
    if path.exists():
        have = path.read_text().strip()
        if have != log_id:
            raise AuditError(f"{path} names log {have!r}, not {log_id!r}: another node's log?")
        return
    path.write_text(log_id + "\n")


__all__ = [
    "AuditError", "AuditEvent", "AuditKeys", "AuditLog", "AuditWriter", "ChainHead",
    "VerifyReport", "chain_hash_at", "read_entries", "verify",
]
