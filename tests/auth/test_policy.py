"""The access policy against an independent model, plus invariants (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.auth.identity import (
    ADMIN,
    ALL_ROLES,
    ANALYST,
    AUDITOR,
    BREAK_GLASS,
    CLINIC_ADMIN,
    CLINICIAN,
    NODE,
    TLS_PEER,
    Identity,
)
from node.auth.policy import (
    METHODS,
    NOT_HELD,
    UNREGISTERED,
    InMemoryRegistry,
    Policy,
    Registration,
    RequestFacts,
    authorize,
)

KV, AD, RAFT = "/medkv.v1.KV/", "/medkv.v1.Admin/", "/medkv.v1.RaftTransport/"
AUDIT_READS = {AD + "AuditQuery", AD + "AuditVerify"}
REGISTER = KV + "SharePatient"
POLICY = Policy(METHODS)

# The model, written from the words, not from the tables.
READS = {KV + "Get", KV + "History"}
WRITES = {KV + "Put", KV + "CompareAndSet", KV + "Delete", KV + "Batch"}
ADMIN_OPS = {AD + "TransferLeader", AD + "ErasePatient", AD + "RotateDataKey",
             AD + "RotateMasterKey", AD + "KeyStatus", AD + "SetSettings", AD + "InitCluster",
             AD + "AddNode", AD + "DecommissionNode"}
STATUS = {AD + "ClusterStatus", AD + "PartitionStatus", AD + "GetSettings", AD + "ListNodes"}
# Replica moves: the control plane only (a node certificate).
REPLICA_MOVES = {AD + "PrepareReplica", AD + "ChangeReplicas", AD + "DropReplica",
                 AD + "SyncSettings"}  # and carrying cluster settings into partitions
ALL_METHODS = sorted([*POLICY.methods, "/medkv.v1.KV/Nope", "/other.Svc/Call"])

CLINICS = ["north", "south", "east"]
OTHER = ["zz-elsewhere-1", "zz-elsewhere-2"]  # clinics no caller ever belongs to


def model(i: Identity, method: str, f: RequestFacts) -> tuple[bool, bool, str | None, bool]:
    """(allowed, break_glass, register_clinic, deferred)."""
    roles = i.roles
    no = (False, False, None, False)
    yes = (True, False, None, False)
    if method in (RAFT + "Stream", RAFT + "Snapshot", RAFT + "Bootstrap"):
        return yes if NODE in roles else no
    if method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
        return yes if roles else no
    if method == AD + "RoutingTable":
        return yes if roles - {TLS_PEER} else no
    if method in STATUS:
        return yes if roles & {CLINIC_ADMIN, ANALYST, AUDITOR, ADMIN, NODE} else no
    if method in ADMIN_OPS:
        return yes if ADMIN in roles else no
    if method in REPLICA_MOVES:
        return yes if NODE in roles else no
    if method in AUDIT_READS:
        return yes if AUDITOR in roles else no
    if method == KV + "OpenSession":  # writes need a session; admins erase through one
        return yes if roles & {CLINICIAN, ADMIN} else no
    if method == KV + "Scan":
        return yes if ANALYST in roles else no
    if method == KV + "BatchCommands":
        return yes if roles & {CLINICIAN, ANALYST} else no
    if method == REGISTER:
        if CLINIC_ADMIN not in roles or f.patient_id is None:
            return no
        if not f.registration.known:
            return (True, False, None, True)
        if f.registration.clinics & i.clinics:
            return yes
        if not f.registration.clinics and f.clinic in i.clinics:
            return yes
        return no
    if method in READS or method in WRITES:
        if method in READS and ANALYST in roles and f.consistency in ("follower", "bounded"):
            return yes
        if CLINICIAN not in roles or f.patient_id is None:
            return no
        if not f.registration.known:
            return (True, False, None, True)
        if f.registration.clinics & i.clinics:
            return yes
        if method in WRITES and not f.registration.clinics:
            chosen = f.clinic if f.clinic is not None else (
                next(iter(i.clinics)) if len(i.clinics) == 1 else None)
            if chosen in i.clinics:
                return (True, False, chosen, False)
            if f.clinic is None and i.clinics:
                return no
        if BREAK_GLASS in roles and f.break_glass_reason.strip():
            return (True, True, None, False)
        return no
    return no


identities = st.builds(
    lambda roles, clinics: Identity(subject="someone", roles=frozenset(roles),
                                    clinics=frozenset(clinics)),
    st.sets(st.sampled_from(sorted(ALL_ROLES)), max_size=3),
    st.sets(st.sampled_from(CLINICS), max_size=3),
)
registrations = st.one_of(
    st.just(NOT_HELD), st.just(UNREGISTERED),
    st.sets(st.sampled_from(CLINICS + OTHER), min_size=1, max_size=3).map(
        lambda c: Registration(frozenset(c))),
)
facts = st.builds(
    RequestFacts,
    patient_id=st.one_of(st.none(), st.text("PQXYZ", min_size=6, max_size=12).map("PAT-".__add__)),
    registration=registrations,
    consistency=st.sampled_from(["linearizable", "follower", "bounded"]),
    clinic=st.one_of(st.none(), st.sampled_from(CLINICS + OTHER)),
    break_glass_reason=st.sampled_from(["", "  ", "unconscious patient in ER"]),
)


@given(identities, st.sampled_from(ALL_METHODS), facts)
def test_policy_matches_the_model(i: Identity, method: str, f: RequestFacts) -> None:
    d = POLICY.authorize(i, method, f)
    assert (d.allowed, d.break_glass, d.register_clinic, d.deferred) == model(i, method, f)
    assert d.allowed == (d.reason == "")


@given(identities, st.sampled_from(ALL_METHODS), facts)
def test_refusals_reveal_no_patient_data(i: Identity, method: str, f: RequestFacts) -> None:
    d = POLICY.authorize(i, method, f)
    if f.patient_id is not None:
        assert f.patient_id not in d.reason
    for c in OTHER:  # the patient's clinics are not the caller's business
        if c != f.clinic:
            assert c not in d.reason
    if not d.allowed:
        assert "denied" in d.reason or "not in medkv's access policy" in d.reason


@given(identities, st.sampled_from(ALL_METHODS), facts, st.sampled_from(CLINICS),
       st.sampled_from(sorted(ALL_ROLES)))
def test_more_clinics_or_roles_never_take_access_away(
    i: Identity, method: str, f: RequestFacts, clinic: str, role: str
) -> None:
    before = POLICY.authorize(i, method, f).allowed
    more_roles = Identity(i.subject, i.roles | {role}, i.clinics)
    assert POLICY.authorize(more_roles, method, f).allowed >= before
    if f.clinic is None:  # a new patient goes to the only clinic: a second one needs naming
        return
    more_clinics = Identity(i.subject, i.roles, i.clinics | {clinic})
    assert POLICY.authorize(more_clinics, method, f).allowed >= before


@given(identities, facts)
def test_only_nodes_speak_raft_and_nodes_see_no_records(i: Identity, f: RequestFacts) -> None:
    for m in (RAFT + "Stream", RAFT + "Snapshot", RAFT + "Bootstrap"):
        assert POLICY.authorize(i, m, f).allowed == (NODE in i.roles)
    node = Identity.for_node(3)
    for m in READS | WRITES | {KV + "Scan", KV + "BatchCommands"} | ADMIN_OPS:
        assert not POLICY.authorize(node, m, f).allowed


def test_replica_moves_are_for_nodes_only() -> None:
    """Moving replicas by hand would leave the cluster state behind the groups:
    an admin grows and shrinks the cluster through node add/decommission."""
    f = RequestFacts()
    for m in REPLICA_MOVES:
        assert m in POLICY.methods
        assert POLICY.authorize(Identity.for_node(2), m, f).allowed
        for role in (ADMIN, CLINICIAN, ANALYST, AUDITOR, CLINIC_ADMIN, BREAK_GLASS, TLS_PEER):
            d = POLICY.authorize(Identity("x", frozenset({role}), frozenset({"north"})), m, f)
            want = "cluster.settings-sync" if m.endswith("SyncSettings") else "cluster.replicas"
            assert not d.allowed and d.permission == want, (role, m)


def test_concrete_cases() -> None:
    alice = Identity("alice", frozenset({CLINICIAN}), frozenset({"north"}))
    north = RequestFacts(patient_id="p1", registration=Registration(frozenset({"north"})))
    south = RequestFacts(patient_id="p2", registration=Registration(frozenset({"south"})))
    assert authorize(alice, KV + "Get", north).allowed
    d = authorize(alice, KV + "Get", south)
    assert not d.allowed and d.permission == "record.read"
    assert d.reason == ("permission record.read denied: the patient is not registered to your "
                        "clinic(s) (north)")
    # Unregistered: a read is refused with the same words; a write registers it.
    new = RequestFacts(patient_id="p3", registration=UNREGISTERED)
    assert authorize(alice, KV + "Get", new).reason == d.reason
    assert authorize(alice, KV + "Put", new).register_clinic == "north"
    d = authorize(alice, KV + "Scan", north)
    assert d.reason == ("permission record.scan denied: role clinician lacks it "
                        "(granted to: analyst)")
    # Break-glass needs a reason, and is flagged.
    er = Identity("bob", frozenset({CLINICIAN, BREAK_GLASS}), frozenset({"north"}))
    assert "needs a reason" in authorize(er, KV + "Get", south).reason
    d = authorize(er, KV + "Get", RequestFacts(
        patient_id="p2", registration=south.registration, break_glass_reason="ER"))
    assert d.allowed and d.break_glass
    assert not authorize(er, KV + "Get", north).break_glass  # own clinic: not break-glass
    # Analyst: replica reads and scans only.
    ana = Identity("ana", frozenset({ANALYST}))
    assert authorize(ana, KV + "Scan", RequestFacts()).allowed
    assert "reads from replicas only" in authorize(ana, KV + "Get", north).reason
    assert authorize(ana, KV + "Get", RequestFacts(patient_id="p1", consistency="follower")).allowed
    assert not authorize(ana, KV + "Put", north).allowed
    # Admin: operations, never records.
    adm = Identity("root", frozenset({ADMIN}))
    assert authorize(adm, AD + "ErasePatient", north).allowed
    assert authorize(adm, AD + "RotateDataKey", RequestFacts()).allowed
    assert not authorize(adm, KV + "Get", north).allowed
    # Fail closed on anything the policy does not name.
    assert "not in medkv's access policy" in authorize(adm, "/medkv.v1.KV/Drop", north).reason


def test_deferred_scope_is_checked_where_the_data_is() -> None:
    alice = Identity("alice", frozenset({CLINICIAN}), frozenset({"north"}))
    reg = InMemoryRegistry({"p1": {"north"}, "p2": {"south"}})
    d = authorize(alice, KV + "Get", RequestFacts(patient_id="p1", registration=NOT_HELD))
    assert d.allowed and d.deferred
    POLICY.check_scope(alice, KV + "Get", RequestFacts(patient_id="p1",
                                                        registration=reg.lookup("p1")))
    import pytest

    from node.auth import PermissionDenied

    with pytest.raises(PermissionDenied, match="not registered to your clinic"):
        POLICY.check_scope(alice, KV + "Get", RequestFacts(patient_id="p2",
                                                            registration=reg.lookup("p2")))
    reg.register("p2", "north")
    POLICY.check_scope(alice, KV + "Get", RequestFacts(patient_id="p2",
                                                        registration=reg.lookup("p2")))


@st.composite
def scoped_scenarios(draw: st.DrawFn) -> tuple[Identity, RequestFacts]:
    """An identity and facts drawn together, so the cases the clinic scope decides
    (the caller's clinic named, the patient at another clinic, ...) come up often."""
    roles = draw(st.sets(st.sampled_from([CLINICIAN, CLINIC_ADMIN, BREAK_GLASS, ANALYST]),
                         min_size=1, max_size=3))
    clinics = draw(st.sets(st.sampled_from(CLINICS), max_size=2))
    own = sorted(clinics) or ["north"]
    registration = draw(st.one_of(
        st.just(NOT_HELD), st.just(UNREGISTERED),
        st.sets(st.sampled_from(own), min_size=1).map(lambda c: Registration(frozenset(c))),
        st.sets(st.sampled_from(OTHER), min_size=1).map(lambda c: Registration(frozenset(c))),
        st.sets(st.sampled_from(own + OTHER), min_size=2).map(lambda c: Registration(frozenset(c))),
    ))
    f = RequestFacts(
        patient_id=draw(st.sampled_from(["PAT-QXZ", None, "PAT-ZZY"])),
        registration=registration,
        consistency=draw(st.sampled_from(["linearizable", "follower", "bounded"])),
        clinic=draw(st.one_of(st.none(), st.sampled_from(own), st.sampled_from(OTHER))),
        break_glass_reason=draw(st.sampled_from(["", " ", "ER"])),
    )
    return Identity("someone", frozenset(roles), frozenset(clinics)), f


@given(scoped_scenarios(), st.sampled_from(sorted(READS | WRITES | {REGISTER})))
def test_patient_scoped_methods_match_the_model(
    scenario: tuple[Identity, RequestFacts], method: str
) -> None:
    """The same comparison, concentrated where the clinic scope decides."""
    i, f = scenario
    d = POLICY.authorize(i, method, f)
    assert (d.allowed, d.break_glass, d.register_clinic, d.deferred) == model(i, method, f)


def test_patient_scope_exhaustively() -> None:
    """Every combination of the facts the clinic scope reads, for two clinics: small
    enough to enumerate, so no case is left to chance."""
    import itertools

    role_sets = [frozenset(c) for n in range(5)
                 for c in itertools.combinations([CLINICIAN, CLINIC_ADMIN, BREAK_GLASS, ANALYST], n)]
    clinic_sets = [frozenset(c) for n in range(3) for c in itertools.combinations(["north", "south"], n)]
    regs = [NOT_HELD, UNREGISTERED] + [Registration(frozenset(c)) for c in
                                       (["north"], ["south"], ["zz-elsewhere-1"],
                                        ["north", "zz-elsewhere-1"])]
    checked = 0
    for roles, clinics, method, reg, patient, consistency, clinic, reason in itertools.product(
        role_sets, clinic_sets, sorted(READS | WRITES | {REGISTER}), regs, ["PAT-Q", None],
        ["linearizable", "follower"], [None, "north", "south", "zz-elsewhere-1"], ["", " ", "ER"],
    ):
        i = Identity("someone", roles, clinics)
        f = RequestFacts(patient_id=patient, registration=reg, consistency=consistency,
                         clinic=clinic, break_glass_reason=reason)
        d = POLICY.authorize(i, method, f)
        assert (d.allowed, d.break_glass, d.register_clinic, d.deferred) == model(i, method, f), (
            i, method, f)
        checked += 1
    assert checked > 100_000
