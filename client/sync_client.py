"""The blocking medkv client.

It runs an `AsyncClient` on a private event loop in a daemon thread and waits
for each call's result, so routing, retries and WriteId handling exist once
(in client/async_client.py). A scan's partitions are read concurrently by
tasks on that loop; the calling thread receives the pages as they arrive,
one hop across threads per page, so memory stays bounded by the in-flight
pages however large the scan.

Every Client of a process shares that one loop thread: grpc.aio keeps
process-wide state bound to the loops it has seen, and closing loops as
clients come and go makes it log spurious errors. A Client may also be
shared by several threads: every call is scheduled onto the one loop, which
serialises access to the routing state.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from client.async_client import DEFAULT_ADDRESS, AsyncClient
from client.audit import AuditQueryResult, AuditVerifyResult
from client.errors import MedkvError
from client.records import Record, ScanPage, Sharing
from client.retry import RetryPolicy
from client.routing import Router, RoutingTable
from client.tls import TlsConfig
from proto.medkv.v1 import admin_pb2

T = TypeVar("T")


class _LoopThread:
    """The process's client event loop, started on first use (again after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="medkv-client-loop", daemon=True
                )
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_LOOP = _LoopThread()


async def _next_page(pages: AsyncGenerator[ScanPage, None]) -> ScanPage | None:
    try:
        return await pages.__anext__()
    except StopAsyncIteration:
        return None


class Client:
    """A blocking medkv client: `Client(["127.0.0.1:7101", ...])` or `Client("host:port")`.

    Same methods and arguments as AsyncClient (`token=`, `clinic=`,
    `break_glass_reason=`, `multiplex=` included). Calls from several threads
    run on one private loop, so concurrent ones to a node share its
    BatchCommands stream too. Use as a context manager or call close()
    to release the channels and the loop thread.
    """

    def __init__(
        self,
        addresses: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        client_id: bytes | None = None,
        scan_parallelism: int = 8,
        channel_options: Sequence[tuple[str, Any]] = (),
        tls: TlsConfig | None = None,
        token: str | None = None,
        clinic: str | None = None,
        break_glass_reason: str | None = None,
        multiplex: bool | None = None,
    ) -> None:
        # Built first: argument errors surface before a thread is started.
        self._async = AsyncClient(
            addresses,
            timeout=timeout,
            retry=retry,
            client_id=client_id,
            scan_parallelism=scan_parallelism,
            channel_options=channel_options,
            tls=tls,
            token=token,
            clinic=clinic,
            break_glass_reason=break_glass_reason,
            multiplex=multiplex,
        )
        self._loop = _LOOP.get()
        self._closed = False

    def __repr__(self) -> str:
        return "Client" + repr(self._async).removeprefix("AsyncClient")

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise MedkvError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (e.g. Ctrl-C) while waiting: stop the call on the loop too.
            future.cancel()
            raise

    @property
    def client_id(self) -> bytes:
        return self._async.client_id

    @property
    def policy(self) -> RetryPolicy:
        return self._async.policy

    @property
    def router(self) -> Router | None:
        """The routing state (read it only; it lives on the client's loop)."""
        return self._async.router

    # --------------------------------------------------------------- lifecycle

    def connect(self, timeout: float | None = None) -> None:
        self._run(self._async.connect(timeout))

    def close(self) -> None:
        """Close every channel of this client. Idempotent."""
        if self._closed:
            return
        try:
            self._run(self._async.close())
        finally:
            self._closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def put(
        self, patient_id: str, record_id: str, value: bytes, *, timeout: float | None = None
    ) -> int:
        return self._run(self._async.put(patient_id, record_id, value, timeout=timeout))

    def cas(
        self,
        patient_id: str,
        record_id: str,
        value: bytes,
        expected_version: int,
        *,
        timeout: float | None = None,
    ) -> int:
        return self._run(
            self._async.cas(patient_id, record_id, value, expected_version, timeout=timeout)
        )

    def delete(
        self,
        patient_id: str,
        record_id: str,
        expected_version: int | None = None,
        *,
        timeout: float | None = None,
    ) -> int:
        return self._run(
            self._async.delete(patient_id, record_id, expected_version, timeout=timeout)
        )

    def batch(self, patient_id: str, ops: Iterable[Any], *, timeout: float | None = None) -> int:
        return self._run(self._async.batch(patient_id, list(ops), timeout=timeout))

    def put_json(
        self,
        patient_id: str,
        record_id: str,
        resource: Mapping[str, Any],
        *,
        resource_type: str | None = None,
        timeout: float | None = None,
    ) -> int:
        return self._run(
            self._async.put_json(
                patient_id, record_id, resource, resource_type=resource_type, timeout=timeout
            )
        )

    # ------------------------------------------------------------------- reads

    def get(
        self,
        patient_id: str,
        record_id: str,
        *,
        consistency: str = "linearizable",
        max_staleness: float | None = None,
        min_version: int | None = None,
        at_version: int | None = None,
        timeout: float | None = None,
    ) -> Record:
        return self._run(
            self._async.get(
                patient_id,
                record_id,
                consistency=consistency,
                max_staleness=max_staleness,
                min_version=min_version,
                at_version=at_version,
                timeout=timeout,
            )
        )

    def get_json(
        self,
        patient_id: str,
        record_id: str,
        *,
        resource_type: str | None = None,
        consistency: str = "linearizable",
        max_staleness: float | None = None,
        min_version: int | None = None,
        at_version: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return self._run(
            self._async.get_json(
                patient_id,
                record_id,
                resource_type=resource_type,
                consistency=consistency,
                max_staleness=max_staleness,
                min_version=min_version,
                at_version=at_version,
                timeout=timeout,
            )
        )

    def history(
        self,
        patient_id: str,
        record_id: str,
        limit: int | None = None,
        *,
        consistency: str = "linearizable",
        max_staleness: float | None = None,
        timeout: float | None = None,
    ) -> list[Record]:
        return self._run(
            self._async.history(
                patient_id,
                record_id,
                limit,
                consistency=consistency,
                max_staleness=max_staleness,
                timeout=timeout,
            )
        )

    # ------------------------------------------------------------------- scans

    def scan_pages(
        self,
        *,
        consistency: str = "follower",
        max_staleness: float | None = None,
        partitions: Iterable[int] | None = None,
        page_size: int = 0,
        parallelism: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[ScanPage]:
        """Pages of every partition as they arrive (see AsyncClient.scan_pages)."""
        pages = self._async.scan_pages(
            consistency=consistency,
            max_staleness=max_staleness,
            partitions=None if partitions is None else list(partitions),
            page_size=page_size,
            parallelism=parallelism,
            timeout=timeout,
        )
        try:
            while (page := self._run(_next_page(pages))) is not None:
                yield page
        finally:
            # Abandoned or finished: stop the partition tasks on the loop.
            if not self._closed:
                self._run(pages.aclose())

    def scan(
        self,
        *,
        consistency: str = "follower",
        max_staleness: float | None = None,
        partitions: Iterable[int] | None = None,
        page_size: int = 0,
        parallelism: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Record]:
        """Every record of the scanned partitions; each carries partition and staleness."""
        for page in self.scan_pages(
            consistency=consistency,
            max_staleness=max_staleness,
            partitions=partitions,
            page_size=page_size,
            parallelism=parallelism,
            timeout=timeout,
        ):
            yield from page.records

    # ------------------------------------------------------------------- admin

    def routing_table(self, *, timeout: float | None = None) -> RoutingTable:
        return self._run(self._async.routing_table(timeout=timeout))

    def cluster_status(self, *, timeout: float | None = None) -> admin_pb2.ClusterStatusResponse:
        return self._run(self._async.cluster_status(timeout=timeout))

    def init_cluster(
        self, *, partitions: int = 0, replication: int = 0, timeout: float | None = None
    ) -> admin_pb2.InitClusterResponse:
        """Create the cluster through the first address (Admin.InitCluster); idempotent."""
        return self._run(self._async.init_cluster(
            partitions=partitions, replication=replication, timeout=timeout))

    def add_node(
        self, node_id: int, address: str, *, client_address: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.AddNodeResponse:
        """Make a new node a member (Admin.AddNode); idempotent."""
        return self._run(self._async.add_node(
            node_id, address, client_address=client_address, timeout=timeout))

    def decommission_node(
        self, node_id: int, *, dead: bool = False, timeout: float | None = None
    ) -> admin_pb2.DecommissionNodeResponse:
        """Move every replica off a node, then remove it (Admin.DecommissionNode)."""
        return self._run(self._async.decommission_node(node_id, dead=dead, timeout=timeout))

    def list_nodes(self, *, timeout: float | None = None) -> admin_pb2.ListNodesResponse:
        """The cluster's members (Admin.ListNodes) from any reachable node."""
        return self._run(self._async.list_nodes(timeout=timeout))

    def partition_status(
        self, partition: int, *, timeout: float | None = None
    ) -> admin_pb2.PartitionStatusResponse:
        """Admin.PartitionStatus of one partition, from its leader."""
        return self._run(self._async.partition_status(partition, timeout=timeout))

    def transfer_leader(self, partition: int, node_id: int, *, timeout: float | None = None) -> int:
        """Make node_id the partition's leader; returns the leader once done."""
        return self._run(self._async.transfer_leader(partition, node_id, timeout=timeout))

    def erase_patient(self, patient_id: str, *, timeout: float | None = None) -> int:
        """Erase every record of one patient on every replica; returns the erasure's version."""
        return self._run(self._async.erase_patient(patient_id, timeout=timeout))

    def share_patient(
        self, patient_id: str, clinic: str, revoke: bool = False, *, timeout: float | None = None
    ) -> Sharing:
        """Register a patient to one more clinic, or revoke one (AsyncClient.share_patient)."""
        return self._run(
            self._async.share_patient(patient_id, clinic, revoke=revoke, timeout=timeout)
        )

    def get_settings(
        self, *, partitions: Iterable[int] | None = None, timeout: float | None = None
    ) -> list[admin_pb2.GetSettingsResponse]:
        """Each partition's cluster settings (AsyncClient.get_settings)."""
        return self._run(
            self._async.get_settings(
                partitions=None if partitions is None else list(partitions), timeout=timeout
            )
        )

    def set_settings(
        self,
        *,
        session_ttl_ms: int | None = None,
        history_retention: int | None = None,
        max_sessions: int | None = None,
        max_results_per_session: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> admin_pb2.SetSettingsResponse:
        """Change the cluster's settings, one new generation (AsyncClient.set_settings)."""
        return self._run(
            self._async.set_settings(
                session_ttl_ms=session_ttl_ms,
                history_retention=history_retention,
                max_sessions=max_sessions,
                max_results_per_session=max_results_per_session,
                wait=wait,
                timeout=timeout,
            )
        )

    def settings_behind(self, generation: int, *, timeout: float | None = None) -> list[int]:
        """Partitions not yet at that settings generation (AsyncClient.settings_behind)."""
        return self._run(self._async.settings_behind(generation, timeout=timeout))

    def key_status(
        self, address: str, *, count_values: bool = False, timeout: float | None = None
    ) -> admin_pb2.KeyStatusResponse:
        """One node's keys and re-encryption progress (AsyncClient.key_status)."""
        return self._run(
            self._async.key_status(address, count_values=count_values, timeout=timeout)
        )

    def rotate_data_key(
        self, address: str, *, timeout: float | None = None
    ) -> admin_pb2.RotateDataKeyResponse:
        """Start (or continue) a data key rotation on one node (AsyncClient.rotate_data_key)."""
        return self._run(self._async.rotate_data_key(address, timeout=timeout))

    def rotate_master_key(
        self,
        address: str,
        new_master_key_id: str,
        step: admin_pb2.MasterRotationStep,
        *,
        timeout: float | None = None,
    ) -> admin_pb2.RotateMasterKeyResponse:
        """One master rotation step on one node (AsyncClient.rotate_master_key)."""
        return self._run(
            self._async.rotate_master_key(address, new_master_key_id, step, timeout=timeout)
        )

    def audit_query(
        self,
        *,
        patient_id: str | None = None,
        subject: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        break_glass_only: bool = False,
        timeout: float | None = None,
    ) -> AuditQueryResult:
        """Every node's audit entries, merged by time (AsyncClient.audit_query)."""
        return self._run(self._async.audit_query(
            patient_id=patient_id, subject=subject, since=since, until=until, limit=limit,
            break_glass_only=break_glass_only, timeout=timeout,
        ))

    def audit_verify(self, *, timeout: float | None = None) -> list[AuditVerifyResult]:
        """Every node's audit chain check (AsyncClient.audit_verify)."""
        return self._run(self._async.audit_verify(timeout=timeout))


__all__ = ["Client"]
