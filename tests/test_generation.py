"""Text generation: batched greedy equals one-by-one, lengths, stop strings, seeded sampling,
streaming, chat sessions and the interactive loop -- on a tiny random Llama with a word-level tokenizer."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelab.generation import (
    ChatSession,
    GenerationOptions,
    chat_loop,
    cut_at_stop,
    eos_token_ids,
    generate_texts,
    stream_generate,
)
from tunelab.methods import apply_methods
from tunelab.methods.prompt import PromptTuningConfig

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
WORDS = ["hello", "world", "the", "cat", "sat", "on", "mat", "again", "system", "user", "assistant", ":"]
VOCAB = 1000
PROMPTS = ["<bos> hello world", "<bos> the cat sat on the mat again", "<bos> cat"]  # 3, 8 and 2 tokens
GREEDY = GenerationOptions(max_new_tokens=8)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over exactly VOCAB tokens: specials, a few words, then ``w0``, ``w1``, ..."""
    vocab = SPECIALS + WORDS + [f"w{i}" for i in range(VOCAB - len(SPECIALS) - len(WORDS))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def build_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return build_llama()


def alone(model, tok, prompts: list[str], opts: GenerationOptions) -> list[str]:
    return [generate_texts(model, tok, [p], opts)[0] for p in prompts]


def count_forwards(model) -> list[int]:
    """A one-item list counting the model's forward calls (decoding steps)."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --------------------------------------------------------------------------- batched generation

def test_batched_greedy_equals_one_by_one(llama, tok) -> None:
    batched = generate_texts(llama, tok, PROMPTS, GREEDY.model_copy(update={"batch_size": 3}))
    pairs = generate_texts(llama, tok, PROMPTS, GREEDY.model_copy(update={"batch_size": 2}))
    assert batched == pairs == alone(llama, tok, PROMPTS, GREEDY)
    assert len(set(batched)) == 3 and all(batched)
    assert tok.padding_side == "right"  # the tokenizer is not modified


def test_matches_plain_generate_token_ids(llama, tok) -> None:
    """Decoded text is the new tokens of an unpadded ``model.generate`` call (no BOS added again)."""
    ids = tok(PROMPTS[1], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert generate_texts(llama, tok, [PROMPTS[1]], GREEDY) == [tok.decode(out[0, ids.shape[1]:])]


def test_max_new_tokens_is_respected(llama, tok) -> None:
    texts = generate_texts(llama, tok, PROMPTS, GenerationOptions(max_new_tokens=3))
    assert [len(t.split()) for t in texts] == [3, 3, 3]  # one word per token; no EOS in these
    assert all(t8.startswith(t3) for t3, t8 in zip(texts, generate_texts(llama, tok, PROMPTS, GREEDY)))


def test_stop_string_cuts_the_text_and_stops_generating(tok) -> None:
    model = build_llama()
    full = generate_texts(model, tok, [PROMPTS[0]], GREEDY)[0]
    stop = full.split()[3]  # the 4th new word
    calls = count_forwards(model)
    got = generate_texts(model, tok, [PROMPTS[0]], GREEDY.model_copy(update={"stop": ["zzz", stop]}))[0]
    assert got == full[: full.index(stop)] and stop not in got
    assert calls[0] <= 4 < GREEDY.max_new_tokens  # stopped at the stop word, not at max_new_tokens


def test_stop_string_in_one_row_leaves_the_others(llama, tok) -> None:
    full = generate_texts(llama, tok, PROMPTS, GREEDY)
    opts = GREEDY.model_copy(update={"stop": [full[1].split()[2]]})
    assert generate_texts(llama, tok, PROMPTS, opts) == [cut_at_stop(t, opts.stop) for t in full]
    assert generate_texts(llama, tok, PROMPTS, opts) == alone(llama, tok, PROMPTS, opts)


def test_eos_ends_the_text(tok) -> None:
    """A token made the EOS (by the model's generation config) ends the text and generation."""
    model = build_llama()
    full = generate_texts(model, tok, [PROMPTS[0]], GREEDY)[0]
    model.generation_config.eos_token_id = [1, tok.convert_tokens_to_ids(full.split()[2])]
    assert eos_token_ids(model, tok) == [1, tok.convert_tokens_to_ids(full.split()[2])]
    assert generate_texts(model, tok, [PROMPTS[0]], GREEDY)[0] == " ".join(full.split()[:2])


def test_sampling_is_seeded(llama, tok) -> None:
    hot = GenerationOptions(max_new_tokens=8, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    state = torch.get_rng_state()
    first = generate_texts(llama, tok, PROMPTS, hot)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert generate_texts(llama, tok, PROMPTS, hot) == first
    greedy = generate_texts(llama, tok, PROMPTS, GREEDY)
    assert any(generate_texts(llama, tok, PROMPTS, hot.model_copy(update={"seed": s})) != greedy for s in range(3))
    assert generate_texts(llama, tok, PROMPTS, hot.model_copy(update={"seed": 4})) != first


def test_eval_mode_is_restored(tok) -> None:
    model = build_llama().train()
    generate_texts(model, tok, [PROMPTS[0]], GenerationOptions(max_new_tokens=2))
    assert model.training


def test_empty_inputs(llama, tok) -> None:
    assert generate_texts(llama, tok, [], GREEDY) == []
    with pytest.raises(ValueError, match="no tokens"):
        generate_texts(llama, tok, [""], GREEDY)


def test_prompt_tuned_model_generates_batch_independently(tok) -> None:
    """Virtual tokens come in through backbone hooks; generation just calls ``model.generate``."""
    model = build_llama()
    plain = generate_texts(model, tok, PROMPTS, GREEDY)
    apply_methods(model, [PromptTuningConfig(num_virtual_tokens=4, init="random")])
    tuned = generate_texts(model, tok, PROMPTS, GREEDY.model_copy(update={"batch_size": 3}))
    assert tuned == alone(model, tok, PROMPTS, GREEDY) and tuned != plain


# --------------------------------------------------------------------------- streaming

def generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tunelab-generate"]


def test_stream_pieces_join_to_the_greedy_text(llama, tok) -> None:
    for opts in (GREEDY, GREEDY.model_copy(update={"stop": ["w9"]})):
        pieces = list(stream_generate(llama, tok, PROMPTS[1], opts))
        assert len(pieces) > 1 and "".join(pieces) == generate_texts(llama, tok, [PROMPTS[1]], opts)[0]
    assert not generate_threads()


def test_stream_holds_back_a_possible_stop_string(llama, tok) -> None:
    full = generate_texts(llama, tok, [PROMPTS[0]], GREEDY)[0]
    stop = full.split()[2] + " never"  # starts like the output, but never completes
    pieces = list(stream_generate(llama, tok, PROMPTS[0], GREEDY.model_copy(update={"stop": [stop]})))
    assert "".join(pieces) == full
    words = full.split()
    assert f"{words[2]} {words[3]} " in pieces  # the 3rd word is shown only once the 4th rules the stop out


def test_stream_raises_the_thread_exception(tok) -> None:
    model = build_llama()

    def boom(*_: object) -> None:
        raise RuntimeError("forward failed")

    model.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="forward failed"):
        list(stream_generate(model, tok, PROMPTS[0], GREEDY))
    assert not generate_threads()


def test_closing_the_stream_stops_generation(tok) -> None:
    model = build_llama()
    calls = count_forwards(model)
    stream = stream_generate(model, tok, PROMPTS[0], GenerationOptions(max_new_tokens=100))
    next(stream)
    stream.close()
    assert not generate_threads() and calls[0] < 100


# --------------------------------------------------------------------------- chat

class Renderer:
    """Renders messages as ``<bos> role : content ... assistant :`` and remembers what it got."""

    def __init__(self) -> None:
        self.seen: list[list[dict[str, str]]] = []

    def __call__(self, messages: list[dict[str, str]]) -> str:
        self.seen.append([dict(m) for m in messages])
        turns = " ".join(f"{m['role']} : {m['content']}" for m in messages)
        return f"<bos> {turns} assistant :"


def test_chat_session_keeps_the_history(llama, tok) -> None:
    render = Renderer()
    session = ChatSession(llama, tok, render, system_prompt="hello world", opts=GREEDY)
    first = "".join(session.reply("hello"))
    second = "".join(session.reply("the cat"))
    system = {"role": "system", "content": "hello world"}
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first}]
    assert render.seen == [[system, turns[0]], [system, *turns, {"role": "user", "content": "the cat"}]]
    assert session.messages == [*turns, {"role": "user", "content": "the cat"},
                                {"role": "assistant", "content": second}]
    assert second == generate_texts(llama, tok, [render(session.conversation()[:-1])], GREEDY)[0]
    session.reset()
    assert session.messages == [] and session.conversation() == [system]


def scripted(lines: list[str]):
    """An ``input`` stand-in: returns the lines in turn (recording the prompts), then raises EOFError."""
    prompts: list[str] = []
    feed: Iterator[str] = iter(lines)

    def input_fn(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    return input_fn, prompts


def test_chat_loop_transcript(llama, tok) -> None:
    render = Renderer()
    session = ChatSession(llama, tok, render)
    input_fn, prompts = scripted(["hello", "", "/reset", "again"])
    out: list[str] = []
    chat_loop(session, GREEDY, input_fn=input_fn, write=out.append)
    assert prompts == ["you> "] * 5
    transcript = "".join(out)
    answers = transcript.split("\n")
    assert answers[0].startswith("bot> ") and answers[1] == "(history cleared)"
    assert answers[2].startswith("bot> ") and answers[3:] == ["", ""]  # the EOF adds a newline
    again = Renderer()([{"role": "user", "content": "again"}])
    assert answers[2] == "bot> " + generate_texts(llama, tok, [again], GREEDY)[0]
    assert render.seen[1] == [{"role": "user", "content": "again"}]  # /reset dropped "hello"
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert out.count("bot> ") == 2 and len(out) > 6  # answers arrive in pieces


def test_chat_loop_interrupt_stops_only_that_answer(llama, tok) -> None:
    session = ChatSession(llama, tok, Renderer(), opts=GenerationOptions(max_new_tokens=50))
    input_fn, _ = scripted(["hello", "/exit", "never read"])
    out: list[str] = []

    def write(text: str) -> None:
        out.append(text)
        if len(out) == 2:  # Ctrl-C right after the first piece
            raise KeyboardInterrupt

    chat_loop(session, input_fn=input_fn, write=write)
    assert out[0] == "bot> " and out[2:] == [" [stopped]", "\n"]
    assert not generate_threads()
    assert session.messages[0] == {"role": "user", "content": "hello"}
    assert session.messages[1]["content"] == out[1]  # the answer as far as it was shown


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0},
                                 {"top_k": -1}, {"repetition_penalty": 0}, {"batch_size": 0}, {"beams": 2}])
def test_invalid_options(bad) -> None:
    with pytest.raises(ValidationError):
        GenerationOptions(**bad)


def test_option_defaults() -> None:
    opts = GenerationOptions()
    assert (opts.max_new_tokens, opts.temperature, opts.top_p, opts.top_k, opts.stop, opts.batch_size, opts.seed,
            opts.repetition_penalty) == (128, 0.0, 1.0, 0, [], 8, 0, 1.0)
    assert all(f.description for f in GenerationOptions.model_fields.values())
