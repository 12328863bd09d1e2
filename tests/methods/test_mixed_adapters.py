"""Mixed-adapter batches (``AdapterSet.mixed``): each row of one batch through its own adapter gives
what a batch of that adapter alone gives, for logits and for generation with the KV cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import perturb_trainable
from tunelab.adapters import AdapterSet
from tunelab.errors import UserError
from tunelab.methods import apply_methods
from tunelab.methods.adapter import AdapterConfig, ParallelAdapterConfig
from tunelab.methods.bitfit import BitFitConfig
from tunelab.methods.ia3 import IA3Config
from tunelab.methods.lora import LoRAConfig
from tunelab.train.checkpoint import trainable_state

MIXABLE = {
    "lora": [LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])],
    "dora": [LoRAConfig(r=2, target_modules=["o_proj", "down_proj"], use_dora=True)],
    "ia3": [IA3Config()],
    "rslora": [LoRAConfig(r=2, alpha=4, use_rslora=True, target_modules=["gate_proj", "up_proj"])],
}


def tiny_llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                      attention_bias=True)  # biases for BitFit
    model = LlamaForCausalLM(cfg).eval()
    model.tunelab_head_params = []
    return model


def trained(methods, seed: int) -> dict[str, torch.Tensor]:
    """Random 'trained' values of ``methods`` on the tiny base, as a run's weights."""
    model = tiny_llama()
    apply_methods(model, methods)
    return trainable_state(perturb_trainable(model, seed, 0.3))


@pytest.fixture(scope="module")
def adapters() -> AdapterSet:
    s = AdapterSet(tiny_llama())
    for seed, (name, methods) in enumerate(MIXABLE.items(), start=1):
        s.add(name, methods, weights=trained(methods, seed))
    s.add("parallel", [ParallelAdapterConfig(bottleneck=4)], weights=trained([ParallelAdapterConfig(bottleneck=4)], 9))
    s.add("bitfit", [BitFitConfig()], weights=None)
    s.add("serial", [AdapterConfig(bottleneck=4)], weights=trained([AdapterConfig(bottleneck=4)], 10))
    return s


def test_each_row_of_a_mixed_batch_equals_its_adapter_alone(adapters) -> None:
    ids = torch.randint(3, 96, (5, 7), generator=torch.Generator().manual_seed(0))
    rows = ["lora", "ia3", None, "dora", "rslora"]
    with adapters.mixed(rows) as model, torch.no_grad():
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(rows):
        with (adapters.active(name) if name else adapters.disable()), torch.no_grad():
            alone = adapters.model(input_ids=ids[i:i + 1]).logits[0]
        assert torch.allclose(mixed[i], alone, atol=1e-5), name
    assert adapters.active_name is None or adapters.active_name in adapters.names  # the set is back as it was
    assert not any(type(m).__name__ == "RowRouter" for m in adapters.model.modules())


def test_mixed_generation_with_the_kv_cache_equals_each_adapter_alone(adapters) -> None:
    ids = torch.randint(3, 96, (3, 5), generator=torch.Generator().manual_seed(1))
    rows = ["lora", "rslora", "ia3"]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with adapters.mixed(rows) as model, torch.no_grad():
        together = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    for i, name in enumerate(rows):
        with adapters.active(name), torch.no_grad():
            alone = adapters.model.generate(input_ids=ids[i:i + 1], attention_mask=torch.ones_like(ids[i:i + 1]),
                                            **kwargs)
        assert together[i].tolist() == alone[0].tolist(), name


@pytest.mark.parametrize("rows, fragment", [
    (["lora", "parallel"], "acts through forward hooks"),
    (["lora", "bitfit"], "trains base tensors in place"),
    (["ia3", "serial"], "trains base tensors in place"),  # its LayerNorms
])
def test_adapters_that_cannot_mix_are_refused(adapters, rows, fragment) -> None:
    assert fragment in adapters.why_not_mixable(rows)
    with pytest.raises(UserError, match=fragment):
        with adapters.mixed(rows):
            pass
    assert adapters.why_not_mixable(["lora", "ia3", None]) is None
