"""Bottleneck adapters (serial Houlsby and parallel He et al.): identity at init, formulas, counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from transformers import LlamaConfig, LlamaForSequenceClassification

from tunelab.errors import UserError
from tunelab.methods.adapter import (
    SPECS,
    AdapterConfig,
    ParallelAdapter,
    ParallelAdapterConfig,
    SerialAdapter,
    adapter_modules,
    apply_parallel,
    apply_serial,
)
from tunelab.methods.base import MethodConfig
from tunelab.models.layers import head_parameter_names

from .conftest import TINY_BERT, build_bert

H = TINY_BERT["hidden_size"]
LAYERS = TINY_BERT["num_hidden_layers"]
ACTS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def adapt(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    """What apply_methods will do once registered: freeze all, apply, unfreeze the head."""
    for p in model.parameters():
        p.requires_grad_(False)
    (apply_serial if isinstance(cfg, AdapterConfig) else apply_parallel)(model, cfg)
    params = dict(model.named_parameters())
    for name in head_parameter_names(model):
        params[name].requires_grad_(True)
    return model


def randomize_adapters(model: nn.Module, seed: int = 3) -> None:
    """Non-zero random adapter weights (the up-projection starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "adapter_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def adapter_count(h: int, b: int) -> int:
    """down (h*b + b) plus up (b*h + h)."""
    return h * b + b + b * h + h


def tiny_llama(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=3, pad_token_id=0,
    )
    return LlamaForSequenceClassification(config).eval()


CONFIGS = [
    pytest.param(AdapterConfig(), id="serial-both"),
    pytest.param(AdapterConfig(placement="attention", activation="gelu", scaling=2.0), id="serial-attention"),
    pytest.param(ParallelAdapterConfig(), id="parallel-ffn"),
    pytest.param(ParallelAdapterConfig(placement="both", activation="tanh"), id="parallel-both"),
]


def test_specs_are_registrable() -> None:
    assert [s.name for s in SPECS] == ["adapter", "parallel_adapter"]
    assert [s.config_cls for s in SPECS] == [AdapterConfig, ParallelAdapterConfig]
    assert AdapterConfig().scaling == 1.0 and AdapterConfig().placement == "both"
    assert ParallelAdapterConfig().scaling == 4.0 and ParallelAdapterConfig().placement == "ffn"


@pytest.mark.parametrize("cfg", CONFIGS)
def test_identity_at_init(cfg: MethodConfig, batch: dict[str, torch.Tensor]) -> None:
    reference = build_bert().eval()
    model = adapt(build_bert(), cfg).eval()
    assert adapter_modules(model)
    assert all(m.adapter_up.weight.abs().max() == 0 for m in adapter_modules(model).values())
    assert all(m.adapter_down.weight.abs().max() > 0 for m in adapter_modules(model).values())
    assert torch.allclose(logits(model, batch), logits(reference, batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_random_adapters_change_output(cfg: MethodConfig, batch: dict[str, torch.Tensor]) -> None:
    reference = build_bert().eval()
    model = adapt(build_bert(), cfg).eval()
    randomize_adapters(model)
    assert (logits(model, batch) - logits(reference, batch)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "cfg, norms",
    [
        (AdapterConfig(), True),
        (AdapterConfig(train_layer_norm=False), False),
        (ParallelAdapterConfig(), False),
        (ParallelAdapterConfig(placement="both", train_layer_norm=True), True),
    ],
)
def test_gradients_only_reach_adapters_norms_and_head(
    cfg: MethodConfig, norms: bool, batch: dict[str, torch.Tensor]
) -> None:
    model = adapt(build_bert(), cfg)
    randomize_adapters(model)
    model.train()
    model(**batch).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {
        n for n, _ in model.named_parameters()
        if "adapter_" in n
        or n in head_parameter_names(model)
        or (norms and "encoder.layer." in n and ".LayerNorm." in n)
    }
    assert trainable(model) == expected
    assert with_grad == expected
    for name in ("adapter_down.weight", "adapter_up.weight"):
        assert sum(p.grad.abs().sum() for n, p in model.named_parameters() if n.endswith(name)) > 0
    assert any(".LayerNorm." in n for n in expected) is norms
    assert not any("embeddings" in n for n in expected)


@pytest.mark.parametrize(
    "cfg, per_layer",
    [
        # 2 adapters per layer (after attention output and FFN output) + 2 LayerNorms (2h each).
        (AdapterConfig(), 2 * adapter_count(H, H // 16) + 2 * 2 * H),
        (AdapterConfig(train_layer_norm=False), 2 * adapter_count(H, H // 16)),
        (AdapterConfig(placement="ffn", bottleneck=5, train_layer_norm=False), adapter_count(H, 5)),
        (ParallelAdapterConfig(), adapter_count(H, H // 16)),
        (ParallelAdapterConfig(placement="both", reduction_factor=4), 2 * adapter_count(H, H // 4)),
    ],
)
def test_trainable_counts_closed_form(cfg: MethodConfig, per_layer: int) -> None:
    model = adapt(build_bert(), cfg)
    head = sum(p.numel() for n, p in model.named_parameters() if n in head_parameter_names(model))
    assert head == H * TINY_BERT["num_labels"] + TINY_BERT["num_labels"]
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == LAYERS * per_layer + head


@pytest.mark.parametrize(
    "kwargs, expected",
    [({}, H // 16), ({"bottleneck": 5}, 5), ({"reduction_factor": 8}, 4), ({"reduction_factor": 3.0}, 10)],
)
@pytest.mark.parametrize("config_cls", [AdapterConfig, ParallelAdapterConfig])
def test_bottleneck_resolution(config_cls: type[MethodConfig], kwargs: dict, expected: int) -> None:
    model = adapt(build_bert(), config_cls(**kwargs))
    widths = {m.adapter_down.out_features for m in adapter_modules(model).values()}
    assert widths == {expected}
    assert {m.adapter_up.in_features for m in adapter_modules(model).values()} == {expected}


def test_reduction_factor_too_large_is_a_user_error() -> None:
    with pytest.raises(UserError, match="reduction_factor"):
        adapt(build_bert(), AdapterConfig(reduction_factor=64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"placement": "mlp"},
        {"activation": "swish"},
        {"bottleneck": 0},
        {"reduction_factor": 0},
        {"init_std": -1.0},
        {"bottleneck": 4, "reduction_factor": 8},
        {"rank": 4},
    ],
)
@pytest.mark.parametrize("config_cls", [AdapterConfig, ParallelAdapterConfig])
def test_invalid_options(config_cls: type[MethodConfig], kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        config_cls(**kwargs)


class NoSublayers(nn.Module):
    """Has a layer list, but its blocks are plain MLPs with unknown names."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))])


@pytest.mark.parametrize("cfg", [AdapterConfig(), ParallelAdapterConfig()])
def test_unrecognised_model_is_a_user_error(cfg: MethodConfig) -> None:
    with pytest.raises(UserError, match=r"output projection.*submodules are: 0, 1, 2"):
        adapt(NoSublayers(), cfg)
    with pytest.raises(UserError, match="layer list"):
        adapt(nn.Sequential(nn.Linear(4, 4)), cfg)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
@pytest.mark.parametrize("placement, path", [("ffn", "output.dense"), ("attention", "attention.output.dense")])
def test_serial_formula_by_hand(activation: str, placement: str, path: str, batch: dict) -> None:
    scaling = 0.7
    model = adapt(build_bert(), AdapterConfig(placement=placement, activation=activation, scaling=scaling)).eval()
    randomize_adapters(model)
    wrapper = model.bert.encoder.layer[1].get_submodule(path)
    assert isinstance(wrapper, SerialAdapter)
    seen: dict[str, torch.Tensor] = {}
    wrapper.base_layer.register_forward_hook(lambda m, a, out: seen.__setitem__("z", out))
    wrapper.register_forward_hook(lambda m, a, out: seen.__setitem__("y", out))
    logits(model, batch)
    z = seen["z"]
    down, up = wrapper.adapter_down, wrapper.adapter_up
    by_hand = z + scaling * (ACTS[activation](z @ down.weight.T + down.bias) @ up.weight.T + up.bias)
    assert torch.allclose(seen["y"], by_hand, atol=1e-6)
    assert (seen["y"] - z).abs().max() > 1e-3


@pytest.mark.parametrize(
    "placement, path, entry",
    [("ffn", "output.dense", "intermediate"), ("attention", "attention.output.dense", "attention")],
)
def test_parallel_formula_by_hand(placement: str, path: str, entry: str, batch: dict) -> None:
    model = adapt(build_bert(), ParallelAdapterConfig(placement=placement, activation="gelu")).eval()
    randomize_adapters(model)
    block = model.bert.encoder.layer[1]
    wrapper = block.get_submodule(path)
    assert isinstance(wrapper, ParallelAdapter)
    seen: dict[str, torch.Tensor] = {}
    # The sublayer input: hidden states entering `intermediate` (FFN) / `attention` (attention).
    block.get_submodule(entry).register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    wrapper.base_layer.register_forward_hook(lambda m, a, out: seen.__setitem__("fx", out))
    wrapper.register_forward_hook(lambda m, a, out: seen.__setitem__("h", out))
    logits(model, batch)
    x, down, up = seen["x"], wrapper.adapter_down, wrapper.adapter_up
    by_hand = seen["fx"] + 4.0 * (F.gelu(x @ down.weight.T + down.bias) @ up.weight.T + up.bias)
    assert torch.allclose(seen["h"], by_hand, atol=1e-6)
    # Not the serial formula: the adapter reads x, not the projection output.
    z = seen["fx"]
    serial = z + 4.0 * (F.gelu(z @ down.weight.T + down.bias) @ up.weight.T + up.bias)
    assert not torch.allclose(seen["h"], serial, atol=1e-4)


def test_parallel_adapter_survives_deepcopy(batch: dict[str, torch.Tensor]) -> None:
    model = adapt(build_bert(), ParallelAdapterConfig(placement="both")).eval()
    randomize_adapters(model)
    clone = copy.deepcopy(model)
    assert torch.allclose(logits(clone, batch), logits(model, batch), atol=1e-6)
    with torch.no_grad():
        for name, param in clone.named_parameters():
            if "adapter_up" in name:
                param.zero_()
    assert torch.allclose(logits(clone, batch), logits(build_bert().eval(), batch), atol=1e-6)


def test_train_mode_forward_and_backward(batch: dict) -> None:
    """Training-mode forward works and back-propagates (dropout follows the adapter in BERT)."""
    model = adapt(build_bert(), AdapterConfig())
    randomize_adapters(model)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "cfg, wrapped, per_layer",
    [
        (AdapterConfig(), {"self_attn.o_proj", "mlp.down_proj"}, 2 * adapter_count(32, 2) + 2 * 32),
        (ParallelAdapterConfig(), {"mlp.down_proj"}, adapter_count(32, 2)),
    ],
)
def test_llama_blocks(cfg: MethodConfig, wrapped: set[str], per_layer: int) -> None:
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    reference = tiny_llama()
    model = adapt(tiny_llama(), cfg)
    block_prefix = "model.layers.0."
    names = {n.removeprefix(block_prefix) for n in adapter_modules(model) if n.startswith(block_prefix)}
    assert names == wrapped
    with torch.no_grad():
        assert torch.allclose(model(input_ids).logits, reference(input_ids).logits, atol=1e-6)
        randomize_adapters(model)
        assert (model(input_ids).logits - reference(input_ids).logits).abs().max() > 1e-3
    head = sum(p.numel() for n, p in model.named_parameters() if n in head_parameter_names(model))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_layer + head
    # RMSNorm weights (32 each, two per block) are trained only by the serial config here.
    assert any("input_layernorm" in n for n in trainable(model)) is isinstance(cfg, AdapterConfig)
    assert not any(n.startswith("model.norm") for n in trainable(model))
