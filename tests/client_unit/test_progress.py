"""client/progress.py: one line, in place on a terminal, sparse plain lines elsewhere."""

from __future__ import annotations

import io

from client.progress import ProgressLine


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_writes_a_plain_line_per_interval_and_the_last_state() -> None:
    now = [0.0]
    out = io.StringIO()
    with ProgressLine(out, 64, "scan", "partitions", interval=10.0, clock=lambda: now[0]) as p:
        for i in range(1, 65):
            now[0] = i * 0.5  # 32 s in all: lines at 0.5 s, 10.5 s, 20.5 s, 30.5 s
            p.set(i, f"{i * 3} records")
    lines = out.getvalue().splitlines()
    assert lines[0] == "scan: 1/64 partitions, 3 records"
    assert lines[-1] == "scan: 64/64 partitions, 192 records"
    assert len(lines) == 5 and "\r" not in out.getvalue()


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    out = Tty()
    with ProgressLine(out, 8, "scan", "partitions") as p:
        assert p.tty
        for i in range(1, 9):
            p.advance(1, f"{i} records")
    text = out.getvalue()
    assert "\r" in text and text.count("\n") == 1, repr(text)
    assert "8/8" in text.rsplit("\r", 1)[-1] and "8 records" in text.rsplit("\r", 1)[-1]


def test_close_is_idempotent_and_progress_never_exceeds_the_total() -> None:
    out = io.StringIO()
    p = ProgressLine(out, 2, "x", "items", clock=lambda: 0.0)
    p.set(5)
    p.close()
    p.close()
    assert out.getvalue().splitlines() == ["x: 2/2 items", "x: 2/2 items"]
