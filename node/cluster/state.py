"""The cluster's facts as replicated state: members, placement and its epoch.

This is the state machine of the system Raft group (node.cluster.system):
every node holds a replica of it (voters on up to five nodes, learners on
the rest), so each node reads membership and placement from the same log
instead of from its own configuration file. Two nodes configured
differently can no longer disagree about who holds a partition.

Pure and deterministic: `apply` maps (state, command) to (new state,
outcome) and never raises for a command it can decode, so every replica
reaches the same state from the same log. A command that is not allowed
(adding a member twice, an impossible state change, a replica set naming a
stranger) changes nothing and yields a refusal the proposer reports.

The placement epoch grows by one with every change of members or replica
sets; a client that routed with an older table learns it from the epoch a
node stamps on its answers and refreshes (client/routing.py).

Cluster settings (node.settings: what apply does, session TTL, history
retention...) are state here too, with their own generation (1, 2, ...;
0 with no settings: a cluster created before they were cluster state). One
set-settings entry changes them for the whole cluster; the system leader
then carries each generation into every partition's log
(node.cluster.settings_sync), so every replica of a partition still applies
it at the same index of its own log. Settings never change the epoch:
routing does not depend on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from node.limits import ValidationError
from node.settings import NAMES as SETTING_NAMES
from node.settings import ClusterSettings, apply_changes
from proto.placement import make_placement, partition_of

# Member states. A joining member holds a replica of the system group but no
# partition yet; decommissioning members are being emptied; a removed id is
# never reused (its certificate names it: a new machine gets a new id).
JOINING = "joining"
ACTIVE = "active"
DECOMMISSIONING = "decommissioning"
REMOVED = "removed"
MEMBER_STATES = (JOINING, ACTIVE, DECOMMISSIONING, REMOVED)
_TRANSITIONS = {
    JOINING: {ACTIVE, DECOMMISSIONING, REMOVED},
    ACTIVE: {DECOMMISSIONING, REMOVED},
    DECOMMISSIONING: {ACTIVE, REMOVED},
    REMOVED: set(),
}

SYSTEM_GROUP = 0xFFFF_FFFF
"""The system group's Raft group id: the largest uint32 the wire carries,
far above any partition (at most 65,536)."""

MAX_SYSTEM_VOTERS = 5
MAX_NODE_ID = (1 << 31) - 1
MAX_ADDRESS_LEN = 255


class ClusterStateError(ValueError):
    """A command or stored state that does not describe a possible cluster."""


@dataclass(frozen=True)
class Member:
    id: int
    address: str  # where peers dial it
    client_address: str  # where clients should; "" = address
    state: str = ACTIVE

    @property
    def serving_address(self) -> str:
        return self.client_address or self.address


@dataclass(frozen=True)
class TablePlacement:
    """A placement read from the cluster state's replica sets (which replica
    moves change), with the interface of proto.placement.Placement that the
    node uses: where a patient and a partition live."""

    partitions: int
    table: tuple[tuple[int, ...], ...]

    def replicas(self, partition: int) -> tuple[int, ...]:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is outside 0..{self.partitions - 1}")
        return self.table[partition]

    def partition_of(self, patient_id: str) -> int:
        return partition_of(patient_id, self.partitions)

    def partitions_on(self, node_id: int) -> list[int]:
        return [p for p, reps in enumerate(self.table) if node_id in reps]


@dataclass(frozen=True)
class ClusterState:
    """One cluster's membership and placement at one point of the system log."""

    cluster_id: str
    partitions: int
    replication: int
    virtual_nodes: int
    members: tuple[Member, ...]  # sorted by id; removed members stay, marked
    replicas: tuple[tuple[int, ...], ...]  # per partition; the first is the preferred leader
    epoch: int = 1
    # Partitions whose leader an operator chose (TransferLeader): leader
    # balancing hands leadership there instead of to the placement's choice.
    leader_pins: tuple[tuple[int, int], ...] = ()
    # The cluster settings and their generation; None and 0 in a state
    # created before settings were cluster state (partitions then keep the
    # settings their own logs seeded: node.settings_service).
    settings: ClusterSettings | None = None
    settings_generation: int = 0

    # ---- reading ------------------------------------------------------------

    def member(self, node_id: int) -> Member | None:
        for m in self.members:
            if m.id == node_id:
                return m
        return None

    def live_members(self) -> list[Member]:
        """Members that are not removed."""
        return [m for m in self.members if m.state != REMOVED]

    def partitions_on(self, node_id: int) -> list[int]:
        return [p for p, reps in enumerate(self.replicas) if node_id in reps]

    @property
    def placement(self) -> TablePlacement:
        return TablePlacement(self.partitions, self.replicas)

    def preferred_leader(self, partition: int) -> int:
        for p, node in self.leader_pins:
            if p == partition and node in self.replicas[partition]:
                return node
        return self.replicas[partition][0]

    def system_voters(self) -> tuple[int, ...]:
        """The system group's voters: up to five live members, an odd count
        (an even one tolerates no more failures than the odd one below it),
        active ones first, lowest ids first, so every node computes the same."""
        live = sorted(
            self.live_members(), key=lambda m: (m.state != ACTIVE, m.state == DECOMMISSIONING, m.id)
        )
        count = min(MAX_SYSTEM_VOTERS, len(live))
        if count % 2 == 0 and count > 0:
            count -= 1
        return tuple(sorted(m.id for m in live[:count]))

    def target_replicas(self) -> tuple[tuple[int, ...], ...]:
        """Where consistent hashing over the active members puts every
        partition: what replica moves converge to."""
        active = [m.id for m in self.members if m.state == ACTIVE]
        if len(active) < self.replication:
            return self.replicas
        return make_placement(active, self.partitions, self.replication, self.virtual_nodes).table

    # ---- encoding -----------------------------------------------------------

    def to_obj(self) -> dict[str, Any]:
        obj = {
            "v": 1,
            "cluster_id": self.cluster_id,
            "partitions": self.partitions,
            "replication": self.replication,
            "virtual_nodes": self.virtual_nodes,
            "members": [[m.id, m.address, m.client_address, m.state] for m in self.members],
            "replicas": [list(r) for r in self.replicas],
            "epoch": self.epoch,
            "leader_pins": [list(p) for p in self.leader_pins],
        }
        if self.settings is not None:  # absent: an old state encodes as it always did
            obj["settings"] = [self.settings_generation, settings_obj(self.settings)]
        return obj

    def encode(self) -> bytes:
        return msgpack.packb(self.to_obj(), use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_obj(cls, obj: Any) -> ClusterState:
        try:
            if not isinstance(obj, dict) or obj.get("v") != 1:
                raise ClusterStateError("cluster state: unknown format")
            state = cls(
                cluster_id=str(obj["cluster_id"]),
                partitions=int(obj["partitions"]),
                replication=int(obj["replication"]),
                virtual_nodes=int(obj["virtual_nodes"]),
                members=tuple(Member(int(i), str(a), str(c), str(s)) for i, a, c, s in obj["members"]),
                replicas=tuple(tuple(int(n) for n in r) for r in obj["replicas"]),
                epoch=int(obj["epoch"]),
                leader_pins=tuple((int(p), int(n)) for p, n in obj.get("leader_pins", [])),
                **_settings_from_obj(obj.get("settings")),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ClusterStateError):
                raise
            raise ClusterStateError(f"cluster state: malformed ({type(e).__name__})") from None
        state.check()
        return state

    @classmethod
    def decode(cls, data: bytes) -> ClusterState:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            raise ClusterStateError("cluster state: not msgpack") from None
        return cls.from_obj(obj)

    def check(self) -> None:
        """Raise ClusterStateError unless this describes a possible cluster."""
        if not self.cluster_id or len(self.cluster_id) > 64:
            raise ClusterStateError("cluster state: cluster_id must be 1..64 characters")
        if not 1 <= self.partitions <= 65_536:
            raise ClusterStateError("cluster state: partitions must be 1..65536")
        if not 1 <= self.replication <= 7:
            raise ClusterStateError("cluster state: replication must be 1..7")
        if not 1 <= self.virtual_nodes <= 4096:
            raise ClusterStateError("cluster state: virtual_nodes must be 1..4096")
        ids = [m.id for m in self.members]
        if ids != sorted(set(ids)):
            raise ClusterStateError("cluster state: member ids must be distinct and sorted")
        for m in self.members:
            _check_member(m.id, m.address, m.client_address)
            if m.state not in MEMBER_STATES:
                raise ClusterStateError(f"cluster state: member {m.id} has unknown state {m.state!r}")
        if len(self.replicas) != self.partitions:
            raise ClusterStateError("cluster state: one replica set per partition")
        live = {m.id for m in self.live_members()}
        for p, reps in enumerate(self.replicas):
            if not reps or len(set(reps)) != len(reps):
                raise ClusterStateError(f"cluster state: partition {p} needs distinct replicas")
            if not set(reps) <= live:
                raise ClusterStateError(f"cluster state: partition {p} names a node that is not a member")
        if self.epoch < 1:
            raise ClusterStateError("cluster state: epoch starts at 1")
        for p, n in self.leader_pins:
            if not 0 <= p < self.partitions or n not in live:
                raise ClusterStateError("cluster state: a leader pin names an unknown partition or node")
        if (self.settings is None) != (self.settings_generation == 0) or self.settings_generation < 0:
            raise ClusterStateError("cluster state: settings and their generation go together")
        if self.settings is not None:
            _settings_of(settings_obj(self.settings), "cluster state: settings")


def settings_obj(settings: ClusterSettings) -> dict[str, int]:
    return {name: getattr(settings, name) for name in SETTING_NAMES}


def _settings_of(values: Any, what: str) -> ClusterSettings:
    """Every setting named once, each within its bounds (node.settings)."""
    if not isinstance(values, dict) or set(values) != set(SETTING_NAMES):
        raise ClusterStateError(f"{what}: name every setting ({', '.join(SETTING_NAMES)})")
    try:
        return apply_changes(ClusterSettings(), values)
    except ValidationError as e:
        raise ClusterStateError(f"{what}: {e}") from None


def _settings_from_obj(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    generation, values = value
    return {"settings": _settings_of(values, "cluster state: settings"),
            "settings_generation": int(generation)}


def _check_member(node_id: int, address: str, client_address: str) -> None:
    if not 1 <= node_id <= MAX_NODE_ID:
        raise ClusterStateError(f"node id must be 1..{MAX_NODE_ID}, not {node_id}")
    for name, value, required in (("address", address, True), ("client_address", client_address, False)):
        if (required and not value) or len(value) > MAX_ADDRESS_LEN or not value.isprintable():
            raise ClusterStateError(f"node {node_id}: {name} must be host:port")
        if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
            raise ClusterStateError(f"node {node_id}: {name} must be host:port, not {value!r}")


def initial_state(
    cluster_id: str,
    members: Mapping[int, tuple[str, str]],
    partitions: int,
    replication: int,
    virtual_nodes: int,
    settings: Mapping[str, int] | None = None,
) -> ClusterState:
    """A new cluster: every given member active, placement by consistent
    hashing (proto.placement), epoch 1; `settings` (every one named: the
    initiating node's configuration) at generation 1."""
    if len(members) < replication:
        raise ClusterStateError(
            f"{len(members)} member(s) cannot hold {replication} distinct replicas"
        )
    for node_id, (address, client_address) in members.items():
        _check_member(node_id, address, client_address)
    placement = make_placement(members, partitions, replication, virtual_nodes)
    state = ClusterState(
        cluster_id=cluster_id,
        partitions=partitions,
        replication=replication,
        virtual_nodes=virtual_nodes,
        members=tuple(
            Member(i, members[i][0], members[i][1], ACTIVE) for i in sorted(members)
        ),
        replicas=placement.table,
        settings=None if settings is None else _settings_of(dict(settings), "settings"),
        settings_generation=0 if settings is None else 1,
    )
    state.check()
    return state


# ---- commands ---------------------------------------------------------------

ADD_MEMBER = "add-member"
SET_MEMBER_STATE = "set-member-state"
SET_ADDRESS = "set-address"
SET_REPLICAS = "set-replicas"
PIN_LEADER = "pin-leader"
SET_SETTINGS = "set-settings"
COMMANDS = (ADD_MEMBER, SET_MEMBER_STATE, SET_ADDRESS, SET_REPLICAS, PIN_LEADER, SET_SETTINGS)


@dataclass(frozen=True)
class Command:
    """One change to the cluster state, as proposed to the system group.

    `request` identifies the proposal so the proposer can find its outcome
    (and a retried proposal is recognised: applying it again is refused or a
    no-op, never a second change)."""

    kind: str
    args: tuple[Any, ...]
    request: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb([1, self.kind, list(self.args), self.request], use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, data: bytes) -> Command:
        try:
            v, kind, args, request = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            raise ClusterStateError("system command: malformed") from None
        if v != 1 or kind not in COMMANDS or not isinstance(args, list) or not isinstance(request, bytes):
            raise ClusterStateError("system command: malformed")
        return cls(kind, tuple(args), request)


def add_member(node_id: int, address: str, client_address: str = "", request: bytes = b"") -> Command:
    return Command(ADD_MEMBER, (node_id, address, client_address), request)


def set_member_state(node_id: int, state: str, request: bytes = b"") -> Command:
    return Command(SET_MEMBER_STATE, (node_id, state), request)


def set_address(node_id: int, address: str, client_address: str = "", request: bytes = b"") -> Command:
    return Command(SET_ADDRESS, (node_id, address, client_address), request)


def set_replicas(partition: int, replicas: Iterable[int], request: bytes = b"") -> Command:
    return Command(SET_REPLICAS, (partition, list(replicas)), request)


def pin_leader(partition: int, node_id: int, request: bytes = b"") -> Command:
    """node_id 0 unpins: balancing goes back to the placement's choice."""
    return Command(PIN_LEADER, (partition, node_id), request)


def set_settings(
    changes: Mapping[str, int], base: Mapping[str, int] | None = None, request: bytes = b""
) -> Command:
    """Change the named settings, the others keep their value. `base` (every
    setting named) is what a state without settings starts from (an old
    cluster: the proposer passes the values its partitions applied); a state
    with settings ignores it. Setting the values in force changes nothing
    (no new generation), so a retried proposal is harmless."""
    return Command(SET_SETTINGS, (dict(changes), None if base is None else dict(base)), request)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str = ""


def apply(state: ClusterState, cmd: Command) -> tuple[ClusterState, Outcome]:
    """The state after cmd, and whether cmd changed it. Never raises for a
    decoded command: a refusal leaves the state as it was."""
    try:
        new = _apply(state, cmd)
    except ClusterStateError as e:
        return state, Outcome(False, str(e))
    except (TypeError, ValueError, IndexError):
        return state, Outcome(False, f"{cmd.kind}: malformed arguments")
    new.check()  # a bug here must not write an impossible state
    return new, Outcome(True)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClusterStateError(f"{name} must be an integer")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ClusterStateError(f"{name} must be a string")
    return value


def _apply(state: ClusterState, cmd: Command) -> ClusterState:
    bump = dataclasses.replace
    if cmd.kind == ADD_MEMBER:
        node_id, address, client_address = cmd.args
        node_id = _int(node_id, "node id")
        _check_member(node_id, _str(address, "address"), _str(client_address, "client_address"))
        existing = state.member(node_id)
        if existing is not None:
            if existing.state == REMOVED:
                raise ClusterStateError(f"node {node_id} was removed; a new node needs a new id")
            raise ClusterStateError(f"node {node_id} is already a member ({existing.state})")
        members = tuple(sorted((*state.members, Member(node_id, address, client_address, JOINING)),
                               key=lambda m: m.id))
        return bump(state, members=members, epoch=state.epoch + 1)
    if cmd.kind == SET_MEMBER_STATE:
        node_id, new_state = _int(cmd.args[0], "node id"), _str(cmd.args[1], "state")
        m = state.member(node_id)
        if m is None:
            raise ClusterStateError(f"node {node_id} is not a member")
        if new_state not in MEMBER_STATES:
            raise ClusterStateError(f"unknown member state {new_state!r}")
        if new_state == m.state:
            return state
        if new_state not in _TRANSITIONS[m.state]:
            raise ClusterStateError(f"node {node_id} cannot go from {m.state} to {new_state}")
        if new_state == REMOVED and state.partitions_on(node_id):
            held = state.partitions_on(node_id)
            raise ClusterStateError(
                f"node {node_id} still holds replicas of {len(held)} partition(s) "
                f"(first: {held[0]}); move them off first"
            )
        members = tuple(dataclasses.replace(x, state=new_state) if x.id == node_id else x
                        for x in state.members)
        pins = tuple(p for p in state.leader_pins if p[1] != node_id or new_state == ACTIVE)
        return bump(state, members=members, leader_pins=pins, epoch=state.epoch + 1)
    if cmd.kind == SET_ADDRESS:
        node_id, address, client_address = cmd.args
        node_id = _int(node_id, "node id")
        _check_member(node_id, _str(address, "address"), _str(client_address, "client_address"))
        m = state.member(node_id)
        if m is None or m.state == REMOVED:
            raise ClusterStateError(f"node {node_id} is not a member")
        members = tuple(dataclasses.replace(x, address=address, client_address=client_address)
                        if x.id == node_id else x for x in state.members)
        return bump(state, members=members, epoch=state.epoch + 1)
    if cmd.kind == SET_REPLICAS:
        partition = _int(cmd.args[0], "partition")
        if not 0 <= partition < state.partitions:
            raise ClusterStateError(f"partition {partition} does not exist (0..{state.partitions - 1})")
        if not isinstance(cmd.args[1], list):
            raise ClusterStateError("replicas must be a list")
        reps = tuple(_int(n, "replica") for n in cmd.args[1])
        if not reps or len(set(reps)) != len(reps):
            raise ClusterStateError(f"partition {partition}: replicas must be distinct and non-empty")
        for n in reps:
            m = state.member(n)
            if m is None or m.state == REMOVED:
                raise ClusterStateError(f"partition {partition}: node {n} is not a member")
        table = tuple(reps if p == partition else r for p, r in enumerate(state.replicas))
        pins = tuple(x for x in state.leader_pins if x[0] != partition or x[1] in reps)
        return bump(state, replicas=table, leader_pins=pins, epoch=state.epoch + 1)
    if cmd.kind == PIN_LEADER:
        partition, node_id = _int(cmd.args[0], "partition"), _int(cmd.args[1], "node id")
        if not 0 <= partition < state.partitions:
            raise ClusterStateError(f"partition {partition} does not exist (0..{state.partitions - 1})")
        pins = tuple(x for x in state.leader_pins if x[0] != partition)
        if node_id:
            if node_id not in state.replicas[partition]:
                raise ClusterStateError(f"node {node_id} holds no replica of partition {partition}")
            pins = tuple(sorted((*pins, (partition, node_id))))
        return bump(state, leader_pins=pins)
    if cmd.kind == SET_SETTINGS:
        changes, base = cmd.args
        if not isinstance(changes, dict) or not changes:
            raise ClusterStateError(f"set-settings: name at least one of {', '.join(SETTING_NAMES)}")
        if state.settings is not None:
            current = state.settings
        elif base is None:
            current = ClusterSettings()
        else:
            current = _settings_of(base, "set-settings: base")
        try:
            new = apply_changes(current, changes)
        except ValidationError as e:
            raise ClusterStateError(f"set-settings: {e}") from None
        if new == state.settings:
            return state  # in force already: no new generation
        return bump(state, settings=new, settings_generation=state.settings_generation + 1)
    raise ClusterStateError(f"unknown system command {cmd.kind!r}")
