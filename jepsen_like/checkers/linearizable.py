"""Linearizability checking: Wing & Gong's search with Lowe's just-in-time
linearization and Porcupine-style memoization, one key at a time.

Why this shape:

- P-compositionality: linearizability is local (Herlihy & Wing), so a history
  is linearizable iff each key's sub-history is. Checking keys separately
  turns one exponential search into many small ones.
- The search walks a list of call/return events in time order. At a call it
  tries to linearize that op now (if the model allows); at a return whose op
  is not linearized yet it must backtrack, because every op has to take effect
  before it returns. Only ops whose calls precede the first pending return are
  candidates, which is Lowe's "just-in-time" pruning.
- Memoization: two search nodes with the same set of linearized ops and the
  same model state have the same future, so each (bitset, state) pair is
  explored once.
- Indeterminate (info) ops return at +infinity: they may be linearized at
  any point after their call, or never. The search succeeds as soon as every
  determinate op is linearized; info ops left over never took effect.
  Info ops are what makes checking expensive (each can be in or out at every
  point), so before the search the model drops info ops nobody could have
  observed, and turns an info op into a determinate one when a read returned
  the value only it wrote (it took effect before that read returned). In the
  search, info candidates are tried after determinate ones, identical info
  ops only in call order, blind info writes never straight after another
  info op, and a node is skipped when one with the same determinate set and
  state but a subset of its info ops was reached before (dominance: the
  smaller node can do everything the larger can). `_Search` explains why
  each of these is sound; tests compare the result with a brute-force search.
- At equal timestamps a call sorts before a return, so ops that touch at an
  instant count as concurrent: clock granularity never causes a false alarm.
- A per-key step budget turns a pathological search into an "unknown"
  verdict instead of a hang.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from jepsen_like.checkers.models import Model, Prepared, State
from jepsen_like.history import Op

Verdict = Literal["valid", "invalid", "unknown"]

DEFAULT_MAX_STEPS_PER_KEY = 1_000_000
_EXPLAIN_LIMIT = 12  # ops listed per section of an explanation


@dataclass(slots=True)
class KeyResult:
    """The verdict for one key's sub-history."""

    key: str | None
    verdict: Verdict
    ops: int
    steps: int
    explanation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "key": self.key,
            "verdict": self.verdict,
            "ops": self.ops,
            "steps": self.steps,
        }
        if self.explanation is not None:
            d["explanation"] = self.explanation
        return d


@dataclass(slots=True)
class LinearizabilityResult:
    """The verdict for a whole history.

    `verdict` is "invalid" if any key is, else "unknown" if any key ran out of
    budget, else "valid". `valid` is True only for a proven "valid".
    """

    verdict: Verdict
    model: str
    keys: int
    ops: int
    steps: int
    invalid: list[KeyResult] = field(default_factory=list)
    unknown: list[KeyResult] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.verdict == "valid"

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": "linearizable",
            "valid": self.valid,
            "verdict": self.verdict,
            "model": self.model,
            "keys": self.keys,
            "ops": self.ops,
            "steps": self.steps,
            "invalid": [k.to_json() for k in self.invalid],
            "unknown": [k.to_json() for k in self.unknown],
        }


def check_linearizable(
    history: Iterable[Op],
    model: Model,
    *,
    kinds: Collection[str] | None = None,
    max_steps_per_key: int = DEFAULT_MAX_STEPS_PER_KEY,
) -> LinearizabilityResult:
    """Check every key's sub-history of `history` against `model`.

    Only ops whose kind is in `kinds` (default: `model.kinds`) are checked, so
    one history may mix workloads. Raises ValueError on an op the model cannot
    read, or on a pending op (outcome None).
    """
    wanted = model.kinds if kinds is None else frozenset(kinds)
    by_key: dict[str | None, list[Op]] = defaultdict(list)
    for op in history:
        if op.kind in wanted:
            if op.outcome is None:
                raise ValueError(f"op {op.id} is still pending: finalize the history first")
            by_key[op.key].append(op)
    result = LinearizabilityResult(verdict="valid", model=model.name, keys=0, ops=0, steps=0)
    for key in sorted(by_key, key=lambda k: (k is None, k or "")):
        kr = check_key(by_key[key], model, key=key, max_steps=max_steps_per_key)
        result.keys += 1
        result.ops += kr.ops
        result.steps += kr.steps
        if kr.verdict == "invalid":
            result.invalid.append(kr)
        elif kr.verdict == "unknown":
            result.unknown.append(kr)
    if result.invalid:
        result.verdict = "invalid"
    elif result.unknown:
        result.verdict = "unknown"
    return result


def check_key(
    ops: Iterable[Op],
    model: Model,
    *,
    key: str | None = None,
    max_steps: int = DEFAULT_MAX_STEPS_PER_KEY,
) -> KeyResult:
    """Decide whether one key's ops are linearizable with respect to `model`."""
    checked: list[tuple[Op, Prepared]] = []
    for op in ops:
        p = model.prepare(op)
        if p is not None:
            checked.append((op, p))
    drop = model.unobservable_info(checked)
    if drop:
        checked = [c for i, c in enumerate(checked) if i not in drop]
    deadlines = model.info_deadlines(checked)
    if not checked:
        return KeyResult(key, "valid", 0, 0)
    ends = [op.end_ns for op, _ in checked]
    for i, deadline in deadlines.items():
        # A deadline before the op's own call cannot be met; leaving the op
        # indeterminate lets the search report the read that proves it.
        if deadline >= checked[i][0].invoke_ns:
            ends[i] = deadline
    return _Search(checked, ends, model, key, max_steps).run()


class _Search:
    """One key's search.

    Events get positions 1..m in time order: the calls and returns of
    determinate ops, and the calls of info ops (whose returns are at +inf and
    so are never reached). Determinate events form the main doubly linked
    list (head 0, tail m+1); info calls form a second list (head m+2, tail
    m+3). Both lists hold only what is not yet linearized.

    At each search node the determinate candidates (calls before the first
    pending return R) are tried first, then the info calls positioned before
    R. Trying info ops last, with dominance memoization, keeps the search
    polynomial in practice: a node (M, state, I) is skipped when a node
    (M, state, I') with I' a subset of I was already reached, because every
    continuation of the former is one of the latter (it can simply never
    linearize the info ops in I - I'). Without it, proving a history with
    many info ops invalid would enumerate every subset of them.
    """

    def __init__(
        self,
        checked: list[tuple[Op, Prepared]],
        ends: list[float],
        model: Model,
        key: str | None,
        max_steps: int,
    ) -> None:
        self.model = model
        self.key = key
        self.max_steps = max_steps
        self.ops = [op for op, _ in checked]
        # (time, 0 call / 1 return, op index); at equal times calls sort first,
        # so ops that touch at an instant count as concurrent.
        events: list[tuple[float, int, int]] = []
        # An op must be linearized iff it has a finite end: ok ops, fail ops
        # the model keeps as observations, and info ops proven applied.
        must = [not math.isinf(end) for end in ends]
        for i, (op, _) in enumerate(checked):
            events.append((float(op.invoke_ns), 0, i))
            if must[i]:
                events.append((ends[i], 1, i))
        events.sort()
        m = len(events)
        size = m + 4
        self.tail, self.info_head, self.info_tail = m + 1, m + 2, m + 3
        self.is_call = [False] * size
        self.op_of = [-1] * size
        self.match = [0] * size  # call entry -> its return entry (determinate ops)
        self.prepared: list[Prepared] = [()] * size
        call_entry: dict[int, int] = {}
        main = [0]
        info = [self.info_head]
        for pos, (_, is_ret, i) in enumerate(events, 1):
            self.op_of[pos] = i
            if is_ret:
                self.match[call_entry[i]] = pos
                main.append(pos)
            else:
                call_entry[i] = pos
                self.is_call[pos] = True
                self.prepared[pos] = checked[i][1]
                (main if must[i] else info).append(pos)
        main.append(self.tail)
        info.append(self.info_tail)
        # Symmetry: pending info ops with identical prepared forms are
        # interchangeable (none ever returns, so each stays a candidate), so
        # they are only linearized in call order: an info op is tried only
        # once its earlier twin has been.
        # Blind info writes are never tried straight after another info op:
        # the pair is no better than the blind write alone.
        self.blind = [False] * size
        for pos in info[1:-1]:
            self.blind[pos] = model.overwrites(self.prepared[pos])
        self.twin = [0] * size
        last_of: dict[Prepared, int] = {}
        for pos in info[1:-1]:
            form = self.prepared[pos]
            self.twin[pos] = last_of.get(form, 0)
            last_of[form] = pos
        self.nxt = [0] * size
        self.prv = [0] * size
        for chain in (main, info):
            for a, b in itertools.pairwise(chain):
                self.nxt[a] = b
                self.prv[b] = a
        self.must_total = len(main) // 2 - 1  # determinate ops: a call and a return each
        # Deepest point reached, for the explanation of a failure.
        self.best_depth = -1
        self.best: dict[str, Any] | None = None

    def run(self) -> KeyResult:
        nxt, prv, match = self.nxt, self.prv, self.match
        is_call, prepared, twin, blind = self.is_call, self.prepared, self.twin, self.blind
        step = self.model.step
        head, info_head, info_tail = 0, self.info_head, self.info_tail
        state: State = self.model.init()
        lin_must = 0  # bitsets over entry positions
        lin_info = 0
        # (determinate set, state) -> the info sets reached with them.
        seen: dict[tuple[int, State], list[int]] = {}
        # (choice, state before, lin_must before, lin_info before, R): R is -1
        # for a determinate choice, else the return the info choice was made at.
        stack: list[tuple[int, State, int, int, int]] = []
        remaining = self.must_total
        steps = 0
        e = nxt[head]
        ret = -1  # >= 0: trying info candidates before return `ret`, cursor e
        after_info = False  # the node was reached by linearizing an info op
        while remaining > 0:
            steps += 1
            if steps > self.max_steps:
                return self._unknown(steps - 1, len(stack))
            if ret < 0:
                if is_call[e]:
                    ok, new_state = step(state, prepared[e])
                    if ok:
                        new_must = lin_must | (1 << e)
                        if _first_visit(seen, new_must, new_state, lin_info):
                            stack.append((e, state, lin_must, lin_info, -1))
                            state, lin_must = new_state, new_must
                            r = match[e]
                            nxt[prv[e]] = nxt[e]
                            prv[nxt[e]] = prv[e]
                            nxt[prv[r]] = nxt[r]
                            prv[nxt[r]] = prv[r]
                            remaining -= 1
                            e = nxt[head]
                            continue
                    e = nxt[e]
                else:
                    # A return whose op is not linearized: only an info op
                    # taking effect now can still help.
                    depth = self.must_total - remaining
                    if depth > self.best_depth:
                        self._remember(depth, e, state, stack)
                    ret = e
                    after_info = bool(stack) and stack[-1][4] >= 0
                    e = nxt[info_head]
                continue
            if e != info_tail and e < ret:
                t = twin[e]
                if (t and not (lin_info >> t) & 1) or (blind[e] and after_info):
                    e = nxt[e]
                    continue
                ok, new_state = step(state, prepared[e])
                if ok:
                    new_info = lin_info | (1 << e)
                    if _first_visit(seen, lin_must, new_state, new_info):
                        stack.append((e, state, lin_must, lin_info, ret))
                        state, lin_info = new_state, new_info
                        nxt[prv[e]] = nxt[e]
                        prv[nxt[e]] = prv[e]
                        ret = -1
                        e = nxt[head]
                        continue
                e = nxt[e]
                continue
            # Every candidate at this node failed: undo the last choice.
            if not stack:
                return self._invalid(steps)
            e, state, lin_must, lin_info, ret = stack.pop()
            after_info = bool(stack) and stack[-1][4] >= 0
            if ret < 0:
                r = match[e]
                nxt[prv[r]] = r
                prv[nxt[r]] = r
                remaining += 1
            nxt[prv[e]] = e
            prv[nxt[e]] = e
            e = nxt[e]
        return KeyResult(self.key, "valid", len(self.ops), steps)

    def _remember(
        self, depth: int, ret: int, state: State, stack: list[tuple[int, State, int, int, int]]
    ) -> None:
        """Record the deepest dead end: which op could not be linearized, and
        which candidates were open at that point."""
        self.best_depth = depth
        pending: list[int] = []
        for start in (self.nxt[0], self.nxt[self.info_head]):
            e = start
            while e < ret and len(pending) < _EXPLAIN_LIMIT:
                if self.is_call[e]:
                    pending.append(self.op_of[e])
                e = self.nxt[e]
        self.best = {
            "stuck_op": self.op_of[ret],
            "candidates": sorted(pending),
            "state": self.model.describe(state),
            "linearized_before": [self.op_of[s[0]] for s in stack[-_EXPLAIN_LIMIT:]],
            "linearized_count": len(stack),
        }

    def _unknown(self, steps: int, linearized: int) -> KeyResult:
        return KeyResult(
            self.key,
            "unknown",
            len(self.ops),
            steps,
            {"reason": f"step budget of {self.max_steps} exhausted", "linearized": linearized},
        )

    def _invalid(self, steps: int) -> KeyResult:
        best = self.best or {}
        ops = self.ops
        explanation = {
            "reason": "no linearization: the stuck op cannot take effect before it returned, "
            "whatever order the candidates take",
            "stuck_op": _op_summary(ops[best["stuck_op"]]) if best else None,
            "candidates": [_op_summary(ops[i]) for i in best.get("candidates", [])],
            "state_before": best.get("state"),
            "last_linearized": [_op_summary(ops[i]) for i in best.get("linearized_before", [])],
            "linearized_count": best.get("linearized_count", 0),
        }
        return KeyResult(self.key, "invalid", len(self.ops), steps, explanation)


def _first_visit(
    seen: dict[tuple[int, State], list[int]], lin_must: int, state: State, lin_info: int
) -> bool:
    """Record a search node; False if it, or a node dominating it (same
    determinate set and state, a subset of its info ops), was reached before."""
    key = (lin_must, state)
    infos = seen.get(key)
    if infos is None:
        seen[key] = [lin_info]
        return True
    for other in infos:
        if other & ~lin_info == 0:
            return False
    infos.append(lin_info)
    return True


def _op_summary(op: Op) -> dict[str, Any]:
    end = op.end_ns
    return {
        "id": op.id,
        "process": op.process,
        "kind": op.kind,
        "value": op.value,
        "outcome": op.outcome,
        "output": op.output,
        "invoke_ns": op.invoke_ns,
        "complete_ns": None if math.isinf(end) else op.complete_ns,
    }
