"""Prompt tuning: trainable virtual-token embeddings prepended to the input, plus the shared hook
machinery of every "virtual token" method (prompt tuning here; prefix tuning and P-tuning v2 in
:mod:`tunelab.methods.prefix`).

**Prompt tuning** -- Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"
(EMNLP 2021, arXiv:2104.08691), sec. 2: the frozen model reads ``[P; X_e]``, the concatenation of
``n`` trainable prompt vectors ``P`` (``n x hidden``) and the embedded input ``X_e``. Only ``P``
trains (plus the task head, as usual in tunelab). Initialisation (sec. 3.2): ``random``, ``vocab``
(rows copied from the embeddings of tokens drawn uniformly from the vocabulary; the paper samples
the 5,000 most frequent tokens, which needs corpus counts we do not have) or ``text`` (the embeddings
of ``init_text``'s tokens, repeated to fill ``n`` rows; the paper initialises from class labels).

How it is wired in
------------------
A virtual-token method is an ``nn.Module`` registered on the model under the method's name (so its
parameters are ``prompt_tuning.*``, ``prefix_tuning.*``, ``ptuning_v2.*``, saved and filtered like any
other) plus a forward pre-hook and a forward hook on the model's *backbone* (``model.base_model``:
``BertModel`` inside ``BertForSequenceClassification``, ``LlamaModel`` inside ``LlamaForCausalLM``).
The engine, ``predict`` and ``generate()`` keep calling the plain model; the hooks rewrite the
backbone's keyword arguments on the way in:

* ``attention_mask`` (2-D) gets ``n`` leading ones: the virtual tokens are always visible. A missing
  mask on a fresh call becomes all ones (BERT sizes its key mask from it).
* *Fresh* calls (no cache, or an empty ``Cache`` as ``generate()`` passes on its first step) receive
  the virtual tokens: prompt tuning replaces ``input_ids`` by ``inputs_embeds = [P; embed(input_ids)]``
  and extends ``token_type_ids`` with zeros; prefix methods put their per-layer key/value prefixes
  into the ``Cache`` (:mod:`tunelab.methods.prefix`). Later decoding steps find them in the cache and
  only get the mask extension.
* Positions follow peft 0.21.2 (so logits agree): with no ``position_ids`` the model numbers the
  longer sequence itself (prompt tuning: virtual tokens 0..n-1, text from n; prefix methods: the
  cache already holds n entries, so BERT and Llama both number the text from n). Explicit
  ``position_ids`` (``generate()`` passes them) are shifted by ``n``, and prompt tuning prepends
  ``0..n-1`` on a fresh call, so left-padded rows are numbered as if unpadded.
* The forward hook drops the ``n`` virtual positions from ``last_hidden_state`` again, so every
  head sees one state per *input* token: causal-LM logits line up with ``labels`` (no ``-100``
  padding needed) and the LM loss has the terms it has without virtual tokens (peft's prompt
  tuning also lets the last virtual token predict the first text token; SFT masks that label
  anyway), ``LlamaForSequenceClassification`` finds the last non-pad token from ``input_ids`` as
  usual. BERT's pooler has already read position 0 (the first virtual token, as in
  peft). ``hidden_states`` / ``attentions`` tuples, when requested, keep the virtual positions.

Two virtual-token methods cannot be combined (both would claim the first positions and the cache);
that is a :class:`~tunelab.errors.UserError`. The hooks hold no reference to the model, so
``model.eval()`` / ``train()``, ``deepcopy`` and accelerate's wrappers leave them working.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tunelab.errors import UserError
from tunelab.methods.base import MethodConfig, MethodSpec


class VirtualTokenOptions(MethodConfig):
    """Options every virtual-token method has."""

    num_virtual_tokens: int = Field(
        20, ge=1, description="Number of virtual tokens n (prompt length / prefix length)."
    )


class PromptTuningConfig(VirtualTokenOptions):
    """Lester et al. (2021) soft prompts: ``n`` trainable input embeddings before the text."""

    name: Literal["prompt_tuning"] = Field(
        "prompt_tuning", description="Method name: trainable soft-prompt embeddings prepended to the input."
    )
    init: Literal["random", "vocab", "text"] = Field(
        "vocab",
        description="How the prompt starts. 'random': normal with the standard deviation of the model's "
        "token embeddings (so virtual tokens start at the scale of real ones). 'vocab': copies of the "
        "embeddings of n tokens drawn uniformly from the vocabulary. 'text': the embeddings of "
        "init_text's tokens (no special tokens), repeated to fill n rows. Lester et al. find "
        "vocabulary/text initialisation better than random, mainly for smaller models.",
    )
    init_text: str | None = Field(
        None, description="Text whose token embeddings initialise the prompt (required with init: text)."
    )
    init_tokenizer: str | None = Field(
        None,
        description="Tokenizer for init_text (a folder or built-in alias). Default: the tokenizer of the "
        "model being adapted, found from its config's _name_or_path -- the run's own tokenizer.",
    )

    @model_validator(mode="after")
    def _text_init(self) -> PromptTuningConfig:
        """``init: text`` needs a non-empty ``init_text``; ``init_text`` is only read by ``init: text``."""
        if self.init == "text" and not (self.init_text and self.init_text.strip()):
            raise ValueError("init: text needs a non-empty init_text")
        if self.init != "text" and self.init_text is not None:
            raise ValueError(f"init_text is only used with init: text (init is {self.init!r})")
        return self


# --------------------------------------------------------------------------- shared hook machinery

def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer trunk that embeds tokens and owns the attention cache (HF ``base_model``)."""
    return getattr(model, "base_model", model)


@functools.cache
def _positional_names(cls: type[nn.Module]) -> tuple[str, ...]:
    """Names of ``cls.forward``'s positional parameters, in order (to name positional args)."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]  # drop self
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def _accepts(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(type(module).forward).parameters


def _is_fresh(cache: Any) -> bool:
    """True when no virtual tokens can be in the cache yet: no cache, or an empty one."""
    if cache is None:
        return True
    if not hasattr(cache, "get_seq_length"):
        raise ValueError("virtual-token methods need past_key_values as a transformers Cache object, "
                         f"got {type(cache).__name__}")
    return cache.get_seq_length() == 0


class VirtualTokens(nn.Module):
    """Base of the virtual-token methods: owns ``n`` and rewrites the backbone's inputs via hooks.

    Subclasses implement :meth:`inject` (put the virtual tokens into a fresh call) and may override
    :meth:`shift_positions`. Each instance is registered on the model under :attr:`method`.
    """

    method = "virtual_tokens"
    tunelab_virtual_tokens = True
    """Capability marker: this module's trainable tokens enter every layer (no layer output is fixed)."""
    needs = "inputs_embeds"
    """Backbone ``forward`` argument the method cannot work without."""

    def __init__(self, num_virtual_tokens: int) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self._trim = 0  # virtual positions to drop from this call's last_hidden_state
        self._own_cache = False  # this call's cache was made by inject(), not passed by the caller

    # ------------------------------------------------------------------ installation
    def attach(self, model: nn.Module) -> None:
        """Register on ``model`` and hook its backbone; refuse a second virtual-token method."""
        others = [m.method for m in model.modules() if isinstance(m, VirtualTokens)]
        if others:
            raise UserError(
                f"method '{self.method}' cannot be combined with '{others[0]}': both put virtual tokens in "
                "front of the input (positions, attention mask and cache); choose one of them"
            )
        backbone = backbone_of(model)
        if not _accepts(backbone, self.needs):
            raise UserError(
                f"method '{self.method}' needs a backbone whose forward takes '{self.needs}'; "
                f"{type(backbone).__name__} does not (use lora or adapter instead)"
            )
        model.add_module(self.method, self)
        backbone.register_forward_pre_hook(self._before, with_kwargs=True)
        backbone.register_forward_hook(self._after, with_kwargs=True)

    # ------------------------------------------------------------------ hooks
    def _before(self, backbone: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        """Forward pre-hook: extend the mask and positions, add the virtual tokens on a fresh call."""
        kwargs = dict(kwargs)
        names = _positional_names(type(backbone))
        if len(args) > len(names):
            raise TypeError(f"{type(backbone).__name__} got {len(args)} positional arguments")
        kwargs.update(zip(names, args))
        ref = kwargs.get("inputs_embeds")
        ref = kwargs.get("input_ids") if ref is None else ref
        batch, length = ref.shape[0], ref.shape[1]
        fresh = _is_fresh(kwargs.get("past_key_values"))
        kwargs["attention_mask"] = self._extend_mask(kwargs.get("attention_mask"), batch, length, fresh, ref.device)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = self.shift_positions(kwargs["position_ids"], fresh)
        self._trim, self._own_cache = 0, kwargs.get("past_key_values") is None
        if fresh:
            self.inject(backbone, kwargs, batch)
        return (), kwargs

    def _after(self, backbone: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        """Forward hook: drop the virtual positions from ``last_hidden_state`` (see module docstring),
        and a cache the call did not ask for (``use_cache=False``) that only holds our prefixes --
        ``generate(use_cache=False)`` would otherwise feed it back on the next step."""
        n, self._trim = self._trim, 0
        own_cache, self._own_cache = self._own_cache, False
        if isinstance(output, tuple) and not hasattr(output, "keys"):
            return (output[0][:, n:], *output[1:]) if n else output
        if n:
            output.last_hidden_state = output.last_hidden_state[:, n:]
        if own_cache and kwargs.get("use_cache") is False and getattr(output, "past_key_values", None) is not None:
            output.past_key_values = None
        return output

    def _extend_mask(self, mask: torch.Tensor | None, batch: int, length: int, fresh: bool,
                     device: torch.device) -> torch.Tensor | None:
        """``n`` leading ones on a 2-D mask; all ones for a fresh call without one."""
        if mask is None:
            if not fresh:
                return None  # decoding: the model sizes the mask from the cache
            mask = torch.ones(batch, length, dtype=torch.long, device=device)
        if mask.dim() != 2:
            raise ValueError(f"method '{self.method}' needs a 2-D attention mask (batch x tokens), "
                             f"got shape {tuple(mask.shape)}")
        ones = mask.new_ones(mask.shape[0], self.num_virtual_tokens)
        return torch.cat([ones, mask], dim=1)

    def shift_positions(self, position_ids: torch.Tensor, fresh: bool) -> torch.Tensor:
        """Text positions start after the ``n`` virtual tokens."""
        return position_ids + self.num_virtual_tokens

    def inject(self, backbone: nn.Module, kwargs: dict[str, Any], batch: int) -> None:
        """Add the virtual tokens to a fresh call's keyword arguments (in place)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- prompt tuning

class PromptEmbedding(VirtualTokens):
    """``n`` trainable rows ``prompt_embeddings`` placed before the embedded input (Lester et al., sec. 2)."""

    method = "prompt_tuning"
    needs = "inputs_embeds"

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__(init.shape[0])
        self.prompt_embeddings = nn.Parameter(init.detach().clone())

    def shift_positions(self, position_ids: torch.Tensor, fresh: bool) -> torch.Tensor:
        """Text from ``n`` on; on a fresh call the prompt itself takes positions ``0..n-1``."""
        shifted = position_ids + self.num_virtual_tokens
        if not fresh:
            return shifted
        prompt = torch.arange(self.num_virtual_tokens, dtype=position_ids.dtype, device=position_ids.device)
        prompt = prompt.expand(*position_ids.shape[:-1], -1)
        return torch.cat([prompt, shifted], dim=-1)

    def inject(self, backbone: nn.Module, kwargs: dict[str, Any], batch: int) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = backbone.get_input_embeddings()(kwargs["input_ids"])
        prompt = self.prompt_embeddings.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        kwargs["input_ids"] = None
        types = kwargs.get("token_type_ids")
        if types is not None:
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], self.num_virtual_tokens), types], 1)
        self._trim = self.num_virtual_tokens

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, hidden={self.prompt_embeddings.shape[1]}"


def _init_tokenizer(model: nn.Module, cfg: PromptTuningConfig):
    """The tokenizer for ``init_text``: ``cfg.init_tokenizer``, else the model's own (config path)."""
    from tunelab.models.loading import load_tokenizer, resolve_model

    if cfg.init_tokenizer:
        return load_tokenizer(resolve_model(cfg.init_tokenizer))
    path = getattr(getattr(model, "config", None), "_name_or_path", "")
    if not path:
        raise UserError("prompt_tuning.init: text needs a tokenizer, but the model has no _name_or_path; "
                        "set prompt_tuning.init_tokenizer to a tokenizer folder")
    return load_tokenizer(path)


def initial_prompt(model: nn.Module, cfg: PromptTuningConfig) -> torch.Tensor:
    """The starting ``n x hidden`` prompt for ``cfg.init`` (drawn from the global torch RNG)."""
    table = model.get_input_embeddings().weight.detach()
    n, vocab = cfg.num_virtual_tokens, table.shape[0]
    if cfg.init == "random":
        # The embedding matrix's own scale: a unit-variance row among ~0.02-scale BERT embeddings
        # would dominate attention and saturate the embedding LayerNorm from step 0.
        std = table.float().std().item()
        return torch.randn(n, table.shape[1], device=table.device).mul_(std).to(table.dtype)
    if cfg.init == "vocab":
        ids = torch.randperm(vocab)[:n] if n <= vocab else torch.randint(0, vocab, (n,))
    else:
        ids = torch.tensor(_init_tokenizer(model, cfg)(cfg.init_text, add_special_tokens=False)["input_ids"])
        if ids.numel() == 0:
            raise UserError(f"prompt_tuning.init_text {cfg.init_text!r} has no tokens")
        if int(ids.max()) >= vocab:
            raise UserError(f"prompt_tuning.init_text: token id {int(ids.max())} is outside the model's "
                            f"vocabulary of {vocab}; does init_tokenizer belong to this model?")
        ids = ids.repeat((n + ids.numel() - 1) // ids.numel())[:n]
    return table[ids.to(table.device)].clone()


def prompt_modules(model: nn.Module) -> list[VirtualTokens]:
    """Every virtual-token method module in ``model`` (at most one after ``apply``)."""
    return [m for m in model.modules() if isinstance(m, VirtualTokens)]


def apply(model: nn.Module, cfg: MethodConfig) -> None:
    """Register a :class:`PromptEmbedding` on ``model`` and hook its backbone; only the prompt trains."""
    assert isinstance(cfg, PromptTuningConfig)
    prompt = PromptEmbedding(initial_prompt(model, cfg))
    prompt.attach(model)
    prompt.prompt_embeddings.requires_grad_(True)


VIRTUAL_TOKENS_NOT_SWAPPABLE = "adds virtual tokens through hooks on the backbone"
"""Why no virtual-token method can share a base in an adapter set (its hooks rewrite the inputs)."""

SPEC = MethodSpec(
    name="prompt_tuning",
    config_cls=PromptTuningConfig,
    apply=apply,
    description="Prompt tuning: n trainable soft-prompt embeddings prepended to the input embeddings.",
    paper="Lester et al., 2021, The Power of Scale for Parameter-Efficient Prompt Tuning, arXiv:2104.08691",
    virtual_tokens=True,
    why_not_swappable=VIRTUAL_TOKENS_NOT_SWAPPABLE,
    peft_type="PROMPT_TUNING",
)
