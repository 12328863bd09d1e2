"""Metrics for generated text against references: exact match, ROUGE-L and BLEU.

* ``exact_match``: share of predictions equal to their reference after :func:`normalize_answer`
  (lowercase, surrounding whitespace stripped, inner whitespace runs collapsed to one space,
  trailing punctuation removed), so ``"Paris."`` matches ``"paris"``.
* ``rouge_l``: mean ROUGE-L F-measure (longest common subsequence of tokens; Lin, 2004) from
  Google's ``rouge_score`` with the Porter stemmer; its tokenizer lowercases and keeps only
  ``[a-z0-9]`` runs. 0-1.
* ``bleu``: corpus BLEU from ``sacrebleu`` (Papineni et al., 2002; Post, 2018) on the raw text
  (case-sensitive, default ``13a`` tokenization; not normalised like exact match), one reference per
  prediction, with ``effective_order`` (short corpora are not zeroed by missing higher n-grams). 0-100.
* ``count``: number of pairs.
"""

from __future__ import annotations

import functools
import re
import string

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace runs to one space, strip, and drop trailing punctuation."""
    text = _SPACES.sub(" ", text.lower()).strip()
    return text.rstrip(string.punctuation).rstrip()


@functools.cache
def _rouge_l() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of pairs equal after :func:`normalize_answer`."""
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure over the pairs."""
    scorer = _rouge_l()
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) with one reference per prediction."""
    return float(BLEU(effective_order=True).corpus_score(predictions, [references]).score)


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """``exact_match``, ``rouge_l``, ``bleu`` and ``count`` of predictions against their references.

    Both lists must be non-empty and of the same length (a ValueError otherwise).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    return {
        "exact_match": exact_match(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "bleu": bleu(predictions, references),
        "count": len(predictions),
    }
