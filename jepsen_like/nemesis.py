"""Nemeses: the faults a run injects, each as begin/end of one fault window.

The runner's schedule alternates the chosen nemeses: a quiet gap, then
`begin` (the fault starts), a hold, then `end` (the fault is healed); each
pass becomes one `FaultWindow`. Every choice (which nodes, which partition,
which delay) comes from the context's seeded random stream.

Network faults go through the `ProxyNet` on every link (clients keep
reaching every node: a client may well talk to a minority node, as in real
partitions). Process faults go through `scripts/cluster` (kill -9, SIGSTOP,
restart). Leaders are found with Admin.ClusterStatus asked of a node before
the fault, while every node still sees every other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from client.status_table import down_nodes, has_live_leader
from jepsen_like.bitflip import (
    flip_record_values,
    partitions_with_records,
    probe_replica,
)
from jepsen_like.cluster import ClusterError, ProxiedCluster
from jepsen_like.history import Op
from jepsen_like.proxy import Link


@dataclass
class NemesisContext:
    cluster: ProxiedCluster
    rng: random.Random
    log: Callable[[str], None]
    # Every (patient id, record id) the workload used so far; partition of a patient.
    records: Callable[[], list[tuple[str, str]]]
    partition_of: Callable[[str], int]
    work_dir: Path
    now_ns: Callable[[], int] = lambda: 0  # the history's clock
    notes: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[int]:
        return list(self.cluster.node_ids)


def minority(rng: random.Random, nodes: list[int]) -> list[int]:
    """A random non-empty minority of the nodes."""
    most = max(1, (len(nodes) - 1) // 2)
    return sorted(rng.sample(nodes, rng.randint(1, most)))


async def find_leader(ctx: NemesisContext) -> tuple[int, int] | None:
    """(partition, leader) for a random partition that has a live leader, as
    some node (asked in random order) sees the cluster; None if none answers."""
    for via in ctx.rng.sample(ctx.nodes, len(ctx.nodes)):
        status = await ctx.cluster.status(via)
        if status is None:
            continue
        down = down_nodes(status)
        led = [
            (int(p.partition), int(p.leader))
            for p in status.partition_info
            if has_live_leader(p, down)
        ]
        if led:
            return ctx.rng.choice(sorted(led))
    return None


def cut_links(nodes: list[int], connected: Callable[[int, int], bool]) -> list[Link]:
    """Every directed node-to-node link between two nodes that may not talk."""
    return [(a, b) for a in nodes for b in nodes if a != b and not connected(a, b)]


class Nemesis(ABC):
    name: ClassVar[str]
    # True: the nodes must run with MEDKV_TEST_ONLY_LOSSY_UNSYNCED_WRITES (node/test_only.py).
    lossy_disk: ClassVar[bool] = False
    # True: the nodes must run with the planted MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC bug.
    skip_fsync: ClassVar[bool] = False
    # True: outside medkv's failure model; used only to prove the suite finds bugs.
    planted: ClassVar[bool] = False
    # Node ids past --nodes this nemesis may start (ClusterSpec.spare_nodes).
    spare_nodes: ClassVar[int] = 0

    @abstractmethod
    async def begin(self, ctx: NemesisContext) -> str:
        """Start the fault; returns a description for the fault window."""

    @abstractmethod
    async def end(self, ctx: NemesisContext) -> str:
        """Heal the fault; returns anything worth adding to the description."""

    def result(
        self, history: list[Op], partition_of: Callable[[str], int]
    ) -> dict[str, Any] | None:
        """A checker-style verdict of its own, for nemeses that check something."""
        return None


# -- network ----------------------------------------------------------------


class _NetworkNemesis(Nemesis):
    async def end(self, ctx: NemesisContext) -> str:
        ctx.cluster.network.heal()
        return ""


class PartitionRandomHalves(_NetworkNemesis):
    name = "partition-random-halves"

    async def begin(self, ctx: NemesisContext) -> str:
        nodes = ctx.rng.sample(ctx.nodes, len(ctx.nodes))
        small, large = sorted(nodes[: len(nodes) // 2]), sorted(nodes[len(nodes) // 2 :])
        ctx.cluster.network.partition([set(small), set(large)])
        return f"{small} | {large}"


class PartitionLeader(_NetworkNemesis):
    name = "partition-leader"

    async def begin(self, ctx: NemesisContext) -> str:
        found = await find_leader(ctx)
        if found is None:
            node = ctx.rng.choice(ctx.nodes)
            ctx.cluster.network.isolate(node)
            return f"isolated node {node} (no leader known)"
        partition, leader = found
        ctx.cluster.network.isolate(leader)
        return f"isolated node {leader}, leader of partition {partition}"


class PartitionRing(_NetworkNemesis):
    """Majorities ring: every node sees a majority, no two see the same one."""

    name = "partition-ring"

    async def begin(self, ctx: NemesisContext) -> str:
        order = ctx.rng.sample(ctx.nodes, len(ctx.nodes))
        n = len(order)
        majority = n // 2 + 1
        reach = (majority - 1 + 1) // 2  # neighbours on each side

        def connected(a: int, b: int) -> bool:
            d = abs(order.index(a) - order.index(b))
            return min(d, n - d) <= reach

        links = cut_links(ctx.nodes, connected)
        ctx.cluster.network.block(links)
        return f"ring {order}, each node sees {2 * reach} neighbours"


class Bridge(_NetworkNemesis):
    """Two halves that only one bridge node connects."""

    name = "bridge"

    async def begin(self, ctx: NemesisContext) -> str:
        order = ctx.rng.sample(ctx.nodes, len(ctx.nodes))
        bridge, rest = order[0], order[1:]
        a, b = set(rest[: len(rest) // 2]), set(rest[len(rest) // 2 :])
        links = cut_links(ctx.nodes, lambda x, y: not ({x, y} & a and {x, y} & b))
        ctx.cluster.network.block(links)
        return f"{sorted(a)} <- {bridge} -> {sorted(b)}"


class Slow(_NetworkNemesis):
    name = "slow"

    async def begin(self, ctx: NemesisContext) -> str:
        delay = ctx.rng.choice([50.0, 100.0, 200.0])
        ctx.cluster.network.slow(None, delay, delay / 2)
        return f"every link +{delay:g}ms (jitter {delay / 2:g}ms)"


class Lossy(_NetworkNemesis):
    name = "lossy"

    async def begin(self, ctx: NemesisContext) -> str:
        victims = minority(ctx.rng, ctx.nodes)
        p = ctx.rng.choice([0.02, 0.05, 0.1])
        net = ctx.cluster.network
        links = [link for link in net.links if link[0] in victims or link[1] in victims]
        net.lossy(links, p)
        return f"links of nodes {victims} reset with p={p:g} per chunk"


# -- processes ----------------------------------------------------------------


async def restart_all_of(ctx: NemesisContext, nodes: list[int]) -> list[int]:
    """Restart nodes concurrently; returns the ones that failed to come back."""
    results = await asyncio.gather(
        *(ctx.cluster.restart(n) for n in nodes), return_exceptions=True
    )
    failed = []
    for node, res in zip(nodes, results, strict=True):
        if isinstance(res, BaseException):
            ctx.log(f"nemesis: restarting node {node} failed: {res}")
            ctx.notes.append(f"restart of node {node} failed: {res}")
            failed.append(node)
    return failed


class Kill(Nemesis):
    name = "kill"

    def __init__(self) -> None:
        self._killed: list[int] = []

    async def _victims(self, ctx: NemesisContext) -> tuple[list[int], str]:
        victims = minority(ctx.rng, ctx.nodes)
        return victims, f"killed {victims}"

    async def begin(self, ctx: NemesisContext) -> str:
        victims, detail = await self._victims(ctx)
        self._killed = []
        for node in victims:
            await ctx.cluster.kill(node)
            self._killed.append(node)
        return detail

    async def end(self, ctx: NemesisContext) -> str:
        killed, self._killed = self._killed, []
        failed = await restart_all_of(ctx, killed)
        return f"; restart failed for {failed}" if failed else ""


class KillLeader(Kill):
    name = "kill-leader"

    async def _victims(self, ctx: NemesisContext) -> tuple[list[int], str]:
        found = await find_leader(ctx)
        if found is None:
            node = ctx.rng.choice(ctx.nodes)
            return [node], f"killed node {node} (no leader known)"
        partition, leader = found
        return [leader], f"killed node {leader}, leader of partition {partition}"


class LossyDisk(Kill):
    """kill -9 with writes the OS never synced rolled back (LazyFS-like):
    a minority, or every node at once (still within the failure model: what
    was synced survives)."""

    name = "lossy-disk"
    lossy_disk = True

    async def _victims(self, ctx: NemesisContext) -> tuple[list[int], str]:
        if ctx.rng.random() < 0.5:
            return list(ctx.nodes), "killed every node, unsynced writes lost"
        victims = minority(ctx.rng, ctx.nodes)
        return victims, f"killed {victims}, unsynced writes lost"


class SkipFsyncKill(LossyDisk):
    """PLANTED BUG, outside the failure model: the nodes never fsync their Raft
    log (a test-only switch) and every node is killed at once on the lossy
    disk, so acknowledged writes vanish. Proves the lossy-disk nemesis catches
    a missing fsync, which a plain kill -9 cannot. The suite must say invalid."""

    name = "planted-skip-fsync"
    planted = True
    skip_fsync = True

    async def _victims(self, ctx: NemesisContext) -> tuple[list[int], str]:
        return list(ctx.nodes), "killed every node; the Raft log was never synced"


class Pause(Nemesis):
    name = "pause"

    def __init__(self) -> None:
        self._paused: list[int] = []

    async def begin(self, ctx: NemesisContext) -> str:
        victims = minority(ctx.rng, ctx.nodes)
        self._paused = []
        for node in victims:
            await ctx.cluster.pause(node)
            self._paused.append(node)
        return f"paused {victims} (SIGSTOP)"

    async def end(self, ctx: NemesisContext) -> str:
        paused, self._paused = self._paused, []
        for node in paused:
            await ctx.cluster.resume(node)
        return ""


class RestartAll(Nemesis):
    name = "restart-all"

    async def begin(self, ctx: NemesisContext) -> str:
        if ctx.rng.random() < 0.5:
            order = ctx.rng.sample(ctx.nodes, len(ctx.nodes))
            failed = []
            for node in order:
                try:
                    await ctx.cluster.restart(node)
                except Exception as exc:
                    ctx.notes.append(f"rolling restart of node {node} failed: {exc}")
                    failed.append(node)
            return f"rolling restart {order}" + (f"; failed {failed}" if failed else "")
        await asyncio.gather(*(ctx.cluster.kill(n) for n in ctx.nodes))
        failed = await restart_all_of(ctx, ctx.nodes)
        return "killed every node at once, restarted" + (f"; failed {failed}" if failed else "")

    async def end(self, ctx: NemesisContext) -> str:
        return ""


# -- storage ------------------------------------------------------------------


class Bitflip(Nemesis):
    """Stop one node, flip bits in stored values of one of its partitions, restart,
    and check that the damaged replica answers DATA_LOSS (never wrong data)."""

    name = "bitflip"
    PROBE_SECONDS = 15.0

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._damaged: set[int] = set()  # partitions damaged on some node already

    async def begin(self, ctx: NemesisContext) -> str:
        node = ctx.rng.choice(ctx.nodes)
        await ctx.cluster.kill(node)
        try:
            stored = partitions_with_records(ctx.cluster.db_path(node))
            choices = sorted(p for p in stored if p not in self._damaged)
            if not choices:
                return f"node {node}: no undamaged partition with records; nothing flipped"
            partition = ctx.rng.choice(choices)
            flips = flip_record_values(ctx.cluster.db_path(node), node, partition, ctx.rng, 2)
        finally:
            await ctx.cluster.restart(node)
        self._damaged.add(partition)
        probe = await self._probe(ctx, node, partition)
        self.events.append(
            {
                "at_ns": ctx.now_ns(),
                "node": node,
                "partition": partition,
                "flips": [f.to_json() for f in flips],
                "probe": probe,
            }
        )
        return (
            f"node {node}, partition {partition}: {len(flips)} value(s) flipped; "
            f"probe: {probe['data_loss']} DATA_LOSS, {probe['served']} served"
        )

    async def _probe(self, ctx: NemesisContext, node: int, partition: int) -> dict[str, Any]:
        records = [(p, r) for p, r in ctx.records() if ctx.partition_of(p) == partition]
        deadline = time.monotonic() + self.PROBE_SECONDS
        last: dict[str, Any] = {"data_loss": 0, "served": 0, "other_errors": 0, "records": 0}
        while True:
            res = await probe_replica(
                ctx.cluster.direct_address(node), records,
                credentials=ctx.cluster.credentials(),
            )
            last = {**res.to_json(), "records": len(records)}
            if res.data_loss or time.monotonic() >= deadline:
                return last
            if res.served and not res.other_errors:
                return last  # answered every record without noticing: a finding
            await asyncio.sleep(0.5)

    async def end(self, ctx: NemesisContext) -> str:
        return ""

    def result(self, history: list[Op], partition_of: Callable[[str], int]) -> dict[str, Any]:
        for event in self.events:
            # Evidence for "the other replicas keep serving it": how the
            # damaged partition's ops fared after the damage.
            after = [
                op
                for op in history
                if op.key is not None
                and op.invoke_ns >= event["at_ns"]
                and partition_of(op.key) == event["partition"]
            ]
            event["ops_after"] = {
                "ok": sum(1 for op in after if op.outcome == "ok"),
                "data_loss": sum(1 for op in after if op.error == "DATA_LOSS"),
                "total": len(after),
            }
        undetected = [e for e in self.events if not e["probe"]["data_loss"]]
        served_wrong = [e for e in undetected if e["probe"]["served"] and not e["probe"]["other_errors"]]
        if served_wrong:
            verdict = "invalid"
        elif undetected or not self.events:
            verdict = "unknown"
        else:
            verdict = "valid"
        return {
            "checker": "bitflip",
            "valid": verdict == "valid",
            "verdict": verdict,
            "flipped": len(self.events),
            "detected": len(self.events) - len(undetected),
            "events": self.events,
        }


# -- membership ---------------------------------------------------------------


class Membership(Nemesis):
    """The cluster's members change under the workload, as an operator changes
    them: each window does the next of add, decommission, replace.

    - add: `scripts/cluster add-node` starts the next id and makes it a
      member (waits until active); replicas then move onto it.
    - decommission: `medkv node decommission ID --no-wait` on a random
      member; the window's end waits until it is removed (its replicas moved
      off through learners and joint changes), then stops its process.
    - replace: a random member is killed for good (`scripts/cluster
      kill-node`), a new node is added in its place, and the dead one removed
      with `medkv node remove ID --dead --no-wait` (its replicas re-created
      elsewhere); the end waits until it is removed.

    A step that would leave fewer active members than replicas (the cluster
    refuses it) or needs a spare id when none is left falls back to one that
    can run. Everything goes through scripts/cluster and the CLI, never node
    internals; the checkers then judge the history as for any fault.
    """

    name = "membership"
    spare_nodes = 4  # two add/replace cycles
    ACTIONS = ("add", "decommission", "replace")
    SETTLE_S = 120.0

    def __init__(self) -> None:
        self._step = 0
        self._leaving: list[tuple[str, int]] = []  # (how, node) the end waits for

    async def begin(self, ctx: NemesisContext) -> str:
        replicas = ctx.cluster.spec.replicas
        spare = bool(ctx.cluster.spare_ids())
        wanted = self.ACTIONS[self._step % len(self.ACTIONS)]
        self._step += 1
        # Enough active members for R replicas after one leaves?
        can_shrink = len(ctx.nodes) > replicas
        order = [wanted, *(a for a in self.ACTIONS if a != wanted)]
        for action in order:
            if action == "add" and spare:
                node = await ctx.cluster.add_node()
                return f"added node {node}"
            if action == "decommission" and can_shrink:
                victim = ctx.rng.choice(ctx.nodes)
                await ctx.cluster.medkv("node", "decommission", str(victim), "--no-wait")
                self._leaving.append(("decommission", victim))
                return f"decommissioning node {victim}"
            if action == "replace" and (spare or can_shrink):
                victim = ctx.rng.choice(ctx.nodes)
                await ctx.cluster.kill(victim)
                ctx.cluster.forget(victim)  # gone for good: nobody restarts it
                detail = f"killed node {victim} for good"
                if spare:
                    node = await ctx.cluster.add_node()
                    detail += f", added node {node}"
                await ctx.cluster.medkv("node", "remove", str(victim), "--dead", "--no-wait")
                self._leaving.append(("remove --dead", victim))
                return detail + f", removing node {victim} (--dead)"
        return "no membership change possible (no spare id, too few members)"

    async def end(self, ctx: NemesisContext) -> str:
        leaving, self._leaving = self._leaving, []
        parts = []
        for how, node in leaving:
            t0 = time.monotonic()
            removed = await self._wait_removed(ctx, node)
            took = time.monotonic() - t0
            if not removed:
                ctx.notes.append(f"membership: node {node} ({how}) not removed within "
                                 f"{self.SETTLE_S:g}s")
                parts.append(f"; node {node} NOT removed within {self.SETTLE_S:g}s")
                continue
            ctx.cluster.forget(node)
            if how == "decommission":
                # A removed node serves nothing: stop it (a kill is fine now).
                with contextlib.suppress(ClusterError):
                    await ctx.cluster.kill(node)
            parts.append(f"; node {node} removed ({how}) after {took:.0f}s")
        return "".join(parts)

    async def _wait_removed(self, ctx: NemesisContext, node: int) -> bool:
        deadline = time.monotonic() + self.SETTLE_S
        while time.monotonic() < deadline:
            try:
                doc = json.loads(await ctx.cluster.medkv("--json", "node", "list", timeout=30.0))
            except (ClusterError, ValueError):
                doc = {}
            states = {m.get("node"): m.get("state") for m in doc.get("members", [])}
            if states.get(node) == "removed":
                return True
            await asyncio.sleep(1.0)
        return False


class DiskRollback(Nemesis):
    """PLANTED BUG, outside the failure model: every node's disk travels back in
    time (images taken while all nodes were paused, restored after a kill -9),
    so writes acknowledged in between are lost. The suite must say invalid."""

    name = "planted-disk-rollback"
    planted = True

    def __init__(self) -> None:
        self._images: Path | None = None

    async def begin(self, ctx: NemesisContext) -> str:
        images = ctx.work_dir / "rollback-images"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        for n in ctx.nodes:
            await ctx.cluster.pause(n)
        try:
            # Paused processes write nothing: each copy is a crash-consistent image.
            for n in ctx.nodes:
                await asyncio.to_thread(shutil.copytree, ctx.cluster.db_path(n), images / f"node-{n}")
        finally:
            for n in ctx.nodes:
                await ctx.cluster.resume(n)
        self._images = images
        return "disk images of every node taken"

    async def end(self, ctx: NemesisContext) -> str:
        images, self._images = self._images, None
        if images is None:
            return ""
        await asyncio.gather(*(ctx.cluster.kill(n) for n in ctx.nodes))
        for n in ctx.nodes:
            db = ctx.cluster.db_path(n)
            await asyncio.to_thread(shutil.rmtree, db)
            await asyncio.to_thread(shutil.copytree, images / f"node-{n}", db)
        failed = await restart_all_of(ctx, ctx.nodes)
        return "; every disk rolled back to the images" + (f"; restart failed {failed}" if failed else "")


NEMESES: dict[str, type[Nemesis]] = {
    cls.name: cls
    for cls in (
        PartitionRandomHalves,
        PartitionLeader,
        PartitionRing,
        Bridge,
        Kill,
        KillLeader,
        Pause,
        RestartAll,
        Slow,
        Lossy,
        LossyDisk,
        Bitflip,
        DiskRollback,
        SkipFsyncKill,
        Membership,
    )
}
# What `--nemesis all` and the soak matrix mean: everything inside the failure model.
STANDARD_NEMESES = [name for name, cls in NEMESES.items() if not cls.planted]


def make_nemeses(spec: str) -> list[Nemesis]:
    """"a,b,c" -> nemesis instances; "none" (or "") -> []."""
    names = [s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none"]
    unknown = [n for n in names if n not in NEMESES]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)}; known: {', '.join(NEMESES)}, none")
    return [NEMESES[n]() for n in names]


__all__ = [
    "NEMESES",
    "STANDARD_NEMESES",
    "Nemesis",
    "NemesisContext",
    "find_leader",
    "make_nemeses",
    "minority",
]
