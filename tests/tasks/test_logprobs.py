"""Response log-probabilities with the LM head only on response positions (DPO, PPO, GRPO) and SFT
distillation's logits at labelled positions: the same values and gradients as from the full logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.tasks.test_lm_loss import METHODS, assert_same_grads, batch_of, tiny_lm
from tunelab.models.layers import head_inputs
from tunelab.tasks.logprobs import forward_logits, response_token_logps, token_logps
from tunelab.tasks.rl_math import entropy_from_logits


def response_batch(vocab: int) -> dict[str, torch.Tensor]:
    batch = batch_of(vocab)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "response_mask": (batch["labels"] != -100).long()}


def full_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token logps, entropies, hidden states) from the model's full logits, masked as callers use them."""
    with head_inputs(model) as seen:
        logits = forward_logits(model, batch)
    mask = batch["response_mask"][:, 1:].float()
    return token_logps(logits, batch["input_ids"]) * mask, entropy_from_logits(logits[:, :-1]) * mask, seen[0]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("chunk_floats", [1 << 23, 7 * 100])  # one chunk; checkpointed chunks of 7 rows
def test_response_logps_equal_the_full_logits(tiny_llama_dir, method, chunk_floats):
    model = tiny_lm(tiny_llama_dir, method)
    other = copy.deepcopy(model)
    batch = response_batch(model.config.vocab_size)
    model.train()
    other.train()
    weights = torch.randn(3, 11, generator=torch.Generator().manual_seed(2))
    weights = weights / batch["response_mask"].sum()  # a per-token mean of weighted logps, as the losses are
    ref, ref_entropy, ref_hidden = full_logps(model, batch)
    (ref * weights).sum().backward()
    out = response_token_logps(other, batch, hidden=True, entropy=True, chunk_floats=chunk_floats)
    (out.logps * weights).sum().backward()
    torch.testing.assert_close(out.logps, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.entropy, ref_entropy.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.hidden, ref_hidden, rtol=1e-6, atol=1e-6)
    assert not out.entropy.requires_grad
    assert_same_grads(model, other)


def test_soft_capped_models_use_the_full_logits(tiny_llama_dir):
    model = tiny_lm(tiny_llama_dir, "full")
    model.config.final_logit_softcapping = 30.0  # head_slot refuses: the fallback path runs
    batch = response_batch(model.config.vocab_size)
    ref, ref_entropy, ref_hidden = full_logps(model, batch)
    out = response_token_logps(model, batch, hidden=True, entropy=True)
    torch.testing.assert_close(out.logps, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.entropy, ref_entropy, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.hidden, ref_hidden)


def test_dpo_pair_loss_and_gradients_unchanged(tiny_llama_dir):
    """The DPO-family loss (sigmoid + the SFT term) from response-only logits equals the full-logits one."""
    from tunelab.tasks.dpo import pair_outputs
    from tunelab.tasks.dpo_losses import chosen_nll, preference_loss

    model = tiny_lm(tiny_llama_dir, "lora")
    other = copy.deepcopy(model)
    batch = response_batch(model.config.vocab_size)
    batch = {k: torch.cat([v, v.flip(0)]) for k, v in batch.items()}  # 3 chosen, 3 rejected
    batch["ref_logp"] = torch.tensor([-30.0, -20.0, -25.0, -28.0, -21.0, -26.0])
    cfg = type("Cfg", (), {"loss": "sigmoid", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5,
                           "sft_weight": 0.3})()
    per_token = token_logps(forward_logits(model, batch), batch["input_ids"])
    mask = batch["response_mask"][:, 1:].float()
    logps, counts = (per_token * mask).sum(-1), mask.sum(-1)
    losses, _, _ = preference_loss("sigmoid", 0.1, logps[:3], logps[3:], counts[:3], counts[3:],
                                   batch["ref_logp"][:3], batch["ref_logp"][3:], label_smoothing=0.0, simpo_gamma=0.5)
    ref = losses.mean() + 0.3 * chosen_nll(per_token[:3], mask[:3])
    ref.backward()
    ours = pair_outputs(other, batch, cfg, None)["loss"]
    ours.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert_same_grads(model, other)


def test_sft_distillation_logits_at_labelled_positions(tiny_llama_dir):
    from tunelab.tasks.sft import SFTTask

    model = tiny_lm(tiny_llama_dir, "lora")
    batch = batch_of(model.config.vocab_size)
    with head_inputs(model) as seen:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"][:, 1:] != -100
    picked, loss, hidden = SFTTask.distill_outputs(None, model, batch, True)
    torch.testing.assert_close(picked, logits[:, :-1][keep], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden, seen[0][:, :-1][keep])
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:, :-1][keep], batch["labels"][:, 1:][keep]).item(),
                                        rel=1e-6)
