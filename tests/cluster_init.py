"""In-process nodes (node.server.Node built by a test) need what `medkv cluster
init` hands every initial member: one stored initial cluster state."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from node.cluster.bootstrap import ClusterStore
from node.cluster.state import ClusterState, initial_state
from node.config import NodeConfig
from node.storage_layout import STATE_PREFIX, StorageLayout


def init_members(cfgs: Sequence[NodeConfig]) -> ClusterState:
    """Store one initial state (the first config's [[peers]]) on every node;
    nodes that hold one already (a restart) keep theirs."""
    first = cfgs[0]
    held = _held(first)
    if held is not None:
        return held
    state = initial_state(
        uuid.uuid4().hex,
        {n: (first.peers[n], first.client_addresses.get(n, "")) for n in first.peers},
        first.partitions, first.replication, first.virtual_nodes,
    )
    for cfg in cfgs:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        layout = StorageLayout.open(cfg)
        try:
            ClusterStore(layout.db.prefixed_db(STATE_PREFIX), layout.codec).adopt(state)
        finally:
            layout.close()
    return state


def _held(cfg: NodeConfig) -> ClusterState | None:
    if not cfg.data_dir.exists():
        return None
    layout = StorageLayout.open(cfg)
    try:
        return ClusterStore(layout.db.prefixed_db(STATE_PREFIX), layout.codec).initial()
    finally:
        layout.close()
