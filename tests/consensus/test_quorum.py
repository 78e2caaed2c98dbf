"""Majority and joint-majority math against a brute-force model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consensus.quorum import INFINITE_INDEX, JointConfig, MajorityConfig, VoteResult

ids = st.frozensets(st.integers(min_value=1, max_value=9), max_size=7)
acked = st.dictionaries(st.integers(1, 9), st.integers(0, 20), max_size=9)
votes = st.dictionaries(st.integers(1, 9), st.booleans(), max_size=9)


def model_committed(voters: frozenset[int], acks: dict[int, int]) -> int:
    """The largest index i such that a strict majority acknowledged >= i."""
    if not voters:
        return INFINITE_INDEX
    best = 0
    for i in range(0, 21):
        if sum(1 for v in voters if acks.get(v, 0) >= i) * 2 > len(voters):
            best = i
    return best


def model_vote(voters: frozenset[int], vs: dict[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    yes = sum(1 for v in voters if vs.get(v) is True)
    undecided = sum(1 for v in voters if v not in vs)
    if yes * 2 > len(voters):
        return VoteResult.WON
    if (yes + undecided) * 2 > len(voters):
        return VoteResult.PENDING
    return VoteResult.LOST


@given(ids, acked)
def test_majority_committed_index_matches_model(
    voters: frozenset[int], acks: dict[int, int]
) -> None:
    assert MajorityConfig(voters).committed_index(acks) == model_committed(voters, acks)


@given(ids, votes)
def test_majority_vote_matches_model(voters: frozenset[int], vs: dict[int, bool]) -> None:
    assert MajorityConfig(voters).vote_result(vs) == model_vote(voters, vs)


@given(ids, ids, acked)
def test_joint_committed_is_min_of_halves(
    inc: frozenset[int], out: frozenset[int], acks: dict[int, int]
) -> None:
    got = JointConfig(inc, out).committed_index(acks)
    assert got == min(model_committed(inc, acks), model_committed(out, acks))
    # Brute force: the committed index is acknowledged by a majority of each half.
    if got != INFINITE_INDEX:
        for half in (inc, out):
            if half:
                assert sum(1 for v in half if acks.get(v, 0) >= got) * 2 > len(half)


@given(ids, ids, votes)
def test_joint_vote_needs_both_halves(
    inc: frozenset[int], out: frozenset[int], vs: dict[int, bool]
) -> None:
    r1, r2 = model_vote(inc, vs), model_vote(out, vs)
    if VoteResult.LOST in (r1, r2):
        expect = VoteResult.LOST
    elif r1 == r2 == VoteResult.WON:
        expect = VoteResult.WON
    else:
        expect = VoteResult.PENDING
    assert JointConfig(inc, out).vote_result(vs) == expect


@given(ids, votes)
def test_vote_result_is_monotonic_in_missing_votes(
    voters: frozenset[int], vs: dict[int, bool]
) -> None:
    # Filling in missing votes can only settle a PENDING result, never flip a
    # settled one.
    cfg = MajorityConfig(voters)
    before = cfg.vote_result(vs)
    for fill in (True, False):
        full = dict(vs)
        for v in voters:
            full.setdefault(v, fill)
        after = cfg.vote_result(full)
        assert after != VoteResult.PENDING
        if before != VoteResult.PENDING:
            assert after == before


def test_examples() -> None:
    three = MajorityConfig({1, 2, 3})
    assert three.committed_index({1: 5, 2: 3, 3: 1}) == 3
    assert three.committed_index({1: 5}) == 0
    assert three.vote_result({1: True, 2: True}) == VoteResult.WON
    assert three.vote_result({1: True, 2: False}) == VoteResult.PENDING
    assert three.vote_result({1: False, 2: False}) == VoteResult.LOST
    four = MajorityConfig({1, 2, 3, 4})
    assert four.committed_index({1: 9, 2: 8, 3: 7, 4: 1}) == 7  # 3 of 4 needed
    j = JointConfig({1, 2, 3}, {3, 4, 5})
    assert j.committed_index({1: 9, 2: 9, 3: 2, 4: 1, 5: 1}) == 1  # min(9, 1)
    assert j.is_joint() and not JointConfig({1}).is_joint()
    assert j.ids() == frozenset({1, 2, 3, 4, 5})
