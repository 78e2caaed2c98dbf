"""The audit log online: Admin.AuditQuery, Admin.AuditVerify, and chain-head anchoring.

AuditQuery filters this node's own log (node/auth/audit.py): by patient (the
id is hashed here with the log's AuditKeys, exactly as entries hash it; the
id itself is never written nor logged), subject, time window, break-glass
only. It returns the newest `limit` matches, oldest first, in pages. The log
is flushed first so a caller sees every access up to its own call; reading
and decrypting run in a worker thread, never on the event loop.

Anchoring: every ANCHOR_INTERVAL_S, when the log's durable head moved, the
node proposes an AuditAnchor (node/commands.py, kind 9) with that head into
ONE partition it leads, taking its led partitions in turn. One entry per
interval is enough because verification takes the highest anchor over every
local replica (anchors are monotonic per node, node/audit_anchors.py), and
the proposal is awaited until applied here, so the anchor is in a local
replica by construction; rotating spreads them, so one broken replica loses
at most one interval. Proposing into every led partition would multiply the
Raft traffic by the partition count for no extra detection. A node leading
no partition skips the interval. The last head is anchored at clean
shutdown, after the RPC server stopped (every call recorded).

Before anchoring, the node checks that its log still continues its highest
anchor (the anchored entry is there, with the anchored hash). A log that was
cut and grew again past the anchor would otherwise get a new, higher anchor
that matches the rewrite and replaces the evidence; such a node logs an error
and stops anchoring, and AuditVerify keeps naming the break.

AuditVerify runs verify() on the log against the highest anchored head:
"the log ends at entry N but the anchored head records entry M" is a log cut
short with its HEAD file rolled back too. Problems name files, lines and
sequence numbers, never entry contents.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node import commands as cmd
from node.audit_anchors import Anchor
from node.auth.audit import (
    AUDIT_DIR,
    AuditLog,
    AuditWriter,
    ChainHead,
    VerifyReport,
    chain_hash_at,
    read_entries,
    verify,
)
from node.errors import FailedPrecondition, InvalidArgument, NodeError, Unavailable
from node.limits import ValidationError, validate_id
from proto.medkv.v1 import admin_pb2

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("medkv.audit")

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
PAGE_RECORDS = 256
MAX_SUBJECT_BYTES = 256
ANCHOR_INTERVAL_S = 10.0
ANCHOR_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AuditFilter:
    """A checked AuditQuery: the patient already hashed."""

    limit: int = DEFAULT_LIMIT
    patient_hash: str | None = None
    subject: str | None = None
    since: float | None = None
    until: float | None = None
    break_glass_only: bool = False

    def matches(self, entry: dict[str, Any]) -> bool:
        t = entry.get("time")
        if not isinstance(t, int | float):
            return False
        return not (
            (self.patient_hash is not None and entry.get("patient") != self.patient_hash)
            or (self.subject is not None and entry.get("subject") != self.subject)
            or (self.since is not None and t < self.since)
            or (self.until is not None and t > self.until)
            or (self.break_glass_only and not entry.get("break_glass"))
        )


def parse_query(req: admin_pb2.AuditQueryRequest, log_: AuditLog) -> AuditFilter:
    """Check a request (INVALID_ARGUMENT naming the field, never quoting it)."""
    limit = int(req.limit) or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise InvalidArgument(f"limit: at most {MAX_LIMIT} entries per node and query")
    for name in ("since", "until"):
        v = getattr(req, name)
        if not math.isfinite(v) or v < 0:
            raise InvalidArgument(f"{name}: Unix seconds (0 or more; 0: unbounded)")
    since, until = req.since or None, req.until or None
    if since is not None and until is not None and since > until:
        raise InvalidArgument("since: after until")
    patient = None
    if req.patient_id:
        try:
            validate_id(req.patient_id, "patient_id")
        except ValidationError as e:
            raise InvalidArgument(str(e)) from None
        patient = log_.keys.patient_hash(req.patient_id)
    if len(req.subject.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidArgument(f"subject: at most {MAX_SUBJECT_BYTES} bytes")
    return AuditFilter(limit, patient, req.subject or None, since, until, req.break_glass_only)


def select(
    entries: Iterable[tuple[str, dict[str, Any] | None]], f: AuditFilter
) -> tuple[list[dict[str, Any]], list[str]]:
    """The newest f.limit matching entries, oldest first, and where the entries
    that do not authenticate are (skipped: AuditVerify names them)."""
    keep: deque[dict[str, Any]] = deque(maxlen=f.limit)
    bad: list[str] = []
    for where, entry in entries:
        if entry is None:
            bad.append(where)
        elif f.matches(entry):
            keep.append(entry)
    return list(keep), bad


def record_json(entry: dict[str, Any]) -> str:
    """An entry as one JSON object (ids are keyed hashes; nothing is in clear)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def query_log(log_: AuditLog, f: AuditFilter) -> list[dict[str, Any]]:
    """Blocking: reads and decrypts the whole log (run it in a thread)."""
    found, bad = select(read_entries(log_.directory, log_.sealer, log_.log_id), f)
    if bad:
        log.warning("audit log %s: %d entries do not authenticate (first at %s); "
                    "run AuditVerify", log_.log_id, len(bad), bad[0])
    return found


def verify_log(log_: AuditLog, expect: ChainHead | None) -> VerifyReport:
    """Blocking. A flush between reading the segments and reading HEAD makes HEAD
    look ahead of the files; so a pass that found problems while the log moved
    is repeated with flushes held off, and that pass is the answer."""
    before = log_.durable_head()
    rep = verify(log_.directory, log_.sealer, log_.keys, log_.log_id, expect)
    if rep.ok or log_.durable_head() == before:
        return rep
    with log_.quiesced():
        return verify(log_.directory, log_.sealer, log_.keys, log_.log_id, expect)


class AuditService:
    """Query, verify and anchor this node's audit log (None on insecure nodes)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._next_partition = 0
        self._anchored_seq = 0  # the highest head this process anchored
        self._trusted: tuple[int, str] | None = None  # an anchor the log was checked against
        self._halted = False  # the log does not continue its anchor: never anchor again

    @property
    def writer(self) -> AuditWriter | None:
        access = getattr(self.node, "access", None)
        return None if access is None else access.audit

    def _require(self) -> AuditWriter:
        w = self.writer
        if w is None:
            raise FailedPrecondition(
                f"node {self.node.cfg.node_id} keeps no audit log (insecure = true)")
        return w

    async def _flushed(self, w: AuditWriter) -> None:
        """Everything appended before now is on disk (the caller's earlier calls).
        Bounded: a writer that stopped (the node is failing) never answers."""
        try:
            await asyncio.wait_for(w.durable(w.log.last_seq), FLUSH_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(f"node {self.node.cfg.node_id}: the audit log did not flush "
                              f"within {FLUSH_TIMEOUT_S:g}s") from None

    # ---- AuditQuery -------------------------------------------------------

    async def query(
        self, req: admin_pb2.AuditQueryRequest
    ) -> AsyncIterator[admin_pb2.AuditQueryResponse]:
        w = self._require()
        f = parse_query(req, w.log)
        await self._flushed(w)
        found = await asyncio.to_thread(query_log, w.log, f)
        node_id = self.node.cfg.node_id
        for i in range(0, len(found), PAGE_RECORDS):
            yield admin_pb2.AuditQueryResponse(records=[
                admin_pb2.AuditRecord(node=node_id, seq=int(e["seq"]), json=record_json(e))
                for e in found[i:i + PAGE_RECORDS]
            ])

    # ---- AuditVerify ------------------------------------------------------

    def highest_anchor(self) -> Anchor | None:
        """This node's highest anchored head over every healthy local replica."""
        me = self.node.cfg.node_id
        best: Anchor | None = None
        for r in list(self.node.host.replicas.values()):
            if r.broken:
                continue
            a = r.sm.audit_anchors.get(me)
            if a is not None and (best is None or a.seq > best.seq):
                best = a
        return best

    async def verify(self) -> admin_pb2.AuditVerifyResponse:
        w = self._require()
        await self._flushed(w)
        anchor = self.highest_anchor()
        expect = ChainHead(anchor.seq, anchor.chain_hash.hex()) if anchor else None
        rep = await asyncio.to_thread(verify_log, w.log, expect)
        return admin_pb2.AuditVerifyResponse(
            node=self.node.cfg.node_id, ok=rep.ok, entries=rep.entries,
            head=rep.head.text() if rep.head else "",
            anchored_head=anchor.head_text if anchor else "",
            # The node's paths are its own business: an endpoint names no file path.
            problems=[pr.replace(str(w.log.directory), AUDIT_DIR) for pr in rep.problems],
        )

    # ---- anchoring --------------------------------------------------------

    async def anchor_loop(self, interval: float = ANCHOR_INTERVAL_S) -> None:
        while not self._halted:
            await asyncio.sleep(interval)
            try:
                await self.anchor_once()
            except NodeError as e:  # lost leadership, timed out: next interval
                log.debug("audit anchor not recorded: %s", type(e).__name__)
            except Exception:
                log.exception("audit anchoring failed")

    def _led_partition(self) -> int | None:
        """The next partition this node leads, in turn (None: it leads none)."""
        led = sorted(p for p, r in self.node.host.replicas.items()
                     if r.is_leader and not r.broken and not r.installing)
        if not led:
            return None
        after = [p for p in led if p >= self._next_partition]
        p = after[0] if after else led[0]
        self._next_partition = p + 1
        return p

    async def _continues_anchor(self, w: AuditWriter, head: ChainHead) -> bool:
        """Does the log still hold the highest anchored head (checked once per anchor)?"""
        a = self.highest_anchor()
        if a is None or (a.seq, a.chain_hash.hex()) == self._trusted:
            return True
        lg = w.log
        if a.seq > head.seq:
            got = None
        elif a.seq == head.seq:
            got = head.hash
        else:
            got = await asyncio.to_thread(chain_hash_at, lg.directory, lg.sealer, lg.keys,
                                          lg.log_id, a.seq)
        if got != a.chain_hash.hex():
            self._halted = True
            log.error(
                "node %d: its audit log does not continue the chain head it anchored (entry "
                "%d %s): the log was truncated or rewritten; anchoring stops so the anchor "
                "stays as evidence; run `medkv audit verify --cluster`",
                self.node.cfg.node_id, a.seq, "is missing" if got is None else "differs")
            return False
        self._trusted = (a.seq, a.chain_hash.hex())
        return True

    async def anchor_once(self, timeout: float = ANCHOR_TIMEOUT_S) -> int:
        """Anchor the durable head if it moved; returns the seq anchored (0: none)."""
        w = self.writer
        if w is None or self._halted:
            return 0
        head = w.log.durable_head()
        if head.seq <= self._anchored_seq or head.seq == 0:
            return 0
        if not await self._continues_anchor(w, head):
            return 0
        p = self._led_partition()
        if p is None:
            return 0
        node_id = self.node.cfg.node_id
        chain_hash = bytes.fromhex(head.hash)
        probe = cmd.AuditAnchor(ts_ms=0, node_id=node_id, seq=head.seq, chain_hash=chain_hash)

        def encode(stamp_ms: int) -> bytes:
            return cmd.encode_command(cmd.AuditAnchor(
                ts_ms=stamp_ms, node_id=node_id, seq=head.seq, chain_hash=chain_hash))

        res = await self.node.host.propose(p, probe.wait_key, encode, timeout)
        if res.error_code is not None:
            log.warning("audit anchor refused by partition %d: %s", p, res.message)
            return 0
        self._anchored_seq = max(self._anchored_seq, head.seq)
        if res.message:  # not recorded: a different head is anchored at this seq or above
            log.warning("audit anchor in partition %d: %s", p, res.message)
        elif self._trusted is None or head.seq > self._trusted[0]:
            self._trusted = (head.seq, head.hash)
        return head.seq

    async def final_anchor(self) -> None:
        """At clean shutdown, after the RPC server stopped: anchor the last head."""
        w = self.writer
        if w is None:
            return
        try:
            await self._flushed(w)
            if await self.anchor_once(timeout=2.0) == 0 and \
                    w.log.durable_head().seq > self._anchored_seq and not self._halted:
                log.info("audit head %d not anchored at shutdown (this node leads no "
                         "partition); the previous anchor stands", w.log.durable_head().seq)
        except Exception as e:
            log.warning("audit head not anchored at shutdown: %s", type(e).__name__)


__all__ = ["AuditFilter", "AuditService", "parse_query", "query_log", "select", "verify_log"]
