"""QLoRA: 4-bit storage, quantisation-only difference from fp32, fidelity against transformers +
peft's QLoRA, gradients, export, reload, and input errors.

The peft oracle is independent of our quantisation code: transformers loads the saved tiny model
with ``BitsAndBytesConfig(load_in_4bit=True, ...)`` (it works on the CPU with bitsandbytes 0.50),
peft wraps its ``Linear4bit`` layers with ``peft.tuners.lora.bnb.Linear4bit``, and both models get
the same LoRA weights. On CPUs with AVX512-bf16, bitsandbytes would run the eval-mode forward of
those layers in bfloat16 through a repacked weight; tunelab switches that path off
(``support_avx512bf16_for_cpu=False``), so the oracle's layers get the same flag.
"""

from __future__ import annotations

import gc
import json
import weakref

import bitsandbytes as bnb
import peft
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, quantize_4bit
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from tests.conftest import tiny_overrides
from tunelab.cli import main
from tunelab.config import validate_config
from tunelab.errors import UserError
from tunelab.methods import apply_methods, count_parameters
from tunelab.methods.lora import LoRAConfig, LoRALinear, dense_weight, lora_modules, merge_lora, unwrap_lora
from tunelab.methods.qlora import (
    QLoRAConfig,
    quantize_linear,
    quantized_bytes,
    quantized_linears,
    unwrap_qlora,
)
from tunelab.models.layers import head_parameter_names
from tunelab.train.checkpoint import load_trainable, trainable_state

PEFT_PREFIX = "base_model.model."
BERT = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            num_labels=3)
LLAMA = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
H, I, L = BERT["hidden_size"], BERT["intermediate_size"], BERT["num_hidden_layers"]
IDS = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(1))


def bert(seed: int = 0, **overrides: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**{**BERT, **overrides}))


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LLAMA))


def logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def hidden_relative_error(model: nn.Module, reference: nn.Module) -> float:
    """||h - h_ref|| / ||h_ref|| of the last hidden states (random heads make logits too small to judge)."""
    with torch.no_grad():
        h, ref = (m(input_ids=IDS, output_hidden_states=True).hidden_states[-1] for m in (model, reference))
    return ((h - ref).norm() / ref.norm()).item()


def qlora(model: nn.Module, **kwargs) -> nn.Module:
    apply_methods(model, [QLoRAConfig(**kwargs)])
    return model


def randomize_lora(model: nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


# --- storage ------------------------------------------------------------------------------------


def test_weights_are_stored_in_4_bits_and_fp32_is_freed() -> None:
    model = bert(hidden_size=128, intermediate_size=256)
    query = weakref.ref(model.bert.encoder.layer[0].attention.self.query.weight)
    shapes = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "classifier"}
    qlora(model)
    gc.collect()
    assert query() is None  # nothing keeps the fp32 weight alive
    layers = quantized_linears(model)
    assert set(layers) == {f"{n}.base_layer" for n in shapes}
    packed = fp32 = 0
    for name, layer in layers.items():
        out_features, in_features = shapes[name.removesuffix(".base_layer")]
        assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == out_features * in_features // 2
        assert layer.bias.dtype == torch.float32 and not layer.bias.requires_grad
        state = layer.weight.quant_state
        by_hand = sum(t.numel() * t.element_size() for t in (
            layer.weight.data, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code))
        assert quantized_bytes(layer) == by_hand
        assert state.absmax.dtype == torch.uint8  # double quantisation: absmax in 8 bits
        packed += by_hand
        fp32 += out_features * in_features * 4
    assert packed <= 0.2 * fp32
    assert isinstance(model.classifier, nn.Linear) and model.classifier.weight.dtype == torch.float32


# --- numerics -----------------------------------------------------------------------------------


def quantisation_roundtrip(model: nn.Module, **kwargs) -> nn.Module:
    """Replace every non-head linear weight W by dequantise(quantise(W)) (bitsandbytes directly)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name not in ("classifier", "lm_head"):
                codes, state = quantize_4bit(module.weight.data, **kwargs)
                module.weight.copy_(dequantize_4bit(codes, state))
    return model


@pytest.mark.parametrize(
    ("quant_type", "double_quant", "blocksize"), [("nf4", True, 64), ("fp4", False, 128), ("nf4", False, 32)]
)
def test_at_init_only_quantisation_differs_from_fp32(quant_type, double_quant, blocksize) -> None:
    fp32 = bert().eval()
    rounded = quantisation_roundtrip(bert(), blocksize=blocksize, compress_statistics=double_quant,
                                     quant_type=quant_type).eval()
    ours = qlora(bert(), quant_type=quant_type, double_quant=double_quant, blocksize=blocksize).eval()
    assert max_diff(logits(ours), logits(rounded)) <= 1e-6
    assert 1e-4 < hidden_relative_error(ours, fp32) < 0.02


def test_causal_lm_at_init_only_quantisation_differs() -> None:
    fp32, rounded = llama().eval(), quantisation_roundtrip(llama(), blocksize=64, compress_statistics=True,
                                                           quant_type="nf4").eval()
    ours = qlora(llama()).eval()
    assert "lm_head" not in " ".join(quantized_linears(ours)) and isinstance(ours.lm_head, nn.Linear)
    assert max_diff(logits(ours), logits(rounded)) <= 1e-5
    # In a random tiny Llama every block writes as much into the residual stream as the embedding,
    # so the ~9% RMS weight error of NF4 (test below) reaches the output almost unattenuated.
    assert 1e-4 < hidden_relative_error(ours, fp32) < 0.15


def test_nf4_is_closer_than_fp4_on_normal_weights() -> None:
    """QLoRA sec. 3: NF4 suits normally distributed weights better than FP4 (about 9% vs 12% RMS error)."""
    torch.manual_seed(0)
    linear = nn.Linear(256, 256)
    nn.init.normal_(linear.weight, std=0.02)
    errors = {}
    for quant_type in ("nf4", "fp4"):
        layer = quantize_linear(linear, quant_type=quant_type, double_quant=True, blocksize=64,
                                compute_dtype=torch.float32)
        errors[quant_type] = ((dense_weight(layer) - linear.weight).norm() / linear.weight.norm()).item()
    assert 0.05 < errors["nf4"] < 0.1 < errors["fp4"] < 0.15


def transformers_4bit(model: nn.Module, tmp_path, **bnb_kwargs) -> nn.Module:
    """Save ``model``, load it back 4-bit through transformers' BitsAndBytesConfig (the oracle)."""
    model.save_pretrained(tmp_path)
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["classifier", "lm_head"], **bnb_kwargs,
    )
    loaded = type(model).from_pretrained(tmp_path, quantization_config=config, device_map="cpu")
    for module in loaded.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # see the module docstring
    return loaded


def copy_from_peft(ours: nn.Module, theirs: nn.Module) -> None:
    params = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                key = name.removeprefix(PEFT_PREFIX).replace("lora_magnitude_vector.default.weight", "lora_magnitude")
                params[key.replace(".default", "")].copy_(param)
                copied += 1
    assert copied == sum(1 for n in params if "lora_" in n) > 0


@pytest.mark.parametrize(("targets", "use_dora"), [(["query", "value"], False), (["query", "value", "dense"], True)])
def test_bert_matches_transformers_bnb_plus_peft(tmp_path, targets, use_dora) -> None:
    theirs = peft.get_peft_model(transformers_4bit(bert(seed=7), tmp_path), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, use_dora=use_dora,
    ))
    ours = qlora(bert(seed=7), r=4, alpha=8, target_modules=targets, use_dora=use_dora)
    wrapped = {n.removeprefix(PEFT_PREFIX) for n, m in theirs.named_modules()
               if isinstance(m, peft.tuners.lora.bnb.Linear4bit)}
    assert wrapped == set(lora_modules(ours))
    for name in wrapped:  # same 4-bit codes from an independent quantisation path
        mine = ours.get_submodule(name).base_layer.weight
        assert torch.equal(mine.data, theirs.get_submodule(PEFT_PREFIX + name).base_layer.weight.data)
    if use_dora:  # magnitudes start at the row norms of the dequantised weight in both
        for name, param in theirs.named_parameters():
            if "lora_magnitude_vector" in name:
                key = name.removeprefix(PEFT_PREFIX).replace("lora_magnitude_vector.default.weight", "lora_magnitude")
                assert torch.allclose(dict(ours.named_parameters())[key], param, atol=1e-6)
    peft_random = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in sorted(theirs.named_parameters()):
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.rand(param.shape, generator=peft_random))
            elif "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=peft_random) * 0.2)
    copy_from_peft(ours, theirs)
    ours.eval(), theirs.eval()
    assert max_diff(logits(ours), logits(theirs)) <= 1e-5
    assert max_diff(logits(ours), logits(bert(seed=7).eval())) > 1e-3


def test_llama_matches_transformers_bnb_plus_peft(tmp_path) -> None:
    targets = ["q_proj", "v_proj", "down_proj"]
    theirs = peft.get_peft_model(transformers_4bit(llama(seed=5), tmp_path), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False,
    ))
    ours = qlora(llama(seed=5), r=4, alpha=8, target_modules=targets)
    assert len(quantized_linears(ours)) == L * 7  # q, k, v, o, gate, up, down; lm_head stays fp32
    copy_from_peft(ours, theirs)
    ours.eval(), theirs.eval()
    assert max_diff(logits(ours), logits(theirs)) <= 1e-5


def test_bfloat16_compute_runs_close_to_float32() -> None:
    fp32_compute = qlora(bert()).eval()
    bf16_compute = qlora(bert(), compute_dtype="bfloat16").eval()
    layer = next(iter(quantized_linears(bf16_compute).values()))
    assert layer.compute_dtype == torch.bfloat16
    assert logits(bf16_compute).dtype == torch.float32
    assert 0 < hidden_relative_error(bf16_compute, fp32_compute) < 0.02


# --- training -----------------------------------------------------------------------------------


def test_trainable_count_is_closed_form() -> None:
    model = qlora(bert(), r=4)
    # per layer: q, k, v, attn-out (H->H), FFN in (H->I), FFN out (I->H); the pooler (H->H); the head
    lora = 4 * (L * 4 * (H + H) + L * (H + I) + L * (I + H) + (H + H))
    head = H * BERT["num_labels"] + BERT["num_labels"]
    assert count_parameters(model)["trainable"] == lora + head
    plain = bert()
    apply_methods(plain, [LoRAConfig(r=4)])
    assert count_parameters(plain)["trainable"] == lora + head
    # 4-bit weights count by their real shape, not their packed bytes: same total as fp32 LoRA
    assert count_parameters(model)["total"] == count_parameters(plain)["total"]


def test_gradients_and_one_step_touch_only_lora_and_head() -> None:
    model = qlora(bert(), r=4, dropout=0.1).train()
    head = set(head_parameter_names(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    codes = {n: m.weight.data.clone() for n, m in quantized_linears(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=IDS, labels=torch.tensor([0, 2, 1])).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == ("lora_" in name or name in head), name
    # layer 0 learns only if the gradient passed back through the 4-bit layers of layer 1
    assert model.bert.encoder.layer[0].attention.self.query.lora_B.weight.grad.abs().sum() > 0
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == ("lora_" in name or name in head), name
    assert all(torch.equal(m.weight.data, codes[n]) for n, m in quantized_linears(model).items())


def test_adapter_reload_gives_identical_logits() -> None:
    trained = qlora(bert(), r=4)
    randomize_lora(trained)
    saved = trainable_state(trained)
    assert all("lora_" in k or k.startswith("classifier.") for k in saved)
    reloaded = qlora(bert(), r=4)  # same base, quantised again
    load_trainable(reloaded, saved)
    assert torch.equal(logits(trained.eval()), logits(reloaded.eval()))


# --- merge and export ---------------------------------------------------------------------------


def test_merge_into_4_bits_is_refused() -> None:
    model = qlora(bert(), target_modules=["query"])
    with pytest.raises(UserError, match="unwrap_qlora") as info:
        merge_lora(model)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError):
        unwrap_lora(model)
    assert not any(m.merged for m in lora_modules(model).values())


@pytest.mark.parametrize("use_dora", [False, True])
def test_unwrap_qlora_exports_an_equivalent_fp32_model(use_dora) -> None:
    model = qlora(bert(), r=4, target_modules=["query", "value", "intermediate.dense"], use_dora=use_dora)
    randomize_lora(model)
    model.eval()
    adapted = logits(model)
    query = model.bert.encoder.layer[0].attention.self.query
    expected_query = dequantize_4bit(query.base_layer.weight.data, query.base_layer.weight.quant_state)
    if not use_dora:
        expected_query = expected_query + query.delta_weight()
    unwrap_qlora(model)
    assert set(model.state_dict()) == set(bert().state_dict())
    assert not quantized_linears(model) and not lora_modules(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert max_diff(logits(model), adapted) <= 1e-5
    if not use_dora:
        assert max_diff(model.bert.encoder.layer[0].attention.self.query.weight, expected_query) <= 1e-6


def test_dora_over_4_bits_uses_the_dequantised_weight() -> None:
    model = qlora(bert(), target_modules=["query"], use_dora=True)
    module = model.bert.encoder.layer[0].attention.self.query
    dense = dequantize_4bit(module.base_layer.weight.data, module.base_layer.weight.quant_state)
    assert isinstance(module, LoRALinear) and torch.allclose(module.lora_magnitude, dense.norm(dim=1))
    assert module.lora_magnitude.dtype == torch.float32


# --- end to end ---------------------------------------------------------------------------------


def test_cli_run_is_adapter_only_and_reloads(tiny_bert_dir, reviews_jsonl, tmp_path, capsys) -> None:
    overrides = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{
        "method.name": "qlora", "method.r": 4, "method.target_modules": "[query,value]", "train.epochs": 1,
    })
    assert main(["train", *overrides]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == ["qlora"]
    weights = load_file(str(run / "model/weights.safetensors"))
    assert all("lora_" in k or k.startswith("classifier.") for k in weights)  # adapter-only
    # LoRA r=4 on query+value of 2 layers (hidden 32) + classifier (32 * 2 + 2)
    assert results["params"]["trainable"] == 2 * 2 * (4 * 32 * 2) + 66
    assert sum(t.numel() for t in weights.values()) == results["params"]["trainable"]
    assert (run / "model/weights.safetensors").stat().st_size < 50_000
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert metrics["confusion_matrix"] == results["test"]["confusion_matrix"]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"compute_dtype": "float8"}, "compute_dtype"), ({"blocksize": 100}, "blocksize must be one of"),
     ({"blocksize": 16}, "blocksize"), ({"quant_type": "int4"}, "quant_type"),
     ({"quantize_modules": []}, "quantize_modules must name"), ({"quantize_modules": ["re:("]}, "regular expression")],
)
def test_config_rejects(kwargs, match) -> None:
    with pytest.raises(ValidationError, match=match):
        QLoRAConfig(**kwargs)


def test_config_errors_are_one_line_user_errors() -> None:
    with pytest.raises(UserError, match=r"method\.compute_dtype") as info:
        validate_config({"method": {"name": "qlora", "compute_dtype": "fp8"}})
    assert "\n" not in str(info.value) and "'float32'" in str(info.value)
    with pytest.raises(UserError, match=r"method\.blocksize.*got 100"):
        validate_config({"method": {"name": "qlora", "blocksize": 100}})


def test_config_fields_are_documented_and_default_to_the_paper() -> None:
    cfg = QLoRAConfig()
    assert (cfg.quant_type, cfg.double_quant, cfg.blocksize, cfg.quantize_modules) == ("nf4", True, 64, "all-linear")
    assert cfg.target_modules == "all-linear" and cfg.compute_dtype == "float32"
    assert all(field.description for field in QLoRAConfig.model_fields.values())


def test_quantising_a_non_linear_module_is_a_user_error() -> None:
    model = bert()
    with pytest.raises(UserError, match=r"word_embeddings' \(Embedding\) is not a Linear layer") as info:
        qlora(model, quantize_modules=["word_embeddings", "query"])
    assert "\n" not in str(info.value)
    assert not quantized_linears(model) and not lora_modules(model)  # nothing changed


def test_selections_matching_nothing_are_user_errors() -> None:
    model = bert()
    with pytest.raises(UserError, match="quantize_modules .* match no Linear.*query"):
        qlora(model, quantize_modules=["classifier"])  # the head is never quantised
    with pytest.raises(UserError, match="qlora.target_modules .* match no"):
        qlora(model, target_modules=["querry"])
    assert not quantized_linears(model)  # checked before quantising


def test_quantize_subset_keeps_other_linears_fp32() -> None:
    model = qlora(bert(), quantize_modules=["query", "key"], target_modules=["query", "value"])
    layer = model.bert.encoder.layer[0]
    assert set(quantized_linears(model)) == {
        f"bert.encoder.layer.{i}.attention.self.{n}" for i in range(L) for n in ("query.base_layer", "key")
    }
    assert layer.attention.self.value.base_layer.weight.dtype == torch.float32
