"""Text generation with causal LMs: batched generation, streaming, and an interactive chat loop.

Everything goes through ``model.generate``, so models whose backbone is rewritten by forward hooks
(prompt tuning, prefix tuning, P-tuning v2: :mod:`tunelab.methods.prompt`) generate as they train.

Conventions
-----------
* Prompts are **fully rendered** strings: the caller has applied any chat template, and the
  rendering already contains the BOS token if the model wants one. Prompts are therefore encoded
  with ``add_special_tokens=False`` (otherwise a template that writes BOS would get a second one).
* Batches are padded on the **left** (decoder-only models continue from the last position of every
  row). The padding is done here, from the token ids, so the tokenizer is never modified and need
  not have a pad token; its ``padding_side`` is left as it is.
* End of sequence: any of the ids in ``model.generation_config.eos_token_id`` plus
  ``tokenizer.eos_token_id`` (a chat-tuned tokenizer's end-of-turn token and the base model's EOS
  both end a reply). Only the new text is returned, decoded with ``skip_special_tokens=True``.
* Stop strings are matched on the *decoded* new text, by a stopping criterion that decodes every
  row after each step; the returned text is cut before the first stop string. (transformers'
  own ``stop_strings=`` needs a tokenizer that can encode the probe text ``"abcdef"``; word-level
  and other vocabularies with an unknown token fail inside it, and it matches on vocabulary strings
  that can differ from the decoded text.)
* Decoding is fully set by :class:`GenerationOptions`: ``temperature == 0`` is greedy, otherwise
  multinomial sampling with temperature / top-k / top-p (the model's own sampling defaults, e.g.
  ``min_p`` or ``typical_p`` from its ``generation_config.json``, are switched off).
* Sampling is seeded: the global torch RNG is seeded with ``opts.seed`` inside
  ``torch.random.fork_rng`` around each call (``generate`` accepts no ``torch.Generator``), so a
  call is reproducible and the caller's RNG state is left untouched. With several batches the
  batches continue one random stream, so sampled outputs depend on the batching; greedy outputs
  do not (left padding is masked and position ids skip the padding).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

Message = dict[str, str]


class GenerationOptions(BaseModel):
    """How to decode: length, sampling, stop strings, batching and seed."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1, description="Most tokens generated per prompt (the prompt not counted).")
    temperature: float = Field(
        0.0, ge=0.0, description="Sampling temperature; 0 means greedy decoding (always the most likely token)."
    )
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling: sample from the smallest set of tokens whose "
        "probabilities add up to top_p (1.0 = off). Only used when temperature > 0."
    )
    top_k: int = Field(
        0, ge=0, description="Sample from the top_k most likely tokens only (0 = off). Only used when temperature > 0."
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Stop strings: generation of a prompt ends once its new text contains one, and the "
        "returned text is cut before the first of them.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts generated together in one padded batch.")
    seed: int = Field(0, description="Seed of the torch RNG for sampling (set around each call).")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="Penalty for tokens already in the prompt or output (CTRL-style; 1.0 = off, >1 "
        "discourages repeats)."
    )


# --------------------------------------------------------------------------- stop strings

def _find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the first stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to (not including) the first stop string it contains."""
    cut = _find_stop(text, stops)
    return text if cut is None else text[:cut]


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class StopOnText(StoppingCriteria):
    """Finish a row once its decoded new text contains a stop string.

    ``prompt_len`` is the (padded) prompt width: columns after it are the generated tokens.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        done = [_find_stop(t, self.stops) is not None for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _Cancelled(StoppingCriteria):
    """Finish every row once ``event`` is set (a streaming consumer went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# --------------------------------------------------------------------------- generate() arguments

def eos_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the model's ``generation_config`` ones, then the tokenizer's, deduplicated."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    found = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        found.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in found))


def _pad_id(model: nn.Module, tokenizer: Any, eos: list[int]) -> int:
    """Id for padding: tokenizer's pad, else the model's pad, else the first EOS, else 0 (always masked)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    config_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if config_pad is not None:
        return int(config_pad)
    return eos[0] if eos else 0


def decoding_kwargs(opts: GenerationOptions) -> dict[str, Any]:
    """``generate`` keyword arguments for the decoding strategy of ``opts``."""
    kwargs: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens, "repetition_penalty": opts.repetition_penalty}
    if opts.temperature == 0.0:
        return {**kwargs, "do_sample": False}
    return {**kwargs, "do_sample": True, "temperature": opts.temperature, "top_p": opts.top_p,
            "top_k": opts.top_k, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


def _device(model: nn.Module) -> torch.device:
    return getattr(model, "device", None) or next(model.parameters()).device


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for token id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _encode(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts (no special tokens added); an empty encoding is a ValueError."""
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for prompt, row in zip(prompts, rows):
        if not row:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens; generation needs at least one")
    return rows


def _cuda_devices(model: nn.Module) -> list[int]:
    """CUDA device indices holding the model's parameters (their RNGs are forked too)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def _seeded(model: nn.Module, seed: int) -> Iterator[None]:
    """Seed the torch RNGs with ``seed`` inside, and give the caller's RNG states back afterwards."""
    with torch.random.fork_rng(devices=_cuda_devices(model)):
        torch.manual_seed(seed)
        yield


def _run_generate(model: nn.Module, inputs: dict[str, torch.Tensor], opts: GenerationOptions,
                  criteria: list[StoppingCriteria], **kwargs: Any) -> torch.Tensor:
    """``model.generate`` in eval mode (the previous mode is restored) under inference mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model.generate(**inputs, stopping_criteria=StoppingCriteriaList(criteria),
                                  **decoding_kwargs(opts), **kwargs)
    finally:
        model.train(was_training)


def _new_ids(row: torch.Tensor, eos: list[int]) -> list[int]:
    """Generated ids of one row, up to (not including) the first EOS."""
    ids = row.tolist()
    ends = [ids.index(e) for e in eos if e in ids]
    return ids[: min(ends)] if ends else ids


# --------------------------------------------------------------------------- public API

def generate_texts(model: nn.Module, tokenizer: Any, prompts: list[str], opts: GenerationOptions) -> list[str]:
    """Continue every rendered prompt; returns the new text of each, in the order of ``prompts``.

    Prompts are sorted by length and generated ``opts.batch_size`` at a time with left padding.
    Each text is cut at its first EOS and before its first stop string; a row stops generating once
    it reaches either, and a batch once every row has.
    """
    if not prompts:
        return []
    eos = eos_token_ids(model, tokenizer)
    pad_id = _pad_id(model, tokenizer, eos)
    rows = _encode(tokenizer, prompts)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    texts: dict[int, str] = {}
    with _seeded(model, opts.seed):  # later batches continue this random stream
        for start in range(0, len(order), opts.batch_size):
            chunk = order[start:start + opts.batch_size]
            inputs = _left_pad([rows[i] for i in chunk], pad_id, _device(model))
            width = inputs["input_ids"].shape[1]
            criteria: list[StoppingCriteria] = [StopOnText(tokenizer, opts.stop, width)] if opts.stop else []
            out = _run_generate(model, inputs, opts, criteria, eos_token_id=eos or None, pad_token_id=pad_id)
            decoded = tokenizer.batch_decode([_new_ids(r, eos) for r in out[:, width:]], skip_special_tokens=True)
            texts.update({i: cut_at_stop(t, opts.stop) for i, t in zip(chunk, decoded)})
    return [texts[i] for i in range(len(prompts))]


def stream_generate(model: nn.Module, tokenizer: Any, prompt: str, opts: GenerationOptions) -> Iterator[str]:
    """Yield the new text of one rendered prompt piece by piece, as it is generated.

    ``generate`` runs in a background thread feeding a ``TextIteratorStreamer``. Text that could be
    the start of a stop string is held back until it is known not to be one, so the pieces join to
    the text :func:`generate_texts` returns. An exception in the thread is raised here; closing the
    iterator early (or an interrupt while waiting) stops generation after the current step, and the
    thread is always joined before this generator ends.
    """
    eos = eos_token_ids(model, tokenizer)
    pad_id = _pad_id(model, tokenizer, eos)
    inputs = _left_pad(_encode(tokenizer, [prompt]), pad_id, _device(model))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    criteria: list[StoppingCriteria] = [_Cancelled(cancel)]
    if opts.stop:
        criteria.append(StopOnText(tokenizer, opts.stop, inputs["input_ids"].shape[1]))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with _seeded(model, opts.seed):
                _run_generate(model, inputs, opts, criteria, streamer=streamer, eos_token_id=eos or None,
                              pad_token_id=pad_id)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the consumer thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="tunelab-generate", daemon=True)
    thread.start()
    try:
        text, shown = "", 0
        for piece in streamer:
            text += piece
            cut = _find_stop(text, opts.stop)
            safe = text[:cut] if cut is not None else text[:len(text) - _held_back(text, opts.stop)]
            if len(safe) > shown:
                yield safe[shown:]
                shown = len(safe)
            if cut is not None:
                break
        else:
            if len(text) > shown:
                yield text[shown:]
    finally:
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]


class ChatSession:
    """A conversation with a model: the message history and how to render it into a prompt.

    ``render`` turns ``[system?] + history + [new user turn]`` (dicts with ``role`` / ``content``)
    into the full prompt text, generation prompt included (e.g. ``tokenizer.apply_chat_template(
    messages, tokenize=False, add_generation_prompt=True)``). ``messages`` holds the user and
    assistant turns only; the system prompt is kept apart so :meth:`reset` keeps it.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, render: Callable[[list[Message]], str],
                 system_prompt: str | None = None, opts: GenerationOptions | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.render = render
        self.system_prompt = system_prompt
        self.opts = opts or GenerationOptions()
        self.messages: list[Message] = []

    def conversation(self, user_text: str | None = None) -> list[Message]:
        """System prompt (if any), history, and ``user_text`` as a new user turn (if given)."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        user = [{"role": "user", "content": user_text}] if user_text is not None else []
        return [*system, *self.messages, *user]

    def reply(self, user_text: str, opts: GenerationOptions | None = None) -> Iterator[str]:
        """Stream the assistant's answer to ``user_text``; both turns join the history at the end.

        If the consumer stops early (closes the iterator, or ``KeyboardInterrupt``), the history keeps
        the user turn and the part of the answer produced so far. On an error it is left unchanged.
        """
        prompt = self.render(self.conversation(user_text))
        pieces: list[str] = []
        try:
            with contextlib.closing(stream_generate(self.model, self.tokenizer, prompt, opts or self.opts)) as stream:
                for piece in stream:
                    pieces.append(piece)
                    yield piece
        except (GeneratorExit, KeyboardInterrupt):
            self._record(user_text, "".join(pieces))
            raise
        self._record(user_text, "".join(pieces))

    def _record(self, user_text: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = []


def _echo(text: str) -> None:
    """Write to stdout at once (no newline added)."""
    print(text, end="", flush=True)


EXIT_COMMANDS = ("/exit", "/quit")


def chat_loop(session: ChatSession, opts: GenerationOptions | None = None, input_fn: Callable[[str], str] = input,
              write: Callable[[str], object] = _echo) -> None:
    """Interactive chat: read a line after ``you> ``, stream the answer after ``bot> ``.

    ``write`` receives each piece of output as it comes, newlines included (the default prints it
    and flushes). Commands: ``/reset`` clears the history; ``/exit``, ``/quit``, end of input
    (Ctrl-D) or Ctrl-C at the prompt end the loop. Ctrl-C while an answer streams stops that
    answer and returns to the prompt; empty lines are ignored.
    """
    while True:
        try:
            line = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not line:
            continue
        if line in EXIT_COMMANDS:
            return
        if line == "/reset":
            session.reset()
            write("(history cleared)\n")
            continue
        write("bot> ")
        try:
            with contextlib.closing(session.reply(line, opts)) as answer:
                for piece in answer:
                    write(piece)
        except KeyboardInterrupt:
            write(" [stopped]")
        write("\n")
