"""Fixtures for method tests: tiny, seeded, randomly initialised BERT classifiers (no hub access)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

TINY_BERT = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
)


def build_bert(seed: int = 0, **overrides: int) -> BertForSequenceClassification:
    """A randomly initialised BERT classifier; the same seed gives identical weights."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**{**TINY_BERT, **overrides}))


@pytest.fixture
def make_bert() -> Callable[..., BertForSequenceClassification]:
    """Factory: ``make_bert(seed=0, **config_overrides)``."""
    return build_bert


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    """The 2-layer, hidden-32, 3-label BERT classifier (seed 0)."""
    return build_bert()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Random input ids with a padded tail in the second row, plus labels."""
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 100, (3, 7), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([0, 2, 1])}
