"""Shared fixtures: offline environment, a tiny random BERT with the real MiniLM tokenizer, small data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT saved as a base model folder, with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.assets import builtin_model_path

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(builtin_model_path("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reviews_jsonl(tmp_path_factory) -> Path:
    """240 real Rotten Tomatoes rows (text, label) as a jsonl file."""
    from tunelab.data.builtin import get_builtin_dataset

    ds = get_builtin_dataset("rotten_tomatoes").load()["train"].shuffle(seed=0).select(range(240))
    path = tmp_path_factory.mktemp("data") / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in ds))
    return path


def tiny_overrides(model_dir: Path, data: Path, out: Path, **extra: object) -> list[str]:
    """Overrides for a fast run on the tiny model."""
    base = {
        "model.name_or_path": str(model_dir), "data.source": str(data), "output_dir": str(out),
        "name": "run", "train.epochs": 2, "train.batch_size": 16, "train.lr": 5e-3,
        "data.max_length": 32, "train.log_steps": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tunelab`` in a subprocess (exit codes and stderr as a user sees them);
    ``input_text`` is its stdin (none otherwise)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO, input=input_text,
                          stdin=None if input_text is not None else subprocess.DEVNULL)


def train_and_kill(args: list[str], run_dir: Path, at_step: int, timeout: float = 240) -> None:
    """Start ``tunelab train ARGS`` and SIGKILL it once its latest checkpoint reaches ``at_step``."""
    import signal
    import time

    from tunelab.train.checkpoint import latest_checkpoint

    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is not None and int(latest.name.split("-")[1]) >= at_step:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (ChatML template, eos = pad = ``<|im_end|>``) saved to a folder.

    Read from the converted built-in folder when it is already cached (~0.3 s), else straight from
    the GGUF (~5 s); never converts the model.
    """
    from transformers import AutoTokenizer

    from tunelab.models.gguf import cache_folder, gguf_source, prepare_tokenizer

    cached = cache_folder("smollm2-135m")
    if (cached / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(cached)
    else:
        source = gguf_source("smollm2-135m")
        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        tok = prepare_tokenizer(tok, 8192)  # SmolLM2's max_position_embeddings, as in the cached folder
    path = tmp_path_factory.mktemp("smol-tokenizer")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A 2-layer, hidden-64 random LlamaForCausalLM with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tok.model_max_length = 512
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def biased_llama_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny Llama with bias terms in attention and MLP (for BitFit)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    cfg.attention_bias, cfg.mlp_bias = True, True
    path = tmp_path_factory.mktemp("tiny-llama-bias")
    LlamaForCausalLM(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


LLAMA_METHODS = {
    "full": {}, "freeze": {"method.top_layers": 1}, "lora": {}, "dora": {"method.use_dora": "true"},
    "qlora": {}, "ia3": {}, "adapter": {}, "parallel_adapter": {}, "prompt_tuning": {"method.num_virtual_tokens": 4},
    "prefix_tuning": {"method.num_virtual_tokens": 4, "train.lr": 1e-3}, "ptuning_v2": {"method.num_virtual_tokens": 4},
    "bitfit": {},
}
"""Overrides that make every method train on the tiny Llama in a few steps (BitFit needs biases)."""


def one_error_line(err: str, fragment: str) -> None:
    """Exactly one ``tunelab: error:`` line, containing ``fragment``, and no traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("tunelab: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


def results(run: Path) -> dict:
    """A finished run's results.json."""
    return json.loads((run / "results.json").read_text())


def write_instruct_jsonl(path: Path, rows: int) -> Path:
    """``rows`` real WordNet instruction rows (alpaca format: instruction, input, output) as jsonl."""
    from tunelab.data.wordnet import build_instruct_rows

    picked = build_instruct_rows(seed=0, max_words=60)[:rows]
    path.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n" for r in picked))
    return path


def perturb_trainable(model, seed: int, scale: float):
    """Add seeded noise (``scale`` x N(0, 1)) to every trainable parameter: 'trained' values for tests."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model

