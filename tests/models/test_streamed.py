"""Loading tensor by tensor (QLoRA quantises each linear as it arrives): the same model, the same
4-bit codes and the same base fingerprint as loading whole and quantising after."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.config import build_config
from tunelab.methods import apply_methods
from tunelab.models.loading import fingerprint
from tunelab.models.streamed import load_streamed
from tunelab.pipeline import build_model
from tunelab.tasks import get_task

QLORA = ["method.name=qlora", "method.target_modules=all-linear", "method.init=random"]


def whole(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def ids(vocab: int) -> torch.Tensor:
    return torch.randint(5, vocab, (2, 9), generator=torch.Generator().manual_seed(0))


def test_without_transforms_the_model_is_from_pretrained(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    ref = whole(tiny_llama_dir)
    model, fp = load_streamed(AutoModelForCausalLM, str(tiny_llama_dir), lambda m: {})
    assert fp == fingerprint(ref)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again after loading
    assert model.config._attn_implementation == ref.config._attn_implementation
    assert model.generation_config.eos_token_id == ref.generation_config.eos_token_id
    assert not model.training
    x = ids(ref.config.vocab_size)
    torch.testing.assert_close(model(input_ids=x).logits, ref(input_ids=x).logits, rtol=0, atol=0)


def test_qlora_streamed_equals_quantised_after_loading(tiny_llama_dir):
    cfg = build_config(None, [f"model.name_or_path={tiny_llama_dir}", "task.name=sft", *QLORA])
    task = get_task(cfg.task)
    streamed, fp = build_model(cfg, task, str(tiny_llama_dir), None)
    ref = whole(tiny_llama_dir)
    ref.tunelab_head_params = []
    ref_fp = fingerprint(ref)
    torch.manual_seed(1)  # both runs draw LoRA's random init from the same state
    apply_methods(ref, cfg.methods())
    assert fp == ref_fp
    a, b = streamed.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    codes = [k for k in a if k.endswith("q_proj.base_layer.weight")]
    assert codes and a[codes[0]].dtype == torch.uint8
    for k in a:
        if "lora_" not in k:
            assert torch.equal(a[k], b[k]), k
    for module in (streamed, ref):
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.data.copy_(dict(ref.named_parameters())[name])
    x = ids(ref.config.vocab_size)
    torch.testing.assert_close(streamed(input_ids=x).logits, ref(input_ids=x).logits, rtol=0, atol=0)


def test_a_checkpoint_it_cannot_map_loads_the_usual_way(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "renamed"
    whole(tiny_llama_dir).save_pretrained(folder)
    index = {"metadata": {}, "weight_map": {"model.extra.weight": "model.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert load_streamed(AutoModelForCausalLM, str(folder), lambda m: {}) is None
    assert load_streamed(AutoModelForCausalLM, str(tmp_path / "missing"), lambda m: {}) is None


@pytest.mark.parametrize("task_name", ["dpo", "ppo"])
def test_preference_and_rl_tasks_stream_too(tiny_llama_dir, task_name):
    extra = ["task.reward=tests.tasks.rl_reward_fns:length"] if task_name == "ppo" else []
    cfg = build_config(None, [f"model.name_or_path={tiny_llama_dir}", f"task.name={task_name}", *QLORA, *extra])
    task = get_task(cfg.task)
    model, _ = task.build_model_streamed(str(tiny_llama_dir), lambda m: {})
    assert hasattr(model, "tunelab_value_head") == (task_name == "ppo")  # PPO's value head, as build_model adds
    assert model.tunelab_head_params == task.build_model(str(tiny_llama_dir)).tunelab_head_params
