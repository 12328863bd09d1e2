"""Packing: several examples per row with no attention, position or loss leakage between them."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.packing import PackedCollator, block_causal_mask, pack
from tunelab.data.templates import IGNORE
from tunelab.tasks.sft import PaddingCollator, token_loss_sum


def examples(lengths: list[int], seed: int = 0) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, 900, (n,), generator=gen).tolist()
        prompt = n // 3
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:], "attention_mask": [1] * n})
    return out


def test_pack_is_greedy_in_order_and_restarts_positions() -> None:
    rows = pack(examples([5, 4, 6, 3, 8]), max_length=10)
    assert [len(r["input_ids"]) for r in rows] == [9, 9, 8]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert rows[0]["seq_ids"] == [0] * 5 + [1] * 4
    # every example's first label is ignored: the previous example's last token never predicts it
    assert rows[1]["labels"][0] == IGNORE and rows[1]["labels"][6] == IGNORE
    with pytest.raises(ValueError, match="exceeds max_length"):
        pack(examples([11]), max_length=10)


def test_block_causal_mask() -> None:
    seq = torch.tensor([[0, 0, 1, 1, -1]])
    allowed = block_causal_mask(seq, torch.bool)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
    assert torch.equal(allowed, expected.bool())
    additive = block_causal_mask(seq, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected.bool())
    assert additive.min() == torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(tiny_llama_dir, attn) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attn).eval()
    exs = examples([7, 12, 5, 9, 11])
    rows = pack(exs, max_length=24)
    assert len(rows) < len(exs)
    batch = PackedCollator(0, torch.bool if attn == "sdpa" else torch.float32)(rows)
    batch.pop("num_tokens")
    labels = batch.pop("labels")
    with torch.no_grad():
        packed = model(**batch).logits
        worst = 0.0
        k = 0
        for r, row in enumerate(rows):
            for s in sorted(set(row["seq_ids"])):
                where = [i for i, v in enumerate(row["seq_ids"]) if v == s]
                alone = model(input_ids=torch.tensor([exs[k]["input_ids"]])).logits[0]
                worst = max(worst, (packed[r, where] - alone).abs().max().item())
                k += 1
    assert k == len(exs)
    assert worst <= 1e-5
    assert int((labels != IGNORE).sum()) == sum(sum(y != IGNORE for y in e["labels"][1:]) for e in exs)


def test_packed_loss_sum_equals_the_unpacked_loss_sum(llama) -> None:
    exs = examples([7, 12, 5, 9, 11], seed=1)
    packed = PackedCollator(0)(pack(exs, max_length=24))
    packed.pop("num_tokens")
    unpacked = PaddingCollator(0)(exs)
    with torch.no_grad():
        a = token_loss_sum(llama, packed)
        b = token_loss_sum(llama, unpacked)
    assert a[1] == b[1]
    assert abs(a[0].item() - b[0].item()) <= 1e-3


def test_collator_counts_real_tokens() -> None:
    batch = PackedCollator(0)(pack(examples([3, 4, 6]), max_length=7))
    assert batch["num_tokens"].item() == 13
    assert batch["attention_mask"].shape == (2, 1, 7, 7)
