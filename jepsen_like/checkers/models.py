"""Sequential specifications for the linearizability checker, and a reference
executor that produces linearizable histories from them.

A model turns each history op into a compact `Prepared` tuple once (so the
search loop never parses JSON shapes) and then answers one question, many
times: from this state, may this op take effect, and what is the state after?
States must be hashable: the checker memoizes (linearized set, state) pairs.

Op shapes (`Op.value` is the input, `Op.output` the answer):

Register (`RegisterModel`), values compared as-is:
  read    output {"value": v}
  write   value v
  delete  (a write of None, the "absent" value)
  cas     value {"expected": e, "new": n}; a ``fail`` whose output has
          {"precondition_failed": true} is an observation (the register did
          not hold e); any other ``fail`` did nothing and is dropped.

Versioned register (`VersionedRegisterModel`), medkv's semantics: every
successful write gets a version, the Raft index that applied it, so versions
strictly increase across successful writes of one key (with gaps: other keys
share the index space). The initial state is absent at version 0.
  read    output {"value": v, "version": n}; version None (or 0 with an
          absent value, as a NOT_FOUND reply has it) is not checked
  write   value v, output {"version": n}
  delete  output {"version": n}; the value becomes None (absent)
  cas     value {"expected_version": e, "new": v}, output {"version": n};
          e == 0 means "must be absent"; e > 0 matches a present value at
          exactly version e. A ``fail`` with {"precondition_failed": true}
          is an observation that the version did not match.
An info write's version is unknown: the state then holds only a lower bound
for the version, which a later read reporting the version makes exact again.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from jepsen_like.history import Op, Outcome

State = Hashable
Prepared = tuple[Any, ...]


def freeze(v: Any) -> Hashable:
    """JSON value -> hashable equivalent (lists become tuples, dicts sorted pairs)."""
    if isinstance(v, list | tuple):
        return tuple(freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), freeze(x)) for k, x in v.items()))
    return v  # type: ignore[no-any-return]


def _is_precondition_failure(op: Op) -> bool:
    return isinstance(op.output, dict) and bool(op.output.get("precondition_failed"))


def _field(op: Op, source: Any, name: str) -> Any:
    if not isinstance(source, dict) or name not in source:
        raise ValueError(f"op {op.id} ({op.kind}, {op.outcome}): missing field {name!r}")
    return source[name]


class Model(Protocol):
    """What the checker needs from a sequential specification."""

    name: str
    kinds: frozenset[str]

    def init(self) -> State: ...

    def prepare(self, op: Op) -> Prepared | None:
        """The op in the model's compact form, or None when it constrains nothing
        (a failed write, an unanswered read). Raises ValueError on a malformed op."""
        ...

    def step(self, state: State, p: Prepared) -> tuple[bool, State]:
        """May `p` take effect in `state`? If so, the state after it."""
        ...

    def describe(self, state: State) -> Any:
        """A JSON-able rendering of a state, for failure explanations."""
        ...

    def overwrites(self, p: Prepared) -> bool:
        """True if `p` is a blind write: whatever an info op applied just
        before it contributed, the state after `p` is the same as (or admits
        at least as much as) the state `p` gives without that info op. The
        checker then never tries `p` right after another info op."""
        ...

    def unobservable_info(self, ops: Sequence[tuple[Op, Prepared]]) -> set[int]:
        """Indices (into `ops`, one key's prepared ops) of info ops that no op
        could observe: the checker drops them, as if they never applied.
        Must be conservative: dropping an op may never turn a linearizable
        history into a non-linearizable one."""
        ...

    def info_deadlines(self, ops: Sequence[tuple[Op, Prepared]]) -> dict[int, float]:
        """For info ops that provably took effect, the time by which they did
        (index into `ops` -> time): a read returned the value only that op
        wrote. The checker then treats them as determinate ops completing at
        that time, which removes most of the cost of indeterminacy."""
        ...


# --------------------------------------------------------------------------
# Register: read / write / cas on values.


class RegisterModel:
    """A single register; cas compares values."""

    name = "register"
    kinds = frozenset({"read", "write", "delete", "cas"})

    def __init__(self, initial: Any = None) -> None:
        self._initial = freeze(initial)

    def init(self) -> State:
        return self._initial

    def prepare(self, op: Op) -> Prepared | None:
        kind, outcome = op.kind, op.outcome
        if kind == "read":
            if outcome != "ok":
                return None
            return ("r", freeze(_field(op, op.output, "value")))
        if kind in ("write", "delete"):
            if outcome == "fail":
                return None
            return ("w", None if kind == "delete" else freeze(op.value))
        if kind == "cas":
            expected = freeze(_field(op, op.value, "expected"))
            if outcome == "fail":
                return ("cf", expected) if _is_precondition_failure(op) else None
            # ok and info alike: an info cas that cannot apply simply never did.
            return ("c", expected, freeze(_field(op, op.value, "new")))
        raise ValueError(f"op {op.id}: the register model has no kind {kind!r}")

    def step(self, state: State, p: Prepared) -> tuple[bool, State]:
        code = p[0]
        if code == "r":
            return p[1] == state, state
        if code == "w":
            return True, p[1]
        if code == "c":
            if p[1] == state:
                return True, p[2]
            return False, state
        # "cf": the register held something other than the expected value.
        return p[1] != state, state

    def describe(self, state: State) -> Any:
        return {"value": state}

    def overwrites(self, p: Prepared) -> bool:
        return bool(p[0] == "w")

    @staticmethod
    def _written(p: Prepared) -> Hashable:
        return p[1] if p[0] == "w" else p[2]

    def unobservable_info(self, ops: Sequence[tuple[Op, Prepared]]) -> set[int]:
        # An info write or cas whose new value no read returns and no cas
        # expects can only ever be followed by a blind write: removing it
        # changes nothing anyone saw. A precondition failure ending after it
        # might have relied on it (when it names a value that is ever
        # written), so those keep it.
        observed: set[Hashable] = set()
        written: set[Hashable] = {self._initial}
        cf_ends: list[tuple[float, Hashable]] = []
        for op, p in ops:
            if p[0] in ("r", "c"):
                observed.add(p[1])
            if p[0] in ("w", "c"):
                written.add(self._written(p))
            elif p[0] == "cf":
                cf_ends.append((op.end_ns, p[1]))
        cf_ends = [(end, e) for end, e in cf_ends if e in written]
        drop: set[int] = set()
        for i, (op, p) in enumerate(ops):
            if op.outcome != "info":
                continue
            new = self._written(p)
            if new in observed:
                continue
            if any(end > op.invoke_ns and e != new for end, e in cf_ends):
                continue
            drop.add(i)
        return drop

    def info_deadlines(self, ops: Sequence[tuple[Op, Prepared]]) -> dict[int, float]:
        writers: dict[Hashable, int] = {self._initial: 1}
        first_seen: dict[Hashable, float] = {}
        for op, p in ops:
            if p[0] in ("w", "c"):
                v = self._written(p)
                writers[v] = writers.get(v, 0) + 1
            # Observers: a read returning v, an acknowledged cas expecting v.
            if p[0] == "r" or (p[0] == "c" and op.outcome == "ok"):
                first_seen[p[1]] = min(first_seen.get(p[1], math.inf), op.end_ns)
        out: dict[int, float] = {}
        for i, (op, p) in enumerate(ops):
            if op.outcome == "info":
                v = self._written(p)
                if writers.get(v) == 1 and v in first_seen:
                    out[i] = first_seen[v]
        return out


# --------------------------------------------------------------------------
# Versioned register: medkv's records.

# State: (value, version, exact). With exact False, `version` is only a lower
# bound: an info write may have applied at some unknown later index.
VState = tuple[Hashable, int, bool]


class VersionedRegisterModel:
    """A record whose successful writes get strictly increasing versions."""

    name = "versioned-register"
    kinds = frozenset({"read", "write", "delete", "cas"})

    def init(self) -> State:
        return (None, 0, True)

    def prepare(self, op: Op) -> Prepared | None:
        kind, outcome = op.kind, op.outcome
        if kind == "read":
            if outcome != "ok":
                return None
            value = freeze(_field(op, op.output, "value"))
            version = op.output.get("version")
            if version is None or (value is None and version == 0):
                return ("r", value, None)
            return ("r", value, int(version))
        if kind in ("write", "delete"):
            value = None if kind == "delete" else freeze(op.value)
            if outcome == "fail":
                return None
            if outcome == "info":
                return ("wi", value)
            return ("w", value, int(_field(op, op.output, "version")))
        if kind == "cas":
            expected = int(_field(op, op.value, "expected_version"))
            new = freeze(_field(op, op.value, "new"))
            if outcome == "fail":
                return ("cf", expected) if _is_precondition_failure(op) else None
            if outcome == "info":
                return ("ci", expected, new)
            return ("c", expected, new, int(_field(op, op.output, "version")))
        raise ValueError(f"op {op.id}: the versioned register model has no kind {kind!r}")

    @staticmethod
    def _may_match(state: VState, expected: int) -> bool:
        value, version, exact = state
        if expected == 0:
            return value is None
        if value is None:
            return False
        return version == expected if exact else expected > version

    def step(self, state: State, p: Prepared) -> tuple[bool, State]:
        value, version, exact = cast(VState, state)
        code = p[0]
        if code == "r":
            if p[1] != value:
                return False, state
            seen = p[2]
            if seen is None:
                return True, state
            if exact:
                return seen == version, state
            # The read pins down the version the info write got.
            if seen > version:
                return True, (value, seen, True)
            return False, state
        if code == "w":
            if p[2] > version:
                return True, (p[1], p[2], True)
            return False, state
        if code == "wi":
            return True, (p[1], version, False)
        if code == "c":
            expected, new_version = p[1], p[3]
            if self._may_match(cast(VState, state), expected) and new_version > max(
                version, expected
            ):
                return True, (p[2], new_version, True)
            return False, state
        if code == "ci":
            expected = p[1]
            if self._may_match(cast(VState, state), expected):
                return True, (p[2], max(version, expected), False)
            return False, state
        # "cf": the version did not match. When the version is only a lower
        # bound, a present value may have had any version: allow it.
        expected = p[1]
        if expected == 0:
            return value is not None, state
        if value is None:
            return True, state
        return (version != expected or not exact), state

    def describe(self, state: State) -> Any:
        value, version, exact = cast(VState, state)
        if exact:
            return {"value": value, "version": version}
        return {"value": value, "version_above": version}

    def overwrites(self, p: Prepared) -> bool:
        # An info write keeps the version's lower bound it finds; an info op
        # just before it can only have raised that bound, and a lower bound
        # admits more, so skipping the earlier info op loses nothing.
        return bool(p[0] == "wi")

    def unobservable_info(self, ops: Sequence[tuple[Op, Prepared]]) -> set[int]:
        # An info write or cas can matter only through its value (a read
        # returns it), its version (a cas or precondition failure names a
        # version no acknowledged write has, or "absent" after an info
        # delete), or by making a later precondition failure true. Versions
        # are unique per key, so a cas naming an acknowledged write's version
        # cannot have seen an info write in between.
        read_values: set[Hashable] = set()
        known: set[int] = {0}
        expected: list[int] = []
        cf: list[tuple[float, int]] = []
        for op, p in ops:
            code = p[0]
            if code == "r":
                read_values.add(p[1])
            elif code == "w":
                known.add(p[2])
            elif code == "c":
                known.add(p[3])
                expected.append(p[1])
            elif code == "ci":
                expected.append(p[1])
            elif code == "cf":
                cf.append((op.end_ns, p[1]))
        unknown_expected = any(e not in known for e in expected)
        expects_absent = 0 in expected
        drop: set[int] = set()
        for i, (op, p) in enumerate(ops):
            if op.outcome != "info":
                continue
            new = p[1] if p[0] == "wi" else p[2]
            if new in read_values or unknown_expected or (new is None and expects_absent):
                continue
            if any(end > op.invoke_ns and (e in known) for end, e in cf):
                continue
            drop.add(i)
        return drop

    def info_deadlines(self, ops: Sequence[tuple[Op, Prepared]]) -> dict[int, float]:
        writers: dict[Hashable, int] = {}
        first_seen: dict[Hashable, float] = {}
        for op, p in ops:
            code = p[0]
            if code in ("w", "wi", "c", "ci"):
                v = p[1] if code in ("w", "wi") else p[2]
                writers[v] = writers.get(v, 0) + 1
            elif code == "r":
                first_seen[p[1]] = min(first_seen.get(p[1], math.inf), op.end_ns)
        out: dict[int, float] = {}
        for i, (op, p) in enumerate(ops):
            if op.outcome == "info":
                v = p[1] if p[0] == "wi" else p[2]
                # The absent value is also the initial state: never proof.
                if v is not None and writers.get(v) == 1 and v in first_seen:
                    out[i] = first_seen[v]
        return out


# --------------------------------------------------------------------------
# Reference execution: linearizable histories by construction.


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Parameters of `simulate_register_history`."""

    ops: int = 1000
    keys: int = 10
    concurrency: int = 5
    info_rate: float = 0.02
    values: int = 5  # register values are drawn from range(values)...
    unique_values: bool = False  # ...unless every write gets a value of its own
    versioned: bool = False
    read_ratio: float = 0.5
    cas_ratio: float = 0.2
    max_gap_ns: int = 2_000_000
    max_duration_ns: int = 5_000_000


@dataclass(slots=True)
class _Pending:
    op: Op
    applies: bool  # False: an info op that never takes effect


def simulate_register_history(cfg: SimConfig, seed: int = 0) -> list[Op]:
    """Run random concurrent clients against atomic registers.

    A discrete-event simulation: each op takes effect at one instant inside
    its [invoke, complete] interval (an info op at any instant after its
    invocation, or never), so the history is linearizable by construction.
    A client that gets an info answer is retired and replaced by a fresh
    process id, as Jepsen does, because its op may still be in flight.
    """
    rng = random.Random(seed)
    key_names = [f"k{i}" for i in range(cfg.keys)]
    reg: dict[str, tuple[Any, int]] = dict.fromkeys(key_names, (None, 0))
    next_index = [1]  # the shared "Raft index": gaps appear between a key's versions
    events: list[tuple[int, int, int, str]] = []  # (time, seq, slot or op id, what)
    seq = [0]

    def push(t: int, what: str, ref: int) -> None:
        seq[0] += 1
        heapq.heappush(events, (t, seq[0], ref, what))

    ops: list[Op] = []
    pending: dict[int, _Pending] = {}
    process_of_slot = list(range(cfg.concurrency))
    next_process = cfg.concurrency
    for slot in range(cfg.concurrency):
        push(rng.randrange(cfg.max_gap_ns), "invoke", slot)

    def effect(p: _Pending) -> None:
        op = p.op
        value, version = reg[op.key]  # type: ignore[index]
        outcome, output, new = _execute(cfg.versioned, op, value, version, next_index)
        if new is not None:
            reg[op.key] = new  # type: ignore[index]
        if op.outcome != "info":
            op.outcome, op.output = outcome, output

    while events:
        t, _, ref, what = heapq.heappop(events)
        if what == "invoke":
            slot = ref
            if len(ops) >= cfg.ops:
                continue
            op = _random_op(cfg, rng, len(ops), process_of_slot[slot], key_names, reg, t)
            ops.append(op)
            duration = 1 + rng.randrange(cfg.max_duration_ns)
            is_info = rng.random() < cfg.info_rate
            applies = not is_info or rng.random() < 0.5
            if is_info:
                op.outcome = "info"
                # An indeterminate op may still take effect long after the
                # client gave up on it.
                at = t + 1 + rng.randrange(3 * duration)
            else:
                at = t + 1 + rng.randrange(max(duration - 1, 1))
            pending[op.id] = _Pending(op, applies)
            if applies:
                push(at, "effect", op.id)
            push(t + duration + 1, "complete", op.id)
            op.meta["slot"] = slot
        elif what == "effect":
            effect(pending[ref])
        else:
            p = pending[ref]
            p.op.complete_ns = t
            slot = p.op.meta.pop("slot")
            if p.op.outcome == "info":
                p.op.output = None
                p.op.error = "DEADLINE_EXCEEDED"
                process_of_slot[slot] = next_process
                next_process += 1
            push(t + rng.randrange(cfg.max_gap_ns), "invoke", slot)
    return ops


def _random_op(
    cfg: SimConfig,
    rng: random.Random,
    op_id: int,
    process: int,
    keys: list[str],
    reg: dict[str, tuple[Any, int]],
    t: int,
) -> Op:
    key = rng.choice(keys)
    value: Any
    r = rng.random()
    if r < cfg.read_ratio:
        kind, value = "read", None
    elif r < cfg.read_ratio + cfg.cas_ratio:
        kind = "cas"
        current, version = reg[key]
        if cfg.versioned:
            # Mostly the version a client would just have read; sometimes stale.
            expected = version if rng.random() < 0.7 else max(0, version - rng.randrange(1, 5))
            value = {"expected_version": expected, "new": rng.randrange(cfg.values)}
        else:
            expected = current if rng.random() < 0.6 else rng.randrange(cfg.values)
            value = {"expected": expected, "new": rng.randrange(cfg.values)}
    else:
        kind, value = "write", rng.randrange(cfg.values)
    if cfg.unique_values and kind != "read":
        # A fresh value per write, as the medkv workloads use.
        if kind == "write":
            value = f"v{op_id}"
        else:
            value["new"] = f"v{op_id}"
    return Op(id=op_id, process=process, kind=kind, key=key, value=value, invoke_ns=t)


def _execute(
    versioned: bool,
    op: Op,
    value: Any,
    version: int,
    next_index: list[int],
) -> tuple[Outcome, Any, tuple[Any, int] | None]:
    """Apply `op` atomically; returns (outcome, output, new register state or None)."""

    def assign() -> int:
        # Other keys' writes (and leader no-ops) consume indexes too.
        next_index[0] += 1 + (op.id % 3)
        return next_index[0]

    if op.kind == "read":
        return "ok", ({"value": value, "version": version} if versioned else {"value": value}), None
    if op.kind == "write":
        if versioned:
            v = assign()
            return "ok", {"version": v}, (op.value, v)
        return "ok", None, (op.value, 0)
    # cas
    if versioned:
        e = op.value["expected_version"]
        matches = (value is None) if e == 0 else (value is not None and version == e)
    else:
        matches = value == op.value["expected"]
    if not matches:
        return "fail", {"precondition_failed": True}, None
    if versioned:
        v = assign()
        return "ok", {"version": v}, (op.value["new"], v)
    return "ok", None, (op.value["new"], 0)


def model_for(name: str) -> Callable[[], Model]:
    """Look a model up by its `name` (for command lines and summaries)."""
    table: dict[str, Callable[[], Model]] = {
        RegisterModel.name: RegisterModel,
        VersionedRegisterModel.name: VersionedRegisterModel,
    }
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(table)}") from None
