"""Authorization: which identity may call which RPC on which patient. Pure: no IO.

Two tables decide everything:

  METHODS       every gRPC method -> the Action it performs. A method that is
                not in the table is refused (fail closed), so a new RPC is
                unreachable until someone decides who may call it.
  ROLE_GRANTS   role -> {Action: Scope}: what the role may do, and within what.

Scopes:
  ANY        no further condition (an admin's erasure, a node's Raft traffic).
  CLINIC     the patient must be registered to one of the caller's clinics.
             A write to a patient nobody has registered yet registers it to
             the caller's clinic (the one named by the request, or the only
             one in the token): Decision.register_clinic, which the write must
             carry into the replicated state. A read of an unregistered
             patient is refused with the same words as another clinic's
             patient, so a refusal never reveals whether a patient exists.
             With the break-glass role too, a clinician may reach any patient
             when the request gives a reason: allowed, flagged for the audit.
  REPLICA    reads served from a replica's applied state only (follower or
             bounded), never from the leader's linearizable path: analytics
             must not slow the primaries.
  OWN_CLINIC registry changes: the patient must be registered to one of the
             caller's clinics (to share or unshare it), or be unregistered
             and the target clinic one of the caller's.

The patient <-> clinic registration lives in replicated state, with the
patient's records; PatientRegistry is the interface to it. A node that does
not hold the patient's partition cannot know the registration: it answers
NOT_HELD, and the Decision is `deferred`: allowed at the method level, and the
node that serves the data must call check_scope() against its own replica's
registration before it reads or writes (such a node answers only a redirect).

authorize() returns a Decision; a refusal's reason names the missing
permission and the caller's role and clinics, never a patient id, a record
id, or the patient's clinics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from node.auth import PermissionDenied
from node.auth.identity import (
    ADMIN,
    ANALYST,
    AUDITOR,
    BREAK_GLASS,
    CLINIC_ADMIN,
    CLINICIAN,
    NODE,
    TLS_PEER,
    Identity,
)


class Action(StrEnum):
    """A permission; its value is the name refusals and the audit log use."""

    RECORD_READ = "record.read"
    RECORD_WRITE = "record.write"
    RECORD_STREAM = "record.stream"  # BatchCommands: each request inside is authorized too
    SESSION = "record.session"  # open a write session (no patient: the writes are checked)
    SCAN = "record.scan"
    ROUTING = "cluster.routing"
    STATUS = "cluster.status"
    CLUSTER_ADMIN = "cluster.admin"
    # Replica moves (PrepareReplica, ChangeReplicas, DropReplica): the control
    # plane's leader calls them on other nodes with its node certificate.
    REPLICAS = "cluster.replicas"
    # SyncSettings: the control plane's leader brings the cluster's settings
    # into a partition's log through its leader (node.cluster.settings_sync).
    SETTINGS_SYNC = "cluster.settings-sync"
    KEYS = "keys.admin"
    ERASE = "patient.erase"
    REGISTRY = "registry.admin"
    AUDIT_READ = "audit.read"
    RAFT = "raft.transport"
    HEALTH = "health"


class Scope(StrEnum):
    ANY = "any"
    CLINIC = "clinic"
    REPLICA = "replica"
    OWN_CLINIC = "own-clinic"


KV = "/medkv.v1.KV/"
ADMIN_SVC = "/medkv.v1.Admin/"
RAFT_SVC = "/medkv.v1.RaftTransport/"
HEALTH_SVC = "/grpc.health.v1.Health/"

METHODS: Mapping[str, Action] = {
    KV + "Put": Action.RECORD_WRITE,
    KV + "CompareAndSet": Action.RECORD_WRITE,
    KV + "Delete": Action.RECORD_WRITE,
    KV + "Batch": Action.RECORD_WRITE,
    KV + "Get": Action.RECORD_READ,
    KV + "History": Action.RECORD_READ,
    KV + "Scan": Action.SCAN,
    KV + "BatchCommands": Action.RECORD_STREAM,
    KV + "OpenSession": Action.SESSION,
    KV + "SharePatient": Action.REGISTRY,
    ADMIN_SVC + "RoutingTable": Action.ROUTING,
    ADMIN_SVC + "ClusterStatus": Action.STATUS,
    ADMIN_SVC + "PartitionStatus": Action.STATUS,
    ADMIN_SVC + "TransferLeader": Action.CLUSTER_ADMIN,
    ADMIN_SVC + "ListNodes": Action.STATUS,
    ADMIN_SVC + "InitCluster": Action.CLUSTER_ADMIN,
    ADMIN_SVC + "AddNode": Action.CLUSTER_ADMIN,
    ADMIN_SVC + "DecommissionNode": Action.CLUSTER_ADMIN,
    ADMIN_SVC + "ErasePatient": Action.ERASE,
    ADMIN_SVC + "PrepareReplica": Action.REPLICAS,
    ADMIN_SVC + "ChangeReplicas": Action.REPLICAS,
    ADMIN_SVC + "DropReplica": Action.REPLICAS,
    ADMIN_SVC + "RotateDataKey": Action.KEYS,
    ADMIN_SVC + "RotateMasterKey": Action.KEYS,
    ADMIN_SVC + "KeyStatus": Action.KEYS,
    ADMIN_SVC + "SetSettings": Action.CLUSTER_ADMIN,
    ADMIN_SVC + "GetSettings": Action.STATUS,
    ADMIN_SVC + "SyncSettings": Action.SETTINGS_SYNC,
    ADMIN_SVC + "AuditQuery": Action.AUDIT_READ,
    ADMIN_SVC + "AuditVerify": Action.AUDIT_READ,
    RAFT_SVC + "Stream": Action.RAFT,
    RAFT_SVC + "Snapshot": Action.RAFT,
    RAFT_SVC + "Bootstrap": Action.RAFT,
    HEALTH_SVC + "Check": Action.HEALTH,
    HEALTH_SVC + "Watch": Action.HEALTH,
}

# BatchCommands multiplexes these; each request inside is authorized as the unary method.
STREAM_REQUEST_METHODS: Mapping[str, str] = {
    "put": KV + "Put", "cas": KV + "CompareAndSet", "delete": KV + "Delete",
    "batch": KV + "Batch", "get": KV + "Get", "history": KV + "History",
    "open_session": KV + "OpenSession",
}

_EVERYONE = {Action.ROUTING: Scope.ANY, Action.HEALTH: Scope.ANY}

ROLE_GRANTS: Mapping[str, Mapping[Action, Scope]] = {
    CLINICIAN: {
        Action.RECORD_READ: Scope.CLINIC, Action.RECORD_WRITE: Scope.CLINIC,
        Action.RECORD_STREAM: Scope.ANY, Action.SESSION: Scope.ANY, **_EVERYONE,
    },
    # Only widens a clinician's CLINIC scope (with a reason); grants nothing alone.
    BREAK_GLASS: {**_EVERYONE},
    CLINIC_ADMIN: {Action.REGISTRY: Scope.OWN_CLINIC, Action.STATUS: Scope.ANY, **_EVERYONE},
    ANALYST: {
        Action.SCAN: Scope.ANY, Action.RECORD_READ: Scope.REPLICA,
        Action.RECORD_STREAM: Scope.ANY, Action.STATUS: Scope.ANY, **_EVERYONE,
    },
    AUDITOR: {Action.AUDIT_READ: Scope.ANY, Action.STATUS: Scope.ANY, **_EVERYONE},
    ADMIN: {
        # Not REPLICAS or SETTINGS_SYNC: those are the control plane's own steps
        # (node certificates); an operator moves replicas through node
        # add/decommission, which keep the cluster state and the groups in step.
        Action.CLUSTER_ADMIN: Scope.ANY, Action.KEYS: Scope.ANY, Action.ERASE: Scope.ANY,
        # erasure is a replicated write: it needs a session like any other
        Action.SESSION: Scope.ANY, Action.STATUS: Scope.ANY, **_EVERYONE,
    },
    NODE: {
        Action.RAFT: Scope.ANY, Action.STATUS: Scope.ANY, Action.REPLICAS: Scope.ANY,
        Action.SETTINGS_SYNC: Scope.ANY, **_EVERYONE,
    },
    TLS_PEER: {Action.HEALTH: Scope.ANY},
}

# Actions whose scope needs the patient's registration.
PATIENT_ACTIONS = frozenset({Action.RECORD_READ, Action.RECORD_WRITE, Action.REGISTRY})


# ---- the patient <-> clinic registry ---------------------------------------


@dataclass(frozen=True)
class Registration:
    """A patient's clinics as this node knows them.

    known=False: this node does not hold the patient's partition (NOT_HELD)."""

    clinics: frozenset[str] = frozenset()
    known: bool = True

    @property
    def registered(self) -> bool:
        return self.known and bool(self.clinics)


UNREGISTERED = Registration()
NOT_HELD = Registration(known=False)


class PatientRegistry(Protocol):
    """The replicated patient <-> clinic registration, as one node sees it.

    Backed by the state machine of the patient's partition (a registration is
    written with the patient's records, so it moves, snapshots and is erased
    with them). lookup() is a local read of applied state: it never waits.

    authoritative: whether lookup() is the truth (a fixed table) or a replica's
    applied state that may trail the log, which can allow a call but must not
    refuse it (the interceptor then defers to where the data is)."""

    authoritative: bool

    def lookup(self, patient_id: str) -> Registration: ...


class InMemoryRegistry:
    """A registry in a dict: tests and labs (the node backs it with replicated state)."""

    authoritative = True

    def __init__(self, registrations: Mapping[str, set[str] | frozenset[str]] | None = None) -> None:
        self._by_patient: dict[str, frozenset[str]] = {
            p: frozenset(c) for p, c in (registrations or {}).items()
        }

    def lookup(self, patient_id: str) -> Registration:
        clinics = self._by_patient.get(patient_id)
        return Registration(clinics) if clinics else UNREGISTERED

    def register(self, patient_id: str, clinic: str) -> None:
        self._by_patient[patient_id] = self._by_patient.get(patient_id, frozenset()) | {clinic}

    def revoke(self, patient_id: str, clinic: str) -> None:
        self._by_patient[patient_id] = self._by_patient.get(patient_id, frozenset()) - {clinic}


# ---- decisions -------------------------------------------------------------


@dataclass(frozen=True)
class RequestFacts:
    """What authorization needs to know about one request (nothing else is read)."""

    patient_id: str | None = None
    registration: Registration = NOT_HELD
    consistency: str = "linearizable"  # linearizable | follower | bounded (reads)
    clinic: str | None = None  # the clinic a request names (registry target, or register-to)
    break_glass_reason: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    permission: str  # the Action checked ("" for a method outside the policy)
    reason: str = ""  # why it was refused; empty when allowed
    break_glass: bool = False  # allowed only through break-glass: flag it in the audit log
    register_clinic: str | None = None  # this write registers a new patient to this clinic
    deferred: bool = False  # patient scope still to check where the data is (check_scope)
    scope: str = field(default="", compare=False)

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise PermissionDenied(self.reason)


def _roles_text(identity: Identity) -> str:
    return identity.role_text or "none"


def clinics_text(clinics: Iterable[str]) -> str:
    """A caller's own clinics as refusals name them."""
    return ", ".join(sorted(clinics)) or "none"


def _clinics_text(identity: Identity) -> str:
    return clinics_text(identity.clinics)


# The refusals the replicated state machine repeats at apply (node.state_machine):
# one wording, whether a node's interceptor or the partition's log refused.


def not_registered_reason(perm: str, clinics: Iterable[str]) -> str:
    """A patient outside the caller's clinics (or unregistered: the same words)."""
    return (f"permission {perm} denied: the patient is not registered to your clinic(s) "
            f"({clinics_text(clinics)})")


def name_clinic_reason(perm: str, clinics: Iterable[str]) -> str:
    """A write that would register a new patient, from a caller of several clinics
    who did not say which."""
    return (f"permission {perm} denied: a new patient is registered to one clinic; "
            f"name which of yours ({clinics_text(clinics)}) in metadata medkv-clinic")


def not_own_clinic_reason(perm: str, clinics: Iterable[str]) -> str:
    """A registry change (SharePatient) outside the caller's clinics."""
    return (f"permission {perm} denied: the patient is not registered to your clinic(s) "
            f"({clinics_text(clinics)}) and the request does not register it to one of them")


class Policy:
    def __init__(
        self,
        methods: Mapping[str, Action] = METHODS,
        grants: Mapping[str, Mapping[Action, Scope]] = ROLE_GRANTS,
    ) -> None:
        self.methods = dict(methods)
        self.grants = grants

    def action_of(self, method: str) -> Action | None:
        return self.methods.get(method)

    def needs_patient(self, method: str) -> bool:
        action = self.methods.get(method)
        return action in PATIENT_ACTIONS

    def _granted(self, identity: Identity, method: str) -> tuple[Action | None, dict[str, Scope], Decision | None]:
        """The method's action and the caller's roles that hold it, or the refusal."""
        action = self.methods.get(method)
        if action is None:
            return None, {}, Decision(False, "", f"method {method} is not in medkv's access policy")
        granted = {r: self.grants[r][action] for r in identity.roles
                   if r in self.grants and action in self.grants[r]}
        if not granted:
            holders = sorted(r for r, g in self.grants.items() if action in g)
            return action, {}, Decision(
                False, action.value,
                f"permission {action.value} denied: role {_roles_text(identity)} lacks it "
                f"(granted to: {', '.join(holders) or 'no role'})",
            )
        return action, granted, None

    def role_allows(self, identity: Identity, method: str) -> Decision:
        """Whether any of the caller's roles holds the method's permission at all,
        whatever the scope: for a request too garbled to name its patient, which
        the servicer refuses as INVALID_ARGUMENT anyway."""
        action, _, refusal = self._granted(identity, method)
        if refusal is not None:
            return refusal
        assert action is not None
        return Decision(True, action.value)

    def authorize(self, identity: Identity, method: str, facts: RequestFacts) -> Decision:
        action, granted, refusal = self._granted(identity, method)
        if refusal is not None:
            return refusal
        assert action is not None
        decisions = [self._scoped(identity, r, action, scope, facts) for r, scope in granted.items()]
        allowed = [d for d in decisions if d.allowed]
        if allowed:
            # The plainest grant wins: break-glass only when nothing else allows the
            # call (so it is never flagged needlessly), a deferral only when nothing
            # can decide here.
            return min(allowed, key=lambda d: (d.break_glass, d.deferred,
                                               d.register_clinic is not None))
        return decisions[0] if len(decisions) == 1 else min(decisions, key=lambda d: d.reason)

    def _scoped(
        self, identity: Identity, role: str, action: Action, scope: Scope, facts: RequestFacts
    ) -> Decision:
        perm = action.value
        if scope is Scope.ANY:
            return Decision(True, perm, scope=scope.value)
        if scope is Scope.REPLICA:
            if facts.consistency in ("follower", "bounded"):
                return Decision(True, perm, scope=scope.value)
            return Decision(
                False, perm,
                f"permission {perm} denied: role {role} reads from replicas only "
                "(use consistency follower or bounded)",
            )
        reg = facts.registration
        if facts.patient_id is None:
            return Decision(False, perm, f"permission {perm} denied: the request names no patient")
        if not reg.known:
            return Decision(True, perm, deferred=True, scope=scope.value)
        mine = reg.clinics & identity.clinics
        if scope is Scope.OWN_CLINIC:
            if mine or (not reg.registered and facts.clinic in identity.clinics):
                return Decision(True, perm, scope=scope.value)
            return Decision(False, perm, not_own_clinic_reason(perm, identity.clinics))
        # Scope.CLINIC
        if mine:
            return Decision(True, perm, scope=scope.value)
        if not reg.registered and action is Action.RECORD_WRITE:
            clinic = facts.clinic
            if clinic is None and len(identity.clinics) == 1:
                (clinic,) = identity.clinics
            if clinic is not None and clinic in identity.clinics:
                return Decision(True, perm, register_clinic=clinic, scope=scope.value)
            if clinic is None and identity.clinics:
                return Decision(False, perm, name_clinic_reason(perm, identity.clinics))
        if BREAK_GLASS in identity.roles:
            if facts.break_glass_reason.strip():
                return Decision(True, perm, break_glass=True, scope="break-glass")
            return Decision(
                False, perm,
                f"permission {perm} denied: the patient is not registered to your clinic(s) "
                f"({_clinics_text(identity)}); break-glass access needs a reason "
                "(metadata medkv-break-glass-reason)",
            )
        return Decision(False, perm, not_registered_reason(perm, identity.clinics))

    def check_scope(
        self, identity: Identity, method: str, facts: RequestFacts
    ) -> Decision:
        """The deferred half: called where the patient's partition is held, with the
        replica's registration in `facts`. Raises PermissionDenied when refused."""
        if not facts.registration.known:
            raise ValueError("check_scope needs the registration of a replica that holds it")
        d = self.authorize(identity, method, facts)
        d.raise_if_denied()
        return d


DEFAULT_POLICY = Policy()


def authorize(identity: Identity, method: str, facts: RequestFacts) -> Decision:
    """The default policy's decision (see Policy.authorize)."""
    return DEFAULT_POLICY.authorize(identity, method, facts)
