"""The benchmark runs end to end (a smoke test: no timing is asserted)."""

from __future__ import annotations

import pytest

from consensus import bench


def test_bench_commits_and_applies_everything_on_all_nodes() -> None:
    res = bench.run(entries=3000, batch=250, size=200)
    assert res.entries == 3000
    assert res.readies > 0 and res.messages > 0


def test_bench_main_prints_machine_and_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--entries", "500", "--batch", "50"]) == 0
    out = capsys.readouterr().out
    assert "os.cpu_count()=" in out
    assert "entries/s" in out
