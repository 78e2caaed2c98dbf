"""The control plane: the cluster's membership and placement as replicated state.

    state, system     the cluster state and the system group's state machine;
    preinit, bootstrap  creating a cluster (`medkv cluster init`);
    system_group      this node's system replica on the multi-Raft host;
    reconciler        the system group's membership follows the cluster state;
    mover             replica moves, driven by the system group's leader;
    replica_moves     their node-side steps, and which partitions a node holds;
    balance           where partitions' leaders go.
"""
