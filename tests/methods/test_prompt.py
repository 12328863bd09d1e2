"""Prompt tuning, prefix tuning and P-tuning v2: peft as the oracle (same weights -> same logits and
greedy generations), closed-form parameter counts, finalize, initialisation, errors, end to end."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from tests.conftest import tiny_overrides
from tunelab.cli import main
from tunelab.config import validate_config
from tunelab.errors import UserError
from tunelab.methods import METHODS, apply_methods, count_parameters
from tunelab.methods.base import MethodConfig
from tunelab.methods.lora import LoRAConfig
from tunelab.methods.prefix import KeyValuePrefix, PrefixTuningConfig, PTuningV2Config
from tunelab.methods.prompt import PromptEmbedding, PromptTuningConfig, prompt_modules
from tunelab.train.checkpoint import WEIGHTS, finalize, load_trainable, trainable_state

from .conftest import TINY_BERT, build_bert

peft = pytest.importorskip("peft")

H, LAYERS, C = TINY_BERT["hidden_size"], TINY_BERT["num_hidden_layers"], TINY_BERT["num_labels"]
HEAD = H * C + C
N = 4  # virtual tokens
P = 16  # prefix MLP width
LLAMA = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
KV = LLAMA["hidden_size"] // LLAMA["num_attention_heads"] * LLAMA["num_key_value_heads"]  # GQA key width: 16


def configs(n: int = N) -> dict[str, MethodConfig]:
    return {
        "prompt_tuning": PromptTuningConfig(num_virtual_tokens=n, init="random"),
        "prefix_tuning": PrefixTuningConfig(num_virtual_tokens=n, projection_size=P),
        "ptuning_v2": PTuningV2Config(num_virtual_tokens=n),
    }


METHOD_NAMES = list(configs())


def peft_config(method: str, task: str, n: int = N):
    task_type = getattr(peft.TaskType, task)
    if method == "prompt_tuning":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=n)
    return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=n, encoder_hidden_size=P,
                                   prefix_projection=method == "prefix_tuning")


def copy_to_peft(ours: nn.Module, ref: nn.Module, method: str) -> None:
    """Our trained weights into peft's prompt encoder (and head): the two models become identical."""
    enc = ref.prompt_encoder["default"]
    module = getattr(ours, method)
    with torch.no_grad():
        if method == "prompt_tuning":
            enc.embedding.weight.copy_(module.prompt_embeddings)
        elif method == "ptuning_v2":
            enc.embedding.weight.copy_(module.prefix_table)
        else:
            enc.embedding.weight.copy_(module.prefix_latent)
            for i in (0, 2):
                enc.transform[i].weight.copy_(module.prefix_mlp[i].weight)
                enc.transform[i].bias.copy_(module.prefix_mlp[i].bias)


def randomize_head(model: nn.Module, seed: int = 5) -> None:
    """A distinct classifier so that peft's copy of the head must follow ours too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def bert_pair(method: str, seed: int = 0):
    """(ours, peft) tiny BERT classifiers with identical weights, in eval mode."""
    ours = build_bert(seed)
    apply_methods(ours, [configs()[method]])
    randomize_head(ours)
    base = build_bert(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(base, peft_config(method, "SEQ_CLS"))
    copy_to_peft(ours, ref, method)
    with torch.no_grad():
        ref.base_model.classifier.modules_to_save["default"].load_state_dict(ours.classifier.state_dict())
    return ours.eval(), ref.eval()


def build_llama(seed: int = 0, cls=LlamaForCausalLM, **extra) -> nn.Module:
    torch.manual_seed(seed)
    return cls(LlamaConfig(**{**LLAMA, **extra})).eval()


def llama_pair(method: str, seed: int = 0):
    ours = build_llama(seed)
    apply_methods(ours, [configs()[method]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(build_llama(seed), peft_config(method, "CAUSAL_LM"))
    copy_to_peft(ours, ref, method)
    return ours.eval(), ref.eval()


def llama_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, 100, (3, 6), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0  # right padding, as the training collator pads
    input_ids[1, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def logits(model: nn.Module, **inputs) -> torch.Tensor:
    return model(**inputs).logits


# --------------------------------------------------------------------------- peft oracle: BERT


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bert_classifier_logits_match_peft(method, batch) -> None:
    ours, ref = bert_pair(method)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    got, want = logits(ours, **inputs), logits(ref, **inputs)
    assert got.shape == (3, C)
    assert (got - want).abs().max().item() <= 1e-5
    # the virtual tokens do change the model (the comparison is not vacuous)
    plain = build_bert(0)
    plain.classifier.load_state_dict(ours.classifier.state_dict())
    assert (got - logits(plain.eval(), **inputs)).abs().max().item() > 1e-3


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bert_token_type_ids_and_batch_of_one_match_peft(method, batch) -> None:
    ours, ref = bert_pair(method, seed=3)
    types = torch.zeros_like(batch["input_ids"])
    types[:, 3:] = 1
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "token_type_ids": types}
    assert (logits(ours, **inputs) - logits(ref, **inputs)).abs().max().item() <= 1e-5
    one = {k: v[1:2, :4] for k, v in inputs.items()}  # the padded row alone, without its padding
    assert (logits(ours, **one) - logits(ref, **one)).abs().max().item() <= 1e-5
    assert (logits(ours, **one) - logits(ours, **inputs)[1:2]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_positional_call_and_missing_mask(method, batch) -> None:
    ours, ref = bert_pair(method, seed=4)
    ids = batch["input_ids"]
    full = logits(ours, input_ids=ids, attention_mask=torch.ones_like(ids))
    assert (logits(ours, input_ids=ids) - full).abs().max().item() <= 1e-6
    with torch.no_grad():
        assert (ours(ids).logits - full).abs().max().item() <= 1e-6


# --------------------------------------------------------------------------- peft oracle: Llama


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_llama_causal_lm_logits_match_peft(method) -> None:
    ours, ref = llama_pair(method)
    inputs = llama_batch()
    got, want = logits(ours, **inputs), logits(ref, **inputs)
    # peft keeps the prompt positions in the logits; ours are aligned with the input tokens
    want = want[:, N:] if method == "prompt_tuning" else want
    assert got.shape == (3, 6, LLAMA["vocab_size"])
    assert (got - want).abs().max().item() <= 1e-5
    assert (got - logits(build_llama(0), **inputs)).abs().max().item() > 1e-3


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_llama_loss_with_labels_matches_peft(method) -> None:
    ours, ref = llama_pair(method, seed=1)
    inputs = llama_batch()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    # Ours: the loss has the terms it has without virtual tokens (token t predicts t+1). peft's
    # prompt tuning also makes the last virtual token predict the first text token; with that
    # label ignored (as SFT prompts are) the two losses are the same.
    labels[:, 0] = -100
    with torch.no_grad():
        got, want = ours(**inputs, labels=labels).loss, ref(**inputs, labels=labels).loss
    assert abs(got.item() - want.item()) <= 1e-5


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_llama_greedy_generate_matches_peft(method) -> None:
    ours, ref = llama_pair(method, seed=2)
    ids = llama_batch()["input_ids"][[0, 2]]  # unpadded rows
    kwargs = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        got, want = ours.generate(ids, **kwargs), ref.generate(ids, **kwargs)
        no_cache = ours.generate(ids, use_cache=False, **kwargs)
        plain = build_llama(2).generate(ids, **kwargs)
    assert got.shape == (2, 14) and torch.equal(got, want)
    assert torch.equal(got, no_cache)  # the growing KV cache gives what full recomputation gives
    assert not torch.equal(got, plain)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_llama_left_padding_gives_the_unpadded_logits(method) -> None:
    ours, _ = llama_pair(method, seed=3)
    ids = llama_batch()["input_ids"][0:1, :4]
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    both = {"input_ids": torch.cat([padded, llama_batch()["input_ids"][2:3]]),
            "attention_mask": torch.cat([mask, torch.ones(1, 6, dtype=torch.long)])}
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "output_logits": True,
              "return_dict_in_generate": True}
    with torch.no_grad():
        alone = ours.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        batched = ours.generate(**both, **kwargs)
    assert torch.equal(batched.sequences[0, 2:], alone.sequences[0])
    for a, b in zip(alone.logits, batched.logits):
        assert (a[0] - b[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_llama_sequence_classifier_pools_the_last_real_token(method) -> None:
    """The virtual positions are dropped again, so the head still finds the last non-pad token."""
    model = build_llama(0, LlamaForSequenceClassification, num_labels=3)
    apply_methods(model, [configs()[method]])
    model.eval()
    inputs = llama_batch()
    batched = logits(model, **inputs)
    alone = logits(model, input_ids=inputs["input_ids"][1:2, :4], attention_mask=inputs["attention_mask"][1:2, :4])
    assert batched.shape == (3, 3)
    assert (batched[1:2] - alone).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------- parameter counts


def trainable_count(model: nn.Module) -> int:
    return count_parameters(model)["trainable"]


@pytest.mark.parametrize("train_head", [True, False])
def test_bert_trainable_counts_are_closed_forms(train_head) -> None:
    expected = {
        "prompt_tuning": N * H,
        "ptuning_v2": N * LAYERS * 2 * H,
        "prefix_tuning": N * H + (H * P + P) + (P * LAYERS * 2 * H + LAYERS * 2 * H),
    }
    for method, cfg in configs().items():
        model = build_bert()
        apply_methods(model, [cfg.model_copy(update={"train_head": train_head})])
        head = HEAD if train_head else 0
        assert trainable_count(model) == expected[method] + head, method
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all(n.startswith(f"{method}.") for n in names - {"classifier.weight", "classifier.bias"})
        assert ("classifier.weight" in names) == train_head


def test_llama_gqa_trainable_counts_use_the_key_value_width() -> None:
    layers = LLAMA["num_hidden_layers"]
    expected = {
        "prompt_tuning": N * LLAMA["hidden_size"],
        "ptuning_v2": N * layers * 2 * KV,
        "prefix_tuning": N * KV + (KV * P + P) + (P * layers * 2 * KV + layers * 2 * KV),
    }
    for method, cfg in configs().items():
        ours, ref = llama_pair(method)
        assert trainable_count(ours) == expected[method], method
        assert trainable_count(ours) == ref.get_nb_trainable_parameters()[0], method


# --------------------------------------------------------------------------- finalize


def test_prefix_finalize_keeps_logits_and_saves_only_the_table(batch) -> None:
    ours, _ = bert_pair("prefix_tuning")
    before = logits(ours, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert finalize(ours) == 1
    after = logits(ours, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert (before - after).abs().max().item() <= 1e-6
    state = trainable_state(ours)
    assert set(state) == {"prefix_tuning.prefix_table", "classifier.weight", "classifier.bias"}
    assert state["prefix_tuning.prefix_table"].numel() == LAYERS * 2 * N * H
    finalize(ours)  # idempotent
    assert set(trainable_state(ours)) == set(state)


def test_finalized_weights_load_into_a_freshly_built_model(batch) -> None:
    ours, _ = bert_pair("prefix_tuning")
    finalize(ours)
    saved = trainable_state(ours)
    fresh = build_bert(0)
    apply_methods(fresh, [configs()["prefix_tuning"]])
    with pytest.raises(ValueError, match="does not fit"):
        load_trainable(fresh, saved)  # the unfinalized model expects the MLP
    finalize(fresh)
    load_trainable(fresh, saved)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert torch.equal(logits(fresh.eval(), **inputs), logits(ours, **inputs))


def test_llama_gqa_finalized_table_and_generation() -> None:
    ours, ref = llama_pair("prefix_tuning", seed=4)
    ids = llama_batch()["input_ids"][[0, 2]]
    kwargs = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        want = ref.generate(ids, **kwargs)
    finalize(ours)
    state = trainable_state(ours)
    assert list(state) == ["prefix_tuning.prefix_table"]
    assert state["prefix_tuning.prefix_table"].numel() == LLAMA["num_hidden_layers"] * 2 * N * KV
    with torch.no_grad():
        assert torch.equal(ours.generate(ids, **kwargs), want)


def test_ptuning_v2_and_prompt_have_nothing_to_finalize() -> None:
    for method in ("ptuning_v2", "prompt_tuning"):
        model = build_bert()
        apply_methods(model, [configs()[method]])
        before = set(trainable_state(model))
        finalize(model)
        assert set(trainable_state(model)) == before


# --------------------------------------------------------------------------- initialisation


def test_vocab_init_copies_real_token_embeddings() -> None:
    model = build_bert()
    torch.manual_seed(0)
    apply_methods(model, [PromptTuningConfig(num_virtual_tokens=6, init="vocab")])
    table = model.get_input_embeddings().weight
    prompt = model.prompt_tuning.prompt_embeddings
    for row in prompt:
        assert (table == row).all(dim=1).any()  # every row is some token's embedding
    assert len({tuple(r.tolist()) for r in prompt}) == 6  # drawn without replacement


def test_text_init_uses_the_run_tokenizer(tiny_bert_dir) -> None:
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    text = "positive or negative"
    apply_methods(model, [PromptTuningConfig(num_virtual_tokens=7, init="text", init_text=text)])
    ids = AutoTokenizer.from_pretrained(tiny_bert_dir)(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    expected = model.get_input_embeddings().weight[(ids * 3)[:7]]
    assert torch.equal(model.prompt_tuning.prompt_embeddings, expected)


def test_text_init_with_an_explicit_tokenizer(tiny_bert_dir) -> None:
    model = build_bert(vocab_size=30522)  # built from a config: no _name_or_path to find a tokenizer
    with pytest.raises(UserError, match="init_tokenizer"):
        apply_methods(model, [PromptTuningConfig(num_virtual_tokens=2, init="text", init_text="great")])
    model = build_bert(vocab_size=30522)
    apply_methods(model, [PromptTuningConfig(num_virtual_tokens=2, init="text", init_text="great",
                                             init_tokenizer=str(tiny_bert_dir))])
    great = AutoTokenizer.from_pretrained(tiny_bert_dir)("great", add_special_tokens=False)["input_ids"]
    assert torch.equal(model.prompt_tuning.prompt_embeddings, model.get_input_embeddings().weight[great * 2])


def test_random_init_matches_the_embedding_scale() -> None:
    model = build_bert(hidden_size=64, num_attention_heads=2)
    apply_methods(model, [PromptTuningConfig(num_virtual_tokens=200, init="random")])
    scale = model.get_input_embeddings().weight.std().item()
    assert model.prompt_tuning.prompt_embeddings.std().item() == pytest.approx(scale, rel=0.1)


# --------------------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_gradients_reach_only_the_method_and_head(method, batch) -> None:
    model = build_bert()
    apply_methods(model, [configs()[method]])
    model.train()
    model(**batch).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_prefix_dropout_acts_in_train_mode_only(batch) -> None:
    model = build_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    apply_methods(model, [PTuningV2Config(num_virtual_tokens=N, prefix_dropout=0.5)])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    first, second = logits(model, **inputs), logits(model, **inputs)
    assert torch.equal(first, second)
    model.train()
    assert not torch.equal(logits(model, **inputs), first)
    model.eval()
    assert torch.equal(logits(model, **inputs), first)


def test_deepcopy_keeps_the_hooks_working(batch) -> None:
    ours, _ = bert_pair("ptuning_v2")
    clone = copy.deepcopy(ours)
    with torch.no_grad():
        clone.ptuning_v2.prefix_table.mul_(2)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert not torch.equal(logits(clone, **inputs), logits(ours, **inputs))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("override,fragment", [
    ({"name": "prompt_tuning", "num_virtual_tokens": 0}, "method.num_virtual_tokens"),
    ({"name": "prefix_tuning", "num_virtual_tokens": -3}, "method.num_virtual_tokens"),
    ({"name": "ptuning_v2", "num_virtual_tokens": 0}, "method.num_virtual_tokens"),
    ({"name": "prompt_tuning", "init": "text"}, "init_text"),
    ({"name": "prompt_tuning", "init": "text", "init_text": "  "}, "init_text"),
    ({"name": "prompt_tuning", "init_text": "hello"}, "only used with init: text"),
    ({"name": "prompt_tuning", "init": "labels"}, "method.init"),
    ({"name": "prefix_tuning", "projection_size": 0}, "method.projection_size"),
    ({"name": "ptuning_v2", "prefix_dropout": 1.0}, "method.prefix_dropout"),
])
def test_bad_options_are_one_line_user_errors(override, fragment) -> None:
    with pytest.raises(UserError) as err:
        validate_config({"method": override})
    message = str(err.value)
    assert fragment in message and "\n" not in message


def test_option_validation_on_the_config_classes() -> None:
    with pytest.raises(ValidationError):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ValidationError):
        PromptTuningConfig(init="text")
    assert PromptTuningConfig(init="text", init_text="great movie").init_text == "great movie"


@pytest.mark.parametrize("first,second", [("prompt_tuning", "prefix_tuning"), ("prefix_tuning", "ptuning_v2"),
                                          ("ptuning_v2", "prompt_tuning")])
def test_two_virtual_token_methods_cannot_be_combined(first, second) -> None:
    model = build_bert()
    cfgs = configs()
    with pytest.raises(UserError) as err:
        apply_methods(model, [cfgs[first], cfgs[second]])
    assert f"'{second}' cannot be combined with '{first}'" in str(err.value)
    assert "\n" not in str(err.value)


def test_prefix_methods_refuse_a_model_without_a_kv_cache(batch) -> None:
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=3)
    for method in ("prefix_tuning", "ptuning_v2"):
        with pytest.raises(UserError, match="past_key_values"):
            apply_methods(DistilBertForSequenceClassification(config), [configs()[method]])
    model = DistilBertForSequenceClassification(config)  # prompt tuning only needs inputs_embeds
    apply_methods(model, [configs()["prompt_tuning"]])
    assert logits(model.eval(), input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).shape == (3, 3)


def test_composes_with_lora(batch) -> None:
    model = build_bert()
    apply_methods(model, [PTuningV2Config(num_virtual_tokens=N), LoRAConfig(r=2, target_modules=["query"])])
    lora = LAYERS * 2 * (2 * H)
    assert trainable_count(model) == N * LAYERS * 2 * H + lora + HEAD
    assert len(prompt_modules(model)) == 1


def test_registered_with_their_own_names() -> None:
    assert {"prompt_tuning", "prefix_tuning", "ptuning_v2"} <= set(METHODS)
    assert isinstance(METHODS["prompt_tuning"].paper, str) and "2104.08691" in METHODS["prompt_tuning"].paper
    assert "2101.00190" in METHODS["prefix_tuning"].paper and "2110.07602" in METHODS["ptuning_v2"].paper


# --------------------------------------------------------------------------- end to end (CLI)

E2E = {
    "prompt_tuning": {"method.num_virtual_tokens": 4, "train.lr": 3e-2},
    "prefix_tuning": {"method.num_virtual_tokens": 4, "method.projection_size": 16, "train.lr": 3e-3},
    "ptuning_v2": {"method.num_virtual_tokens": 4, "train.lr": 1e-2},
}


@pytest.fixture(scope="module")
def trained_runs(tiny_bert_dir, reviews_jsonl, tmp_path_factory):
    runs = {}
    for method, extra in E2E.items():
        out = tmp_path_factory.mktemp(method)
        overrides = tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{"method.name": method, **extra})
        assert main(["train", *overrides]) == 0
        runs[method] = out / "run"
    return runs


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_cli_train_eval_predict(method, trained_runs, capsys) -> None:
    run = trained_runs[method]
    results = json.loads((run / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == results["test"]["accuracy"]
    assert metrics["confusion_matrix"] == results["test"]["confusion_matrix"]
    assert main(["predict", str(run), "a wonderful, moving film", "a dull mess"]) == 0
    preds = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [p["text"] for p in preds] == ["a wonderful, moving film", "a dull mess"]
    assert all(p["label"] in ("rotten", "fresh") for p in preds)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "train"]
    assert len(losses) == 24 and all(loss == loss for loss in losses)  # 2 epochs x 12 steps, finite


def test_saved_weights_are_finalized_and_checkpoints_are_not(trained_runs) -> None:
    hidden, layers, n, proj = 32, 2, 4, 16  # tiny_bert_dir and E2E
    head = {"classifier.weight", "classifier.bias"}
    expected = {"prompt_tuning": {"prompt_tuning.prompt_embeddings"}, "ptuning_v2": {"ptuning_v2.prefix_table"},
                "prefix_tuning": {"prefix_tuning.prefix_table"}}
    for method, run in trained_runs.items():
        weights = load_file(str(run / "model" / "weights.safetensors"))
        assert set(weights) == expected[method] | head, method
        results = json.loads((run / "results.json").read_text())
        if method == "prefix_tuning":
            assert weights["prefix_tuning.prefix_table"].shape == (n, layers * 2 * hidden)
            # what trained (and what resume checkpoints hold) is the MLP, not the table
            mlp = n * hidden + hidden * proj + proj + proj * layers * 2 * hidden + layers * 2 * hidden
            assert results["params"]["trainable"] == mlp + 2 * hidden + 2
            latest = (run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip())
            saved = set(load_file(str(latest / WEIGHTS)))
            assert "prefix_tuning.prefix_latent" in saved and "prefix_tuning.prefix_mlp.2.weight" in saved
        else:
            assert results["params"]["trainable"] == sum(t.numel() for t in weights.values())


def test_prefix_tuning_resumes_exactly_from_an_mlp_checkpoint(trained_runs, tmp_path) -> None:
    """Cut the finished prefix-tuning run back to its epoch-1 checkpoint and resume it: the MLP
    checkpoint loads, training continues, and the finalized weights equal the uninterrupted run's."""
    import shutil

    done = trained_runs["prefix_tuning"]
    run = tmp_path / "run"
    shutil.copytree(done, run)
    for name in ("results.json", "README.md"):
        (run / name).unlink()
    shutil.rmtree(run / "model")
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000012", "step-00000024"]
    shutil.rmtree(ckpts / "step-00000024")
    (ckpts / "latest").write_text("step-00000012")
    assert main(["train", "--resume", str(run)]) == 0
    want, got = (load_file(str(r / "model" / "weights.safetensors")) for r in (done, run))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    results = [json.loads((r / "results.json").read_text()) for r in (done, run)]
    assert results[0]["test"] == results[1]["test"] and results[0]["global_step"] == results[1]["global_step"]


def test_isinstance_helpers() -> None:
    model = build_bert()
    apply_methods(model, [configs()["prompt_tuning"]])
    assert isinstance(model.prompt_tuning, PromptEmbedding)
    model = build_bert()
    apply_methods(model, [configs()["prefix_tuning"]])
    assert isinstance(model.prefix_tuning, KeyValuePrefix)
