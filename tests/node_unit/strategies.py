"""Hypothesis strategies for commands, shared by the command and state-machine tests."""

from __future__ import annotations

from typing import TypedDict

from hypothesis import strategies as st

from node.commands import (
    BATCH_CHECK,
    BATCH_DELETE,
    BATCH_PUT,
    AuditAnchor,
    Batch,
    BatchOp,
    Command,
    CompareAndSet,
    Delete,
    ErasePatient,
    Noop,
    Put,
    RegisterSession,
    SetSettings,
)
from node.settings import BOUNDS

U64 = (1 << 64) - 1


class Head(TypedDict):
    """The fields every write command carries."""

    client_id: bytes
    session: int
    seq: int
    ack_below: int
    ts_ms: int
    patient_id: str


# Valid identifiers: any text without control characters or surrogates.
ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=24)
values = st.binary(max_size=64)
uint64 = st.integers(0, U64)
client_ids = st.binary(min_size=16, max_size=16)


@st.composite
def write_heads(draw: st.DrawFn) -> Head:
    seq = draw(st.integers(1, U64))
    return {
        "client_id": draw(client_ids),
        "session": draw(st.integers(1, U64)),
        "seq": seq,
        "ack_below": draw(st.integers(0, seq)),
        "ts_ms": draw(uint64),
        "patient_id": draw(ids),
    }


batch_ops = st.one_of(
    st.builds(BatchOp, st.just(BATCH_PUT), ids, values),
    st.builds(BatchOp, st.just(BATCH_DELETE), ids),
    st.builds(lambda r, v: BatchOp(BATCH_CHECK, r, expected_version=v), ids, uint64),
)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    ops = draw(st.lists(batch_ops, min_size=1, max_size=8))
    seen: set[str] = set()
    unique: list[BatchOp] = []
    for op in ops:  # valid batches write a record at most once
        if op.kind != BATCH_CHECK:
            if op.record_id in seen:
                continue
            seen.add(op.record_id)
        unique.append(op)
    return Batch(**draw(write_heads()), ops=tuple(unique))


def _with_head(cls: type, **fields: st.SearchStrategy[object]) -> st.SearchStrategy[Command]:
    return st.builds(lambda head, **kw: cls(**head, **kw), write_heads(), **fields)


commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Noop, uint64),
    _with_head(Put, record_id=ids, value=values),
    _with_head(CompareAndSet, record_id=ids, value=values, expected_version=uint64),
    _with_head(Delete, record_id=ids, expected_version=st.none() | uint64),
    batches(),
    _with_head(ErasePatient),
    st.builds(
        lambda ts, cid, nonce: RegisterSession(ts_ms=ts, client_id=cid, nonce=nonce),
        uint64, client_ids, uint64,
    ),
    st.builds(
        lambda ts, node_id, seq, h: AuditAnchor(ts_ms=ts, node_id=node_id, seq=seq, chain_hash=h),
        uint64, st.integers(1, 2**64 - 1), uint64, st.binary(min_size=32, max_size=32),
    ),
    st.builds(
        lambda ts, nonce, seed, changes: SetSettings(
            ts_ms=ts, nonce=nonce, seed=seed, changes=tuple(sorted(changes.items()))
        ),
        uint64, uint64, st.booleans(),
        st.dictionaries(
            st.sampled_from(sorted(BOUNDS)), st.integers(1, 1_000), min_size=1
        ).map(lambda d: {k: max(v, BOUNDS[k][0]) for k, v in d.items()}),
    ),
)
