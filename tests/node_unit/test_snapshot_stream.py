"""Snapshot streams on real LevelDB (node.snapshots): a partition streamed from
a LevelDB snapshot, cut into arbitrary chunks, checked and staged by the
receiver, then installed, holds exactly the sender's state; a stream that
sends more than it declared or ends without its last chunk is refused and
leaves nothing behind."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import plyvel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import FailedPrecondition, InvalidArgument
from node.snapshots import SnapshotManager, install_staged
from tests.node_unit.snapshot_helpers import (
    PARTITION,
    FakeHost,
    Write,
    apply_writes,
    chunks_of,
    open_sm,
    send_side,
    staging_keys,
    stream,
)

PATIENTS = ["Jane Q. Patient", "John Roe", "p-ü", ""]
RECORDS = ["allergies", "notes", "r/1", "x" * 40]

writes_st = st.lists(
    st.tuples(
        st.sampled_from(PATIENTS[:3]),
        st.sampled_from(RECORDS),
        st.binary(min_size=1, max_size=400),
        st.booleans(),
    ),
    min_size=1,
    max_size=50,
)


def _direct(fn: object) -> None:
    fn()  # type: ignore[operator]


class Pair:
    """A sender and a receiver node, each with its own LevelDB and manager."""

    def __init__(self, root: Path, dst_hash_key: bytes | None = None) -> None:
        self.src_db = plyvel.DB(str(root / "src"), create_if_missing=True)
        self.dst_db = plyvel.DB(str(root / "dst"), create_if_missing=True)
        self.src = open_sm(self.src_db)
        self.dst = open_sm(self.dst_db) if dst_hash_key is None else open_sm(
            self.dst_db, dst_hash_key
        )
        self.src_host = FakeHost(1, [self.src])
        self.dst_host = FakeHost(2, [self.dst])
        self.src_mgr = SnapshotManager(self.src_host)  # type: ignore[arg-type]
        self.dst_mgr = SnapshotManager(self.dst_host)  # type: ignore[arg-type]

    def dst_items(self) -> list[tuple[bytes, bytes]]:
        return list(self.dst_db.iterator())

    def close(self) -> None:
        self.src_host.close(self.src_mgr)
        self.dst_host.close(self.dst_mgr)
        self.src_db.close()
        self.dst_db.close()


def _logical(sm: object) -> bytes:
    return sm.store.snapshot_bytes()  # type: ignore[attr-defined, no-any-return]


@settings(max_examples=30, deadline=None)
@given(
    writes=writes_st,
    stale=st.lists(st.tuples(st.sampled_from(PATIENTS[:3]), st.sampled_from(RECORDS),
                             st.binary(min_size=1, max_size=50), st.just(False)), max_size=5),
    piece=st.integers(1, 3000),
)
def test_any_record_set_round_trips_through_any_chunking(
    writes: list[Write], stale: list[Write], piece: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        pair = Pair(Path(d))
        try:
            apply_writes(pair.src, writes)
            # What the snapshot must replace: a replica behind the sender.
            apply_writes(pair.dst, stale[: len(writes) - 1], term=1)

            async def go() -> None:
                msg, declared, data = await send_side(pair.src_mgr)
                assert msg.snapshot is not None
                assert msg.snapshot.meta.index == pair.src.applied_index
                assert len(data) <= declared  # the declared size bounds the stream
                group, got = await pair.dst_mgr.receive(
                    stream(chunks_of(msg, declared, data, piece)), 1 << 30
                )
                assert group == PARTITION and got.snapshot == msg.snapshot
                meta = got.snapshot.meta
                await asyncio.get_running_loop().run_in_executor(
                    None, install_staged, pair.dst.store, meta.index, meta.term, _direct
                )

            asyncio.run(go())
            pair.dst.reload()
            assert pair.dst.applied_index == pair.src.applied_index
            assert _logical(pair.dst) == _logical(pair.src)
            assert pair.dst.session_count == pair.src.session_count
            assert staging_keys(pair.dst) == []
        finally:
            pair.close()


def test_a_receiver_with_its_own_hash_key_holds_the_same_records(tmp_path: Path) -> None:
    pair = Pair(tmp_path, dst_hash_key=b"another node's key.............!")
    try:
        writes = [(p, r, f"{p}/{r}/{i}".encode(), False)
                  for i, (p, r) in enumerate((p, r) for p in PATIENTS[:3] for r in RECORDS)]
        apply_writes(pair.src, writes + writes[:4])

        async def go() -> None:
            msg, declared, data = await send_side(pair.src_mgr)
            _, got = await pair.dst_mgr.receive(stream(chunks_of(msg, declared, data, 100)), 1 << 30)
            assert got.snapshot is not None
            install_staged(pair.dst.store, got.snapshot.meta.index, got.snapshot.meta.term, _direct)

        asyncio.run(go())
        pair.dst.reload()
        for p in PATIENTS[:3]:
            for r in RECORDS:
                assert pair.dst.history(p, r) == pair.src.history(p, r)
    finally:
        pair.close()


@settings(max_examples=20, deadline=None)
@given(writes=writes_st, short=st.integers(1, 200), piece=st.integers(1, 2000))
def test_more_bytes_than_declared_are_refused_and_nothing_stays(
    writes: list[Write], short: int, piece: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        pair = Pair(Path(d))
        try:
            apply_writes(pair.src, writes)
            before = pair.dst_items()

            async def go() -> None:
                msg, _, data = await send_side(pair.src_mgr)
                declared = max(1, len(data) - short)
                with pytest.raises(InvalidArgument, match=r"more than the \d+ bytes it declared"):
                    await pair.dst_mgr.receive(stream(chunks_of(msg, declared, data, piece)), 1 << 30)

            asyncio.run(go())
        finally:
            pair.close()  # joins the background discard
        db = plyvel.DB(str(Path(d) / "dst"))
        try:
            assert list(db.iterator()) == before
        finally:
            db.close()


@settings(max_examples=20, deadline=None)
@given(writes=writes_st, cut=st.floats(0.0, 1.0), piece=st.integers(1, 2000),
       mark_last=st.booleans())
def test_a_truncated_stream_is_refused_and_nothing_is_installed(
    writes: list[Write], cut: float, piece: int, mark_last: bool
) -> None:
    with tempfile.TemporaryDirectory() as d:
        pair = Pair(Path(d))
        try:
            apply_writes(pair.src, writes)
            before = pair.dst_items()

            async def go() -> None:
                msg, declared, data = await send_side(pair.src_mgr)
                chunks = chunks_of(msg, declared, data, piece)
                # Cut the stream after some data chunk: either it simply ends
                # (no last chunk), or a lying sender marks a cut stream complete.
                keep = max(1, int(cut * (len(chunks) - 1)))
                cut_chunks = chunks[:keep]
                if mark_last and keep < len(chunks) - 1:
                    cut_chunks.append(type(chunks[0])(
                        from_node=1, to_node=2, group=PARTITION, last=True,
                        offset=sum(len(c.data) for c in cut_chunks),
                    ))
                    expect = "truncated"
                else:
                    expect = "ended without its last chunk"
                with pytest.raises(InvalidArgument, match=expect):
                    await pair.dst_mgr.receive(stream(cut_chunks), 1 << 30)

            asyncio.run(go())
        finally:
            pair.close()
        db = plyvel.DB(str(Path(d) / "dst"))
        try:
            assert list(db.iterator()) == before
        finally:
            db.close()


def test_bad_streams_get_precise_refusals(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    try:
        apply_writes(pair.src, [("Jane Q. Patient", "notes", b"v", False)] * 3)

        async def go() -> None:
            msg, declared, data = await send_side(pair.src_mgr)
            good = chunks_of(msg, declared, data, 50)
            no_header = [type(good[0])(group=PARTITION, to_node=2, data=b"x", total_size=9)]
            with pytest.raises(InvalidArgument, match="does not start with a header"):
                await pair.dst_mgr.receive(stream(no_header), 1 << 30)
            with pytest.raises(InvalidArgument, match="addressed to node 3"):
                await pair.dst_mgr.receive(stream(chunks_of(msg, declared, data, 50, to=3)), 1 << 30)
            with pytest.raises(InvalidArgument, match="the limit is"):
                await pair.dst_mgr.receive(stream(good), declared - 1)
            gap = list(good)
            del gap[1]
            with pytest.raises(InvalidArgument, match="offset"):
                await pair.dst_mgr.receive(stream(gap), 1 << 30)
            other = [type(c)() for c in good]
            for o, c in zip(other, good, strict=True):
                o.CopyFrom(c)
                o.group = PARTITION + 1
            with pytest.raises(FailedPrecondition, match="holds no replica of partition 6"):
                await pair.dst_mgr.receive(stream(other), 1 << 30)
            # Garbage data behind a valid header.
            garbage = chunks_of(msg, declared, b"\x01\xc1\xc1" + data[3:], 50)
            with pytest.raises(InvalidArgument, match="snapshot of partition 5"):
                await pair.dst_mgr.receive(stream(garbage), 1 << 30)
            with pytest.raises(InvalidArgument, match="empty snapshot stream"):
                await pair.dst_mgr.receive(stream([]), 1 << 30)

        asyncio.run(go())
    finally:
        pair.close()
