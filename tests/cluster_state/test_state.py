"""The cluster state machine (node.cluster.state): refusals change nothing,
every reachable state is a possible cluster, and encodings round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.cluster import state as cs


def three() -> cs.ClusterState:
    return cs.initial_state(
        "c1", {n: (f"127.0.0.1:{7100 + n}", "") for n in (1, 2, 3)}, partitions=8,
        replication=3, virtual_nodes=16,
    )


def test_initial_state_places_every_partition_on_distinct_members() -> None:
    s = three()
    assert s.epoch == 1 and len(s.replicas) == 8
    assert all(sorted(r) == [1, 2, 3] for r in s.replicas)
    assert s.system_voters() == (1, 2, 3)
    assert cs.ClusterState.decode(s.encode()) == s


def test_too_few_members_for_the_replication_is_refused() -> None:
    with pytest.raises(cs.ClusterStateError, match="cannot hold 3"):
        cs.initial_state("c", {1: ("a:1", ""), 2: ("b:2", "")}, 4, 3, 8)


def test_add_member_joins_and_bumps_the_epoch_once() -> None:
    s = three()
    s2, out = cs.apply(s, cs.add_member(4, "127.0.0.1:7104"))
    assert out.ok and s2.epoch == 2
    m = s2.member(4)
    assert m is not None and m.state == cs.JOINING
    s3, out = cs.apply(s2, cs.add_member(4, "127.0.0.1:7104"))
    assert not out.ok and "already a member" in out.message and s3 == s2


def test_a_member_holding_replicas_cannot_be_removed() -> None:
    s = three()
    s2, out = cs.apply(s, cs.set_member_state(3, cs.REMOVED))
    assert not out.ok and "still holds replicas" in out.message and s2 == s


def test_removed_ids_are_never_reused() -> None:
    s, _ = cs.apply(three(), cs.add_member(4, "127.0.0.1:7104"))
    s, out = cs.apply(s, cs.set_member_state(4, cs.REMOVED))
    assert out.ok
    s2, out = cs.apply(s, cs.add_member(4, "127.0.0.1:7104"))
    assert not out.ok and "new id" in out.message and s2 == s


def test_replica_sets_name_members_only_and_pins_follow_them() -> None:
    s, _ = cs.apply(three(), cs.add_member(4, "127.0.0.1:7104"))
    s, out = cs.apply(s, cs.pin_leader(0, s.replicas[0][2]))
    assert out.ok and s.preferred_leader(0) == s.replicas[0][2]
    bad, out = cs.apply(s, cs.set_replicas(0, [1, 2, 9]))
    assert not out.ok and "node 9 is not a member" in out.message and bad == s
    keep = [n for n in s.replicas[0] if n != s.replicas[0][2]] + [4]
    s2, out = cs.apply(s, cs.set_replicas(0, keep))
    assert out.ok and s2.replicas[0] == tuple(keep) and s2.epoch == s.epoch + 1
    assert s2.leader_pins == ()  # the pinned node left the partition


def test_target_placement_moves_about_rp_over_n_replicas_when_a_node_joins() -> None:
    s = cs.initial_state("c", {n: (f"h:{n}", "") for n in range(1, 6)}, 64, 3, 64)
    s, _ = cs.apply(s, cs.add_member(6, "h:6"))
    s, _ = cs.apply(s, cs.set_member_state(6, cs.ACTIVE))
    target = s.target_replicas()
    moved = sum(len(set(t) - set(r)) for t, r in zip(target, s.replicas, strict=True))
    ideal = 3 * 64 / 6
    assert ideal * 0.5 <= moved <= ideal * 2.5, moved


node_ids = st.integers(min_value=-1, max_value=8)
commands = st.one_of(
    st.builds(cs.add_member, node_ids, st.sampled_from(["127.0.0.1:1", "h:2", "", "bad"])),
    st.builds(cs.set_member_state, node_ids, st.sampled_from([*cs.MEMBER_STATES, "odd"])),
    st.builds(cs.set_address, node_ids, st.sampled_from(["h:9", "x"])),
    st.builds(cs.set_replicas, st.integers(-1, 8), st.lists(node_ids, max_size=4)),
    st.builds(cs.pin_leader, st.integers(-1, 8), node_ids),
    st.builds(cs.Command, st.just(cs.SET_REPLICAS), st.tuples(st.text(max_size=2), st.none())),
    st.builds(cs.set_settings, st.dictionaries(
        st.sampled_from(["max_sessions", "history_retention", "x"]), st.integers(-1, 5),
        max_size=2)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=30))
def test_any_command_sequence_keeps_a_possible_cluster(cmds: list[cs.Command]) -> None:
    s = three()
    for cmd in cmds:
        decoded = cs.Command.decode(cmd.encode())
        assert decoded == cmd
        new, out = cs.apply(s, decoded)
        if not out.ok:
            assert new == s, "a refused command changed the state"
            assert out.message
        else:
            assert new.epoch >= s.epoch
            if new.members != s.members or new.replicas != s.replicas:
                assert new.epoch == s.epoch + 1
        new.check()
        assert cs.ClusterState.decode(new.encode()) == new
        voters = new.system_voters()
        live = {m.id for m in new.live_members()}
        assert set(voters) <= live and len(voters) <= 5 and len(voters) % 2 == 1
        for p, reps in enumerate(new.replicas):
            assert set(reps) <= live, f"partition {p} on a removed node"
        s = new


def test_garbage_is_refused_not_crashed() -> None:
    for data in (b"", b"\x91\x01", b"\xc1", cs.Command("nope", ()).encode()):
        with pytest.raises(cs.ClusterStateError):
            cs.Command.decode(data)
    with pytest.raises(cs.ClusterStateError):
        cs.ClusterState.decode(b"\x80")
