"""The node process: opens storage, builds the multi-Raft host and serves gRPC.

Shutdown on SIGTERM/SIGINT is graceful: stop accepting RPCs, let in-flight
ones finish (bounded), stop the Raft loop after its last synced write, close
LevelDB. A kill -9 at any moment is safe too: everything acknowledged was
synced before its acknowledgement left the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator

import grpc
import plyvel
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from consensus.leveldb_storage import LevelDBLogStore
from consensus.types import MessageType
from node import raft_guard, rpc_handlers, test_only
from node.admin_service import AdminService
from node.auth.interceptor import AccessControl, interceptors
from node.auth.setup import AuthConfigError, build_access_control
from node.cluster.bootstrap import (
    ClusterStore,
    check_bootstrap,
    config_for_cluster,
    init_cluster,
    not_initialized,
)
from node.cluster.preinit import serve_until_member
from node.cluster.reconciler import Reconciler
from node.cluster.state import ClusterState
from node.cluster.system import SystemStateMachine, initial_conf
from node.config import NodeConfig
from node.erasure import ErasurePurger
from node.errors import InvalidArgument, NodeError, StartupError
from node.grpc_errors import abort_with, hide_paths, set_epoch_source
from node.host import MultiRaftHost, log_refusal
from node.key_rotation import KeyRotationManager
from node.kv_service import KVService
from node.loop_lag import LoopLagProbe
from node.metrics import NodeMetrics, NodeMetricsEndpoint
from node.metrics.grpc_calls import MetricsInterceptor
from node.registry import ReplicatedRegistry
from node.settings_service import SettingsService
from node.storage_layout import STATE_PREFIX, StorageLayout
from node.tls import is_node_peer, peer_node_id
from node.transport import (
    PeerTransport,
    decode_batch_items,
    decode_closed,
    grpc_options,
    open_channel,
)
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, raft_pb2, raft_pb2_grpc

log = logging.getLogger("medkv.node")

GRACE_SECONDS = 5.0
MAX_SNAPSHOT_BYTES = 4 << 30


class RaftTransportService(raft_pb2_grpc.RaftTransportServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    async def Stream(
        self, request_iterator: AsyncIterator[raft_pb2.RaftBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[raft_pb2.RaftBatchAck]:
        if not is_node_peer(context, self.node.cfg.tls):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the Raft transport accepts only node certificates",
            )
        me = self.node.cfg.node_id
        # With TLS a node speaks only for itself: the node id its certificate
        # names must be every batch's sender (the interceptor checks it too, when
        # access control is on; this holds for `insecure = true` with [tls]).
        cert_node = peer_node_id(context, self.node.cfg.tls)
        async for batch in request_iterator:
            sender = batch.from_node
            if cert_node is not None and sender != cert_node:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the certificate of node {cert_node} cannot send for node {sender}",
                )
            if batch.to_node != me or sender not in self.node.cfg.peers or sender == me:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node {me} refuses a batch from node {sender} addressed to node {batch.to_node}",
                )
            # Every message is checked before the core sees it (node.raft_guard):
            # the valid ones of the batch are delivered, and the first refusal
            # ends the stream with its status; the sender logs it.
            problem = raft_guard.check_envelope_numbers(batch)
            if problem is None:
                msgs, garbled = decode_batch_items(batch)
                snaps = [g for g, m in msgs if m.type == MessageType.SNAP]
                accepted, refused = self.node.host.screen(
                    [(g, m) for g, m in msgs if m.type != MessageType.SNAP], sender
                )
                self.node.host.deliver(accepted, sender)
                if batch.closed:  # leaders' confirmed pairs (node.staleness); host checks them
                    self.node.host.deliver_closed(sender, decode_closed(batch))
                if garbled:
                    problem = InvalidArgument(f"partition {garbled[0][0]}: {garbled[0][1]}")
                elif snaps:
                    problem = InvalidArgument(
                        f"partition {snaps[0]}: a snapshot travels on the Snapshot RPC, "
                        "not in a batch"
                    )
                elif refused is not None:
                    raise refused  # screen() logged it
            if problem is not None:
                log_refusal(sender, problem)
                self.node.metrics.reject("raft_message_refused")
                raise problem
        if False:  # an async generator that yields nothing: acks are not needed yet
            yield raft_pb2.RaftBatchAck()

    async def Bootstrap(
        self, request: raft_pb2.BootstrapRequest, context: grpc.aio.ServicerContext
    ) -> raft_pb2.BootstrapAck:
        """A member handing out the initial state again (an init finishing):
        the same cluster's is acknowledged, another's refused."""
        if not is_node_peer(context, self.node.cfg.tls):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the Raft transport accepts only node certificates",
            )
        state, view = check_bootstrap(
            self.node.cfg, request, peer_node_id(context, self.node.cfg.tls))
        return raft_pb2.BootstrapAck(already=self.node.cluster_store.adopt(state, view))

    async def Snapshot(
        self, request_iterator: AsyncIterator[raft_pb2.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> raft_pb2.SnapshotAck:
        if not is_node_peer(context, self.node.cfg.tls):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "the Raft transport accepts only node certificates",
            )
        try:
            # The header is checked (node.raft_guard: its sender a member of the
            # group, and the rest) before a byte of data is staged.
            group, msg = await self.node.host.snapshots.receive(request_iterator, MAX_SNAPSHOT_BYTES)
        except NodeError as e:
            log.warning("refused a snapshot: %s", e.message)
            self.node.metrics.reject("raft_message_refused")
            await abort_with(context, e)
            raise  # abort_with raises; never reached
        self.node.host.deliver([(group, msg)], msg.frm)
        return raft_pb2.SnapshotAck(accepted=True)


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        test_only.warn(cfg.test_only, log)  # before storage opens: it may roll writes back
        hide_paths({
            str(cfg.data_dir): "DATA_DIR",
            str(cfg.key_file) if cfg.key_file else "": "KEY_FILE",
            str(cfg.key_file.parent) if cfg.key_file else "": "the key file's directory",
        })
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Per node, never prometheus_client's global registry (node.metrics).
        self.metrics = NodeMetrics()
        self.layout = StorageLayout.open(cfg)
        self.db: plyvel.DB = self.layout.db
        # The cluster's facts, replicated by the system group (node.cluster):
        # they, not the file, say who the members are and how many partitions.
        self.cluster_store = ClusterStore(self.db.prefixed_db(STATE_PREFIX), self.layout.codec)
        initial = self.cluster_store.initial()
        if initial is None:
            self.layout.close()
            raise StartupError(str(not_initialized(cfg.node_id).message))
        self.cluster = SystemStateMachine(self.db.prefixed_db(STATE_PREFIX), self.layout.codec)
        if self.cluster.state is None:
            self.cluster.initialize(initial)
        assert self.cluster.state is not None
        # A node that joined a running cluster knows the members from the view
        # it was handed until its system replica has replayed the log that far.
        facts = self.cluster.state
        view = self.cluster_store.view()
        if view is not None and view.epoch > facts.epoch:
            facts = view
        self.file_cfg = cfg
        try:
            cfg = self.cfg = config_for_cluster(cfg, facts)
        except StartupError:
            self.layout.close()
            raise
        if (self.file_cfg.partitions, self.file_cfg.replication) != (cfg.partitions, cfg.replication):
            log.info(
                "cluster %s has %d partitions and replication %d; the configuration's "
                "values (%d, %d) only seed `medkv cluster init`", facts.cluster_id,
                cfg.partitions, cfg.replication, self.file_cfg.partitions,
                self.file_cfg.replication,
            )
        self._initial = initial
        # Set once this node applies its own removal: from then on its view of
        # the cluster ages, so it must not answer routing or status questions.
        self.removed = False
        self.log_store: LevelDBLogStore = self.layout.log_store
        self.transport = PeerTransport(
            cfg.node_id,
            cfg.peers,
            on_unreachable=lambda peer, groups: self.host.report_unreachable(peer, groups),
            on_snapshot_done=lambda group, peer, ok: self.host.report_snapshot(group, peer, ok),
            max_message_bytes=cfg.limits.max_message_bytes,
            tls=cfg.tls,
            snapshot_source=lambda group, m: self.host.snapshots.outgoing(group, m),
        )
        self.host = MultiRaftHost(
            cfg,
            self.log_store,
            self.layout.state_machine,
            self.transport.send,
            on_purge_due=lambda partition: self.purger.notify(partition),
            announce=self.transport.announce,
            placement=facts.placement,
            metrics=self.metrics,
            catalog=self.layout.replica_catalog(),
        )
        log.info("node %d: member of cluster %s", cfg.node_id, self.cluster.state.cluster_id)
        self.host.open_system(self.cluster, initial_conf(initial))
        self.cluster.on_change.append(self._follow_members)
        self.reconciler = Reconciler(self)
        self.purger = ErasurePurger(self.host, self.layout)
        self.keys = KeyRotationManager(self.layout, self.host, cfg.key_file)
        self.kv = KVService(self)
        self.settings = SettingsService(self)
        self.admin = AdminService(self)
        self.access = self._access_control()
        if self.access is not None:
            self.access.on_refusal = self.metrics.reject
        self.metrics_endpoint = NodeMetricsEndpoint(self)
        if self.access is not None and self.access.audit is not None:
            self.keys.reseal_audit = self.access.audit.log.reseal
            self.keys.keep_key_ids = self.access.audit.log.key_ids_in_use
        self._peer_channels: dict[int, grpc.aio.Channel] = {}
        self._address_channels: dict[str, grpc.aio.Channel] = {}
        self.server: grpc.aio.Server | None = None
        self.health = HealthServicer()
        self._stopped = asyncio.Event()
        self.fatal = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    def _follow_members(self, state: ClusterState) -> None:
        """The cluster state changed (applied on the Raft loop): dial new
        members, drop removed ones, accept their Raft traffic."""
        try:
            new = config_for_cluster(self.file_cfg, state)
        except StartupError:
            if not self.removed:
                self.removed = True
                log.warning("node %d was removed from cluster %s: it answers no more calls "
                            "(stop it)", self.cfg.node_id, state.cluster_id)
                asyncio.get_running_loop().create_task(
                    self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
            return
        self.host.placement = state.placement
        if new.peers == self.cfg.peers and new.client_addresses == self.cfg.client_addresses:
            return
        self.cfg = self.host.cfg = new
        self.host.guard_limits = dataclasses.replace(
            self.host.guard_limits, peers=frozenset(new.peers))
        self.transport.set_peers(new.peers)
        log.info("node %d: cluster members now %s", new.node_id, sorted(new.peers))

    @property
    def routing_epoch(self) -> int:
        """The placement epoch of the cluster state this node has applied."""
        state = self.cluster.state
        return state.epoch if state is not None else 0

    def _access_control(self) -> AccessControl | None:
        """Tokens, policy and audit for every call; None only for `insecure = true`."""
        cfg = self.cfg
        if cfg.auth is None:
            if not cfg.insecure:  # parse_config refuses this; a NodeConfig built in code might not
                raise StartupError("a node needs [tls] and [auth], or `insecure = true`")
            return None
        try:
            return build_access_control(
                cfg.auth, keyring=self.layout, sealer=self.layout.codec, data_dir=cfg.data_dir,
                node_id=cfg.node_id, partitions=cfg.partitions,
                registry=ReplicatedRegistry(self.host),
                on_audit_failure=self._audit_failed,
            )
        except AuthConfigError as e:
            raise StartupError(str(e)) from None

    def _audit_failed(self, error: BaseException) -> None:
        # An access that cannot be recorded must not be served: stop the node
        # (non-zero exit) rather than answer unaudited calls.
        log.critical("the audit log cannot be written (%s): stopping the node",
                     type(error).__name__)
        self.fatal.set()

    def _warn_insecure(self) -> None:
        warning = self.cfg.insecure_warning()
        if warning:
            log.warning("%s", warning)

    def channel_to(self, address: str) -> grpc.aio.Channel:
        """A node-certificate channel to an address (kept open until stop)."""
        ch = self._address_channels.get(address)
        if ch is None:
            ch = open_channel(address, self.cfg.tls, self.cfg.limits.max_message_bytes)
            self._address_channels[address] = ch
        return ch

    async def init_cluster(self, request: admin_pb2.InitClusterRequest) -> admin_pb2.InitClusterResponse:
        """InitCluster on a member: hand the initial state to members that lack it."""
        return await init_cluster(self.cfg, self.cluster_store, request, self.channel_to,
                                  self.cluster.state)

    def peer_admin(self, peer: int) -> admin_pb2_grpc.AdminStub:
        ch = self._peer_channels.get(peer)
        if ch is None:
            ch = open_channel(self.cfg.peers[peer], self.cfg.tls, self.cfg.limits.max_message_bytes)
            self._peer_channels[peer] = ch
        return admin_pb2_grpc.AdminStub(ch)

    async def start(self) -> None:
        # First: a metrics address that cannot be bound stops the node before it serves.
        self.metrics_endpoint.start()
        opts = grpc_options(self.cfg.limits.max_message_bytes)
        self._warn_insecure()
        # The metrics interceptor first (outermost): it counts the calls the
        # access-control interceptor refuses too.
        self.server = grpc.aio.server(
            options=opts,
            interceptors=[MetricsInterceptor(self.metrics), *interceptors(self.access)],
        )
        # Raw bytes in, parsed and mapped to precise statuses (node.rpc_handlers).
        rpc_handlers.add_service(self.server, kv_pb2, "KV", self.kv)
        rpc_handlers.add_service(self.server, admin_pb2, "Admin", self.admin)
        rpc_handlers.add_service(self.server, raft_pb2, "RaftTransport", RaftTransportService(self))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self.cfg.tls is not None:
            port = self.server.add_secure_port(self.cfg.listen, self.cfg.tls.server_credentials())
        else:
            port = self.server.add_insecure_port(self.cfg.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.cfg.listen}")
        # A node whose Raft loop died must not linger answering RPCs: stop it,
        # exiting non-zero, so its supervisor restarts it.
        if self.access is not None and self.access.audit is not None:
            self.access.audit.start()
        set_epoch_source(lambda: self.routing_epoch)
        self.host.start(on_fatal=self.fatal.set)
        self._background.append(asyncio.get_running_loop().create_task(self.reconciler.run()))
        self.purger.start()  # completes erasure purges a stop or crash left pending
        self.keys.start()  # resumes a re-encryption pass a crash interrupted
        self.transport.start()
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("medkv.v1.KV", health_pb2.HealthCheckResponse.SERVING)
        self._background.append(asyncio.get_running_loop().create_task(self._balance_loop()))
        self._background.append(asyncio.get_running_loop().create_task(self.settings.seed_loop()))
        self.loop_lag = LoopLagProbe()
        self._background.append(asyncio.get_running_loop().create_task(self.loop_lag.run()))
        if self.access is not None and self.access.audit is not None:
            # The audit chain head into replicated state (node.audit_service).
            self._background.append(
                asyncio.get_running_loop().create_task(self.admin.audit.anchor_loop()))
        log.info(
            "node %d serving on %s: %d local partitions",
            self.cfg.node_id, self.cfg.listen, len(self.host.replicas),
        )

    async def _balance_loop(self) -> None:
        while True:
            await asyncio.sleep(3.0)
            try:
                self.host.balance_leaders()
            except Exception:
                log.exception("leader balancing failed")

    async def stop(self) -> None:
        log.info("node %d shutting down", self.cfg.node_id)
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            # Stop accepting RPCs; let client calls in flight finish (bounded),
            # then cut what is left: the peers' Raft streams never end by themselves.
            stopping = asyncio.ensure_future(self.server.stop(GRACE_SECONDS))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + GRACE_SECONDS
            while self.kv.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.02)
            # The last audit head, while the peers' Raft streams still reach us
            # (stop(0) cuts them): bounded, best effort.
            await self.admin.audit.final_anchor()
            await self.server.stop(0)
            await stopping
        log.debug("shutdown: rpc server stopped")
        self.metrics_endpoint.stop()
        for t in self._background:
            t.cancel()
        if self.access is not None and self.access.audit is not None:
            try:
                await self.access.audit.close()  # the last calls' entries reach the disk
            except Exception as e:
                log.error("audit log: final flush failed (%s)", type(e).__name__)
        await self.transport.close()
        log.debug("shutdown: transport closed")
        await self.keys.stop()  # before the host: it releases the parked writer thread
        await self.purger.stop()  # before the database closes: a compaction may be running
        await self.host.stop()
        for ch in [*self._peer_channels.values(), *self._address_channels.values()]:
            await ch.close()
        self.layout.close()
        self._stopped.set()
        log.info("node %d stopped cleanly", self.cfg.node_id)


async def serve(cfg: NodeConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # A node of no cluster yet serves only the calls that create one
    # (node.cluster.preinit); stopped meanwhile, it leaves.
    if not await serve_until_member(cfg, stop):
        log.info("node %d stopped before it joined a cluster", cfg.node_id)
        return
    node = Node(cfg)
    await node.start()
    fatal = asyncio.ensure_future(node.fatal.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), fatal],
                       return_when=asyncio.FIRST_COMPLETED)
    await node.stop()
    if node.fatal.is_set():
        raise StartupError("the node stopped on a fatal error (the Raft loop or the audit log); see the log above")

