"""How numbers read in the comparison's text and tables (ratios, percentages, sizes, costs)."""

from __future__ import annotations

import math

from tunelab.compare.summary import COSTS, RunSummary

STAR = "★"
"""Marks the Pareto front in tables, plots and the recommendation."""


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def join_words(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def sig2(x: float) -> str:
    """Two significant digits for small numbers (0.0034, 0.82, 1.3), whole numbers from 10 up."""
    if x == 0:
        return "0"
    return f"{x:.{max(0, 1 - math.floor(math.log10(abs(x))))}f}"


def fmt_pct(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 1 else sig2(x)


def fmt_ratio(x: float) -> str:
    return sig2(x)


def fmt_value(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.4f}" if abs(x) < 1000 else f"{x:,.1f}"


def fmt_int(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def fmt_percent_cell(x: float | None) -> str:
    return "—" if x is None else f"{fmt_pct(x)}%"


def fmt_mb(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} MB"


def fmt_seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} s" if x >= 10 else f"{x:.1f} s"


def fmt_throughput(s: RunSummary) -> str:
    parts = [f"{s.samples_per_second:,.1f} samples/s"] if s.samples_per_second is not None else []
    parts += [f"{s.tokens_per_second:,.0f} tokens/s"] if s.tokens_per_second is not None else []
    return ", ".join(parts) or "—"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_cost(s: RunSummary, budget: str) -> str:
    c = s.cost(budget)
    if c is None:
        return f"(no {COSTS[budget][1]} recorded)"
    if budget == "params":
        return f"{int(c):,}" + (f" ({fmt_pct(s.trainable_percent)}%)" if s.trainable_percent is not None else "")
    if budget == "artifact":
        return fmt_bytes(int(c))
    if budget == "latency":
        return f"{c:.3g} ms per row"
    return fmt_mb(c) if budget == "memory" else fmt_seconds(c)
