"""Batched generation for the server: many requests in one ``model.generate`` call, each row with
its own length limit, stop strings, sampling settings, seed and output stream.

``generate`` runs greedy decoding over a left-padded batch with the KV cache. Per-row behaviour is
added through its three extension points:

* :class:`RowSampler` (a logits processor) samples the rows that asked for sampling with their own
  temperature, top-p and ``torch.Generator``, and leaves only the drawn token possible, so the
  greedy step picks it. A request's sampled text therefore depends on its seed alone, not on the
  other requests in its batch. Greedy rows (temperature 0) are untouched, so they produce the
  tokens ``tunelab generate`` produces.
* :class:`RowTracker` (a streamer and a stopping criterion) receives every new token, keeps each
  row's tokens, decodes them, emits the new text (holding back text that may be the start of a
  stop string, or an incomplete UTF-8 character), and marks a row finished at its EOS, its first
  stop string, its ``max_new_tokens`` or when its client went away. ``generate`` stops a finished
  row (it only pads it from then on), and the batch once every row is finished.

The conventions are those of :mod:`tunelab.generation` (rendered prompts encoded without special
tokens, left padding built from the ids, EOS ids from the model and the tokenizer, new text decoded
with ``skip_special_tokens``), which is what makes a greedy row equal ``tunelab generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tunelab.generation import _device, _find_stop, _held_back, _left_pad, _pad_id, cut_at_stop, eos_token_ids


@dataclass
class GenRow:
    """One sequence to generate, and (after :func:`generate_rows`) what came of it."""

    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    emit: Callable[[str], None] | None = None
    """Called with each new piece of text as it is generated (streaming), else None."""
    cancelled: Callable[[], bool] = lambda: False
    """True once nobody waits for this row any more (its client disconnected)."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    """``stop`` (EOS or a stop string), ``length`` (max_new_tokens) or ``cancelled``."""


class RowSampler(LogitsProcessor):
    """Per-row temperature / top-p sampling inside a greedy ``generate`` (see the module docstring)."""

    def __init__(self, rows: list[GenRow], done: list[bool]) -> None:
        self.rows = rows
        self.done = done
        self.generators = [torch.Generator().manual_seed(int(r.seed)) if r.temperature > 0 else None for r in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, (row, gen) in enumerate(zip(self.rows, self.generators)):
            if gen is None or self.done[i]:
                continue
            token = sample_token(scores[i], row.temperature, row.top_p, gen)
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Draw one token id from ``softmax(logits / temperature)`` restricted to the top-p nucleus
    (the smallest set of most likely tokens whose probabilities reach ``top_p``; Holtzman et al., 2020)."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= top_p] = 0.0  # the first token is always kept (before = 0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class RowTracker(BaseStreamer, StoppingCriteria):
    """Collects each row's tokens as ``generate`` makes them; emits text; decides when rows end."""

    def __init__(self, tokenizer: Any, rows: list[GenRow], eos: list[int]) -> None:
        self.tokenizer = tokenizer
        self.rows = rows
        self.eos = set(eos)
        self.done = [False] * len(rows)
        self.shown = [0] * len(rows)
        self._prompt_seen = False

    # -- BaseStreamer: generate calls put() with the prompt ids once, then with each step's tokens
    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()
        for i, (row, token) in enumerate(zip(self.rows, tokens)):
            if self.done[i]:
                continue
            if row.cancelled():
                self._finish(i, "cancelled")
                continue
            if token in self.eos:
                self._finish(i, "stop")
                continue
            row.tokens.append(int(token))
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = _find_stop(text, row.stop)
            if cut is not None:
                self._emit(i, text[:cut])
                self._finish(i, "stop")
            elif len(row.tokens) >= row.max_new_tokens:
                self._finish(i, "length")
            else:
                self._emit(i, text, final=False)

    def end(self) -> None:
        for i in range(len(self.rows)):
            if not self.done[i]:
                self._finish(i, "length")

    # -- StoppingCriteria: rows finished above stop generating
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        for i, row in enumerate(self.rows):
            if not self.done[i] and row.cancelled():
                self._finish(i, "cancelled")
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _emit(self, i: int, text: str, final: bool = True) -> None:
        """Send row ``i``'s text beyond what it was shown; unless ``final``, keep back a possible
        start of a stop string and an unfinished multi-byte character."""
        row = self.rows[i]
        if not final:
            text = text[:len(text) - _held_back(text, row.stop)]
            text = text.rstrip("\ufffd")
        if len(text) > self.shown[i] and row.emit is not None:
            row.emit(text[self.shown[i]:])
        self.shown[i] = max(self.shown[i], len(text))

    def _finish(self, i: int, reason: str) -> None:
        row = self.rows[i]
        row.text = cut_at_stop(self.tokenizer.decode(row.tokens, skip_special_tokens=True), row.stop)
        if reason != "cancelled":
            self._emit(i, row.text)
        row.finish_reason = reason
        self.done[i] = True


def generate_rows(model: nn.Module, tokenizer: Any, rows: list[GenRow]) -> None:
    """Generate every row in one batch (see the module docstring); fills ``tokens``, ``text`` and
    ``finish_reason`` of each row and calls its ``emit`` as text arrives."""
    if not rows:
        return
    eos = eos_token_ids(model, tokenizer)
    pad_id = _pad_id(model, tokenizer, eos)
    inputs = _left_pad([r.ids for r in rows], pad_id, _device(model))
    tracker = RowTracker(tokenizer, rows, eos)
    sampler = RowSampler(rows, tracker.done)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=max(r.max_new_tokens for r in rows), do_sample=False,
                           repetition_penalty=1.0, logits_processor=LogitsProcessorList([sampler]),
                           stopping_criteria=StoppingCriteriaList([tracker]), streamer=tracker,
                           eos_token_id=eos or None, pad_token_id=pad_id)
    finally:
        model.train(was_training)
    tracker.end()
