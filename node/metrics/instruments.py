"""The metrics a node updates as things happen: counters and histograms on hot paths.

Everything that can be read from the node's state when Prometheus scrapes
(leaders, indexes, lag, quorum) is NOT here but in node.metrics.collector:
nothing is paid for it between scrapes. What stays here must be counted as it
happens (a failed proposal, an fsync's duration, a gRPC call's status), and
each costs one `.inc()` or `.observe()` on a child object looked up once.

Every node process has its own CollectorRegistry (never prometheus_client's
global one): tests run several nodes in one process, and a registry per node
keeps their numbers apart.

No label ever holds a patient id, a record id or any other request data: the
label values are fixed enumerations (REJECT_REASONS, PROPOSAL_FAILURES, the
gRPC status codes) or the names of the node's own gRPC methods.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Why a request was refused before doing any work (medkv_requests_rejected_total).
REJECT_REASONS = (
    "unauthenticated",          # no or bad client certificate / bearer token
    "permission_denied",        # the policy refused the call (or one BatchCommands request)
    "too_many_pending_writes",  # [limits] max_pending_proposals reached on this node
    "uncommitted_bytes_limit",  # the leader holds [raft] max_uncommitted_bytes not yet committed
    "stream_in_flight_limit",   # [limits] max_in_flight_per_stream on one BatchCommands stream
    "max_sessions",             # the partition has max_sessions open write sessions
    "raft_message_refused",     # a peer's Raft message failed the guard (node.raft_guard)
    "other",                    # a reason this list does not know yet
)

# Why a proposal this node accepted did not commit (medkv_proposals_failed_total).
PROPOSAL_FAILURES = (
    "not_leader",               # this node does not lead the partition (any more)
    "too_many_pending_writes",
    "uncommitted_bytes_limit",
    "leadership_lost",          # dropped by Raft, leadership lost or replica disabled meanwhile
    "timeout",                  # not committed and applied within the request timeout
)

# Raft log fsync (one synced group-commit write per Raft turn): 1 ms .. 8 s, as etcd.
FSYNC_BUCKETS = tuple(0.001 * 2**i for i in range(14))
# Applying one run of committed entries to a partition's state machine: 100 us .. 3.3 s.
APPLY_BUCKETS = tuple(0.0001 * 2**i for i in range(16))
GRPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """One node's registry and its event-driven instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fsync_seconds = Histogram(
            "medkv_log_fsync_duration_seconds",
            "Duration of the Raft log's synced group-commit write (one LevelDB write + fsync "
            "holding every partition's new entries and hard state of one Raft turn).",
            buckets=FSYNC_BUCKETS, registry=r,
        )
        self.apply_seconds = Histogram(
            "medkv_apply_duration_seconds",
            "Duration of applying one run of committed entries to a partition's state machine.",
            buckets=APPLY_BUCKETS, registry=r,
        )
        self._proposals_failed = Counter(
            "medkv_proposals_failed",
            "Writes this node accepted for proposal that did not commit, by reason.",
            ["reason"], registry=r,
        )
        self.proposals_failed = {k: self._proposals_failed.labels(k) for k in PROPOSAL_FAILURES}
        self._rejected = Counter(
            "medkv_requests_rejected",
            "Requests (and BatchCommands sub-requests, and peers' Raft messages) refused "
            "before any work, by reason.",
            ["reason"], registry=r,
        )
        self.rejected = {k: self._rejected.labels(k) for k in REJECT_REASONS}
        self._snapshot_sends = Counter(
            "medkv_snapshot_sends",
            "Partition snapshots this node streamed to a follower, by result.",
            ["result"], registry=r,
        )
        self.snapshot_sent = self._snapshot_sends.labels("success")
        self.snapshot_send_failed = self._snapshot_sends.labels("failure")
        self._snapshot_installs = Counter(
            "medkv_snapshot_installs",
            "Partition snapshots received and installed on this node, by result.",
            ["result"], registry=r,
        )
        self.snapshot_installed = self._snapshot_installs.labels("success")
        self.snapshot_install_failed = self._snapshot_installs.labels("failure")
        self._erasures = Counter(
            "medkv_erasures",
            "Patient erasures (ErasePatient) this node proposed as leader, by result.",
            ["result"], registry=r,
        )
        self.erased = self._erasures.labels("success")
        self.erase_failed = self._erasures.labels("failure")
        self.grpc_handled = Counter(
            "medkv_grpc_server_handled",
            "gRPC calls completed by this node, by method and status code; the requests "
            "multiplexed on a KV.BatchCommands stream count under their own method "
            "(grpc_type stream_request).",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r,
        )
        self.grpc_seconds = Histogram(
            "medkv_grpc_server_handling_seconds",
            "Latency of unary gRPC calls served by this node, until the answer, by method.",
            ["grpc_service", "grpc_method"], buckets=GRPC_BUCKETS, registry=r,
        )

    def stream_request(self, method: str, code: str) -> None:
        """One request answered inside a BatchCommands stream, counted under its
        unary method ("Put", "Get", ...): most clients multiplex, so per-method
        rates would read zero otherwise."""
        self.grpc_handled.labels("stream_request", "medkv.v1.KV", method, code).inc()

    def reject(self, reason: str) -> None:
        """Count one refusal (an unknown reason as "other": counting never fails a call)."""
        (self.rejected.get(reason) or self.rejected["other"]).inc()
