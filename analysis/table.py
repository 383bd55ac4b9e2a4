"""The headline numbers as a markdown table: maximum goodput per policy and FlowPrefill's
ratios to FCFS and to the best chunked-prefill configuration (or, for runs that did not
search, attainment and goodput per run). Reads `Run`s only; no engine imports.
"""

from __future__ import annotations

from analysis.runs import Run, labels


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.3g}"


def headline(runs: list[Run]) -> str:
    """Markdown: one table (max goodput, or replay metrics) plus the ratios when they apply."""
    names = labels(runs)
    searched = [r for r in runs if r.max_goodput is not None]
    if not searched:
        return _replay_table(runs, names)
    rows = sorted(searched, key=lambda r: -(r.max_goodput or 0.0))
    lines = [
        "| policy | max goodput (req/s) | rate scale | attainment | TTFT p99 (s) "
        "| preemption p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        s = r.summary
        lines.append(
            f"| {names[id(r)]} | {_fmt(r.max_goodput)} | {_fmt(s.get('max_rate_scale'))} "
            f"| {_fmt(s.get('ttft_attainment'))} | {_fmt(s.get('ttft_p99'))} "
            f"| {_ms(s.get('preemption_latency_p99'))} |")
    lines += ["", *_ratios(rows, names)]
    return "\n".join(lines) + "\n"


def _ratios(rows: list[Run], names: dict[int, str]) -> list[str]:
    """FlowPrefill (and each operator-level FlowPrefill variant, e.g. Moore-Hodgson) over
    the best FCFS and the best chunked-prefill run."""
    variants = [r for r in rows if r.policy.get("name") == "flowprefill"
                and r.policy.get("granularity") == "operator"]
    variants.sort(key=lambda r: not r.is_flowprefill)  # plain FlowPrefill first
    out = []
    for fp in variants:
        for what, group in (("FCFS", [r for r in rows if r.is_fcfs]),
                            ("best chunked", [r for r in rows if r.is_chunked])):
            base = max(group, key=lambda r: r.max_goodput or 0.0, default=None)
            if base is not None and base.max_goodput:
                ratio = (fp.max_goodput or 0.0) / base.max_goodput
                out.append(f"- {names[id(fp)]} / {what} ({names[id(base)]}): "
                           f"**{ratio:.2f}x**")
    return out


def _replay_table(runs: list[Run], names: dict[int, str]) -> str:
    lines = [
        "| policy | SLO scale | offered (req/s) | attainment | goodput (req/s) | TTFT p99 (s) "
        "| preemption p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(runs, key=lambda r: (names[id(r)], r.slo_scale)):
        s = r.summary
        lines.append(
            f"| {names[id(r)]} | {r.slo_scale:g} | {_fmt(s.get('offered_rps'))} "
            f"| {_fmt(s.get('ttft_attainment'))} | {_fmt(s.get('goodput_rps'))} "
            f"| {_fmt(s.get('ttft_p99'))} | {_ms(s.get('preemption_latency_p99'))} |")
    return "\n".join(lines) + "\n"
