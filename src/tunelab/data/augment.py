"""EDA text augmentation for text classification.

Implements the four operations of Wei & Zou (2019), "EDA: Easy Data Augmentation Techniques for
Boosting Performance on Text Classification Tasks" (EMNLP-IJCNLP 2019,
https://arxiv.org/abs/1901.11196):

* synonym replacement (SR): replace ``n`` non-stop words with a random WordNet synonym;
* random insertion (RI): insert a synonym of a random non-stop word at a random position, ``n``
  times;
* random swap (RS): swap two random words, ``n`` times;
* random deletion (RD): delete each word with probability ``p`` (never all words).

For SR, RI and RS, ``n = max(1, round(alpha * len(words)))`` when ``alpha > 0``. As in the paper,
one augmented sentence applies ONE operation, chosen at random among those with a parameter > 0.

Words are whitespace tokens; punctuation stays attached to its word (it is stripped for the
synonym lookup and put back around the synonym), and a capitalised (or all-caps) word gives a
capitalised (or all-caps) synonym. Synonyms come from the WordNet 3.0 files of the Debian
package ``wordnet-base`` (read by :mod:`tunelab.data.wordnet`); only SR and RI need them.

Augmentation is meant for the training split only; applying it there (and not to the
validation/test splits) is the caller's job. :func:`augment_rows` is deterministic for a seed.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.data import wordnet

#: Common English function words that SR never replaces and RI never uses as insertion sources
#: (a short list in the spirit of the NLTK list used by the paper: articles, pronouns,
#: auxiliaries, prepositions, conjunctions, and a few frequent adverbs).
STOP_WORDS: frozenset[str] = frozenset({
    "a", "an", "the", "i", "me", "my", "myself", "we", "us", "our", "ours", "ourselves", "you",
    "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she", "her", "hers",
    "herself", "it", "its", "itself", "they", "them", "their", "theirs", "themselves", "what",
    "which", "who", "whom", "whose", "this", "that", "these", "those", "am", "is", "are", "was",
    "were", "be", "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing",
    "will", "would", "shall", "should", "can", "could", "may", "might", "must", "and", "but", "if",
    "or", "because", "as", "until", "while", "nor", "so", "than", "too", "very", "of", "at", "by",
    "for", "with", "about", "against", "between", "into", "through", "during", "before", "after",
    "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
    "again", "further", "then", "once", "here", "there", "when", "where", "why", "how", "all",
    "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "not", "only",
    "own", "same", "just",
})

#: Characters stripped from a token's ends before the synonym lookup (and put back afterwards).
_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"

#: The operations in a fixed order (the order of the choice in :func:`augment_text`).
OPERATIONS: tuple[str, ...] = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")

Synonyms = Mapping[str, tuple[str, ...]]


class TextAugmentConfig(BaseModel):
    """EDA augmentation of the training texts (Wei & Zou, 2019); off unless an operation is > 0."""

    model_config = ConfigDict(extra="forbid")

    synonym_replacement: float = Field(
        0.0, description="alpha_sr: fraction of the words replaced by a WordNet synonym "
                         "(n = max(1, round(alpha * words)) when > 0; stop words are kept).")
    random_insertion: float = Field(
        0.0, description="alpha_ri: fraction of the word count of synonyms of non-stop words inserted at "
                         "random positions.")
    random_swap: float = Field(
        0.0, description="alpha_rs: fraction of the word count of random two-word swaps.")
    random_deletion: float = Field(
        0.0, description="p_rd: probability that each word is deleted (at least one word is kept).")
    num_augmented: int = Field(
        1, ge=0, description="Augmented copies added per original training row (the original is always kept).")
    seed: int | None = Field(
        None, description="Seed of the augmentation (default: the run's seed).")

    @field_validator("synonym_replacement", "random_insertion", "random_swap", "random_deletion")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be between 0 and 1")
        return value

    @property
    def enabled(self) -> bool:
        """True when some operation has a parameter > 0 and copies are asked for."""
        return self.num_augmented > 0 and any(getattr(self, op) > 0 for op in OPERATIONS)

    @property
    def needs_synonyms(self) -> bool:
        """True when SR or RI is on (the operations that need WordNet)."""
        return self.synonym_replacement > 0 or self.random_insertion > 0


# --- synonyms -----------------------------------------------------------------------------------


def synonym_table(directory: str | Path | None = None) -> Synonyms:
    """``word (lowercase) -> sorted tuple of its WordNet synonyms`` over all parts of speech.

    Synonyms are the other single-word lemmas (no ``_``/space) of every synset that lists the
    word, lowercased, without the word itself; words with no synonym are left out. Built once per
    process and folder (about 2 s, most of it parsing the ``data.*`` files) and returned read-only.
    Raises :class:`tunelab.errors.UserError` when WordNet is not installed.
    """
    folder = Path(directory) if directory is not None else wordnet.wordnet_dir()
    return _synonym_table(folder.resolve())


@functools.lru_cache(maxsize=4)
def _synonym_table(folder: Path) -> Synonyms:
    """Cached body of :func:`synonym_table`."""
    found: dict[str, set[str]] = {}
    for pos in wordnet.POS_FILES:
        for synset in wordnet.load_synsets(pos, folder):
            lemmas = {w.lower() for w in synset.words if w and " " not in w and "_" not in w}
            if len(lemmas) < 2:
                continue
            for lemma in lemmas:
                found.setdefault(lemma, set()).update(lemmas)
    table = {word: tuple(sorted(others - {word})) for word, others in found.items()}
    return MappingProxyType(dict(sorted(table.items())))


# --- tokens -------------------------------------------------------------------------------------


def split_token(token: str) -> tuple[str, str, str]:
    """``"(Great!"`` -> ``("(", "Great", "!")``: leading punctuation, core, trailing punctuation."""
    core = token.strip(_PUNCTUATION)
    if not core:
        return token, "", ""
    start = len(token) - len(token.lstrip(_PUNCTUATION))
    return token[:start], core, token[start + len(core):]


def match_case(word: str, model: str) -> str:
    """``word`` in the case pattern of ``model``: ALL CAPS, Capitalised, or as is."""
    if len(model) > 1 and model.isupper():
        return word.upper()
    if model[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _lookup_key(token: str) -> str:
    """The synonym-table key of a token (its core, lowercased)."""
    return split_token(token)[1].lower()


def _synonym_sources(words: Sequence[str], synonyms: Synonyms) -> list[int]:
    """Positions of the non-stop words that have synonyms, in sentence order."""
    positions = []
    for i, token in enumerate(words):
        key = _lookup_key(token)
        if key and key not in STOP_WORDS and synonyms.get(key):
            positions.append(i)
    return positions


def op_count(alpha: float, num_words: int) -> int:
    """``n`` of SR/RI/RS: ``max(1, round(alpha * num_words))`` when ``alpha > 0``, else 0."""
    return max(1, round(alpha * num_words)) if alpha > 0 else 0


# --- the four operations ------------------------------------------------------------------------


def synonym_replacement(words: list[str], n: int, rng: random.Random, synonyms: Synonyms) -> list[str]:
    """Replace ``n`` random non-stop words (distinct positions) that have synonyms by one of them.

    Fewer are replaced when fewer words qualify. The replacement keeps the word's punctuation and
    case pattern. Returns a new list.
    """
    new = list(words)
    positions = _synonym_sources(words, synonyms)
    rng.shuffle(positions)
    for i in positions[:max(n, 0)]:
        lead, core, trail = split_token(words[i])
        choice = rng.choice(synonyms[core.lower()])
        new[i] = lead + match_case(choice, core) + trail
    return new


def random_insertion(words: list[str], n: int, rng: random.Random, synonyms: Synonyms) -> list[str]:
    """Insert ``n`` times a random synonym of a random non-stop word of ``words`` at a random position.

    The sources are the original words (not earlier insertions); nothing is inserted when no word
    has a synonym. Inserted words are lowercase without punctuation. Returns a new list.
    """
    new = list(words)
    positions = _synonym_sources(words, synonyms)
    if not positions:
        return new
    for _ in range(max(n, 0)):
        source = _lookup_key(words[rng.choice(positions)])
        new.insert(rng.randint(0, len(new)), rng.choice(synonyms[source]))
    return new


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Swap the words at two distinct random positions, ``n`` times. Returns a new list."""
    new = list(words)
    if len(new) < 2:
        return new
    for _ in range(max(n, 0)):
        i, j = rng.sample(range(len(new)), 2)
        new[i], new[j] = new[j], new[i]
    return new


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability ``p``; when all would go, keep one at random.

    ``p = 0`` returns the words unchanged; a one-word sentence is never changed. Returns a new list.
    """
    if len(words) <= 1 or p <= 0:
        return list(words)
    kept = [word for word in words if rng.random() >= p]
    return kept if kept else [rng.choice(words)]


# --- sentences and rows -------------------------------------------------------------------------


def augment_text(
    text: str, cfg: TextAugmentConfig, rng: random.Random, synonyms: Synonyms | None = None
) -> str:
    """One augmented version of ``text``: ONE random operation among those with a parameter > 0.

    ``synonyms`` defaults to :func:`synonym_table` (loaded only when SR or RI is chosen). The
    result is re-joined with single spaces; empty text and configs with no operation give
    ``text`` back.
    """
    words = text.split()
    ops = [op for op in OPERATIONS if getattr(cfg, op) > 0]
    if not words or not ops:
        return text
    op = rng.choice(ops)
    value = getattr(cfg, op)
    if op in ("synonym_replacement", "random_insertion"):
        table = synonyms if synonyms is not None else synonym_table()
        func = synonym_replacement if op == "synonym_replacement" else random_insertion
        new = func(words, op_count(value, len(words)), rng, table)
    elif op == "random_swap":
        new = random_swap(words, op_count(value, len(words)), rng)
    else:
        new = random_deletion(words, value, rng)
    return " ".join(new)


def augment_rows(
    texts: list[str], labels: list[Any], cfg: TextAugmentConfig, seed: int
) -> tuple[list[str], list[Any]]:
    """The texts followed by their augmented copies, with the labels repeated alongside.

    For each original ``i`` (in order) ``cfg.num_augmented`` copies follow all originals, so the
    result has ``len(texts) * (1 + num_augmented)`` rows when ``cfg.enabled`` (else the inputs,
    copied). One ``random.Random(cfg.seed if set, else seed)`` drives the whole call, so the
    output is a pure function of the arguments (and the WordNet files, which are read only when
    SR or RI is on).
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    out_texts, out_labels = list(texts), list(labels)
    if not cfg.enabled:
        return out_texts, out_labels
    rng = random.Random(cfg.seed if cfg.seed is not None else seed)
    synonyms = synonym_table() if cfg.needs_synonyms else MappingProxyType({})
    for text, label in zip(texts, labels, strict=True):
        for _ in range(cfg.num_augmented):
            out_texts.append(augment_text(text, cfg, rng, synonyms))
            out_labels.append(label)
    return out_texts, out_labels
