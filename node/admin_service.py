"""The operator-facing Admin service: status, routing table, leader transfer."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from consensus.types import StateRole
from node.audit_service import AuditService
from node.cluster import state as cluster_state
from node.config import NodeConfig
from node.crypto import CryptoError
from node.errors import FailedPrecondition, InvalidArgument, NodeError, Unavailable
from node.grpc_errors import abort_with
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("medkv.admin")

if TYPE_CHECKING:
    from node.host import Replica
    from node.key_rotation import KeyState, ReEncryptionState
    from node.server import Node

log = logging.getLogger("medkv.admin")

VERSION = "0.1.0"

_Rpc = TypeVar("_Rpc", bound=Callable[..., Awaitable[Any]])

_U64_MAX = (1 << 64) - 1


def _u64(value: int) -> int:
    """A Raft number as a uint64 field. A core poisoned by a forged term can
    hold 2^64 or more in memory (its group is then out of service); status
    must still answer, showing the saturated, plainly impossible value."""
    return min(max(value, 0), _U64_MAX)


_ROLE = {
    StateRole.FOLLOWER: admin_pb2.FOLLOWER_ROLE,
    StateRole.CANDIDATE: admin_pb2.CANDIDATE_ROLE,
    StateRole.LEADER: admin_pb2.LEADER_ROLE,
    StateRole.PRE_CANDIDATE: admin_pb2.PRE_CANDIDATE_ROLE,
}


def _answers_node_errors(method: _Rpc) -> _Rpc:
    """An RPC whose NodeError becomes its gRPC status (with hint and kind)."""

    @functools.wraps(method)
    async def rpc(self: AdminService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except NodeError as e:
            await abort_with(context, e)
            raise AssertionError("unreachable") from None

    return rpc  # type: ignore[return-value]


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.audit = AuditService(node)

    # ---- this node's own view -------------------------------------------

    def _reachable(self, r: Replica, nid: int, recent_active: bool) -> bool:
        """The leader's judgement of a follower: Raft's recent_active, or any
        message from it within the last election timeout (recent_active alone
        is cleared at every quorum check and reads False for a live follower
        until its next heartbeat response, a third of the time by default)."""
        if recent_active:
            return True
        raft = self.node.cfg.raft
        window = raft.election_ticks * raft.tick_ms / 1000.0
        heard = r.heard.get(nid)
        return heard is not None and time.monotonic() - heard <= window

    def _broken_partition(self, p: int, why: str) -> admin_pb2.PartitionInfo:
        """A replica this node holds but took out of service (DATA_LOSS)."""
        host = self.node.host
        return admin_pb2.PartitionInfo(
            partition=p,
            replicas=list(host.members(p)),
            replica_status=[
                admin_pb2.ReplicaStatus(
                    node_id=host.node_id, role=admin_pb2.ROLE_UNKNOWN, reachable=True,
                    out_of_service=why,
                )
            ],
        )

    def _local_partition(self, p: int) -> admin_pb2.PartitionInfo:
        host = self.node.host
        r = host.replicas.get(p)
        if r is None:
            return self._broken_partition(p, host.broken_at_start.get(p, "not open"))
        st = r.raw.status()
        if r.broken:
            info = self._broken_partition(p, r.broken)
            info.term = _u64(st.term)
            info.replica_status[0].term = _u64(st.term)
            return info
        conf = host.conf_of(r)
        info = admin_pb2.PartitionInfo(
            partition=p,
            replicas=list(r.replicas),
            leader=r.leader,
            term=_u64(st.term),
            commit_index=_u64(st.commit),
            applied_index=r.applied,
            # Replicas in motion, as this replica's applied configuration says.
            learners=list(r.learners),
            leaving=sorted(set(conf.voters_outgoing) - set(conf.voters)),
        )
        if r.is_leader:
            for nid in (*r.replicas, *r.learners):  # learners: replicas in motion
                pr = st.progress.get(nid)
                if nid == host.node_id:
                    info.replica_status.append(
                        admin_pb2.ReplicaStatus(
                            node_id=nid, role=admin_pb2.LEADER_ROLE, term=_u64(st.term),
                            commit_index=_u64(st.commit), applied_index=r.applied,
                            match_index=pr.match if pr else st.commit,
                            lag_entries=max(0, st.commit - r.applied), reachable=True,
                        )
                    )
                elif pr is not None:
                    info.replica_status.append(
                        admin_pb2.ReplicaStatus(
                            node_id=nid,
                            role=admin_pb2.LEARNER_ROLE if pr.is_learner else admin_pb2.FOLLOWER_ROLE,
                            match_index=pr.match, lag_entries=max(0, st.commit - pr.match),
                            reachable=self._reachable(r, nid, bool(pr.recent_active)),
                        )
                    )
        else:
            info.replica_status.append(
                admin_pb2.ReplicaStatus(
                    node_id=host.node_id,
                    role=admin_pb2.LEARNER_ROLE if host.node_id in r.learners
                    else _ROLE.get(r.role, admin_pb2.ROLE_UNKNOWN),
                    term=_u64(st.term), commit_index=_u64(st.commit), applied_index=r.applied,
                    lag_entries=r.lag, reachable=True,
                )
            )
        return info

    def _local_status(self) -> admin_pb2.ClusterStatusResponse:
        node = self.node
        host = node.host
        resp = admin_pb2.ClusterStatusResponse(
            answered_by=host.node_id,
            partitions=node.cfg.partitions,
            replication_factor=node.cfg.replication,
        )
        me = admin_pb2.NodeStatus(
            node=admin_pb2.NodeInfo(
                node_id=host.node_id, address=node.cfg.client_address(host.node_id)
            ),
            up=True,
            leaders=sum(1 for r in host.replicas.values() if r.is_leader),
            replicas=len(host.replicas) + len(host.broken_at_start),
            version=VERSION,
            uptime_seconds=time.monotonic() - host.started_at,
        )
        system = getattr(node, "cluster", None)  # a node assembled in a test may have none
        state = system.state if system is not None else None
        member = state.member(host.node_id) if state is not None else None
        if member is not None:
            me.member_state = member.state
        resp.nodes.append(me)
        for p in sorted(set(host.replicas) | set(host.broken_at_start)):
            resp.partition_info.append(self._local_partition(p))
        return resp

    # ---- RPCs ------------------------------------------------------------

    async def ClusterStatus(
        self, request: admin_pb2.ClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ClusterStatusResponse:
        self._not_removed()
        local = self._local_status()
        if request.local_only:
            return local
        views = {self.node.cfg.node_id: local}
        peers = [pid for pid in self.node.cfg.peers if pid != self.node.cfg.node_id]
        answers = await asyncio.gather(
            *(self.node.peer_admin(pid).ClusterStatus(
                admin_pb2.ClusterStatusRequest(local_only=True), timeout=1.5) for pid in peers),
            return_exceptions=True,
        )
        for pid, ans in zip(peers, answers, strict=True):
            if isinstance(ans, admin_pb2.ClusterStatusResponse):
                views[pid] = ans
        return merge_views(self.node.cfg, views, self.node.host.placement,
                           self.node.cluster.state)

    @_answers_node_errors
    async def PartitionStatus(
        self, request: admin_pb2.PartitionStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PartitionStatusResponse:
        if request.partition >= self.node.cfg.partitions:
            raise InvalidArgument(
                f"partition {request.partition} does not exist (0..{self.node.cfg.partitions - 1})"
            )
        self.node.host.replica(request.partition)
        return admin_pb2.PartitionStatusResponse(
            answered_by=self.node.cfg.node_id, info=self._local_partition(request.partition)
        )

    async def RoutingTable(
        self, request: admin_pb2.RoutingTableRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RoutingTableResponse:
        self._not_removed()
        cfg = self.node.cfg
        resp = admin_pb2.RoutingTableResponse(
            epoch=self.node.routing_epoch,
            partitions=cfg.partitions,
            replication_factor=cfg.replication,
            virtual_nodes=cfg.virtual_nodes,
        )
        for nid in sorted(cfg.peers):
            resp.nodes.append(admin_pb2.NodeInfo(node_id=nid, address=cfg.client_address(nid)))
        for p in range(cfg.partitions):
            r = self.node.host.replicas.get(p)
            resp.partition_info.append(
                admin_pb2.PartitionInfo(
                    partition=p,
                    replicas=list(self.node.host.members(p)),
                    leader=r.leader if r and not r.broken else 0,
                )
            )
        return resp

    @_answers_node_errors
    async def TransferLeader(
        self, request: admin_pb2.TransferLeaderRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.TransferLeaderResponse:
        if request.partition >= self.node.cfg.partitions:
            raise InvalidArgument(f"partition {request.partition} does not exist")
        await self._pin_leader(request.partition, request.target_node)
        leader = await self.node.host.transfer_leader(request.partition, request.target_node, 10.0)
        return admin_pb2.TransferLeaderResponse(leader=leader)

    def _cluster_state(self) -> cluster_state.ClusterState:
        state = self.node.cluster.state
        if state is None:
            raise Unavailable(f"node {self.node.cfg.node_id} has no cluster state yet")
        return state

    def _not_removed(self) -> None:
        """A removed node's view of the cluster stops at its removal: it sends
        callers to the members instead of answering from it."""
        if getattr(self.node, "removed", False):
            raise Unavailable(
                f"node {self.node.cfg.node_id} was removed from the cluster; "
                "ask one of its members"
            )

    async def _pin_leader(self, partition: int, target: int) -> None:
        """Record the operator's choice in the cluster state first, so leader
        balancing keeps the leader there instead of handing it back within
        seconds; choosing the placement's own preferred replica clears it."""
        state = self.node.cluster.state
        if state is None or partition >= state.partitions or target not in state.replicas[partition]:
            return  # transfer_leader answers the precise error
        node = 0 if target == state.replicas[partition][0] else target
        if dict(state.leader_pins).get(partition, 0) == node:
            return
        await self.node.host.propose_system(
            cluster_state.pin_leader(partition, node, request=os.urandom(16)), 10.0
        )

    @_answers_node_errors
    async def InitCluster(
        self, request: admin_pb2.InitClusterRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.InitClusterResponse:
        return await self.node.init_cluster(request)

    @_answers_node_errors
    async def AddNode(
        self, request: admin_pb2.AddNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AddNodeResponse:
        state = self._cluster_state()
        if not 1 <= request.node_id <= cluster_state.MAX_NODE_ID:
            raise InvalidArgument(f"node_id must be 1..{cluster_state.MAX_NODE_ID}")
        member = state.member(request.node_id)
        already = member is not None and member.state != cluster_state.REMOVED
        if member is not None and member.address != request.address and already:
            raise FailedPrecondition(
                f"node {request.node_id} is a member already, at {member.address}"
            )
        if not already:
            # Judged on this node's state first, for a precise answer at once
            # (the log decides in the end, identically everywhere).
            _, outcome = cluster_state.apply(state, cluster_state.add_member(
                request.node_id, request.address, request.client_address))
            if not outcome.ok:
                raise InvalidArgument(outcome.message)
            await self.node.host.propose_system(
                cluster_state.add_member(request.node_id, request.address,
                                         request.client_address, request=os.urandom(16)),
                10.0,
            )
        state = self._cluster_state()
        m = state.member(request.node_id)
        return admin_pb2.AddNodeResponse(
            node_id=request.node_id, state=m.state if m else "", epoch=state.epoch,
            already=already,
        )

    @_answers_node_errors
    async def DecommissionNode(
        self, request: admin_pb2.DecommissionNodeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DecommissionNodeResponse:
        state = self._cluster_state()
        m = state.member(request.node_id)
        if m is None:
            raise InvalidArgument(f"node {request.node_id} is not a member")
        if m.state not in (cluster_state.DECOMMISSIONING, cluster_state.REMOVED):
            others = [x for x in state.members
                      if x.state == cluster_state.ACTIVE and x.id != m.id]
            if len(others) < state.replication:
                raise FailedPrecondition(
                    f"without node {m.id} the cluster would keep {len(others)} active node(s) "
                    f"for {state.replication} replicas per partition: add a node first"
                )
            await self.node.host.propose_system(
                cluster_state.set_member_state(m.id, cluster_state.DECOMMISSIONING,
                                               request=os.urandom(16)),
                10.0,
            )
            log.info("node %d is being decommissioned%s (asked of node %d)", m.id,
                     " (dead)" if request.dead else "", self.node.cfg.node_id)
        state = self._cluster_state()
        now = state.member(m.id)
        return admin_pb2.DecommissionNodeResponse(
            node_id=m.id, state=now.state if now else "", epoch=state.epoch,
            replicas=len(state.partitions_on(m.id)),
        )

    @_answers_node_errors
    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListNodesResponse:
        self._not_removed()
        state = self._cluster_state()
        system = self.node.host.groups.get(cluster_state.SYSTEM_GROUP)
        # The system group's actual voters (the reconciler moves them towards
        # ClusterState.system_voters() one change at a time).
        voters = (set(system.raw.status().conf_state.voters) if system is not None
                  else set(state.system_voters()))
        return admin_pb2.ListNodesResponse(
            cluster_id=state.cluster_id,
            epoch=state.epoch,
            answered_by=self.node.cfg.node_id,
            system_leader=system.leader if system is not None else 0,
            system_applied=self.node.cluster.applied_index,
            members=[
                admin_pb2.MemberInfo(
                    node_id=m.id, address=m.address, client_address=m.client_address,
                    state=m.state, replicas=len(state.partitions_on(m.id)),
                    system_voter=m.id in voters,
                )
                for m in state.members
            ],
        )

    @_answers_node_errors
    async def ErasePatient(
        self, request: admin_pb2.ErasePatientRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ErasePatientResponse:
        version = await self.node.kv.erase_patient(request)
        return admin_pb2.ErasePatientResponse(version=version)

    # ---- replica moves, for the control plane (node/host.py, issue 12) -----

    @_answers_node_errors
    async def PrepareReplica(
        self, request: admin_pb2.PrepareReplicaRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PrepareReplicaResponse:
        created = await self.node.host.prepare_replica(
            request.partition, _move_deadline(context, 10.0)
        )
        return admin_pb2.PrepareReplicaResponse(node_id=self.node.cfg.node_id, created=created)

    @_answers_node_errors
    async def ChangeReplicas(
        self, request: admin_pb2.ChangeReplicasRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ChangeReplicasResponse:
        host = self.node.host
        deadline = _move_deadline(context, MOVE_TIMEOUT_S)
        started = time.monotonic()
        if 0 <= request.partition < self.node.cfg.partitions:
            await self._prepare_new_replicas(request, min(5.0, deadline / 2))
        voters = await host.change_replicas(
            request.partition, list(request.add), list(request.remove),
            max(0.05, deadline - (time.monotonic() - started)),
        )
        return admin_pb2.ChangeReplicasResponse(leader=self.node.cfg.node_id, voters=voters)

    async def _prepare_new_replicas(
        self, request: admin_pb2.ChangeReplicasRequest, timeout: float
    ) -> None:
        """On the leader: PrepareReplica on every added node that is not a
        voter yet (idempotent there, learners included: an earlier attempt may
        have added one it could not reach), so a node is not made a learner
        without a replica to receive its snapshot (its guard would refuse the
        leader's messages). A node that cannot be reached now is added anyway:
        it cannot catch up, the change answers DEADLINE_EXCEEDED and a retry
        prepares it again; a node that refuses stops the change."""
        host, cfg = self.node.host, self.node.cfg
        r = host.leader_replica(request.partition)  # elsewhere: UNAVAILABLE with the hint
        cs = host.conf_of(r)
        voters = {*cs.voters, *cs.voters_outgoing}
        for n in dict.fromkeys(request.add):
            if n in voters or n not in cfg.peers or n == cfg.node_id:
                continue  # a voter already, or an unknown node change_replicas refuses
            try:
                await self.node.peer_admin(n).PrepareReplica(
                    admin_pb2.PrepareReplicaRequest(partition=request.partition),
                    timeout=timeout,
                )
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.warning("partition %d: node %d did not answer PrepareReplica (%s); "
                                "adding it anyway", request.partition, n, e.code().name)
                    continue
                raise FailedPrecondition(
                    f"node {n} refused to prepare its replica of partition {request.partition} "
                    f"({e.code().name}: {e.details()}); nothing was changed"
                ) from None

    @_answers_node_errors
    async def DropReplica(
        self, request: admin_pb2.DropReplicaRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DropReplicaResponse:
        dropped = await self.node.host.drop_replica(request.partition, request.force)
        return admin_pb2.DropReplicaResponse(node_id=self.node.cfg.node_id, dropped=dropped)

    # ---- the audit log (node/auth/audit.py) -----------------------------------

    async def AuditQuery(
        self, request: admin_pb2.AuditQueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.AuditQueryResponse]:
        """This node's own entries (node/audit_service.py); an insecure node keeps
        none and answers FAILED_PRECONDITION."""
        try:
            async for page in self.audit.query(request):
                yield page
        except NodeError as e:
            await abort_with(context, e)

    @_answers_node_errors
    async def AuditVerify(
        self, request: admin_pb2.AuditVerifyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AuditVerifyResponse:
        return await self.audit.verify()

    # ---- replicated cluster settings (node/settings_service.py) -----------

    @_answers_node_errors
    async def SetSettings(
        self, request: admin_pb2.SetSettingsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetSettingsResponse:
        return await self.node.settings.set(request)

    @_answers_node_errors
    async def GetSettings(
        self, request: admin_pb2.GetSettingsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetSettingsResponse:
        return self.node.settings.get(request)

    @_answers_node_errors
    async def SyncSettings(
        self, request: admin_pb2.SyncSettingsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SyncSettingsResponse:
        return await self.node.settings.sync(request.partition, request.generation)

    # ---- encryption at rest: online key rotation (node/key_rotation.py) ---

    @_answers_node_errors
    async def RotateDataKey(
        self, request: admin_pb2.RotateDataKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateDataKeyResponse:
        keys = self.node.keys
        active, started = await _keys_call(keys.rotate_data())
        return admin_pb2.RotateDataKeyResponse(
            node_id=self.node.cfg.node_id, active_data_key_id=active, started=started,
            reencryption=reencryption_pb(keys.reencryption()),
        )

    @_answers_node_errors
    async def RotateMasterKey(
        self, request: admin_pb2.RotateMasterKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RotateMasterKeyResponse:
        st = await _keys_call(
            self.node.keys.rotate_master(request.new_master_key_id, int(request.step))
        )
        return admin_pb2.RotateMasterKeyResponse(
            node_id=st.node_id, keyring_master_key_id=st.keyring_master_key_id,
            key_file_master_key_id=st.key_file_master_key_id,
            staged_master_key_id=st.staged_master_key_id,
        )

    @_answers_node_errors
    async def KeyStatus(
        self, request: admin_pb2.KeyStatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.KeyStatusResponse:
        return key_status_pb(await _keys_call(self.node.keys.status(request.count_values)))


MOVE_TIMEOUT_S = 60.0
"""How long ChangeReplicas may take when its caller set no deadline (a new
learner's snapshot is the long part)."""


def _move_deadline(context: grpc.aio.ServicerContext | None, default: float) -> float:
    """The call's own deadline, less a margin so the answer still travels back."""
    remaining = context.time_remaining() if context is not None else None
    if remaining is None:
        return default
    return max(0.05, remaining - min(1.0, max(0.05, remaining * 0.1)))


async def _keys_call(call: Any) -> Any:
    """Await a key operation; key file and keyring problems answer FAILED_PRECONDITION
    (their messages name paths and key ids, never key material)."""
    try:
        return await call
    except CryptoError as e:
        raise FailedPrecondition(str(e)) from None
    except OSError as e:
        raise FailedPrecondition(f"key storage: {e.strerror or type(e).__name__}") from None


def reencryption_pb(r: ReEncryptionState) -> admin_pb2.ReEncryptionStatus:
    return admin_pb2.ReEncryptionStatus(
        state=r.state, target_key_id=r.target_key_id, done=r.done,
        total_estimate=r.total_estimate, resealed=r.resealed, percent=r.percent,
        error=r.error, retired_key_ids=r.retired_key_ids,
    )


def key_status_pb(st: KeyState) -> admin_pb2.KeyStatusResponse:
    return admin_pb2.KeyStatusResponse(
        node_id=st.node_id,
        keyring_master_key_id=st.keyring_master_key_id,
        key_file_master_key_id=st.key_file_master_key_id,
        staged_master_key_id=st.staged_master_key_id,
        active_data_key_id=st.active_data_key_id,
        data_keys=[
            admin_pb2.DataKeyStatus(key_id=k.key_id, created=k.created, active=k.active,
                                    values=k.values)
            for k in st.data_keys
        ],
        reencryption=reencryption_pb(st.reencryption),
    )


def merge_views(
    cfg: NodeConfig, views: dict[int, admin_pb2.ClusterStatusResponse], placement: Any = None,
    state: cluster_state.ClusterState | None = None,
) -> admin_pb2.ClusterStatusResponse:
    """One cluster picture: nodes that answered are up; a partition is
    described by the replica that leads it in the highest term, else by the
    most advanced replica that answered. With the answering node's cluster
    state: each node's member state, and partitions the state places
    elsewhere (a move pending or in flight) marked moving."""
    out = admin_pb2.ClusterStatusResponse(
        answered_by=cfg.node_id, partitions=cfg.partitions, replication_factor=cfg.replication
    )
    members = {m.id: m for m in state.live_members()} if state is not None else {}
    for nid in sorted(set(cfg.peers) | set(members)):
        v = views.get(nid)
        if v is not None and v.nodes:
            out.nodes.append(v.nodes[0])
        else:
            m = members.get(nid)
            address = cfg.client_address(nid) if nid in cfg.peers else (
                m.serving_address if m is not None else "")
            info = admin_pb2.NodeInfo(node_id=nid, address=address)
            out.nodes.append(admin_pb2.NodeStatus(node=info, up=False))
        if nid in members:
            out.nodes[-1].member_state = members[nid].state
    placement = placement if placement is not None else cfg.placement
    target = state.target_replicas() if state is not None else None
    for p in range(cfg.partitions):
        best: admin_pb2.PartitionInfo | None = None
        best_key = (-1, -1, -1, -1)
        followers: dict[int, admin_pb2.ReplicaStatus] = {}
        for nid, v in views.items():
            for info in v.partition_info:
                if info.partition != p:
                    continue
                is_leader = info.leader == nid
                # An out-of-service replica never describes the partition.
                broken = any(rs.out_of_service for rs in info.replica_status)
                key = (int(is_leader and not broken), int(not broken), info.term,
                       info.applied_index)
                if key > best_key:
                    best, best_key = info, key
                for rs in info.replica_status:
                    if rs.node_id == nid:
                        followers[nid] = rs
        merged = admin_pb2.PartitionInfo(partition=p, replicas=list(placement.replicas(p)))
        if best is not None:
            merged.CopyFrom(best)
            # The leader knows match indexes; each replica knows its own applied index.
            by_node = {rs.node_id: rs for rs in merged.replica_status}
            for nid, own in followers.items():
                rs = by_node.get(nid)
                if rs is None:
                    merged.replica_status.append(own)
                else:
                    rs.role = own.role
                    rs.term = own.term
                    rs.applied_index = own.applied_index
                    rs.commit_index = own.commit_index
                    rs.lag_entries = max(0, merged.commit_index - own.applied_index)
                    rs.out_of_service = own.out_of_service
            # The answering node is up: whatever the leader last heard, the
            # table it answers never shows it unreachable.
            for rs in merged.replica_status:
                if rs.node_id == cfg.node_id and cfg.node_id in followers:
                    rs.reachable = True
        for nid in merged.replicas:
            if nid not in {rs.node_id for rs in merged.replica_status}:
                merged.replica_status.append(admin_pb2.ReplicaStatus(node_id=nid, reachable=False))
        if state is not None and target is not None and p < state.partitions:
            merged.moving = set(state.replicas[p]) != set(target[p])
        out.partition_info.append(merged)
    return out
