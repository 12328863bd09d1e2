"""The LM head at labelled positions only, in chunks: the same loss and gradients as the model's own
``model(**batch).loss``, for full fine-tuning (the tied head trains), LoRA, DoRA, IA3, prompt tuning and
packed rows."""

from __future__ import annotations

import copy

import pytest
import torch

from tunelab.config import build_config
from tunelab.methods import apply_methods
from tunelab.tasks.lm_loss import LabelledLogitsStep, chunked_cross_entropy, head_slot
from tunelab.train.step import SupervisedStep

METHODS = {"full": [], "lora": [], "dora": ["method.use_dora=true"], "prompt_tuning": ["method.num_virtual_tokens=3"],
           "ia3": []}


def tiny_lm(model_dir, method: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    name = "lora" if method == "dora" else method
    overrides = [f"method.name={name}", *METHODS[method]]
    if name == "lora":
        overrides.append("method.init=random")  # B != 0, so the adapter changes the logits
    apply_methods(model, build_config(None, overrides).methods())
    return model


def batch_of(vocab: int, packed: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if packed:  # two sequences in one row, positions restart
        out = {"input_ids": ids[:1], "labels": labels[:1],
               "position_ids": torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])}
    return out


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def assert_same_grads(model, other) -> None:
    """Both models have gradients on the same (non-empty) set of parameters, equal to 1e-5."""
    a, b = grads(model), grads(other)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("chunk_floats", [1 << 23, 7 * 100])  # one chunk; chunks of a few rows (checkpointed)
def test_same_loss_and_gradients_as_the_models_own(tiny_llama_dir, method, chunk_floats):
    model = tiny_lm(tiny_llama_dir, method)
    other = copy.deepcopy(model)
    batch = batch_of(model.config.vocab_size)
    model.train()
    other.train()
    ref = SupervisedStep("input_ids", "attention_mask").loss(model, dict(batch))
    ref.backward()
    ours = LabelledLogitsStep(chunk_floats=chunk_floats).loss(other, dict(batch))
    ours.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-7)
    assert_same_grads(model, other)


def test_packed_rows(tiny_llama_dir):
    model = tiny_lm(tiny_llama_dir, "lora")
    batch = batch_of(model.config.vocab_size, packed=True)
    ref = SupervisedStep("input_ids").loss(model, dict(batch))
    ours = LabelledLogitsStep(chunk_floats=300).loss(model, dict(batch))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_head_is_restored_and_no_label_gives_zero(tiny_llama_dir):
    model = tiny_lm(tiny_llama_dir, "full")
    head = model.get_output_embeddings()
    batch = batch_of(model.config.vocab_size)
    batch["labels"][:] = -100
    loss = LabelledLogitsStep().loss(model, batch)
    assert loss.item() == 0.0 and loss.requires_grad
    assert model.get_output_embeddings() is head
    h = torch.randn(5, 4, requires_grad=True)
    lin = torch.nn.Linear(4, 9)
    t = torch.tensor([0, 3, 8, 2, 1])
    whole = torch.nn.functional.cross_entropy(lin(h), t)
    assert chunked_cross_entropy(lin, h, t, 9, chunk_floats=18).item() == pytest.approx(whole.item(), rel=1e-6)


def test_soft_capped_models_keep_the_default_step(tiny_llama_dir):
    model = tiny_lm(tiny_llama_dir, "full")
    assert head_slot(model) is not None
    model.config.final_logit_softcapping = 30.0
    assert head_slot(model) is None
