"""The HTML report: valid, self-contained, with every section and the verdicts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

from jepsen_like.checkers.linearizable import check_linearizable
from jepsen_like.checkers.models import RegisterModel, SimConfig, simulate_register_history
from jepsen_like.history import Op
from jepsen_like.report import FaultWindow, history_stats, overall_verdict, write_report

VOID = {
    "meta",
    "br",
    "hr",
    "img",
    "input",
    "link",
    "area",
    "base",
    "col",
    "embed",
    "source",
    "track",
    "wbr",
}


class Structure(HTMLParser):
    """Checks that every element is closed in order and collects ids, tags and text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}
        self.errors: list[str] = []
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value:
                self.external.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def sample_history() -> list[Op]:
    ops = simulate_register_history(
        SimConfig(ops=600, keys=5, concurrency=5, info_rate=0.05), seed=11
    )
    # Spread the ops over ~3 s so the time axes have something to show.
    for op in ops:
        op.invoke_ns *= 100
        if op.complete_ns is not None:
            op.complete_ns *= 100
    return ops


def test_report_renders_valid_html_with_all_sections(tmp_path: Path) -> None:
    ops = sample_history()
    lin = check_linearizable(ops, RegisterModel())
    summary = {
        "name": "register under partitions",
        "nodes": 3,
        "checkers": {
            "linearizable": lin.to_json(),
            "append": {"valid": False, "verdict": "invalid", "counts": {"lost": 1}},
        },
    }
    end = max(o.complete_ns or 0 for o in ops)
    windows = [
        FaultWindow("partition", end // 4, end // 2, "isolate node 1"),
        FaultWindow("kill", end * 3 // 4, None, "node <2> & friends"),
    ]
    page = write_report(tmp_path / "run", ops, summary, windows)
    doc = page.read_text(encoding="utf-8")
    parser = Structure()
    parser.feed(doc)
    parser.close()
    assert doc.startswith("<!DOCTYPE html>")
    assert parser.errors == [] and parser.stack == []
    assert {"verdicts", "faults", "latency", "throughput", "outcomes", "details"} <= parser.ids
    assert parser.external == [] and "<script" not in doc  # self-contained
    assert (
        parser.tags["svg"] == len({o.kind for o in ops}) + 2
    )  # latency per kind, throughput, outcomes
    text = " ".join(parser.text)
    assert "INVALID" in text  # overall verdict: one checker failed
    assert "isolate node 1" in text and "node <2> & friends" in text  # escaped, then parsed back
    for kind in ("read", "write", "cas"):
        assert f"latency of {kind}" in doc
    # Verdicts come before the plots.
    assert doc.index('id="verdicts"') < doc.index('id="latency"') < doc.index('id="throughput"')
    # Each SVG is well-formed XML on its own, with shaded fault windows.
    start = 0
    while (i := doc.find("<svg", start)) >= 0:
        j = doc.index("</svg>", i) + len("</svg>")
        ET.fromstring(doc[i:j])
        start = j
    assert doc.count('class="fault"') == 2 * (len({o.kind for o in ops}) + 1)

    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["verdict"] == "invalid"
    assert saved["checkers"]["linearizable"]["valid"] is True
    assert saved["history_stats"]["ops"] == len(ops)
    per_kind = saved["history_stats"]["per_kind"]
    assert sum(sum(k["counts"].values()) for k in per_kind.values()) == len(ops)
    assert [w["nemesis"] for w in saved["fault_windows"]] == ["partition", "kill"]


def test_outcome_counts_in_the_table_match_the_history(tmp_path: Path) -> None:
    ops = sample_history()
    stats = history_stats(ops)
    for kind, entry in stats["per_kind"].items():
        for outcome, n in entry["counts"].items():
            assert n == sum(1 for o in ops if o.kind == kind and o.outcome == outcome)
        assert entry["ok_latency_ms"]["p50"] <= entry["ok_latency_ms"]["p99"]
    page = write_report(tmp_path, ops, {"checkers": {}}, [])
    doc = page.read_text()
    writes = stats["per_kind"]["write"]["counts"]
    row = f"<tr><td>write</td><td>{writes.get('ok', 0)}</td><td>{writes.get('fail', 0)}</td><td>{writes.get('info', 0)}</td>"
    assert row in doc
    assert "no faults injected" in doc


def test_overall_verdict() -> None:
    assert overall_verdict({"checkers": {"a": {"valid": True}}}) == "valid"
    assert (
        overall_verdict(
            {"checkers": {"a": {"valid": True}, "b": {"valid": False, "verdict": "unknown"}}}
        )
        == "unknown"
    )
    assert (
        overall_verdict({"checkers": {"a": {"valid": False}, "b": {"verdict": "unknown"}}})
        == "invalid"
    )
    assert overall_verdict({}) == "unknown"


def test_an_empty_history_still_renders(tmp_path: Path) -> None:
    page = write_report(tmp_path, [], {"checkers": {}}, [])
    parser = Structure()
    parser.feed(page.read_text())
    assert parser.errors == [] and "latency" in parser.ids
