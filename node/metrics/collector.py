"""Metrics computed when Prometheus scrapes, from the node's own state.

Leaders, terms, indexes, lag, quorum and replication health are read from
the host's replicas (node.host.MultiRaftHost.replicas) at scrape time, so
the Raft loop pays nothing for them between scrapes. The read itself runs
ON the node's event loop (one callback, a few microseconds per partition):
the HTTP server's thread must not walk structures the loop is changing, and
one callback sees one consistent moment. If the loop does not run it within
COLLECT_TIMEOUT_S (a stalled node), the scrape gets only the event-driven
metrics and medkv_metrics_collect_failures_total goes up: a stall shows in
the metrics instead of hanging the scrape.

Judgements that need a view of the whole partition (under-replicated, the
reachable replicas, each follower's lag) are exported only by the
partition's leader; every replica exports its own view (has a leader, its
lag, whether it can see a quorum of live replicas). PromQL aggregates:
`max by (partition) (medkv_partition_under_replicated)`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from node.server import Node

COLLECT_TIMEOUT_S = 2.0
REENCRYPTION_STATES = ("idle", "running", "retiring", "finished", "interrupted", "failed")


@dataclass
class ReplicaView:
    partition: int
    out_of_service: bool = False
    installing: bool = False
    is_leader: bool = False
    has_leader: bool = False
    term: int = 0
    commit: int = 0
    applied: int = 0
    lag_entries: int = 0
    lag_seconds: float = -1.0
    leader_changes: int = 0
    without_quorum: bool = False
    # Only on the leader: replicas it reaches (itself included), and each follower's lag.
    reachable: int | None = None
    replicas: int = 0
    follower_lag: dict[int, int] = field(default_factory=dict)


@dataclass
class NodeView:
    replicas: list[ReplicaView]
    pending_writes: int = 0
    loop_lag_max: float = 0.0
    purges_completed: int = 0
    purge_rounds: int = 0
    reencryption_state: str = "idle"
    reencryption_done: int = 0
    reencryption_total: int = 0
    reencryption_ratio: float = 0.0
    audit_written: int | None = None
    audit_pending: int = 0


def certificate_not_after(path: Path) -> float | None:
    """The not-after time (Unix seconds) of the first certificate in a PEM file."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


class NodeCollector(Collector):
    """Scrape-time metrics of one node (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.version = _version()
        self.failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # The certificates the node serves with were read at start; so are these.
        tls = node.cfg.tls
        self.not_after: dict[str, float] = {}
        if tls is not None:
            for name, path in (("node", tls.cert_file), ("ca", tls.ca_file)):
                value = certificate_not_after(path)
                if value is not None:
                    self.not_after[name] = value
        audit = node.access.audit if node.access is not None else None
        self._audit_start = audit.log.durable_head().seq if audit is not None else 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that owns the node's state (called on it, at start)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary with the node's state; nothing to pre-check

    # ---- on the loop -------------------------------------------------------

    def view(self) -> NodeView:
        """Everything collect() exports from the node's state; runs on its loop."""
        node = self.node
        host = node.host
        raft = node.cfg.raft
        window = raft.election_ticks * raft.tick_ms / 1000.0
        mono, wall = time.monotonic(), time.time()
        # When this node last heard from each peer, over all its partitions.
        peer_heard: dict[int, float] = {}
        for r in host.replicas.values():
            for peer, at in r.heard.items():
                if at > peer_heard.get(peer, 0.0):
                    peer_heard[peer] = at
        alive = {p for p, at in peer_heard.items() if mono - at <= window} | {host.node_id}
        views: list[ReplicaView] = []
        for p in sorted(host.broken_at_start):
            views.append(ReplicaView(p, out_of_service=True))
        for p, r in sorted(host.replicas.items()):
            v = ReplicaView(p, replicas=len(r.replicas), leader_changes=r.leader_changes)
            views.append(v)
            if r.broken:
                # Its last known indexes stay in the node's totals: a counter
                # that dropped them would look like a reset to rate().
                v.out_of_service = True
                v.commit, v.applied = r.commit, r.applied
                continue
            st = r.raw.status()
            quorum = len(r.replicas) // 2 + 1
            v.installing = r.installing
            v.is_leader = r.is_leader
            v.has_leader = r.leader != 0
            v.term, v.commit, v.applied = st.term, st.commit, r.applied
            if r.is_leader:
                v.lag_entries = max(0, st.commit - r.applied)
                reachable = 1
                for nid in r.replicas:
                    pr = st.progress.get(nid)
                    if nid == host.node_id or pr is None:
                        continue
                    v.follower_lag[nid] = max(0, st.commit - pr.match)
                    heard = r.heard.get(nid)
                    if pr.recent_active or (heard is not None and mono - heard <= window):
                        reachable += 1
                v.reachable = reachable
                v.without_quorum = reachable < quorum
            else:
                v.lag_entries = r.lag
                v.without_quorum = sum(1 for n in r.replicas if n in alive) < quorum
            v.lag_seconds = r.staleness(mono, wall)
        view = NodeView(views, pending_writes=host.pending_writes)
        probe = getattr(node, "loop_lag", None)
        if probe is not None:
            view.loop_lag_max = probe.longest_s
        view.purges_completed = node.purger.completed
        view.purge_rounds = node.purger.rounds
        re = node.keys.reencryption()
        view.reencryption_state = re.state
        view.reencryption_done = re.done
        view.reencryption_total = re.total_estimate
        view.reencryption_ratio = re.percent / 100.0
        audit = node.access.audit if node.access is not None else None
        if audit is not None:
            view.audit_written = max(0, audit.log.durable_head().seq - self._audit_start)
            view.audit_pending = audit.log.pending
        return view

    def _view_from_any_thread(self) -> NodeView | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        if threading.get_ident() == self._loop_thread:
            return self.view()  # called on the loop itself (a test's generate_latest)
        fut: concurrent.futures.Future[NodeView] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(self.view())
            except BaseException as e:
                fut.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
            return fut.result(COLLECT_TIMEOUT_S)
        except Exception:
            fut.cancel()
            self.failures += 1
            return None

    # ---- in the scraping thread ------------------------------------------

    def collect(self) -> Iterator[Metric]:
        node_id = str(self.node.cfg.node_id)
        info = GaugeMetricFamily("medkv_node_info", "This node's id and software version (always 1).",
                                 labels=["node_id", "version"])
        info.add_metric([node_id, self.version], 1)
        yield info
        if self.not_after:
            cert = GaugeMetricFamily(
                "medkv_tls_certificate_expiry_timestamp_seconds",
                "Not-after time of the certificate the node serves with (certificate=\"node\") "
                "and of the cluster CA it trusts (certificate=\"ca\"), as read at start.",
                labels=["certificate"])
            for name, value in sorted(self.not_after.items()):
                cert.add_metric([name], value)
            yield cert
        view = self._view_from_any_thread()
        yield CounterMetricFamily(
            "medkv_metrics_collect_failures",
            "Scrapes that could not read the node's state in time (a stalled event loop).",
            value=self.failures)
        if view is None:
            return
        yield from _replica_families(view.replicas)
        yield from _node_families(view)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _replica_families(views: list[ReplicaView]) -> Iterator[Metric]:
    lbl = ["partition"]
    has_leader = _gauge("medkv_partition_has_leader",
                        "1 if this replica knows a leader of the partition, else 0.", lbl)
    is_leader = _gauge("medkv_partition_is_leader",
                       "1 if this node leads the partition, else 0.", lbl)
    changes = CounterMetricFamily(
        "medkv_partition_leader_changes_seen",
        "Leader changes this replica has seen since the node started.", labels=lbl)
    term = _gauge("medkv_raft_term", "The replica's current Raft term.", lbl)
    commit = _gauge("medkv_raft_commit_index", "The replica's Raft commit index.", lbl)
    applied = _gauge("medkv_raft_applied_index",
                     "The index of the last entry applied to the replica's state machine.", lbl)
    lag = _gauge("medkv_replica_lag_entries",
                 "Entries this replica's applied state trails the leader's commit index "
                 "(as last announced to it; on the leader: commit minus applied).", lbl)
    lag_s = _gauge("medkv_replica_lag_seconds",
                   "Upper bound on how stale this replica's applied state is (absent while "
                   "unknown).", lbl)
    no_quorum = _gauge(
        "medkv_partition_without_quorum",
        "1 if this replica sees fewer than a quorum of the partition's replicas alive "
        "(the leader: reachable followers; others: peers heard from within an election "
        "timeout), else 0.", lbl)
    oos = _gauge("medkv_partition_out_of_service",
                 "1 if this node took its replica out of service after an integrity failure "
                 "(it answers DATA_LOSS; the other replicas serve the partition), else 0.", lbl)
    installing = _gauge("medkv_partition_snapshot_installing",
                        "1 while this replica installs a received snapshot, else 0.", lbl)
    under = _gauge("medkv_partition_under_replicated",
                   "Exported by the partition's leader only: 1 if it reaches fewer replicas "
                   "(itself included) than the partition has, else 0.", lbl)
    reachable = _gauge("medkv_partition_replicas_reachable",
                       "Exported by the partition's leader only: replicas it reaches, itself "
                       "included.", lbl)
    follower_lag = _gauge("medkv_follower_lag_entries",
                          "Exported by the partition's leader only: entries each follower's log "
                          "trails the commit index.", ["partition", "follower"])
    for v in views:
        p = [str(v.partition)]
        oos.add_metric(p, 1 if v.out_of_service else 0)
        changes.add_metric(p, v.leader_changes)
        if v.out_of_service:
            has_leader.add_metric(p, 0)
            is_leader.add_metric(p, 0)
            continue
        has_leader.add_metric(p, 1 if v.has_leader else 0)
        is_leader.add_metric(p, 1 if v.is_leader else 0)
        term.add_metric(p, v.term)
        commit.add_metric(p, v.commit)
        applied.add_metric(p, v.applied)
        lag.add_metric(p, v.lag_entries)
        if v.lag_seconds >= 0:
            lag_s.add_metric(p, v.lag_seconds)
        no_quorum.add_metric(p, 1 if v.without_quorum else 0)
        installing.add_metric(p, 1 if v.installing else 0)
        if v.reachable is not None:
            under.add_metric(p, 1 if v.reachable < v.replicas else 0)
            reachable.add_metric(p, v.reachable)
            for follower, n in sorted(v.follower_lag.items()):
                follower_lag.add_metric([str(v.partition), str(follower)], n)
    yield from (has_leader, is_leader, changes, term, commit, applied, lag, lag_s, no_quorum,
                oos, installing, under, reachable, follower_lag)


def _node_families(view: NodeView) -> Iterator[Metric]:
    live = [v for v in view.replicas if not v.out_of_service]
    counts = {
        "medkv_partitions_held": ("Partitions this node holds a replica of.", len(view.replicas)),
        "medkv_partitions_led": ("Partitions this node leads.",
                                 sum(v.is_leader for v in live)),
        "medkv_partitions_without_leader": (
            "Partitions whose replica on this node knows no leader.",
            sum(not v.has_leader for v in live)),
        "medkv_partitions_without_quorum": (
            "Partitions whose replica on this node sees no quorum alive "
            "(medkv_partition_without_quorum).", sum(v.without_quorum for v in live)),
        "medkv_partitions_under_replicated": (
            "Partitions this node leads that reach fewer replicas than they have.",
            sum(1 for v in live if v.reachable is not None and v.reachable < v.replicas)),
        "medkv_partitions_out_of_service": (
            "Partitions whose replica on this node is out of service (DATA_LOSS).",
            len(view.replicas) - len(live)),
        "medkv_proposals_pending": ("Writes waiting to commit and apply on this node.",
                                    view.pending_writes),
        "medkv_event_loop_lag_max_seconds": (
            "Longest event loop stall since the node started.", view.loop_lag_max),
        "medkv_key_reencryption_progress_ratio": (
            "Progress of the current or last data-key re-encryption pass (0..1).",
            view.reencryption_ratio),
        "medkv_key_reencryption_values_done": (
            "Values re-encrypted by the current or last pass.", view.reencryption_done),
        "medkv_key_reencryption_values_estimated": (
            "Values the current or last pass expects to re-encrypt.", view.reencryption_total),
        "medkv_audit_entries_pending": ("Audit entries appended but not yet on disk.",
                                        view.audit_pending),
    }
    for name, (doc, value) in counts.items():
        yield GaugeMetricFamily(name, doc, value=value)
    state = _gauge("medkv_key_reencryption_state",
                   "1 for the state the data-key re-encryption is in, 0 for the others.",
                   ["state"])
    for s in REENCRYPTION_STATES:
        state.add_metric([s], 1 if view.reencryption_state == s else 0)
    yield state
    totals = {
        "medkv_proposals_committed": (
            "Raft entries committed in the partitions this node holds (sum of their commit "
            "indexes).", sum(v.commit for v in view.replicas)),
        "medkv_proposals_applied": (
            "Raft entries applied by this node's replicas (sum of their applied indexes).",
            sum(v.applied for v in view.replicas)),
        "medkv_erasure_purges_completed": (
            "Erasure obligations this node completed (log dropped, files compacted).",
            view.purges_completed),
        "medkv_erasure_purge_rounds": ("Erasure purge rounds this node ran.", view.purge_rounds),
    }
    for name, (doc, value) in totals.items():
        yield CounterMetricFamily(name, doc, value=value)
    if view.audit_written is not None:
        yield CounterMetricFamily(
            "medkv_audit_entries_written",
            "Audit entries this node wrote to disk since it started.", value=view.audit_written)


def _version() -> str:
    from node.admin_service import VERSION

    return VERSION
