"""Live servers for the serve tests: uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import write_instruct_jsonl
from tunelab.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def words_jsonl(tmp_path_factory) -> Path:
    """48 real WordNet instruction rows (alpaca format)."""
    return write_instruct_jsonl(tmp_path_factory.mktemp("serve-data") / "words.jsonl", 48)


def sft_run(model: Path, data: Path, out: Path, name: str, **extra: object) -> Path:
    """A short instruction-tuning run on the tiny Llama (high learning rate: runs differ visibly)."""
    args = {"task.name": "sft", "model.name_or_path": str(model), "data.source": str(data), "output_dir": str(out),
            "name": name, "train.epochs": 1, "train.batch_size": 8, "data.max_length": 48,
            "task.eval_generate": 0, "train.lr": 3e-2, "train.eval_strategy": "no", **extra}
    assert main(["train", *[f"{k}={v}" for k, v in args.items()]]) == 0
    return out / name


@pytest.fixture(scope="session")
def lm_runs(tiny_llama_dir, words_jsonl, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs, one IA3 and one prompt-tuning run over the same tiny Llama."""
    out = tmp_path_factory.mktemp("serve-runs")
    return {
        "alpha": sft_run(tiny_llama_dir, words_jsonl, out, "alpha", **{"method.name": "lora", "seed": 1}),
        "beta": sft_run(tiny_llama_dir, words_jsonl, out, "beta", **{"method.name": "lora", "seed": 2,
                                                                      "method.r": 4}),
        "gamma": sft_run(tiny_llama_dir, words_jsonl, out, "gamma", **{"method.name": "ia3", "seed": 3}),
        "delta": sft_run(tiny_llama_dir, words_jsonl, out, "delta", **{"method.name": "prompt_tuning", "seed": 4,
                                                                        "method.num_virtual_tokens": 4}),
    }
