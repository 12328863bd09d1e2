"""Contrastive (anchor, positive[, negative]) text pairs generated from the installed WordNet.

The rows are made at run time from the ``wordnet-base`` files that :mod:`tunelab.data.wordnet`
parses; no WordNet text is stored in the repository.

* ``wordnet_pairs``: one row per selected synset. ``anchor`` is the synset's synonym set (its
  words, de-duplicated case-insensitively keeping the first spelling, at most
  :data:`MAX_ANCHOR_WORDS`, joined with ``", "``), ``positive`` its definition (the gloss without
  the example sentences, first letter as in WordNet).
* ``wordnet_triplets``: the same, for synsets whose first word has another sense (any part of
  speech, from the ``index.<pos>`` files), plus ``negative``: the definition of that word's other
  sense that comes first in sense order (noun, verb, adj, adv; within one part of speech the
  index order, most frequent first). Rows whose negative equals their positive are skipped.

Both also have ``synset`` (``"<pos letter>.<8-digit offset>"``, pos letters ``n``/``v``/``a``/``r``
as in WordNet, adjective satellites included under ``a``) and ``pos``
(``noun``/``verb``/``adj``/``adv``).

Selection: definitions of fewer than :data:`MIN_DEFINITION_WORDS` words are skipped; going
through the candidates sorted by (pos, offset), a synset is skipped when its definition
(lowercased, stripped) or its anchor (lowercased) equals one already taken, so every anchor and
every positive text is unique within a dataset. The eligible synsets (still sorted) are shuffled
with ``random.Random(seed)`` and cut into disjoint splits: test first, then validation, then
train (:data:`SPLIT_SIZES`; a split gets fewer rows only when WordNet runs out). Splits are held
out by synset.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from pathlib import Path

import datasets

from tunelab.data.wordnet import POS_FILES, Synset, _index, _resolve, _synsets_by_offset

#: Split name -> number of synsets, in the order the splits are cut from the shuffled list.
SPLIT_SIZES: dict[str, int] = {"test": 1000, "validation": 500, "train": 5000}

#: Order of the returned mapping.
SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test")

#: At most this many words of a synset make up its anchor.
MAX_ANCHOR_WORDS = 4

#: Definitions with fewer whitespace-separated words are skipped.
MIN_DEFINITION_WORDS = 3

#: WordNet's synset-type letter of each part-of-speech file.
POS_LETTERS: dict[str, str] = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}

PAIR_COLUMNS: tuple[str, ...] = ("anchor", "positive", "synset", "pos")
TRIPLET_COLUMNS: tuple[str, ...] = ("anchor", "positive", "negative", "synset", "pos")

Row = dict[str, str]


def synset_id(synset: Synset) -> str:
    """``"n.02787772"``: WordNet's pos letter and the 8-digit byte offset."""
    return f"{POS_LETTERS[synset.pos]}.{synset.offset:08d}"


def anchor_text(synset: Synset) -> str:
    """The synset's words (case-insensitively unique, first spelling kept, at most 4) as text."""
    seen: set[str] = set()
    words: list[str] = []
    for word in synset.words:
        key = word.lower()
        if key not in seen:
            seen.add(key)
            words.append(word)
    return ", ".join(words[:MAX_ANCHOR_WORDS])


def _sorted_synsets(folder: Path) -> list[Synset]:
    """All synsets of all four parts of speech, sorted by (pos file order, offset)."""
    synsets: list[Synset] = []
    for pos in POS_FILES:
        synsets.extend(sorted(_synsets_by_offset(folder, pos).values(), key=lambda s: s.offset))
    return synsets


def _other_sense_definition(folder: Path, synset: Synset) -> str | None:
    """Definition of the first other sense of ``synset``'s first word, or ``None`` if it has none.

    Senses come from the ``index.<pos>`` files (lemmas are lowercase with ``_`` for spaces), in
    noun, verb, adj, adv order and index order within each; senses with an empty definition are
    passed over.
    """
    lemma = synset.words[0].lower().replace(" ", "_")
    for pos in POS_FILES:
        entry = _index(folder, pos).get(lemma)
        if entry is None:
            continue
        by_offset = _synsets_by_offset(folder, pos)
        for offset in entry[2]:
            if pos == synset.pos and offset == synset.offset:
                continue
            other = by_offset.get(offset)
            if other is not None and other.definition.strip():
                return other.definition
    return None


def _select(folder: Path, with_negative: bool) -> list[Row]:
    """The eligible rows in (pos, offset) order, with unique anchors and positives."""
    rows: list[Row] = []
    seen_anchors: set[str] = set()
    seen_positives: set[str] = set()
    for synset in _sorted_synsets(folder):
        positive = synset.definition
        if not synset.words or len(positive.split()) < MIN_DEFINITION_WORDS:
            continue
        anchor = anchor_text(synset)
        anchor_key, positive_key = anchor.lower(), positive.lower().strip()
        if anchor_key in seen_anchors or positive_key in seen_positives:
            continue
        row: Row = {"anchor": anchor, "positive": positive}
        if with_negative:
            negative = _other_sense_definition(folder, synset)
            if negative is None or negative.lower().strip() == positive_key:
                continue
            row["negative"] = negative
        row["synset"] = synset_id(synset)
        row["pos"] = synset.pos
        seen_anchors.add(anchor_key)
        seen_positives.add(positive_key)
        rows.append(row)
    return rows


def build_rows(directory: str | Path | None = None, *, triplets: bool = False) -> list[Row]:
    """All eligible rows (before shuffling and splitting), in (pos, offset) order.

    ``triplets=True`` gives the ``wordnet_triplets`` rows (with ``negative``).
    """
    return _select(_resolve(directory), triplets)


CACHE_VERSION = "1"
"""Bump when the rows this module makes change: cached files of another version are not read."""


@functools.lru_cache(maxsize=8)
def _split_rows(folder: Path, seed: int, with_negative: bool) -> dict[str, tuple[Row, ...]]:
    """Split name -> rows, cached in memory and on disk (``$TUNELAB_CACHE/wordnet/``, keyed by this
    module's version, the WordNet files' sizes and times, the seed and the kind): parsing the
    117,659 synsets takes seconds and ~130 MB that a training run should not carry."""
    cached = _cache_file(folder, seed, with_negative)
    if cached is not None and cached.is_file():
        try:
            return {name: tuple(rows) for name, rows in json.loads(cached.read_text()).items()}
        except (OSError, ValueError):
            pass  # unreadable: make the rows again
    rows = _select(folder, with_negative)
    _free_parses()
    random.Random(seed).shuffle(rows)
    splits: dict[str, tuple[Row, ...]] = {}
    start = 0
    for name, size in SPLIT_SIZES.items():
        splits[name] = tuple(rows[start : start + size])
        start += size
    if cached is not None:
        _write_cache(cached, splits)
    return splits


def _cache_file(folder: Path, seed: int, with_negative: bool) -> Path | None:
    from tunelab.models.gguf import cache_root

    try:
        stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                         for p in sorted(folder.glob("data.*")) + sorted(folder.glob("index.*")))
    except OSError:
        return None
    key = hashlib.sha256(f"{CACHE_VERSION}|{folder.resolve()}|{seed}|{with_negative}|{stamp}".encode()).hexdigest()
    return cache_root() / "wordnet" / f"{'triplets' if with_negative else 'pairs'}-{key[:16]}.json"


def _write_cache(path: Path, splits: dict[str, tuple[Row, ...]]) -> None:
    """Write atomically; a cache that cannot be written is skipped (the rows are made again next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({name: list(rows) for name, rows in splits.items()}))
        os.replace(tmp, path)
    except OSError:
        pass


def _free_parses() -> None:
    """Drop the in-memory parse of the WordNet files (wordnet.py's caches)."""
    from tunelab.data import wordnet

    for cached in (wordnet._synsets_by_offset, wordnet._index):
        cached.cache_clear()


def _datasets(
    directory: str | Path | None, seed: int, with_negative: bool
) -> dict[str, datasets.Dataset]:
    folder = _resolve(directory)
    columns = TRIPLET_COLUMNS if with_negative else PAIR_COLUMNS
    splits = _split_rows(folder, seed, with_negative)
    return {
        name: datasets.Dataset.from_dict({c: [row[c] for row in splits[name]] for c in columns})
        for name in SPLIT_ORDER
    }


def load_wordnet_pairs(
    directory: str | Path | None = None, seed: int = 0
) -> dict[str, datasets.Dataset]:
    """``{"train", "validation", "test"}`` (anchor, positive) pairs, held out by synset.

    Columns: ``anchor``, ``positive``, ``synset``, ``pos``; 5,000 / 500 / 1,000 rows from the
    installed WordNet (see the module docstring). ``directory`` overrides the WordNet folder
    (default: ``$TUNELAB_WORDNET_DIR``, else ``/usr/share/wordnet``); a missing folder or file
    raises :class:`~tunelab.errors.UserError` saying how to install ``wordnet-base``.
    """
    return _datasets(directory, seed, with_negative=False)


def load_wordnet_triplets(
    directory: str | Path | None = None, seed: int = 0
) -> dict[str, datasets.Dataset]:
    """``{"train", "validation", "test"}`` (anchor, positive, negative) triplets, by synset.

    Like :func:`load_wordnet_pairs`, restricted to synsets whose first word has another sense;
    ``negative`` is that word's first other sense's definition (a hard negative). Columns:
    ``anchor``, ``positive``, ``negative``, ``synset``, ``pos``.
    """
    return _datasets(directory, seed, with_negative=True)
