"""The key-value state machine of one partition: committed Raft entries in, results out.

apply() takes the committed entries of one Ready in log order and applies them
as one WriteBatch that also records the applied index, so a crash leaves the
partition exactly at some applied index and replay from there is idempotent.

Every decision is a function of the entries alone (versions are Raft indexes,
log time is the max of the leader stamps in the commands (node.log_clock),
session ids are Raft indexes, and the settings that steer apply are
replicated by SetSettings entries (node.settings)), so replicas fed the same
log hold byte-identical state. A committed entry that does not decode or
breaks a limit is answered INVALID_ARGUMENT and changes nothing; it must
never wedge the partition.

Sessions (node.sessions): RegisterSession opens one (its id is its index),
refused RESOURCE_EXHAUSTED when max_sessions are open. Every write must name
an open session of its own client: otherwise it is refused and never applied
(SESSION_EXPIRED when the session is not open, SESSION_NOT_OWNED when another
client opened it, RESULT_FORGOTTEN when its seq is below what the session
still remembers). A write from a log written before sessions were registered
(command format v1) has session 0 and is refused as SESSION_EXPIRED.

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
    and its registration, and, when there was any, an erasure obligation is
    recorded in the same write (node.erasure purges the older copies off the
    Raft loop).

Clinic scope (issue 11, node.auth.policy): a record write that carries a
WriteAuth (proposed by a node with access control) applies only if the
patient is registered to one of the caller's clinics, or the caller broke the
glass; a write to a patient nobody has registered registers it to the
write's register_clinic in the same write (refused without one). A refusal is
PERMISSION_DENIED with the policy's words, which name neither the patient
nor its clinics, and is remembered by the session like any other result. A
write without a WriteAuth (an insecure node's, an admin's erasure, every
entry from before) is not checked. SharePatient adds or revokes one clinic
when the patient is registered to one of the caller's clinics, or is
unregistered and the clinic is one of the caller's; revoking the last clinic
is FAILED_PRECONDITION. Deciding here, on the replicated registration, makes
the check identical on every replica and ordered with every registry change.

AuditAnchor (no session: a node's own entry, not a client's write) records a
node's audit chain head when it is newer than the one kept for that node
(node.audit_anchors); it never touches records.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from node import log_clock
from node.audit_anchors import Anchor, apply_anchor, decode_anchors, encode_anchors
from node.auth.policy import (
    UNREGISTERED,
    Action,
    Registration,
    name_clinic_reason,
    not_own_clinic_reason,
    not_registered_reason,
)
from node.commands import (
    BATCH_CHECK,
    BATCH_DELETE,
    BATCH_PUT,
    AuditAnchor,
    Batch,
    CommandDecodeError,
    CompareAndSet,
    Delete,
    ErasePatient,
    Noop,
    Put,
    RegisterSession,
    SetSettings,
    SharePatient,
    WaitKey,
    WriteCommand,
    decode_command,
    validate_command,
)
from node.limits import DEFAULT_HISTORY_LIMIT, DEFAULT_SCAN_PAGE, ValidationError
from node.record_store import PartitionMeta, ReadSnapshot, Record, RecordStore, ScanPage, WriteStage
from node.sessions import Outcome, SessionTable, StoredResult, check_session_blob
from node.settings import (
    ClusterSettings,
    SettingsState,
    apply_changes,
    check_state_blob,
    decode_state,
    encode_state,
)

REGISTRATION_CACHE_SIZE = 4096  # per partition: ~1 MB at most
FAILED_PRECONDITION = "FAILED_PRECONDITION"
NOT_FOUND = "NOT_FOUND"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
SESSION_EXPIRED = "SESSION_EXPIRED"
SESSION_NOT_OWNED = "SESSION_NOT_OWNED"
RESULT_FORGOTTEN = "RESULT_FORGOTTEN"
PERMISSION_DENIED = "PERMISSION_DENIED"


class ApplyOrderError(RuntimeError):
    """Entries handed over out of log order: a bug in the host, never skipped over."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one entry.

    version is 0 unless a write applied (or this is a retry of one that did);
    for a RegisterSession that opened a session it is the session id (the
    entry's index); for a SetSettings, the generation in force afterwards.
    wait_key tells the proposer which entry this was (commands.WaitKey);
    None for empty entries, Noops and undecodable data.
    """

    index: int
    version: int
    error_code: str | None = None
    message: str = ""
    duplicate: bool = False
    wait_key: WaitKey | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


class PartitionStateMachine:
    """One partition's key-value state machine over a RecordStore."""

    def __init__(self, store: RecordStore) -> None:
        # Nothing here comes from the node's configuration: every value that
        # steers apply is replicated state (node.settings), so replicas
        # configured differently still decide identically.
        self._store = store
        self._settings = SettingsState()
        self._sessions = SessionTable()
        self._meta = PartitionMeta()
        self._log_time_ms = 0
        self._settings_dirty = False
        # node.audit_anchors: replaced (never mutated) on change, so a reader on
        # another thread always sees one consistent table.
        self._anchors: dict[int, Anchor] = {}
        self._anchors_dirty = False
        # Committed registrations, read by access control on every call
        # (node.registry) and by the clinic check of every write at apply, most
        # recent last. A patient whose registration an apply round stages a
        # change of (_reg_staged) is read from the stage for the rest of the
        # round and dropped from here once the round is committed (apply runs on
        # the same thread as every reader, so nothing reads in between); all are
        # dropped on a reload.
        self._registrations: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._reg_staged: set[str] = set()
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

    @property
    def log_time_ms(self) -> int:
        """Log time as of the applied index (node.log_clock)."""
        return self._log_time_ms

    @property
    def settings(self) -> ClusterSettings:
        return self._settings.settings

    @property
    def settings_cluster_generation(self) -> int:
        """The cluster settings generation in force (0: none carried yet)."""
        return self._settings.cluster_generation

    @property
    def settings_generation(self) -> int:
        """Index of the SetSettings entry in force; 0 while the defaults apply."""
        return self._settings.generation

    @property
    def audit_anchors(self) -> dict[int, Anchor]:
        """The newest audit chain head each node anchored here (node.audit_anchors)."""
        return self._anchors

    def sessions_open_at(self, now_ms: int) -> int:
        """How many sessions would be open at log time now_ms (a leader's pre-check)."""
        return self._sessions.open_at(now_ms, self.settings.session_ttl_ms)

    def reload(self) -> None:
        """Re-read the state after something else replaced it on disk (a
        snapshot install, node.snapshots)."""
        self._reload()

    def _reload(self) -> None:
        """Rebuild in-memory state from what is committed on disk."""
        self._registrations.clear()
        self._meta = self._store.meta()
        self._log_time_ms = self._meta.clock_ms
        blob = self._store.settings_blob()
        self._settings = SettingsState() if blob is None else decode_state(blob)
        self._settings_dirty = False
        anchors = self._store.anchors_blob()
        self._anchors = {} if anchors is None else decode_anchors(anchors)
        self._anchors_dirty = False
        self._sessions.load(self._store.sessions())

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
        self._reg_staged.clear()
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
            for key in sorted(dropped):
                self._store.delete_session(stage, key)
            for key, blob in puts.items():
                self._store.put_session(stage, key, blob)
            if self._settings_dirty:
                self._store.put_settings(stage, encode_state(self._settings))
                self._settings_dirty = False
            if self._anchors_dirty:
                self._store.put_anchors(stage, encode_anchors(self._anchors))
                self._anchors_dirty = False
            self._store.put_meta(stage, PartitionMeta(applied, term, self._log_time_ms))
            owes = bool(stage.obligations)
            self._store.commit(stage)
            self.purge_due = self.purge_due or owes
            for patient in self._reg_staged:
                self._registrations.pop(patient, None)
            self._reg_staged.clear()
        except BaseException:
            # Nothing of this round reached the disk; the in-memory sessions
            # may have moved ahead of it, so rebuild them from the disk.
            stage.discard()
            self._reg_staged.clear()
            self._reload()
            raise
        self._meta = PartitionMeta(applied, term, self._log_time_ms)
        return results

    def _apply_one(self, stage: WriteStage, index: int, data: bytes) -> ApplyResult:
        if not data:
            return ApplyResult(index, 0)  # a new leader's empty entry
        try:
            cmd = decode_command(data)
        except CommandDecodeError as e:
            return ApplyResult(index, 0, INVALID_ARGUMENT, str(e))
        key = None if isinstance(cmd, Noop) else cmd.wait_key
        try:
            validate_command(cmd)
        except ValidationError as e:
            return ApplyResult(index, 0, INVALID_ARGUMENT, str(e), wait_key=key)
        # Log time first, then expiry: both from the log and the replicated TTL.
        self._log_time_ms = log_clock.advance(self._log_time_ms, cmd.ts_ms)
        self._sessions.expire(self._log_time_ms, self.settings.session_ttl_ms)
        if isinstance(cmd, Noop):
            return ApplyResult(index, 0)
        if isinstance(cmd, RegisterSession):
            return self._register(index, cmd)
        if isinstance(cmd, SetSettings):
            return self._set_settings(index, cmd)
        if isinstance(cmd, SharePatient):
            return self._share(stage, index, cmd)
        if isinstance(cmd, AuditAnchor):
            return self._anchor(index, cmd)
        outcome, prior = self._sessions.check(cmd.session, session_owner(cmd), cmd.seq)
        refusal = self._session_refusal(index, cmd, outcome)
        if refusal is not None:
            return refusal
        if outcome is Outcome.DUPLICATE:
            assert prior is not None
            self._sessions.touch(cmd.session, cmd.ack_below, self._log_time_ms)
            return ApplyResult(
                index, prior.version, prior.error_code, prior.message, duplicate=True, wait_key=key
            )
        result = self._execute(stage, index, cmd)
        self._sessions.record(
            cmd.session, cmd.seq, cmd.ack_below, self._log_time_ms, result,
            self.settings.max_results_per_session,
        )
        return ApplyResult(index, result.version, result.error_code, result.message, wait_key=key)

    def _session_refusal(
        self, index: int, cmd: WriteCommand, outcome: Outcome
    ) -> ApplyResult | None:
        """The precise refusal of a write that must not apply, or None if it may."""
        key = cmd.wait_key
        if cmd.session == 0:
            return ApplyResult(index, 0, SESSION_EXPIRED, _NO_SESSION_MESSAGE, wait_key=key)
        if outcome is Outcome.NOT_OPEN:
            return ApplyResult(
                index, 0, SESSION_EXPIRED,
                f"session {cmd.session} is not open on this partition (it expired after "
                f"{self.settings.session_ttl_ms} ms idle, or was never opened here); the write "
                "was not applied now, but an earlier attempt of it may have been",
                wait_key=key,
            )
        if outcome is Outcome.NOT_OWNER:
            return ApplyResult(
                index, 0, SESSION_NOT_OWNED,
                f"session {cmd.session} was opened by another client; not applied", wait_key=key,
            )
        if outcome is Outcome.FORGOTTEN:
            return ApplyResult(
                index, 0, RESULT_FORGOTTEN,
                f"seq {cmd.seq} of session {cmd.session} is below what the session still "
                "remembers (acknowledged, or too many writes in flight); not applied now, but "
                "it may have been applied before",
                wait_key=key,
            )
        return None

    def _register(self, index: int, cmd: RegisterSession) -> ApplyResult:
        limit = self.settings.max_sessions
        if not self._sessions.register(index, cmd.client_id, self._log_time_ms, limit):
            return ApplyResult(
                index, 0, RESOURCE_EXHAUSTED,
                f"{limit} sessions are open on this partition (max_sessions); no open session "
                "is ever evicted, so retry once one expires, or raise max_sessions",
                wait_key=cmd.wait_key,
            )
        return ApplyResult(index, index, wait_key=cmd.wait_key)

    def _set_settings(self, index: int, cmd: SetSettings) -> ApplyResult:
        if cmd.seed and self._settings.generation != 0:
            # A later seed lost the race: the first one in the log already set them.
            return ApplyResult(
                index, self._settings.generation, None, "settings were already set",
                wait_key=cmd.wait_key,
            )
        carried = cmd.cluster_generation
        if carried and carried <= self._settings.cluster_generation:
            # A duplicate or a late entry of an older generation: newer holds.
            return ApplyResult(
                index, self._settings.generation, None,
                f"cluster settings generation {self._settings.cluster_generation} already applied",
                wait_key=cmd.wait_key,
            )
        self._settings = SettingsState(
            apply_changes(self.settings, dict(cmd.changes)), index,
            carried or self._settings.cluster_generation,
        )
        self._settings_dirty = True
        # A shorter TTL takes effect at this very entry, identically everywhere.
        self._sessions.expire(self._log_time_ms, self.settings.session_ttl_ms)
        return ApplyResult(index, index, wait_key=cmd.wait_key)

    def _share(self, stage: WriteStage, index: int, cmd: SharePatient) -> ApplyResult:
        key = cmd.wait_key
        clinics = self._registration_at_apply(stage, cmd.patient_id)
        caller = cmd.caller_clinics
        if not (clinics & caller or (not clinics and cmd.clinic in caller)):
            return ApplyResult(
                index, 0, PERMISSION_DENIED,
                not_own_clinic_reason(Action.REGISTRY.value, caller), wait_key=key,
            )
        if cmd.revoke:
            if clinics == {cmd.clinic}:
                return ApplyResult(
                    index, 0, FAILED_PRECONDITION,
                    "revoking the patient's last clinic would leave no clinic to reach it; "
                    "share it with another clinic first", wait_key=key,
                )
            after = clinics - {cmd.clinic}
        else:
            after = clinics | {cmd.clinic}
        if after != clinics:  # idempotent: a repeat changes nothing
            self._store.put_registration(stage, cmd.patient_id, after)
            self._reg_staged.add(cmd.patient_id)
        return ApplyResult(index, index, wait_key=key)

    def _clinic_refusal(
        self, stage: WriteStage, cmd: WriteCommand
    ) -> tuple[StoredResult | None, str | None]:
        """(the refusal of a write outside the caller's clinics or None, the clinic
        the write registers an unregistered patient to or None)."""
        if isinstance(cmd, ErasePatient) or cmd.auth is None:
            return None, None
        auth = cmd.auth
        clinics = self._registration_at_apply(stage, cmd.patient_id)
        if clinics & auth.clinics:
            return None, None
        perm = Action.RECORD_WRITE.value
        if not clinics:
            reg = auth.register_clinic
            if reg is not None and reg in auth.clinics:
                return None, reg
            if auth.break_glass:
                return None, None
            if reg is None and len(auth.clinics) > 1:
                return StoredResult(0, PERMISSION_DENIED,
                                    name_clinic_reason(perm, auth.clinics)), None
        elif auth.break_glass:
            return None, None
        return StoredResult(0, PERMISSION_DENIED, not_registered_reason(perm, auth.clinics)), None

    def _anchor(self, index: int, cmd: AuditAnchor) -> ApplyResult:
        """Record a node's audit chain head if it is newer (node.audit_anchors);
        version: the seq recorded for that node afterwards."""
        anchors, note = apply_anchor(self._anchors, cmd, index)
        if anchors is not None:
            self._anchors = anchors
            self._anchors_dirty = True
        return ApplyResult(index, self._anchors[cmd.node_id].seq, None, note,
                           wait_key=cmd.wait_key)

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
            stage, cmd.patient_id, record_id, index, value, deleted,
            self.settings.history_retention,
        )

    def _execute(self, stage: WriteStage, index: int, cmd: WriteCommand) -> StoredResult:
        refusal, register = self._clinic_refusal(stage, cmd)
        if refusal is not None:
            return refusal
        result = self._execute_checked(stage, index, cmd)
        if register is not None and result.error_code is None:
            # The first write registers the patient, in the same atomic write.
            self._store.put_registration(stage, cmd.patient_id, {register})
            self._reg_staged.add(cmd.patient_id)
        return result

    def _execute_checked(self, stage: WriteStage, index: int, cmd: WriteCommand) -> StoredResult:
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
            self._reg_staged.add(cmd.patient_id)  # its registration is deleted too
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

    def registration(self, patient_id: str) -> Registration:
        """The patient's clinics as applied on this replica (never waits)."""
        clinics = self._committed_registration(patient_id)
        return Registration(clinics) if clinics else UNREGISTERED

    def _committed_registration(self, patient_id: str) -> frozenset[str]:
        clinics = self._registrations.get(patient_id)
        if clinics is None:
            clinics = self._store.registration(patient_id)
            self._registrations[patient_id] = clinics
            if len(self._registrations) > REGISTRATION_CACHE_SIZE:
                self._registrations.popitem(last=False)
        else:
            self._registrations.move_to_end(patient_id)
        return clinics

    def _registration_at_apply(self, stage: WriteStage, patient_id: str) -> frozenset[str]:
        """The registration as of this point of the apply round: the stage's if
        the round changed it, else the committed one (cached: a write to a
        registered patient reads no registration from disk)."""
        if patient_id in self._reg_staged:
            return self._store.registration(patient_id, stage)
        return self._committed_registration(patient_id)

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
            self._store.restore(
                data, check_session=check_session_blob, check_settings=check_state_blob
            )
            self.purge_due = True  # the restore recorded a snapshot-install obligation
        finally:
            self._reload()


_NO_SESSION_MESSAGE = (
    "write carries no session (it was proposed by a medkv version without registered "
    "sessions); not applied"
)


def session_owner(cmd: WriteCommand) -> bytes:
    """Who a write claims to be, compared with the owner its session was opened by.

    The one place that binds a session to its user: the client_id today; the
    authenticated subject once requests carry one."""
    return cmd.client_id


def _mismatch(what: str, at: int, expected: int) -> str:
    return f"{what}: version is {at}, expected {expected}"


__all__ = [
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "RESULT_FORGOTTEN",
    "SESSION_EXPIRED",
    "SESSION_NOT_OWNED",
    "ApplyOrderError",
    "ApplyResult",
    "PartitionStateMachine",
    "session_owner",
]
