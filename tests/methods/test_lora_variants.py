"""LoRA variants: rsLoRA, DoRA, initialisations and per-module rank/alpha patterns (vs peft)."""

from __future__ import annotations

import math

import peft
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tunelab.methods import apply_methods, count_parameters
from tunelab.methods.lora import (
    LoRAConfig,
    LoRALinear,
    lora_modules,
    merge_lora,
    pattern_value,
    unmerge_lora,
    unwrap_lora,
)

from .conftest import TINY_BERT

PEFT_PREFIX = "base_model.model."
H, I, L = TINY_BERT["hidden_size"], TINY_BERT["intermediate_size"], TINY_BERT["num_hidden_layers"]


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def randomize_peft(model: nn.Module, seed: int = 3) -> None:
    """Non-zero A and B (and a perturbed DoRA magnitude) in a peft model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.rand(param.shape, generator=gen))
            elif "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def our_name(peft_name: str) -> str:
    """peft parameter name -> ours (``...lora_magnitude_vector.default.weight`` -> ``...lora_magnitude``)."""
    name = peft_name.removeprefix(PEFT_PREFIX)
    return name.replace("lora_magnitude_vector.default.weight", "lora_magnitude").replace(".default", "")


def copy_from_peft(ours: nn.Module, theirs: nn.Module) -> int:
    params = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                params[our_name(name)].copy_(param)
                copied += 1
    assert copied == sum(1 for n in params if "lora_" in n) > 0
    return copied


def pair(make_bert, ours_cfg: LoRAConfig, peft_cfg: peft.LoraConfig, seed: int = 7):
    ours, theirs = make_bert(seed=seed), make_bert(seed=seed)
    apply_methods(ours, [ours_cfg])
    theirs = peft.get_peft_model(theirs, peft_cfg)
    return ours.eval(), theirs.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def lora_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)


# --- rsLoRA -------------------------------------------------------------------------------------


def test_rslora_scaling() -> None:
    module = LoRALinear(nn.Linear(6, 5), r=4, alpha=8, use_rslora=True)
    assert module.scaling == pytest.approx(8 / math.sqrt(4))
    assert LoRALinear(nn.Linear(6, 5), r=4, alpha=8).scaling == 2.0


def test_rslora_matches_peft(make_bert, batch) -> None:
    targets = ["query", "value", "dense"]
    ours, theirs = pair(
        make_bert,
        LoRAConfig(r=4, alpha=8, target_modules=targets, use_rslora=True),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, use_rslora=True),
    )
    randomize_peft(theirs)
    copy_from_peft(ours, theirs)
    assert max_diff(logits(ours, batch), logits(theirs, batch)) <= 1e-5
    assert max_diff(logits(ours, batch), logits(make_bert(seed=7).eval(), batch)) > 1e-3


def test_rslora_trainable_count_is_plain_lora(make_bert) -> None:
    plain, rs = make_bert(), make_bert()
    apply_methods(plain, [LoRAConfig(r=4, target_modules="all-linear", train_head=False)])
    apply_methods(rs, [LoRAConfig(r=4, target_modules="all-linear", train_head=False, use_rslora=True)])
    # per layer: q, k, v, attn-out (H->H), FFN in (H->I), FFN out (I->H); plus the pooler (H->H)
    expected = 4 * (L * 4 * (H + H) + L * (H + I) + L * (I + H) + (H + H))
    assert count_parameters(rs)["trainable"] == count_parameters(plain)["trainable"] == expected


# --- DoRA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_rslora", [False, True])
def test_dora_matches_peft(make_bert, batch, use_rslora) -> None:
    targets = ["query", "key", "value", "dense"]
    ours, theirs = pair(
        make_bert,
        LoRAConfig(r=4, alpha=8, target_modules=targets, use_dora=True, use_rslora=use_rslora),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, use_dora=True, use_rslora=use_rslora
        ),
    )
    # Magnitudes start at the row norms of W0 (B = 0) in both.
    for name, param in theirs.named_parameters():
        if "lora_magnitude_vector" in name:
            assert torch.allclose(dict(ours.named_parameters())[our_name(name)], param, atol=1e-6)
    randomize_peft(theirs)
    copy_from_peft(ours, theirs)
    assert max_diff(logits(ours, batch), logits(theirs, batch)) <= 1e-5
    assert max_diff(logits(ours, batch), logits(make_bert(seed=7).eval(), batch)) > 1e-3


def test_dora_at_init_equals_base(make_bert, batch) -> None:
    base, adapted = make_bert().eval(), make_bert()
    apply_methods(adapted, [LoRAConfig(target_modules="all-linear", use_dora=True)])
    adapted.eval()
    assert max_diff(logits(base, batch), logits(adapted, batch)) <= 1e-6
    module = adapted.bert.encoder.layer[0].attention.self.query
    assert torch.allclose(module.lora_magnitude, module.base_layer.weight.norm(dim=1))


def test_dora_forward_is_the_decomposition() -> None:
    torch.manual_seed(0)
    module = LoRALinear(nn.Linear(6, 5), r=3, alpha=6, use_dora=True, init="random")
    with torch.no_grad():
        module.lora_magnitude.mul_(torch.rand(5) + 0.5)
    x = torch.randn(4, 6)
    direction = module.base_layer.weight + 2.0 * module.lora_B.weight @ module.lora_A.weight
    expected = x @ (module.lora_magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True)).T
    expected = expected + module.base_layer.bias
    assert torch.allclose(module(x), expected, atol=1e-6)


def test_dora_norm_is_detached() -> None:
    """Paper sec. 4.3: ||W0 + dW|| is a constant for back-propagation; gradients still reach A, B, m."""
    torch.manual_seed(0)
    module = LoRALinear(nn.Linear(6, 5), r=2, alpha=2, use_dora=True, init="random")
    module.base_layer.weight.requires_grad_(False)
    x = torch.randn(3, 6)
    module(x).sum().backward()
    grad_b = module.lora_B.weight.grad.clone()
    # Same gradient by hand, with the norm a constant tensor.
    a, b, m = (
        t.detach().clone().requires_grad_(True)
        for t in (module.lora_A.weight, module.lora_B.weight, module.lora_magnitude)
    )
    direction = module.base_layer.weight + b @ a
    norm = direction.norm(dim=1).detach()
    (x @ ((m / norm)[:, None] * direction).T + module.base_layer.bias).sum().backward()
    assert torch.allclose(grad_b, b.grad, atol=1e-6)
    assert torch.allclose(module.lora_magnitude.grad, m.grad, atol=1e-6)


def test_dora_dropout_in_training_uses_dropped_input() -> None:
    torch.manual_seed(0)
    module = LoRALinear(nn.Linear(6, 5), r=2, alpha=2, dropout=0.5, use_dora=True, init="random")
    module.train()
    x = torch.randn(3, 6)
    torch.manual_seed(1)
    out = module(x)
    torch.manual_seed(1)
    dropped = module.lora_dropout(x)
    w0, bias = module.base_layer.weight, module.base_layer.bias
    factor = module.lora_magnitude / module.dora_weight_norm()
    update = dropped @ (module.lora_B.weight @ module.lora_A.weight).T * module.scaling
    expected = (x @ w0.T + bias) + (factor - 1) * (dropped @ w0.T) + factor * update
    assert torch.allclose(out, expected, atol=1e-6)
    module.eval()  # eval: dropout off, plain decomposition m / ||W0 + dW|| * (W0 + dW) x + b
    direction = w0 + module.delta_weight()
    expected = x @ (factor[:, None] * direction).T + bias
    assert torch.allclose(module(x), expected, atol=1e-6)


def test_dora_merge_unmerge(make_bert, batch) -> None:
    model = make_bert()
    apply_methods(model, [LoRAConfig(r=4, target_modules="all-linear", use_dora=True, init="random")])
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_magnitude.mul_(1.2)
    model.eval()
    modules = lora_modules(model)
    before = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}
    bias_before = {n: m.base_layer.bias.detach().clone() for n, m in modules.items()}
    unmerged_out = logits(model, batch)

    assert merge_lora(model) == len(modules)
    assert all(m.merged for m in modules.values())
    assert max_diff(logits(model, batch), unmerged_out) <= 1e-5
    merged = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}
    merge_lora(model)  # idempotent
    assert all(torch.equal(m.base_layer.weight, merged[n]) for n, m in modules.items())

    unmerge_lora(model)
    for name, module in modules.items():
        assert not module.merged and module.lora_merged_norm is None
        assert torch.allclose(module.base_layer.weight, before[name], atol=1e-5)
        assert torch.equal(module.base_layer.bias, bias_before[name])
    assert max_diff(logits(model, batch), unmerged_out) <= 1e-5
    assert "lora_merged_norm" not in " ".join(model.state_dict())


def test_dora_unwrap_matches_peft_merge(make_bert, batch) -> None:
    targets = ["query", "value"]
    ours, theirs = pair(
        make_bert,
        LoRAConfig(r=4, alpha=8, target_modules=targets, use_dora=True),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, use_dora=True),
    )
    randomize_peft(theirs)
    copy_from_peft(ours, theirs)
    ours_plain = unwrap_lora(ours).state_dict()
    theirs_plain = theirs.merge_and_unload().state_dict()
    assert set(ours_plain) == set(theirs_plain)
    assert max(max_diff(ours_plain[k], theirs_plain[k]) for k in ours_plain) <= 1e-5


def test_dora_trainable_count(make_bert) -> None:
    model = make_bert()
    targets = ["query", "value", "intermediate.dense"]
    apply_methods(model, [LoRAConfig(r=4, target_modules=targets, use_dora=True, train_head=False)])
    lora = L * (2 * 4 * (H + H) + 4 * (H + I))
    magnitudes = L * (H + H + I)  # out_features of each target
    assert count_parameters(model)["trainable"] == lora + magnitudes
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.rsplit(".", 2)[-2].startswith("lora_") or n.endswith("lora_magnitude") for n in names)


def test_dora_trainable_count_matches_peft(make_bert) -> None:
    ours, theirs = pair(
        make_bert,
        LoRAConfig(r=4, target_modules="all-linear", use_dora=True),
        peft.LoraConfig(r=4, target_modules="all-linear", use_dora=True, task_type="SEQ_CLS"),  # keeps the head out
    )
    assert lora_count(ours) == lora_count(theirs)


# --- init -------------------------------------------------------------------------------------


def test_gaussian_init_std() -> None:
    torch.manual_seed(0)
    r = 4
    module = LoRALinear(nn.Linear(512, 64), r=r, alpha=8, init="gaussian")
    a = module.lora_A.weight
    assert a.mean().abs().item() < 0.02  # 2048 samples, std 0.25 -> s.e. ~0.0055
    assert abs(a.std().item() - 1 / r) < 0.02
    assert torch.count_nonzero(module.lora_B.weight) == 0


def test_gaussian_init_matches_peft_distribution(make_bert) -> None:
    targets = ["intermediate.dense"]
    ours, theirs = pair(
        make_bert,
        LoRAConfig(r=2, target_modules=targets, init="gaussian"),
        peft.LoraConfig(r=2, target_modules=targets, init_lora_weights="gaussian"),
    )
    ours_std = torch.cat([p.flatten() for n, p in ours.named_parameters() if "lora_A" in n]).std().item()
    theirs_std = torch.cat([p.flatten() for n, p in theirs.named_parameters() if "lora_A" in n]).std().item()
    assert abs(ours_std - 0.5) < 0.08 and abs(theirs_std - 0.5) < 0.08


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
@pytest.mark.parametrize("use_dora", [False, True])
def test_zero_b_inits_leave_the_model_unchanged(make_bert, batch, init, use_dora) -> None:
    base, adapted = make_bert().eval(), make_bert()
    apply_methods(adapted, [LoRAConfig(target_modules="all-linear", init=init, use_dora=use_dora)])
    adapted.eval()
    for module in lora_modules(adapted).values():
        assert torch.count_nonzero(module.lora_B.weight) == 0
        assert torch.count_nonzero(module.lora_A.weight) == module.lora_A.weight.numel()
    assert max_diff(logits(base, batch), logits(adapted, batch)) <= 1e-6


def test_random_init_changes_the_model(make_bert, batch) -> None:
    base, adapted = make_bert().eval(), make_bert()
    apply_methods(adapted, [LoRAConfig(target_modules="all-linear", init="random")])
    adapted.eval()
    assert all(torch.count_nonzero(m.lora_B.weight) > 0 for m in lora_modules(adapted).values())
    assert max_diff(logits(base, batch), logits(adapted, batch)) > 1e-4


def test_unknown_init_is_rejected() -> None:
    with pytest.raises(ValidationError):
        LoRAConfig(init="zero")
    with pytest.raises(ValueError):
        LoRALinear(nn.Linear(3, 3), r=1, alpha=1, init="zero")


# --- rank / alpha patterns -----------------------------------------------------------------------


def test_pattern_matching_rule() -> None:
    name = "bert.encoder.layer.0.attention.self.query"
    assert pattern_value({"query": 2}, name, 8) == 2
    assert pattern_value({"uery": 2}, name, 8) == 8  # only whole dotted suffixes
    assert pattern_value({r"layer\.0\.attention\.self\.query": 2}, name, 8) == 2
    assert pattern_value({r"layer\.1\..*": 2}, name, 8) == 8
    assert pattern_value({"self": 2}, name, 8) == 8  # must reach the end of the name
    assert pattern_value({"query": 2, ".*": 3}, name, 8) == 2  # first match wins
    assert pattern_value({".*": 3, "query": 2}, name, 8) == 3


PATTERNS = [
    ({"query": 2, r"layer\.1\..*value": 6}, {"value": 3.0}),
    ({r"encoder\.layer\.0\..*": 1}, {r"attention\.output\.dense": 10.0, "query": 5.0}),
]


@pytest.mark.parametrize(("rank_pattern", "alpha_pattern"), PATTERNS)
@pytest.mark.parametrize("use_dora", [False, True])
def test_patterns_match_peft(make_bert, batch, rank_pattern, alpha_pattern, use_dora) -> None:
    targets = ["query", "value", "dense"]
    ours, theirs = pair(
        make_bert,
        LoRAConfig(
            r=4, alpha=8, target_modules=targets,
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_dora=use_dora,
        ),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_dora=use_dora,
        ),
    )
    ours_shapes = {n: p.shape for n, p in ours.named_parameters() if "lora_" in n}
    theirs_shapes = {our_name(n): p.shape for n, p in theirs.named_parameters() if "lora_" in n}
    assert ours_shapes == theirs_shapes
    assert len({s[0] for n, s in ours_shapes.items() if "lora_A" in n}) > 1  # the patterns did something
    for name, module in theirs.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            mine = ours.get_submodule(name.removeprefix(PEFT_PREFIX))
            assert mine.scaling == pytest.approx(module.scaling["default"])
    assert lora_count(ours) == lora_count(theirs)
    randomize_peft(theirs)
    copy_from_peft(ours, theirs)
    assert max_diff(logits(ours, batch), logits(theirs, batch)) <= 1e-5


def test_rank_pattern_trainable_count(make_bert) -> None:
    model = make_bert()
    cfg = LoRAConfig(r=4, target_modules=["query", "value"], rank_pattern={"value": 1}, train_head=False)
    apply_methods(model, [cfg])
    assert count_parameters(model)["trainable"] == L * (4 * 2 * H + 1 * 2 * H)


def test_bad_patterns_are_rejected() -> None:
    with pytest.raises(ValidationError):
        LoRAConfig(rank_pattern={"(": 2})
    with pytest.raises(ValidationError):
        LoRAConfig(rank_pattern={"query": 0})
    with pytest.raises(ValidationError):
        LoRAConfig(alpha_pattern={"query": -1.0})


def test_config_defaults_are_plain_lora() -> None:
    cfg = LoRAConfig()
    variant = (cfg.use_rslora, cfg.use_dora, cfg.init, cfg.rank_pattern, cfg.alpha_pattern)
    assert variant == (False, False, "kaiming", {}, {})
    for field in ("use_rslora", "use_dora", "init", "rank_pattern", "alpha_pattern"):
        assert LoRAConfig.model_fields[field].description
