"""LoRA: fidelity against peft, merging, unwrapping, targeting and gradients."""

from __future__ import annotations

import peft
import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from tunelab.errors import UserError
from tunelab.methods import apply_methods
from tunelab.methods.lora import LoRAConfig, LoRALinear, lora_modules, merge_lora, unmerge_lora, unwrap_lora
from tunelab.models.layers import head_parameter_names

from .conftest import TINY_BERT

PEFT_PREFIX = "base_model.model."


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def randomize_lora(model: nn.Module, seed: int = 3) -> None:
    """Give every LoRA factor non-zero random values (B starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def peft_wrapped_names(peft_model: nn.Module) -> set[str]:
    return {n.removeprefix(PEFT_PREFIX) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize(
    ("targets", "task_type"),
    [(["query", "value"], None), ("all-linear", "SEQ_CLS")],
)
def test_matches_peft(make_bert, batch, targets, task_type) -> None:
    ours, theirs = make_bert(seed=7), make_bert(seed=7)
    apply_methods(ours, [LoRAConfig(r=4, alpha=8, target_modules=targets)])
    theirs = peft.get_peft_model(
        theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, task_type=task_type)
    )
    assert set(lora_modules(ours)) == peft_wrapped_names(theirs)
    ours.eval(), theirs.eval()
    assert torch.allclose(logits(ours, batch), logits(theirs, batch), atol=1e-6)  # B = 0 in both

    randomize_lora(theirs)
    ours_params = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                ours_params[name.removeprefix(PEFT_PREFIX).replace(".default", "")].copy_(param)
                copied += 1
    assert copied == sum(1 for n in ours_params if "lora_" in n) > 0
    diff = (logits(ours, batch) - logits(theirs, batch)).abs().max().item()
    assert diff <= 1e-5
    assert (logits(ours, batch) - logits(make_bert(seed=7).eval(), batch)).abs().max().item() > 1e-3


def test_all_linear_skips_head_but_keeps_pooler(tiny_bert) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules="all-linear")])
    wrapped = set(lora_modules(tiny_bert))
    assert "classifier" not in wrapped and "bert.pooler.dense" in wrapped
    assert len(wrapped) == TINY_BERT["num_hidden_layers"] * 6 + 1
    assert isinstance(tiny_bert.classifier, nn.Linear)


def test_all_linear_skips_output_embeddings() -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "num_labels"}))
    apply_methods(model, [LoRAConfig(target_modules=["all-linear"], train_head=False)])
    wrapped = set(lora_modules(model))
    assert "cls.predictions.transform.dense" in wrapped
    assert "cls.predictions.decoder" not in wrapped
    assert isinstance(model.get_output_embeddings(), nn.Linear)


def test_initial_adapter_is_a_no_op(make_bert, batch) -> None:
    base, adapted = make_bert().eval(), make_bert().eval()
    apply_methods(adapted, [LoRAConfig(target_modules="all-linear")])
    assert torch.equal(logits(base, batch), logits(adapted, batch))
    module = adapted.bert.encoder.layer[0].attention.self.query
    assert torch.count_nonzero(module.lora_B.weight) == 0
    assert torch.count_nonzero(module.lora_A.weight) == module.lora_A.weight.numel()
    bound = 1.0 / module.in_features**0.5  # kaiming_uniform(a=sqrt(5)) bound for fan_in
    assert module.lora_A.weight.abs().max() <= bound


def test_forward_is_eq3(tiny_bert) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"], r=4, alpha=6)])
    randomize_lora(tiny_bert)
    module = tiny_bert.bert.encoder.layer[0].attention.self.value
    x = torch.randn(2, 5, TINY_BERT["hidden_size"])
    expected = x @ module.base_layer.weight.T + module.base_layer.bias
    expected = expected + (x @ module.lora_A.weight.T @ module.lora_B.weight.T) * (6 / 4)
    assert module.scaling == 1.5
    assert torch.allclose(module(x), expected, atol=1e-6)


def test_dropout_module_choice(tiny_bert) -> None:
    linear = nn.Linear(4, 3)
    assert isinstance(LoRALinear(linear, r=2, alpha=4).lora_dropout, nn.Identity)
    dropped = LoRALinear(nn.Linear(4, 3), r=2, alpha=4, dropout=0.25)
    assert isinstance(dropped.lora_dropout, nn.Dropout) and dropped.lora_dropout.p == 0.25


def test_merge_unmerge_roundtrip(tiny_bert, batch) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules="all-linear")])
    randomize_lora(tiny_bert)
    tiny_bert.eval()
    modules = lora_modules(tiny_bert)
    before = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}
    unmerged_out = logits(tiny_bert, batch)

    assert merge_lora(tiny_bert) == len(modules)
    merged_weights = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}
    assert all(m.merged for m in modules.values())
    assert not torch.allclose(merged_weights["bert.pooler.dense"], before["bert.pooler.dense"])
    assert (logits(tiny_bert, batch) - unmerged_out).abs().max().item() <= 1e-5

    merge_lora(tiny_bert)  # idempotent
    for name, module in modules.items():
        assert torch.equal(module.base_layer.weight, merged_weights[name])

    unmerge_lora(tiny_bert)
    for name, module in modules.items():
        assert not module.merged
        assert torch.allclose(module.base_layer.weight, before[name], atol=1e-6)
    assert (logits(tiny_bert, batch) - unmerged_out).abs().max().item() <= 1e-5


def test_inference_mode_and_merge_inside_it(tiny_bert, batch) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"])])
    randomize_lora(tiny_bert)
    tiny_bert.eval()
    expected = logits(tiny_bert, batch)
    with torch.inference_mode():
        out = tiny_bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merge_lora(tiny_bert)
        merged = tiny_bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(merged, expected, atol=1e-5)


def test_unwrap_restores_plain_state_dict_keys(make_bert, batch) -> None:
    original = make_bert()
    model = make_bert()
    apply_methods(model, [LoRAConfig(target_modules="all-linear")])
    randomize_lora(model)
    model.eval()
    adapted_out = logits(model, batch)
    assert set(model.state_dict()) != set(original.state_dict())

    unwrap_lora(model)
    assert set(model.state_dict()) == set(original.state_dict())
    assert not lora_modules(model)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, nn.Linear)
    assert (logits(model, batch) - adapted_out).abs().max().item() <= 1e-5
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(model.state_dict()[query], original.state_dict()[query])


def test_only_lora_and_head_get_gradients(tiny_bert, batch) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"], dropout=0.1)])
    tiny_bert.train()
    tiny_bert(**batch).loss.backward()
    head = set(head_parameter_names(tiny_bert))
    assert head == {"classifier.weight", "classifier.bias"}
    for name, param in tiny_bert.named_parameters():
        expected = "lora_" in name or name in head
        assert (param.grad is not None) == expected, name
    b_grad = tiny_bert.bert.encoder.layer[1].attention.self.value.lora_B.weight.grad
    assert b_grad.abs().sum() > 0


def test_regex_and_dotted_targets(tiny_bert) -> None:
    apply_methods(
        tiny_bert,
        [LoRAConfig(target_modules=[r"re:.*layer\.0\.attention\.self\.(query|key)", "attention.output.dense"])],
    )
    assert sorted(lora_modules(tiny_bert)) == [
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.attention.output.dense",
    ]


def test_target_matching_nothing_names_close_modules(tiny_bert) -> None:
    with pytest.raises(UserError) as info:
        apply_methods(tiny_bert, [LoRAConfig(target_modules=["querry", "valeu"])])
    message = str(info.value)
    assert "querry" in message and "query" in message.split("close")[-1] and "value" in message


def test_target_matching_nothing_lists_all_leaf_names(tiny_bert) -> None:
    with pytest.raises(UserError) as info:
        apply_methods(tiny_bert, [LoRAConfig(target_modules=["zzzz"])])
    assert "query" in str(info.value) and "dense" in str(info.value)


def test_head_is_never_targeted(tiny_bert) -> None:
    with pytest.raises(UserError, match="classifier"):
        apply_methods(tiny_bert, [LoRAConfig(target_modules=["classifier"])])


def test_layers_out_of_range(tiny_bert) -> None:
    with pytest.raises(UserError, match=r"\[5\].*2 transformer layers"):
        apply_methods(tiny_bert, [LoRAConfig(target_modules=["query", "value"], layers=[0, 5])])


def test_wrapper_exposes_base_attributes() -> None:
    base = nn.Linear(6, 5)
    wrapped = LoRALinear(base, r=3, alpha=3)
    assert wrapped.weight is base.weight and wrapped.bias is base.bias
    assert (wrapped.in_features, wrapped.out_features) == (6, 5)
    assert wrapped.lora_A.weight.shape == (3, 6) and wrapped.lora_B.weight.shape == (5, 3)
    with pytest.raises(ValueError):
        LoRALinear(base, r=0, alpha=1)
