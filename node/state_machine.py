"""The key-value state machine of one partition: committed Raft entries in, results out.

apply() takes the committed entries of one Ready in log order and applies them
as one WriteBatch that also records the applied index, so a crash leaves the
partition exactly at some applied index and replay from there is idempotent.

Every decision is a function of the entries alone (versions are Raft indexes,
time is the leader's ts_ms in each command, session order is by index), so
replicas fed the same log hold byte-identical state. A committed entry that
does not decode or breaks a limit is answered INVALID_ARGUMENT and changes
nothing; it must never wedge the partition.

Semantics of writes (the version of every write is the index of its entry):
  * Put: always applies.
  * CompareAndSet: applies iff the record's version equals expected_version,
    where an absent or deleted record counts as version 0.
  * Delete: writes a tombstone (kept in history); with expected_version only
    at that version (FAILED_PRECONDITION otherwise); NOT_FOUND if there is no
    live record.
  * Batch: checks and deletes are judged against the state before the batch;
    if any fails (FAILED_PRECONDITION / NOT_FOUND, naming ops[i]) nothing
    applies; otherwise every write applies at one version.
  * ErasePatient: every record and retained version of the patient is removed,
    and, when there was any, an erasure obligation is recorded in the same write
    (node.erasure purges the older copies off the Raft loop).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from node.commands import (
    BATCH_CHECK,
    BATCH_DELETE,
    BATCH_PUT,
    Batch,
    CommandDecodeError,
    CompareAndSet,
    Delete,
    ErasePatient,
    Noop,
    Put,
    WriteCommand,
    decode_command,
    validate_command,
)
from node.limits import DEFAULT_HISTORY_LIMIT, DEFAULT_SCAN_PAGE, ValidationError
from node.record_store import PartitionMeta, ReadSnapshot, Record, RecordStore, ScanPage, WriteStage
from node.sessions import Outcome, SessionTable, StoredResult, check_session_blob

FAILED_PRECONDITION = "FAILED_PRECONDITION"
NOT_FOUND = "NOT_FOUND"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
SESSION_EXPIRED = "SESSION_EXPIRED"


class ApplyOrderError(RuntimeError):
    """Entries handed over out of log order: a bug in the host, never skipped over."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one entry.

    version is 0 unless a write applied (or this is a retry of one that did).
    write_key is the entry's (client_id, seq) when it decoded to a write, so
    the proposer can find its result; None for empty entries, Noops and
    undecodable data.
    """

    index: int
    version: int
    error_code: str | None = None
    message: str = ""
    duplicate: bool = False
    write_key: tuple[bytes, int] | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


class PartitionStateMachine:
    """One partition's key-value state machine over a RecordStore."""

    def __init__(
        self,
        store: RecordStore,
        history_retention: int = 16,
        session_ttl_ms: int = 3_600_000,
        max_sessions: int = 100_000,
        max_results_per_session: int = 256,
    ) -> None:
        # All of these are cluster-wide settings: replicas configured
        # differently would diverge.
        if history_retention < 1:
            raise ValueError("history_retention must be at least 1")
        self._store = store
        self._retention = history_retention
        self._sessions = SessionTable(session_ttl_ms, max_sessions, max_results_per_session)
        self._meta = PartitionMeta()
        # Set when an apply or a restore recorded an erasure obligation (durably,
        # in the same write); the host hands it to the purger and clears it.
        self.purge_due = False
        self._reload()

    @property
    def store(self) -> RecordStore:
        return self._store

    @property
    def applied_index(self) -> int:
        return self._meta.applied_index

    @property
    def applied_term(self) -> int:
        return self._meta.applied_term

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def _reload(self) -> None:
        """Rebuild in-memory state from what is committed on disk."""
        self._meta = self._store.meta()
        self._sessions.load(self._meta.clock_ms, self._store.sessions())

    # --- apply ---------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, int, bytes]]) -> list[ApplyResult]:
        """Apply committed (index, term, data) entries in log order, as one write.

        Entries at or below the applied index were applied before (a replay
        after a restart) and are answered duplicate=True without effect. A gap
        raises ApplyOrderError and applies nothing of this call.
        """
        results: list[ApplyResult] = []
        applied, term = self._meta.applied_index, self._meta.applied_term
        stage = self._store.begin()
        try:
            for index, entry_term, data in entries:
                if index <= applied:
                    # No write_key: whoever waits for this write gets the answer
                    # of the first application, which happened before a restart.
                    results.append(ApplyResult(index, 0, None, "already applied", duplicate=True))
                    continue
                if index != applied + 1:
                    raise ApplyOrderError(f"entry {index} follows applied index {applied}")
                results.append(self._apply_one(stage, index, data))
                applied, term = index, entry_term
            if applied == self._meta.applied_index:
                stage.discard()  # nothing new: a pure replay
                return results
            puts, dropped = self._sessions.take_changes()
            for cid in sorted(dropped):
                self._store.delete_session(stage, cid)
            for cid, blob in puts.items():
                self._store.put_session(stage, cid, blob)
            self._store.put_meta(stage, PartitionMeta(applied, term, self._sessions.clock_ms))
            owes = bool(stage.obligations)
            self._store.commit(stage)
            self.purge_due = self.purge_due or owes
        except BaseException:
            # Nothing of this round reached the disk; the in-memory sessions
            # may have moved ahead of it, so rebuild them from the disk.
            stage.discard()
            self._reload()
            raise
        self._meta = PartitionMeta(applied, term, self._sessions.clock_ms)
        return results

    def _apply_one(self, stage: WriteStage, index: int, data: bytes) -> ApplyResult:
        if not data:
            return ApplyResult(index, 0)  # a new leader's empty entry
        try:
            cmd = decode_command(data)
        except CommandDecodeError as e:
            return ApplyResult(index, 0, INVALID_ARGUMENT, str(e))
        key = None if isinstance(cmd, Noop) else cmd.write_key
        try:
            validate_command(cmd)
        except ValidationError as e:
            return ApplyResult(index, 0, INVALID_ARGUMENT, str(e), write_key=key)
        self._sessions.advance(cmd.ts_ms)
        if isinstance(cmd, Noop):
            return ApplyResult(index, 0)
        outcome, prior = self._sessions.check(cmd.client_id, cmd.seq, cmd.ack_below)
        if outcome is Outcome.EXPIRED:
            return ApplyResult(index, 0, SESSION_EXPIRED, _EXPIRED_MESSAGE, write_key=key)
        if outcome is Outcome.DUPLICATE:
            assert prior is not None
            self._sessions.touch(cmd.client_id, cmd.ack_below, index)
            return ApplyResult(
                index, prior.version, prior.error_code, prior.message, duplicate=True, write_key=key
            )
        result = self._execute(stage, index, cmd)
        self._sessions.record(cmd.client_id, cmd.seq, cmd.ack_below, index, result)
        return ApplyResult(index, result.version, result.error_code, result.message, write_key=key)

    def _live_version(self, stage: WriteStage, patient_id: str, record_id: str) -> int:
        """The version CAS compares against: 0 for an absent or deleted record."""
        rec = self._store.get(patient_id, record_id, stage=stage)
        return 0 if rec is None or rec.deleted else rec.version

    def _write(
        self,
        stage: WriteStage,
        cmd: WriteCommand,
        record_id: str,
        index: int,
        value: bytes,
        deleted: bool,
    ) -> None:
        self._store.write_version(
            stage, cmd.patient_id, record_id, index, value, deleted, self._retention
        )

    def _execute(self, stage: WriteStage, index: int, cmd: WriteCommand) -> StoredResult:
        if isinstance(cmd, Put):
            self._write(stage, cmd, cmd.record_id, index, cmd.value, False)
        elif isinstance(cmd, CompareAndSet):
            at = self._live_version(stage, cmd.patient_id, cmd.record_id)
            if at != cmd.expected_version:
                return StoredResult(
                    0, FAILED_PRECONDITION, _mismatch("record", at, cmd.expected_version)
                )
            self._write(stage, cmd, cmd.record_id, index, cmd.value, False)
        elif isinstance(cmd, Delete):
            at = self._live_version(stage, cmd.patient_id, cmd.record_id)
            if cmd.expected_version is not None and at != cmd.expected_version:
                return StoredResult(
                    0, FAILED_PRECONDITION, _mismatch("record", at, cmd.expected_version)
                )
            if at == 0:
                return StoredResult(0, NOT_FOUND, "record does not exist")
            self._write(stage, cmd, cmd.record_id, index, b"", True)
        elif isinstance(cmd, Batch):
            failure = self._judge_batch(stage, cmd)
            if failure is not None:
                return failure
            for op in cmd.ops:
                if op.kind == BATCH_PUT:
                    self._write(stage, cmd, op.record_id, index, op.value, False)
                elif op.kind == BATCH_DELETE:
                    self._write(stage, cmd, op.record_id, index, b"", True)
        elif isinstance(cmd, ErasePatient):
            # Records the purge of older copies (Raft log, snapshot, LevelDB files)
            # as an obligation in this same write, when the patient had any key.
            self._store.erase_patient(cmd.patient_id, stage, index=index)
        return StoredResult(index, None, "")

    def _judge_batch(self, stage: WriteStage, cmd: Batch) -> StoredResult | None:
        """The first failing op, judged on the state before the batch; None if all pass."""
        for i, op in enumerate(cmd.ops):
            if op.kind == BATCH_CHECK:
                expected = op.expected_version or 0
                at = self._live_version(stage, cmd.patient_id, op.record_id)
                if at != expected:
                    return StoredResult(
                        0, FAILED_PRECONDITION, _mismatch(f"ops[{i}]", at, expected)
                    )
            elif (
                op.kind == BATCH_DELETE
                and self._live_version(stage, cmd.patient_id, op.record_id) == 0
            ):
                return StoredResult(0, NOT_FOUND, f"ops[{i}]: record does not exist")
        return None

    # --- reads (committed state) ---------------------------------------------

    def get(self, patient_id: str, record_id: str, at_version: int = 0) -> Record | None:
        """See RecordStore.get: a tombstone comes back with deleted=True."""
        return self._store.get(patient_id, record_id, at_version)

    def history(
        self,
        patient_id: str,
        record_id: str,
        limit: int = DEFAULT_HISTORY_LIMIT,
        before_version: int = 0,
    ) -> list[Record]:
        return self._store.history(patient_id, record_id, limit, before_version)

    def scan(self, resume_token: bytes = b"", limit: int = DEFAULT_SCAN_PAGE) -> ScanPage:
        return self._store.scan(resume_token, limit)

    def read_snapshot(self) -> ReadSnapshot:
        """A consistent view for multi-page reads: `with sm.read_snapshot() as snap: snap.scan(...)`."""
        return self._store.read_snapshot()

    # --- snapshots ------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The partition's state at applied_index (see RecordStore.snapshot_chunks)."""
        return self._store.snapshot_bytes()

    def snapshot_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self._store.snapshot_chunks(chunk_size)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's (atomically), then reload."""
        try:
            self._store.restore(data, check_session=check_session_blob)
            self.purge_due = True  # the restore recorded a snapshot-install obligation
        finally:
            self._reload()


_EXPIRED_MESSAGE = (
    "client session expired, or this seq was already acknowledged; retry under a new client_id"
)


def _mismatch(what: str, at: int, expected: int) -> str:
    return f"{what}: version is {at}, expected {expected}"


__all__ = [
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "SESSION_EXPIRED",
    "ApplyOrderError",
    "ApplyResult",
    "PartitionStateMachine",
]
