"""Hostile input, as a new user would try it: every case is refused with exit code 2, at most 3 lines on
stderr, no traceback, an error line that names the field/row/file at fault, and nothing written (a
refused ``train`` leaves no run directory; an existing run's files keep their hashes).

Each case builds its own bad input in ``tmp_path``; cases that need a finished run share one
(``trained``, copied per case so a case may damage its copy).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_overrides
from tunelab.cli import main


@dataclass
class Ctx:
    """What a case may use: the tiny base model, real review rows, a scratch folder, a finished run."""

    bert: Path
    reviews: Path
    tmp: Path
    trained: Callable[[], Path]

    def train_args(self, data: Path | str, **extra: object) -> list[str]:
        return ["train", *tiny_overrides(self.bert, Path(data), self.tmp / "out", **{"train.epochs": 1, **extra})]

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return path

    def jsonl(self, name: str, rows: list[dict], raw: dict[int, str] | None = None) -> Path:
        """``rows`` as JSON lines; ``raw[i]`` replaces line i+1 verbatim (NaN, broken JSON, ...)."""
        lines = [(raw or {}).get(i, json.dumps(r)) for i, r in enumerate(rows)]
        return self.write(name, "\n".join(lines) + "\n")

    def csv(self, name: str, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
        return self.write(name, header + "\n" + "".join(f"{t},{v}\n" for t, v in rows))


def reviews(n: int = 40) -> list[dict]:
    """Plain valid rows, two classes."""
    return [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(n)]


def targets(n: int = 40) -> list[tuple[str, str]]:
    """Valid regression rows (text, target)."""
    return [(f"review number {i}", f"{(i % 7) / 2:.1f}") for i in range(n)]


def _yaml(c: Ctx, text: str) -> list[str]:
    return ["train", str(c.write("bad.yaml", text)), f"output_dir={c.tmp / 'out'}"]


def _csv_with(c: Ctx, row: int, value: str) -> list[str]:
    """Regression on a csv whose target at data row ``row`` (0-based) is ``value``."""
    rows = targets()
    rows[row] = (rows[row][0], value)
    return c.train_args(c.csv("targets.csv", rows), **{"task.name": "regression"})


def _jsonl_target(c: Ctx, value: str) -> list[str]:
    """Regression on a jsonl whose 5th line's target is ``value`` (raw JSON)."""
    rows = [{"text": t, "label": float(v)} for t, v in targets()]
    raw = {4: '{"text": "x", "label": ' + value + "}"}
    return c.train_args(c.jsonl("targets.jsonl", rows, raw=raw), **{"task.name": "regression"})


def _jsonl_with(c: Ctx, name: str, raw: dict[int, str]) -> list[str]:
    """Classification on real-looking rows with some lines replaced verbatim."""
    return c.train_args(c.jsonl(name, reviews(), raw=raw))


def _damaged_weights(c: Ctx, how: str) -> list[str]:
    run = c.trained()
    weights = run / "model" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:  # flip one byte near the end, inside the tensor data (the header stays valid)
        data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    return ["predict", str(run), "a fine film"]


def _changed_base(c: Ctx) -> list[str]:
    """A run trained on a copy of the base; then the copy is replaced by a differently initialised model."""
    import torch
    from transformers import BertConfig, BertModel

    base = c.tmp / "base"
    shutil.copytree(c.bert, base)
    assert main(c.train_args(c.reviews, **{"model.name_or_path": base})) == 0
    torch.manual_seed(123)
    BertModel(BertConfig.from_pretrained(base)).save_pretrained(base)
    return ["predict", str(c.tmp / "out" / "run"), "a fine film"]


CASES: dict[str, tuple[Callable[[Ctx], list[str]], list[str]]] = {
    # ---- the config
    "malformed yaml": (lambda c: _yaml(c, "train:\n  lr: [1e-3\n"), ["malformed YAML", "line"]),
    "yaml that is a list": (lambda c: _yaml(c, "- train\n- lr\n"), ["bad.yaml"]),
    "unknown top-level key": (lambda c: _yaml(c, "trian:\n  lr: 0.001\n"), ["trian", "train"]),
    "unknown nested key": (lambda c: c.train_args(c.reviews, **{"train.lrr": 1e-3}), ["train.lrr", "lr"]),
    "wrong type": (lambda c: c.train_args(c.reviews, **{"train.epochs": "two"}), ["train.epochs"]),
    "wrong type in yaml": (lambda c: _yaml(c, "train:\n  batch_size: [1, 2]\n"), ["train.batch_size"]),
    "unknown encoding": (lambda c: c.train_args(c.reviews, **{"data.encoding": "klingon"}),
                         ["data.encoding", "klingon", "latin-1"]),
    # ---- files
    "missing file": (lambda c: c.train_args(c.tmp / "nope.jsonl"), ["nope.jsonl", "does not exist"]),
    "empty file": (lambda c: c.train_args(c.write("empty.csv", "")), ["empty.csv", "empty"]),
    "header-only csv": (lambda c: c.train_args(c.write("header.csv", "text,label\n")), ["header.csv", "no rows"]),
    "whitespace-only jsonl": (lambda c: c.train_args(c.write("blank.jsonl", "\n \n")), ["blank.jsonl", "no rows"]),
    "latin-1 csv read as utf-8": (
        lambda c: c.train_args(c.write("latin.csv", "text,label\ncaf\xe9 cr\xe8me,1\nbad,0\n".encode("latin-1"))),
        ["latin.csv", "not UTF-8", "line 2", "data.encoding"]),
    "binary file as csv": (lambda c: c.train_args(c.write("noise.csv", bytes(range(256)) * 4)),
                           ["noise.csv", "data.encoding"]),
    "unsupported extension": (lambda c: c.train_args(c.write("data.xlsx", "x")), [".xlsx", ".jsonl"]),
    "broken jsonl line": (lambda c: _jsonl_with(c, "broken.jsonl", {2: '{"text": "x", '}),
                          ["broken.jsonl", "line 3"]),
    "jsonl line that is not an object": (lambda c: _jsonl_with(c, "list.jsonl", {1: "[1, 2]"}),
                                         ["list.jsonl", "line 2", "object"]),
    "ragged csv": (lambda c: c.train_args(c.write("ragged.csv", "text,label\na,1\nb,0,extra,more\n")),
                   ["ragged.csv"]),
    # ---- columns and labels
    "missing text column": (lambda c: c.train_args(c.reviews, **{"data.text_column": "txt"}),
                            ["data.text_column='txt'", "available: text, label"]),
    "missing label column": (lambda c: c.train_args(c.jsonl("nolabel.jsonl", [{"text": "a"}, {"text": "b"}])),
                             ["data.label_column='label'", "available: text"]),
    "label outside label_names": (lambda c: c.train_args(c.reviews, **{"data.label_names": "[neg,pos]"}),
                                  ["label", "data.label_names"]),
    "unseen label in the validation file": (
        lambda c: c.train_args(c.reviews, **{"data.validation_file": c.jsonl("val.jsonl", [{"text": "x",
                                                                                            "label": 7}])}),
        ["label 7 at line 1 of file", "val.jsonl", "never seen"]),
    "single-class data": (lambda c: c.train_args(c.jsonl("one.jsonl", [{"text": f"t{i}", "label": "pos"}
                                                                       for i in range(30)])),
                          ["only 1 distinct label", "'pos'"]),
    "null class label": (lambda c: _jsonl_with(c, "nulllabel.jsonl", {2: '{"text": "x", "label": null}'}),
                         ["line 3 of file", "nulllabel.jsonl", "column 'label'", "missing"]),
    "empty class label in a csv": (lambda c: c.train_args(c.csv("emptylabel.csv", [("good", "1"), ("bad", "")] * 10)),
                                   ["row 2 of file", "emptylabel.csv", "column 'label'"]),
    # ---- regression targets
    "empty csv target": (lambda c: _csv_with(c, 6, ""),
                         ["row 7 of file", "targets.csv", "column 'label'", "missing"]),
    "NaN csv target": (lambda c: _csv_with(c, 6, "NaN"),
                       ["row 7 of file", "column 'label'", "'NaN'"]),
    "inf csv target": (lambda c: _csv_with(c, 9, "inf"),
                       ["row 10 of file", "is inf", "finite number"]),
    "string csv target": (lambda c: _csv_with(c, 2, "lots"),
                          ["row 3 of file", "'lots'", "finite number"]),
    "NaN jsonl target": (lambda c: _jsonl_target(c, "NaN"),
                         ["line 5 of file", "targets.jsonl", "column 'label'"]),
    "null jsonl target": (lambda c: _jsonl_target(c, "null"),
                          ["line 5 of file", "missing"]),
    "infinite jsonl target": (lambda c: _jsonl_target(c, "-Infinity"),
                              ["line 5 of file", "-inf"]),
    "target in the test file": (
        lambda c: c.train_args(c.csv("targets.csv", targets()), **{"task.name": "regression",
                               "data.test_file": c.csv("test.csv", [("fine", "1.0"), ("meh", "nan")])}),
        ["row 2 of file", "test.csv", "'nan'"]),
    # ---- texts
    "empty text": (lambda c: _jsonl_with(c, "emptytext.jsonl", {3: '{"text": "", "label": 1}'}),
                   ["line 4 of file", "column 'text' is empty", "data.drop_empty"]),
    "null text": (lambda c: _jsonl_with(c, "nulltext.jsonl", {0: '{"text": null, "label": 1}', 5: '{"label": 0}'}),
                  ["line 1 of file", "column 'text' is empty", "2 rows of the train split", "data.drop_empty"]),
    "whitespace text in a csv": (lambda c: c.train_args(c.csv("blanktext.csv", [("good", "1"), ("  ", "0")] * 10)),
                                 ["row 2 of file", "blanktext.csv", "data.drop_empty"]),
    # ---- run directories
    "existing run directory": (lambda c: c.train_args(c.reviews, **{"output_dir": c.trained().parent}),
                               ["already exists", "--overwrite", "--resume"]),
    "truncated weights file": (lambda c: _damaged_weights(c, "truncate"), ["weights.safetensors", "damaged"]),
    "corrupted weights file": (lambda c: _damaged_weights(c, "flip"), ["weights.safetensors", "damaged"]),
    "damaged config.yaml": (lambda c: ["eval", str(_damage(c.trained(), "config.yaml", "train: [\n"))],
                            ["config.yaml", "damaged"]),
    "damaged label map": (lambda c: ["predict", str(_damage(c.trained(), "label_map.json", "{")), "fine"],
                          ["label_map.json", "damaged"]),
    "base model changed since training": (_changed_base, ["different base model", "fingerprint"]),
    "predict on a folder that is not a run": (lambda c: ["predict", str(c.tmp), "fine"],
                                              ["not a tunelab run directory"]),
    "eval on a folder that is not a run": (lambda c: ["eval", str(c.tmp)], ["not a tunelab run directory"]),
    "eval on a run that does not exist": (lambda c: ["eval", str(c.tmp / "no-run")], ["no-run"]),
    "resume a finished run": (lambda c: ["train", "--resume", str(c.trained())], ["already finished"]),
    "predict file with a null text": (
        lambda c: ["predict", str(c.trained()), "--file", str(c.jsonl("in.jsonl", [{"text": "ok"}, {"text": None}]))],
        ["line 2 of file", "in.jsonl", "column 'text' is empty"]),
    "eval file with an unseen label": (
        lambda c: ["eval", str(c.trained()), "--data", str(c.jsonl("ev.jsonl", [{"text": "ok", "label": "maybe"}]))],
        ["'maybe'", "known labels"]),
}


def _damage(run: Path, name: str, text: str) -> Path:
    (run / name).write_text(text)
    return run


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_bert_dir, reviews_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{"train.epochs": 1})]) == 0
    return out / "run"


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_clear_refusal(case, tiny_bert_dir, reviews_jsonl, tmp_path, request, capsys) -> None:
    build, fragments = CASES[case]
    copies: list[Path] = []

    def trained() -> Path:
        """A private copy of the finished run (a case may damage it)."""
        copy = tmp_path / "runs" / "run"
        if not copies:
            shutil.copytree(request.getfixturevalue("finished_run"), copy)
            copies.append(copy)
        return copy

    argv = build(Ctx(tiny_bert_dir, reviews_jsonl, tmp_path, trained))
    capsys.readouterr()
    before = _hashes(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert 1 <= len(lines) <= 3 and "Traceback" not in err, err
    error = next((line for line in lines if line.startswith("tunelab: error: ")), "")
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"
    assert _hashes(tmp_path) == before, "a refused command changed files"
    if argv[0] == "train" and "--resume" not in argv:
        assert not (tmp_path / "out" / "run").exists()


def test_the_refusal_is_one_line_from_the_command_too(tmp_path) -> None:
    """As a user sees it: a real process, its exit code and its stderr."""
    bad = tmp_path / "t.csv"
    bad.write_text("text,label\ngood,1.5\nbad,NaN\n")
    proc = run_cli("train", f"data.source={bad}", "task.name=regression", f"output_dir={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"row 2 of file {bad}" in proc.stderr and "'NaN'" in proc.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_drop_empty_drops_and_counts_empty_texts(tiny_bert_dir, tmp_path, capsys) -> None:
    rows = reviews()
    rows[3]["text"], rows[8]["text"] = "", None
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", *tiny_overrides(tiny_bert_dir, data, tmp_path / "out", **{"data.drop_empty": "true",
                                                                                   "train.epochs": 1})]) == 0
    assert "dropped 2 train row(s) with an empty text (data.drop_empty)" in capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "run" / "results.json").read_text())
    assert result["train_samples"] + result["test_rows"] < len(rows)  # the two rows are gone


def test_other_encodings_are_read_when_named_or_detected(tiny_bert_dir, tmp_path, capsys) -> None:
    text = "".join(f"caf\xe9 cr\xe8me {i} tr\xe8s {'bon' if i % 2 else 'mauvais'},{i % 2}\n" for i in range(40))
    data = tmp_path / "latin.csv"
    data.write_bytes(("text,label\n" + text).encode("latin-1"))
    for encoding in ("latin-1", "auto"):
        out = tmp_path / encoding
        assert main(["train", *tiny_overrides(tiny_bert_dir, data, out, **{"data.encoding": encoding,
                                                                          "train.epochs": 1})]) == 0
        capsys.readouterr()
        assert main(["predict", str(out / "run"), "--file", str(data)]) == 0
        first = json.loads(capsys.readouterr().out.splitlines()[0])
        assert first["text"] == "caf\xe9 cr\xe8me 0 tr\xe8s mauvais"  # decoded, not mojibake


def test_a_million_character_text_is_truncated_with_bounded_memory(tiny_bert_dir, tmp_path) -> None:
    """One 1,000,000-character row trains like any other: truncated to data.max_length, and the run's
    peak memory stays within 400 MB of the same run without it."""
    peaks, tokens = {}, {}
    for name, long in (("short", "a fine film"), ("long", "word " * 200_000)):
        rows = reviews(60)
        rows[5]["text"] = long
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        proc = run_cli("train", *tiny_overrides(tiny_bert_dir, data, tmp_path / name, **{"train.epochs": 1}))
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads((tmp_path / name / "run" / "results.json").read_text())
        peaks[name], tokens[name] = result["peak_memory_mb"], result["train_tokens"]
    assert len("word " * 200_000) == 1_000_000
    assert peaks["long"] < peaks["short"] + 400, peaks
    assert tokens["long"] - tokens["short"] <= 32, tokens  # at most data.max_length tokens more
