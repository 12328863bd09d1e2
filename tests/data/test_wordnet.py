"""The WordNet instruction dataset: parsing a hand-written fixture and the installed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data import wordnet
from tunelab.data.wordnet import (
    Synset,
    build_instruct_rows,
    contains_word,
    iter_synsets,
    load_synsets,
    load_wordnet_instruct,
    parse_gloss,
    wordnet_dir,
    write_jsonl,
)
from tunelab.errors import UserError

_LICENSE = "  1 This software and database is provided for the fixture only.\n"

FIXTURE: dict[str, str] = {
    "data.noun": _LICENSE
    + "00001000 04 n 0a alpha 0 beta 0 gamma 1 delta 0 epsilon 0 zeta 0 eta 0 theta 0 iota 0 "
    "kappa 0 001 @ 00002000 n 0000 | a group of ten letters  \n"
    "00002000 17 n 01 bank 0 002 @ 00001000 n 0000 + 00003000 v 0101 | sloping land; especially "
    'beside a river; "he sat on the bank; the river was low"; "banks erode" -Anon  \n'
    "00007000 15 n 01 China 0 000 | a country in Asia  \n"
    "00007100 06 n 01 china 0 000 | high quality porcelain  \n",
    "data.verb": _LICENSE
    + "00003000 40 v 01 bank 0 001 @ 00004000 v 0000 02 + 02 00 + 08 01 | do business with a "
    'bank; "Where do you bank?"  \n',
    "data.adj": _LICENSE
    + "00005000 00 a 02 ready(a) 0 prepared(p) 0 000 | completely prepared  \n"
    "00005100 00 s 01 galore(ip) 0 001 & 00005000 a 0000 | in abundance; "
    '"whiskey galore"  \n',
    "data.adv": _LICENSE
    + "00006000 02 r 01 quickly 0 000 | with speed; "
    '"she answered quickly and left"  \n',
    "index.noun": _LICENSE
    + "alpha n 1 1 @ 1 0 00001000  \n"
    "bank n 1 2 @ + 1 5 00002000  \n"
    "china n 2 0 2 1 00007000 00007100  \n",
    "index.verb": _LICENSE + "bank v 1 1 @ 1 2 00003000  \n",
    "index.adj": _LICENSE + "galore a 1 1 & 1 0 00005100  \nready a 1 0 1 3 00005000  \n",
    "index.adv": _LICENSE + "quickly r 1 0 1 1 00006000  \n",
}


@pytest.fixture
def fixture_dir(tmp_path: Path) -> Path:
    """A tiny WordNet database in the real file format."""
    for name, text in FIXTURE.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_parse_fixture_synsets(fixture_dir: Path) -> None:
    nouns = list(iter_synsets(fixture_dir / "data.noun", "noun"))
    assert len(nouns) == 4
    assert nouns[0] == Synset(
        offset=1000,
        pos="noun",
        words=("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
               "kappa"),
        definition="a group of ten letters",
        examples=(),
    )
    assert nouns[1] == Synset(
        offset=2000,
        pos="noun",
        words=("bank",),
        definition="sloping land; especially beside a river",
        examples=("he sat on the bank; the river was low", "banks erode"),
    )
    (verb,) = iter_synsets(fixture_dir / "data.verb", "verb")
    assert verb == Synset(
        offset=3000,
        pos="verb",
        words=("bank",),
        definition="do business with a bank",
        examples=("Where do you bank?",),
        frames=((2, 0), (8, 1)),
    )
    ready, galore = iter_synsets(fixture_dir / "data.adj", "adj")
    assert (ready.pos, ready.words, ready.definition) == ("adj", ("ready", "prepared"),
                                                          "completely prepared")
    assert (galore.pos, galore.words, galore.examples) == ("adj", ("galore",),
                                                           ("whiskey galore",))


def test_parse_gloss_and_bad_line(tmp_path: Path) -> None:
    assert parse_gloss('a; b; "x; y"; "z"') == ("a; b", ("x; y", "z"))
    assert parse_gloss("no examples") == ("no examples", ())
    bad = tmp_path / "data.noun"
    bad.write_text("00001000 04 n 02 alpha 0 001 | too few words\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"data.noun:1"):
        list(iter_synsets(bad, "noun"))


def test_contains_word() -> None:
    assert contains_word("Banks erode.", "bank")
    assert contains_word("the car stopped", "stop")
    assert not contains_word("a bankrupt firm", "bank")
    assert not contains_word("the mice ran", "mouse")


def test_rows_from_fixture(fixture_dir: Path) -> None:
    rows = build_instruct_rows(seed=0, directory=fixture_dir)
    by_key = {(r["word"], r["kind"]): r for r in rows}
    assert sorted({r["word"] for r in rows}) == ["alpha", "bank", "china", "galore", "quickly",
                                                 "ready"]
    assert by_key["bank", "define"] == {
        "instruction": 'Define the noun "bank".', "input": "",
        "output": "Sloping land; especially beside a river.", "word": "bank", "kind": "define",
    }
    assert by_key["bank", "use"]["output"] == "He sat on the bank; the river was low."
    assert by_key["bank", "use"]["instruction"] == 'Use the word "bank" in a sentence.'
    assert by_key["china", "define"]["output"] == "High quality porcelain."
    assert by_key["galore", "define"]["instruction"] == 'Define the adjective "galore".'
    assert ("galore", "use") not in by_key  # the example is too short
    assert by_key["quickly", "use"]["output"] == "She answered quickly and left."
    assert build_instruct_rows(seed=0, directory=fixture_dir) == rows
    assert len({r["word"] for r in build_instruct_rows(max_words=2, directory=fixture_dir)}) == 2
    plain = build_instruct_rows(with_pos=False, directory=fixture_dir)
    assert {r["instruction"] for r in plain if r["word"] == "bank" and r["kind"] == "define"} == {
        'Define the word "bank".'
    }


def test_missing_dir_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(UserError, match="wordnet-base") as info:
        wordnet_dir()
    assert "\n" not in str(info.value)
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match=r"data\.noun.*wordnet-base"):
        wordnet_dir()
    with pytest.raises(UserError, match="apt-get install -y wordnet-base"):
        build_instruct_rows(directory=tmp_path / "absent")


# --- the installed WordNet (package wordnet-base) ------------------------------------------


@pytest.fixture(scope="module")
def splits() -> dict:
    return load_wordnet_instruct()


def test_real_counts() -> None:
    assert len(load_synsets("noun")) > 80_000
    assert len(load_synsets("verb")) > 13_000
    assert len(load_synsets("adj")) > 18_000
    assert len(load_synsets("adv")) > 3_500


def test_real_splits(splits: dict) -> None:
    assert sorted(splits) == ["test", "train"]
    assert (len(splits["train"]), len(splits["test"])) == (2000, 200)
    words: dict[str, set[str]] = {}
    for name, ds in splits.items():
        assert {"instruction", "input", "output"} <= set(ds.column_names)
        rows = ds.to_list()
        words[name] = {r["word"] for r in rows}
        assert {r["kind"] for r in rows} == {"define", "use"}
        for row in rows:
            assert row["input"] == ""
            assert row["output"] and row["output"][0] == row["output"][0].upper()
            if row["kind"] == "use":
                assert row["word"] in row["output"].lower()
                assert contains_word(row["output"], row["word"])
            else:
                assert row["output"].endswith(".")
    assert not words["train"] & words["test"]


def test_real_deterministic(splits: dict) -> None:
    again = load_wordnet_instruct()
    for name in ("train", "test"):
        assert again[name].to_list() == splits[name].to_list()
    other = load_wordnet_instruct(train_rows=50, test_rows=10, seed=1)
    first = [r["word"] for r in other["test"].to_list()]
    assert first != [r["word"] for r in splits["test"].to_list()][: len(first)]


def test_real_write_jsonl(tmp_path: Path) -> None:
    paths = write_jsonl(tmp_path, train_rows=20, test_rows=5)
    assert sorted(paths) == ["test", "train"]
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert (len(train), len(test)) == (20, 5)
    assert train == load_wordnet_instruct(train_rows=20, test_rows=5)["train"].to_list()
