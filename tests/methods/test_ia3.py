"""(IA)^3: fidelity against peft, parameter counts, merging, targeting and gradients.

``apply_ia3`` freezes everything and calls :func:`tunelab.methods.ia3.apply` directly (what
``apply_methods`` does); once ``ia3`` is registered these can switch to ``apply_methods``.
"""

from __future__ import annotations

import peft
import pytest
import torch
from peft.tuners.ia3 import IA3Layer
from pydantic import ValidationError
from torch import nn

from tunelab.errors import UserError
from tunelab.methods import count_parameters
from tunelab.methods.ia3 import (
    SPEC,
    IA3Config,
    IA3Linear,
    apply,
    find_ia3_targets,
    ia3_modules,
    merge_ia3,
    unmerge_ia3,
    unwrap_ia3,
)
from tunelab.models.layers import head_parameter_names

from .conftest import TINY_BERT

PEFT_PREFIX = "base_model.model."
H, I, L, C = (TINY_BERT[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_labels"))
HEAD = H * C + C


def apply_ia3(model: nn.Module, cfg: IA3Config) -> nn.Module:
    """Freeze, apply (IA)^3, unfreeze the head: ``apply_methods`` until ia3 is registered."""
    for p in model.parameters():
        p.requires_grad_(False)
    apply(model, cfg)
    if cfg.train_head:
        params = dict(model.named_parameters())
        for name in head_parameter_names(model):
            params[name].requires_grad_(True)
    return model


def biased(model: nn.Module, seed: int = 11) -> nn.Module:
    """Random non-zero biases (BERT initialises them to zero, which would hide how bias is scaled)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith(".bias") and "LayerNorm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last encoder hidden states: O(1) values, unlike the tiny random model's O(0.01) logits."""
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[-1]


def randomize_ia3(model: nn.Module, seed: int = 3) -> None:
    """Give every scaling vector random values around 1 (they start at exactly 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "ia3_" in name:
                param.copy_(1.0 + torch.randn(param.shape, generator=gen) * 0.5)


def peft_layers(peft_model: nn.Module) -> dict[str, IA3Layer]:
    return {n.removeprefix(PEFT_PREFIX): m for n, m in peft_model.named_modules() if isinstance(m, IA3Layer)}


CASES = [  # (ours, feedforward, the same targets for peft: a list, or one regex string)
    pytest.param(["key", "value", "output.dense"], ["output.dense"], None, id="peft-bert-default"),
    pytest.param(
        ["query", "intermediate.dense", r"re:.*layer\.1\.output\.dense"], ["intermediate.dense"],
        r".*\.(query|intermediate\.dense)|.*layer\.1\.output\.dense", id="ffn-input-and-output-scaled-with-bias",
    ),
    pytest.param(["value", "pooler.dense"], [], None, id="no-feedforward"),
]


@pytest.mark.parametrize(("targets", "feedforward", "peft_targets"), CASES)
def test_matches_peft(make_bert, batch, targets, feedforward, peft_targets) -> None:
    ours, theirs = biased(make_bert(seed=7)), biased(make_bert(seed=7))
    apply_ia3(ours, IA3Config(target_modules=targets, feedforward_modules=feedforward))
    peft_targets = peft_targets or targets
    theirs = peft.get_peft_model(
        theirs, peft.IA3Config(task_type="SEQ_CLS", target_modules=peft_targets, feedforward_modules=feedforward)
    )
    theirs_layers, ours_layers = peft_layers(theirs), ia3_modules(ours)
    assert set(ours_layers) == set(theirs_layers) and ours_layers
    assert {n: m.is_feedforward for n, m in ours_layers.items()} == {
        n: m.is_feedforward for n, m in theirs_layers.items()
    }
    assert any(m.is_feedforward for m in ours_layers.values()) == bool(feedforward)
    ours.eval(), theirs.eval()
    assert torch.allclose(logits(ours, batch), logits(theirs, batch), atol=1e-6)  # l = 1 in both

    randomize_ia3(theirs)
    ours_params = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "ia3_" in name:
                mine = ours_params[name.removeprefix(PEFT_PREFIX).replace(".default", "")]
                mine.copy_(param.flatten())  # peft stores (out, 1) / (1, in); ours is 1-D
                copied += 1
    assert copied == sum(1 for n in ours_params if "ia3_" in n) > 0
    assert (logits(ours, batch) - logits(theirs, batch)).abs().max().item() <= 1e-5
    assert (hidden(ours, batch) - hidden(theirs, batch)).abs().max().item() <= 1e-5
    base = biased(make_bert(seed=7)).eval()
    assert (hidden(ours, batch) - hidden(base, batch)).abs().max().item() > 1e-2  # the vectors matter

    trainable_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert count_parameters(ours)["trainable"] == trainable_theirs


def test_default_targets_follow_peft_mapping(make_bert) -> None:
    ours, theirs = make_bert(), make_bert()
    apply_ia3(ours, IA3Config())
    theirs = peft.get_peft_model(theirs, peft.IA3Config(task_type="SEQ_CLS"))  # peft's bert mapping
    expected = {f"bert.encoder.layer.{i}.{suffix}": ff for i in range(L) for suffix, ff in {
        "attention.self.key": False, "attention.self.value": False,
        "attention.output.dense": True, "output.dense": True,
    }.items()}
    assert {n: m.is_feedforward for n, m in ia3_modules(ours).items()} == expected
    assert {n: m.is_feedforward for n, m in peft_layers(theirs).items()} == expected
    assert find_ia3_targets(make_bert(), IA3Config()) == expected


@pytest.mark.parametrize(
    ("targets", "feedforward", "per_layer"),
    [
        (None, None, H + H + H + I),  # key, value out; attention.output.dense, output.dense in
        (["query", "value"], [], 2 * H),
        (["intermediate.dense", "output.dense"], ["intermediate.dense"], H + (H + H)),  # in H; out H, H
        (["key", "value", "output.dense"], [], 2 * H + 2 * H),
    ],
)
def test_trainable_count_is_closed_form(make_bert, targets, feedforward, per_layer) -> None:
    model = apply_ia3(make_bert(), IA3Config(target_modules=targets, feedforward_modules=feedforward))
    modules = ia3_modules(model)
    closed = sum(m.in_features if m.is_feedforward else m.out_features for m in modules.values())
    assert closed == L * per_layer
    counts = count_parameters(model)
    assert counts["trainable"] == closed + HEAD
    assert count_parameters(apply_ia3(make_bert(), IA3Config(
        target_modules=targets, feedforward_modules=feedforward, train_head=False)))["trainable"] == closed
    assert counts["total"] == sum(p.numel() for p in make_bert().parameters()) + closed


def test_initial_vectors_are_a_no_op(make_bert, batch) -> None:
    base, adapted = make_bert().eval(), make_bert().eval()
    apply_ia3(adapted, IA3Config())
    assert torch.equal(logits(base, batch), logits(adapted, batch))
    assert torch.equal(hidden(base, batch), hidden(adapted, batch))
    for module in ia3_modules(adapted).values():
        assert torch.equal(module.ia3_l, torch.ones_like(module.ia3_l))
        assert module.ia3_l.shape == ((module.in_features if module.is_feedforward else module.out_features),)


def test_forward_scales_output_with_bias_or_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    out_scaled = IA3Linear(nn.Linear(6, 4), is_feedforward=False)
    in_scaled = IA3Linear(nn.Linear(6, 4), is_feedforward=True)
    with torch.no_grad():
        out_scaled.ia3_l.copy_(torch.randn(4))
        in_scaled.ia3_l.copy_(torch.randn(6))
    base_o, base_i = out_scaled.base_layer, in_scaled.base_layer
    expected_o = (x @ base_o.weight.T + base_o.bias) * out_scaled.ia3_l  # bias scaled too (peft)
    expected_i = (x * in_scaled.ia3_l) @ base_i.weight.T + base_i.bias  # bias not scaled
    assert torch.allclose(out_scaled(x), expected_o, atol=1e-6)
    assert torch.allclose(in_scaled(x), expected_i, atol=1e-6)
    assert not torch.allclose(out_scaled(x), x @ base_o.weight.T * out_scaled.ia3_l + base_o.bias, atol=1e-3)


def test_merge_unmerge_roundtrip(tiny_bert, batch) -> None:
    biased(tiny_bert)
    apply_ia3(tiny_bert, IA3Config(target_modules=["key", "value", "output.dense", "pooler.dense"]))
    randomize_ia3(tiny_bert)
    tiny_bert.eval()
    modules = ia3_modules(tiny_bert)
    assert any(m.is_feedforward for m in modules.values()) and not all(m.is_feedforward for m in modules.values())
    before = {n: (m.base_layer.weight.detach().clone(), m.base_layer.bias.detach().clone()) for n, m in modules.items()}
    unmerged_out = logits(tiny_bert, batch)
    unmerged_hidden = hidden(tiny_bert, batch)

    assert merge_ia3(tiny_bert) == len(modules)
    assert all(m.merged for m in modules.values())
    merged = {n: (m.base_layer.weight.detach().clone(), m.base_layer.bias.detach().clone()) for n, m in modules.items()}
    for name, module in modules.items():
        weight, bias = before[name]
        if module.is_feedforward:
            assert torch.allclose(merged[name][0], weight * module.ia3_l, atol=1e-7)
            assert torch.equal(merged[name][1], bias)
        else:
            assert torch.allclose(merged[name][0], weight * module.ia3_l[:, None], atol=1e-7)
            assert torch.allclose(merged[name][1], bias * module.ia3_l, atol=1e-7)
    assert (logits(tiny_bert, batch) - unmerged_out).abs().max().item() <= 1e-5
    assert (hidden(tiny_bert, batch) - unmerged_hidden).abs().max().item() <= 1e-5

    merge_ia3(tiny_bert)  # idempotent
    for name, module in modules.items():
        assert torch.equal(module.base_layer.weight, merged[name][0])

    assert unmerge_ia3(tiny_bert) == len(modules)
    for name, module in modules.items():
        assert not module.merged
        assert torch.allclose(module.base_layer.weight, before[name][0], atol=1e-6)
        assert torch.allclose(module.base_layer.bias, before[name][1], atol=1e-6)
    assert (logits(tiny_bert, batch) - unmerged_out).abs().max().item() <= 1e-5


def test_merge_matches_peft_merge(make_bert, batch) -> None:
    ours = apply_ia3(biased(make_bert(seed=2)), IA3Config())
    theirs = peft.get_peft_model(biased(make_bert(seed=2)), peft.IA3Config(task_type="SEQ_CLS"))
    randomize_ia3(theirs)
    ours_params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "ia3_" in name:
                ours_params[name.removeprefix(PEFT_PREFIX).replace(".default", "")].copy_(param.flatten())
    merge_ia3(ours)
    theirs = theirs.merge_and_unload()
    ours_state = unwrap_ia3(ours).state_dict()
    for key, value in theirs.state_dict().items():
        assert torch.allclose(ours_state[key], value, atol=1e-6), key


def test_unmerge_with_zero_entry_refuses() -> None:
    module = IA3Linear(nn.Linear(3, 2))
    with torch.no_grad():
        module.ia3_l[0] = 0.0
    module.merge()
    weight = module.base_layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="zero"):
        module.unmerge()
    assert module.merged and torch.equal(module.base_layer.weight, weight)


def test_unwrap_restores_plain_state_dict_keys(make_bert, batch) -> None:
    original = make_bert()
    model = apply_ia3(biased(make_bert()), IA3Config())
    randomize_ia3(model)
    model.eval()
    adapted_out = hidden(model, batch)
    unwrap_ia3(model)
    assert set(model.state_dict()) == set(original.state_dict())
    assert not ia3_modules(model)
    assert (hidden(model, batch) - adapted_out).abs().max().item() <= 1e-5


def test_only_ia3_and_head_get_gradients(tiny_bert, batch) -> None:
    apply_ia3(tiny_bert, IA3Config())
    tiny_bert.train()
    tiny_bert(**batch).loss.backward()
    head = set(head_parameter_names(tiny_bert))
    assert head == {"classifier.weight", "classifier.bias"}
    for name, param in tiny_bert.named_parameters():
        expected = "ia3_" in name or name in head
        assert (param.grad is not None) == expected, name
        assert param.requires_grad == expected, name
    for module in ia3_modules(tiny_bert).values():
        assert module.ia3_l.grad.abs().sum() > 0


def test_target_matching_nothing_names_close_modules(tiny_bert) -> None:
    with pytest.raises(UserError) as info:
        apply_ia3(tiny_bert, IA3Config(target_modules=["kee", "valeu"], feedforward_modules=[]))
    message = str(info.value)
    assert "kee" in message and "key" in message.split("close")[-1] and "value" in message


def test_head_is_never_targeted(tiny_bert) -> None:
    with pytest.raises(UserError, match="classifier"):
        apply_ia3(tiny_bert, IA3Config(target_modules=["classifier"], feedforward_modules=[]))


def test_feedforward_must_be_subset_of_targets(tiny_bert) -> None:
    with pytest.raises(UserError, match=r"subset of target_modules.*\['output\.dense'\]"):
        apply_ia3(tiny_bert, IA3Config(target_modules=["key", "value"], feedforward_modules=["output.dense"]))
    with pytest.raises(UserError, match=r"subset.*intermediat.*close Linear modules: .*intermediate"):
        apply_ia3(tiny_bert, IA3Config(target_modules=["intermediate.dense"], feedforward_modules=["intermediat"]))
    assert not ia3_modules(tiny_bert)  # nothing was wrapped before the error


def test_unknown_architecture_needs_explicit_targets() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(UserError, match="no default targets.*set both"):
        apply(Tiny(), IA3Config(target_modules=["proj"]))
    model = Tiny()
    apply(model, IA3Config(target_modules=["proj"], feedforward_modules="proj"))
    assert ia3_modules(model)["proj"].is_feedforward


@pytest.mark.parametrize(
    "kwargs",
    [{"target_modules": []}, {"target_modules": [""]}, {"target_modules": "re:("},
     {"feedforward_modules": ["re:[a"]}, {"rank": 4}],
)
def test_config_validation(kwargs) -> None:
    with pytest.raises(ValidationError):
        IA3Config(**kwargs)
    assert IA3Config(feedforward_modules=[]).feedforward_modules == []


def test_spec() -> None:
    assert SPEC.name == "ia3" and SPEC.config_cls is IA3Config and SPEC.apply is apply
    assert SPEC.description and "2205.05638" in SPEC.paper
    assert IA3Config.model_fields["name"].default == "ia3"
