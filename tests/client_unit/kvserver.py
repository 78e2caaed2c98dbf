"""A small in-test medkv cluster: real grpc.aio servers on 127.0.0.1.

Not a mock of gRPC: the client under test talks real HTTP/2 to real servers
that implement the KV and Admin services of proto/medkv/v1 over one shared
dict, with one scripted leader per partition. Non-leaders answer writes and
linearizable reads UNAVAILABLE with the `medkv-leader` hint, exactly as the
contract says. Tests script faults (lost replies, unavailability, overload,
hangs, broken scan streams, staleness) and read back every request the
servers received, so retries and redirects are observed, not assumed.

BatchCommands serves each request of the stream through the same handler as
its unary method (in its own task, answered as it finishes), so every test
runs alike over the multiplexed client and the unary one; `Call.streamed`
tells which way a request came. Stream faults are scripted with
method="BatchCommands": `code` refuses the stream when it opens, and
`break_stream` ends it UNAVAILABLE after dispatching the next message's
requests (their replies are lost).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, common_pb2, kv_pb2, kv_pb2_grpc
from proto.placement import make_placement

WRITES = {"Put", "CompareAndSet", "Delete", "Batch"}


@dataclass
class Fault:
    """One scripted misbehaviour, consumed by the first `times` matching requests."""

    # unavailable | not_applied | hint | lost_reply | exhausted | hang | code | scan_break | forget
    action: str
    node: int | None = None
    method: str | None = None
    times: int = 1
    arg: Any = None


@dataclass
class Call:
    node: int
    method: str
    partition: int
    seq: int = 0
    ack_below: int = 0
    client_id: bytes = b""
    resume_token: bytes = b""
    session: int = 0
    # The call's request metadata (authorization, medkv-clinic, ...), as received.
    metadata: tuple[tuple[str, str], ...] = ()
    streamed: bool = False  # came inside a BatchCommands stream


@dataclass
class State:
    partitions: int
    node_ids: list[int]
    replication: int
    leaders: dict[int, int] = field(default_factory=dict)
    epoch: int = 1
    send_epoch: bool = False
    hints: bool = True
    index: int = 0
    records: dict[tuple[str, str], list[common_pb2.Record]] = field(default_factory=dict)
    # (partition, session, seq) -> the first reply; (partition, session) -> owner
    sessions: dict[tuple[int, int, int], Any] = field(default_factory=dict)
    open_sessions: dict[tuple[int, int], bytes] = field(default_factory=dict)
    applied: list[tuple[int, int, int]] = field(default_factory=list)  # (partition, session, seq)
    faults: list[Fault] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    staleness: dict[int, float] = field(default_factory=dict)
    extra_nodes: dict[int, str] = field(default_factory=dict)
    registrations: dict[str, set[str]] = field(default_factory=dict)  # patient -> clinics
    batch_sizes: list[int] = field(default_factory=list)  # requests per BatchCommands message


class _Node(kv_pb2_grpc.KVServicer, admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, cluster: TestCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id

    # -- helpers ---------------------------------------------------------------

    @property
    def s(self) -> State:
        return self.cluster.state

    def _fault(self, method: str) -> Fault | None:
        with self.cluster.lock:
            for fault in self.s.faults:
                if (
                    fault.times > 0
                    and fault.node in (None, self.node_id)
                    and fault.method in (None, method)
                ):
                    fault.times -= 1
                    return fault
        return None

    @staticmethod
    def _md(context: Any) -> tuple[tuple[str, str], ...]:
        return tuple(
            (k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
        )

    def _trailing(self) -> tuple[tuple[str, str], ...]:
        return (("medkv-epoch", str(self.s.epoch)),) if self.s.send_epoch else ()

    async def _abort(
        self,
        context: Any,
        code: grpc.StatusCode,
        message: str,
        md: tuple[tuple[str, str], ...] = (),
    ) -> None:
        await context.abort(code, message, trailing_metadata=md + self._trailing())

    async def _redirect(self, context: Any, partition: int) -> None:
        leader = self.s.leaders[partition]
        md: tuple[tuple[str, str], ...] = ()
        if self.s.hints:
            md = (("medkv-leader", f"{leader}@{self.cluster.address_of(leader)}"),)
        await self._abort(context, grpc.StatusCode.UNAVAILABLE, "not the leader", md)

    def _read_state(self, partition: int) -> common_pb2.ReadState:
        leader = self.s.leaders[partition] == self.node_id
        return common_pb2.ReadState(
            partition=partition,
            node_id=self.node_id,
            applied_index=self.s.index,
            commit_index=self.s.index,
            lag_entries=0,
            staleness_seconds=0.0 if leader else self.s.staleness.get(self.node_id, 0.0),
            from_leader=leader,
        )

    async def _begin(self, method: str, request: Any, context: Any, partition: int) -> Fault | None:
        """Record the call, run the scripted fault (if any); returns a fault to finish later."""
        wid = getattr(request, "write_id", None)
        with self.cluster.lock:
            self.s.calls.append(
                Call(
                    self.node_id,
                    method,
                    partition,
                    wid.seq if wid else 0,
                    wid.ack_below if wid else 0,
                    wid.client_id if wid else b"",
                    getattr(request, "resume_token", b""),
                    wid.session if wid else 0,
                    self._md(context),
                    isinstance(context, _SubContext),
                )
            )
        fault = self._fault(method)
        if fault is None:
            return None
        if fault.action == "unavailable":
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "no quorum")
        elif fault.action == "not_applied":
            await self._abort(
                context, grpc.StatusCode.UNAVAILABLE, "not the leader",
                (("medkv-error", "not-applied"),),
            )
        elif fault.action == "hint":
            node, address = fault.arg
            await self._abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "not the leader",
                (("medkv-leader", f"{node}@{address}"),),
            )
        elif fault.action == "exhausted":
            await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests")
        elif fault.action == "code":
            code, message = fault.arg
            await self._abort(context, code, message)
        elif fault.action == "hang":
            await asyncio.sleep(float(fault.arg))
        elif fault.action == "forget":
            # The partition's session table expired every session.
            with self.cluster.lock:
                self.s.open_sessions = {
                    k: v for k, v in self.s.open_sessions.items() if k[0] != partition
                }
                self.s.sessions = {k: v for k, v in self.s.sessions.items() if k[0] != partition}
        return fault  # lost_reply / scan_break: the handler finishes them

    def _partition(self, patient_id: str) -> int:
        return self.cluster.placement.partition_of(patient_id)

    def _is_leader(self, partition: int) -> bool:
        return self.s.leaders[partition] == self.node_id

    # -- writes ----------------------------------------------------------------

    async def _write(
        self, method: str, request: Any, context: Any, apply: Callable[[int], Any]
    ) -> Any:
        partition = self._partition(request.patient_id)
        fault = await self._begin(method, request, context, partition)
        if not self._is_leader(partition):
            await self._redirect(context, partition)
        wid = request.write_id
        key = (partition, wid.session, wid.seq)
        with self.cluster.lock:
            reply = self.s.sessions.get(key)
            owner = self.s.open_sessions.get((partition, wid.session))
            if owner is None:
                # As the nodes do: a write whose session is not open is refused.
                reply = _Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"session {wid.session} is not open on this partition",
                    "session-expired",
                )
            elif owner != wid.client_id:
                reply = _Refused(grpc.StatusCode.PERMISSION_DENIED, "another client's session")
            elif reply is None:
                self.s.index += 1
                try:
                    reply = apply(self.s.index)
                except _Refused as refused:
                    self.s.index -= 1
                    reply = refused
                self.s.sessions[key] = reply
                if not isinstance(reply, _Refused):
                    self.s.applied.append(key)
        if fault is not None and fault.action == "lost_reply":
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "connection reset")
        if isinstance(reply, _Refused):
            kind = (("medkv-error", reply.kind),) if reply.kind else ()
            await self._abort(context, reply.code, reply.message, kind)
        context.set_trailing_metadata(self._trailing())
        return reply

    async def SharePatient(self, request: Any, context: Any) -> kv_pb2.SharePatientResponse:
        """Leader only; idempotent; revoking the last clinic is FAILED_PRECONDITION
        (no clinic-scope check: the fake has no tokens)."""
        partition = self._partition(request.patient_id)
        await self._begin("SharePatient", request, context, partition)
        if not self._is_leader(partition):
            await self._redirect(context, partition)
        with self.cluster.lock:
            clinics = self.s.registrations.setdefault(request.patient_id, set())
            refused = request.revoke and clinics == {request.clinic}
            if not refused:
                if request.revoke:
                    clinics.discard(request.clinic)
                else:
                    clinics.add(request.clinic)
                self.s.index += 1
            after, index = sorted(clinics), self.s.index
        if refused:
            await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                              "revoking the patient's last clinic")
        context.set_trailing_metadata(self._trailing())
        return kv_pb2.SharePatientResponse(clinics=after, index=index)

    async def OpenSession(self, request: Any, context: Any) -> kv_pb2.OpenSessionResponse:
        partition = request.partition
        fault = await self._begin("OpenSession", request, context, partition)
        if not self._is_leader(partition):
            await self._redirect(context, partition)
        with self.cluster.lock:
            self.s.index += 1
            session = self.s.index
            self.s.open_sessions[(partition, session)] = request.client_id
        if fault is not None and fault.action == "lost_reply":
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "connection reset")
        context.set_trailing_metadata(self._trailing())
        return kv_pb2.OpenSessionResponse(
            session=session, partition=partition, ttl_ms=60_000,
            max_results=self.cluster.max_results,
        )

    def _current(self, key: tuple[str, str]) -> common_pb2.Record | None:
        versions = self.s.records.get(key)
        return versions[-1] if versions and not versions[-1].deleted else None

    def _check(self, key: tuple[str, str], expected: int) -> None:
        current = self._current(key)
        actual = current.version if current else 0
        if actual != expected:
            raise _Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"version mismatch: expected {expected}, actual {actual}",
            )

    def _store(self, pid: str, rid: str, value: bytes, index: int, deleted: bool = False) -> None:
        self.s.records.setdefault((pid, rid), []).append(
            common_pb2.Record(
                patient_id=pid, record_id=rid, value=value, version=index, deleted=deleted
            )
        )

    async def Put(self, request: kv_pb2.PutRequest, context: Any) -> kv_pb2.PutResponse:
        def apply(index: int) -> kv_pb2.PutResponse:
            self._store(request.patient_id, request.record_id, request.value, index)
            return kv_pb2.PutResponse(version=index)

        return await self._write("Put", request, context, apply)  # type: ignore[no-any-return]

    async def CompareAndSet(self, request: Any, context: Any) -> kv_pb2.CompareAndSetResponse:
        def apply(index: int) -> kv_pb2.CompareAndSetResponse:
            self._check((request.patient_id, request.record_id), request.expected_version)
            self._store(request.patient_id, request.record_id, request.value, index)
            return kv_pb2.CompareAndSetResponse(version=index)

        return await self._write("CompareAndSet", request, context, apply)  # type: ignore[no-any-return]

    async def Delete(self, request: Any, context: Any) -> kv_pb2.DeleteResponse:
        def apply(index: int) -> kv_pb2.DeleteResponse:
            key = (request.patient_id, request.record_id)
            if request.has_expected_version:
                self._check(key, request.expected_version)
            elif self._current(key) is None:
                raise _Refused(grpc.StatusCode.NOT_FOUND, "no such record")
            self._store(request.patient_id, request.record_id, b"", index, deleted=True)
            return kv_pb2.DeleteResponse(version=index)

        return await self._write("Delete", request, context, apply)  # type: ignore[no-any-return]

    async def Batch(self, request: Any, context: Any) -> kv_pb2.BatchResponse:
        def apply(index: int) -> kv_pb2.BatchResponse:
            for op in request.ops:
                if op.WhichOneof("op") == "check":
                    self._check((request.patient_id, op.check.record_id), op.check.expected_version)
            for op in request.ops:
                kind = op.WhichOneof("op")
                if kind == "put":
                    self._store(request.patient_id, op.put.record_id, op.put.value, index)
                elif kind == "delete":
                    self._store(request.patient_id, op.delete.record_id, b"", index, deleted=True)
            return kv_pb2.BatchResponse(version=index)

        return await self._write("Batch", request, context, apply)  # type: ignore[no-any-return]

    # -- reads -----------------------------------------------------------------

    async def _admit_read(
        self, options: common_pb2.ReadOptions, partition: int, context: Any
    ) -> None:
        consistency = options.consistency or common_pb2.LINEARIZABLE
        if consistency == common_pb2.LINEARIZABLE:
            if not self._is_leader(partition):
                await self._redirect(context, partition)
            return
        if self.node_id not in self.cluster.placement.replicas(partition):
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "wrong partition")
        if consistency == common_pb2.BOUNDED and not self._is_leader(partition):
            lag = self.s.staleness.get(self.node_id, 0.0)
            if lag * 1000 > options.max_staleness_ms:
                await self._abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"replica is {lag:.1f}s behind, over the bound",
                )

    async def Get(self, request: kv_pb2.GetRequest, context: Any) -> kv_pb2.GetResponse:
        partition = self._partition(request.patient_id)
        await self._begin("Get", request, context, partition)
        await self._admit_read(request.read, partition, context)
        with self.cluster.lock:
            versions = list(self.s.records.get((request.patient_id, request.record_id), []))
        if request.at_version:
            versions = [v for v in versions if v.version <= request.at_version]
        if not versions or (versions[-1].deleted and not request.at_version):
            await self._abort(context, grpc.StatusCode.NOT_FOUND, "no such record")
        context.set_trailing_metadata(self._trailing())
        return kv_pb2.GetResponse(record=versions[-1], read_state=self._read_state(partition))

    async def History(self, request: Any, context: Any) -> kv_pb2.HistoryResponse:
        partition = self._partition(request.patient_id)
        await self._begin("History", request, context, partition)
        await self._admit_read(request.read, partition, context)
        with self.cluster.lock:
            versions = list(self.s.records.get((request.patient_id, request.record_id), []))
        versions.reverse()
        if request.before_version:
            versions = [v for v in versions if v.version < request.before_version]
        page = request.limit or self.cluster.history_page
        return kv_pb2.HistoryResponse(
            versions=versions[:page], read_state=self._read_state(partition)
        )

    async def Scan(self, request: kv_pb2.ScanRequest, context: Any) -> Any:
        partition = request.partition
        fault = await self._begin("Scan", request, context, partition)
        options = common_pb2.ReadOptions()
        options.CopyFrom(request.read)
        if not options.consistency:
            options.consistency = common_pb2.FOLLOWER
        await self._admit_read(options, partition, context)
        with self.cluster.lock:
            keys = sorted(
                k for k in self.s.records if self._partition(k[0]) == partition and self._current(k)
            )
            rows = [r for r in (self._current(k) for k in keys) if r is not None]
        after = tuple(json.loads(request.resume_token)) if request.resume_token else None
        rows = [r for r in rows if (after is None or (r.patient_id, r.record_id) > after)]
        size = request.page_size or self.cluster.scan_page
        state = self._read_state(partition)
        for sent, start in enumerate(range(0, max(len(rows), 1), size)):
            if fault is not None and fault.action == "scan_break" and sent >= int(fault.arg):
                await self._abort(context, grpc.StatusCode.UNAVAILABLE, "replica went away")
            page = rows[start : start + size]
            token = json.dumps([page[-1].patient_id, page[-1].record_id]).encode() if page else b""
            yield kv_pb2.ScanResponse(
                records=page, read_state=state, resume_token=token, done=start + size >= len(rows)
            )

    # -- admin -----------------------------------------------------------------

    async def RoutingTable(self, request: Any, context: Any) -> admin_pb2.RoutingTableResponse:
        with self.cluster.lock:
            self.s.calls.append(Call(self.node_id, "RoutingTable", 0, metadata=self._md(context)))
        fault = self._fault("RoutingTable")
        if fault is not None and fault.action == "unavailable":
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "starting")
        reply = admin_pb2.RoutingTableResponse(
            epoch=self.s.epoch,
            partitions=self.s.partitions,
            replication_factor=self.s.replication,
            virtual_nodes=128,
        )
        for node, address in self.cluster.all_addresses().items():
            reply.nodes.add(node_id=node, address=address)
        for p in range(self.s.partitions):
            reply.partition_info.add(
                partition=p, replicas=self.cluster.placement.replicas(p), leader=self.s.leaders[p]
            )
        return reply

    async def ClusterStatus(self, request: Any, context: Any) -> admin_pb2.ClusterStatusResponse:
        with self.cluster.lock:
            self.s.calls.append(Call(self.node_id, "ClusterStatus", 0, metadata=self._md(context)))
        reply = admin_pb2.ClusterStatusResponse(
            answered_by=self.node_id,
            partitions=self.s.partitions,
            replication_factor=self.s.replication,
        )
        for node, address in self.cluster.addresses.items():
            reply.nodes.add(node=admin_pb2.NodeInfo(node_id=node, address=address), up=True)
        for p in range(self.s.partitions):
            reply.partition_info.add(
                partition=p,
                replicas=self.cluster.placement.replicas(p),
                leader=self.s.leaders[p],
                term=1,
                commit_index=self.s.index,
                applied_index=self.s.index,
            )
        return reply

    async def PartitionStatus(
        self, request: admin_pb2.PartitionStatusRequest, context: Any
    ) -> admin_pb2.PartitionStatusResponse:
        p = request.partition
        await self._begin("PartitionStatus", request, context, p)
        if not self._is_leader(p):
            await self._redirect(context, p)
        replicas = self.cluster.placement.replicas(p)
        info = admin_pb2.PartitionInfo(
            partition=p, replicas=replicas, leader=self.s.leaders[p], term=3,
            commit_index=self.s.index, applied_index=self.s.index,
        )
        for n in replicas:
            info.replica_status.add(
                node_id=n,
                role=admin_pb2.LEADER_ROLE if n == self.s.leaders[p] else admin_pb2.FOLLOWER_ROLE,
                term=3, commit_index=self.s.index, applied_index=self.s.index,
                match_index=self.s.index, lag_entries=0, reachable=True,
            )
        return admin_pb2.PartitionStatusResponse(answered_by=self.node_id, info=info)

    async def TransferLeader(
        self, request: admin_pb2.TransferLeaderRequest, context: Any
    ) -> admin_pb2.TransferLeaderResponse:
        p, target = request.partition, request.target_node
        await self._begin("TransferLeader", request, context, p)
        if not self._is_leader(p):
            await self._redirect(context, p)
        if target not in self.cluster.placement.replicas(p):
            await self._abort(
                context, grpc.StatusCode.FAILED_PRECONDITION,
                f"node {target} holds no replica of partition {p}",
            )
        with self.cluster.lock:
            self.s.leaders[p] = target
        return admin_pb2.TransferLeaderResponse(leader=target)

    async def KeyStatus(self, request: Any, context: Any) -> admin_pb2.KeyStatusResponse:
        with self.cluster.lock:
            self.s.calls.append(Call(self.node_id, "KeyStatus", 0, metadata=self._md(context)))
        return admin_pb2.KeyStatusResponse(node_id=self.node_id)

    async def AuditQuery(self, request: Any, context: Any) -> Any:
        """Entries seq 1..3 at times 1000 + 10 * seq + node (interleaving the nodes),
        one page per entry; the subject filter and limit are honoured."""
        with self.cluster.lock:
            self.s.calls.append(Call(self.node_id, "AuditQuery", 0, metadata=self._md(context)))
        fault = self._fault("AuditQuery")
        if fault is not None and fault.action == "code":
            await self._abort(context, fault.arg, "refused")
        entries = [
            {"seq": s, "time": 1000.0 + 10 * s + self.node_id, "node": self.node_id,
             "subject": f"user-{s}", "roles": ["clinician"], "method": "/medkv.v1.KV/Get",
             "outcome": "OK", "patient": "ab" * 16, "break_glass": s == 3,
             "break_glass_reason": "ER" if s == 3 else "", "reason": ""}
            for s in (1, 2, 3)
        ]
        entries = [e for e in entries if not request.subject or e["subject"] == request.subject]
        for e in entries[-(request.limit or 1000):]:
            yield admin_pb2.AuditQueryResponse(records=[admin_pb2.AuditRecord(
                node=self.node_id, seq=int(e["seq"]), json=json.dumps(e))])  # type: ignore[call-overload]

    async def AuditVerify(self, request: Any, context: Any) -> admin_pb2.AuditVerifyResponse:
        """Node 2's log is behind its anchor; the others are fine."""
        bad = self.node_id == 2
        return admin_pb2.AuditVerifyResponse(
            node=self.node_id, ok=not bad, entries=3 if bad else 5, head=("3:" if bad else "5:") + "c" * 64,
            anchored_head="5:" + "c" * 64,
            problems=["the log ends at entry 3 but the anchored head records entry 5: truncated "
                      "(the tail was removed)"] if bad else [],
        )

    def _stream_fault(self, action: str) -> Fault | None:
        """A fault scripted for BatchCommands itself (never one for any method)."""
        with self.cluster.lock:
            for fault in self.s.faults:
                if fault.times > 0 and fault.node in (None, self.node_id) \
                        and fault.method == "BatchCommands" and fault.action == action:
                    fault.times -= 1
                    return fault
        return None

    async def BatchCommands(self, request_iterator: Any, context: Any) -> Any:
        with self.cluster.lock:
            self.s.calls.append(Call(self.node_id, "BatchCommands", 0, metadata=self._md(context)))
        fault = self._stream_fault("code")
        if fault is not None:
            code, message = fault.arg
            await context.abort(code, message)
        if self.s.send_epoch:
            await context.send_initial_metadata(self._trailing())
        handlers: dict[str, Callable[[Any, Any], Any]] = {
            "put": self.Put, "get": self.Get, "cas": self.CompareAndSet,
            "delete": self.Delete, "history": self.History, "batch": self.Batch,
            "open_session": self.OpenSession,
        }
        out: asyncio.Queue[kv_pb2.KVResponse | str | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        breaking: list[bool] = []

        async def one(req: kv_pb2.KVRequest) -> None:
            kind = req.WhichOneof("request") or ""
            resp = kv_pb2.KVResponse(request_id=req.request_id)
            try:
                result = await handlers[kind](getattr(req, kind), _SubContext(context))
                getattr(resp, kind).CopyFrom(result)
            except _SubAbort as e:
                md = dict(e.trailing)
                resp.status.CopyFrom(common_pb2.Status(
                    code=e.code.value[0], message=e.message,
                    leader_hint=md.get("medkv-leader", ""), error_kind=md.get("medkv-error", ""),
                ))
            out.put_nowait(resp)

        async def read() -> None:
            async for batch in request_iterator:
                with self.cluster.lock:
                    self.s.batch_sizes.append(len(batch.requests))
                broken = self._stream_fault("break_stream")
                for req in batch.requests:
                    task = asyncio.get_running_loop().create_task(one(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if broken is not None:
                    breaking.append(True)
                    await asyncio.sleep(0.05)  # let them apply; their replies are lost
                    out.put_nowait("break")
                    return
            while tasks:
                await asyncio.wait(set(tasks))
            out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                if item == "break":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
                assert isinstance(item, kv_pb2.KVResponse)
                if breaking:
                    continue  # lost with the connection
                yield kv_pb2.BatchCommandsResponse(responses=[item])
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()


class _SubAbort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, trailing: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.trailing = code, message, tuple(trailing or ())


class _SubContext:
    """The context one request inside BatchCommands is served with: the stream's
    metadata; an abort becomes that request's status in the reply."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def invocation_metadata(self) -> Any:
        return self._stream.invocation_metadata()

    def set_trailing_metadata(self, md: Any) -> None:
        pass  # a stream reply has no per-request trailers

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        raise _SubAbort(code, message, trailing_metadata)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _server_loop() -> asyncio.AbstractEventLoop:
    """One event loop thread for every test server of the process.

    grpc.aio keeps process-wide state bound to the loops it has served on;
    one long-lived loop avoids spurious errors from loops that come and go.
    """
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="test-servers", daemon=True).start()
        return _LOOP


class TestCluster:
    """N in-process gRPC servers on one background event loop."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        nodes: int = 3,
        partitions: int = 4,
        replication: int = 3,
        *,
        scan_page: int = 2,
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.placement = make_placement(range(1, nodes + 1), partitions, replication)
        self.state = State(partitions, list(range(1, nodes + 1)), replication)
        # Default leaders: the preferred (first) replica of every partition.
        self.state.leaders = {p: self.placement.replicas(p)[0] for p in range(partitions)}
        self.lock = threading.Lock()
        self.scan_page = scan_page
        self.history_page = 2
        self.max_results = 64
        self.addresses: dict[int, str] = {}
        self._servers: dict[int, grpc.aio.Server] = {}
        self._loop = _server_loop()
        # TLS (e.g. mutual TLS with a test PKI) instead of plaintext ports.
        self.server_credentials = server_credentials

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_node(self, node: int, port: int = 0) -> None:
        server = grpc.aio.server()
        servicer = _Node(self, node)
        kv_pb2_grpc.add_KVServicer_to_server(servicer, server)
        admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
        if self.server_credentials is None:
            bound = server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            bound = server.add_secure_port(f"127.0.0.1:{port}", self.server_credentials)
        await server.start()
        self._servers[node] = server
        self.addresses[node] = f"127.0.0.1:{bound}"

    def start(self) -> TestCluster:
        for node in self.state.node_ids:
            self._run(self._start_node(node))
        return self

    def stop_node(self, node: int) -> None:
        """The node's server goes away: connections to it are refused."""
        server = self._servers.pop(node)
        self._run(server.stop(0))

    def restart_node(self, node: int) -> None:
        port = int(self.addresses[node].rsplit(":", 1)[1])
        self._run(self._start_node(node, port))

    def stop(self) -> None:
        for node in list(self._servers):
            self.stop_node(node)

    def __enter__(self) -> TestCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests -------------------------------------------------------------

    def address_of(self, node: int) -> str:
        return self.all_addresses().get(node, "127.0.0.1:1")

    def all_addresses(self) -> dict[int, str]:
        return {**self.addresses, **self.state.extra_nodes}

    def seeds(self) -> list[str]:
        return [self.addresses[n] for n in sorted(self.addresses)]

    def script(self, *faults: Fault) -> None:
        with self.lock:
            self.state.faults.extend(faults)

    def calls(self, method: str | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.state.calls if method is None or c.method == method]

    def clear_calls(self) -> None:
        with self.lock:
            self.state.calls.clear()

    def patient_in(self, partition: int, prefix: str = "patient") -> str:
        """A patient id that hashes to the given partition."""
        for i in range(100_000):
            pid = f"{prefix}-{i}"
            if self.placement.partition_of(pid) == partition:
                return pid
        raise AssertionError("no patient id found for the partition")

    def follower_of(self, partition: int) -> int:
        return next(
            n for n in self.placement.replicas(partition) if n != self.state.leaders[partition]
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
