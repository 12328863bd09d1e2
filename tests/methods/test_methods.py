"""Trainable-parameter counts, composition rules and config validation for every method."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import BertConfig, BertForSequenceClassification

from tunelab.errors import UserError
from tunelab.methods import METHODS, apply_methods, count_parameters, get_method
from tunelab.methods.bitfit import BitFitConfig
from tunelab.methods.freeze import FreezeConfig
from tunelab.methods.full import FullConfig
from tunelab.methods.lora import LoRAConfig, lora_modules

from .conftest import TINY_BERT

H, I, L, C, V = (TINY_BERT[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_labels", "vocab_size"))
HEAD = H * C + C  # classifier weight + bias
LAYER = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H  # attention, LN, FFN, LN
BIASES = L * (4 * H + H + I + H + H) + H + H + C  # per layer: q,k,v,out, LN, FFN in/out, LN; emb LN, pooler, head


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_registry_has_every_method() -> None:
    assert set(METHODS) == {"full", "freeze", "bitfit", "lora", "qlora", "ia3", "adapter", "parallel_adapter",
                            "prompt_tuning", "prefix_tuning", "ptuning_v2"}
    for name, spec in METHODS.items():
        assert spec.config_cls.model_fields["name"].default == name
        assert spec.description and spec.paper


def test_full_trains_everything(tiny_bert) -> None:
    apply_methods(tiny_bert, [FullConfig()])
    counts = count_parameters(tiny_bert)
    assert counts["trainable"] == counts["total"] == sum(p.numel() for p in tiny_bert.parameters())
    assert counts["trainable_percent"] == 100.0


def test_bitfit_trains_exactly_the_biases(tiny_bert) -> None:
    apply_methods(tiny_bert, [BitFitConfig(train_head=False)])
    bias_total = sum(p.numel() for n, p in tiny_bert.named_parameters() if n.endswith(".bias"))
    assert count_parameters(tiny_bert)["trainable"] == bias_total == BIASES == 643
    assert all(n.endswith(".bias") for n in trainable_names(tiny_bert))


def test_bitfit_with_head_adds_the_classifier_weight(tiny_bert) -> None:
    apply_methods(tiny_bert, [BitFitConfig()])
    assert count_parameters(tiny_bert)["trainable"] == BIASES + H * C


def test_bitfit_without_biases_is_a_user_error(make_bert) -> None:
    model = make_bert()
    for module in model.modules():  # strip every bias
        for name, param in list(module.named_parameters(recurse=False)):
            if name == "bias":
                module.register_parameter("bias", None)
    with pytest.raises(UserError, match="no bias"):
        apply_methods(model, [BitFitConfig()])


def test_freeze_top_one_is_last_layer_plus_head(tiny_bert) -> None:
    apply_methods(tiny_bert, [FreezeConfig(top_layers=1)])
    last = tiny_bert.bert.encoder.layer[-1]
    assert sum(p.numel() for p in last.parameters()) == LAYER == 8544
    assert count_parameters(tiny_bert)["trainable"] == LAYER + HEAD
    assert all(n.startswith(("bert.encoder.layer.1.", "classifier.")) for n in trainable_names(tiny_bert))


def test_freeze_top_zero_is_a_linear_probe(tiny_bert) -> None:
    apply_methods(tiny_bert, [FreezeConfig(top_layers=0)])
    assert count_parameters(tiny_bert)["trainable"] == HEAD
    assert all(n.startswith("classifier.") for n in trainable_names(tiny_bert))


def test_freeze_bottom_one_with_embeddings(tiny_bert) -> None:
    apply_methods(tiny_bert, [FreezeConfig(bottom_layers=1, train_embeddings=True, train_head=False)])
    cfg = tiny_bert.config
    embeddings = (V + cfg.max_position_embeddings + cfg.type_vocab_size) * H + 2 * H
    assert count_parameters(tiny_bert)["trainable"] == LAYER + embeddings
    names = trainable_names(tiny_bert)
    assert "bert.embeddings.word_embeddings.weight" in names
    assert not any(n.startswith("bert.encoder.layer.1.") for n in names)


def test_freeze_patterns_use_re_search(tiny_bert) -> None:
    apply_methods(tiny_bert, [FreezeConfig(patterns=[r"attention\.self\.query"], train_head=False)])
    assert count_parameters(tiny_bert)["trainable"] == L * (H * H + H)


def test_freeze_top_and_patterns_are_a_union(tiny_bert) -> None:
    apply_methods(tiny_bert, [FreezeConfig(top_layers=1, patterns=[r"pooler"], train_head=False)])
    assert count_parameters(tiny_bert)["trainable"] == LAYER + H * H + H


def test_lora_query_value_count_on_base_sized_model() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=100)
    )
    apply_methods(model, [LoRAConfig(target_modules=["query", "value"], r=8, train_head=False)])
    assert count_parameters(model)["trainable"] == 12 * 2 * 8 * (768 + 768) == 294_912


def test_lora_counts_on_tiny_model(tiny_bert) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"], r=8)])
    assert count_parameters(tiny_bert)["trainable"] == L * 2 * 8 * (H + H) + HEAD


def test_lora_all_linear_count(tiny_bert) -> None:
    r = 4
    apply_methods(tiny_bert, [LoRAConfig(r=r, target_modules="all-linear", train_head=False)])
    per_layer = 4 * r * (H + H) + r * (H + I) + r * (I + H)
    pooler = r * (H + H)
    assert count_parameters(tiny_bert)["trainable"] == L * per_layer + pooler


def test_lora_plus_bitfit_trains_both(tiny_bert) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"], r=8), BitFitConfig()])
    names = trainable_names(tiny_bert)
    assert any("lora_A" in n for n in names) and any(n.endswith("query.base_layer.bias") for n in names)
    assert all("lora_" in n or n.endswith(".bias") or n.startswith("classifier.") for n in names)
    assert count_parameters(tiny_bert)["trainable"] == L * 2 * 8 * (H + H) + BIASES + H * C


def test_lora_layers_selects_blocks(tiny_bert) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"], layers=[1])])
    wrapped = sorted(lora_modules(tiny_bert))
    assert wrapped == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]


def test_lora_with_freeze_keeps_the_frozen_layers_training(tiny_bert) -> None:
    apply_methods(tiny_bert, [FreezeConfig(top_layers=1, train_head=False), LoRAConfig(target_modules=["query", "value"], r=2, layers=[0], train_head=False)])
    assert count_parameters(tiny_bert)["trainable"] == LAYER + 2 * 2 * (H + H)
    assert tiny_bert.bert.encoder.layer[1].attention.self.query.weight.requires_grad
    assert not tiny_bert.bert.encoder.layer[0].attention.self.query.weight.requires_grad


@pytest.mark.parametrize("other", [LoRAConfig(target_modules=["query", "value"]), BitFitConfig(), FreezeConfig(top_layers=1)])
def test_full_cannot_be_combined(tiny_bert, other) -> None:
    with pytest.raises(UserError, match="full"):
        apply_methods(tiny_bert, [FullConfig(), other])


def _default_config(name: str):
    return METHODS[name].config_cls(top_layers=1) if name == "freeze" else METHODS[name].config_cls()


REFUSED_PAIRS = {frozenset(p) for p in [("lora", "qlora"), ("lora", "ia3"), ("qlora", "ia3"), ("qlora", "freeze"),
                                        ("prompt_tuning", "prefix_tuning"), ("prompt_tuning", "ptuning_v2"),
                                        ("prefix_tuning", "ptuning_v2")]}
PAIRS = [(a, b) for a in METHODS for b in METHODS if a != b and "full" not in (a, b)]


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pair_of_methods_composes_or_is_refused_in_one_line(first, second, tiny_bert, batch) -> None:
    """Either both methods apply and the model runs and trains, or a one-line UserError says why."""
    configs = [_default_config(first), _default_config(second)]
    if frozenset((first, second)) in REFUSED_PAIRS:
        with pytest.raises(UserError, match="cannot be combined") as err:
            apply_methods(tiny_bert, configs)
        assert "\n" not in str(err.value)
        return
    apply_methods(tiny_bert, configs)
    tiny_bert(**batch).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in tiny_bert.named_parameters()
               if p.requires_grad and "classifier" not in n)


def test_unknown_method_suggests_a_name() -> None:
    with pytest.raises(UserError, match="did you mean 'lora'"):
        get_method("lroa")


def test_freeze_top_layers_too_large(tiny_bert) -> None:
    with pytest.raises(UserError, match=r"top_layers=99.*only 2 transformer layers"):
        apply_methods(tiny_bert, [FreezeConfig(top_layers=99)])


def test_freeze_bottom_layers_too_large(tiny_bert) -> None:
    with pytest.raises(UserError, match=r"bottom_layers=3"):
        apply_methods(tiny_bert, [FreezeConfig(bottom_layers=3)])


def test_freeze_pattern_matching_nothing_names_close_parameters(tiny_bert) -> None:
    with pytest.raises(UserError) as info:
        apply_methods(tiny_bert, [FreezeConfig(patterns=["attention.outptu"])])
    assert "'attention.outptu'" in str(info.value)
    assert "attention.output" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"train_embeddings": True}, {"patterns": []}, {"top_layers": -1}, {"patterns": ["("]}],
)
def test_freeze_config_rejects(kwargs) -> None:
    with pytest.raises(ValidationError):
        FreezeConfig(**kwargs)


def test_freeze_without_selector_message() -> None:
    with pytest.raises(ValidationError, match="at least one selector"):
        FreezeConfig()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"r": 0},
        {"alpha": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"target_modules": []},
        {"target_modules": ["re:("]},
        {"layers": [-1]},
        {"unknown_option": 1},
    ],
)
def test_lora_config_rejects(kwargs) -> None:
    with pytest.raises(ValidationError):
        LoRAConfig(**kwargs)


def test_method_configs_document_every_field() -> None:
    for spec in METHODS.values():
        for name, field in spec.config_cls.model_fields.items():
            assert field.description, f"{spec.name}.{name} has no description"
