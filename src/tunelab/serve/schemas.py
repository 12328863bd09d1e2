"""Request bodies of the server's endpoints (OpenAI's field names and defaults) and its limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ServeLimits(BaseModel):
    """What one request (and the queue) may ask for; breaking a limit is a 4xx, never a crash."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body (413 above it).")
    max_prompt_tokens: int = Field(2048, ge=1, description="Most tokens in one rendered prompt (400 above it).")
    max_tokens: int = Field(512, ge=1, description="Most new tokens a request may ask for (max_tokens; 400 above it); "
                                                   "also the default when a request gives none.")
    max_n: int = Field(4, ge=1, description="Most choices per request (n; 400 above it).")
    max_inputs: int = Field(256, ge=1, description="Most texts or images in one embeddings/classify request.")
    max_queue: int = Field(64, ge=1, description="Most rows of work waiting; a request beyond it gets 429 with "
                                                 "Retry-After.")
    max_batch_size: int = Field(8, ge=1, description="Most rows in one forward pass (dynamic batching).")
    batch_wait_ms: float = Field(10.0, ge=0, description="How long the oldest request waits for others to batch "
                                                         "with.")


Content = str | list[dict[str, Any]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: Content | None = None

    def text(self) -> str:
        """The message's text (text parts of a list content joined; other parts refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported; got a '{part.get('type')}' part")
            texts.append(part["text"])
        return "".join(texts)


class _Sampling(BaseModel):
    """Decoding fields shared by chat and completions (OpenAI's defaults)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        listed = [value] if isinstance(value, str) else value or []
        if len(listed) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if s]

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ClassifyRequest(BaseModel):
    """``input``: texts for a text classifier; ``images``: base64 (or ``data:`` URLs) for an image one."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] | None = None
    images: str | list[str] | None = None
