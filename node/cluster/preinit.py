"""A node that belongs to no cluster yet: serve only what creating one needs.

Until its data directory holds a cluster state (node.cluster.bootstrap), the
node process listens on its address with the same TLS, tokens and audit as
ever, answers Admin.InitCluster (an admin creates the cluster) and
RaftTransport.Bootstrap (the member asked to create it hands this node the
state), reports NOT_SERVING health, and answers every other call
UNAVAILABLE with what to do. Once a state is stored it stops, and the node
starts for real on the same address (node.server.serve).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from node import rpc_handlers
from node.auth.interceptor import interceptors
from node.auth.setup import AuthConfigError, build_access_control
from node.cluster.bootstrap import ClusterStore, check_bootstrap, init_cluster, not_initialized
from node.config import NodeConfig
from node.errors import StartupError
from node.storage_layout import STATE_PREFIX, StorageLayout
from node.tls import is_node_peer, peer_node_id
from node.transport import grpc_options, open_channel
from proto.medkv.v1 import admin_pb2, kv_pb2, raft_pb2

log = logging.getLogger("medkv.node")

GRACE_S = 2.0


class _Refusing:
    """Every method of a service answered UNAVAILABLE (not initialized),
    except those given."""

    def __init__(self, node_id: int, **implemented: Callable[..., Any]) -> None:
        self._node_id = node_id
        self._implemented = implemented

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._implemented:
            return self._implemented[name]

        def refuse(*_args: Any) -> Any:
            raise not_initialized(self._node_id)

        return refuse


def _add(server: grpc.aio.Server, module: ModuleType, name: str, servicer: object) -> None:
    rpc_handlers.add_service(server, module, name, servicer)


async def serve_until_member(cfg: NodeConfig, stop: asyncio.Event) -> bool:
    """Serve the pre-cluster calls until this node holds a cluster state (True)
    or stop is set (False). Returns at once if it already holds one."""
    layout = StorageLayout.open(cfg)
    try:
        store = ClusterStore(layout.db.prefixed_db(STATE_PREFIX), layout.codec)
        if store.initial() is not None:
            return True
        return await _serve(cfg, layout, store, stop)
    finally:
        layout.close()


async def _serve(cfg: NodeConfig, layout: StorageLayout, store: ClusterStore, stop: asyncio.Event) -> bool:
    warning = cfg.insecure_warning()
    if warning:
        log.warning("%s", warning)
    access = None
    if cfg.auth is not None:
        try:
            access = build_access_control(
                cfg.auth, keyring=layout, sealer=layout.codec, data_dir=cfg.data_dir,
                node_id=cfg.node_id, partitions=cfg.partitions, registry=None,
                on_audit_failure=lambda _e: stop.set(),
            )
        except AuthConfigError as e:
            raise StartupError(str(e)) from None
    joined = asyncio.Event()
    channels: dict[str, grpc.aio.Channel] = {}

    def channel(address: str) -> grpc.aio.Channel:
        if address not in channels:
            channels[address] = open_channel(address, cfg.tls, cfg.limits.max_message_bytes)
        return channels[address]

    async def InitCluster(request: admin_pb2.InitClusterRequest, context: Any) -> Any:
        reply = await init_cluster(cfg, store, request, channel)
        joined.set()
        return reply

    async def Bootstrap(request: raft_pb2.BootstrapRequest, context: Any) -> Any:
        if not is_node_peer(context, cfg.tls):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "Bootstrap accepts only node certificates")
        state = check_bootstrap(cfg, request, peer_node_id(context, cfg.tls))
        already = store.adopt(state)
        joined.set()
        return raft_pb2.BootstrapAck(already=already)

    server = grpc.aio.server(options=grpc_options(cfg.limits.max_message_bytes),
                             interceptors=interceptors(access))
    node_id = cfg.node_id
    _add(server, kv_pb2, "KV", _Refusing(node_id))
    _add(server, admin_pb2, "Admin", _Refusing(node_id, InitCluster=InitCluster))
    _add(server, raft_pb2, "RaftTransport", _Refusing(node_id, Bootstrap=Bootstrap))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if cfg.tls is not None:
        port = server.add_secure_port(cfg.listen, cfg.tls.server_credentials())
    else:
        port = server.add_insecure_port(cfg.listen)
    if port == 0:
        raise OSError(f"cannot listen on {cfg.listen}")
    if access is not None and access.audit is not None:
        access.audit.start()
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    log.warning(
        "node %d on %s is not part of a cluster yet: waiting for `medkv cluster init` "
        "(scripts/cluster up runs it) or for a member to hand it the cluster state",
        cfg.node_id, cfg.listen,
    )
    waiters = [asyncio.ensure_future(joined.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        # Calls in flight (the Bootstrap ack, an InitCluster answer) finish first.
        await server.stop(GRACE_S)
        for ch in channels.values():
            await ch.close()
        if access is not None and access.audit is not None:
            try:
                await access.audit.close()
            except Exception as e:
                log.error("audit log: final flush failed (%s)", type(e).__name__)
    return joined.is_set()
