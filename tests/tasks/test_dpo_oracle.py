"""The DPO family against TRL (the oracle): on the same tiny model, batch and beta, our loss,
implicit rewards and gradients equal TRL's DPOTrainer (sigmoid, hinge, ipo, robust), CPO's SimPO
loss and ORPO's odds-ratio loss, to 1e-5."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from tunelab.data.preference_tokens import PairCollator, encode_pair, render_response
from tunelab.data.templates import Template
from tunelab.tasks.dpo import DPOTaskConfig, pair_outputs
from tunelab.tasks.logprobs import forward_logits, token_logps
from tunelab.train.reference import Reference

pytest.importorskip("trl")

PAIRS = [
    ("Write a short positive review of the movie Alien.", "A tense, beautiful machine of a film.", "Dull."),
    ("Write a short positive review of the movie Heat.", "Mann at his best: sharp and humane.",
     "Overlong and shapeless, with a script that never finds its point."),
    ("Say something nice.", "You did well today, and it shows.", "No."),
]


@pytest.fixture(scope="module")
def models_and_batch(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    reference = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():  # the policy has moved away from the reference, so every log-ratio is non-zero
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    template = Template.resolve("chat", tok)
    rows = []
    for prompt, chosen, rejected in PAIRS:
        messages = [{"role": "user", "content": prompt}]
        prompt_text, c = render_response(template, tok, messages, chosen)
        _, r = render_response(template, tok, messages, rejected)
        rows.append(encode_pair(prompt_text, c, r, tok, template, 64))
    batch = PairCollator(tok.pad_token_id)(rows)
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: pad is the end-of-turn token we score
    return tok, policy, reference, batch


def _trl_dpo(tok, policy, reference, loss_type: str, beta: float, smoothing: float, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, beta=beta, loss_type=[loss_type],
                     label_smoothing=smoothing, report_to=[], use_cpu=True, max_length=64,
                     bf16=False)  # TRL defaults to bf16 autocast, which would round its reference pass
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tok)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss,smoothing", [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.2)])
def test_reference_losses_equal_trl_dpo_trainer(models_and_batch, loss, smoothing, tmp_path) -> None:
    tok, policy, reference, batch = models_and_batch
    beta = 0.1  # the default; TRL sums log-probabilities in fp32 too, so the sums (about -300) agree to ~1e-6 relative
    ours_policy = copy.deepcopy(policy).train()
    cfg = DPOTaskConfig(loss=loss, beta=beta, label_smoothing=smoothing)
    out = pair_outputs(ours_policy, batch, cfg, Reference(ours_policy, frozen=copy.deepcopy(reference)))
    out["loss"].backward()

    trainer = _trl_dpo(tok, copy.deepcopy(policy).train(), copy.deepcopy(reference), loss, beta, smoothing, tmp_path)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": batch["response_mask"]}
    trl_loss = trainer._compute_loss(trainer.model, inputs, False)
    trl_loss.backward()
    logged = trainer._metrics["train"]

    assert abs(out["loss"].item() - trl_loss.item()) <= 1e-5
    assert out["loss"].item() > 0
    assert abs(out["chosen_reward"].mean().item() - logged["rewards/chosen"][-1]) <= 1e-5
    assert abs(out["rejected_reward"].mean().item() - logged["rewards/rejected"][-1]) <= 1e-5
    assert abs(out["logp_chosen"].mean().item() / logged["logps/chosen"][-1] - 1) <= 1e-6
    ours, theirs = _grads(ours_policy), _grads(trainer.model)
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5, rtol=0), name


def _logps(model, batch):
    per_token = token_logps(forward_logits(model, batch), batch["input_ids"])
    mask = batch["response_mask"][:, 1:].float()
    return per_token, mask


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_equals_trl_cpo_loss(models_and_batch, smoothing) -> None:
    from trl.experimental.cpo import CPOTrainer

    _, policy, _, batch = models_and_batch
    beta, gamma = 2.0, 0.5
    model = copy.deepcopy(policy).train()
    out = pair_outputs(model, batch, DPOTaskConfig(loss="simpo", beta=beta, simpo_gamma=gamma,
                                                   label_smoothing=smoothing), None)
    out["loss"].backward()
    ours = _grads(model)

    model.zero_grad()
    per_token, mask = _logps(model, batch)
    avg = (per_token * mask).sum(-1) / mask.sum(-1)  # CPO scores SimPO with average log-probabilities
    n = avg.shape[0] // 2
    fake = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=smoothing,
                           accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen, rejected = CPOTrainer.cpo_loss(fake, avg[:n], avg[n:])
    losses.mean().backward()  # SimPO: cpo_alpha = 0, no NLL term
    assert abs(out["loss"].item() - losses.mean().item()) <= 1e-5
    assert torch.allclose(out["chosen_reward"], chosen, atol=1e-5)
    assert torch.allclose(out["rejected_reward"], rejected, atol=1e-5)
    for name, grad in _grads(model).items():
        assert torch.allclose(ours[name], grad, atol=1e-5, rtol=0), name


def test_orpo_equals_trl_orpo_loss(models_and_batch) -> None:
    from trl.experimental.orpo import ORPOTrainer

    _, policy, _, batch = models_and_batch
    beta = 0.25
    model = copy.deepcopy(policy).train()
    out = pair_outputs(model, batch, DPOTaskConfig(loss="orpo", beta=beta), None)
    out["loss"].backward()
    ours = _grads(model)

    model.zero_grad()
    logits = forward_logits(model, batch)
    per_token = token_logps(logits, batch["input_ids"])
    mask = batch["response_mask"][:, 1:].float()
    avg = (per_token * mask).sum(-1) / mask.sum(-1)
    n = avg.shape[0] // 2
    fake = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(fake, avg[:n], avg[n:])
    labels = batch["input_ids"][:n].masked_fill(batch["response_mask"][:n] == 0, -100)
    nll = F.cross_entropy(logits[:n, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    trl_loss = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics
    trl_loss.backward()
    assert abs(out["loss"].item() - trl_loss.item()) <= 1e-5
    assert torch.allclose(out["chosen_reward"], chosen, atol=1e-5)
    for name, grad in _grads(model).items():
        assert torch.allclose(ours[name], grad, atol=1e-5, rtol=0), name

