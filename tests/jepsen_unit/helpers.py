"""Shared helpers for the jepsen_like unit tests: hand-written histories and
simulated (correct by construction) append, bank and follower-read runs."""

from __future__ import annotations

import heapq
import random
from typing import Any

from jepsen_like.history import Op, Outcome


class Hist:
    """Builds a hand-written history; times are in arbitrary integer units."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(
        self,
        process: int,
        kind: str,
        invoke: int,
        complete: int | None,
        *,
        key: str | None = "k",
        value: Any = None,
        outcome: Outcome = "ok",
        output: Any = None,
    ) -> Op:
        op = Op(
            id=len(self.ops),
            process=process,
            kind=kind,
            key=key,
            value=value,
            invoke_ns=invoke,
            outcome=outcome,
            complete_ns=complete,
            output=output,
        )
        self.ops.append(op)
        return op

    # Register shorthands.
    def w(
        self, p: int, v: Any, t0: int, t1: int | None, outcome: Outcome = "ok", key: str = "k"
    ) -> Op:
        return self.add(p, "write", t0, t1, key=key, value=v, outcome=outcome)

    def r(self, p: int, v: Any, t0: int, t1: int, key: str = "k") -> Op:
        return self.add(p, "read", t0, t1, key=key, output={"value": v})

    def cas(
        self, p: int, expected: Any, new: Any, t0: int, t1: int | None, outcome: Outcome = "ok"
    ) -> Op:
        output = {"precondition_failed": True} if outcome == "fail" else None
        return self.add(
            p,
            "cas",
            t0,
            t1,
            value={"expected": expected, "new": new},
            outcome=outcome,
            output=output,
        )

    # Versioned register shorthands.
    def vw(
        self, p: int, v: Any, version: int | None, t0: int, t1: int | None, outcome: Outcome = "ok"
    ) -> Op:
        out = None if version is None else {"version": version}
        return self.add(p, "write", t0, t1, value=v, outcome=outcome, output=out)

    def vr(self, p: int, v: Any, version: int | None, t0: int, t1: int) -> Op:
        return self.add(p, "read", t0, t1, output={"value": v, "version": version})

    def vcas(
        self,
        p: int,
        expected: int,
        new: Any,
        version: int | None,
        t0: int,
        t1: int | None,
        outcome: Outcome = "ok",
    ) -> Op:
        if outcome == "fail":
            out: Any = {"precondition_failed": True}
        else:
            out = None if version is None else {"version": version}
        return self.add(
            p,
            "cas",
            t0,
            t1,
            value={"expected_version": expected, "new": new},
            outcome=outcome,
            output=out,
        )


class _EventSim:
    """A discrete-event driver: `concurrency` clients, each op taking effect at
    one instant inside its interval (info ops: any later instant, or never)."""

    def __init__(self, seed: int, concurrency: int, info_rate: float) -> None:
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.info_rate = info_rate
        self.ops: list[Op] = []
        self.events: list[tuple[int, int, str, int]] = []
        self.seq = 0
        self.next_process = concurrency
        self.process_of = list(range(concurrency))

    def push(self, t: int, what: str, ref: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, what, ref))

    def run(self, n_ops: int, make: Any, apply: Any) -> list[Op]:
        """make(op_id, process, t) -> Op; apply(op) fills the op's output."""
        rng = self.rng
        slot_of: dict[int, int] = {}
        for s in range(self.concurrency):
            self.push(rng.randrange(100), "invoke", s)
        while self.events:
            t, _, what, ref = heapq.heappop(self.events)
            if what == "invoke":
                if len(self.ops) >= n_ops:
                    continue
                op = make(len(self.ops), self.process_of[ref], t)
                self.ops.append(op)
                slot_of[op.id] = ref
                duration = 1 + rng.randrange(300)
                if rng.random() < self.info_rate:
                    op.outcome = "info"
                    if rng.random() < 0.5:
                        self.push(t + 1 + rng.randrange(3 * duration), "effect", op.id)
                else:
                    self.push(t + 1 + rng.randrange(max(duration - 1, 1)), "effect", op.id)
                self.push(t + duration + 1, "complete", op.id)
            elif what == "effect":
                apply(self.ops[ref])
            else:
                op = self.ops[ref]
                op.complete_ns = t
                slot = slot_of.pop(op.id)
                if op.outcome == "info":
                    op.output = None
                    self.process_of[slot] = self.next_process
                    self.next_process += 1
                self.push(t + rng.randrange(100), "invoke", slot)
        return self.ops

    def quiet_time(self) -> int:
        return max(o.complete_ns or 0 for o in self.ops) + 10_000


def _set(op: Op, outcome: Outcome, output: Any) -> None:
    if op.outcome != "info":
        op.outcome, op.output = outcome, output


def simulate_append(
    seed: int, n_ops: int, keys: int, concurrency: int, info_rate: float
) -> list[Op]:
    """Appends of unique elements and whole-list reads, then two final reads per key."""
    sim = _EventSim(seed, concurrency, info_rate)
    lists: dict[str, list[int]] = {f"p{i}": [] for i in range(keys)}
    names = sorted(lists)

    def make(op_id: int, process: int, t: int) -> Op:
        key = sim.rng.choice(names)
        if sim.rng.random() < 0.5:
            return Op(op_id, process, "append", key, op_id, t)
        return Op(op_id, process, "read", key, None, t)

    def apply(op: Op) -> None:
        assert op.key is not None
        if op.kind == "append":
            lists[op.key].append(op.value)
            _set(op, "ok", None)
        else:
            _set(op, "ok", {"value": list(lists[op.key])})

    ops = sim.run(n_ops, make, apply)
    t = sim.quiet_time()
    for key in names:
        for _ in range(2):
            ops.append(
                Op(
                    len(ops),
                    "final",
                    "read",
                    key,
                    None,
                    t,
                    "ok",
                    t + 5,
                    {"value": list(lists[key])},
                )
            )
            t += 10
    return ops


def simulate_bank(
    seed: int, n_ops: int, keys: int, accounts: int, total: int, concurrency: int, info_rate: float
) -> list[Op]:
    """Atomic transfers between one patient's accounts, and snapshot reads."""
    sim = _EventSim(seed, concurrency, info_rate)
    names = [f"a{i}" for i in range(accounts)]
    balances = {
        f"p{i}": {
            a: total // accounts + (total % accounts if j == 0 else 0) for j, a in enumerate(names)
        }
        for i in range(keys)
    }
    patients = sorted(balances)

    def make(op_id: int, process: int, t: int) -> Op:
        key = sim.rng.choice(patients)
        if sim.rng.random() < 0.5:
            src, dst = sim.rng.sample(names, 2)
            return Op(
                op_id,
                process,
                "transfer",
                key,
                {"from": src, "to": dst, "amount": sim.rng.randrange(1, 6)},
                t,
            )
        return Op(op_id, process, "read_all", key, None, t)

    def apply(op: Op) -> None:
        assert op.key is not None
        b = balances[op.key]
        if op.kind == "transfer":
            v = op.value
            if b[v["from"]] < v["amount"]:
                _set(op, "fail", {"insufficient": True})
                return
            b[v["from"]] -= v["amount"]
            b[v["to"]] += v["amount"]
            _set(op, "ok", None)
        else:
            _set(op, "ok", {"balances": dict(b)})

    return sim.run(n_ops, make, apply)


def simulate_follower_reads(
    seed: int, n_ops: int, keys: int, concurrency: int, info_rate: float
) -> list[Op]:
    """Versioned writes into one shared log, and follower reads of a random
    applied prefix of it (as a lagging replica would serve them)."""
    sim = _EventSim(seed, concurrency, info_rate)
    names = [f"k{i}" for i in range(keys)]
    log: list[tuple[int, str, Any]] = []  # (index, key, value)
    commit = [0]

    def make(op_id: int, process: int, t: int) -> Op:
        key = sim.rng.choice(names)
        if sim.rng.random() < 0.4:
            return Op(op_id, process, "write", key, op_id, t)
        token = commit[0] if sim.rng.random() < 0.3 else 0
        return Op(
            op_id, process, "follower_read", key, {"min_version": token} if token else None, t
        )

    def apply(op: Op) -> None:
        if op.kind == "write":
            commit[0] += 1 + sim.rng.randrange(2)  # gaps: no-ops, other groups
            log.append((commit[0], op.key or "", op.value))
            _set(op, "ok", {"version": commit[0]})
            return
        low = int(op.value["min_version"]) if op.value else 0
        applied = sim.rng.randint(low, commit[0])
        value, version = None, 0
        for index, key, v in log:
            if index > applied:
                break
            if key == op.key:
                value, version = v, index
        lag = commit[0] - applied
        _set(op, "ok", {"value": value, "version": version, "applied_index": applied, "lag": lag})

    return sim.run(n_ops, make, apply)
