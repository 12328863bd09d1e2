"""Ranking runs for ``tunelab compare``: the Pareto front, the recommendation and its trade-offs in numbers.

:func:`pareto_front` keeps the runs that no other run beats: another run dominates one when its metric is
better or equal and its cost lower or equal, strictly better in at least one of the two
(``greater_is_better`` decides what "better" means).

Recommendation rule (:func:`choose`): among the runs on the Pareto front for the budget's cost, the cheapest
one whose metric is within ``tolerance`` of the best run's, relative to the best value and in the metric's
own direction (default 1%: accuracy >= 0.99 x best, or loss <= 1.01 x best). The cheapest of the best-metric
runs is always on the front, so there is a choice whenever a run reports the cost. :func:`recommend` states
the trade-off in numbers against the best-metric run and against full fine-tuning when it was run
(:func:`full_run`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.compare.formatting import (
    STAR,
    fmt_cost,
    fmt_pct,
    fmt_ratio,
    fmt_value,
    join_words,
    ratio,
)
from tunelab.compare.summary import COSTS, RunSummary, check_budget, check_comparable

CHEAPEST = {"params": "fewest trainable parameters", "memory": "lowest peak memory", "time": "shortest training time",
            "artifact": "smallest artifact", "latency": "lowest inference latency"}
DEFAULT_TOLERANCE = 0.01


def scored_runs(summaries: Sequence[RunSummary]) -> list[RunSummary]:
    return [s for s in summaries if s.ok and s.value is not None]


def goodness(s: RunSummary) -> float:
    """The metric signed so that larger is better."""
    return s.value if s.greater_is_better else -s.value


def pareto_front(summaries: Sequence[RunSummary], cost: str) -> set[str]:
    """Labels of the successful runs that no other run dominates on (metric, ``cost``)."""
    check_budget(cost)
    points = [(s, s.cost(cost)) for s in scored_runs(summaries) if s.cost(cost) is not None]

    def dominated(s: RunSummary, c: float) -> bool:
        return any(goodness(o) >= goodness(s) and oc <= c and (goodness(o) > goodness(s) or oc < c)
                   for o, oc in points)

    return {s.label for s, c in points if not dominated(s, c)}


def best_run(summaries: Sequence[RunSummary]) -> RunSummary | None:
    """The successful run with the best metric (the first one given on a tie)."""
    scored = scored_runs(summaries)
    return max(scored, key=goodness) if scored else None


def ranked(summaries: Sequence[RunSummary], budget: str) -> list[RunSummary]:
    """Successful runs by cost, cheapest first (better metric first on a tie, unrecorded costs last)."""
    check_budget(budget)
    return sorted(scored_runs(summaries),
                  key=lambda s: (s.cost(budget) is None, s.cost(budget) or 0.0, -goodness(s)))


def within(run: RunSummary, best: RunSummary, tolerance: float) -> bool:
    """Whether ``run``'s metric is at most ``tolerance`` (relative to the best value) worse than ``best``'s."""
    return goodness(best) - goodness(run) <= tolerance * abs(best.value) + 1e-12


def choose(summaries: Sequence[RunSummary], budget: str, tolerance: float = DEFAULT_TOLERANCE
           ) -> RunSummary | None:
    """The cheapest run on the budget's Pareto front within ``tolerance`` of the best metric (runs over a
    hard limit, :attr:`RunSummary.violations`, are left out; None when every run breaks one)."""
    summaries = [s for s in summaries if not s.violations]
    best = best_run(summaries)
    if best is None:
        return None
    front = pareto_front(summaries, budget)
    near = [s for s in ranked(summaries, budget) if s.label in front and within(s, best, tolerance)]
    return near[0] if near else best


def full_run(summaries: Sequence[RunSummary]) -> RunSummary | None:
    """The successful full fine-tuning run, if any: the run of one method that trains everything
    (:attr:`~tunelab.methods.base.MethodSpec.trains_everything`, i.e. ``full``), else the run
    labelled with such a method's name."""
    from tunelab.methods import METHODS  # here: reading and writing reports needs no torch otherwise

    everything = {name for name, spec in METHODS.items() if spec.trains_everything}
    scored = scored_runs(summaries)
    return next((s for s in scored if len(s.method) == 1 and s.method[0] in everything), None) or next(
        (s for s in scored if s.label in everything), None)


def trade_off(run: RunSummary, ref: RunSummary) -> str:
    """One sentence: ``run``'s metric and costs relative to ``ref``'s."""
    values = f"{fmt_value(run.value)} vs {fmt_value(ref.value)}"
    if run.greater_is_better and ref.value > 0:
        head = f"{run.label} reaches {fmt_pct(100 * run.value / ref.value)}% of {ref.label}'s {run.metric} ({values})"
    elif not run.greater_is_better and ref.value > 0 and run.value != ref.value:
        change = 100 * (run.value - ref.value) / ref.value
        head = (f"{run.label}'s {run.metric} is {fmt_pct(abs(change))}% {'higher' if change > 0 else 'lower'} "
                f"than {ref.label}'s ({values}; lower is better)")
    else:
        diff = run.value - ref.value
        head = (f"{run.label}'s {run.metric} is {fmt_value(abs(diff))} {'above' if diff >= 0 else 'below'} "
                f"{ref.label}'s ({values}; {'higher' if run.greater_is_better else 'lower'} is better)")
    costs = []
    if ratio(run.trainable, ref.trainable) is not None:
        costs.append(f"{fmt_pct(100 * ratio(run.trainable, ref.trainable))}% of the trainable parameters")
    if ratio(run.peak_memory_mb, ref.peak_memory_mb) is not None:
        costs.append(f"{fmt_ratio(ratio(run.peak_memory_mb, ref.peak_memory_mb))}× the peak memory")
    if ratio(run.train_seconds, ref.train_seconds) is not None:
        costs.append(f"{fmt_ratio(ratio(run.train_seconds, ref.train_seconds))}× the training time")
    return head + (f" with {join_words(costs)}" if costs else "") + "."


def recommend(summaries: Sequence[RunSummary], budget: str, tolerance: float = DEFAULT_TOLERANCE) -> str:
    """Lines of text: best run, Pareto front, the pick under ``budget`` with its trade-off, the ranking."""
    check_budget(budget)
    check_comparable(summaries)
    words = COSTS[budget][1]
    best, pick, full = best_run(summaries), choose(summaries, budget, tolerance), full_run(summaries)
    order = ranked(summaries, budget)
    front = pareto_front(summaries, budget)
    metric = best.metric
    lines = [f"Best {metric}: {best.label} ({fmt_value(best.value)}).",
             f"Pareto front for {words} ({STAR}): {', '.join(s.label for s in order if s.label in front) or 'none'}."]
    if pick is None:
        lines.append("No run keeps within the hard limits (max_memory_mb, max_params): none is recommended.")
        pick = best
    elif not front:
        lines.append(f"No run recorded its {words}; pick by {metric} alone: {best.label}.")
    else:
        lines.append(f"For the {words} budget, pick {pick.label}: of the Pareto-front runs within {tolerance * 100:g}% "
                     f"of the best {metric}, it has the {CHEAPEST[budget]}"
                     + (f" (and the best {metric})." if pick is best else "."))
    if pick is not best:
        lines.append(trade_off(pick, best))
    if full is not None and full is not pick and full is not best:
        lines.append(trade_off(pick, full))
    ref = full or best
    others = [s for s in order if s.label in front and s is not pick and s is not ref]
    if others:
        lines.append("Other Pareto-front trade-offs: " + " ".join(trade_off(s, ref) for s in others))
    listed = [f"{i}. {s.label}: {fmt_cost(s, budget)}, {metric} {fmt_value(s.value)}"
              for i, s in enumerate(order, 1)]
    lines.append(f"Ranked by {words}, cheapest first: " + "; ".join(listed) + ".")
    failed = [s for s in summaries if not s.ok]
    if failed:
        lines.append("Left out because they failed: " + "; ".join(f"{s.label}: {s.error}" for s in failed))
    return "\n".join(lines)
