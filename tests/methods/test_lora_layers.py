"""LoRA on nn.Embedding and nn.Conv2d: fidelity against peft, merging, targeting, counts, runs."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from tests.conftest import tiny_overrides
from tunelab.cli import main
from tunelab.errors import UserError
from tunelab.methods import apply_methods, count_parameters
from tunelab.methods.lora import (
    LoRAConfig,
    LoRAConv2d,
    LoRAEmbedding,
    LoRALinear,
    lora_modules,
    merge_lora,
    unmerge_lora,
    unwrap_lora,
)

from .conftest import TINY_BERT

PEFT_PREFIX = "base_model.model."
H, V = TINY_BERT["hidden_size"], TINY_BERT["vocab_size"]


def bert_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def small_cnn(seed: int = 0) -> nn.Sequential:
    """Three convolutions: 3x3 padded, 3x3 stride 2, 1x1 (names '0', '2', '4')."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    )


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval()


def images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def copy_from_peft(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy every peft LoRA tensor into ours (``...lora_embedding_A.default`` -> ``...lora_embedding_A``)."""
    params = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                params[name.removeprefix(PEFT_PREFIX).replace(".default", "")].copy_(param)
                copied += 1
    assert copied == sum(1 for n in params if "lora_" in n) > 0


def lora_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- embeddings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "use_rslora"), [(["word_embeddings"], False), (["word_embeddings", "query", "value"], True)]
)
def test_embedding_matches_peft(make_bert, batch, targets, use_rslora) -> None:
    ours, theirs = make_bert(seed=7), make_bert(seed=7)
    apply_methods(ours, [LoRAConfig(r=4, alpha=8, target_modules=targets, use_rslora=use_rslora, init="random")])
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False, use_rslora=use_rslora,
    ))
    ours.eval(), theirs.eval()
    assert isinstance(ours.bert.embeddings.word_embeddings, LoRAEmbedding)
    copy_from_peft(ours, theirs)
    assert max_diff(bert_logits(ours, batch), bert_logits(theirs, batch)) <= 1e-5
    assert max_diff(bert_logits(ours, batch), bert_logits(make_bert(seed=7).eval(), batch)) > 1e-3
    assert lora_count(ours) == lora_count(theirs)


def test_embedding_init_is_peft_and_identity(make_bert, batch) -> None:
    """peft zeroes A and draws B ~ N(0, 1) for embeddings (the mirror of Linear); so do we."""
    base, ours, theirs = make_bert().eval(), make_bert(), make_bert()
    apply_methods(ours, [LoRAConfig(target_modules=["word_embeddings"])])
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(target_modules=["word_embeddings"]))
    module = ours.bert.embeddings.word_embeddings
    peft_module = theirs.base_model.model.bert.embeddings.word_embeddings
    for mine, peft_param in ((module.lora_embedding_A, peft_module.lora_embedding_A["default"]),
                             (module.lora_embedding_B, peft_module.lora_embedding_B["default"])):
        assert mine.shape == peft_param.shape
        assert (torch.count_nonzero(mine) == 0) == (torch.count_nonzero(peft_param) == 0)
    assert torch.count_nonzero(module.lora_embedding_A) == 0
    assert abs(module.lora_embedding_B.std().item() - 1.0) < 0.2  # 256 draws from N(0, 1)
    assert torch.equal(bert_logits(base, batch), bert_logits(ours.eval(), batch))


def test_embedding_forward_is_table_update() -> None:
    torch.manual_seed(0)
    module = LoRAEmbedding(nn.Embedding(10, 6, padding_idx=0), r=3, alpha=6, init="random")
    ids = torch.tensor([[0, 3, 9], [4, 4, 1]])
    table = module.base_layer.weight + 2.0 * (module.lora_embedding_B @ module.lora_embedding_A).T
    assert torch.allclose(module(ids), table[ids], atol=1e-6)
    assert module.delta_weight().shape == (10, 6)
    module(ids).sum().backward()
    assert torch.count_nonzero(module.lora_embedding_A.grad[:, 0]) == 0  # the padding row gets no gradient
    assert torch.count_nonzero(module.lora_embedding_A.grad[:, 3]) > 0


def test_embedding_scale_applies_to_the_update() -> None:
    """A base that scales its output (Gemma's scaled word embedding) scales the update alike."""

    class ScaledEmbedding(nn.Embedding):
        def __init__(self, *args, scale: float, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.register_buffer("embed_scale", torch.tensor(scale), persistent=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) * self.embed_scale

    torch.manual_seed(0)
    module = LoRAEmbedding(ScaledEmbedding(10, 6, scale=3.0), r=2, alpha=2, init="random")
    ids = torch.tensor([1, 5, 7])
    expected = (module.base_layer.weight + module.delta_weight())[ids] * 3.0
    assert torch.allclose(module(ids), expected, atol=1e-5)
    module.merge()
    assert torch.allclose(module(ids), expected, atol=1e-5)


# --- convolutions -------------------------------------------------------------------------------


def test_conv_matches_peft_small_cnn() -> None:
    targets = ["0", "2", "4"]
    ours, theirs = small_cnn(), small_cnn()
    apply_methods(ours, [LoRAConfig(r=2, alpha=4, target_modules=targets, init="random")])
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=targets, lora_dropout=0.0, init_lora_weights=False,
    ))
    assert all(isinstance(ours[i], LoRAConv2d) for i in (0, 2, 4))
    copy_from_peft(ours, theirs)
    with torch.no_grad():
        assert max_diff(ours(images()), theirs(images())) <= 1e-5
        assert max_diff(ours(images()), small_cnn()(images())) > 1e-3
    assert lora_count(ours) == lora_count(theirs)


def test_conv_matches_peft_resnet18() -> None:
    targets = [r"re:.*conv\d", r"re:layer\d\.0\.downsample\.0"]  # every convolution, 3x3 and 1x1
    ours, theirs = resnet(), resnet()
    apply_methods(ours, [LoRAConfig(r=4, alpha=8, target_modules=targets, init="random", train_head=False)])
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*conv\d|layer\d\.0\.downsample\.0", init_lora_weights=False,
    ))
    assert len(lora_modules(ours)) == 20  # conv1 + 16 block convs + 3 downsample convs
    copy_from_peft(ours, theirs)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        assert max_diff(ours(images(size=32)), theirs(images(size=32))) <= 1e-5
        assert max_diff(ours(images(size=32)), resnet()(images(size=32))) > 1e-3


def test_conv_forward_is_composed_kernel() -> None:
    """B (1x1) after A is one convolution with kernel W0 + dW, dilation and padding mode included."""
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, padding_mode="reflect")
    module = LoRAConv2d(base, r=3, alpha=3, init="random")
    x = torch.randn(2, 4, 11, 11)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    expected = F.conv2d(padded, base.weight + module.delta_weight(), base.bias, stride=2, dilation=2)
    assert torch.allclose(module(x), expected, atol=1e-5)


def test_conv_initial_adapter_is_a_no_op() -> None:
    ours = small_cnn()
    apply_methods(ours, [LoRAConfig(target_modules=["0", "2"])])
    assert torch.count_nonzero(ours[0].lora_B.weight) == 0
    assert torch.count_nonzero(ours[0].lora_A.weight) == ours[0].lora_A.weight.numel()
    with torch.no_grad():
        assert torch.equal(ours(images()), small_cnn()(images()))


# --- merge / unmerge / unwrap -------------------------------------------------------------------


def test_merge_unmerge_roundtrip_embedding_and_linear(make_bert, batch) -> None:
    model = make_bert()
    apply_methods(model, [LoRAConfig(r=4, target_modules=["word_embeddings", "query"], init="random")])
    model.eval()
    modules = lora_modules(model)
    assert {type(m) for m in modules.values()} == {LoRAEmbedding, LoRALinear}
    before = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}
    unmerged = bert_logits(model, batch)
    assert merge_lora(model) == len(modules)
    table = model.bert.embeddings.word_embeddings.base_layer.weight
    assert max_diff(table, before["bert.embeddings.word_embeddings"]) > 1e-3
    assert max_diff(bert_logits(model, batch), unmerged) <= 1e-5
    unmerge_lora(model)
    for name, module in modules.items():
        assert not module.merged
        assert max_diff(module.base_layer.weight, before[name]) <= 1e-6
    assert max_diff(bert_logits(model, batch), unmerged) <= 1e-5


def test_merge_unmerge_roundtrip_conv() -> None:
    model = resnet()
    apply_methods(model, [LoRAConfig(r=4, target_modules=[r"re:.*conv\d"], init="random", train_head=False)])
    modules = lora_modules(model)
    before = {n: m.base_layer.weight.detach().clone() for n, m in modules.items()}
    with torch.no_grad():
        unmerged = model(images(size=32))
        merge_lora(model)
        assert max_diff(model(images(size=32)), unmerged) <= 1e-4 * unmerged.abs().max().item()
        unmerge_lora(model)
        assert max_diff(model(images(size=32)), unmerged) <= 1e-4 * unmerged.abs().max().item()
    for name, module in modules.items():
        assert max_diff(module.base_layer.weight, before[name]) <= 1e-6


def test_unwrap_matches_peft_merge(make_bert) -> None:
    targets = ["word_embeddings", "value"]
    ours, theirs = make_bert(seed=3), make_bert(seed=3)
    apply_methods(ours, [LoRAConfig(r=4, alpha=8, target_modules=targets, init="random")])
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False,
    ))
    copy_from_peft(ours, theirs)
    ours_plain, theirs_plain = unwrap_lora(ours).state_dict(), theirs.merge_and_unload().state_dict()
    assert set(ours_plain) == set(theirs_plain) == set(make_bert().state_dict())
    assert max(max_diff(ours_plain[k], theirs_plain[k]) for k in ours_plain) <= 1e-5
    assert isinstance(ours.bert.embeddings.word_embeddings, nn.Embedding)


def test_unwrap_conv_matches_peft_merge() -> None:
    targets = ["0", "2", "4"]
    ours, theirs = small_cnn(), small_cnn()
    apply_methods(ours, [LoRAConfig(r=2, alpha=4, target_modules=targets, init="random")])
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets,
                                                         init_lora_weights=False))
    copy_from_peft(ours, theirs)
    ours_plain, theirs_plain = unwrap_lora(ours).state_dict(), theirs.merge_and_unload().state_dict()
    assert set(ours_plain) == set(theirs_plain)
    assert max(max_diff(ours_plain[k], theirs_plain[k]) for k in ours_plain) <= 1e-5


# --- counts, targeting, refusals ----------------------------------------------------------------


def test_trainable_counts_closed_form(make_bert) -> None:
    bert = make_bert()
    apply_methods(bert, [LoRAConfig(r=4, target_modules=["word_embeddings"], train_head=False)])
    assert count_parameters(bert)["trainable"] == 4 * (V + H)  # A: r x vocab, B: hidden x r

    cnn = small_cnn()
    apply_methods(cnn, [LoRAConfig(r=2, target_modules=["0", "2", "4"])])
    # A: r x in x kh x kw, B: out x r x 1 x 1, per convolution
    expected = 2 * (3 * 9 + 8) + 2 * (8 * 9 + 16) + 2 * (16 * 1 + 4)
    assert count_parameters(cnn)["trainable"] == expected


def test_all_linear_leaves_embeddings_and_convs_alone(tiny_bert) -> None:
    apply_methods(tiny_bert, [LoRAConfig(target_modules="all-linear")])
    assert all(isinstance(m, LoRALinear) for m in lora_modules(tiny_bert).values())
    assert isinstance(tiny_bert.bert.embeddings.word_embeddings, nn.Embedding)
    with pytest.raises(UserError, match="match no Linear, Embedding or Conv2d"):
        apply_methods(small_cnn(), [LoRAConfig(target_modules="all-linear")])


def test_no_match_error_lists_close_embedding_names(tiny_bert) -> None:
    with pytest.raises(UserError) as info:
        apply_methods(tiny_bert, [LoRAConfig(target_modules=["word_embedings"])])
    message = str(info.value)
    assert "\n" not in message
    assert "word_embeddings" in message.split("close")[-1] and "position_embeddings" in message


def test_no_match_error_lists_conv_names() -> None:
    with pytest.raises(UserError) as info:
        apply_methods(resnet(), [LoRAConfig(target_modules=["conv3"])])
    assert "conv1" in str(info.value).split("close")[-1]


@pytest.mark.parametrize("target", ["word_embeddings", "conv"])
def test_dora_on_embedding_or_conv_is_refused(make_bert, target) -> None:
    model = make_bert() if target == "word_embeddings" else small_cnn()
    targets = ["word_embeddings", "query"] if target == "word_embeddings" else ["0"]
    with pytest.raises(UserError, match="DoRA is implemented for Linear layers only") as info:
        apply_methods(model, [LoRAConfig(target_modules=targets, use_dora=True)])
    assert "\n" not in str(info.value)
    assert not lora_modules(model)  # refused before anything was wrapped


def test_grouped_conv_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
    with pytest.raises(UserError, match="grouped Conv2d"):
        apply_methods(model, [LoRAConfig(target_modules=["0", "1"])])
    with pytest.raises(ValueError):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), r=2, alpha=2)


# --- run directory ------------------------------------------------------------------------------


def test_embedding_run_saves_adapter_and_reloads(tiny_bert_dir, reviews_jsonl, tmp_path, capsys) -> None:
    overrides = tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{
        "method.name": "lora", "method.r": 2, "method.target_modules": "[word_embeddings,query]", "train.epochs": 1,
    })
    assert main(["train", *overrides]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    weights = load_file(str(run / "model/weights.safetensors"))
    vocab = json.loads((tiny_bert_dir / "config.json").read_text())["vocab_size"]
    assert weights["bert.embeddings.word_embeddings.lora_embedding_A"].shape == (2, vocab)
    assert all("lora_" in k or k.startswith("classifier.") for k in weights)
    # embedding A, B + query A, B in 2 layers (hidden 32) + classifier (32 * 2 + 2)
    assert results["params"]["trainable"] == 2 * (vocab + 32) + 2 * 2 * (32 + 32) + 66
    assert sum(t.numel() for t in weights.values()) == results["params"]["trainable"]
    assert weights["bert.embeddings.word_embeddings.lora_embedding_A"].abs().sum() > 0  # it trained
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert metrics["confusion_matrix"] == results["test"]["confusion_matrix"]
