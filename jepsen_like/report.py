"""A run's report: summary.json and a self-contained report.html.

The HTML has no scripts and no external assets: plots are inline SVG, so the
file can be archived with the run and opened anywhere. Sections, top to
bottom: the checkers' verdicts, the fault windows, latency over time per
operation kind (fault windows shaded and labelled by nemesis), throughput over
time, outcomes per kind, and the checkers' details.

`summary` is what the runner knows: at least {"checkers": {name: result}},
each result a checker's `to_json()` (with "valid" and, optionally,
"verdict"); anything else in it is shown as run parameters.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jepsen_like.history import OUTCOMES, Op

OUTCOME_COLOURS = {"ok": "#1f77b4", "fail": "#d62728", "info": "#ff7f0e"}
_FAULT_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#2ca02c"]
_MAX_POINTS_PER_PLOT = 6000
_W, _H = 900, 260
_ML, _MR, _MT, _MB = 64, 16, 22, 36  # plot margins


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """When a nemesis was active; end_ns None means it was still active at the end."""

    nemesis: str
    start_ns: int
    end_ns: int | None = None
    detail: str = ""


def history_stats(history: Sequence[Op]) -> dict[str, Any]:
    """Counts and latency percentiles per kind and outcome."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    lat: dict[str, list[int]] = defaultdict(list)
    end = 0
    for op in history:
        counts[op.kind][op.outcome or "pending"] += 1
        if op.outcome == "ok" and op.latency_ns is not None:
            lat[op.kind].append(op.latency_ns)
        end = max(end, op.complete_ns or op.invoke_ns)
    per_kind: dict[str, Any] = {}
    for kind in sorted(counts):
        values = sorted(lat[kind])
        per_kind[kind] = {
            "counts": dict(counts[kind]),
            "ok_latency_ms": {f"p{q}": round(_percentile(values, q) / 1e6, 3) for q in (50, 90, 99)}
            if values
            else {},
        }
    return {"ops": len(history), "duration_s": round(end / 1e9, 3), "per_kind": per_kind}


def _percentile(sorted_values: list[int], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[i])


def overall_verdict(summary: Mapping[str, Any]) -> str:
    """ "valid" if every checker is, "invalid" if any is, else "unknown"."""
    verdicts = [_verdict_of(r) for r in (summary.get("checkers") or {}).values()]
    if not verdicts:
        return "unknown"
    if "invalid" in verdicts:
        return "invalid"
    if all(v == "valid" for v in verdicts):
        return "valid"
    return "unknown"


def _verdict_of(result: Mapping[str, Any]) -> str:
    v = result.get("verdict")
    if v in ("valid", "invalid", "unknown"):
        return str(v)
    valid = result.get("valid")
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


def write_report(
    out_dir: str | Path,
    history: Iterable[Op],
    summary: Mapping[str, Any],
    fault_windows: Iterable[FaultWindow],
) -> Path:
    """Write summary.json and report.html into out_dir; returns report.html's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ops = sorted(history, key=lambda o: o.invoke_ns)
    windows = sorted(fault_windows, key=lambda w: w.start_ns)
    stats = history_stats(ops)
    full = {
        **summary,
        "verdict": overall_verdict(summary),
        "history_stats": stats,
        "fault_windows": [asdict(w) for w in windows],
    }
    (out / "summary.json").write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(ops, full, windows), encoding="utf-8")
    return page


# --------------------------------------------------------------------------
# HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f4f4f4} .valid{color:#fff;background:#2b8a3e} .invalid{color:#fff;background:#c92a2a}
.unknown{color:#222;background:#fcc419} .badge{padding:2px 10px;border-radius:4px;font-weight:bold}
pre{background:#f8f8f8;border:1px solid #eee;padding:8px;overflow-x:auto;font-size:12px;max-height:400px}
svg{display:block;margin:8px 0} .legend span{margin-right:16px}
"""


def render_html(
    ops: Sequence[Op], summary: Mapping[str, Any], windows: Sequence[FaultWindow]
) -> str:
    end_ns = max(
        [o.complete_ns or o.invoke_ns for o in ops]
        + [w.end_ns or w.start_ns for w in windows]
        + [1]
    )
    palette = _nemesis_palette(windows)
    verdict = str(summary.get("verdict", overall_verdict(summary)))
    title = str(summary.get("name", "medkv fault-injection run"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p>Overall: <span class="badge {_e(verdict)}">{_e(verdict.upper())}</span> '
        f"&middot; {len(ops)} operations over {end_ns / 1e9:.1f} s "
        f"&middot; {len(windows)} fault windows</p>",
        _verdicts_section(summary),
        _params_section(summary),
        _faults_section(windows, palette),
        _latency_section(ops, windows, palette, end_ns),
        _throughput_section(ops, windows, palette, end_ns),
        _outcomes_section(ops),
        _details_section(summary),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _verdicts_section(summary: Mapping[str, Any]) -> str:
    rows = []
    for name, result in (summary.get("checkers") or {}).items():
        v = _verdict_of(result)
        brief = {
            k: result[k]
            for k in ("model", "keys", "ops", "reads", "appends", "counts", "steps")
            if k in result
        }
        rows.append(
            f'<tr><td>{_e(name)}</td><td><span class="badge {v}">{_e(v)}</span></td>'
            f"<td><code>{_e(json.dumps(brief, default=str))}</code></td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="3">no checker results</td></tr>')
    return (
        '<section id="verdicts"><h2>Checker verdicts</h2>'
        "<table><tr><th>checker</th><th>verdict</th><th>summary</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _params_section(summary: Mapping[str, Any]) -> str:
    skip = {"checkers", "history_stats", "fault_windows", "verdict", "name"}
    params = {k: v for k, v in summary.items() if k not in skip}
    if not params:
        return ""
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td><code>{_e(json.dumps(v, default=str))}</code></td></tr>"
        for k, v in params.items()
    )
    return f'<section id="parameters"><h2>Run</h2><table>{rows}</table></section>'


def _nemesis_palette(windows: Sequence[FaultWindow]) -> dict[str, str]:
    names = sorted({w.nemesis for w in windows})
    return {n: _FAULT_COLOURS[i % len(_FAULT_COLOURS)] for i, n in enumerate(names)}


def _faults_section(windows: Sequence[FaultWindow], palette: Mapping[str, str]) -> str:
    rows = "".join(
        f'<tr><td><span style="color:{palette[w.nemesis]}">&#9632;</span> {_e(w.nemesis)}</td>'
        f"<td>{w.start_ns / 1e9:.2f}</td>"
        f"<td>{'(end)' if w.end_ns is None else f'{w.end_ns / 1e9:.2f}'}</td>"
        f"<td>{_e(w.detail)}</td></tr>"
        for w in windows
    )
    if not rows:
        rows = '<tr><td colspan="4">no faults injected</td></tr>'
    return (
        '<section id="faults"><h2>Fault windows</h2><table><tr><th>nemesis</th>'
        "<th>start (s)</th><th>end (s)</th><th>detail</th></tr>" + rows + "</table></section>"
    )


class _Plot:
    """An SVG canvas with a linear time axis and a linear or log y axis."""

    def __init__(
        self, t_end_s: float, y_min: float, y_max: float, log_y: bool, y_label: str
    ) -> None:
        self.t_end = max(t_end_s, 1e-9)
        self.log_y = log_y
        if log_y:
            y_min, y_max = math.log10(max(y_min, 1e-6)), math.log10(max(y_max, 1e-6))
        if y_max <= y_min:
            y_max = y_min + 1.0
        self.y_min, self.y_max = y_min, y_max
        self.y_label = y_label
        self.items: list[str] = []

    def x(self, t_s: float) -> float:
        return _ML + (_W - _ML - _MR) * min(max(t_s / self.t_end, 0.0), 1.0)

    def y(self, v: float) -> float:
        if self.log_y:
            v = math.log10(max(v, 1e-6))
        frac = (v - self.y_min) / (self.y_max - self.y_min)
        return _H - _MB - (_H - _MT - _MB) * min(max(frac, 0.0), 1.0)

    def shade(self, windows: Sequence[FaultWindow], palette: Mapping[str, str]) -> None:
        for w in windows:
            x0 = self.x(w.start_ns / 1e9)
            x1 = self.x((w.end_ns if w.end_ns is not None else self.t_end * 1e9) / 1e9)
            colour = palette[w.nemesis]
            self.items.append(
                f'<rect class="fault" x="{x0:.1f}" y="{_MT}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{_H - _MT - _MB}" fill="{colour}" fill-opacity="0.15">'
                f"<title>{_e(w.nemesis)} {_e(w.detail)}</title></rect>"
                f'<text x="{x0 + 2:.1f}" y="{_MT - 6}" font-size="10" fill="{colour}">{_e(w.nemesis)}</text>'
            )

    def axes(self) -> None:
        it = self.items
        x0, x1, y0, y1 = _ML, _W - _MR, _MT, _H - _MB
        it.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#444"/>')
        it.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>')
        for t in _nice_ticks(0.0, self.t_end):
            x = self.x(t)
            it.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" stroke="#444"/>')
            it.append(
                f'<text x="{x:.1f}" y="{y1 + 16}" font-size="10" text-anchor="middle">{t:g}</text>'
            )
        it.append(
            f'<text x="{(x0 + x1) / 2}" y="{_H - 4}" font-size="11" text-anchor="middle">time (s)</text>'
        )
        if self.log_y:
            ticks = [10.0**e for e in range(math.floor(self.y_min), math.ceil(self.y_max) + 1)]
        else:
            ticks = _nice_ticks(self.y_min, self.y_max)
        for v in ticks:
            y = self.y(v)
            if not y0 - 0.5 <= y <= y1 + 0.5:
                continue
            it.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
            it.append(
                f'<text x="{x0 - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{v:g}</text>'
            )
        it.append(
            f'<text x="12" y="{(y0 + y1) / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {(y0 + y1) / 2})">{_e(self.y_label)}</text>'
        )

    def svg(self, label: str) -> str:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(label)}">'
            + "".join(self.items)
            + "</svg>"
        )


def _nice_ticks(lo: float, hi: float, n: int = 8) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def _legend(items: Mapping[str, str]) -> str:
    return (
        '<div class="legend">'
        + "".join(
            f'<span><span style="color:{c}">&#9679;</span> {_e(k)}</span>' for k, c in items.items()
        )
        + "</div>"
    )


def _latency_section(
    ops: Sequence[Op], windows: Sequence[FaultWindow], palette: Mapping[str, str], end_ns: int
) -> str:
    parts = ['<section id="latency"><h2>Latency over time</h2>', _legend(OUTCOME_COLOURS)]
    by_kind: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.latency_ns is not None:
            by_kind[op.kind].append(op)
    for kind in sorted(by_kind):
        kops = _thin(by_kind[kind])
        lat_ms = [max(o.latency_ns or 0, 1) / 1e6 for o in kops]
        # Whole decades, so the log axis starts and ends on a labelled tick.
        lo = 10.0 ** math.floor(math.log10(min(lat_ms)))
        hi = 10.0 ** math.ceil(math.log10(max(lat_ms)))
        plot = _Plot(end_ns / 1e9, lo, hi if hi > lo else lo * 10, True, "latency (ms)")
        plot.shade(windows, palette)
        plot.axes()
        for op, ms in zip(kops, lat_ms, strict=True):
            colour = OUTCOME_COLOURS.get(op.outcome or "", "#000")
            plot.items.append(
                f'<circle cx="{plot.x(op.invoke_ns / 1e9):.1f}" cy="{plot.y(ms):.1f}" r="1.6" '
                f'fill="{colour}" fill-opacity="0.7"/>'
            )
        parts.append(f"<h3>{_e(kind)}</h3>{plot.svg(f'latency of {kind}')}")
    if not by_kind:
        parts.append("<p>no completed operations</p>")
    parts.append("</section>")
    return "".join(parts)


def _thin(ops: list[Op]) -> list[Op]:
    """Keep every fail/info point and an even sample of ok ones (bounded SVG size)."""
    if len(ops) <= _MAX_POINTS_PER_PLOT:
        return ops
    rare = [o for o in ops if o.outcome != "ok"]
    ok = [o for o in ops if o.outcome == "ok"]
    budget = max(_MAX_POINTS_PER_PLOT - len(rare), 1)
    stride = max(1, math.ceil(len(ok) / budget))
    return sorted(rare + ok[::stride], key=lambda o: o.invoke_ns)


def _throughput_section(
    ops: Sequence[Op], windows: Sequence[FaultWindow], palette: Mapping[str, str], end_ns: int
) -> str:
    end_s = end_ns / 1e9
    bucket = max(_nice_ticks(0.0, end_s, 100)[1] if end_s > 0 else 1.0, 0.1)
    n = max(1, math.ceil(end_s / bucket))
    series: dict[str, list[int]] = {o: [0] * n for o in OUTCOMES}
    for op in ops:
        if op.complete_ns is not None and op.outcome in series:
            i = min(int(op.complete_ns / 1e9 / bucket), n - 1)
            series[op.outcome][i] += 1
    peak = max((c for s in series.values() for c in s), default=0) / bucket
    plot = _Plot(end_s, 0.0, max(peak, 1.0) * 1.05, False, "completions/s")
    plot.shade(windows, palette)
    plot.axes()
    for outcome, counts in series.items():
        if not any(counts):
            continue
        pts = " ".join(
            f"{plot.x((i + 0.5) * bucket):.1f},{plot.y(c / bucket):.1f}"
            for i, c in enumerate(counts)
        )
        plot.items.append(
            f'<polyline fill="none" stroke="{OUTCOME_COLOURS[outcome]}" stroke-width="1.5" points="{pts}"/>'
        )
    return (
        '<section id="throughput"><h2>Throughput over time</h2>'
        + _legend(OUTCOME_COLOURS)
        + f"<p>completions per second, in {bucket:g} s buckets</p>"
        + plot.svg("throughput")
        + "</section>"
    )


def _outcomes_section(ops: Sequence[Op]) -> str:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for op in ops:
        counts[op.kind][op.outcome or "pending"] += 1
    kinds = sorted(counts)
    rows = "".join(
        f"<tr><td>{_e(k)}</td>"
        + "".join(f"<td>{counts[k][o]}</td>" for o in OUTCOMES)
        + f"<td>{sum(counts[k].values())}</td></tr>"
        for k in kinds
    )
    table = (
        "<table><tr><th>kind</th>"
        + "".join(f"<th>{o}</th>" for o in OUTCOMES)
        + "<th>total</th></tr>"
        + rows
        + "</table>"
    )
    # Stacked horizontal bars, one per kind.
    bar_h, gap, label_w, width = 18, 8, 140, 700
    height = max(1, len(kinds)) * (bar_h + gap) + gap
    peak = max((sum(c.values()) for c in counts.values()), default=1)
    items = []
    for i, k in enumerate(kinds):
        y = gap + i * (bar_h + gap)
        items.append(
            f'<text x="{label_w - 6}" y="{y + 13}" font-size="11" text-anchor="end">{_e(k)}</text>'
        )
        x = float(label_w)
        for o in OUTCOMES:
            w = width * counts[k][o] / peak
            if w > 0:
                items.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{OUTCOME_COLOURS[o]}">'
                    f"<title>{_e(k)} {o}: {counts[k][o]}</title></rect>"
                )
                x += w
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 20}" height="{height}" '
        f'viewBox="0 0 {label_w + width + 20} {height}" role="img" aria-label="outcomes">'
        + "".join(items)
        + "</svg>"
    )
    return f'<section id="outcomes"><h2>Outcomes per operation kind</h2>{table}{_legend(OUTCOME_COLOURS)}{svg}</section>'


def _details_section(summary: Mapping[str, Any]) -> str:
    parts = ['<section id="details"><h2>Checker details</h2>']
    for name, result in (summary.get("checkers") or {}).items():
        text = json.dumps(result, indent=2, default=str)
        if len(text) > 20000:
            text = text[:20000] + "\n... (truncated; see summary.json)"
        parts.append(f"<h3>{_e(name)}</h3><pre>{_e(text)}</pre>")
    parts.append("</section>")
    return "".join(parts)
