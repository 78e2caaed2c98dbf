"""The patient <-> clinic registry as this node sees it: its replicas' applied state.

node.auth.policy.PatientRegistry is the interface the access-control
interceptor asks before a call reaches the servicer. The registration itself is
replicated state of the patient's partition (node.state_machine, stored by
node.record_store next to the patient's records), so this class only reads
the local replica of that partition:

  * this node holds a replica in service: its applied registration (never
    waits, may trail the leader by a few entries; the servicer checks again
    after the read index is reached, and writes are checked at apply);
  * it holds none, or the replica is out of service (damaged, installing a
    snapshot): NOT_HELD, so the interceptor defers the check to the node that
    serves the data (this one can answer only a redirect or an error).

The node builds it with AccessControl(registry=ReplicatedRegistry(host), ...).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from node.auth.policy import NOT_HELD, Registration

if TYPE_CHECKING:
    from node.host import MultiRaftHost

log = logging.getLogger("medkv.registry")


class ReplicatedRegistry:
    """PatientRegistry backed by the local replicas of a MultiRaftHost."""

    # Applied state may trail the log (a follower behind, a leader that has not
    # applied its newest entries): it may allow a call, never refuse one.
    authoritative = False

    def __init__(self, host: MultiRaftHost) -> None:
        self._host = host

    def lookup(self, patient_id: str) -> Registration:
        host = self._host
        r = host.replicas.get(host.placement.partition_of(patient_id))
        if r is None or r.broken or r.installing:
            return NOT_HELD
        try:
            return r.sm.registration(patient_id)
        except Exception as e:
            # A stored registration that fails its integrity check: defer, and
            # the read or write that follows answers DATA_LOSS for the replica.
            log.warning("partition %d: registration unreadable (%s)", r.partition,
                        type(e).__name__)
            return NOT_HELD


__all__ = ["ReplicatedRegistry"]
