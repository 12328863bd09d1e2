"""Multi-adapter: switching, disabling, weighted LoRA, merging, deleting, saving and loading, runs."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
from typing import Any

import peft
import pytest
import torch
from torch import nn

from tests.conftest import REPO, perturb_trainable, tiny_overrides
from tunelab.adapters import SUPPORTED_METHODS, AdapterSet
from tunelab.cli import main
from tunelab.errors import UserError
from tunelab.methods import apply_methods
from tunelab.methods.adapter import AdapterConfig, ParallelAdapterConfig
from tunelab.methods.base import MethodConfig
from tunelab.methods.bitfit import BitFitConfig
from tunelab.methods.freeze import FreezeConfig
from tunelab.methods.full import FullConfig
from tunelab.methods.ia3 import IA3Config
from tunelab.methods.lora import LoRAConfig, LoRALinear
from tunelab.methods.prompt import PromptTuningConfig
from tunelab.train.checkpoint import trainable_state

from .conftest import build_bert

PEFT_PREFIX = "base_model.model."

CASES: dict[str, list[MethodConfig]] = {
    "lora": [LoRAConfig(r=4, alpha=8, target_modules=["query", "value"])],
    "rslora-all": [LoRAConfig(r=2, alpha=4, use_rslora=True)],
    "dora+bitfit": [LoRAConfig(r=2, target_modules=["key", "dense"], use_dora=True), BitFitConfig()],
    "ia3": [IA3Config()],
    "serial": [AdapterConfig(bottleneck=4)],
    "parallel": [ParallelAdapterConfig(bottleneck=4, placement="both")],
    "lora+serial": [LoRAConfig(r=2, target_modules=["dense"]), AdapterConfig(bottleneck=3, placement="ffn")],
}


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def trained_alone(methods: list[MethodConfig], seed: int) -> nn.Module:
    """The tiny base with ``methods`` applied on its own and random 'trained' values (eval mode)."""
    model = build_bert()
    apply_methods(model, methods)
    return perturb_trainable(model, seed, 0.2).eval()


@pytest.fixture
def base() -> nn.Module:
    return build_bert().eval()


@pytest.fixture
def filled(base) -> tuple[AdapterSet, dict[str, nn.Module]]:
    """A set holding every case with random weights, and each case's model built alone."""
    adapters = AdapterSet(base)
    alone = {}
    for seed, (name, methods) in enumerate(CASES.items()):
        alone[name] = trained_alone(methods, seed)
        adapters.add(name, methods, weights=trainable_state(alone[name]))
    return adapters, alone


def assert_state_equal(model: nn.Module, reference: nn.Module) -> None:
    """Same parameter names and bit-identical values (the untouched base)."""
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------------------- switching

def test_switching_gives_each_adapters_own_logits(filled, batch) -> None:
    adapters, alone = filled
    model = adapters.model
    expected = {name: logits(m, batch) for name, m in alone.items()}
    assert len({tuple(t.flatten().tolist()) for t in expected.values()}) == len(CASES)  # all differ
    for name in [*CASES, *reversed(CASES)]:  # forwards and back: switching leaves no residue
        adapters.set_active(name)
        assert adapters.active_name == name
        assert torch.equal(logits(model, batch), expected[name]), name
    with adapters.active("ia3"):
        assert torch.equal(logits(model, batch), expected["ia3"])
    assert adapters.active_name == "lora"


def test_parallel_adapter_hooks_are_only_installed_while_active(filled, batch) -> None:
    adapters, _ = filled
    entry = adapters.model.bert.encoder.layer[0].intermediate
    assert not entry._forward_pre_hooks
    adapters.set_active("parallel")
    assert len(entry._forward_pre_hooks) == 1
    adapters.set_active("lora")
    assert not entry._forward_pre_hooks


def test_disable_gives_the_untouched_base(filled, batch) -> None:
    adapters, _ = filled
    reference = build_bert().eval()
    base_logits = logits(reference, batch)
    for name in CASES:
        adapters.set_active(name)
        assert not torch.equal(logits(adapters.model, batch), base_logits)
        with adapters.disable():
            assert adapters.active_name is None
            assert torch.equal(logits(adapters.model, batch), base_logits)
            assert_state_equal(adapters.model, reference)
        assert adapters.active_name == name
    adapters.disable()
    assert adapters.active_name is None and torch.equal(logits(adapters.model, batch), base_logits)
    assert_state_equal(adapters.model, reference)


def test_adding_does_not_change_the_active_adapter(base, batch) -> None:
    base.bert.embeddings.requires_grad_(False)
    grads = {n: p.requires_grad for n, p in base.named_parameters()}
    adapters = AdapterSet(base)
    adapters.add("a", CASES["lora"], weights=trainable_state(trained_alone(CASES["lora"], 1)))
    adapters.set_active("a")
    before = logits(base, batch)
    adapters.add("b", CASES["ia3"])
    assert adapters.active_name == "a" and torch.equal(logits(base, batch), before)
    adapters.set_active(None)
    assert {n: p.requires_grad for n, p in base.named_parameters()} == grads  # flags as they were


def test_heads_with_another_label_set_swap_in(base, batch) -> None:
    two = build_bert(num_labels=2)
    apply_methods(two, CASES["lora"])
    weights = trainable_state(two)
    adapters = AdapterSet(base)
    labels = {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
    adapters.add("binary", CASES["lora"], weights=weights, labels=labels)
    with adapters.active("binary"):
        assert logits(base, batch).shape == (3, 2)
        assert base.config.id2label == {0: "neg", 1: "pos"} and base.num_labels == 2
        assert torch.equal(logits(base, batch), logits(two.eval(), batch))
    assert logits(base, batch).shape == (3, 3) and base.num_labels == 3


# ---------------------------------------------------------------------------- weighted LoRA

def lora_pair(base: nn.Module) -> tuple[AdapterSet, dict[str, nn.Module]]:
    cases = {"a": [LoRAConfig(r=4, alpha=8, target_modules=["query", "value"])],
             "b": [LoRAConfig(r=2, alpha=6, use_rslora=True, target_modules=["query", "key", "output.dense"])]}
    adapters, alone = AdapterSet(base), {}
    for seed, (name, methods) in enumerate(cases.items()):
        alone[name] = trained_alone(methods, seed + 10)
        adapters.add(name, methods, weights=trainable_state(alone[name]))
    return adapters, alone


def dense_sum(alone: dict[str, nn.Module], weights: dict[str, float], head: str) -> nn.Module:
    """The base with sum_i w_i * delta_W_i added to each weight, and adapter ``head``'s head."""
    model = build_bert().eval()
    with torch.no_grad():
        for name, w in weights.items():
            for module_name, module in alone[name].named_modules():
                if isinstance(module, LoRALinear):
                    model.get_submodule(module_name).weight.add_(w * module.delta_weight())
        model.classifier.load_state_dict(alone[head].classifier.state_dict())
    return model


@pytest.mark.parametrize("weights", [{"a": 0.7, "b": 0.3}, {"b": 1.5, "a": -0.5}])
def test_weighted_lora_equals_the_dense_sum(base, batch, weights) -> None:
    adapters, alone = lora_pair(base)
    combined = adapters.add_weighted("mix", weights)
    first = next(iter(weights))
    adapters.set_active("mix")
    diff = (logits(base, batch) - logits(dense_sum(alone, weights, first), batch)).abs().max().item()
    assert diff <= 1e-5
    query = combined.wrappers["bert.encoder.layer.0.attention.self.query"]
    assert (query.r, query.scaling) == (6, 1.0)  # rank 4 + 2 where both adapt, scaling 1
    assert combined.wrappers["bert.encoder.layer.0.attention.self.key"].r == 2
    assert combined.combined_from == weights


def test_weight_one_reproduces_the_adapter(base, batch) -> None:
    adapters, alone = lora_pair(base)
    adapters.add_weighted("just_b", {"b": 1.0})
    adapters.set_active("just_b")
    assert (logits(base, batch) - logits(alone["b"], batch)).abs().max().item() <= 1e-6


def test_weighted_takes_the_named_head(base, batch) -> None:
    adapters, alone = lora_pair(base)
    adapters.add_weighted("mix", {"a": 0.5, "b": 0.5}, head="b")
    adapters.set_active("mix")
    diff = logits(base, batch) - logits(dense_sum(alone, {"a": 0.5, "b": 0.5}, "b"), batch)
    assert diff.abs().max().item() <= 1e-5


def test_weighted_matches_peft_cat_combination(batch) -> None:
    methods = {"sst": LoRAConfig(r=4, alpha=8, target_modules=["query", "value"], train_head=False),
               "imdb": LoRAConfig(r=2, alpha=4, target_modules=["query", "key"], train_head=False)}
    adapters = AdapterSet(build_bert().eval())
    theirs = peft.get_peft_model(build_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]),
                                 adapter_name="sst")
    theirs.add_adapter("imdb", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "key"]))
    peft_params = dict(theirs.named_parameters())
    for seed, (name, cfg) in enumerate(methods.items()):
        weights = trainable_state(trained_alone([cfg], seed))
        adapters.add(name, [cfg], weights=weights)
        with torch.no_grad():
            for key, value in weights.items():
                module, _, leaf = key.rpartition(".")
                peft_params[f"{PEFT_PREFIX}{module}.{name}.{leaf}"].copy_(value)
    theirs.add_weighted_adapter(["sst", "imdb"], [0.6, -0.8], "mix", combination_type="cat")
    theirs.set_adapter("mix")
    adapters.add_weighted("mix", {"sst": 0.6, "imdb": -0.8})
    adapters.set_active("mix")
    assert (logits(adapters.model, batch) - logits(theirs.eval(), batch)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("case", "why"), [
    ("dora+bitfit", "uses lora+bitfit"), ("ia3", "uses ia3"), ("serial", "uses adapter"),
])
def test_weighted_refuses_non_lora(filled, case, why) -> None:
    adapters, _ = filled
    with pytest.raises(UserError, match=re.escape(f"plain LoRA adapters only; '{case}' {why}")) as err:
        adapters.add_weighted("mix", {"lora": 0.5, case: 0.5})
    assert "\n" not in str(err.value)


def test_weighted_refuses_dora(base) -> None:
    adapters = AdapterSet(base)
    adapters.add("d", [LoRAConfig(r=2, use_dora=True)])
    with pytest.raises(UserError, match="'d' uses DoRA"):
        adapters.add_weighted("mix", {"d": 1.0})


def test_weighted_refuses_unknown_names_and_bad_weights(base) -> None:
    adapters, _ = lora_pair(base)
    with pytest.raises(UserError, match=r"unknown adapter 'bb' \(did you mean 'b'\?\)"):
        adapters.add_weighted("mix", {"a": 0.5, "bb": 0.5})
    with pytest.raises(UserError, match="finite number"):
        adapters.add_weighted("mix", {"a": float("nan")})
    with pytest.raises(UserError, match="head adapter"):
        adapters.add_weighted("mix", {"a": 1.0}, head="b")
    assert adapters.names == ["a", "b"]


# ---------------------------------------------------------------------------- merging

@pytest.mark.parametrize("case", ["lora", "rslora-all", "dora+bitfit", "ia3"])
def test_merge_then_unmerge_restores_the_base(filled, batch, case) -> None:
    adapters, alone = filled
    reference = build_bert().eval()
    adapters.merge(case)
    assert adapters.is_merged and adapters.active_name == case
    merged = logits(adapters.model, batch)
    assert (merged - logits(alone[case], batch)).abs().max().item() <= 1e-5
    changed = adapters[case].wrappers
    some = next(iter(changed.values())).base_layer.weight
    assert not torch.equal(some, reference.get_submodule(next(iter(changed))).weight)  # really folded
    adapters.unmerge()
    assert not adapters.is_merged
    assert torch.equal(logits(adapters.model, batch), logits(alone[case], batch))
    with adapters.disable():
        assert_state_equal(adapters.model, reference)


def test_inexact_unmerge_is_within_rounding(filled, batch) -> None:
    adapters, _ = filled
    reference = build_bert().eval().state_dict()
    adapters.merge("lora", exact=False)
    adapters.set_active(None)  # switching unmerges first
    state = adapters.model.state_dict()
    assert max((state[k] - reference[k]).abs().max().item() for k in state) <= 1e-6


def test_switching_away_from_a_merged_adapter_unmerges(filled, batch) -> None:
    adapters, alone = filled
    adapters.merge("lora")
    adapters.set_active("ia3")
    assert not adapters.is_merged
    assert torch.equal(logits(adapters.model, batch), logits(alone["ia3"], batch))
    with adapters.active("lora"):
        adapters.merge()
    assert adapters.active_name == "ia3" and not adapters.is_merged
    with adapters.disable():
        assert_state_equal(adapters.model, build_bert().eval())


def test_merge_refusals(filled) -> None:
    adapters, _ = filled
    with pytest.raises(UserError, match="no adapter is active"):
        adapters.merge()
    for case in ("serial", "parallel", "lora+serial"):
        pattern = rf"adapter '{re.escape(case)}' cannot be merged: .*(Serial|Parallel)Adapter"
        with pytest.raises(UserError, match=pattern):
            adapters.merge(case)


# ---------------------------------------------------------------------------- deleting

def test_delete(filled, batch) -> None:
    adapters, _ = filled
    adapters.set_active("ia3")
    adapters.delete("lora")
    assert "lora" not in adapters and adapters.active_name == "ia3"
    adapters.delete("ia3")  # the active one: falls back to the base
    assert adapters.active_name is None
    assert torch.equal(logits(adapters.model, batch), logits(build_bert().eval(), batch))
    with pytest.raises(UserError, match="unknown adapter 'ia3'"):
        adapters.set_active("ia3")
    adapters.add("ia3", CASES["ia3"])  # the name is free again


# ---------------------------------------------------------------------------- saving and loading

def test_save_load_round_trip(filled, batch, tmp_path) -> None:
    adapters, alone = filled
    adapters.add_weighted("mix", {"lora": 0.5, "rslora-all": 0.5})
    adapters.merge("ia3")  # saved unmerged, merged again after
    path = adapters.save(tmp_path / "set")
    manifest = json.loads((path / "adapters.json").read_text())
    assert [a["name"] for a in manifest["adapters"]] == adapters.names and manifest["active"] == "ia3"
    assert manifest["base_fingerprint"] == adapters.fingerprint
    assert sorted(p.name for p in path.glob("*.safetensors")) == sorted(
        [f"{n}.safetensors" for n in adapters.names] + ["base_head.safetensors"])

    again = AdapterSet.load(path, build_bert().eval())
    assert again.names == adapters.names and again.active_name == "ia3"
    assert again["mix"].combined_from == {"lora": 0.5, "rslora-all": 0.5}
    for name in again.names:
        adapters.set_active(name)
        again.set_active(name)
        assert torch.equal(logits(again.model, batch), logits(adapters.model, batch)), name


def test_save_refuses_an_existing_folder(filled, tmp_path) -> None:
    adapters, _ = filled
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "other.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists; pass overwrite=True"):
        adapters.save(tmp_path / "set")
    assert (tmp_path / "set" / "other.txt").read_text() == "keep me"
    adapters.save(tmp_path / "set", overwrite=True)
    assert not (tmp_path / "set" / "other.txt").exists()


def test_load_refuses_another_base(filled, tmp_path) -> None:
    adapters, _ = filled
    path = adapters.save(tmp_path / "set")
    with pytest.raises(UserError, match="different base model") as err:
        AdapterSet.load(path, build_bert(seed=1))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- refusals

@pytest.mark.parametrize(("methods", "message"), [
    ([FullConfig()], "method 'full' trains every base weight"),
    ([FreezeConfig(top_layers=1)], "method 'freeze' retrains whole base layers"),
    ([LoRAConfig(), FreezeConfig(top_layers=1)], "method 'freeze'"),
    ([PromptTuningConfig(num_virtual_tokens=2)], "method 'prompt_tuning' adds virtual tokens"),
    ([], "needs at least one method config"),
])
def test_unsupported_methods_are_refused(base, methods, message) -> None:
    adapters = AdapterSet(base)
    reference = build_bert().eval()
    with pytest.raises(UserError, match=message) as err:
        adapters.add("x", methods)
    assert "\n" not in str(err.value)
    if methods:
        assert "supported: lora, ia3, adapter, parallel_adapter, bitfit" in str(err.value)
    assert "x" not in adapters
    assert_state_equal(base, reference)


def test_name_errors(filled) -> None:
    adapters, _ = filled
    with pytest.raises(UserError, match="adapter 'lora' already exists"):
        adapters.add("lora", CASES["lora"])
    with pytest.raises(UserError, match="must start with a letter or digit"):
        adapters.add("../x", CASES["lora"])
    with pytest.raises(UserError, match=r"unknown adapter 'loar' \(did you mean 'lora'\?\); accepted: "):
        adapters.set_active("loar")
    with pytest.raises(UserError, match="either method configs or from_run"):
        adapters.add("y")


def test_a_failed_add_leaves_the_base_untouched(base) -> None:
    adapters = AdapterSet(base)
    with pytest.raises(UserError, match="match no"):
        adapters.add("x", [LoRAConfig(target_modules=["nope"])])
    with pytest.raises(UserError, match="do not fit its methods"):
        adapters.add("y", CASES["lora"], weights={"nope": torch.zeros(1)})
    assert_state_equal(base, build_bert().eval())
    assert all(not hasattr(m, "base_layer") for m in base.modules())


def test_a_method_adding_new_modules_is_caught_and_undone(base, monkeypatch) -> None:
    """Past the name check (as an unknown future method would be), prompt tuning's new module and
    backbone hooks are detected, refused, and removed from the base."""
    import tunelab.adapters

    monkeypatch.setattr(tunelab.adapters, "SUPPORTED_METHODS", (*SUPPORTED_METHODS, "prompt_tuning"))
    names = [n for n, _ in base.named_modules()]
    with pytest.raises(UserError, match=r"add modules outside the wrapped layers \(prompt_tuning\)"):
        AdapterSet(base).add("p", [PromptTuningConfig(num_virtual_tokens=2)])
    assert [n for n, _ in base.named_modules()] == names
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in base.modules())
    assert_state_equal(base, build_bert().eval())


def test_an_adapted_model_is_refused(base) -> None:
    apply_methods(base, CASES["lora"])
    with pytest.raises(UserError, match="needs the bare base model"):
        AdapterSet(base)


# ---------------------------------------------------------------------------- from runs (trained via the CLI)

RUNS = {
    "qv": {"method.r": 4, "method.target_modules": "[query,value]"},
    "all": {"method.r": 2, "method.use_rslora": "true", "seed": 7},
    "houlsby": {"method.name": "adapter", "method.bottleneck": 4},
}


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, reviews_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for name, extra in RUNS.items():
        args = tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{"name": name, "train.epochs": 1, **extra})
        assert main(["train", *args]) == 0
    return out


@pytest.fixture(scope="module")
def loaded_runs(runs) -> dict[str, Any]:
    from tunelab.pipeline import load_run

    return {name: load_run(str(runs / name)) for name in RUNS}


@pytest.fixture
def text_batch(loaded_runs) -> dict[str, torch.Tensor]:
    tokenizer = next(iter(loaded_runs.values())).tokenizer
    enc = tokenizer(["a wonderful, moving film", "a dull mess of a movie", "fine"], padding=True,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_from_runs_reproduce_each_run(runs, loaded_runs, text_batch) -> None:
    adapters = AdapterSet.from_runs([runs / name for name in RUNS])
    assert adapters.names == list(RUNS) and adapters.active_name == "qv"
    assert adapters["houlsby"].owned  # the LayerNorms it trained are its own copies
    for name, loaded in loaded_runs.items():
        with adapters.active(name):
            assert torch.equal(logits(adapters.model, text_batch), logits(loaded.model, text_batch)), name
    adapters.add_weighted("mix", {"qv": 0.5, "all": 0.5})
    with adapters.active("mix"):
        assert adapters.predict(["fine"])[0]["label"] in ("rotten", "fresh")


def test_predict_matches_the_pipeline(runs, loaded_runs, reviews_jsonl) -> None:
    from datasets import Dataset

    from tunelab.pipeline import predict_texts

    texts = ["a wonderful, moving film", "a dull mess", "neither here nor there"]
    adapters = AdapterSet.from_runs({"x": runs / "all", "y": runs / "houlsby"})
    for name, run in (("x", "all"), ("y", "houlsby")):
        expected = predict_texts(loaded_runs[run], Dataset.from_dict({"text": texts}))
        got = adapters.predict(texts, adapter=name)
        assert [g["label"] for g in got] == [e["label"] for e in expected]
        assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-6)


def test_runs_save_and_load_without_a_model(runs, loaded_runs, text_batch, tmp_path) -> None:
    adapters = AdapterSet.from_runs([runs / "qv", runs / "houlsby"])
    adapters.set_active("houlsby")
    with adapters.disable():
        base_logits = logits(adapters.model, text_batch)
    again = AdapterSet.load(adapters.save(tmp_path / "set"))
    assert again.names == ["qv", "houlsby"] and again.active_name == "houlsby"
    assert torch.equal(logits(again.model, text_batch), logits(loaded_runs["houlsby"].model, text_batch))
    with again.disable():
        assert torch.equal(logits(again.model, text_batch), base_logits)  # the base head was saved too
    assert again.predict(["fine"], adapter="qv") == adapters.predict(["fine"], adapter="qv")


def test_run_on_another_base_is_refused(runs, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs / "all", other)
    fp = json.loads((other / "base_fingerprint.json").read_text())
    (other / "base_fingerprint.json").write_text(json.dumps({**fp, "fingerprint": "0" * 32}))
    with pytest.raises(UserError, match=r"run .*other was trained on a different base model .* than this "
                                        r"adapter set's") as err:
        AdapterSet.from_runs([runs / "qv", other])
    assert "\n" not in str(err.value)


def test_duplicate_run_names_are_refused(runs, tmp_path) -> None:
    twin = tmp_path / "qv"
    shutil.copytree(runs / "qv", twin)
    with pytest.raises(UserError, match="two runs share a folder name"):
        AdapterSet.from_runs([runs / "qv", twin])
    adapters = AdapterSet.from_runs({"one": runs / "qv", "two": twin})
    with pytest.raises(UserError, match="adapter 'one' already exists"):
        adapters.add("one", from_run=twin)


def test_copy_is_independent(filled, batch) -> None:
    """Deep-copying the model with an adapter installed copies a plain adapted model."""
    adapters, alone = filled
    adapters.set_active("lora")
    snapshot = copy.deepcopy(adapters.model)
    adapters.set_active(None)
    assert torch.equal(logits(snapshot, batch), logits(alone["lora"], batch))


def test_the_example_runs(runs, tmp_path, monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("multi_adapter_example", REPO / "examples" / "multi_adapter.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)  # it saves under runs/multi-adapter/
    example.main([str(runs / "qv"), str(runs / "all")])
    out = capsys.readouterr().out
    assert "blend 0.5/0.5" in out and "qv merged" in out and "reloaded ['qv', 'all', 'blend'], active 'qv'" in out
