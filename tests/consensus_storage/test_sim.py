"""The deterministic simulator: the Raft core survives it, it replays exactly,
and it catches the planted bugs.

Budget: well under a minute in the `ci` hypothesis profile on one core.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from consensus.raft import Config, Raft
from consensus.sim import RunSummary, run_many, run_schedule
from consensus.sim_checks import LogChain, SafetyChecker, Violation
from consensus.types import ConfState, Entry, HardState

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"^(\d+) schedules, (\d+) violations \(steps=\d+, elections=\d+, crashes=\d+, "
    r"partitions=\d+, membership_changes=\d+, transfers=\d+, reads=\d+, "
    r"restarts_past_snapshot=\d+, unsynced_lost=\d+, ack_kills=\d+, removed_kept_up=\d+\)$"
)
# Planted bugs must be caught within this many consecutive seeds. The seeds
# are fixed, so this is deterministic. Share of schedules that catch each one,
# measured over seeds 0-299 (3 nodes / 5 nodes): ignore_must_sync 97%/98%,
# send_before_persist 26%/33%, vote_twice 22%/35%, read_without_quorum
# 14%/15%, commit_prior_term_by_count 8%/5%, auto_leave_once 4%/5%,
# read_before_applied 3%/4%. The rarest leave the least margin if the core's or the schedule's
# use of the rng shifts: the first catching seed is printed with its replay
# command, and the bound is what to raise if one drifts past it.
BUG_SEED_BOUND = 150


def assert_clean(summary: RunSummary) -> None:
    assert not summary.violations, "\n".join(
        f"{r.violation} -- replay: {r.replay_command()}" for r in summary.violations
    )


@pytest.mark.parametrize("nodes", [3, 5])
def test_core_survives_many_schedules(nodes: int) -> None:
    summary = run_many(range(1000, 1120), nodes=nodes)
    assert_clean(summary)
    s = summary.stats
    # The schedules really did exercise every kind of fault and request.
    for name in (
        "elections",
        "crashes",
        "partitions",
        "membership_changes",
        "transfers",
        "reads",
        "acked",
        # issue 12's corners
        "restarts_past_snapshot",
        "conf_replayed",
        "unsynced_lost",
        "ack_kills",
        "removed_kept_up",
        "joint_transfers",
    ):
        assert getattr(s, name) > 0, name


@given(seed=st.integers(min_value=0, max_value=2**63))
def test_any_seed_is_safe(seed: int) -> None:
    res = run_schedule(seed, nodes=3, steps=1000)
    assert res.ok, f"{res.violation} -- replay: {res.replay_command()}"


def test_same_seed_replays_the_same_trace() -> None:
    a = run_schedule(4242, nodes=5)
    b = run_schedule(4242, nodes=5)
    c = run_schedule(4243, nodes=5)
    assert a.digest == b.digest
    assert a.stats == b.stats
    assert a.digest != c.digest


_SAFETY = {
    "election safety",
    "log matching",
    "leader completeness",
    "committed entry changed",
    "state machine safety",
}


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize(
    ("bug", "kinds"),
    [
        # Two leaders in one term; when one of them is too short-lived to be
        # seen, their conflicting logs give it away, or a crashed node's disk
        # contradicts the vote it sent before its second one.
        ("vote_twice", {"election safety", "log matching", "durability"}),
        (
            "commit_prior_term_by_count",
            {"leader completeness", "committed entry changed", "state machine safety"},
        ),
        # A node that sends before persisting, dying right after sending a
        # vote or an append acknowledgement, forgets what it promised.
        ("send_before_persist", {"durability"} | _SAFETY),
        # Writes never synced: a crash loses votes and acknowledged entries.
        ("ignore_must_sync", {"durability"} | _SAFETY),
        ("read_before_applied", {"read"}),
        # A deposed leader that has not noticed serves a stale read.
        ("read_without_quorum", {"linearizable read"}),
        # The automatic leave, refused during a transfer, is never retried.
        ("auto_leave_once", {"joint configuration", "liveness"}),
    ],
)
def test_planted_bug_is_caught(bug: str, kinds: set[str], nodes: int) -> None:
    summary = run_many(range(BUG_SEED_BOUND), nodes=nodes, bug=bug, fail_fast=True)
    assert summary.violations, f"{bug} not caught in {BUG_SEED_BOUND} seeds"
    found = summary.violations[0]
    assert found.violation is not None
    print(f"{bug}: {found.violation} -- replay: {found.replay_command()}")
    assert found.violation.kind in kinds, found.violation
    # Without the bug, the very same schedule is clean.
    clean = run_schedule(found.seed, nodes=nodes)
    assert clean.ok, f"{clean.violation} -- replay: {clean.replay_command()}"
    # The reported seed replays to the very same violation.
    again = run_schedule(found.seed, nodes=nodes, bug=bug)
    assert again.violation is not None
    assert str(again.violation) == str(found.violation)
    assert again.digest == found.digest


def _cli(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consensus.sim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )


def test_cli_reports_a_planted_bug_with_a_replay_command() -> None:
    proc = _cli(
        "--seeds", str(BUG_SEED_BOUND), "--nodes", "3", "--bug", "vote_twice", "--fail-fast"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    m = LAST_LINE.match(lines[-1])
    assert m is not None, lines[-1]
    assert int(m.group(2)) == 1
    replay = [ln for ln in lines if "replay: " in ln]
    assert replay
    cmd = replay[0].split("replay: ", 1)[1]
    assert re.fullmatch(r"python -m consensus\.sim --seed \d+ --nodes 3 --bug vote_twice", cmd)
    violation = next(ln for ln in lines if ln.startswith("VIOLATION"))

    again = _cli(*cmd.split()[3:])
    assert again.returncode == 1
    assert violation in again.stdout.splitlines()


def test_cli_clean_run_last_line() -> None:
    proc = _cli("--seeds", "4", "--nodes", "3", "--start-seed", "77")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert m is not None
    assert (m.group(1), m.group(2)) == ("4", "0")


# --- the checks themselves can fail ------------------------------------------------


def test_checker_flags_two_leaders_in_one_term() -> None:
    c = SafetyChecker()
    assert c.leader_elected(3, 1)
    assert not c.leader_elected(3, 1)
    with pytest.raises(Violation, match="election safety"):
        c.leader_elected(3, 2)


def test_checker_flags_log_mismatch_and_divergent_apply() -> None:
    c = SafetyChecker()
    a, b = LogChain(), LogChain()
    ea = [Entry(1, 1, b"x"), Entry(2, 1, b"y")]
    eb = [Entry(1, 1, b"x"), Entry(2, 1, b"z")]
    a.append(ea)
    c.entries_persisted(1, ea, a)
    b.append(eb)
    with pytest.raises(Violation, match="log matching"):
        c.entries_persisted(2, eb, b)
    c.entry_applied(1, 1, 0, b"x", b"h1")
    with pytest.raises(Violation, match="state machine safety"):
        c.entry_applied(2, 1, 0, b"q", b"h2")


def test_checker_flags_stale_read_and_lost_commit() -> None:
    c = SafetyChecker()
    chain = LogChain()
    ents = [Entry(i, 1, b"v") for i in range(1, 6)]
    chain.append(ents)
    c.commit_persisted(1, 1, 5, chain)
    c.read_requested(b"r1")
    with pytest.raises(Violation, match="linearizable read"):
        c.read_served(2, 4, b"r1", applied=4)
    short = LogChain()
    short.append(ents[:3])
    with pytest.raises(Violation, match="leader completeness"):
        c.leader_completeness(3, 2, short)


def test_replay_is_identical_across_processes() -> None:
    """Nothing depends on per-process hash randomisation: another process,
    with another PYTHONHASHSEED, walks the very same trace."""
    here = run_schedule(77, nodes=5)
    proc = _cli("--seed", "77", "--nodes", "5", hash_seed="12345")
    assert proc.returncode == 0, proc.stdout
    assert f"trace digest {here.digest}" in proc.stdout.splitlines()


def test_restart_that_skips_conf_changes_past_the_snapshot_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The core as it was before issue 12: on a restart it resumed at the
    applied index with the snapshot's membership, skipping the conf changes
    between them. The simulator's restarts with a durable state machine and
    its membership check catch it."""

    def old_restore_applied(self: Raft, c: Config) -> None:
        if c.applied > 0:
            self.raft_log.applied_to(c.applied)

    monkeypatch.setattr(Raft, "_restore_applied", old_restore_applied)
    summary = run_many(range(BUG_SEED_BOUND), nodes=3, fail_fast=True)
    assert summary.violations, f"not caught in {BUG_SEED_BOUND} seeds"
    found = summary.violations[0]
    assert found.violation is not None
    print(f"old restart: {found.violation} -- seed {found.seed}")
    assert found.violation.kind == "membership", found.violation


def test_checker_flags_a_forgotten_vote_or_acknowledgement() -> None:
    c = SafetyChecker()
    c.promises_kept(1, HardState(term=3, vote=2), 5, (3, 2), (3, 5))
    c.promises_kept(1, HardState(term=4, vote=0), 2, (3, 2), (3, 5))  # moved on: fine
    with pytest.raises(Violation, match="durability"):
        c.promises_kept(1, HardState(term=3, vote=0), 5, (3, 2), (0, 0))
    with pytest.raises(Violation, match="durability"):
        c.promises_kept(1, HardState(term=2, vote=2), 5, (3, 2), (0, 0))
    with pytest.raises(Violation, match="durability"):
        c.promises_kept(1, HardState(term=3, vote=2), 4, (0, 0), (3, 5))


def test_checker_flags_a_restart_with_the_wrong_membership() -> None:
    c = SafetyChecker(ConfState(voters=(1, 2, 3)))
    c.conf_applied(1, 5, ConfState(voters=(1, 2, 3, 4)))
    c.conf_applied(2, 5, ConfState(voters=(1, 2, 3, 4)))
    c.conf_applied(1, 9, ConfState(voters=(2, 3, 4)))
    c.conf_restored(3, 4, ConfState(voters=(1, 2, 3)), "restarted")
    c.conf_restored(3, 12, ConfState(voters=(2, 3, 4)), "restarted")
    c.conf_restored(5, 0, ConfState(), "restarted")  # a blank replica
    with pytest.raises(Violation, match="membership"):
        c.conf_restored(3, 12, ConfState(voters=(1, 2, 3)), "restarted")
    with pytest.raises(Violation, match="membership"):
        c.conf_applied(3, 9, ConfState(voters=(1, 3, 4)))
