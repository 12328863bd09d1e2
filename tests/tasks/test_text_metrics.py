"""Generation metrics: exact match after normalisation, ROUGE-L against a hand-computed LCS F-measure,
BLEU at its ends, and the input checks."""

from __future__ import annotations

import pytest

from tunelab.tasks.text_metrics import generation_metrics, normalize_answer


@pytest.mark.parametrize(("pred", "ref", "same"), [
    ("Paris.", "paris", True),
    ("  The   Cat\tsat!! ", "the cat sat", True),
    ("paris", "london", False),
    ("u.s.a", "usa", False),  # only trailing punctuation goes
    ("new york", "newyork", False),
])
def test_exact_match_normalises(pred: str, ref: str, same: bool) -> None:
    assert generation_metrics([pred], [ref])["exact_match"] == float(same)


def test_normalize_answer() -> None:
    assert normalize_answer("  Hello,\n  World?! ") == "hello, world"


def test_exact_match_is_a_share() -> None:
    assert generation_metrics(["a", "b", "c", "d"], ["A.", "x", "c", "D!"])["exact_match"] == 0.75


def test_rouge_l_is_the_lcs_f_measure() -> None:
    pred, ref = "the black cat sat on the mat", "a cat sat on a red mat today"
    lcs = 4  # cat sat on mat
    precision, recall = lcs / 7, lcs / 8
    f = 2 * precision * recall / (precision + recall)  # = 8/15
    got = generation_metrics([pred, "same words"], [ref, "same words"])
    assert got["rouge_l"] == pytest.approx((f + 1.0) / 2)
    assert generation_metrics(["cats running"], ["cat runs"])["rouge_l"] == pytest.approx(1.0)  # stemmed


def test_bleu_extremes() -> None:
    refs = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog"]
    assert generation_metrics(refs, refs)["bleu"] == pytest.approx(100.0)
    assert generation_metrics(["one two three four", "five six seven"], refs)["bleu"] == 0.0
    partial = generation_metrics(["the cat sat on a mat", "a quick brown fox"], refs)["bleu"]
    assert 0.0 < partial < 100.0


def test_all_keys_and_count() -> None:
    """Only exact match normalises; BLEU scores the raw, case-sensitive text ("Paris ." vs "paris")."""
    got = generation_metrics(["Paris."], ["paris"])
    assert got == {"exact_match": 1.0, "rouge_l": 1.0, "bleu": 0.0, "count": 1}


def test_length_mismatch_and_empty_raise() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        generation_metrics([], [])
