"""``tunelab serve`` for causal-LM runs, through the official ``openai`` client against a live server:
models, chat, streaming, completions, per-request adapters over one base (equal to ``tunelab
generate``), mixed-adapter batches, sampling seeds, stop strings, limits, auth, disconnects."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import urllib.request
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.serve.browser import CHROMIUM, Browser
from tests.serve.conftest import live_server
from tunelab.generation import GenerationOptions, generate_texts
from tunelab.inference import load_generator
from tunelab.serve.app import create_app
from tunelab.serve.registry import load_models
from tunelab.serve.schemas import ServeLimits

QUESTION = [{"role": "user", "content": "Define the word 'river'."}]


@pytest.fixture(scope="module")
def served(lm_runs, tiny_llama_dir):
    models = load_models([(name, str(path)) for name, path in lm_runs.items()], base=str(tiny_llama_dir))
    return models


@pytest.fixture(scope="module")
def server(served):
    with live_server(create_app(served, limits=ServeLimits(max_tokens=64, max_n=3, max_prompt_tokens=200,
                                                            batch_wait_ms=30))) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def expected(run: Path, messages, max_new_tokens: int = 12) -> str:
    gen = load_generator(str(run))
    return generate_texts(gen.model, gen.tokenizer, [gen.render(messages)],
                          GenerationOptions(max_new_tokens=max_new_tokens))[0]


def test_the_shared_base_is_served_without_being_asked(lm_runs, tiny_llama_dir) -> None:
    models = load_models([("alpha", str(lm_runs["alpha"])), ("delta", str(lm_runs["delta"]))])
    assert set(models) == {"alpha", "delta", tiny_llama_dir.name}
    assert models[tiny_llama_dir.name].group is models["alpha"].group and models[tiny_llama_dir.name].adapter is None


def test_models_lists_every_run_and_the_base(client, served, tiny_llama_dir) -> None:
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"alpha", "beta", "gamma", "delta", tiny_llama_dir.name}
    assert cards["alpha"].model_extra["method"] == "lora" and cards["gamma"].model_extra["method"] == "ia3"
    # LoRA and IA3 runs and the base share one model in memory; prompt tuning has its own
    assert served["alpha"].group is served["beta"].group is served["gamma"].group is served[tiny_llama_dir.name].group
    assert served["delta"].group is not served["alpha"].group
    assert cards["delta"].model_extra["shared_base"] is False


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma", "delta"])
def test_greedy_chat_equals_tunelab_generate(client, lm_runs, name) -> None:
    answer = client.chat.completions.create(model=name, messages=QUESTION, temperature=0, max_tokens=12)
    assert answer.choices[0].message.content == expected(lm_runs[name], QUESTION)
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage.completion_tokens <= 12 and answer.usage.prompt_tokens > 5


def test_two_adapters_over_one_base_answer_differently(client, tiny_llama_dir) -> None:
    texts = {name: client.chat.completions.create(model=name, messages=QUESTION, temperature=0,
                                                  max_tokens=12).choices[0].message.content
             for name in ("alpha", "beta", tiny_llama_dir.name)}
    assert len(set(texts.values())) == 3, texts


def test_streamed_chat_joins_to_the_same_answer(client) -> None:
    whole = client.chat.completions.create(model="alpha", messages=QUESTION, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(model="alpha", messages=QUESTION, temperature=0, max_tokens=16,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # it did stream


def test_completions_continue_the_raw_prompt(client, lm_runs) -> None:
    gen = load_generator(str(lm_runs["beta"]))
    prompts = ["The river", "A stone is"]
    want = generate_texts(gen.model, gen.tokenizer, prompts, GenerationOptions(max_new_tokens=8))
    got = client.completions.create(model="beta", prompt=prompts, temperature=0, max_tokens=8)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == want
    assert got.object == "text_completion" and got.usage.completion_tokens <= 16


def test_sampling_is_seeded_per_request_and_n_gives_distinct_choices(client) -> None:
    ask = dict(model="alpha", messages=QUESTION, temperature=1.5, max_tokens=10, n=3)
    first = client.chat.completions.create(seed=7, **ask)
    again = client.chat.completions.create(seed=7, **ask)
    other = client.chat.completions.create(seed=8, **ask)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) == 3 and texts != [c.message.content for c in other.choices]


def test_stop_strings_cut_the_answer(client) -> None:
    free = client.chat.completions.create(model="beta", messages=QUESTION, temperature=0, max_tokens=24)
    text = free.choices[0].message.content
    words = re.findall(r"\w{2,}", text)
    assert len(words) >= 2, text
    stop = words[1]
    cut = client.chat.completions.create(model="beta", messages=QUESTION, temperature=0, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert free.choices[0].finish_reason in ("length", "stop")


def test_concurrent_requests_for_different_adapters_share_batches(client, server, lm_runs) -> None:
    before = metric(server, "tunelab_batches_total", kind="generate", adapters="3")
    names = ["alpha", "beta", "gamma"] * 2
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda n: client.chat.completions.create(
            model=n, messages=QUESTION, temperature=0, max_tokens=12).choices[0].message.content, names))
    assert metric(server, "tunelab_batches_total", kind="generate", adapters="3") > before
    for name, answer in zip(names, answers):
        assert answer == expected(lm_runs[name], QUESTION), name


# ---------------------------------------------------------------------------- errors and limits

def error_of(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert "Traceback" not in info.value.response.text
    return info.value


def test_unknown_model_lists_the_available_ones(client) -> None:
    err = error_of(lambda: client.chat.completions.create(model="nope", messages=QUESTION))
    assert err.status_code == 404 and "unknown model 'nope'" in err.message and "alpha" in err.message


@pytest.mark.parametrize("ask, status, fragment", [
    ({"n": 9}, 400, "the limit is 3"),
    ({"max_tokens": 1000}, 400, "max_tokens: 1000"),
    ({"temperature": 5}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, 400, "the limit is 200"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "only text content parts"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 stop"),
])
def test_bad_requests_are_openai_errors(client, ask, status, fragment) -> None:
    request = {"model": "alpha", "messages": QUESTION, **ask}
    err = error_of(lambda: client.chat.completions.create(**request))
    assert err.status_code == status and fragment in err.message, err.message


def test_wrong_endpoint_body_size_json_and_routes(server) -> None:
    r = httpx.post(f"{server}/v1/embeddings", json={"model": "alpha", "input": "x"})
    assert r.status_code == 400 and "does not answer embeddings" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{server}/v1/chat/completions", content=b"x" * (9 * 1024 * 1024))
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]["message"]
    r = httpx.get(f"{server}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_a_full_queue_answers_429_with_retry_after(served) -> None:
    app = create_app(served, limits=ServeLimits(max_queue=2, max_batch_size=1, batch_wait_ms=0, max_tokens=48))
    with live_server(app) as url:
        body = {"model": "alpha", "messages": QUESTION, "temperature": 0, "max_tokens": 48}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120),
                                    range(8)))
        codes = sorted(r.status_code for r in replies)
        assert 200 in codes and 429 in codes, codes
        busy = next(r for r in replies if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "rate_limit_exceeded"
        assert metric(url, "tunelab_rejected_total") == codes.count(429)


def test_api_key_is_required_when_set(served) -> None:
    with live_server(create_app(served, api_key="s3cret")) as url:
        for key in (None, "wrong"):
            headers = {"authorization": f"Bearer {key}"} if key else {}
            r = httpx.get(f"{url}/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert len(good.models.list().data) == 5
        assert httpx.get(f"{url}/health").status_code == 200  # health and the page stay open
        assert httpx.get(f"{url}/metrics").status_code == 401


def test_a_client_that_disconnects_mid_stream_frees_its_rows(served) -> None:
    with live_server(create_app(served, limits=ServeLimits(max_tokens=450))) as url:
        body = {"model": "alpha", "messages": QUESTION, "temperature": 0, "max_tokens": 450, "stream": True}
        started = time.perf_counter()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # one piece of text arrived: hang up
        deadline = time.time() + 30
        while metric(url, "tunelab_cancelled_rows_total") < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert metric(url, "tunelab_cancelled_rows_total") == 1
        freed = time.perf_counter() - started
        # the same request run to the end takes longer than it took to free the hung-up one
        t0 = time.perf_counter()
        whole = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=120).json()
        assert whole["usage"]["completion_tokens"] > 100, whole["usage"]
        assert freed < time.perf_counter() - t0 + 1.0
        assert json.loads(urllib.request.urlopen(f"{url}/health").read())["queued_rows"] == 0


def test_metrics_count_requests_tokens_and_latency(server, client) -> None:
    client.chat.completions.create(model="gamma", messages=QUESTION, temperature=0, max_tokens=4)
    assert metric(server, "tunelab_requests_total", endpoint="/v1/chat/completions", status="200") >= 1
    assert metric(server, "tunelab_tokens_total", model="gamma", kind="completion") >= 1
    assert metric(server, "tunelab_request_seconds_count", endpoint="/v1/chat/completions") >= 1
    assert "tunelab_queue_rows" in urllib.request.urlopen(f"{server}/metrics").read().decode()


# ---------------------------------------------------------------------------- the playground

def test_playground_streams_an_answer_in_headless_chromium(server, tmp_path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: CI installs it (apt-get install -y chromium)")
    browser = Browser(tmp_path / "profile")
    try:
        browser.open(f"{server}/?model=alpha&say=Define%20river.")
        assert browser.wait_for("document.querySelectorAll('#model option').length") == 5
        # while it streams, the answer grows piece by piece; then it is marked done
        seen = set()
        deadline = time.time() + 60
        while time.time() < deadline:
            state = browser.evaluate("(function () { var a = document.querySelector('.msg.assistant');"
                                     " return a ? a.dataset.state + '|' + a.textContent : ''; })()") or ""
            seen.add(state)
            if state.startswith("done|") or state.startswith("error|"):
                break
            time.sleep(0.02)
        assert state.startswith("done|") and state[5:].strip(), (state, browser.evaluate(
            "document.getElementById('status').textContent"))
        assert browser.evaluate("document.getElementById('status').textContent") == ""
        assert not browser.console, browser.console
    finally:
        browser.close()
