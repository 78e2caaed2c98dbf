"""Hot-path benchmark of the Raft core: `python -m consensus.bench`.

A 3-node group in one process, no IO: MemoryStorage, "persisting" a Ready
is MemoryStorage.append / set_hard_state, and messages are handed directly
from one RawNode to another. The leader proposes batches of fixed-size
commands; an entry counts once it is committed AND applied on all three
nodes. Reports a figure; it never passes or fails on time.

Options: --entries N (total commands), --batch B (commands per proposal
batch), --size S (bytes per command), --profile (cProfile the run and print
the top functions).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from dataclasses import dataclass

from consensus.memory_storage import MemoryStorage
from consensus.raft import Config
from consensus.rawnode import RawNode
from consensus.types import ConfState, Message, ProposalDropped, StateRole


@dataclass
class BenchResult:
    entries: int
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time: steadier on a shared machine
    readies: int
    messages: int

    @property
    def per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def _make_group(n: int, seed: int) -> tuple[dict[int, RawNode], dict[int, MemoryStorage]]:
    ids = tuple(range(1, n + 1))
    nodes: dict[int, RawNode] = {}
    storages: dict[int, MemoryStorage] = {}
    for i in ids:
        st = MemoryStorage(conf_state=ConfState(voters=ids))
        storages[i] = st
        nodes[i] = RawNode(Config(id=i, storage=st, rng=random.Random(seed + i)))
    return nodes, storages


def run(entries: int, batch: int, size: int, seed: int = 7) -> BenchResult:
    nodes, storages = _make_group(3, seed)
    order = sorted(nodes)
    applied = dict.fromkeys(order, 0)  # commands applied per node (empty entries excluded)
    readies = 0
    messages = 0
    queue: list[Message] = []

    def pump() -> bool:
        """One round: every node handles its Ready, then messages are delivered."""
        nonlocal readies, messages, queue
        busy = False
        for i in order:
            node = nodes[i]
            if not node.has_ready():
                continue
            busy = True
            readies += 1
            rd = node.ready()
            st = storages[i]
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
            if rd.entries:
                st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            queue.extend(rd.messages)
            n = 0
            for e in rd.committed_entries:
                if e.data:
                    n += 1  # "apply": the state machine here only counts
            applied[i] += n
            node.advance(rd)
        if queue:
            busy = True
            msgs = queue
            queue = []
            messages += len(msgs)
            for m in msgs:
                nodes[m.to].step(m)
        return busy

    leader = nodes[1]
    leader.campaign()
    for _ in range(100):
        if not pump():
            break
    if leader.raft.state != StateRole.LEADER:
        raise RuntimeError("no leader elected")

    payload = bytes(random.Random(seed).getrandbits(8) for _ in range(size))
    proposed = 0
    readies = messages = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while min(applied.values()) < entries:
        if proposed < entries:
            k = min(batch, entries - proposed)
            try:
                leader.propose_batch([payload] * k)
                proposed += k
            except ProposalDropped:
                pass  # uncommitted budget full: let replication catch up
        if not pump() and proposed >= entries:
            # Idle with entries outstanding: followers learn the final commit
            # index from the next heartbeat.
            leader.tick()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return BenchResult(
        entries=entries, seconds=elapsed, cpu_seconds=cpu, readies=readies, messages=messages
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=1_000_000, help="commands to commit and apply")
    p.add_argument("--batch", type=int, default=1000, help="commands per proposal batch")
    p.add_argument("--size", type=int, default=200, help="bytes per command")
    p.add_argument("--profile", action="store_true", help="print a cProfile summary")
    args = p.parse_args(argv)
    if args.entries <= 0 or args.batch <= 0 or args.size < 0:
        p.error("--entries and --batch must be positive, --size non-negative")

    print(
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
        f"os.cpu_count()={os.cpu_count()}, "
        f"python {platform.python_implementation()} {platform.python_version()}"
    )
    print(f"processor: {platform.processor() or 'unknown'}")
    print(
        f"workload: 3 nodes in one process, MemoryStorage, {args.entries} commands of "
        f"{args.size} bytes, proposed in batches of {args.batch}"
    )
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        res = prof.runcall(run, args.entries, args.batch, args.size)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    else:
        res = run(args.entries, args.batch, args.size)
    print(
        f"committed and applied on all 3 nodes: {res.entries} entries in {res.seconds:.3f} s "
        f"= {res.per_second:,.0f} entries/s "
        f"({res.readies} readies, {res.messages} messages)"
    )
    cpu_rate = res.entries / res.cpu_seconds if res.cpu_seconds > 0 else float("inf")
    print(
        f"per CPU second (this process only; the wall-clock figure includes "
        f"time other processes took the CPU): {cpu_rate:,.0f} entries/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
