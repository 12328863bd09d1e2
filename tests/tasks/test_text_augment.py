"""data.augment on a classification run: EDA copies of the training split only, seeded."""

from __future__ import annotations

from tunelab.config import build_config
from tunelab.models.loading import load_tokenizer
from tunelab.tasks import get_task


def _prepared(tiny_bert_dir, reviews_jsonl, **augment):
    overrides = [f"model.name_or_path={tiny_bert_dir}", f"data.source={reviews_jsonl}",
                 *[f"data.augment.{k}={v}" for k, v in augment.items()]]
    cfg = build_config(None, overrides)
    task = get_task(cfg.task)
    return task.prepare(cfg, load_tokenizer(str(tiny_bert_dir)))


def test_augment_adds_copies_to_train_only(tiny_bert_dir, reviews_jsonl):
    plain = _prepared(tiny_bert_dir, reviews_jsonl)
    aug = _prepared(tiny_bert_dir, reviews_jsonl, random_swap=0.2, synonym_replacement=0.1, num_augmented=2)
    n = len(plain.splits["train"])
    assert len(aug.splits["train"]) == len(aug.rows["train"]) == 3 * n
    assert list(aug.splits["train"]["text"][:n]) == list(plain.splits["train"]["text"])  # originals first
    labels, texts = list(plain.splits["train"]["label"]), list(plain.splits["train"]["text"])
    assert list(aug.splits["train"]["label"]) == labels + [y for y in labels for _ in range(2)]  # copies follow
    changed = sum(a != b for a, b in zip(aug.splits["train"]["text"][n:], [t for t in texts for _ in range(2)]))
    assert changed > 0.8 * 2 * n
    for split in ("validation", "test"):
        assert list(aug.splits[split]["text"]) == list(plain.splits[split]["text"])
    again = _prepared(tiny_bert_dir, reviews_jsonl, random_swap=0.2, synonym_replacement=0.1, num_augmented=2)
    assert again.rows["train"] == aug.rows["train"]  # seeded: the same copies every time
    other = _prepared(tiny_bert_dir, reviews_jsonl, random_swap=0.2, synonym_replacement=0.1, num_augmented=2,
                      seed=7)
    assert other.rows["train"] != aug.rows["train"]
