"""An offline instruction-tuning dataset generated from the WordNet files on disk.

The Debian package ``wordnet-base`` installs the WordNet 3.0 database as plain text under
``/usr/share/wordnet`` (format: ``man 5 wndb``). This module parses the ``data.<pos>`` files
directly and turns synsets into alpaca-style rows at run time; no WordNet text is stored in the
repository.

Two kinds of rows are made per word:

* ``define``: ``Define the noun "bank".`` -> the synset's definition (first letter capitalised,
  ending with a period);
* ``use``: ``Use the word "bank" in a sentence.`` -> an example sentence of the same synset that
  contains the word (or the word plus a regular suffix such as ``-s``/``-ed``/``-ing``).

Sense rule (one deterministic target per word): the word's part of speech is the one with the
most sense-tagged senses in ``index.<pos>`` (ties: more senses, then noun < verb < adj < adv);
within it the senses are taken in index order (most frequent first) and the first synset that
lists the word in lowercase is used, so ``china`` the porcelain is chosen over ``China``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from tunelab.errors import UserError

#: Environment variable that overrides the WordNet data folder.
WORDNET_DIR_ENV = "TUNELAB_WORDNET_DIR"

#: Where the Debian package ``wordnet-base`` puts the database.
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")

#: Parts of speech in tie-break order; each has ``data.<pos>`` and ``index.<pos>`` files.
POS_FILES: tuple[str, ...] = ("noun", "verb", "adj", "adv")

#: The part-of-speech name used in ``define`` instructions.
POS_NAMES: dict[str, str] = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}

#: Columns of every row (the first three are the alpaca columns).
COLUMNS: tuple[str, ...] = ("instruction", "input", "output", "word", "kind")

_INSTALL_HINT = "install it with `apt-get install -y wordnet-base` (or `bash scripts/setup.sh`)"
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_LETTERS = re.compile(r"[A-Za-z]+")
_SUFFIXES: tuple[str, ...] = ("", "s", "es", "d", "ed", "ing", "er", "est")
_DOUBLED_SUFFIXES: tuple[str, ...] = ("ed", "ing", "er", "est")


@dataclass(frozen=True)
class Synset:
    """One synset of a ``data.<pos>`` file.

    ``pos`` is the file's part of speech (``noun``/``verb``/``adj``/``adv``; adjective satellites
    are ``adj``); ``words`` keep their case, with ``_`` turned into spaces and adjective markers
    such as ``(a)`` removed; ``frames`` holds the verb frames as ``(f_num, w_num)`` pairs.
    """

    offset: int
    pos: str
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    frames: tuple[tuple[int, int], ...] = ()


def wordnet_dir() -> Path:
    """Return the WordNet data folder (``$TUNELAB_WORDNET_DIR``, else ``/usr/share/wordnet``).

    Raises :class:`UserError` when the folder or one of its ``data.*``/``index.*`` files is
    missing, saying how to install the database.
    """
    override = os.environ.get(WORDNET_DIR_ENV)
    return _checked(Path(override) if override else DEFAULT_WORDNET_DIR)


def _resolve(directory: str | Path | None) -> Path:
    """``directory`` (checked) when given, else :func:`wordnet_dir`."""
    return _checked(Path(directory)) if directory is not None else wordnet_dir()


def _checked(folder: Path) -> Path:
    """Return ``folder``; raise :class:`UserError` unless it holds all data/index files."""
    if not folder.is_dir():
        raise UserError(f"WordNet data folder {folder} not found; {_INSTALL_HINT}")
    for pos in POS_FILES:
        for stem in ("data", "index"):
            path = folder / f"{stem}.{pos}"
            if not path.is_file():
                raise UserError(f"WordNet file {path} not found; {_INSTALL_HINT}")
    return folder


def _clean_word(raw: str) -> str:
    """``ice_cream`` -> ``ice cream``; ``galore(ip)`` -> ``galore``."""
    return _ADJ_MARKER.sub("", raw).replace("_", " ")


def _split_gloss(gloss: str) -> list[str]:
    """Split a gloss at the semicolons that are not inside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in gloss:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into ``(definition, examples)``.

    Parts that start with a double quote are examples (the text between the first and the last
    quote, so a trailing attribution like ``-R.A.Billington`` is dropped); the other parts make up
    the definition, joined again with ``"; "``.
    """
    definition: list[str] = []
    examples: list[str] = []
    for part in _split_gloss(gloss):
        end = part.rfind('"')
        if part.startswith('"') and end > 0:
            example = part[1:end].strip()
            if example:
                examples.append(example)
        else:
            definition.append(part)
    return "; ".join(definition), tuple(examples)


def parse_data_line(line: str, pos: str) -> Synset:
    """Parse one data line of ``data.<pos>``; raise ``ValueError`` when it is malformed."""
    head, sep, gloss = line.rstrip("\n").partition(" | ")
    if not sep:
        head, gloss = line.rstrip("\n").rstrip(" |"), ""
    fields = head.split()
    offset = int(fields[0])
    word_count = int(fields[3], 16)
    words = tuple(_clean_word(fields[4 + 2 * i]) for i in range(word_count))
    at = 4 + 2 * word_count
    pointer_count = int(fields[at])
    at += 1 + 4 * pointer_count
    frames: list[tuple[int, int]] = []
    if pos == "verb" and at < len(fields):
        frame_count = int(fields[at])
        for i in range(frame_count):
            plus, f_num, w_num = fields[at + 1 + 3 * i : at + 4 + 3 * i]
            if plus != "+":
                raise ValueError(f"expected '+' before a verb frame, got {plus!r}")
            frames.append((int(f_num), int(w_num, 16)))
        at += 1 + 3 * frame_count
    if at != len(fields) or len(words) != word_count:
        raise ValueError(f"expected {at} fields before the gloss, got {len(fields)}")
    definition, examples = parse_gloss(gloss.strip())
    return Synset(offset, pos, words, definition, examples, tuple(frames))


def iter_synsets(path: str | Path, pos: str) -> Iterator[Synset]:
    """Yield the synsets of one ``data.<pos>`` file in file order (license lines are skipped).

    Raises :class:`UserError` naming the file and line when a line cannot be parsed.
    """
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            try:
                yield parse_data_line(line, pos)
            except (ValueError, IndexError) as exc:
                raise UserError(
                    f"malformed WordNet line {path}:{number} ({exc}); reinstall it with "
                    "`apt-get install --reinstall -y wordnet-base`"
                ) from None


@functools.lru_cache(maxsize=8)
def _synsets_by_offset(folder: Path, pos: str) -> dict[int, Synset]:
    """All synsets of ``folder/data.<pos>`` keyed by byte offset (cached per folder)."""
    return {s.offset: s for s in iter_synsets(folder / f"data.{pos}", pos)}


def load_synsets(pos: str, directory: str | Path | None = None) -> list[Synset]:
    """All synsets of one part of speech (``noun``/``verb``/``adj``/``adv``) in file order."""
    folder = _resolve(directory)
    return list(_synsets_by_offset(folder, pos).values())


@functools.lru_cache(maxsize=8)
def _index(folder: Path, pos: str) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    """``lemma -> (tagged sense count, sense count, synset offsets)`` from ``index.<pos>``."""
    entries: dict[str, tuple[int, int, tuple[int, ...]]] = {}
    with (folder / f"index.{pos}").open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("  "):
                continue
            fields = line.split()
            synset_count, pointer_count = int(fields[2]), int(fields[3])
            at = 4 + pointer_count
            tagged = int(fields[at + 1])
            offsets = tuple(int(f) for f in fields[at + 2 : at + 2 + synset_count])
            entries[fields[0]] = (tagged, synset_count, offsets)
    return entries


def _is_candidate(lemma: str, min_length: int, max_length: int) -> bool:
    """A single lowercase ASCII alphabetic word of a reasonable length."""
    return (
        lemma.isascii() and lemma.isalpha() and lemma.islower()
        and min_length <= len(lemma) <= max_length
    )


def choose_senses(
    directory: str | Path | None = None, min_length: int = 3, max_length: int = 14
) -> dict[str, Synset]:
    """One synset per eligible word, by the sense rule in the module docstring (sorted by word).

    Eligible words are single lowercase ASCII alphabetic lemmas of ``min_length`` to
    ``max_length`` letters whose chosen part of speech has a synset listing them in lowercase.
    """
    folder = _resolve(directory)
    return dict(_chosen_senses(folder, min_length, max_length))


@functools.lru_cache(maxsize=8)
def _chosen_senses(folder: Path, min_length: int, max_length: int) -> dict[str, Synset]:
    """Cached body of :func:`choose_senses` (callers get a copy)."""
    indexes = {pos: _index(folder, pos) for pos in POS_FILES}
    lemmas = sorted({lemma for index in indexes.values() for lemma in index})
    chosen: dict[str, Synset] = {}
    for lemma in lemmas:
        if not _is_candidate(lemma, min_length, max_length):
            continue
        ranked = sorted(
            (pos for pos in POS_FILES if lemma in indexes[pos]),
            key=lambda pos: (-indexes[pos][lemma][0], -indexes[pos][lemma][1]),
        )
        synsets = _synsets_by_offset(folder, ranked[0])
        for offset in indexes[ranked[0]][lemma][2]:
            synset = synsets.get(offset)
            if synset is not None and lemma in synset.words:
                chosen[lemma] = synset
                break
    return chosen


def contains_word(sentence: str, word: str) -> bool:
    """True when ``sentence`` holds ``word`` or ``word`` plus a regular suffix, as a whole word.

    Accepted forms (case-insensitive): ``word`` + ``s``/``es``/``d``/``ed``/``ing``/``er``/``est``,
    and the doubled final consonant + ``ed``/``ing``/``er``/``est`` (``stop`` -> ``stopped``).
    Irregular forms (``ran``, ``mice``) and spelling changes (``happier``) are not matched.
    """
    word = word.lower()
    if not word or word not in sentence.lower():
        return False
    forms = {word + s for s in _SUFFIXES} | {word + word[-1] + s for s in _DOUBLED_SUFFIXES}
    return any(token.lower() in forms for token in _LETTERS.findall(sentence))


def _as_sentence(text: str) -> str:
    """Capitalise the first letter and end with a period unless it already ends with .?!"""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _example_for(synset: Synset, word: str, min_example_words: int) -> str | None:
    """The first example of ``synset`` that contains ``word`` and has enough words, if any."""
    for example in synset.examples:
        if len(example.split()) >= min_example_words and contains_word(example, word):
            return _as_sentence(example)
    return None


def _word_rows(word: str, synset: Synset, with_pos: bool, min_example_words: int) -> list[dict]:
    """The ``define`` row and, when an example fits, the ``use`` row of one word."""
    rows: list[dict[str, Any]] = []
    if synset.definition:
        noun = POS_NAMES[synset.pos] if with_pos else "word"
        rows.append({
            "instruction": f'Define the {noun} "{word}".', "input": "",
            "output": _as_sentence(synset.definition), "word": word, "kind": "define",
        })
    example = _example_for(synset, word, min_example_words)
    if example is not None:
        rows.append({
            "instruction": f'Use the word "{word}" in a sentence.', "input": "",
            "output": example, "word": word, "kind": "use",
        })
    return rows


def _iter_word_rows(
    seed: int,
    with_pos: bool = True,
    min_length: int = 3,
    max_length: int = 14,
    min_example_words: int = 4,
    directory: str | Path | None = None,
) -> Iterator[list[dict]]:
    """Yield each eligible word's rows, words in ``random.Random(seed)`` order (lazily)."""
    chosen = choose_senses(directory, min_length, max_length)
    words = sorted(chosen)
    random.Random(seed).shuffle(words)
    for word in words:
        rows = _word_rows(word, chosen[word], with_pos, min_example_words)
        if rows:
            yield rows


def build_instruct_rows(
    seed: int = 0,
    max_words: int | None = None,
    *,
    with_pos: bool = True,
    min_length: int = 3,
    max_length: int = 14,
    min_example_words: int = 4,
    directory: str | Path | None = None,
) -> list[dict]:
    """Alpaca-style rows (see :data:`COLUMNS`) for up to ``max_words`` words.

    The eligible words (see :func:`choose_senses`) are shuffled with ``random.Random(seed)``; the
    rows of each word are adjacent (``define`` first, then ``use`` when the chosen synset has an
    example of at least ``min_example_words`` words that contains the word). ``with_pos=False``
    writes ``Define the word "x".`` instead of naming the part of speech. The result is a pure
    function of the arguments and the WordNet files.
    """
    groups = _iter_word_rows(
        seed, with_pos, min_length, max_length, min_example_words, directory
    )
    rows: list[dict] = []
    for count, group in enumerate(groups):
        if max_words is not None and count >= max_words:
            break
        rows.extend(group)
    return rows


def _take_words(groups: Iterator[list[dict]], size: int) -> list[dict]:
    """Take whole words' rows from ``groups`` until there are ``size`` rows.

    When the last word would overflow ``size`` its extra rows are dropped (not given to another
    split), so every word lands in one split only.
    """
    taken: list[dict] = []
    while len(taken) < size:
        group = next(groups, None)
        if group is None:
            break
        taken.extend(group[: size - len(taken)])
    return taken


def instruct_splits(
    train_rows: int = 2000, test_rows: int = 200, seed: int = 0, **kwargs: Any
) -> dict[str, list[dict]]:
    """``{"train": rows, "test": rows}`` split by word (no word in both), as plain dicts.

    Test takes the first words of the seeded word order, train the following ones; a split's
    last word may lose its ``use`` row so the sizes are exact. ``kwargs`` are the keyword options
    of :func:`build_instruct_rows` (not ``max_words``). Raises :class:`UserError` when WordNet
    has too few rows.
    """
    if train_rows < 0 or test_rows < 0:
        raise UserError(f"train_rows={train_rows} and test_rows={test_rows} must be >= 0")
    groups = _iter_word_rows(seed, **kwargs)
    test = _take_words(groups, test_rows)
    train = _take_words(groups, train_rows)
    if len(test) < test_rows or len(train) < train_rows:
        raise UserError(
            f"WordNet gives only {len(test) + len(train)} rows, fewer than "
            f"train_rows={train_rows} + test_rows={test_rows}; ask for fewer rows"
        )
    return {"train": train, "test": test}


def _to_dataset(rows: list[dict]) -> datasets.Dataset:
    """Rows as a :class:`datasets.Dataset` with the :data:`COLUMNS` (also when empty)."""
    return datasets.Dataset.from_dict({c: [row[c] for row in rows] for c in COLUMNS})


def load_wordnet_instruct(
    train_rows: int = 2000, test_rows: int = 200, seed: int = 0, **kwargs: Any
) -> dict[str, datasets.Dataset]:
    """The WordNet instruction dataset as ``{"train", "test"}`` datasets, split by word.

    Columns: ``instruction``, ``input`` (always empty), ``output``, ``word``, ``kind``. See
    :func:`instruct_splits` for the arguments.
    """
    splits = instruct_splits(train_rows, test_rows, seed, **kwargs)
    return {name: _to_dataset(rows) for name, rows in splits.items()}


def write_jsonl(out_dir: str | Path, **kwargs: Any) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (one row per line) into ``out_dir``.

    ``kwargs`` go to :func:`instruct_splits`. Returns the split name -> written path.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, rows in instruct_splits(**kwargs).items():
        path = folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[name] = path
    return written


if __name__ == "__main__":
    for split, written_path in write_jsonl(sys.argv[1] if len(sys.argv) > 1 else ".").items():
        print(f"{split}: {written_path}")
