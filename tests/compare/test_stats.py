"""Statistics of a comparison: per-row scores, intervals and tests against oracles (statsmodels, scipy,
hand-computed values), and the conclusions drawn from them (ties, significant gaps, data-size crossovers)
on synthetic run directories whose numbers are known."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from tests.compare.test_report import CHROMIUM, png_size, render
from tunelab.compare.report import analyse, summarize_run, write_reports
from tunelab.compare.stats import bootstrap_interval, mcnemar, paired_bootstrap, seed_interval, welch
from tunelab.compare.study import Settings, crossover
from tunelab.row_scores import FILE, RowScores, hits, read_row_scores, write_row_scores

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------- per-row scores

def test_row_scores_aggregate_as_their_metric():
    err = RNG.normal(size=50)
    assert RowScores(err ** 2, "root_mean").value() == pytest.approx(math.sqrt(np.mean(err ** 2)), rel=1e-12)
    assert hits([1, 0, 1, 1]).value() == 0.75
    loss, tokens = RNG.uniform(1, 5, 20), RNG.integers(1, 30, 20)
    assert RowScores(loss, "ratio", tokens).value() == pytest.approx(loss.sum() / tokens.sum(), rel=1e-12)
    idx = np.array([[0, 0, 1, 2], [3, 3, 3, 3]])
    assert hits([1, 0, 1, 0]).resampled(idx).tolist() == [0.75, 0.0]
    with pytest.raises(ValueError, match="needs weights"):
        RowScores([1.0], "ratio")


def test_row_scores_file_round_trip_and_consistency(tmp_path):
    rows = {"accuracy": hits([1, 0, 1]), "loss": RowScores([2.0, 4.0, 1.5], "ratio", [2, 4, 3])}
    write_row_scores(tmp_path / FILE, rows, {"accuracy": 2 / 3, "loss": 7.5 / 9})
    back = read_row_scores(tmp_path / FILE)
    assert back["accuracy"].binary and back["accuracy"].values.tolist() == [1, 0, 1]
    assert back["loss"].value() == pytest.approx(7.5 / 9)
    with pytest.raises(ValueError, match="aggregates to"):
        write_row_scores(tmp_path / "bad.json", rows, {"accuracy": 0.9})
    assert read_row_scores(tmp_path / "missing.json") == {}


# ---------------------------------------------------------------------------- intervals

def test_seed_interval_is_the_student_t_interval():
    values = [0.78, 0.80, 0.81]
    iv = seed_interval(values, 0.95)
    sd = float(np.std(values, ddof=1))
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 df) from the tables
    assert (iv.mean, iv.std, iv.n, iv.kind) == (pytest.approx(np.mean(values)), pytest.approx(sd), 3, "seeds")
    assert iv.low == pytest.approx(np.mean(values) - half) and iv.high == pytest.approx(np.mean(values) + half)
    single = seed_interval([0.5])
    assert single.low == single.high == 0.5 and single.std is None


def test_bootstrap_interval_matches_scipy_and_the_normal_approximation():
    from scipy import stats

    correct = (RNG.uniform(size=487) < 0.8).astype(float)
    iv = bootstrap_interval(hits(correct), 0.95, resamples=4000)
    ref = stats.bootstrap((correct,), np.mean, confidence_level=0.95, n_resamples=4000, method="percentile",
                          random_state=1).confidence_interval
    assert iv.low == pytest.approx(ref.low, abs=0.006) and iv.high == pytest.approx(ref.high, abs=0.006)
    p = correct.mean()
    normal = 1.959964 * math.sqrt(p * (1 - p) / 487)  # ~1.8 points of accuracy: the example
    assert (iv.high - iv.low) / 2 == pytest.approx(normal, rel=0.12)
    assert iv.low < iv.mean < iv.high and iv.kind == "bootstrap" and iv.n == 487


# ---------------------------------------------------------------------------- tests

def test_mcnemar_matches_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a = np.array([1] * 60 + [0] * 25 + [1] * 10 + [0] * 5, dtype=float)
    b = np.array([1] * 60 + [1] * 10 + [0] * 25 + [0] * 5, dtype=float)
    # rows right only for a: 10 (positions 85-94); only for b: 10 (60-69)... build the table directly
    table = [[int(((a == 1) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())],
             [int(((a == 0) & (b == 1)).sum()), int(((a == 0) & (b == 0)).sum())]]
    test = mcnemar([hits(a)], [hits(b)], ("a", "b"))
    assert test.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)
    skewed_a = np.r_[np.ones(30), np.zeros(70)]
    skewed_b = np.r_[np.ones(12), np.zeros(88)]
    test = mcnemar([hits(skewed_a)], [hits(skewed_b)], ("a", "b"))
    ref = sm_mcnemar([[12, 18], [0, 70]], exact=True).pvalue
    assert test.p_value == pytest.approx(ref, rel=1e-9) and test.p_value < 1e-4
    assert test.difference == pytest.approx(0.18)
    # two seed pairs pool their discordant rows
    pooled = mcnemar([hits(skewed_a), hits(skewed_a)], [hits(skewed_b), hits(skewed_b)], ("a", "b"))
    assert pooled.p_value == pytest.approx(sm_mcnemar([[24, 36], [0, 140]], exact=True).pvalue, rel=1e-9)


def test_paired_bootstrap_separates_a_real_gap_from_noise():
    base = (RNG.uniform(size=500) < 0.75).astype(float)
    same = paired_bootstrap(hits(base), hits(base), ("a", "b"))
    assert same.p_value == 1.0 and same.difference == 0.0
    flipped = base.copy()
    flipped[np.flatnonzero(base == 0)[:60]] = 1.0  # 60 more right answers out of 500: +12 points
    gap = paired_bootstrap(hits(flipped), hits(base), ("a", "b"), resamples=2000)
    assert gap.difference == pytest.approx(0.12) and gap.p_value == pytest.approx(1 / 2000)
    noisy = base.copy()
    wrong = np.flatnonzero(base == 1)[:8]
    right = np.flatnonzero(base == 0)[:10]
    noisy[wrong], noisy[right] = 0.0, 1.0  # +2 rows of 500: no real difference
    tie = paired_bootstrap(hits(noisy), hits(base), ("a", "b"))
    assert tie.p_value > 0.4
    back = paired_bootstrap(hits(base), hits(noisy), ("b", "a"))
    assert back.p_value == pytest.approx(tie.p_value, abs=0.05) and back.difference == -tie.difference


def test_welch_matches_statsmodels():
    from statsmodels.stats.weightstats import ttest_ind

    a, b = [0.80, 0.81, 0.79], [0.70, 0.74, 0.71]
    ours = welch(a, b, ("a", "b"))
    assert ours.p_value == pytest.approx(ttest_ind(a, b, usevar="unequal")[1], rel=1e-9)
    assert welch([0.8], b, ("a", "b")) is None


def test_crossover_is_linear_in_log_rows():
    # +0.04 at 100 rows, -0.02 at 1600 rows: zero at 2/3 of the way in log rows
    assert crossover(100, 0.04, 1600, -0.02) == pytest.approx(math.exp(math.log(100) + 2 / 3 * math.log(16)))
    assert crossover(100, 0.01, 400, -0.01) == pytest.approx(200.0)


# ---------------------------------------------------------------------------- conclusions from runs

N_TEST = 400


def fake_run(root: Path, label: str, correct: np.ndarray, *, trainable: int, method: str) -> Path:
    """A finished classification run whose test accuracy is the mean of ``correct`` (with its rows)."""
    run = root / label
    (run / "model").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "task": "classification", "method": [method], "test": {"accuracy": float(correct.mean())},
        "params": {"trainable": trainable, "total": 1_000_000, "trainable_percent": trainable / 1e4},
        "train_seconds": 10.0, "peak_memory_mb": 1000.0 + trainable / 1000, "wall_seconds": 12.0,
        "latency_ms_per_row": 0.5 + trainable / 1e6}))
    write_row_scores(run / FILE, {"accuracy": hits(correct)}, {"accuracy": float(correct.mean())})
    with open(run / "model" / "weights.safetensors", "wb") as f:
        f.truncate(4 * trainable)  # sparse: an artifact of fp32 weights
    return run


def answers(accuracy: float, seed: int) -> np.ndarray:
    """Hits on N_TEST rows with (exactly) the given accuracy; a seed shuffles which rows are right."""
    k = int(round(accuracy * N_TEST))
    out = np.r_[np.ones(k), np.zeros(N_TEST - k)]
    return np.random.default_rng(seed).permutation(out)


# method -> (trainable params, accuracy at 100 rows, accuracy at 1600 rows)
CURVES = {"small": (1_000, 0.80, 0.82), "big": (100_000, 0.70, 0.90)}


@pytest.fixture
def grid(tmp_path) -> list:
    """Two methods x 3 seeds x 2 data sizes: 'small' wins with few rows, 'big' with many."""
    out = []
    for method, (trainable, low, high) in CURVES.items():
        for size, acc in ((100, low), (1600, high)):
            for seed in (1, 2, 3):
                label = f"{method}-seed{seed}-n{size}"
                path = fake_run(tmp_path / "runs", label, answers(acc + 0.005 * (seed - 2), 10 * seed + size),
                                trainable=trainable, method="lora")
                s = summarize_run(label, path)
                s.group, s.seed, s.size, s.train_rows = method, seed, size, size
                out.append(s)
    return out


def test_seeds_average_and_get_t_intervals(grid):
    result = analyse(grid, "params", 0.01, Settings())
    by = {m.label: m for m in result.methods}
    assert set(by) == {"small", "big"}  # the headline size: 1,600 rows
    assert by["big"].value == pytest.approx(0.90, abs=1e-9) and by["big"].members == [
        "big-seed1-n1600", "big-seed2-n1600", "big-seed3-n1600"]
    iv = by["big"].interval
    assert iv["kind"] == "seeds" and iv["n"] == 3 and iv["low"] < 0.90 < iv["high"]
    assert iv["std"] == pytest.approx(0.005, rel=0.05)


def test_gap_is_significant_and_pick_follows_the_data_size(grid):
    result = analyse(grid, "params", 0.01, Settings())
    text = result.advice
    assert "Best accuracy: big (0.9000)" in text
    assert "Significantly below big (p < 0.05): small (p < 0.001, McNemar)" in text
    assert "At 100 training rows: pick small (0.8000); best small (0.8000)." in text
    assert "At 1,600 training rows: pick big (0.9000); best big (0.9000)." in text
    # small - big: +0.10 at 100 rows, -0.08 at 1600: zero at 10/18 of the way in log rows
    x = crossover(100, 0.10, 1600, -0.08)
    digits = int(math.floor(math.log10(x))) - 1
    shown = f"{int(round(x, -digits)):,}"
    assert f"below ~{shown} rows pick small; above, big" in text
    record = result.record
    assert [(a["train_rows"], a["recommended"]) for a in record["by_size"]] == [(100, "small"), (1600, "big")]
    assert record["tests_against_best"]["small"]["decisive"]["method"] == "McNemar"
    assert len(record["all_runs"]) == 12


def test_tie_is_stated_with_its_p_value(tmp_path):
    base = answers(0.80, 0)
    near = base.copy()
    near[np.flatnonzero(base == 0)[:3]] = 1.0  # 3 rows of 400 better: not a real difference
    runs = [summarize_run("lora", fake_run(tmp_path, "lora", base, trainable=1_000, method="lora")),
            summarize_run("adapter", fake_run(tmp_path, "adapter", near, trainable=5_000, method="adapter"))]
    result = analyse(runs, "params", 0.01, Settings())
    match = re.search(r"lora and adapter tie: the difference \(0\.0075\) is not significant \(p = ([0-9.]+), "
                      r"McNemar; paired bootstrap p = [0-9.]+\)", result.advice)
    assert match, result.advice
    assert float(match.group(1)) == pytest.approx(0.25, abs=0.01)  # exact binomial: 3 vs 0 discordant rows
    assert "The pick, lora, is not distinguishable from the best, adapter" in result.advice
    iv = next(m for m in result.methods if m.label == "lora").interval
    assert iv["kind"] == "bootstrap" and iv["n"] == N_TEST


def test_hard_limits_mark_runs_and_change_the_pick(tmp_path):
    runs = [summarize_run("lora", fake_run(tmp_path, "lora", answers(0.80, 0), trainable=1_000, method="lora")),
            summarize_run("full", fake_run(tmp_path, "full", answers(0.85, 1), trainable=900_000, method="full"))]
    free = analyse(runs, "params", 0.01, Settings())
    assert "pick full" in free.advice
    capped = analyse(runs, "params", 0.01, Settings(max_params=10_000))
    assert "pick lora" in capped.advice
    assert "Over the hard limits, never recommended: full (900,000 trainable parameters > max_params 10,000)" \
        in capped.advice
    nothing = analyse(runs, "params", 0.01, Settings(max_memory_mb=500))
    assert "none is recommended" in nothing.advice


def test_latency_and_artifact_budgets_rank_by_them(tmp_path):
    runs = [summarize_run("lora", fake_run(tmp_path, "lora", answers(0.80, 0), trainable=1_000, method="lora")),
            summarize_run("full", fake_run(tmp_path, "full", answers(0.81, 1), trainable=900_000, method="full"))]
    text = analyse(runs, "latency", 0.05, Settings()).advice
    assert "For the inference latency budget, pick lora" in text and "ms per row" in text
    text = analyse(runs, "artifact", 0.05, Settings()).advice
    assert "pick lora: of the Pareto-front runs within 5% of the best accuracy, it has the smallest artifact" in text
    assert "1. lora: 4.0 kB" in text


def test_grid_report_files_and_chromium(grid, tmp_path):
    paths = write_reports(grid, tmp_path / "out", "params", 0.01, Settings())
    assert {"learning_curves", "intervals", "runs_csv"} <= set(paths)
    for name in ("learning_curves", "intervals"):
        width, height = png_size(paths[name])
        assert width >= 400 and height >= 300
    assert len(paths["runs_csv"].read_text().strip().splitlines()) == 1 + 12
    md = paths["markdown"].read_text()
    assert "## Why this recommendation" in md and "| interval |" in md and "(3 seeds, sd" in md
    record = json.loads(paths["json"].read_text())
    assert record["recommended"] == "big" and record["by_size"][0]["recommended"] == "small"
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: CI installs it (apt-get install -y chromium)")
    dom, console = render(paths["html"], tmp_path)
    assert not console, console
    assert 'data-images="5/5"' in dom
    assert "Why this recommendation" in dom and "Learning curves" in dom and "below ~" in dom
