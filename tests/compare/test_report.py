"""The comparison report: summaries, Pareto front, recommendation numbers, report files, HTML in Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tunelab.compare.report import (
    RunSummary,
    check_comparable,
    choose,
    pareto_front,
    recommend,
    rich_table,
    summarize_run,
    write_reports,
)
from tunelab.errors import UserError

TOTAL = 22_713_986  # MiniLM classifier parameters
# Measured on rotten_tomatoes with MiniLM (benchmarks/results/methods_quality.json, 2026-11-23):
# method list, test accuracy, test f1_macro, trainable, trainable %, train s, peak MB, wall s, samples/s, bytes
MEASURED = {
    "full": (["full"], 0.7946611909650924, 0.7946395439058125, 22713986, 100.0, 2238.957, 1897.9, 2324.97,
             5.215, 90867976),
    "lora": (["lora"], 0.8028747433264887, 0.8026342451874366, 338690, 1.4692494408054588, 1283.094, 1678.6,
             1378.02, 15.166, 1363800),
    "adapter": (["adapter"], 0.8069815195071869, 0.8066872740785784, 236066, 1.0290554525867537, 191.041,
                1548.2, 225.56, 101.863, 952968),
    "bitfit": (["bitfit"], 0.7967145790554415, 0.7967111504648662, 26882, 0.11834998929734306, 389.443, 1539.9,
               423.89, 49.969, 113056),
    "ia3": (["ia3"], 0.7864476386036962, 0.7861220904699165, 16898, 0.07434190607227047, 242.537, 1664.3, 278.56,
            80.235, 70376),
    "linear_probe": (["freeze"], 0.6735112936344969, 0.6720955345232802, 770, 0.0033899818376219833, 120.352,
                     1494.2, 307.44, 646.771, 3288),
}
# Hand-computed from MEASURED: who is beaten on both accuracy and cost by another run.
FRONT = {
    "params": {"linear_probe", "ia3", "bitfit", "adapter"},  # lora < adapter, full < adapter
    "memory": {"linear_probe", "bitfit", "adapter"},  # ia3 < bitfit; lora, full < adapter
    "time": {"linear_probe", "adapter"},  # adapter is faster than all but linear_probe
}
CHROMIUM = Path("/usr/bin/chromium")


def write_run(root: Path, name: str, results: dict, weights_bytes: int | None = None) -> Path:
    """A finished run directory: results.json and (a sparse) model/weights.safetensors."""
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\n")
    (run / "results.json").write_text(json.dumps(results))
    if weights_bytes is not None:
        with open(run / "model" / "weights.safetensors", "wb") as f:
            f.truncate(weights_bytes)
    return run


def classification_results(name: str) -> dict:
    method, acc, f1, trainable, pct, train_s, peak, wall, sps, _ = MEASURED[name]
    return {"task": "classification", "method": method,
            "test": {"split": "test", "accuracy": acc, "f1_macro": f1, "confusion_matrix": [[1, 2], [3, 4]]},
            "best_validation": {"metric": "accuracy", "value": acc, "step": 10},
            "params": {"trainable": trainable, "total": TOTAL, "trainable_percent": pct},
            "train_seconds": train_s, "samples_per_second": sps, "tokens_per_second": 0.0, "train_tokens": 0,
            "peak_memory_mb": peak, "wall_seconds": wall}


@pytest.fixture
def runs(tmp_path) -> list[RunSummary]:
    """Six measured methods plus one run that crashed (no results.json) and one that does not exist."""
    root = tmp_path / "runs"
    for name in MEASURED:
        write_run(root, name, classification_results(name), MEASURED[name][-1])
    crashed = root / "crashed"
    crashed.mkdir()
    (crashed / "config.yaml").write_text("name: crashed\n")
    (crashed / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 0.7}\n')
    names = [*MEASURED, "crashed", "missing"]
    return [summarize_run(n, root / n) for n in names]


def by_label(summaries: list[RunSummary]) -> dict[str, RunSummary]:
    return {s.label: s for s in summaries}


# ---------------------------------------------------------------------------- summaries

def test_summaries_read_results_and_artifact(runs):
    s = by_label(runs)["lora"]
    assert s.status == "ok" and s.error is None
    assert (s.task, s.method, s.metric, s.greater_is_better) == ("classification", ["lora"], "accuracy", True)
    assert s.value == pytest.approx(0.8028747433264887)
    assert s.metrics == pytest.approx({"accuracy": 0.8028747433264887, "f1_macro": 0.8026342451874366})
    assert (s.trainable, s.total_params) == (338690, TOTAL)
    assert s.trainable_percent == pytest.approx(1.4692494408054588)
    assert (s.peak_memory_mb, s.train_seconds, s.wall_seconds) == (1678.6, 1283.094, 1378.02)
    assert s.samples_per_second == 15.166 and s.tokens_per_second is None  # 0 tokens/s: not an sft run
    assert s.artifact_bytes == 1363800


def test_failed_runs_are_recorded_and_left_out(runs):
    crashed, missing = by_label(runs)["crashed"], by_label(runs)["missing"]
    assert crashed.status == "failed" and "did not finish" in crashed.error and "results.json" in crashed.error
    assert missing.status == "failed" and "does not exist" in missing.error
    check_comparable(runs)  # the rest still compare
    for cost in FRONT:
        assert not {"crashed", "missing"} & pareto_front(runs, cost)
    text = recommend(runs, "params")
    ranking = next(line for line in text.splitlines() if line.startswith("Ranked by"))
    assert "crashed" not in ranking and "missing" not in ranking
    assert "crashed: run" in text.splitlines()[-1] and "missing: run directory" in text.splitlines()[-1]


def test_unreadable_results_is_a_failed_run(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "results.json").write_text("{not json")
    s = summarize_run("broken", run)
    assert s.status == "failed" and "cannot read" in s.error and "\n" not in s.error


# ---------------------------------------------------------------------------- Pareto front and recommendation

@pytest.mark.parametrize("cost", sorted(FRONT))
def test_pareto_front_matches_hand_computed(runs, cost):
    assert pareto_front(runs, cost) == FRONT[cost]


def test_pareto_ties_stay_on_the_front(tmp_path):
    a = write_run(tmp_path, "a", classification_results("bitfit"))
    b = write_run(tmp_path, "b", classification_results("bitfit"))
    assert pareto_front([summarize_run("a", a), summarize_run("b", b)], "params") == {"a", "b"}


def numbers(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return [float(x) for x in match.groups()]


TRADE_OFF = (r"{run} reaches ([\d.]+)% of {ref}'s accuracy \(([\d.]+) vs ([\d.]+)\) with ([\d.]+)% of the trainable "
             r"parameters, ([\d.]+)× the peak memory and ([\d.]+)× the training time\.")


def check_trade_off(text: str, run: str, ref: str) -> None:
    """The sentence's numbers agree with MEASURED to the printed precision."""
    pct, value, ref_value, params, memory, time = numbers(TRADE_OFF.format(run=run, ref=ref), text)
    r, f = MEASURED[run], MEASURED[ref]
    assert pct == pytest.approx(100 * r[1] / f[1], abs=0.05)
    assert (value, ref_value) == (pytest.approx(r[1], abs=5e-5), pytest.approx(f[1], abs=5e-5))
    assert params == pytest.approx(100 * r[3] / f[3], rel=0.05)
    assert memory == pytest.approx(r[6] / f[6], rel=0.05)
    assert time == pytest.approx(r[5] / f[5], rel=0.05)


def test_recommendation_best_run_against_full(runs):
    text = recommend(runs, "params")
    assert "Best accuracy: adapter (0.8070)." in text
    assert "Pareto front for trainable parameters (★): linear_probe, ia3, bitfit, adapter." in text
    assert "pick adapter" in text and "within 1% of the best accuracy" in text
    check_trade_off(text, "adapter", "full")  # adapter: 101.6% of full's accuracy, 1.0% of the parameters
    assert numbers(TRADE_OFF.format(run="adapter", ref="full"), text)[:1] == [101.6]


def test_recommendation_trades_accuracy_for_the_budget(runs):
    # 2% tolerance: bitfit (0.7967 >= 0.98 x 0.8070) is the cheapest near-best run by parameters and memory;
    # by time adapter itself is cheapest on the front (linear_probe is far below).
    picks = {b: choose(runs, b, tolerance=0.02).label for b in FRONT}
    assert picks == {"params": "bitfit", "memory": "bitfit", "time": "adapter"}
    text = recommend(runs, "memory", tolerance=0.02)
    assert "pick bitfit" in text and "lowest peak memory" in text
    check_trade_off(text, "bitfit", "adapter")  # 98.7% of the best run's accuracy ...
    check_trade_off(text, "bitfit", "full")  # ... and 100.3% of full's with 0.12% of its parameters
    assert numbers(TRADE_OFF.format(run="bitfit", ref="adapter"), text)[0] == 98.7
    ranking = next(line for line in text.splitlines() if line.startswith("Ranked by peak memory"))
    order = re.findall(r"\d\. (\w+):", ranking)
    assert order == ["linear_probe", "bitfit", "adapter", "ia3", "lora", "full"]


def regression_run(root: Path, name: str, rmse: float, trainable: int, memory: float, seconds: float) -> Path:
    return write_run(root, name, {
        "task": "regression", "method": [name], "test": {"mae": rmse * 0.8, "mse": rmse ** 2, "rmse": rmse},
        "params": {"trainable": trainable, "total": 1000, "trainable_percent": trainable / 10},
        "train_seconds": seconds, "samples_per_second": 10.0, "peak_memory_mb": memory, "wall_seconds": seconds + 5})


def test_lower_is_better_metric(tmp_path):
    spec = {"full": (0.500, 1000, 2000.0, 100.0), "lora": (0.504, 15, 1200.0, 40.0),
            "bitfit": (0.600, 1, 1100.0, 30.0), "worse": (0.700, 20, 1500.0, 50.0)}
    runs = [summarize_run(n, regression_run(tmp_path, n, *v)) for n, v in spec.items()]
    assert {(s.metric, s.greater_is_better) for s in runs} == {("rmse", False)}
    assert pareto_front(runs, "params") == {"full", "lora", "bitfit"}  # "worse" loses to lora on everything
    assert pareto_front(runs, "memory") == {"full", "lora", "bitfit"}
    text = recommend(runs, "params")
    assert "Best rmse: full (0.5000)." in text
    assert "pick lora" in text  # 0.504 is within 1% of 0.500 (lower is better); bitfit's 0.600 is not
    change, value, ref, params, memory, time = numbers(
        r"lora's rmse is ([\d.]+)% higher than full's \(([\d.]+) vs ([\d.]+); lower is better\) with ([\d.]+)% of "
        r"the trainable parameters, ([\d.]+)× the peak memory and ([\d.]+)× the training time\.", text)
    assert (change, value, ref, params, memory, time) == (0.8, 0.504, 0.5, 1.5, 0.6, 0.4)
    assert choose(runs, "params", tolerance=0.25).label == "bitfit"


def test_sft_defaults_to_rouge_l_else_loss(tmp_path):
    base = {"task": "sft", "method": ["lora"], "params": {"trainable": 1, "total": 10, "trainable_percent": 10.0},
            "train_seconds": 1.0, "samples_per_second": 1.0, "tokens_per_second": 250.0, "peak_memory_mb": 1.0}
    scored = summarize_run("a", write_run(tmp_path, "a", {**base, "test": {"loss": 1.2, "rouge_l": 0.4}}))
    loss_only = summarize_run("b", write_run(tmp_path, "b", {**base, "test": {"loss": 1.1, "perplexity": 3.0}}))
    assert (scored.metric, scored.greater_is_better, scored.tokens_per_second) == ("rouge_l", True, 250.0)
    assert (loss_only.metric, loss_only.greater_is_better) == ("loss", False)
    with pytest.raises(UserError, match="different metrics"):
        check_comparable([scored, loss_only])
    check_comparable([summarize_run("a", tmp_path / "a", "loss"), summarize_run("b", tmp_path / "b", "loss")])


# ---------------------------------------------------------------------------- errors

def one_line_error(summaries: list[RunSummary]) -> str:
    with pytest.raises(UserError) as info:
        check_comparable(summaries)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_different_tasks_cannot_be_compared(runs, tmp_path):
    sft = write_run(tmp_path, "sft", {"task": "sft", "method": ["lora"], "test": {"loss": 1.0}, "params": {}})
    message = one_line_error([*runs, summarize_run("chat", sft)])
    assert "different tasks" in message and "classification: full, lora" in message and "sft: chat" in message
    with pytest.raises(UserError, match="different tasks"):
        write_reports([*runs, summarize_run("chat", sft)], tmp_path / "out")


def test_missing_metric_and_other_mistakes(runs, tmp_path):
    root = tmp_path / "runs"
    chosen = [summarize_run(s.label, s.run_dir, "f1") for s in runs]
    message = one_line_error(chosen)
    assert message.startswith("metric 'f1' is missing from the test results of full, lora")
    assert "every run reports: accuracy, f1_macro" in message
    assert "every run failed" in one_line_error([s for s in runs if not s.ok])
    assert "given more than once: lora" in one_line_error([*runs, summarize_run("lora", root / "lora")])
    with pytest.raises(UserError, match="unknown budget 'memroy' \\(did you mean 'memory'\\?\\)"):
        pareto_front(runs, "memroy")


# ---------------------------------------------------------------------------- files

def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_write_reports_files(runs, tmp_path):
    paths = write_reports(runs, tmp_path / "out", budget="params")
    assert set(paths) == {"markdown", "csv", "json", "metric_vs_trainable", "metric_vs_time", "peak_memory", "html"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["metric_vs_trainable"] == tmp_path / "out" / "plots" / "metric_vs_trainable.png"
    for name in ("metric_vs_trainable", "metric_vs_time", "peak_memory"):
        width, height = png_size(paths[name])
        assert width >= 400 and height >= 300

    md = paths["markdown"].read_text()
    rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("|")][2:]  # past the header
    assert [r[1].strip() for r in rows] == ["adapter", "lora", "bitfit", "full", "ia3", "linear_probe"]  # best first
    assert {r[1].strip() for r in rows if r[0].strip() == "★"} == FRONT["params"]
    assert "| accuracy ↑ |" in md and "## Failed runs" in md and "- **crashed**" in md and "did not finish" in md

    table = {r["label"]: r for r in csv.DictReader(paths["csv"].open())}
    assert set(table) == {*MEASURED, "crashed", "missing"}
    assert table["crashed"]["status"] == "failed" and "did not finish" in table["crashed"]["error"]
    assert float(table["adapter"]["test_accuracy"]) == pytest.approx(MEASURED["adapter"][1])
    assert int(table["full"]["artifact_bytes"]) == 90867976 and int(table["full"]["trainable"]) == TOTAL
    for cost, front in FRONT.items():
        assert {k for k, r in table.items() if r[f"pareto_{cost}"] == "True"} == front

    record = json.loads(paths["json"].read_text())
    assert (record["task"], record["metric"], record["greater_is_better"]) == ("classification", "accuracy", True)
    assert (record["best"], record["recommended"], record["budget"]) == ("adapter", "adapter", "params")
    assert record["pareto"]["params"] == ["linear_probe", "ia3", "bitfit", "adapter"]  # cheapest first
    assert record["pareto"]["time"] == ["linear_probe", "adapter"]
    runs_json = {r["label"]: r for r in record["runs"]}
    assert runs_json["missing"]["status"] == "failed" and runs_json["lora"]["artifact_bytes"] == 1363800
    assert runs_json["bitfit"]["pareto"] == {"params": True, "memory": True, "time": False}


def test_html_is_self_contained(runs, tmp_path):
    page = write_reports(runs, tmp_path / "out", budget="memory")["html"].read_text()
    assert page.count("data:image/png;base64,") == 3
    assert all(url.startswith("data:") for url in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count('<tr class="pareto">') == len(FRONT["memory"])


def test_rich_table(runs):
    from rich.console import Console

    console = Console(record=True, width=240)
    console.print(rich_table(runs, budget="time"))
    text = console.export_text()
    assert all(name in text for name in MEASURED) and "accuracy ↑" in text
    assert sum(line.startswith("│ ★ │") for line in text.splitlines()) == len(FRONT["time"])
    assert "failed: crashed: run" in text and "missing: run directory" in text


# ---------------------------------------------------------------------------- headless Chromium

def render(page: Path, tmp_path: Path) -> tuple[str, str]:
    """(DOM after load, console lines) of ``page`` in headless Chromium with a fresh profile."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: CI installs it (apt-get install -y chromium); install it to run this test")
    profile = tmp_path / f"chromium-profile-{page.stem}"
    profile.mkdir()
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom",
           "--virtual-time-budget=2000", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return done.stdout, "\n".join(console)


def test_chromium_catches_script_errors_and_broken_images(tmp_path):
    """The checks below are not vacuous: a script error and a broken image do show."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><img src="data:image/png;base64,AAAA">'
                    '<script>window.addEventListener("load", function () { var n = 0;'
                    " for (var i = 0; i < document.images.length; i++) {"
                    " if (document.images[i].naturalWidth > 0) { n++; } }"
                    ' document.body.dataset.images = n + "/" + document.images.length; });'
                    " undefinedFunction();</script></body></html>")
    dom, console = render(page, tmp_path)
    assert 'data-images="0/1"' in dom
    assert "Uncaught ReferenceError" in console


def test_html_report_renders_in_chromium(runs, tmp_path):
    page = write_reports(runs, tmp_path / "out", budget="params")["html"]
    dom, console = render(page, tmp_path)
    assert not console, f"console messages while rendering the report:\n{console}"
    assert 'data-images="3/3"' in dom, "not every plot decoded: " + (re.findall(r"data-images=\"[^\"]*\"", dom)
                                                                      or ["no image count"])[0]
    assert '<table id="comparison">' in dom and dom.count("<tr") == 1 + len(MEASURED)
    assert dom.count('<tr class="pareto">') == len(FRONT["params"])
    assert "For the trainable parameters budget, pick adapter" in dom and "Failed runs" in dom
