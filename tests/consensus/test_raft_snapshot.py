"""Snapshots: a leader without the entries a follower needs sends its
storage snapshot; the follower restores it; report_snapshot outcomes."""

from __future__ import annotations

from consensus.progress import ProgressState
from consensus.types import MessageType
from tests.consensus.harness import Cluster


def _lagging_follower_behind_compaction() -> Cluster:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    c.isolate(3)
    for k in range(10):
        c.propose(1, b"b%d" % k)
    c.stabilize()
    idx = c.snapshot_and_compact(1)
    assert c[1].storage.first_index() == idx + 1
    return c


def test_snapshot_sent_to_follower_behind_compaction_and_restored() -> None:
    c = _lagging_follower_behind_compaction()
    snap_index = c[1].storage.snapshot().meta.index
    c.heal()
    sent: list[int] = []
    for _ in range(20):
        c.tick()
        for _ in range(50):
            c.process_all()
            sent += [
                m.snapshot.meta.index for m in c.queue if m.type == MessageType.SNAP and m.snapshot
            ]
            if not c.queue:
                break
            c.deliver()
    assert sent == [snap_index]  # exactly one snapshot
    st3 = c[3].storage
    assert st3.snapshot().meta.index == snap_index
    assert st3.first_index() == snap_index + 1
    assert c[3].applied_data() == c[1].applied_data()
    # Replication continues normally after the snapshot.
    c.propose(1, b"after")
    c.stabilize()
    assert c[3].applied_data()[-1] == b"after"
    assert c.node(1).raft.trk.progress[3].state == ProgressState.REPLICATE


def test_snapshot_ready_is_persisted_before_its_messages() -> None:
    c = _lagging_follower_behind_compaction()
    c.heal()
    c.record_readies = True
    c.tick_and_stabilize(3)
    rds = [rd for rd in c[3].readies if rd.snapshot is not None]
    assert len(rds) == 1
    rd = rds[0]
    assert rd.snapshot is not None
    # The ack of the snapshot leaves in the same Ready, i.e. after persisting it.
    acks = [m for m in rd.messages if m.type == MessageType.APP_RESP]
    assert acks and acks[0].index == rd.snapshot.meta.index
    assert rd.must_sync
    # Committed entries never precede the snapshot they build on.
    assert all(e.index > rd.snapshot.meta.index for e in rd.committed_entries)


def test_failed_snapshot_is_retried() -> None:
    c = _lagging_follower_behind_compaction()
    c.heal()
    drop_snap = lambda m: m.type == MessageType.SNAP  # noqa: E731
    c.filters.append(drop_snap)
    c.tick_and_stabilize(3)
    pr = c.node(1).raft.trk.progress[3]
    assert pr.state != ProgressState.SNAPSHOT  # report_snapshot(ok=False) -> probe
    c.filters.remove(drop_snap)
    c.tick_and_stabilize(3)
    assert c[3].applied_data() == c[1].applied_data()


def test_snapshot_status_without_report_keeps_follower_in_snapshot_state() -> None:
    c = _lagging_follower_behind_compaction()
    c.report_snapshots = False
    c.heal()
    c.tick_and_stabilize(3)
    pr = c.node(1).raft.trk.progress[3]
    # The follower acked the snapshot, which also completes it.
    assert pr.state == ProgressState.REPLICATE
    assert c[3].applied_data() == c[1].applied_data()


def test_restart_from_snapshot_and_log() -> None:
    c = _lagging_follower_behind_compaction()
    c.heal()
    c.tick_and_stabilize(3)
    c.propose(1, b"tail")
    c.stabilize()
    for i in (1, 3):
        st = c.restart(i)
        c.stabilize()
        assert st.applied_data() == c[2].applied_data()
    c.tick_and_stabilize(30)
    leader = c.leader()
    c.propose(leader, b"post-restart")
    c.stabilize()
    for i in (1, 2, 3):
        assert c[i].applied_data()[-1] == b"post-restart"


def test_follower_ignores_snapshot_older_than_its_commit() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for k in range(5):
        c.propose(1, b"c%d" % k)
    c.stabilize()
    c.snapshot_and_compact(1)
    snap = c[1].storage.snapshot()
    # Hand node 2 (already up to date) the snapshot directly.
    from consensus.types import Message

    c.node(2).step(Message(MessageType.SNAP, frm=1, to=2, term=c.term(1), snapshot=snap))
    rd = c.node(2).ready()
    assert rd.snapshot is None
    (ack,) = [m for m in rd.messages if m.type == MessageType.APP_RESP]
    assert ack.index == c.commit(2)
