"""Online key rotation on a running node: data keys and the master key.

Data key rotation (RotateDataKey): a new data key becomes active for new
writes at once, then a background pass re-seals every older value under it
(node.crypto.reencrypt.ReEncryptor over storage_layout.REENCRYPT_KEYSPACES),
and when nothing refers to an old key any more, the old keys are destroyed.
The pass keeps its cursor in LevelDB (REENCRYPT_CURSOR_KEY, the same one the
offline `keys rotate-data --reencrypt` uses), so a node that crashes or
stops mid-pass resumes where it was when it starts again. The plan is
recorded before the key is added, so a crash between the two finishes the
rotation at the next start instead of forgetting it or rotating twice.

Why each re-encryption step runs where it does: a step reads a value,
re-seals it and writes it back, and LevelDB has no compare-and-set, so no
other write to the same keys may land in between or the step could put back
an older value. The node has exactly two writers: the event loop (state
machine apply rounds: records, history, sessions; synchronous, never across
an await) and the host's single writer thread (Raft log, hard state,
snapshots). `_exclusive` therefore parks the writer thread on a job of its
own and then runs the step synchronously on the event loop: neither writer
can run until it returns. Steps are small (`batch_size` values, a few
milliseconds) and paced, so client traffic keeps flowing during a pass.

Old keys are retired only after a check that nothing still refers to them,
done on a LevelDB snapshot in a worker thread (not on the loop). Any value
sealed under an old key must have been sealed before the rotation, and each
writer seals and writes in one uninterrupted call, so no such value can
appear after the pass; the check is the proof, and a failed check starts a
new pass rather than losing data.

Master key rotation (RotateMasterKey) never touches data: every node
re-wraps its keyring under the new master staged at KEY_FILE.next
(MASTER_REWRAP), and only once every node has done so does each move
KEY_FILE.next over KEY_FILE (MASTER_INSTALL). Both steps are single atomic
file renames and idempotent; a node restarted between them opens its keyring
with whichever of the two files holds the right key (keyring.open_keyring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from node import failstop
from node.crypto import CryptoError
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import MasterKey, install_key_file, load_master_key
from node.crypto.keyring import staged_key_path
from node.crypto.reencrypt import Progress, ReEncryptor
from node.errors import FailedPrecondition, InvalidArgument, NodeError, Unavailable
from node.storage_layout import REENCRYPT_CURSOR_KEY, REENCRYPT_KEYSPACES, StorageLayout

if TYPE_CHECKING:
    from node.host import MultiRaftHost

log = logging.getLogger("medkv.keys")

T = TypeVar("T")

STEP_REWRAP = 1  # admin_pb2.MASTER_REWRAP
STEP_INSTALL = 2  # admin_pb2.MASTER_INSTALL
RETIRE_ATTEMPTS = 3
# How long the writer thread stays parked waiting for the loop to run a step
# before it gives up on it (the step is then retried). Only a loop stalled
# this long (a SIGSTOP, say) gets there.
PARK_TIMEOUT_S = 10.0


class WriterBusy(Unavailable):
    """The writer thread could not be parked for a step in time; retried later."""


@dataclass
class ReEncryptionState:
    """What KeyStatus shows about the current or last re-encryption pass."""

    state: str  # idle | running | retiring | finished | interrupted | failed
    target_key_id: int = 0
    done: int = 0
    total_estimate: int = 0
    resealed: int = 0
    percent: float = 0.0
    error: str = ""
    retired_key_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DataKeyState:
    key_id: int
    created: str
    active: bool
    values: int  # -1: not counted


@dataclass(frozen=True)
class KeyState:
    node_id: int
    keyring_master_key_id: str
    key_file_master_key_id: str
    staged_master_key_id: str
    active_data_key_id: int
    data_keys: list[DataKeyState]
    reencryption: ReEncryptionState


def _valid_master_id(key_id: str) -> bool:
    try:
        return len(bytes.fromhex(key_id)) == 8 and key_id == key_id.lower()
    except ValueError:
        return False


class KeyRotationManager:
    """One node's online key rotation; every public coroutine runs on the node's loop."""

    def __init__(
        self,
        layout: StorageLayout,
        host: MultiRaftHost,
        key_file: Path | None,
        *,
        batch_size: int = 256,
        pause_s: float = 0.005,
    ) -> None:
        self.node_id = host.node_id
        self._db = layout.db
        self._codec = layout.codec if isinstance(layout.codec, EnvelopeCodec) else None
        self._key_file = key_file
        self._host = host
        self._pause_s = pause_s
        self._reenc = (
            ReEncryptor(self._db, self._codec, REENCRYPT_KEYSPACES, REENCRYPT_CURSOR_KEY,
                        batch_size, sync=False)
            if self._codec is not None else None
        )
        self._lock = asyncio.Lock()  # one keyring-changing operation at a time
        self._task: asyncio.Task[None] | None = None
        self._phase = "idle"  # while a task runs: running | retiring
        self._error = ""
        self._retired: list[int] = []
        self._last: Progress | None = None
        # Sealed data outside LevelDB: the audit log (node.auth.audit). Before old
        # keys are retired it is sealed again under the active key (reseal_audit),
        # and a key it still names (keep_key_ids: a line that would not open) is
        # kept rather than destroyed under entries nobody could read again.
        self.reseal_audit: Callable[[], int] | None = None
        self.keep_key_ids: Callable[[], set[int]] | None = None

    # ---- lifecycle

    def start(self) -> None:
        """Resume a pass a crash or a stop interrupted (in the background)."""
        if self._codec is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._resume_at_start(), name="key-rotation-resume"
            )

    async def stop(self) -> None:
        """Stop the background pass (its cursor is on disk). Call before the host
        stops: a parked writer thread is released when the pass is cancelled."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- exclusive access to the database's writers

    async def _exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the event loop while the host's writer thread is parked:
        no Raft log write and no state machine apply can interleave with it."""
        loop = asyncio.get_running_loop()
        parked: asyncio.Future[None] = loop.create_future()
        release = threading.Event()
        gate = threading.Lock()
        flags = {"running": False, "abandoned": False}

        def mark_parked() -> None:
            if not parked.done():
                parked.set_result(None)

        def park() -> None:
            loop.call_soon_threadsafe(mark_parked)
            while not release.wait(PARK_TIMEOUT_S):
                with gate:
                    if not flags["running"]:  # the loop never came: stop waiting for it
                        flags["abandoned"] = True
                        return

        holder = loop.run_in_executor(self._host.writer, park)
        holder.add_done_callback(_retrieve)
        try:
            await parked
            with gate:
                if flags["abandoned"]:
                    raise WriterBusy("the writer thread was not free; retrying")
                flags["running"] = True
            return fn()
        finally:
            release.set()

    # ---- data key rotation

    def _require_codec(self) -> tuple[EnvelopeCodec, ReEncryptor]:
        if self._codec is None or self._reenc is None:
            raise FailedPrecondition(
                f"node {self.node_id} runs without encryption (a test-only mode): no keys to rotate"
            )
        return self._codec, self._reenc

    async def rotate_data(self) -> tuple[int, bool]:
        """Start a new data key and re-encrypt in the background, or continue a
        pass that is under way or was interrupted. Returns (active key id, started)."""
        codec, reenc = self._require_codec()
        keyring = codec.keyring
        async with self._lock:
            if self.running:
                return keyring.active_key_id, False
            prog = await asyncio.to_thread(reenc.progress)
            started = False
            self._last = prog
            if self._unfinished(prog, keyring.active_key_id, len(keyring.data_key_ids)):
                log.info("continuing the re-encryption pass to data key %d", keyring.active_key_id)
            else:
                if not (prog is not None and not prog.finished
                        and prog.target_key_id == keyring.next_data_key_id):
                    # The plan is durable before the key: a crash in between is finished
                    # at the next start, never forgotten, never rotated twice.
                    self._last = await asyncio.to_thread(reenc.begin, keyring.next_data_key_id)
                new_id = await asyncio.to_thread(keyring.rotate_data)
                log.info("data key %d is active for new writes; re-encrypting older values", new_id)
                started = True
            self._spawn()
            return keyring.active_key_id, started

    @staticmethod
    def _unfinished(prog: Progress | None, active: int, key_count: int) -> bool:
        """A pass toward the active key that has not finished, or whose old keys
        were not yet retired when it stopped."""
        return prog is not None and prog.target_key_id == active and (
            not prog.finished or key_count > 1
        )

    async def _resume_at_start(self) -> None:
        assert self._codec is not None and self._reenc is not None
        keyring = self._codec.keyring
        try:
            async with self._lock:
                prog = await asyncio.to_thread(self._reenc.progress)
                if prog is None:
                    return
                if not prog.finished and prog.target_key_id == keyring.next_data_key_id:
                    new_id = await asyncio.to_thread(keyring.rotate_data)
                    log.info("finishing an interrupted data key rotation: key %d is active", new_id)
                if not self._unfinished(prog, keyring.active_key_id, len(keyring.data_key_ids)):
                    return
                log.info("resuming re-encryption to data key %d (%d/%d values done)",
                         keyring.active_key_id, prog.done, prog.total_estimate)
                self._last = prog
                self._spawn()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fail(e)

    def _spawn(self) -> None:
        self._error = ""
        self._retired = []
        self._phase = "running"
        self._task = asyncio.get_running_loop().create_task(self._pass(), name="reencrypt")

    def _fail(self, e: BaseException) -> None:
        failstop.check(e)  # a failing disk stops the node, not just the pass
        # Crypto and node errors name key ids, counts and paths, never data.
        shown = str(e) if isinstance(e, CryptoError | NodeError) else ""
        self._error = f"{type(e).__name__}: {shown}" if shown else type(e).__name__
        self._phase = "failed"
        log.error("re-encryption stopped: %s (run rotate-data again to resume)", self._error)

    async def _pass(self) -> None:
        assert self._codec is not None and self._reenc is not None
        reenc = self._reenc
        try:
            for _ in range(RETIRE_ATTEMPTS):
                self._phase = "running"
                await self._ensure_cursor()
                while True:
                    try:
                        prog = await self._exclusive(reenc.step)
                    except WriterBusy:
                        await asyncio.sleep(0.1)
                        continue
                    self._last = prog
                    if prog.finished:
                        break
                    await asyncio.sleep(self._pause_s)
                self._phase = "retiring"
                retired = await self._retire()
                if retired is not None:
                    self._retired = retired
                    self._phase = "finished"
                    log.info("re-encryption to data key %d finished; retired data keys %s",
                             self._codec.keyring.active_key_id, retired or "none")
                    return
            raise CryptoError("values under old data keys kept appearing; old keys were kept")
        except asyncio.CancelledError:
            self._phase = "interrupted"
            raise
        except Exception as e:
            self._fail(e)

    async def _ensure_cursor(self) -> None:
        """A cursor toward the active key, counted off the loop (step() would
        otherwise count every key synchronously on the loop)."""
        assert self._codec is not None and self._reenc is not None
        active = self._codec.keyring.active_key_id
        prog = await asyncio.to_thread(self._reenc.progress)
        if prog is None or prog.target_key_id != active:
            self._last = await asyncio.to_thread(self._reenc.begin, active)

    async def _retire(self) -> list[int] | None:
        """Destroy the old data keys once nothing refers to them; None (and a new
        pass begun) if values under old keys were found."""
        assert self._codec is not None and self._reenc is not None
        keyring = self._codec.keyring
        active = keyring.active_key_id
        counts = await self._count_values(include_cursor=True)
        stale = {k: n for k, n in counts.items() if k != active}
        if stale:
            listing = ", ".join(f"key {k}: {n}" for k, n in sorted(stale.items()))
            log.warning("values still under old data keys (%s): another pass", listing)
            self._last = await asyncio.to_thread(self._reenc.begin, active)
            return None
        kept: set[int] = set()
        if self.reseal_audit is not None:
            resealed = await asyncio.to_thread(self.reseal_audit)
            log.info("audit log: %d entries sealed again under data key %d", resealed, active)
        if self.keep_key_ids is not None:
            kept = await asyncio.to_thread(self.keep_key_ids)
        old = [k for k in keyring.data_key_ids if k != active and k not in kept]
        if kept - {active}:
            log.warning("data keys %s stay: audit log lines are still sealed under them",
                     sorted(kept - {active}))
        if not old:
            return []
        return await asyncio.to_thread(keyring.retire_data_keys, old)

    async def _count_values(self, include_cursor: bool) -> dict[int, int]:
        """Data key id -> values sealed under it, counted on a snapshot off the loop."""
        assert self._reenc is not None
        while True:
            try:
                snap = await self._exclusive(self._db.snapshot)
                break
            except WriterBusy:
                await asyncio.sleep(0.1)
        try:
            return await asyncio.to_thread(self._reenc.referenced_key_ids, include_cursor, snap)
        finally:
            snap.close()

    def reencryption(self) -> ReEncryptionState:
        """The pass as of now (the stored cursor when no pass runs in this process)."""
        if self._codec is None or self._reenc is None:
            return ReEncryptionState("idle")
        prog = self._last if self.running or self._last is not None else self._reenc.progress()
        if self.running or self._phase in ("failed", "interrupted"):
            phase = self._phase
        elif prog is None:
            phase = "idle"
        elif self._unfinished(prog, self._codec.keyring.active_key_id,
                              len(self._codec.keyring.data_key_ids)):
            phase = "interrupted"
        else:
            phase = "finished"
        if prog is None:
            return ReEncryptionState(phase, error=self._error)
        return ReEncryptionState(
            phase, prog.target_key_id, prog.done, prog.total_estimate, prog.resealed,
            round(prog.percent, 1), self._error, list(self._retired),
        )

    # ---- master key rotation

    def _key_files(self) -> tuple[MasterKey, MasterKey | None, Path]:
        if self._key_file is None:
            raise FailedPrecondition(f"node {self.node_id} has no key_file configured")
        staged = staged_key_path(self._key_file)
        current = load_master_key(self._key_file)
        return current, (load_master_key(staged) if staged.exists() else None), staged

    async def rotate_master(self, new_master_key_id: str, step: int) -> KeyState:
        """One step (STEP_REWRAP or STEP_INSTALL) toward `new_master_key_id`. Idempotent."""
        codec, _ = self._require_codec()
        if not _valid_master_id(new_master_key_id):
            raise InvalidArgument("new_master_key_id: 16 lowercase hex digits expected")
        if step not in (STEP_REWRAP, STEP_INSTALL):
            raise InvalidArgument("step: MASTER_REWRAP or MASTER_INSTALL expected")
        keyring = codec.keyring

        def work() -> None:
            current, staged_key, staged = self._key_files()
            if step == STEP_REWRAP:
                if keyring.master_key_id == new_master_key_id:
                    return
                target = next((m for m in (staged_key, current)
                               if m is not None and m.key_id == new_master_key_id), None)
                if target is None:
                    raise FailedPrecondition(
                        f"master key id {new_master_key_id} is not staged on node {self.node_id}: "
                        f"put the new key file at {staged} first (medkv keys stage-master)"
                    )
                keyring.rotate_master(target)
                log.info("keyring re-wrapped under master key id %s", new_master_key_id)
                return
            if keyring.master_key_id != new_master_key_id:
                raise FailedPrecondition(
                    f"node {self.node_id}'s keyring is wrapped by master key id "
                    f"{keyring.master_key_id}: re-wrap it (MASTER_REWRAP) before installing"
                )
            if current.key_id == new_master_key_id:
                return  # installed already (by this node, or by another sharing the file)
            if staged_key is None or staged_key.key_id != new_master_key_id:
                raise FailedPrecondition(
                    f"{staged} does not hold master key id {new_master_key_id} on node "
                    f"{self.node_id}; nothing to install"
                )
            assert self._key_file is not None
            install_key_file(staged, self._key_file)
            log.info("installed master key id %s in %s", new_master_key_id, self._key_file)

        async with self._lock:
            try:
                await asyncio.to_thread(work)
            except CryptoError as e:
                raise FailedPrecondition(str(e)) from None
        return await self.status(count_values=False)

    # ---- status

    async def status(self, count_values: bool) -> KeyState:
        codec, _ = self._require_codec()
        keyring = codec.keyring
        try:
            current, staged_key, _ = await asyncio.to_thread(self._key_files)
        except CryptoError as e:
            raise FailedPrecondition(str(e)) from None
        counts = await self._count_values(include_cursor=False) if count_values else {}
        keys = [
            DataKeyState(k.key_id, k.created, k.active,
                         counts.get(k.key_id, 0) if count_values else -1)
            for k in keyring.data_keys()
        ]
        return KeyState(
            node_id=self.node_id,
            keyring_master_key_id=keyring.master_key_id,
            key_file_master_key_id=current.key_id,
            staged_master_key_id=staged_key.key_id if staged_key is not None else "",
            active_data_key_id=keyring.active_key_id,
            data_keys=keys,
            reencryption=self.reencryption(),
        )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # The park job's outcome is of no interest; fetch it so asyncio never logs it.
    if not fut.cancelled():
        fut.exception()
