"""``tunelab compare``: compare-file checks (one line, nothing written), labels, then real comparisons of
tiny runs: reports, a failed run, skip and resume on rerun, a changed config, ``--overwrite --only``, SFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli, tiny_overrides
from tunelab.cli import main
from tunelab.compare.config import compare_dir, load_compare, plan_runs
from tunelab.compare.runner import config_difference, failure_message
from tunelab.config import apply_override, build_config
from tunelab.train.checkpoint import latest_checkpoint

QUIET = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny models: one thread is enough


def tiny_base(model: Path, data: Path, **extra: object) -> dict:
    """The tiny run settings of ``tiny_overrides`` as a compare file's ``base`` (1 epoch, 32 rows)."""
    base: dict = {}
    for override in tiny_overrides(model, data, Path("unused"), **{"train.epochs": 1, "data.max_train_samples": 32,
                                                                    **extra}):
        apply_override(base, override)
    del base["name"], base["output_dir"]
    return base


def write_compare(path: Path, out: Path, base: dict, runs: object, **extra: object) -> Path:
    doc = {"name": "tiny", "output_dir": str(out), "base": base, "runs": runs, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- bad compare files

BAD = {
    "unknown-method": ({"runs": ["lora", "lorra"]}, "unknown method 'lorra' (did you mean 'lora'?)"),
    "empty-runs": ({"runs": []}, "no runs to compare"),
    "no-runs-key": ({"runs": None}, "no runs to compare"),
    "epochs-per-run": ({"runs": ["lora", {"method": "bitfit", "set": {"train.epochs": 3}}]},
                       "'train.epochs' cannot differ between runs: it would break the same-budget comparison"),
    "max-steps-nested": ({"runs": [{"method": "lora", "set": {"train": {"max_steps": 9}}}]}, "'train.max_steps'"),
    "seed-per-run": ({"runs": [{"method": "lora", "set": {"seed": 1}}]}, "same-budget"),
    "duplicate-labels": ({"runs": ["lora", "bitfit", "lora"]}, "runs[0] and runs[2] are both labelled 'lora'"),
    "task-per-run": ({"runs": [{"method": "lora", "set": {"task.name": "regression"}}]}, "the same task"),
    "data-per-run": ({"runs": [{"method": "lora", "set": {"data.source": "other.jsonl"}}]}, "same base model"),
    "method-in-base": ({"base_method": "lora", "runs": ["lora"]}, "'method' cannot be shared"),
    "bad-run-value": ({"runs": [{"method": "lora", "set": {"train.lr": -1}}]}, "run 'lora': config key 'train.lr'"),
    "bad-composition": ({"runs": [{"method": "full", "extra_methods": ["lora"]}]},
                        "run 'full+lora': method 'full' already trains every parameter"),
    "unknown-run-key": ({"runs": [{"methd": "lora"}]}, "'runs[0].methd' (did you mean 'method'?)"),
    "unknown-metric": ({"runs": ["lora"], "metric": "acuracy"}, "(did you mean 'accuracy'?)"),
    "bad-label": ({"runs": [{"label": "a/b", "method": "lora"}]}, "'runs[0].label'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_compare_file_is_one_line_and_writes_nothing(case, tiny_bert_dir, reviews_jsonl, tmp_path, capsys):
    doc, expected = BAD[case]
    doc = dict(doc)
    base = tiny_base(tiny_bert_dir, reviews_jsonl)
    if "base_method" in doc:
        base["method"] = doc.pop("base_method")
    out = tmp_path / "out"
    path = write_compare(tmp_path / "bad.yaml", out, base, **doc)
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunelab: error: ") and "\n" not in err, err
    assert expected in err, err
    assert not out.exists()


def test_unknown_only_label_is_refused(tiny_bert_dir, reviews_jsonl, tmp_path, capsys):
    path = write_compare(tmp_path / "c.yaml", tmp_path / "out", tiny_base(tiny_bert_dir, reviews_jsonl),
                         ["lora", "bitfit"])
    assert main(["compare", str(path), "--only", "bitfti"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown run label in --only 'bitfti' (did you mean 'bitfit'?)" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_labels_merge_and_validation(tiny_bert_dir, reviews_jsonl, tmp_path):
    runs = ["lora", {"method": {"name": "lora", "r": 16}}, {"method": "lora", "set": {"train.lr": 5e-4}},
            {"method": "lora", "extra_methods": ["bitfit"]}, {"label": "mine", "method": "ia3",
                                                              "set": {"data": {"max_length": 48}}}]
    cfg = load_compare(write_compare(tmp_path / "labels.yaml", tmp_path / "out", tiny_base(tiny_bert_dir,
                                                                                           reviews_jsonl), runs))
    root = compare_dir(cfg)
    plan = {run.label: run.config for run in plan_runs(cfg, root)}
    assert list(plan) == ["lora", "lora-r16", "lora-lr0.0005", "lora+bitfit", "mine"]
    assert plan["lora-r16"].method.r == 16 and plan["lora"].method.r == 8
    assert plan["lora-lr0.0005"].train.lr == 5e-4 and plan["lora"].train.lr == 5e-3  # base lr elsewhere
    assert [m.name for m in plan["lora+bitfit"].methods()] == ["lora", "bitfit"]
    assert plan["mine"].data.max_length == 48 and plan["lora"].data.max_length == 32
    assert all(c.name == label and c.output_dir == str(root / "runs") and c.train.epochs == 1
               for label, c in plan.items())
    assert not (tmp_path / "out").exists()


def test_example_compare_file_plans_every_method_on_one_budget():
    cfg = load_compare(REPO / "examples" / "compare-sentiment.yaml")
    plan = plan_runs(cfg, compare_dir(cfg))
    assert [r.label for r in plan] == ["full", "freeze", "bitfit", "lora", "qlora", "ia3", "adapter",
                                       "parallel_adapter", "prefix_tuning", "ptuning_v2", "prompt_tuning"]
    assert {(r.config.train.epochs, r.config.train.max_steps, r.config.seed, r.config.data.max_train_samples)
            for r in plan} == {(2, None, 42, None)}


def test_failure_message_and_config_difference():
    assert failure_message("loading\ntunelab: error: no column 'x'; columns: text\n", 2) == \
        "no column 'x'; columns: text"
    assert failure_message("tunelab: training diverged: loss is nan at step 3\n", 3) == \
        "training diverged: loss is nan at step 3"
    assert failure_message("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n", 1) == "RuntimeError: boom"
    assert failure_message("step 1\n", -9) == "killed by SIGKILL after: step 1"
    saved = {"output_dir": "a", "train": {"lr": 0.001, "epochs": 1}}
    assert config_difference(saved, {"output_dir": "b", "train": {"lr": 0.001, "epochs": 1}}) is None
    assert config_difference(saved, {"output_dir": "a", "train": {"lr": 0.01, "epochs": 1}}) == \
        "train.lr: 0.001 -> 0.01"


# ---------------------------------------------------------------------------- real comparisons

def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _record(root: Path) -> dict:
    return json.loads((root / "comparison.json").read_text())


@pytest.fixture(scope="module")
def compared(tiny_bert_dir, reviews_jsonl, tmp_path_factory):
    """lora, bitfit and a run that fails at run time (its text column does not exist), compared once."""
    tmp = tmp_path_factory.mktemp("compare")
    runs = ["lora", "bitfit", {"label": "broken", "method": "ia3", "set": {"data.text_column": "review"}}]
    path = write_compare(tmp / "tiny.yaml", tmp / "out", tiny_base(tiny_bert_dir, reviews_jsonl), runs)
    return path, tmp / "out" / "tiny", run_cli("compare", str(path), env=QUIET)


def test_compare_writes_reports_and_records_the_failed_run(compared):
    path, root, proc = compared
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(root) and lines[-2] == f"report: {root / 'report.html'}"
    assert any(line.startswith("[1/3] lora: training ... done in ") and ", accuracy 0." in line for line in lines)
    assert any(line.startswith("[3/3] broken: training ... failed after ") for line in lines)
    for name in ("comparison.md", "comparison.csv", "comparison.json", "report.html", "compare.yaml",
                 "plots/metric_vs_trainable.png", "plots/metric_vs_time.png", "plots/peak_memory.png",
                 "logs/lora.log", "logs/bitfit.log", "logs/broken.log", "runs/lora/results.json",
                 "runs/bitfit/results.json"):
        assert (root / name).is_file(), name
    record = _record(root)
    status = {r["label"]: (r["status"], r["error"]) for r in record["runs"]}
    assert status["lora"] == ("ok", None) and status["bitfit"] == ("ok", None)
    assert status["broken"][0] == "failed" and "review" in status["broken"][1], status["broken"]
    assert str(root / "logs" / "broken.log") in status["broken"][1]
    assert record["task"] == "classification" and record["metric"] == "accuracy"
    assert record["recommended"] in ("lora", "bitfit")
    assert "Left out because they failed: broken" in proc.stdout
    cfg = build_config(root / "configs" / "bitfit.yaml")  # what the run was trained from
    assert cfg.name == "bitfit" and Path(cfg.output_dir) == root / "runs" and cfg.method.name == "bitfit"


def test_rerun_skips_finished_and_resumes_interrupted(compared):
    path, root, _ = compared
    lora, bitfit = root / "runs" / "lora", root / "runs" / "bitfit"
    assert latest_checkpoint(lora / "checkpoints") is not None
    (lora / "results.json").unlink()  # as if the run had been stopped after its last checkpoint
    before = _mtime(bitfit / "results.json")
    proc = run_cli("compare", str(path), env=QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[2/3] bitfit: finished earlier, skipped (accuracy " in proc.stdout
    assert "[1/3] lora: resuming from step " in proc.stdout and "[3/3] broken: training ... failed" in proc.stdout
    assert _mtime(bitfit / "results.json") == before
    assert (lora / "results.json").is_file()
    log = (root / "logs" / "lora.log").read_text()
    assert "--resume" in log and "resuming from" in log
    assert {r["label"]: r["status"] for r in _record(root)["runs"]} == {"lora": "ok", "bitfit": "ok",
                                                                         "broken": "failed"}


def test_changed_config_is_refused_then_redone_with_overwrite_only(compared, capsys):
    path, root, _ = compared
    doc = yaml.safe_load(path.read_text())
    doc["runs"][1] = {"method": "bitfit", "set": {"train.lr": 0.01}}
    changed = path.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(doc, sort_keys=False))
    lora_done, bitfit_done = _mtime(root / "runs/lora/results.json"), _mtime(root / "runs/bitfit/results.json")

    assert main(["compare", str(changed)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run 'bitfit'" in err and "train.lr: 0.005 -> 0.01" in err, err
    assert "--overwrite --only bitfit" in err
    assert _mtime(root / "runs/bitfit/results.json") == bitfit_done

    proc = run_cli("compare", str(changed), "--overwrite", "--only", "bitfit", "--budget", "time", env=QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/3] lora: finished earlier, kept" in proc.stdout and "[3/3] broken: not in --only" in proc.stdout
    assert "[2/3] bitfit: training ... done in " in proc.stdout
    assert _mtime(root / "runs/lora/results.json") == lora_done
    assert _mtime(root / "runs/bitfit/results.json") != bitfit_done
    assert build_config(root / "runs/bitfit/config.yaml").train.lr == 0.01
    record = _record(root)
    assert [r["label"] for r in record["runs"]] == ["lora", "bitfit"] and record["budget"] == "time"


def test_sft_compare(tiny_llama_dir, tmp_path):
    from tunelab.data.wordnet import build_instruct_rows

    rows = build_instruct_rows(seed=0, max_words=40)[:60]
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n" for r in rows))
    base = {"model": {"name_or_path": str(tiny_llama_dir)}, "data": {"source": str(data), "max_length": 64,
                                                                      "max_train_samples": 16},
            "task": {"name": "sft", "eval_generate": 2, "max_new_tokens": 4},
            "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "lr": 5e-3}}
    path = write_compare(tmp_path / "sft.yaml", tmp_path / "out", base, ["lora", "ia3"], budget="memory")
    proc = run_cli("compare", str(path), env=QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(tmp_path / "out" / "tiny")
    assert record["task"] == "sft" and record["metric"] == "rouge_l" and record["budget"] == "memory"
    assert [(r["label"], r["status"]) for r in record["runs"]] == [("lora", "ok"), ("ia3", "ok")]
    assert (tmp_path / "out" / "tiny" / "report.html").is_file()


def test_rl_compare_ranks_by_the_held_out_judge(tiny_llama_dir, tmp_path):
    fn = "tests.tasks.rl_reward_fns:length"
    base = {"model": {"name_or_path": str(tiny_llama_dir)},
            "data": {"source": "rt_prompts", "max_length": 48, "max_train_samples": 4, "max_eval_samples": 4},
            "task": {"name": "grpo", "reward": fn, "judge": fn, "group_size": 2, "max_new_tokens": 4,
                     "ppo_epochs": 1, "eval_baseline": False},
            "train": {"max_steps": 2, "batch_size": 2, "eval_batch_size": 8, "lr": 5e-3, "eval_strategy": "no"}}
    path = write_compare(tmp_path / "grpo.yaml", tmp_path / "out", base, ["lora", "ia3"])
    proc = run_cli("compare", str(path), env=QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(tmp_path / "out" / "tiny")
    assert record["task"] == "grpo" and record["metric"] == "judge_mean"
    assert [(r["label"], r["status"]) for r in record["runs"]] == [("lora", "ok"), ("ia3", "ok")]


def test_a_run_saved_before_a_config_key_existed_is_not_a_changed_config(tmp_path):
    """A config.yaml written by an older tunelab lacks keys added since; their defaults are no change."""
    import yaml as _yaml

    from tunelab.compare.runner import with_defaults
    from tunelab.config import to_yaml_dict, validate_config

    today = to_yaml_dict(validate_config({"model": {"name_or_path": "minilm"}}))
    older = _yaml.safe_load(_yaml.safe_dump(today))
    del older["train"]["report_to"], older["train"]["max_seconds"]
    assert config_difference(with_defaults(older), today) is None
    older["train"]["lr"] = 0.5
    assert config_difference(with_defaults(older), today) == f"train.lr: 0.5 -> {today['train']['lr']}"
