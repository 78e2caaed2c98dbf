"""Creating a cluster (`medkv cluster init`) and a node's first start.

A node's configuration says who it is, where it listens, where its data
lives and how to reach the other members ([[peers]]). It does not create a
cluster by itself: a node whose data directory holds no cluster state
serves only what creating one needs (InitCluster for an admin, Bootstrap
for a peer's node certificate, NOT_SERVING health) and answers everything
else UNAVAILABLE, saying so. Otherwise two nodes started with different
[[peers]] tables (or a new machine started with the old ones) would each
found a cluster of their own from their own view.

`medkv cluster init`, asked of any initial member, computes ONE initial
cluster state (a random cluster id, its [[peers]] as the members, consistent
placement of the partitions, its [limits] as the cluster settings) and
stores it on itself first, then hands it
to every other member (RaftTransport.Bootstrap, under its node
certificate). Every initial member thus starts its system group and its
partitions from the same state at index 0. Asked again, it hands the same
stored state to members that lack it, so an init cut short by a member that
was down is finished by running it again. A member already holding another
cluster's state refuses (FAILED_PRECONDITION).

The initial state is kept beside the system group's applied state: it is
what the system group's log is replayed on top of, on this node and on any
node that joins later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import msgpack

from node.cluster.state import (
    REMOVED,
    SYSTEM_GROUP,
    ClusterState,
    ClusterStateError,
    initial_state,
)
from node.config import NodeConfig
from node.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    StartupError,
    Unavailable,
)
from node.settings import seed_from_limits
from proto.medkv.v1 import admin_pb2, raft_pb2, raft_pb2_grpc

log = logging.getLogger("medkv.cluster")

INITIAL_KEY = SYSTEM_GROUP.to_bytes(4, "big") + b"cluster-initial"
# A joining node's view of the cluster when it was handed the initial state:
# who the members are until its own system replica has replayed the log.
VIEW_KEY = SYSTEM_GROUP.to_bytes(4, "big") + b"cluster-view"
BOOTSTRAP_TIMEOUT_S = 5.0


def not_initialized(node_id: int) -> Unavailable:
    return Unavailable(
        f"node {node_id} is not part of a cluster yet: create one with `medkv cluster init` "
        "(scripts/cluster up does), or add this node to a running cluster"
    )


class ClusterStore:
    """The node's stored initial cluster state (None until init reached it)."""

    def __init__(self, db: Any, codec: Any) -> None:
        # db: the state key space (node.storage_layout STATE_PREFIX); codec seals values.
        self._db = db
        self._codec = codec

    def initial(self) -> ClusterState | None:
        return self._read(INITIAL_KEY)

    def view(self) -> ClusterState | None:
        """The cluster as it was when this node joined (None for an initial member)."""
        return self._read(VIEW_KEY)

    def _read(self, key: bytes) -> ClusterState | None:
        raw = self._db.get(key)
        if raw is None:
            return None
        obj = msgpack.unpackb(self._codec.open(key, raw), raw=False, strict_map_key=False)
        return ClusterState.from_obj(obj)

    def _write(self, key: bytes, state: ClusterState) -> None:
        data = msgpack.packb(state.to_obj(), use_bin_type=True)
        self._db.put(key, self._codec.seal(key, data), sync=True)

    def adopt(self, state: ClusterState, view: ClusterState | None = None) -> bool:
        """Keep state as this node's initial cluster state (synced), and for a
        node joining later its view of the members now. True if it was kept
        already; FAILED_PRECONDITION if another cluster's is."""
        held = self.initial()
        if held is not None:
            if held.cluster_id != state.cluster_id:
                raise FailedPrecondition(
                    f"this node is a member of cluster {held.cluster_id}, not {state.cluster_id}"
                )
            if held != state:
                raise FailedPrecondition(
                    f"cluster {state.cluster_id} was initialized with other members or "
                    "partitions on this node: the members' [[peers]] tables disagree"
                )
            return True
        if view is not None:
            self._write(VIEW_KEY, view)  # first: no initial state without its view
        self._write(INITIAL_KEY, state)
        if view is None:
            log.info("joined cluster %s as one of its %d initial members",
                     state.cluster_id, len(state.members))
        else:
            log.info("joining cluster %s (placement epoch %d)", state.cluster_id, view.epoch)
        return False


def config_for_cluster(cfg: NodeConfig, state: ClusterState) -> NodeConfig:
    """The node's configuration with the cluster's facts in place of the file's:
    its members (the file's [[peers]] address wins for a member it names: it
    is how THIS node reaches it, through a proxy or NAT maybe), partitions,
    replication and virtual nodes."""
    live = {m.id: m for m in state.live_members()}
    if cfg.node_id not in live:
        raise StartupError(
            f"node {cfg.node_id} is not a member of cluster {state.cluster_id} "
            f"(members: {', '.join(str(i) for i in sorted(live))})"
        )
    peers = {i: cfg.peers.get(i, m.address) for i, m in live.items()}
    clients = {i: cfg.client_addresses.get(i) or m.client_address for i, m in live.items()}
    return dataclasses.replace(
        cfg,
        peers=peers,
        client_addresses={i: a for i, a in clients.items() if a},
        partitions=state.partitions,
        replication=state.replication,
        virtual_nodes=state.virtual_nodes,
    )


def check_bootstrap(
    cfg: NodeConfig, req: raft_pb2.BootstrapRequest, cert_node: int | None
) -> tuple[ClusterState, ClusterState | None]:
    """The initial state a Bootstrap request hands this node (and, for a node
    joining a running cluster, the current state), after checking who sends
    it and that it names this node."""
    if cert_node is not None and cert_node != req.from_node:
        raise PermissionDenied(
            f"the certificate of node {cert_node} cannot bootstrap for node {req.from_node}"
        )
    if req.to_node != cfg.node_id:
        raise FailedPrecondition(f"bootstrap addressed to node {req.to_node}, this is node {cfg.node_id}")
    try:
        state = ClusterState.decode(req.cluster_state)
    except ClusterStateError as e:
        raise InvalidArgument(f"cluster_state: {e}") from None
    if state.epoch != 1:
        raise InvalidArgument("cluster_state: an initial state has epoch 1")
    view = None
    if req.current_state:
        try:
            view = ClusterState.decode(req.current_state)
        except ClusterStateError as e:
            raise InvalidArgument(f"current_state: {e}") from None
        if view.cluster_id != state.cluster_id or view.epoch < state.epoch:
            raise InvalidArgument("current_state: not a later state of the same cluster")
    listed = view or state
    for node in (cfg.node_id, req.from_node):
        m = listed.member(node)
        if m is None or m.state == REMOVED:
            raise FailedPrecondition(
                f"the cluster state of node {req.from_node} does not list both nodes "
                f"{req.from_node} and {cfg.node_id} as members"
            )
    return state, view


async def init_cluster(
    cfg: NodeConfig,
    store: ClusterStore,
    req: admin_pb2.InitClusterRequest,
    channel: Callable[[str], grpc.aio.Channel],
    current: ClusterState | None = None,
) -> admin_pb2.InitClusterResponse:
    """Create the cluster from this node's [[peers]] (or finish creating it).

    `current`: the cluster state this node has applied, when it runs as a
    member. An initial member the cluster removed since is skipped: it will
    never take the initial state again, and counting it as "not reached"
    kept a repeated `medkv cluster init` (every `scripts/cluster up`) from
    ever completing after a decommission."""
    held = store.initial()
    already = held is not None
    if held is None:
        partitions = req.partitions or cfg.partitions
        replication = req.replication or cfg.replication
        if not 1 <= partitions <= 65_536:
            raise InvalidArgument(f"partitions: {partitions} is not in 1..65536")
        if not 1 <= replication <= 7:
            raise InvalidArgument(f"replication: {replication} is not in 1..7")
        members = {n: (cfg.peers[n], cfg.client_addresses.get(n, "")) for n in sorted(cfg.peers)}
        cluster_id = req.cluster_id or uuid.uuid4().hex
        try:
            # The cluster's settings start as this node's [limits] (node.settings).
            held = initial_state(cluster_id, members, partitions, replication, cfg.virtual_nodes,
                                 settings=seed_from_limits(cfg.limits))
        except ClusterStateError as e:
            raise InvalidArgument(str(e)) from None
        store.adopt(held)  # this node first: a retry hands out the same state
    results = [admin_pb2.InitNodeResult(node_id=cfg.node_id, ok=True, already=already)]

    async def hand(member_id: int, address: str) -> admin_pb2.InitNodeResult:
        stub = raft_pb2_grpc.RaftTransportStub(channel(address))
        try:
            ack = await stub.Bootstrap(
                raft_pb2.BootstrapRequest(
                    from_node=cfg.node_id, to_node=member_id, cluster_state=held.encode()
                ),
                timeout=BOOTSTRAP_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as e:
            return admin_pb2.InitNodeResult(
                node_id=member_id, ok=False, error=f"{e.code().name}: {e.details()}"
            )
        return admin_pb2.InitNodeResult(node_id=member_id, ok=True, already=ack.already)

    gone = {m.id for m in current.members if m.state == REMOVED} if current is not None else set()
    others = [m for m in held.members if m.id != cfg.node_id and m.id not in gone]
    results += await asyncio.gather(
        *(hand(m.id, cfg.peers.get(m.id, m.address)) for m in others)
    )
    missing = [r.node_id for r in results if not r.ok]
    log.info(
        "cluster %s: initial state %s; %s", held.cluster_id,
        "handed out again" if already else "created",
        f"not reached yet: nodes {missing}" if missing else "every member holds it",
    )
    return admin_pb2.InitClusterResponse(
        cluster_id=held.cluster_id, already_initialized=already, partitions=held.partitions,
        replication=held.replication, nodes=results,
    )
