"""The HTTP side of ``tunelab serve``: an OpenAI-compatible API on FastAPI.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (causal-LM
runs; ``stream: true`` sends server-sent events in OpenAI's chunk format), ``POST /v1/embeddings``
(contrastive runs; ``encoding_format`` float or base64), ``POST /v1/classify`` (classification and
image runs: texts in ``input``, images as base64 in ``images`` or as multipart files), ``GET /health``,
``GET /metrics`` (Prometheus text format) and ``GET /`` (the playground page).

Every error is OpenAI's JSON error object (``{"error": {"message", "type", "param", "code"}}``)
with a 4xx status for what the client can fix, and never a stack trace. With an API key, every
endpoint but ``/health`` and the page itself wants ``Authorization: Bearer KEY`` (compared in
constant time).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import UserError
from tunelab.serve import registry as reg
from tunelab.serve.engine import GenRow
from tunelab.serve.metrics import Metrics
from tunelab.serve.scheduler import CLASSIFY, EMBED, GENERATE, Job, QueueFull, Scheduler
from tunelab.serve.schemas import ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingRequest, ServeLimits


class ApiError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line from pydantic's errors: the first field and what is wrong with it."""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",))
    return (f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg")),
            where or None)


class BodyLimit:
    """ASGI middleware: read the whole request body first and answer 413 once it passes ``limit``."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                error = ApiError(413, f"request body is larger than the limit of {self.limit} bytes "
                                      "(tunelab serve --max-body-mb)", code="request_too_large")
                await error.response()(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                      receive), send)


def _replay(messages: list[dict], receive: Any) -> Any:
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


def create_app(models: dict[str, reg.ServedModel], *, api_key: str | None = None,
               limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (from :func:`tunelab.serve.registry.load_models`)."""
    limits = limits or ServeLimits()
    metrics = Metrics()
    scheduler = Scheduler(max_batch_size=limits.max_batch_size, batch_wait_ms=limits.batch_wait_ms,
                          max_queue=limits.max_queue, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.models, app.state.scheduler, app.state.metrics, app.state.limits = models, scheduler, metrics, limits
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return ApiError(exc.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        type="server_error").response()

    # ------------------------------------------------------------------ metrics and auth
    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        try:
            if api_key is not None and request.url.path not in ("/", "/health"):
                _check_key(request, api_key)
            response = await call_next(request)
        except ApiError as exc:
            response = exc.response()
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
        return response

    # ------------------------------------------------------------------ small endpoints
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(models), "queued_rows": scheduler.queued_rows,
                "limits": limits.model_dump()}

    @app.get("/metrics")
    async def metrics_page() -> Response:
        metrics.queue_depth.set(scheduler.queued_rows)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.card() for m in models.values()]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str) -> dict[str, Any]:
        return _model(models, name, None).card()

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = resources.files("tunelab.serve").joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    # ------------------------------------------------------------------ generation
    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        model = _model(models, body.model, reg.CHAT)
        try:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in body.messages]
        except ValueError as exc:
            raise ApiError(400, f"messages: {exc}", param="messages") from None
        if messages[-1]["role"] == "assistant":
            raise ApiError(400, "messages: the last message must be from the user (or system)", param="messages")
        prompt = model.render(messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await _generate(request, model, [prompt], body, max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        model = _model(models, body.model, reg.COMPLETIONS)
        prompts = body.prompts()
        if not prompts or any(not isinstance(p, str) or p == "" for p in prompts):
            raise ApiError(400, "prompt: give a non-empty string or a list of non-empty strings", param="prompt")
        return await _generate(request, model, prompts, body, body.max_tokens, chat=False)

    async def _generate(request: Request, model: reg.ServedModel, prompts: list[str], body: Any,
                        max_tokens: int | None, *, chat: bool) -> Any:
        if body.n > limits.max_n:
            raise ApiError(400, f"n: {body.n} choices asked for; the limit is {limits.max_n} (--max-n)", param="n")
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ApiError(400, f"max_tokens: {max_tokens} asked for; the limit is {limits.max_tokens} "
                                "(--max-tokens)", param="max_tokens")
        if body.stream and len(prompts) > 1:
            raise ApiError(400, "prompt: streaming takes one prompt per request", param="prompt")
        ids = [_encode(model, p) for p in prompts]
        seed = body.seed if body.seed is not None else secrets.randbits(31)
        rows = [GenRow(ids=row, max_new_tokens=max_tokens or limits.max_tokens, temperature=body.temperature,
                       top_p=body.top_p, seed=seed + k * 1_000_003 + j, stop=body.stop_list())
                for k, row in enumerate(ids) for j in range(body.n)]
        prompt_tokens = sum(len(r) for r in ids)
        created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
        if body.stream:
            return _stream(request, model, rows, body, chat, rid, created, prompt_tokens)
        result = await _submit(request, GENERATE, model, rows)
        return _completion_body(model, result, prompt_tokens, chat, rid, created)

    def _encode(model: reg.ServedModel, prompt: str) -> list[int]:
        ids = model.processor(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "the prompt encodes to no tokens; give some text", param="messages")
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens} "
                                "(--max-prompt-tokens)", code="context_length_exceeded")
        return ids

    def _completion_body(model: reg.ServedModel, rows: list[GenRow], prompt_tokens: int, chat: bool, rid: str,
                         created: int) -> dict[str, Any]:
        completion_tokens = sum(len(r.tokens) for r in rows)
        metrics.tokens.labels(model=model.name, kind="prompt").inc(prompt_tokens)
        metrics.tokens.labels(model=model.name, kind="completion").inc(completion_tokens)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                        "finish_reason": r.finish_reason, "logprobs": None} for i, r in enumerate(rows)]
        else:
            choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                       for i, r in enumerate(rows)]
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _stream(request: Request, model: reg.ServedModel, rows: list[GenRow], body: Any, chat: bool, rid: str,
                created: int, prompt_tokens: int) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        for index, row in enumerate(rows):
            row.emit = lambda text, i=index: loop.call_soon_threadsafe(events.put_nowait, ("delta", i, text))
        job = Job(GENERATE, model, rows, lambda result, exc: loop.call_soon_threadsafe(
            events.put_nowait, ("done", result, exc)))
        _enqueue(job)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            data: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": model.name,
                                    "choices": choices}
            if usage is not None or body.include_usage():
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        def piece(i: int, text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

        async def watch() -> None:  # a client that goes away frees its rows at the next step
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    job.cancelled.set()
                    return

        async def sse() -> AsyncIterator[str]:
            watcher = asyncio.ensure_future(watch())
            try:
                if chat:
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                  "logprobs": None} for i in range(len(rows))])
                while True:
                    event = await events.get()
                    if event[0] == "delta":
                        yield chunk([piece(event[1], event[2], None)])
                        continue
                    _, result, exc = event
                    if exc is not None:
                        error = _as_api_error(exc)
                        yield f"data: {json.dumps({'error': {'message': error.message, 'type': error.type}})}\n\n"
                        return
                    for i, row in enumerate(result):
                        yield chunk([piece(i, None if chat else "", row.finish_reason)])
                    completion = sum(len(r.tokens) for r in result)
                    metrics.tokens.labels(model=model.name, kind="prompt").inc(prompt_tokens)
                    metrics.tokens.labels(model=model.name, kind="completion").inc(completion)
                    if body.include_usage():
                        yield chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                         "total_tokens": prompt_tokens + completion})
                    yield "data: [DONE]\n\n"
                    return
            finally:
                job.cancelled.set()
                watcher.cancel()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ embeddings and classification
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        model = _model(models, body.model, reg.EMBEDDINGS)
        texts = _inputs(body.texts(), "input")
        vectors = await _submit(request, EMBED, model, texts)
        width = len(vectors[0]) if vectors else 0
        if body.dimensions is not None and body.dimensions != width:
            raise ApiError(400, f"dimensions: this model's embeddings have {width} dimensions; it cannot give "
                                f"{body.dimensions}", param="dimensions")
        data = []
        for i, vector in enumerate(vectors):
            values = vector.float()
            encoded: Any = (base64.b64encode(values.numpy().astype("<f4").tobytes()).decode("ascii")
                            if body.encoding_format == "base64" else values.tolist())
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(model.processor(t, add_special_tokens=True)["input_ids"]) for t in texts)
        return {"object": "list", "data": data, "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, Any]:
        model_name, texts, images = await _classify_inputs(request)
        model = _model(models, model_name, reg.CLASSIFY)
        wants_images = model.task.spec.processor == "image"
        if wants_images and texts is not None:
            raise ApiError(400, f"model '{model.name}' classifies images; send them in 'images' (base64) or as "
                                "multipart files named 'image'", param="input")
        if not wants_images and images is not None:
            raise ApiError(400, f"model '{model.name}' classifies texts; send them in 'input'", param="images")
        if (images if wants_images else texts) is None:
            raise ApiError(400, "give 'input' (texts) or 'images'", param="input")
        if wants_images:
            inputs = [_decode_image(data() if callable(data) else data, where)
                      for data, where in _inputs(images, "images", texts_only=False)]
        else:
            inputs = _inputs(texts, "input")
        predictions = await _submit(request, CLASSIFY, model, inputs)
        return {"object": "list", "model": model.name,
                "data": [{"index": i, **p} for i, p in enumerate(predictions)]}

    async def _classify_inputs(request: Request) -> tuple[str, list[str] | None, list[tuple[Any, str]] | None]:
        """(model, texts, images as (bytes or a decoder of them, where)) of a JSON or multipart request."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            name = form.get("model")
            files = [f for key in ("image", "images", "file") for f in form.getlist(key) if hasattr(f, "read")]
            texts = [t for t in form.getlist("input") if isinstance(t, str)] or None
            images = [(await f.read(), getattr(f, "filename", None) or "upload") for f in files] or None
            if not isinstance(name, str) or not name:
                raise ApiError(400, "model: a multipart request needs a 'model' field", param="model")
            return name, texts, images
        try:
            body = ClassifyRequest.model_validate(json.loads(await request.body() or b"null"))
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        except ValidationError as exc:
            message, param = _validation_message(list(exc.errors()))
            raise ApiError(400, message, param=param) from None
        texts = [body.input] if isinstance(body.input, str) else body.input
        listed = [body.images] if isinstance(body.images, str) else body.images
        images = [((lambda v=v, i=i: _b64(v, i)), f"images[{i}]") for i, v in enumerate(listed)] if listed else None
        return body.model, texts, images

    def _inputs(values: list[Any], param: str, texts_only: bool = True) -> list[Any]:
        if not values:
            raise ApiError(400, f"{param}: give at least one input", param=param)
        if len(values) > limits.max_inputs:
            raise ApiError(400, f"{param}: {len(values)} inputs; the limit is {limits.max_inputs} per request",
                           param=param)
        if texts_only:
            for i, v in enumerate(values):
                if not isinstance(v, str) or not v.strip():
                    raise ApiError(400, f"{param}[{i}] is empty; give a text", param=param)
        return values

    async def _submit(request: Request, kind: str, model: reg.ServedModel, rows: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if not future.done():
                    future.set_exception(exc) if exc is not None else future.set_result(result)
            loop.call_soon_threadsafe(settle)

        job = Job(kind, model, rows, done)
        _enqueue(job)
        try:
            return await future
        except (ApiError, asyncio.CancelledError):
            raise
        except BaseException as exc:  # noqa: BLE001 -- answered as an OpenAI error
            raise _as_api_error(exc) from None
        finally:
            job.cancelled.set()

    def _enqueue(job: Job) -> None:
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            metrics.rejected.inc()
            raise ApiError(429, f"the server is busy: {exc}; retry shortly", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None

    return app


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UserError):
        return ApiError(400, str(exc))
    return ApiError(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    type="server_error")


def _check_key(request: Request, api_key: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' (the --api-key the server "
                            "was started with)", code="invalid_api_key")


def _model(models: dict[str, reg.ServedModel], name: str, endpoint: str | None) -> reg.ServedModel:
    if name not in models:
        raise ApiError(404, f"unknown model '{name}'; available: {', '.join(models)}", param="model",
                       code="model_not_found")
    model = models[name]
    if endpoint is not None and endpoint not in model.endpoints:
        fitting = [n for n, m in models.items() if endpoint in m.endpoints]
        raise ApiError(400, f"model '{name}' (a {model.task.name} run) does not answer {endpoint} requests; it answers "
                            f"{', '.join(model.endpoints)}" + (f"; models for {endpoint}: {', '.join(fitting)}"
                                                                 if fitting else ""), param="model",
                       code="wrong_endpoint")
    return model


def _b64(value: str, index: int) -> bytes:
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"images[{index}] is not valid base64", param="images") from None


def _decode_image(data: bytes, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ApiError(400, f"{where} is not an image Pillow can read ({type(exc).__name__})", param="images") from None
