"""Frozen-trunk cache: same outputs as running the frozen blocks, only the top runs each step."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tests.conftest import tiny_overrides
from tunelab.cli import main
from tunelab.errors import UserError
from tunelab.methods import METHODS, apply_methods
from tunelab.methods.freeze import FreezeConfig
from tunelab.methods.lora import LoRAConfig
from tunelab.train.trunk_cache import FrozenTrunkCache


def _model(top_layers: int = 1) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    apply_methods(model, [FreezeConfig(top_layers=top_layers)])
    return model


def _collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[j, :len(r["input_ids"])] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if "row_index" in rows[0]:
        out["row_index"] = torch.tensor([r["row_index"] for r in rows])
    return out


@pytest.mark.parametrize("top_layers", [1, 0])
def test_cached_forward_equals_full_forward(top_layers):
    """top_layers=0 (a linear probe) caches every block; only pooler and head run."""
    model = _model(top_layers=top_layers)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1, 60, (int(n),), generator=g).tolist()}
            for n in torch.randint(3, 12, (10,), generator=g)]
    cache = FrozenTrunkCache(model, mask_key="attention_mask", row_length=lambda r: len(r["input_ids"]))
    cache.build(rows, _collate, batch_size=4)
    assert cache.k == 3 - top_layers and all(s.shape == (len(r["input_ids"]), 16) for s, r in zip(cache.states, rows))
    batch = _collate([dict(rows[i], row_index=i) for i in (7, 2, 5)])
    idx = batch.pop("row_index")
    model.train()
    expected = model(**batch).logits
    calls = {"n": 0}
    hook = model.bert.encoder.layer[0].attention.register_forward_hook(lambda *a: calls.__setitem__("n", 1))
    with cache.active(idx, batch["attention_mask"]):
        got = model(**batch).logits
    hook.remove()
    assert calls["n"] == 0, "the frozen block ran although its output was cached"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(model(**batch).logits, expected)  # patch removed afterwards


def test_cache_refuses_a_trainable_bottom():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    apply_methods(model, [LoRAConfig(r=2)])
    with pytest.raises(UserError, match="layer 0 trains"):
        FrozenTrunkCache(model)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "ptuning_v2"])
def test_cache_refuses_virtual_tokens(method):
    """Virtual tokens feed every layer, so even frozen blocks' outputs change as they train."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    apply_methods(model, [FreezeConfig(top_layers=1), METHODS[method].config_cls()])
    with pytest.raises(UserError, match=f"cannot be used with.*{method}"):
        FrozenTrunkCache(model)


def test_cached_training_end_to_end(tiny_bert_dir, reviews_jsonl, tmp_path, capsys):
    overrides = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{
        "method.name": "freeze", "method.top_layers": 1, "train.cache_frozen_trunk": "true"})
    assert main(["train", *overrides]) == 0
    assert "cached the frozen trunk (layers 0-0)" in capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["global_step"] == 24 and 0 <= results["test"]["accuracy"] <= 1
