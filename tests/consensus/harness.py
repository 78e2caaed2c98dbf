"""A deterministic in-process cluster of RawNodes for consensus unit tests.

Messages go into one FIFO queue and are delivered only when a test asks
(deliver/stabilize), so a test controls interleavings exactly; filters drop
messages (partitions, lossy links) and a test may also pull messages out of
the queue to inspect, reorder or withhold them.

Each node "persists" its Ready into a MemoryStorage exactly as the
persistence contract says (snapshot, entries, hard state, then messages),
and applies committed entries into a per-node list, calling
apply_conf_change for conf-change entries.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from consensus import codec
from consensus.memory_storage import MemoryStorage
from consensus.raft import Config, Raft
from consensus.rawnode import RawNode
from consensus.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Ready,
    StateRole,
)


def _items(data: bytes) -> list[bytes]:
    return data.split(b"|") if data else []


MessageFilter = Callable[[Message], bool]  # True: drop the message


@dataclass
class NodeState:
    node: RawNode
    storage: MemoryStorage
    applied: list[Entry] = field(default_factory=list)  # every applied entry, in order
    read_states: list[ReadState] = field(default_factory=list)
    readies: list[Ready] = field(default_factory=list)  # kept only if record_readies
    snapshot_items: list[bytes] = field(default_factory=list)  # state restored from a snapshot
    conf_state: ConfState = field(default_factory=ConfState)

    @property
    def raft(self) -> Raft:
        return self.node.raft

    def applied_data(self) -> list[bytes]:
        """The state machine: commands restored from the last snapshot, then the
        data of applied normal entries that carry data (not empty entries)."""
        return self.snapshot_items + [
            e.data for e in self.applied if e.type == EntryType.NORMAL and e.data
        ]


class Cluster:
    def __init__(
        self,
        ids: Iterable[int],
        *,
        seed: int = 1,
        learners: Iterable[int] = (),
        record_readies: bool = False,
        **config: Any,
    ) -> None:
        self.ids = sorted(ids)
        self.learner_ids = sorted(learners)
        self.seed = seed
        self.config = config
        self.record_readies = record_readies
        self.report_snapshots = True  # act as the transport: report SNAP outcomes
        self.nodes: dict[int, NodeState] = {}
        self.queue: list[Message] = []
        self.filters: list[MessageFilter] = []
        self.delivered = 0
        cs = ConfState(voters=tuple(self.ids), learners=tuple(self.learner_ids))
        for i in [*self.ids, *self.learner_ids]:
            self.start(i, MemoryStorage(conf_state=cs))

    # -- node lifecycle ----------------------------------------------------------------

    def make_config(self, node_id: int, storage: MemoryStorage, **override: Any) -> Config:
        kw = dict(self.config)
        kw.update(override)
        return Config(
            id=node_id,
            storage=storage,
            rng=random.Random(self.seed * 1000 + node_id),
            **kw,
        )

    def start(self, node_id: int, storage: MemoryStorage, **override: Any) -> NodeState:
        node = RawNode(self.make_config(node_id, storage, **override))
        st = NodeState(node=node, storage=storage)
        st.conf_state = storage.initial_state()[1]
        st.snapshot_items = _items(storage.snapshot().data)
        self.nodes[node_id] = st
        return st

    def add_blank(self, node_id: int, **override: Any) -> NodeState:
        """A brand-new replica with no membership (added by a conf change)."""
        return self.start(node_id, MemoryStorage(), **override)

    def restart(self, node_id: int, **override: Any) -> NodeState:
        """Crash and restart from what was persisted (in-memory state is lost)."""
        old = self.nodes[node_id]
        for m in self.take(lambda m: m.to == node_id):
            self.lose(m)
        st = self.start(node_id, old.storage, **override)
        # The application's state machine is rebuilt by re-applying from the snapshot.
        st.applied = []
        return st

    def __getitem__(self, node_id: int) -> NodeState:
        return self.nodes[node_id]

    def node(self, node_id: int) -> RawNode:
        return self.nodes[node_id].node

    # -- ready processing --------------------------------------------------------------

    def process(self, node_id: int) -> bool:
        """Handle one Ready of node_id if it has one. Returns whether it had one."""
        st = self.nodes[node_id]
        n = st.node
        if not n.has_ready():
            return False
        rd = n.ready()
        if self.record_readies:
            st.readies.append(rd)
        if rd.snapshot is not None:
            st.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.storage.append(rd.entries)
        if rd.hard_state is not None:
            st.storage.set_hard_state(rd.hard_state)
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            st.snapshot_items = _items(rd.snapshot.data)
            st.conf_state = rd.snapshot.meta.conf_state
            st.applied = []
        for e in rd.committed_entries:
            st.applied.append(e)
            if e.type == EntryType.CONF_CHANGE:
                st.conf_state = n.apply_conf_change(codec.decode_conf_change(e.data))
        st.read_states.extend(rd.read_states)
        n.advance(rd)
        return True

    def process_all(self) -> bool:
        any_ready = False
        for i in sorted(self.nodes):
            while self.process(i):
                any_ready = True
        return any_ready

    # -- message delivery ----------------------------------------------------------------

    def dropped(self, m: Message) -> bool:
        return m.to not in self.nodes or any(f(m) for f in self.filters)

    def take(self, pred: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """Remove and return queued messages matching pred (not delivered)."""
        out = [m for m in self.queue if pred(m)]
        self.queue = [m for m in self.queue if not pred(m)]
        return out

    def lose(self, m: Message) -> None:
        """The network lost m. A transport must report a lost snapshot (or the
        leader keeps waiting for it), so the harness does too."""
        if m.type == MessageType.SNAP and m.frm in self.nodes and self.report_snapshots:
            self.nodes[m.frm].node.report_snapshot(m.to, ok=False)

    def deliver_one(self, m: Message) -> None:
        if self.dropped(m):
            self.lose(m)
            return
        self.delivered += 1
        self.nodes[m.to].node.step(m)
        if m.type == MessageType.SNAP and m.frm in self.nodes and self.report_snapshots:
            self.nodes[m.frm].node.report_snapshot(m.to, ok=True)

    def deliver(self) -> int:
        """Deliver every queued message once (new ones stay queued)."""
        msgs = self.queue
        self.queue = []
        for m in msgs:
            self.deliver_one(m)
        return len(msgs)

    def stabilize(self, max_rounds: int = 1000) -> None:
        """Process readies and deliver until nothing is left to do."""
        for _ in range(max_rounds):
            progressed = self.process_all()
            if not self.queue and not progressed:
                return
            self.deliver()
        raise AssertionError("cluster did not stabilize")

    # -- time and faults ---------------------------------------------------------------------

    def tick(self, node_ids: Iterable[int] | None = None, n: int = 1) -> None:
        ids = sorted(self.nodes) if node_ids is None else list(node_ids)
        for _ in range(n):
            for i in ids:
                self.nodes[i].node.tick()

    def tick_and_stabilize(self, n: int, node_ids: Iterable[int] | None = None) -> None:
        for _ in range(n):
            self.tick(node_ids)
            self.stabilize()

    def isolate(self, node_id: int) -> MessageFilter:
        f: MessageFilter = lambda m: m.to == node_id or m.frm == node_id  # noqa: E731
        self.filters.append(f)
        return f

    def partition(self, *groups: Iterable[int]) -> MessageFilter:
        side = {i: k for k, g in enumerate(groups) for i in g}
        f: MessageFilter = lambda m: side.get(m.to, -1) != side.get(m.frm, -1)  # noqa: E731
        self.filters.append(f)
        return f

    def heal(self) -> None:
        self.filters.clear()

    # -- conveniences ------------------------------------------------------------------------

    def elect(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.stabilize()
        assert self.role(node_id) == StateRole.LEADER, f"{node_id} did not become leader"

    def elect_without_replicating(self, node_id: int) -> None:
        """Win an election delivering only election messages; anything else
        (the new leader's first appends) is discarded."""
        votes = {
            MessageType.PRE_VOTE,
            MessageType.PRE_VOTE_RESP,
            MessageType.VOTE,
            MessageType.VOTE_RESP,
        }
        self.node(node_id).campaign()
        for _ in range(10):
            self.process_all()
            for m in self.take():
                if m.type in votes:
                    self.deliver_one(m)
            if self.role(node_id) == StateRole.LEADER:
                self.process_all()
                self.take()
                return
        raise AssertionError(f"{node_id} did not become leader")

    def role(self, node_id: int) -> StateRole:
        return self.nodes[node_id].node.raft.state

    def leaders(self) -> list[int]:
        return [i for i, st in self.nodes.items() if st.node.raft.state == StateRole.LEADER]

    def leader(self) -> int:
        ls = self.leaders()
        assert len(ls) == 1, f"expected one leader, got {ls}"
        return ls[0]

    def term(self, node_id: int) -> int:
        return self.nodes[node_id].node.raft.term

    def commit(self, node_id: int) -> int:
        return self.nodes[node_id].node.raft.raft_log.committed

    def log_terms(self, node_id: int) -> list[tuple[int, int]]:
        """(index, term) of every entry in node_id's log (stable and unstable)."""
        log = self.nodes[node_id].node.raft.raft_log
        return [(e.index, e.term) for e in log.all_entries()]

    def propose(self, node_id: int, data: bytes) -> None:
        self.node(node_id).propose(data)

    def snapshot_and_compact(self, node_id: int) -> int:
        """The application of node_id snapshots its applied state and compacts
        its log up to it. Returns the snapshot index."""
        st = self.nodes[node_id]
        index = st.node.raft.raft_log.applied
        data = b"|".join(st.applied_data())
        st.storage.create_snapshot(index, st.conf_state, data)
        st.storage.compact(index)
        return index
