"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing earlier lost."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, tiny_overrides
from tunelab.cli import main


def _fail(capsys, *argv: str) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [x for x in captured.err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("tunelab: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_missing_data_file(capsys, tiny_bert_dir, tmp_path):
    err = _fail(capsys, "train", *tiny_overrides(tiny_bert_dir, tmp_path / "nope.jsonl", tmp_path))
    assert "nope.jsonl" in err
    assert not (tmp_path / "run").exists()


def test_unknown_column_lists_available(capsys, tiny_bert_dir, reviews_jsonl, tmp_path):
    err = _fail(capsys, "train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path,
                                                 **{"data.text_column": "txt"}))
    assert "txt" in err and "text" in err and "label" in err


def test_empty_dataset(capsys, tiny_bert_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty" in _fail(capsys, "train", *tiny_overrides(tiny_bert_dir, empty, tmp_path)).lower()


@pytest.mark.parametrize("override,needle", [
    ("method.name=lorra", "did you mean 'lora'"),
    ("model.name_or_path=no-such-model", "built-in alias"),
    ("model.name_or_path=someone/some-model", "offline"),
    ("data.source=rotten_tomato", "did you mean 'rotten_tomatoes'"),
    ("train.lrr=1e-3", "did you mean 'lr'"),
    ("train.lr=-1", "train.lr"),
    ("train.scheduler=triangle", "linear"),
    ("method.target_modules=[querry]", "query"),
])
def test_bad_names_and_values(capsys, override, needle):
    assert needle in _fail(capsys, "train", override)


def test_malformed_yaml(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lr: [1e-3\n")
    err = _fail(capsys, "train", str(cfg))
    assert "malformed YAML" in err and "line" in err


def test_unseen_label_in_eval_data(capsys, tiny_bert_dir, reviews_jsonl, tmp_path):
    assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{"train.epochs": 1})]) == 0
    capsys.readouterr()
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "fine", "label": "fresh"}) + "\n"
                     + json.dumps({"text": "meh", "label": "lukewarm"}) + "\n")
    err = _fail(capsys, "eval", str(tmp_path / "run"), "--data", str(other))
    assert "lukewarm" in err and "fresh" in err


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    proc = run_cli("train", "method.name=nonsense")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "unknown method" in proc.stderr


def test_debug_shows_traceback(capsys):
    with pytest.raises(Exception):
        main(["--debug", "train", "method.name=nonsense"])
