"""EDA text augmentation (Wei & Zou, 2019): the four operations, rows, config, WordNet synonyms."""

from __future__ import annotations

import functools
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from tunelab.data import augment, wordnet
from tunelab.data.augment import (
    STOP_WORDS,
    TextAugmentConfig,
    augment_rows,
    augment_text,
    op_count,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
    synonym_table,
)

SENTENCES: list[str] = [
    f"The {adj} film about a {noun} was {verdict} and the actors {verb} well."
    for adj, noun, verdict, verb in [
        ("long", "dog", "great", "played"), ("short", "city", "boring", "sang"),
        ("old", "river", "funny", "danced"), ("new", "king", "sad", "worked"),
        ("strange", "house", "good", "acted"),
    ]
] * 10


@functools.cache
def wordnet_synonyms(word: str) -> frozenset[str]:
    """Reference synonyms read straight from the WordNet synsets (independent of augment.py)."""
    found: set[str] = set()
    for pos in wordnet.POS_FILES:
        for synset in wordnet.load_synsets(pos):
            lemmas = [w.lower() for w in synset.words]
            if word in lemmas:
                found.update(lemma for lemma in lemmas if " " not in lemma and lemma != word)
    return frozenset(found)


@pytest.fixture(scope="module")
def table():
    return synonym_table()


def _core(token: str) -> str:
    return augment.split_token(token)[1].lower()


# --- synonym table ------------------------------------------------------------------------------


def test_synonym_table_matches_wordnet(table):
    expected = wordnet_synonyms("film")
    assert {"movie", "picture", "flick"} <= expected
    assert set(table["film"]) == expected
    assert set(table["great"]) == wordnet_synonyms("great")
    assert table["film"] == tuple(sorted(table["film"]))
    assert synonym_table() is table  # cached once per process


def test_synonym_table_entries_are_clean(table):
    for word, synonyms in list(table.items())[::97]:
        assert word == word.lower()
        assert synonyms and word not in synonyms
        assert all(s == s.lower() and " " not in s and "_" not in s for s in synonyms)
    with pytest.raises(TypeError):
        table["film"] = ("x",)  # read-only


# --- the four operations ------------------------------------------------------------------------


def test_op_count():
    assert op_count(0.0, 10) == 0
    assert op_count(0.01, 10) == 1
    assert op_count(0.3, 10) == 3
    assert op_count(1.0, 7) == 7


def test_random_swap_keeps_the_multiset():
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    changed = 0
    for seed in range(30):
        out = random_swap(words, 2, random.Random(seed))
        assert Counter(out) == Counter(words)
        changed += out != words
    assert changed >= 25
    assert words == ["one", "two", "three", "four", "five", "six", "seven"]  # input not mutated
    assert random_swap(["alone"], 3, random.Random(0)) == ["alone"]
    assert random_swap(words, 0, random.Random(0)) == words


def test_random_deletion_bounds():
    words = ["a", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    for seed in range(30):
        rng = random.Random(seed)
        kept = random_deletion(words, 1.0, rng)
        assert len(kept) == 1 and kept[0] in words
        assert random_deletion(words, 0.0, rng) == words
        half = random_deletion(words, 0.5, rng)
        it = iter(words)
        assert all(word in it for word in half)  # an order-preserving subsequence
        assert 1 <= len(half) <= len(words)
    assert random_deletion(["only"], 1.0, random.Random(0)) == ["only"]
    assert random_deletion([], 0.5, random.Random(0)) == []
    kept_words = {random_deletion(words, 1.0, random.Random(seed))[0] for seed in range(50)}
    assert len(kept_words) > 3  # the kept word is random, not always the first


def test_synonym_replacement_replaces_exactly_n_non_stop_words(table):
    words = ["the", "film", "was", "a", "great", "story", "about", "a", "brave", "dog"]
    for seed in range(20):
        out = synonym_replacement(words, 2, random.Random(seed), table)
        assert len(out) == len(words)
        changed = [i for i, (a, b) in enumerate(zip(words, out, strict=True)) if a != b]
        assert len(changed) == 2
        for i in changed:
            assert words[i] not in STOP_WORDS
            assert out[i] in wordnet_synonyms(words[i])
    # n larger than the candidates: every non-stop word with synonyms is replaced
    out = synonym_replacement(words, 100, random.Random(0), table)
    for before, after in zip(words, out, strict=True):
        if before in STOP_WORDS:
            assert after == before
        elif wordnet_synonyms(before):
            assert after in wordnet_synonyms(before)


def test_synonym_replacement_film_to_a_wordnet_synonym(table):
    seen = {synonym_replacement(["film"], 1, random.Random(seed), table)[0] for seed in range(40)}
    assert seen <= wordnet_synonyms("film")
    assert len(seen) > 2


def test_case_and_punctuation_preserved(table):
    for seed in range(20):
        (out,) = synonym_replacement(["Great!"], 1, random.Random(seed), table)
        assert out.endswith("!") and out[0].isupper() and out[1:-1] == out[1:-1].lower()
        assert out[:-1].lower() in wordnet_synonyms("great")
        (out,) = synonym_replacement(['"film,'], 1, random.Random(seed), table)
        assert out.startswith('"') and out.endswith(",") and out[1:-1] in wordnet_synonyms("film")
        (out,) = synonym_replacement(["FILM."], 1, random.Random(seed), table)
        assert out.endswith(".") and out[:-1] == out[:-1].upper()
        assert out[:-1].lower() in wordnet_synonyms("film")


def test_stop_words_only_sentence_unchanged(table):
    words = ["it", "was", "not", "that", "they", "were", "there", "for", "the"]
    assert all(w in STOP_WORDS for w in words)
    cfg = TextAugmentConfig(synonym_replacement=0.5)
    for seed in range(10):
        assert synonym_replacement(words, 3, random.Random(seed), table) == words
        assert random_insertion(words, 3, random.Random(seed), table) == words
        assert augment_text(" ".join(words), cfg, random.Random(seed), table) == " ".join(words)


def test_random_insertion_adds_synonyms_of_the_sentence(table):
    words = ["The", "film", "was", "a", "great", "story!"]
    sources = [_core(w) for w in words if _core(w) not in STOP_WORDS]
    for seed in range(20):
        out = random_insertion(words, 3, random.Random(seed), table)
        assert len(out) == len(words) + 3
        added = Counter(out) - Counter(words)
        assert sum(added.values()) == 3
        for word in added.elements():
            assert any(word in wordnet_synonyms(source) for source in sources)
        it = iter(out)
        assert all(word in it for word in words)  # the original words keep their order


# --- sentences and rows -------------------------------------------------------------------------


def test_augment_text_applies_one_operation(table):
    text = "the film was a great story about a brave dog"
    cfg = TextAugmentConfig(synonym_replacement=0.2, random_swap=0.2)
    kinds = Counter()
    for seed in range(60):
        out = augment_text(text, cfg, random.Random(seed), table).split()
        words = text.split()
        if Counter(out) == Counter(words):
            kinds["swap"] += 1
        else:  # SR only: same positions, exactly 2 replaced by synonyms
            changed = [i for i, (a, b) in enumerate(zip(words, out, strict=True)) if a != b]
            assert len(out) == len(words) and len(changed) == 2
            assert all(out[i] in wordnet_synonyms(words[i]) for i in changed)
            kinds["sr"] += 1
    assert kinds["swap"] > 10 and kinds["sr"] > 10
    assert augment_text("", cfg, random.Random(0), table) == ""
    assert augment_text("unchanged text", TextAugmentConfig(), random.Random(0), table) == "unchanged text"


def _all_ops(**kwargs) -> TextAugmentConfig:
    return TextAugmentConfig(
        synonym_replacement=0.1, random_insertion=0.1, random_swap=0.1, random_deletion=0.1, **kwargs
    )


def test_augment_rows_is_deterministic():
    labels = list(range(len(SENTENCES)))
    cfg = _all_ops(num_augmented=2)
    first = augment_rows(SENTENCES, labels, cfg, seed=0)
    assert augment_rows(SENTENCES, labels, cfg, seed=0) == first
    other = augment_rows(SENTENCES, labels, cfg, seed=1)
    assert other[0] != first[0]
    assert other[0][: len(SENTENCES)] == SENTENCES
    # cfg.seed, when set, wins over the caller's seed
    pinned = _all_ops(num_augmented=2, seed=0)
    assert augment_rows(SENTENCES, labels, pinned, seed=123) == first


def test_augment_rows_layout_and_labels():
    texts = SENTENCES[:7]
    labels = ["pos", "neg", "pos", "neg", "neu", "pos", "neg"]
    k = 3
    out_texts, out_labels = augment_rows(texts, labels, _all_ops(num_augmented=k), seed=5)
    n = len(texts)
    assert len(out_texts) == len(out_labels) == n * (1 + k)
    assert out_texts[:n] == texts and out_labels[:n] == labels
    for i in range(n):
        block = range(n + i * k, n + (i + 1) * k)
        assert [out_labels[j] for j in block] == [labels[i]] * k
        for j in block:  # each copy comes from its own original: small edits keep most words
            overlap = sum((Counter(out_texts[j].split()) & Counter(texts[i].split())).values())
            assert overlap >= len(texts[i].split()) // 2
    assert sum(out_texts[j] != texts[(j - n) // k] for j in range(n, n * (1 + k))) > n * k // 2


def test_augment_rows_disabled_or_zero_copies():
    texts, labels = SENTENCES[:4], [0, 1, 0, 1]
    assert augment_rows(texts, labels, TextAugmentConfig(), seed=0) == (texts, labels)
    assert augment_rows(texts, labels, TextAugmentConfig(random_swap=0.5, num_augmented=0), seed=0) == (
        texts, labels)
    with pytest.raises(ValueError):
        augment_rows(texts, labels[:3], TextAugmentConfig(random_swap=0.5), seed=0)


def test_swap_and_deletion_do_not_need_wordnet(monkeypatch):
    def missing(*args, **kwargs):
        raise AssertionError("WordNet must not be read for RS/RD")

    monkeypatch.setattr(augment, "synonym_table", missing)
    cfg = TextAugmentConfig(random_swap=0.3, random_deletion=0.3, num_augmented=2)
    texts, labels = augment_rows(SENTENCES[:5], [1] * 5, cfg, seed=0)
    assert len(texts) == 15 and labels == [1] * 15
    with pytest.raises(AssertionError):
        augment_rows(SENTENCES[:5], [1] * 5, TextAugmentConfig(synonym_replacement=0.3), seed=0)


# --- config -------------------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ValidationError):
        TextAugmentConfig(synonym_replacement=1.5)
    with pytest.raises(ValidationError):
        TextAugmentConfig(random_deletion=-0.1)
    with pytest.raises(ValidationError):
        TextAugmentConfig(num_augmented=-1)
    with pytest.raises(ValidationError):
        TextAugmentConfig(back_translation=0.1)
    cfg = TextAugmentConfig(random_swap=1.0, random_deletion=0.0)
    assert cfg.random_swap == 1.0 and cfg.num_augmented == 1 and cfg.seed is None


def test_enabled_flag():
    assert not TextAugmentConfig().enabled
    assert TextAugmentConfig(synonym_replacement=0.1).enabled
    assert TextAugmentConfig(random_deletion=0.1).enabled
    assert not TextAugmentConfig(random_swap=0.1, num_augmented=0).enabled
    assert all(f.description for f in TextAugmentConfig.model_fields.values())
