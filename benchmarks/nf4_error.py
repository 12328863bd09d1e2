#!/usr/bin/env python
"""How far 4-bit quantisation moves MiniLM: the QLoRA base's error, before any training.

QLoRA trains LoRA on top of a base whose linear weights were rounded to 4 bits, so its LoRA has to
learn the task *and* work around that rounding. Dettmers et al. (2023, arXiv:2305.14314) evaluate
4-bit NF4 + LoRA against 16-bit on models of 80M parameters and up; how much the rounding costs on
a 22M-parameter, 384-wide model is what this script measures, with the exact quantiser
QLoRA uses (``tunelab.methods.qlora.quantize_linear``, bitsandbytes, every linear layer outside
the head, as ``method.name=qlora`` does by default):

* per linear layer, the relative Frobenius error ``||W - deq(q(W))|| / ||W||`` (median, min, max);
* per transformer layer's output, over real reviews (the first ``--rows`` of Rotten Tomatoes):
  the mean relative error of the token states and the mean cosine of the [CLS] state and of the
  mean-pooled sentence embedding, fp32 base against 4-bit base;
* NF4 against FP4, each with and without double quantisation.

Writes benchmarks/results/nf4_error.json and prints a table. Takes under a minute on 2 cores.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/nf4_error.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import _bench_common as bc
import torch
from torch import nn
from transformers import AutoModel

from tunelab.data.builtin import get_builtin_dataset
from tunelab.methods.qlora import QLoRAConfig, dequantize_linear, find_quantize_targets, quantize_linear
from tunelab.methods.targets import replace_module
from tunelab.models.loading import load_tokenizer, resolve_model

VARIANTS = (("nf4", True), ("nf4", False), ("fp4", True), ("fp4", False))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="4-bit quantisation error of MiniLM's weights and hidden states")
    p.add_argument("--rows", type=int, default=128, help="reviews to run through both models")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--blocksize", type=int, default=64)
    p.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "nf4_error.json")
    return p.parse_args(argv)


def quantized_copy(model: nn.Module, quant_type: str, double_quant: bool, blocksize: int) -> nn.Module:
    """``model`` with every QLoRA-default target linear replaced by a bitsandbytes 4-bit layer."""
    q = copy.deepcopy(model)
    targets = find_quantize_targets(q, QLoRAConfig(name="qlora", quant_type=quant_type, blocksize=blocksize))
    for name in targets:
        replace_module(q, name, quantize_linear(q.get_submodule(name), quant_type=quant_type,
                                                double_quant=double_quant, blocksize=blocksize,
                                                compute_dtype=torch.float32))
    return q


def weight_errors(model: nn.Module, q: nn.Module) -> list[float]:
    """Relative Frobenius error of every quantised weight."""
    errors = []
    for name, module in q.named_modules():
        if type(module).__name__ == "Linear4bit":
            w = model.get_submodule(name).weight.detach()
            errors.append(((w - dequantize_linear(module).weight.float()).norm() / w.norm()).item())
    return errors


@torch.no_grad()
def state_errors(model: nn.Module, q: nn.Module, enc: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Per hidden-state layer: relative token error (real tokens only), [CLS] and mean-pool cosine."""
    mask = enc["attention_mask"].bool()
    ref = model(**enc, output_hidden_states=True).hidden_states
    got = q(**enc, output_hidden_states=True).hidden_states
    rows = []
    weights = mask.unsqueeze(-1).float()
    for layer, (x, y) in enumerate(zip(ref, got)):
        rel = ((x - y).norm(dim=-1) / x.norm(dim=-1))[mask]
        pooled_x = (x * weights).sum(1) / weights.sum(1)
        pooled_y = (y * weights).sum(1) / weights.sum(1)
        rows.append({
            "layer": layer,
            "token_relative_error": rel.mean().item(),
            "cls_cosine": nn.functional.cosine_similarity(x[:, 0], y[:, 0], dim=-1).mean().item(),
            "mean_pool_cosine": nn.functional.cosine_similarity(pooled_x, pooled_y, dim=-1).mean().item(),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = resolve_model("minilm")
    tokenizer = load_tokenizer(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = get_builtin_dataset("rotten_tomatoes").load()["train"]["text"][: args.rows]
    enc = dict(tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length))
    results: dict[str, Any] = {
        "benchmark": "nf4_error", "model": "minilm (sentence-transformers/all-MiniLM-L6-v2)",
        "rows": len(texts), "max_length": args.max_length, "blocksize": args.blocksize,
        "machine": bc.machine_info(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "variants": {},
    }
    print(f"{'variant':<12} {'weight err (median)':>20} {'last-layer token err':>21} {'CLS cos':>8} {'pool cos':>9}")
    for quant_type, double_quant in VARIANTS:
        q = quantized_copy(model, quant_type, double_quant, args.blocksize).eval()
        werr = weight_errors(model, q)
        states = state_errors(model, q, enc)
        key = f"{quant_type}{'+dq' if double_quant else ''}"
        results["variants"][key] = {
            "quant_type": quant_type, "double_quant": double_quant, "quantized_linears": len(werr),
            "weight_relative_error": {"median": statistics.median(werr), "min": min(werr), "max": max(werr)},
            "hidden_states": states,
        }
        last = states[-1]
        print(f"{key:<12} {statistics.median(werr):>20.4f} {last['token_relative_error']:>21.4f} "
              f"{last['cls_cosine']:>8.4f} {last['mean_pool_cosine']:>9.4f}")
    bc.write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
