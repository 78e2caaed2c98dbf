"""What a run prints and writes: the table for people, the side-by-side
comparison with ratios, the JSON document and the PNG plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.bench.load import Point

JSON_SCHEMA = 1


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def progress_line(p: Point) -> str:
    err = f"  errors {p.errors} ({p.first_error})" if p.errors else ""
    cpu = (f"  CPU/op srv {_f(_ms(p.server_cpu_per_op), '.3f')} ms"
           f" gen {_f(_ms(p.loadgen_cpu_per_op), '.3f')} ms")
    unit = "rec/s" if p.workload == "batch" else "ops/s"
    return (f"  {p.system:<5} {p.workload:<16} c={p.concurrency:<4} {p.ops_per_s:>9.0f} {unit}"
            f"  p50 {p.latency.p50:7.2f} ms  p99 {p.latency.p99:7.2f} ms{cpu}{err}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


HEADER = (f"{'system':<6} {'workload':<16} {'conc':>4} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p99.9 ms':>9} {'srv CPU ms/op':>13} {'gen CPU ms/op':>13} {'errors':>6}")


def table(points: Sequence[Point]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    for p in points:
        lines.append(
            f"{p.system:<6} {p.workload:<16} {p.concurrency:>4} {p.ops_per_s:>9.0f} "
            f"{p.latency.p50:>8.2f} {p.latency.p99:>8.2f} {p.latency.p999:>9.2f} "
            f"{_f(_ms(p.server_cpu_per_op), '.3f'):>13} {_f(_ms(p.loadgen_cpu_per_op), '.3f'):>13} "
            f"{p.errors:>6}"
        )
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def comparison(points: Sequence[Point]) -> list[dict[str, Any]]:
    """medkv beside etcd for each (workload, concurrency) both measured, with
    ratios medkv/etcd (throughput: higher is better for medkv; latency and
    CPU: lower is), and the echo's ops/s at the same concurrency."""
    by = {(p.system, p.workload, p.concurrency): p for p in points}
    echo = {(p.workload, p.concurrency): p for p in points if p.system == "echo"}
    rows = []
    for p in points:
        if p.system != "medkv":
            continue
        e = by.get(("etcd", p.workload, p.concurrency))
        if e is None:
            continue
        # The echo's calls/s is a ceiling for calls, not for a batch's records.
        tls = None if p.workload == "batch" else echo.get(("echo-tls", p.concurrency))
        plain = None if p.workload == "batch" else echo.get(("echo-plain", p.concurrency))
        rows.append({
            "workload": p.workload,
            "concurrency": p.concurrency,
            "medkv": {"ops_per_s": p.ops_per_s, "p50_ms": p.latency.p50, "p99_ms": p.latency.p99,
                      "server_cpu_ms_per_op": _ms(p.server_cpu_per_op)},
            "etcd": {"ops_per_s": e.ops_per_s, "p50_ms": e.latency.p50, "p99_ms": e.latency.p99,
                     "server_cpu_ms_per_op": _ms(e.server_cpu_per_op)},
            "ratio": {"ops_per_s": _ratio(p.ops_per_s, e.ops_per_s),
                      "p50": _ratio(p.latency.p50, e.latency.p50),
                      "p99": _ratio(p.latency.p99, e.latency.p99),
                      "server_cpu_per_op": _ratio(p.server_cpu_per_op, e.server_cpu_per_op)},
            "echo_tls_ops_per_s": tls.ops_per_s if tls else None,
            "echo_plain_ops_per_s": plain.ops_per_s if plain else None,
        })
    return rows


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown, so it pastes into docs/benchmarks.md and an issue note as it is."""
    head = ("| workload | c | medkv ops/s (p50 / p99 ms) | etcd ops/s (p50 / p99 ms) "
            "| ops ratio | p50 ratio | srv CPU ms/op medkv / etcd | echo ops/s TLS / plain |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, e, q = r["medkv"], r["etcd"], r["ratio"]
        lines.append(
            f"| {r['workload']} | {r['concurrency']} "
            f"| {m['ops_per_s']:,.0f} ({m['p50_ms']:.1f} / {m['p99_ms']:.1f}) "
            f"| {e['ops_per_s']:,.0f} ({e['p50_ms']:.1f} / {e['p99_ms']:.1f}) "
            f"| {_f(q['ops_per_s'], '.2f')} | {_f(q['p50'], '.2f')} "
            f"| {_f(m['server_cpu_ms_per_op'], '.2f')} / {_f(e['server_cpu_ms_per_op'], '.2f')} "
            f"| {_f(r['echo_tls_ops_per_s'], ',.0f')} / {_f(r['echo_plain_ops_per_s'], ',.0f')} |"
        )
    return "\n".join(lines)


def document(points: Sequence[Point], *, machine: dict[str, Any], config: dict[str, Any],
             systems: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": JSON_SCHEMA,
        "machine": machine,
        "config": config,
        "systems": systems,
        "points": [p.as_dict() for p in points],
        "comparison": comparison(points),
    }


def plot(points: Sequence[Point], path: Path, title: str) -> bool:
    """Throughput and p50/p99 latency against concurrency, one row per
    workload, one line per system. False (and nothing written) without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = list(dict.fromkeys(p.workload for p in points if p.system != "echo"))
    echo_workloads = list(dict.fromkeys(p.workload for p in points if p.system == "echo"))
    only_echo = not workloads
    if only_echo:
        workloads = echo_workloads
    rows = max(1, len(workloads))
    levels = sorted({p.concurrency for p in points})
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.2 * rows), squeeze=False)
    colors = {"medkv": "tab:blue", "etcd": "tab:orange", "echo-tls": "tab:gray",
              "echo-plain": "black"}

    def series(system: str, workload: str) -> list[Point]:
        return sorted((p for p in points if p.system == system and p.workload == workload),
                      key=lambda p: p.concurrency)

    for row, workload in enumerate(workloads):
        ax_t, ax_l = axes[row]
        lines = [(s, workload, "-") for s in dict.fromkeys(p.system for p in points)
                 if s != "echo"]
        if workload != "batch":  # the echo's calls/s is Python's ceiling for a calls/s row
            lines += [("echo", w, ":") for w in echo_workloads if not only_echo or w == workload]
        for system, wl, style in lines:
            got = series(system, wl)
            if not got:
                continue
            name = wl if system == "echo" else system
            color = colors.get(name)
            xs = [p.concurrency for p in got]
            ax_t.plot(xs, [p.ops_per_s for p in got], style, marker="o", color=color, label=name)
            ax_l.plot(xs, [p.latency.p50 for p in got], style, marker="o", color=color,
                      label=f"{name} p50")
            if system != "echo" or only_echo:
                ax_l.plot(xs, [p.latency.p99 for p in got], "--", marker="x", color=color,
                          label=f"{name} p99")
        unit = "records/s" if workload == "batch" else "ops/s"
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.minorticks_off()
            ax.set_xlabel("concurrency")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax_t.set_title(f"{workload}: throughput")
        ax_t.set_ylabel(unit)
        ax_t.set_ylim(bottom=0)
        ax_l.set_title(f"{workload}: latency")
        ax_l.set_ylabel("ms")
        ax_l.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
