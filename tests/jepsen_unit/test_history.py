"""The history format: recording from threads and asyncio, JSONL round trips."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from pathlib import Path

import pytest

from jepsen_like.history import HistoryRecorder, Op, dump_history, load_history


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000

    def __call__(self) -> int:
        self.t += 7
        return self.t


def test_invoke_and_complete_record_times_from_the_run_start() -> None:
    rec = HistoryRecorder(clock_ns=FakeClock())
    a = rec.invoke(1, "write", "k", 5)
    b = rec.invoke(2, "read", "k")
    rec.complete(b, "ok", {"value": 5})
    rec.complete(a, "info", error="DEADLINE_EXCEEDED")
    ops = rec.history()
    assert [o.id for o in ops] == [a, b]
    assert ops[0].invoke_ns == 7 and ops[1].invoke_ns == 14
    assert ops[1].complete_ns == 21 and ops[0].complete_ns == 28
    assert ops[0].outcome == "info" and ops[0].error == "DEADLINE_EXCEEDED"
    assert math.isinf(ops[0].end_ns) and ops[0].latency_ns == 21
    assert ops[1].end_ns == 21.0 and ops[1].output == {"value": 5}


def test_completing_twice_or_with_a_bad_outcome_is_refused() -> None:
    rec = HistoryRecorder()
    op = rec.invoke(1, "write", "k", 1)
    with pytest.raises(ValueError):
        rec.complete(op, "maybe")  # type: ignore[arg-type]
    rec.complete(op, "ok")
    with pytest.raises(ValueError):
        rec.complete(op, "fail")
    with pytest.raises(KeyError):
        rec.complete(999, "ok")


def test_pending_ops_become_info_in_the_history_but_not_in_the_snapshot() -> None:
    rec = HistoryRecorder()
    rec.invoke(1, "write", "k", 1)
    assert rec.ops()[0].outcome is None
    op = rec.history()[0]
    assert op.outcome == "info" and op.complete_ns is None and math.isinf(op.end_ns)


def test_recording_from_many_threads_loses_nothing() -> None:
    rec = HistoryRecorder()

    def client(p: int) -> None:
        for i in range(200):
            op = rec.invoke(p, "append", "k", p * 1000 + i)
            rec.complete(op, "ok")

    threads = [threading.Thread(target=client, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = rec.history()
    assert len(ops) == 1600 and len({o.id for o in ops}) == 1600
    assert {o.value for o in ops} == {p * 1000 + i for p in range(8) for i in range(200)}
    assert all(
        o.outcome == "ok" and o.complete_ns is not None and o.complete_ns >= o.invoke_ns
        for o in ops
    )


def test_recording_from_asyncio_tasks() -> None:
    rec = HistoryRecorder()

    async def client(p: int) -> None:
        for i in range(20):
            op = rec.invoke(p, "write", f"k{i % 3}", i)
            await asyncio.sleep(0)
            rec.complete(op, "ok" if i % 2 else "fail")

    async def run() -> None:
        await asyncio.gather(*(client(p) for p in range(5)))

    asyncio.run(run())
    ops = rec.history()
    assert len(ops) == 100
    by_process: dict[int | str, list[Op]] = {}
    for o in ops:
        by_process.setdefault(o.process, []).append(o)
    for seq in by_process.values():
        # One client's ops never overlap: each starts after the previous ended.
        for before, after in itertools.pairwise(seq):
            assert before.complete_ns is not None and after.invoke_ns >= before.complete_ns


def test_jsonl_round_trip(tmp_path: Path) -> None:
    rec = HistoryRecorder()
    a = rec.invoke("c1", "cas", "k", {"expected_version": 3, "new": [1, 2]}, meta={"node": 2})
    rec.complete(a, "ok", {"version": 9})
    b = rec.invoke("c2", "read", None)
    rec.complete(b, "info", error="UNAVAILABLE")
    rec.invoke("c3", "read", "k")  # never answered
    path = tmp_path / "history.jsonl"
    rec.dump(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["id"] in (0, 1, 2) for line in lines)
    back = load_history(path)
    assert [o.to_json() for o in back] == [o.to_json() for o in rec.history()]
    assert back[0].meta == {"node": 2} and back[2].outcome == "info"
    dump_history(tmp_path / "again.jsonl", back)
    assert load_history(tmp_path / "again.jsonl") == back


def test_loading_a_broken_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"id": 0, "process": 1, "kind": "read", "invoke_ns": 1}\n\n{"id": 1}\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:3"):
        load_history(path)
    path.write_text('{"id": 0, "process": 1, "kind": "read", "invoke_ns": 1, "outcome": "maybe"}\n')
    with pytest.raises(ValueError, match="outcome"):
        load_history(path)
