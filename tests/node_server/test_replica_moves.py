"""Replica moves between MultiRaftHosts in one process (issue 12): PrepareReplica,
ChangeReplicas and DropReplica on real hosts and storage, wired by an
in-process transport that encodes every message and streams snapshots through
the hosts' own SnapshotManagers. The real-cluster version is
tests/cluster/test_replica_moves_cluster.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import plyvel
import pytest

from consensus.codec import decode_message, encode_message
from consensus.types import Message, MessageType
from node import commands as cmd
from node.config import NodeConfig, parse_config
from node.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NodeError,
    Unavailable,
)
from node.host import MultiRaftHost
from node.replica_catalog import ReplicaCatalog, ReplicaState
from node.storage_layout import RAFT_PREFIX, STATE_PREFIX, StorageLayout, plaintext_codec_for_tests
from proto.medkv.v1 import raft_pb2
from tests.host_writes import open_session, propose_write

NODES = (1, 2, 3)
PARTITIONS = 6


def _config(tmp_path: Path, node: int) -> NodeConfig:
    return parse_config(
        {
            "node_id": node, "listen": f"127.0.0.1:{node}", "data_dir": f"n{node}",
            "partitions": PARTITIONS, "replication": 2,
            "peers": [{"id": n, "address": f"127.0.0.1:{n}"} for n in NODES],
            "insecure": True,  # hosts alone: access control is tested elsewhere
        },
        tmp_path,
    )


class Net:
    """Hosts that talk through encoded messages; snapshots stream chunk by chunk."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.hosts: dict[int, MultiRaftHost] = {}
        self.layouts: dict[int, StorageLayout] = {}
        self.down: set[int] = set()  # nodes whose traffic is dropped
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, node: int) -> MultiRaftHost:
        cfg = _config(self.tmp_path, node)
        layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
        host = MultiRaftHost(
            cfg, layout.log_store, layout.state_machine,
            lambda msgs, node=node: self._send(node, msgs),  # type: ignore[misc]
            announce=lambda pairs, node=node: self._announce(node, pairs),  # type: ignore[misc]
            catalog=layout.replica_catalog(),
        )
        self.hosts[node], self.layouts[node] = host, layout
        host.start()
        return host

    async def close(self, node: int) -> None:
        host = self.hosts.pop(node)
        await host.stop()
        self.layouts.pop(node).close()

    async def close_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for node in list(self.hosts):
            await self.close(node)

    def _send(self, src: int, msgs: list[tuple[int, Message]]) -> None:
        for group, m in msgs:
            dst = self.hosts.get(m.to)
            if dst is None or src in self.down or m.to in self.down:
                continue
            if m.type == MessageType.SNAP:
                task = asyncio.get_running_loop().create_task(self._snapshot(src, group, m))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                dst.deliver([(group, decode_message(encode_message(m)))], src)

    def _announce(self, src: int, pairs: list[tuple[int, int, int, int, int]]) -> None:
        for peer, group, term, index, time_ms in pairs:
            dst = self.hosts.get(peer)
            if dst is not None and peer not in self.down:
                dst.deliver_closed(src, [(group, term, index, time_ms)])

    async def _snapshot(self, src: int, group: int, m: Message) -> None:
        sender = self.hosts[src]
        out = sender.snapshots.outgoing(group, m)
        ok = False
        if out is not None:
            try:
                total = await out.declared_size()
                header = encode_message(out.message)

                async def chunks() -> AsyncIterator[raft_pb2.SnapshotChunk]:
                    offset = 0
                    async for piece in out.chunks():
                        yield raft_pb2.SnapshotChunk(
                            from_node=src, to_node=m.to, group=group,
                            header=header if offset == 0 else b"", offset=offset, data=piece,
                            total_size=total if offset == 0 else 0,
                        )
                        offset += len(piece)
                    yield raft_pb2.SnapshotChunk(
                        from_node=src, to_node=m.to, group=group, offset=offset, last=True
                    )

                dst = self.hosts[m.to]
                g, msg = await dst.snapshots.receive(chunks(), 1 << 30)
                dst.deliver([(g, msg)], msg.frm)
                ok = True
            except NodeError:
                ok = False
            finally:
                out.close()
        if src in self.hosts:
            sender.report_snapshot(group, m.to, ok)


async def until(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def leader_of(net: Net, p: int) -> MultiRaftHost | None:
    for h in net.hosts.values():
        r = h.replicas.get(p)
        if r is not None and r.is_leader:
            return h
    return None


async def put(net: Net, p: int, n: int) -> list[tuple[str, int]]:
    """n records of one patient, each in its own session; (record id, version)."""
    host = await until(lambda: leader_of(net, p), f"a leader of partition {p}")
    out = []
    for i in range(n):
        cid = os.urandom(16)
        session = await open_session(host, p, cid, nonce=i + 1)
        res = await propose_write(host, p, cmd.Put(
            client_id=cid, session=session, seq=1, ack_below=0, ts_ms=0,
            patient_id=f"patient-{p}", record_id=f"rec-{i}", value=b"v%d" % i,
        ))
        assert res.ok, res
        out.append((f"rec-{i}", res.version))
    return out


async def change(net: Net, p: int, add: list[int], remove: list[int], timeout: float = 20.0
                 ) -> tuple[int, ...]:
    """ChangeReplicas as a mover calls it: at the leader, following hints."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        host = await until(lambda: leader_of(net, p), f"a leader of partition {p}")
        try:
            return await host.change_replicas(p, add, remove, max(0.5, deadline - loop.time()))
        except Unavailable:
            assert loop.time() < deadline
            await asyncio.sleep(0.1)


def outsider(net: Net, p: int) -> int:
    return next(n for n in NODES if n not in net.hosts[1].placement.replicas(p))


def test_a_replica_moves_to_a_new_node_and_the_old_one_is_dropped(tmp_path: Path) -> None:
    async def run() -> None:
        net = Net(tmp_path)
        for n in NODES:
            net.open(n)
        try:
            p = 0
            placed = net.hosts[1].placement.replicas(p)
            d = outsider(net, p)
            recs = await put(net, p, 5)
            leader = await until(lambda: leader_of(net, p), "a leader")
            c = next(n for n in placed if n != leader.node_id)  # a follower leaves

            assert await net.hosts[d].prepare_replica(p) is True
            assert await net.hosts[d].prepare_replica(p) is False  # idempotent
            with pytest.raises(InvalidArgument, match="does not exist"):
                await net.hosts[d].prepare_replica(PARTITIONS)
            with pytest.raises(Unavailable, match="new replica"):  # no writes either
                await propose_write(net.hosts[d], p, cmd.Put(
                    client_id=b"c" * 16, session=1, seq=1, ack_below=0, ts_ms=0,
                    patient_id="x", record_id="y", value=b"z"), timeout=1)
            never = next(q for q in range(PARTITIONS) if q not in net.hosts[d].replicas)
            assert await net.hosts[d].drop_replica(never) is False  # nothing to do
            assert net.hosts[d].catalog.state(p) == ReplicaState.BLANK
            with pytest.raises(Unavailable, match="new replica that has not received its data"):
                net.hosts[d].replica(p)
            await asyncio.sleep(1.0)  # a blank replica never campaigns
            assert not net.hosts[d].replicas[p].is_leader

            with pytest.raises(InvalidArgument, match="not a member of the cluster"):
                await leader.change_replicas(p, [9], [], 5)
            with pytest.raises(FailedPrecondition, match="removes every voter"):
                await leader.change_replicas(p, [], list(placed), 5)
            voters = await change(net, p, [d], [c])
            assert set(voters) == (set(placed) - {c}) | {d}
            assert voters[0] == placed[0] if placed[0] != c else True

            rd = net.hosts[d].replica(p)  # serves now
            for rid, version in recs:
                got = rd.sm.get(f"patient-{p}", rid)
                assert got is not None and got.version == version
            more = await put(net, p, 1)
            await until(lambda: rd.sm.get(f"patient-{p}", "rec-0") is not None
                        and rd.applied >= more[0][1], "the new write on the new replica")
            for h in (net.hosts[n] for n in voters):
                await until(lambda h=h: set(h.replicas[p].replicas) == set(voters),
                            f"node {h.node_id}'s replicas to follow the configuration")
            assert await change(net, p, [d], [c]) == voters  # already done: OK at once

            with pytest.raises(FailedPrecondition, match="still in partition"):
                await net.hosts[voters[0]].drop_replica(p)
            old = net.hosts[c]
            try:
                dropped = await old.drop_replica(p)
            except FailedPrecondition:  # it never learnt the change that removed it
                dropped = await old.drop_replica(p, force=True)
            assert dropped is True
            assert await old.drop_replica(p) is False  # nothing left
            with pytest.raises(Unavailable, match="not held"):
                old.replica(p)
            assert old.catalog.state(p) is None
            assert c not in old.members(p)  # its hints name the group it left
            old.set_members(p, voters)  # the control plane's word for a partition not held
            assert old.members(p) == voters
            lead = net.hosts[voters[0]]
            lead.set_members(p, list(reversed(voters)))  # preference order only
            assert lead.replicas[p].replicas == tuple(reversed(voters))
            assert lead.members(p) == tuple(reversed(voters))
            await net.close(c)
            db = plyvel.DB(str(tmp_path / f"n{c}" / "db"))
            try:
                for start, stop in old.catalog.partition_ranges(p):
                    with db.iterator(start=start, stop=stop, include_value=False) as it:
                        assert next(it, None) is None
            finally:
                db.close()
            reopened = net.open(c)
            assert p not in reopened.replicas
            # The new node keeps its replica over a restart.
            await net.close(d)
            again = net.open(d)
            assert p in again.replicas
            await until(lambda: again.replicas[p].raw.has_membership(), "membership at restart")
            assert set(again.replicas[p].replicas) == set(voters)
        finally:
            await net.close_all()

    asyncio.run(run())


def test_the_leader_hands_over_before_it_is_removed(tmp_path: Path) -> None:
    async def run() -> None:
        net = Net(tmp_path)
        for n in NODES:
            net.open(n)
        try:
            p = 1
            d = outsider(net, p)
            recs = await put(net, p, 3)
            leader = await until(lambda: leader_of(net, p), "a leader")
            await net.hosts[d].prepare_replica(p)
            with pytest.raises(Unavailable, match="handed leadership to node") as e:
                await leader.change_replicas(p, [d], [leader.node_id], 20)
            new = int(e.value.leader_hint.split("@")[0])
            assert new != leader.node_id
            voters = await change(net, p, [d], [leader.node_id])
            assert leader.node_id not in voters and d in voters
            got = net.hosts[d].replica(p).sm.get(f"patient-{p}", recs[-1][0])
            assert got is not None
        finally:
            await net.close_all()

    asyncio.run(run())


def test_a_learner_that_cannot_catch_up_times_out_and_a_retry_finishes(tmp_path: Path) -> None:
    async def run() -> None:
        net = Net(tmp_path)
        for n in NODES:
            net.open(n)
        try:
            p = 2
            placed = net.hosts[1].placement.replicas(p)
            d = outsider(net, p)
            await put(net, p, 3)
            await net.hosts[d].prepare_replica(p)
            net.down.add(d)  # the learner hears nothing
            leader = await until(lambda: leader_of(net, p), "a leader")
            c = next(n for n in placed if n != leader.node_id)
            with pytest.raises(DeadlineExceeded, match="not caught up"):
                await leader.change_replicas(p, [d], [c], 2.0)
            cs = leader.replicas[p].raw.status().conf_state
            assert d in cs.learners and set(cs.voters) == set(placed)  # left in place
            assert leader.replicas[p].learners == (d,)  # status shows it in motion
            assert leader.moves.moving(leader.replicas[p])  # leader balancing leaves it alone
            net.down.discard(d)
            voters = await change(net, p, [d], [c])
            assert set(voters) == (set(placed) - {c}) | {d}
        finally:
            await net.close_all()

    asyncio.run(run())


def test_a_drop_cut_short_by_a_crash_finishes_at_the_next_start(tmp_path: Path) -> None:
    """The tombstone is written before any data is deleted: a start that finds
    it deletes the rest and does not open the replica (whatever the placement says)."""

    async def run() -> None:
        net = Net(tmp_path)
        for n in NODES:
            net.open(n)
        try:
            for h in net.hosts.values():  # an unchanged cluster: exactly the placement
                for p, r in h.replicas.items():
                    assert r.replicas == h.placement.replicas(p) and r.learners == ()
            p = 3
            await put(net, p, 3)
            holder = net.hosts[1].placement.replicas(p)[-1]
            await net.close(holder)
            # What a crash right after the tombstone leaves: the record says
            # DROPPING, every key of the partition is still there.
            db = plyvel.DB(str(tmp_path / f"n{holder}" / "db"))
            try:
                on_disk = ReplicaCatalog(db, plaintext_codec_for_tests()[0], STATE_PREFIX,
                                         RAFT_PREFIX)
                assert not on_disk.is_empty(p)
                on_disk.set(p, ReplicaState.DROPPING)
            finally:
                db.close()
            again = net.open(holder)
            assert p not in again.replicas and again.catalog.state(p) is None
            others = [q for q in again.placement.partitions_on(holder) if q != p]
            assert others and all(q in again.replicas for q in others)
            await net.close(holder)
            db = plyvel.DB(str(tmp_path / f"n{holder}" / "db"))
            try:
                assert ReplicaCatalog(db, plaintext_codec_for_tests()[0]).is_empty(p)
            finally:
                db.close()
        finally:
            await net.close_all()

    asyncio.run(run())
