"""Conversations -> token ids and loss labels, through a chat template.

A template renders a :class:`~tunelab.data.conversations.Conversation` as one string plus the
character spans of the assistant turns (what the model learns to write). Tokenising with offsets
then labels exactly the tokens that start inside those spans; every other label is ``-100``
(ignored by the loss) unless ``train_on_prompt`` is set. The end-of-turn / EOS token is inside the
span, so a trained model learns to stop.

Templates (``task.template``):

* ``chat`` -- the tokenizer's own chat template (``apply_chat_template``); spans are found by
  rendering each prefix of the conversation, which must render as a prefix of the whole (true of
  ChatML, Llama, Mistral, ... templates; a template that is not is refused in one line);
* ``alpaca`` -- the Alpaca prompt (Taori et al., 2023) with ``### Instruction:`` /
  ``### Response:`` headers, the response followed by the EOS token;
* ``auto`` -- ``chat`` when the tokenizer has a chat template, else ``alpaca``;
* anything else is a user template: a string containing ``{prompt}`` (a user turn's text) and
  optionally ``{system}``; each assistant turn is appended after it, followed by EOS.

Plain-text documents (``text`` format) are the document plus EOS, all trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.conversations import Conversation
from tunelab.errors import UserError

IGNORE = -100
ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
ALPACA_TURN = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass(frozen=True)
class Rendered:
    """A rendered example: the text and the ``[start, end)`` character spans to train on."""

    text: str
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Template:
    """How conversations become text: ``kind`` is chat, alpaca or user (with ``pattern``)."""

    kind: str
    pattern: str = ""

    @classmethod
    def resolve(cls, name: str, tokenizer: Any) -> Template:
        """``auto`` / ``chat`` / ``alpaca`` / a user pattern containing ``{prompt}``."""
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if name == "auto":
            return cls("chat") if has_chat else cls("alpaca")
        if name == "chat":
            if not has_chat:
                raise UserError("task.template=chat but the tokenizer has no chat template; use "
                                "task.template=alpaca or a template string containing {prompt}")
            return cls("chat")
        if name == "alpaca":
            return cls("alpaca")
        if "{prompt}" not in name:
            raise UserError(f"task.template {name!r} is not auto, chat or alpaca, and as a template string "
                            "it lacks the {prompt} placeholder (e.g. 'Question: {prompt}\\nAnswer: ')")
        try:
            name.format(prompt="", system="")
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"task.template {name!r}: only the placeholders {{prompt}} and {{system}} "
                            f"are allowed ({e})") from None
        return cls("user", name)

    # ------------------------------------------------------------------ rendering
    def render(self, conv: Conversation, tokenizer: Any) -> Rendered:
        """The whole example with its trainable spans."""
        eos = tokenizer.eos_token or ""
        if conv.is_text:
            return Rendered(conv.text + eos, ((0, len(conv.text) + len(eos)),))
        if self.kind == "chat":
            return self._render_chat(conv.messages, tokenizer)
        text, spans = "", []
        for i, turn in enumerate(conv.messages):
            if turn["role"] == "assistant":
                piece = turn["content"] + eos
                spans.append((len(text), len(text) + len(piece)))
                text += piece
            elif turn["role"] == "user":
                text += self._user_turn(turn["content"], conv.messages, first=not text)
        return Rendered(text, tuple(spans))

    def prompt(self, messages: list[dict[str, str]], tokenizer: Any) -> str:
        """The text a model continues to answer the last user turn (generation prompt included)."""
        if self.kind == "chat":
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered = self.render(Conversation(messages=[*messages, {"role": "assistant", "content": ""}]), tokenizer)
        return rendered.text[: rendered.spans[-1][0]]

    def _system(self, messages: list[dict[str, str]]) -> str:
        return messages[0]["content"] if messages and messages[0]["role"] == "system" else ""

    def _user_turn(self, content: str, messages: list[dict[str, str]], first: bool) -> str:
        system = self._system(messages)
        if self.kind == "alpaca":
            head = f"{system or ALPACA_SYSTEM}\n\n" if first else "\n\n"
            return head + ALPACA_TURN.format(prompt=content)
        return self.pattern.format(prompt=content, system=system if first else "")

    def _render_chat(self, messages: list[dict[str, str]], tokenizer: Any) -> Rendered:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, turn in enumerate(messages):
            if turn["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
                raise UserError("the tokenizer's chat template does not render a conversation's beginning "
                                "as a prefix of the whole, so the response tokens cannot be located; use "
                                "task.template=alpaca or a template string containing {prompt}")
            spans.append((len(before), len(through)))
        return Rendered(full, tuple(spans))


# ---------------------------------------------------------------------------- tokens

def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front by itself (Llama 2 style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def tokenize(rendered: Rendered, tokenizer: Any, *, train_on_prompt: bool, template: Template,
             add_bos: bool | None = None) -> dict[str, list[int]]:
    """``input_ids`` and ``labels``: a token is trained when its first character lies in a span.

    Chat templates write their own BOS (if any); for the others the tokenizer's usual BOS is added
    (``add_bos``: :func:`adds_bos`, worked out here unless the caller did so once for many rows).
    """
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    trained = [any(a <= start < b for a, b in rendered.spans) for start, _ in offsets]
    labels = [t if (train_on_prompt or keep) else IGNORE for t, keep in zip(ids, trained)]
    if template.kind != "chat" and (adds_bos(tokenizer) if add_bos is None else add_bos):
        ids, labels = [tokenizer.bos_token_id, *ids], [IGNORE, *labels]
    return {"input_ids": ids, "labels": labels}


def truncate(example: dict[str, list[int]], max_length: int, policy: str) -> dict[str, list[int]] | None:
    """Fit ``max_length`` tokens: ``right`` keeps the start, ``left`` keeps the end (the response),
    ``drop`` discards the example. None when nothing trainable would be left."""
    ids, labels = example["input_ids"], example["labels"]
    if len(ids) > max_length:
        if policy == "drop":
            return None
        sl = slice(0, max_length) if policy == "right" else slice(len(ids) - max_length, None)
        ids, labels = ids[sl], labels[sl]
    if all(label == IGNORE for label in labels[1:]):  # the first label is never predicted
        return None
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
