"""Optimizer groups: no decay on biases/norms, layer-wise LR decay, separate head LR."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tunelab.methods import apply_methods
from tunelab.methods.full import FullConfig
from tunelab.train.optim import build_scheduler, param_groups


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                 num_attention_heads=2, intermediate_size=32))
    m.tunelab_head_params = ["classifier.weight", "classifier.bias"]
    apply_methods(m, [FullConfig()])
    return m


def _lr_of(groups, name):
    return next(g["lr"] for g in groups if name in g["names"])


def _wd_of(groups, name):
    return next(g["weight_decay"] for g in groups if name in g["names"])


def test_no_weight_decay_on_bias_and_norm(model):
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    assert _wd_of(groups, "bert.encoder.layer.0.attention.self.query.bias") == 0.0
    assert _wd_of(groups, "bert.encoder.layer.0.output.LayerNorm.weight") == 0.0
    assert _wd_of(groups, "bert.embeddings.LayerNorm.weight") == 0.0
    assert _wd_of(groups, "bert.encoder.layer.0.attention.self.query.weight") == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_wise_decay_and_head_lr(model):
    groups = param_groups(model, lr=1.0, weight_decay=0.0, head_lr=5.0, layer_lr_decay=0.5)
    assert _lr_of(groups, "classifier.weight") == 5.0
    assert _lr_of(groups, "bert.encoder.layer.2.output.dense.weight") == 1.0  # top layer: full LR
    assert _lr_of(groups, "bert.encoder.layer.1.output.dense.weight") == 0.5
    assert _lr_of(groups, "bert.encoder.layer.0.output.dense.weight") == 0.25
    assert _lr_of(groups, "bert.embeddings.word_embeddings.weight") == 0.125
    assert _lr_of(groups, "bert.pooler.dense.weight") == 1.0  # above the blocks


def test_frozen_parameters_are_left_out(model):
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("classifier"))
    groups = param_groups(model, lr=1e-3, weight_decay=0.01)
    assert sorted(n for g in groups for n in g["names"]) == ["classifier.bias", "classifier.weight"]


@pytest.mark.parametrize("kind,mid", [("linear", 0.5), ("cosine", 0.5), ("constant", 1.0)])
def test_schedules_warm_up_then_follow_their_shape(kind, mid):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, kind, warmup_steps=10, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(mid, abs=1e-6)
    assert lrs[-1] == pytest.approx(1.0) if kind == "constant" else 0 < lrs[-1] < 0.02
