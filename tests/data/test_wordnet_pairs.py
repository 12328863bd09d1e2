"""Contrastive WordNet pairs/triplets: rules on a hand-written fixture, then the installed files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunelab.data import wordnet, wordnet_pairs
from tunelab.data.builtin import BUILTIN_DATASETS, get_builtin_dataset
from tunelab.data.wordnet import parse_data_line
from tunelab.data.wordnet_pairs import (
    anchor_text,
    build_rows,
    load_wordnet_pairs,
    load_wordnet_triplets,
)
from tunelab.errors import UserError

REAL_DIR = Path("/usr/share/wordnet")
SPLITS = ("train", "validation", "test")
SIZES = {"train": 5000, "validation": 500, "test": 1000}
PAIR_COLUMNS = ["anchor", "positive", "synset", "pos"]
TRIPLET_COLUMNS = ["anchor", "positive", "negative", "synset", "pos"]
POS_BY_LETTER = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}

_LICENSE = "  1 made-up fixture text, not WordNet\n"

# Offsets are just keys here (the parser does not seek in fixture files).
FIXTURE: dict[str, str] = {
    "data.noun": _LICENSE
    + "00001000 04 n 07 Alpha 0 alpha 0 ALPHA 0 beta 0 gamma 0 delta 0 epsilon 0 000 | first "
    "letter of a list  \n"
    '00002000 17 n 01 bank 0 000 | sloping land beside water; "we sat on the bank"  \n'
    "00003000 06 n 02 bank 0 depository 0 000 | a financial institution that accepts deposits  \n"
    "00004000 06 n 01 tiny 0 000 | too short  \n"
    "00005000 06 n 01 Bank 0 000 | a third sense here  \n"
    "00006000 17 n 01 shore 0 000 | Sloping land beside water  \n"
    "00010000 06 n 01 echo 0 000 | a sound heard again  \n"
    "00010100 06 n 01 echo 0 000 | a sound heard again  \n",
    "data.verb": _LICENSE
    + "00007000 40 v 02 bank 0 trust 0 000 | do business with a bank  \n",
    "data.adj": _LICENSE + "00008000 00 a 01 solo(a) 0 000 | alone without others  \n",
    "data.adv": _LICENSE + "00009000 02 r 01 quickly 0 000 | with great speed  \n",
    "index.noun": _LICENSE
    + "alpha n 1 0 1 0 00001000  \n"
    "bank n 3 0 3 0 00003000 00002000 00005000  \n"
    "echo n 2 0 2 0 00010000 00010100  \n"
    "shore n 1 0 1 0 00006000  \n"
    "tiny n 1 0 1 0 00004000  \n",
    "index.verb": _LICENSE + "bank v 1 0 1 0 00007000  \n",
    "index.adj": _LICENSE + "solo a 1 0 1 0 00008000  \n",
    "index.adv": _LICENSE + "quickly r 1 0 1 0 00009000  \n",
}


@pytest.fixture
def fixture_dir(tmp_path: Path) -> Path:
    for name, text in FIXTURE.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_fixture_pairs_follow_the_rules(fixture_dir: Path) -> None:
    rows = build_rows(fixture_dir)
    assert [(r["synset"], r["anchor"], r["positive"], r["pos"]) for r in rows] == [
        ("n.00001000", "Alpha, beta, gamma, delta", "first letter of a list", "noun"),
        ("n.00002000", "bank", "sloping land beside water", "noun"),
        ("n.00003000", "bank, depository", "a financial institution that accepts deposits", "noun"),
        # tiny: too short; Bank: anchor taken (case-insensitive); shore: definition taken
        ("n.00010000", "echo", "a sound heard again", "noun"),  # the second echo repeats it
        ("v.00007000", "bank, trust", "do business with a bank", "verb"),
        ("a.00008000", "solo", "alone without others", "adj"),
        ("r.00009000", "quickly", "with great speed", "adv"),
    ]
    splits = load_wordnet_pairs(fixture_dir, seed=0)
    assert list(splits) == list(SPLITS)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 0, "validation": 0,
                                                               "test": 7}
    assert splits["test"].column_names == PAIR_COLUMNS
    assert sorted(r["synset"] for r in splits["test"].to_list()) == sorted(r["synset"]
                                                                           for r in rows)


def test_fixture_triplets_negatives(fixture_dir: Path) -> None:
    rows = build_rows(fixture_dir, triplets=True)
    negatives = {r["synset"]: (r["anchor"], r["negative"]) for r in rows}
    assert negatives == {
        # the first other sense in index order (the index lists 3000 before 2000)
        "n.00002000": ("bank", "a financial institution that accepts deposits"),
        "n.00003000": ("bank, depository", "sloping land beside water"),
        # nouns come before verbs
        "v.00007000": ("bank, trust", "a financial institution that accepts deposits"),
        # echo: the other sense has the same definition, so both rows are dropped
    }
    splits = load_wordnet_triplets(fixture_dir)
    assert splits["test"].column_names == TRIPLET_COLUMNS
    assert len(splits["test"]) == 3


def test_anchor_text_dedups_and_caps() -> None:
    synset = wordnet.Synset(1, "noun", ("Ab", "ab", "AB", "c", "d", "e", "f"), "x y z", ())
    assert anchor_text(synset) == "Ab, c, d, e"


@pytest.mark.parametrize("loader", [load_wordnet_pairs, load_wordnet_triplets])
def test_missing_wordnet_raises(loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(tmp_path))
    with pytest.raises(UserError, match="wordnet-base"):
        loader()
    with pytest.raises(UserError, match="wordnet-base"):
        loader(tmp_path / "absent")


def test_registered_as_pairs() -> None:
    for name in ("wordnet_pairs", "wordnet_triplets"):
        spec = BUILTIN_DATASETS[name]
        assert spec.name == name and spec.task == "pairs"
        assert (spec.text_column, spec.text_pair_column, spec.label_column) == (
            "anchor", "positive", "positive")
        assert spec.label_names is None and "wordnet-base" in spec.license_note
        assert "5,000 train / 500 validation / 1,000 test" in spec.description


# --- the installed WordNet (package wordnet-base) ------------------------------------------


def test_wordnet_is_installed() -> None:
    assert (REAL_DIR / "data.noun").is_file() and (REAL_DIR / "index.noun").is_file()


@pytest.fixture(scope="module")
def pairs() -> dict:
    return load_wordnet_pairs()


@pytest.fixture(scope="module")
def triplets() -> dict:
    return get_builtin_dataset("wordnet_triplets").load()


def _data_line(letter: str, offset: int) -> str:
    """The line at byte ``offset`` of the real data file (the offset is a byte position)."""
    pos = POS_BY_LETTER[letter]
    with (REAL_DIR / f"data.{pos}").open("rb") as handle:
        handle.seek(offset)
        line = handle.readline().decode("utf-8")
    assert line.startswith(f"{offset:08d} ")
    return line


def _raw_words(line: str) -> list[str]:
    """The words of a data line, read straight from its fields."""
    fields = line.split()
    count = int(fields[3], 16)
    return [re.sub(r"\((a|p|ip)\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]


def _check_structure(splits: dict, columns: list[str]) -> None:
    assert list(splits) == list(SPLITS)
    assert {name: len(ds) for name, ds in splits.items()} == SIZES
    rows: dict[str, list[dict]] = {}
    for name, ds in splits.items():
        assert ds.column_names == columns
        rows[name] = ds.to_list()
    for key in ("synset", "positive", "anchor"):
        sets = {name: {r[key] for r in rows[name]} for name in SPLITS}
        assert not sets["train"] & sets["validation"]
        assert not sets["train"] & sets["test"]
        assert not sets["validation"] & sets["test"]
    every = [r for name in SPLITS for r in rows[name]]
    assert len({r["synset"] for r in every}) == len(every)
    assert len({r["positive"].lower().strip() for r in every}) == len(every)
    assert len({r["anchor"].lower() for r in every}) == len(every)
    assert {r["pos"] for r in every} == {"noun", "verb", "adj", "adv"}
    for row in every:
        assert re.fullmatch(r"[nvar]\.\d{8}", row["synset"])
        assert POS_BY_LETTER[row["synset"][0]] == row["pos"]
        assert len(row["positive"].split()) >= 3 and not row["positive"].startswith('"')


def test_real_pairs_structure(pairs: dict) -> None:
    _check_structure(pairs, PAIR_COLUMNS)


def test_real_triplets_structure(triplets: dict) -> None:
    _check_structure(triplets, TRIPLET_COLUMNS)


@pytest.mark.parametrize("kind", ["pairs", "triplets"])
def test_real_rows_match_the_data_files(kind: str, pairs: dict, triplets: dict) -> None:
    """Every anchor is the synset's own words; every positive is part of its gloss."""
    for name in SPLITS:
        for row in (pairs if kind == "pairs" else triplets)[name].to_list():
            line = _data_line(row["synset"][0], int(row["synset"][2:]))
            words = _raw_words(line)
            unique: list[str] = []
            for word in words:
                if word.lower() not in {u.lower() for u in unique}:
                    unique.append(word)
            assert row["anchor"] == ", ".join(unique[:4])
            gloss = line.split(" | ", 1)[1]
            assert row["positive"].split("; ")[0] in gloss


def test_real_known_synset() -> None:
    """The building sense of 'bank', found by grepping data.noun."""
    text = (REAL_DIR / "data.noun").read_text(encoding="utf-8")
    match = re.search(r"^(\d{8}) \d\d n 02 bank 0 bank_building 0 .*$", text, re.MULTILINE)
    assert match is not None
    line = match.group(0)
    gloss = line.split(" | ", 1)[1]
    definition = gloss.split(";")[0].strip()
    rows = {r["synset"]: r for r in build_rows()}
    row = rows[f"n.{match.group(1)}"]
    assert row == {"anchor": "bank, bank building", "positive": definition,
                   "synset": f"n.{match.group(1)}", "pos": "noun"}
    assert anchor_text(parse_data_line(line, "noun")) == "bank, bank building"
    # in the triplets its hard negative is the first noun sense of "bank" in index.noun
    first_letter, first_offset = _senses("bank")[0]
    assert (first_letter, first_offset) != ("n", int(match.group(1)))
    expected = parse_data_line(_data_line("n", first_offset), "noun").definition
    triplet = {r["synset"]: r for r in build_rows(triplets=True)}[f"n.{match.group(1)}"]
    assert triplet["negative"] == expected != triplet["positive"]


def _senses(lemma: str) -> list[tuple[str, int]]:
    """(pos letter, offset) of every sense of ``lemma``: noun, verb, adj, adv, index order."""
    found: list[tuple[str, int]] = []
    for letter, pos in POS_BY_LETTER.items():
        with (REAL_DIR / f"index.{pos}").open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(lemma + " "):
                    fields = line.split()
                    count = int(fields[2])
                    found.extend((letter, int(o)) for o in fields[len(fields) - count :])
                    break
    return found


def test_real_triplet_negatives(triplets: dict) -> None:
    """The negative is the first other sense's definition of the anchor's first word."""
    rows = triplets["test"].to_list()[:150]
    for row in rows:
        letter, offset = row["synset"][0], int(row["synset"][2:])
        first_word = _raw_words(_data_line(letter, offset))[0]
        assert row["anchor"].startswith(first_word)
        others = [s for s in _senses(first_word.lower().replace(" ", "_")) if s != (letter, offset)]
        assert others, row
        other_letter, other_offset = others[0]
        other_line = _data_line(other_letter, other_offset)
        assert first_word.lower() in [w.lower() for w in _raw_words(other_line)]
        assert row["negative"] == parse_data_line(other_line, POS_BY_LETTER[other_letter]).definition
        assert row["negative"].lower().strip() != row["positive"].lower().strip()


def test_real_deterministic(pairs: dict, triplets: dict) -> None:
    wordnet_pairs._split_rows.cache_clear()
    again = load_wordnet_pairs()
    for name in SPLITS:
        assert again[name].to_list() == pairs[name].to_list()
    assert load_wordnet_triplets()["test"].to_list() == triplets["test"].to_list()
    other = load_wordnet_pairs(seed=1)
    assert other["test"]["synset"] != pairs["test"]["synset"]
    assert set(other["test"]["synset"]) != set(pairs["test"]["synset"])
