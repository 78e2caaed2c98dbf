"""Cluster settings as cluster state (node.cluster.state set-settings): one
change, one generation, validated like node.settings; old states without
settings still decode, and a state's encoding is unchanged when it has none."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.cluster import state as cs
from node.cluster.system import SystemStateMachine
from node.settings import BOUNDS, DEFAULTS, NAMES, ClusterSettings

SEED = {"session_ttl_ms": 60_000, "history_retention": 4, "max_sessions": 100,
        "max_results_per_session": 8}


def seeded() -> cs.ClusterState:
    return cs.initial_state(
        "c1", {n: (f"127.0.0.1:{7100 + n}", "") for n in (1, 2, 3)}, partitions=4,
        replication=3, virtual_nodes=16, settings=SEED,
    )


def test_the_initial_state_carries_the_seed_at_generation_one() -> None:
    s = seeded()
    assert s.settings == ClusterSettings(**SEED) and s.settings_generation == 1
    assert cs.ClusterState.decode(s.encode()) == s


def test_a_change_is_one_new_generation_and_leaves_the_epoch_alone() -> None:
    s = seeded()
    s2, out = cs.apply(s, cs.set_settings({"max_sessions": 30}))
    assert out.ok and s2.settings_generation == 2 and s2.epoch == s.epoch
    assert s2.settings == dataclasses.replace(ClusterSettings(**SEED), max_sessions=30)
    # The same values again (a retried proposal): no new generation.
    s3, out = cs.apply(s2, cs.set_settings({"max_sessions": 30}))
    assert out.ok and s3 == s2


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({}, "name at least one"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"session_ttl_ms": 10**12}, "session_ttl_ms"),
        ({"nope": 3}, "not a setting"),
        ({"history_retention": True}, "history_retention"),
        ({"history_retention": "4"}, "history_retention"),
    ],
)
def test_invalid_changes_are_refused_and_change_nothing(changes: dict, words: str) -> None:
    s = seeded()
    s2, out = cs.apply(s, cs.set_settings(changes))
    assert not out.ok and words in out.message and s2 == s


def test_a_state_without_settings_decodes_and_starts_from_the_proposers_base() -> None:
    old = seeded()
    obj = old.to_obj()
    del obj["settings"]  # what a cluster created before settings were state holds
    s = cs.ClusterState.from_obj(msgpack.unpackb(msgpack.packb(obj), raw=False))
    assert s.settings is None and s.settings_generation == 0
    assert "settings" not in s.to_obj()  # and it encodes exactly as before
    base = dict(SEED, history_retention=9)
    s2, out = cs.apply(s, cs.set_settings({"max_sessions": 7}, base=base))
    assert out.ok and s2.settings_generation == 1
    assert s2.settings == ClusterSettings(**dict(base, max_sessions=7))
    bad, out = cs.apply(s, cs.set_settings({"max_sessions": 7}, base={"max_sessions": 1}))
    assert not out.ok and "base" in out.message and bad == s
    s3, out = cs.apply(s, cs.set_settings({"max_sessions": 7}))  # no base: the defaults
    assert out.ok and s3.settings == dataclasses.replace(DEFAULTS, max_sessions=7)


def test_stored_settings_out_of_bounds_or_incomplete_do_not_decode() -> None:
    obj = seeded().to_obj()
    for bad in ([1, dict(SEED, max_sessions=0)], [1, {"max_sessions": 3}], [0, SEED],
                "x", [1]):
        with pytest.raises(cs.ClusterStateError):
            cs.ClusterState.from_obj(dict(obj, settings=bad))


class _Db(dict[bytes, bytes]):
    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value


class _Codec:
    def seal(self, key: bytes, data: bytes) -> bytes:
        return data

    def open(self, key: bytes, data: bytes) -> bytes:
        return data


def test_the_system_machine_answers_the_new_generation_and_persists_it() -> None:
    db = _Db()
    sm = SystemStateMachine(db, _Codec())
    sm.initialize(seeded())
    cmd = cs.set_settings({"history_retention": 5}, request=b"r1")
    (res,) = sm.apply([(1, 1, cmd.encode())])
    assert res.error_code is None and res.version == 2
    (refused,) = sm.apply([(2, 1, cs.set_settings({"history_retention": 0}).encode())])
    assert refused.error_code == "REFUSED" and "history_retention" in refused.message
    again = SystemStateMachine(db, _Codec())
    assert again.state is not None and again.state.settings_generation == 2
    assert again.state.settings is not None and again.state.settings.history_retention == 5


values = st.fixed_dictionaries({}, optional={
    name: st.one_of(st.integers(lo - 2, lo + 2), st.integers(hi - 2, hi + 2))
    for name, (lo, hi) in BOUNDS.items()
})


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=12))
def test_generations_only_grow_and_every_state_is_possible(changes: list[dict]) -> None:
    s = seeded()
    for c in changes:
        new, out = cs.apply(s, cs.Command.decode(cs.set_settings(c).encode()))
        if out.ok:
            assert new.settings is not None
            assert new.settings_generation in (s.settings_generation, s.settings_generation + 1)
            assert (new.settings_generation > s.settings_generation) == (new.settings != s.settings)
            assert all(getattr(new.settings, n) == c.get(n, getattr(s.settings, n)) for n in NAMES)
        else:
            assert new == s
        assert cs.ClusterState.decode(new.encode()) == new
        s = new
