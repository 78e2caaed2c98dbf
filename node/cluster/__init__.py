"""The control plane: the cluster's membership and placement as replicated state."""
