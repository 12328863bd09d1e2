"""``tunelab serve`` for classification, contrastive and image runs: ``/v1/classify`` (texts, base64
images, multipart uploads) and ``/v1/embeddings`` (through the openai client) equal ``predict`` and
``embed`` of each run; the command line refuses bad runs in one line."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx2 as httpx
import numpy as np
import openai
import pytest

from tests.conftest import one_error_line, run_cli, tiny_overrides
from tests.serve.conftest import live_server
from tests.tasks.test_image import _overrides as image_overrides
from tests.tasks.test_image import cnn_weights, colour_folder  # noqa: F401 -- fixtures
from tunelab.cli import main
from tunelab.pipeline import load_run
from tunelab.serve.app import create_app
from tunelab.serve.registry import load_models

TEXTS = ["a warm, funny and moving film", "dull and far too long", "the cast is fine"]


@pytest.fixture(scope="module")
def encoder_runs(tiny_bert_dir, reviews_jsonl, cnn_weights, colour_folder, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    from tunelab.data.builtin import get_builtin_dataset

    out = tmp_path_factory.mktemp("serve-encoders")
    for name, seed in (("sentiment-a", 1), ("sentiment-b", 2)):
        assert main(["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, out, name=name, seed=seed,
                                              **{"method.name": "lora", "train.epochs": 1})]) == 0
    pairs = out / "pairs.jsonl"
    ds = get_builtin_dataset("wordnet_pairs").load()["train"].select(range(64))
    pairs.write_text("".join(json.dumps({"anchor": r["anchor"], "positive": r["positive"]}) + "\n" for r in ds))
    assert main(["train", "task.name=contrastive", f"model.name_or_path={tiny_bert_dir}", f"data.source={pairs}",
                 f"output_dir={out}", "name=embedder", "train.max_steps=3", "train.batch_size=8",
                 "data.max_length=32", "method.name=lora", "train.lr=5e-3"]) == 0
    assert main(["train", *image_overrides(cnn_weights, colour_folder, out, name="colours",
                                           **{"train.epochs": 1})]) == 0
    return {name: out / name for name in ("sentiment-a", "sentiment-b", "embedder", "colours")}


@pytest.fixture(scope="module")
def served(encoder_runs):
    return load_models([(name, str(path)) for name, path in encoder_runs.items()])


@pytest.fixture(scope="module")
def server(served):
    with live_server(create_app(served)) as url:
        yield url


def test_text_classifiers_share_a_base_and_equal_predict(server, served, encoder_runs) -> None:
    assert served["sentiment-a"].group is served["sentiment-b"].group
    got = {}
    for name in ("sentiment-a", "sentiment-b"):
        r = httpx.post(f"{server}/v1/classify", json={"model": name, "input": TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        loaded = load_run(str(encoder_runs[name]))
        want = loaded.task.predict(loaded, TEXTS, None)
        for row, ref in zip(data, want):
            assert row["label"] == ref["label"]
            for label, p in ref["probabilities"].items():
                assert abs(row["probabilities"][label] - p) <= 1e-6
        got[name] = [row["probabilities"]["1" if "1" in row["probabilities"] else next(iter(row["probabilities"]))]
                     for row in data]
    assert got["sentiment-a"] != got["sentiment-b"]


def test_embeddings_through_the_openai_client_equal_tunelab_embed(server, encoder_runs) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    loaded = load_run(str(encoder_runs["embedder"]))
    want = loaded.task.embed(loaded, TEXTS).numpy()
    for fmt in (None, "float", "base64"):  # None: the client asks for base64 and decodes it itself
        reply = client.embeddings.create(model="embedder", input=TEXTS, **({"encoding_format": fmt} if fmt else {}))
        rows = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
        if fmt == "base64":
            rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
        got = np.array(rows)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
        assert reply.usage.prompt_tokens > len(TEXTS)
    single = client.embeddings.create(model="embedder", input=TEXTS[0])
    assert np.abs(np.array(single.data[0].embedding) - want[0]).max() <= 1e-5
    with pytest.raises(openai.BadRequestError, match="384|dimensions"):
        client.embeddings.create(model="embedder", input=TEXTS, dimensions=3)


def _png(path: Path) -> bytes:
    return path.read_bytes()


def test_image_classifier_takes_base64_and_multipart_images(server, encoder_runs, colour_folder) -> None:  # noqa: F811
    files = sorted(colour_folder.glob("*/00.png"))
    loaded = load_run(str(encoder_runs["colours"]))
    want = loaded.task.predict(loaded, [str(f) for f in files], None)
    as_base64 = [base64.b64encode(_png(f)).decode() for f in files]
    as_base64[0] = "data:image/png;base64," + as_base64[0]
    r = httpx.post(f"{server}/v1/classify", json={"model": "colours", "images": as_base64}, timeout=60)
    assert r.status_code == 200, r.text
    multipart = httpx.post(f"{server}/v1/classify", data={"model": "colours"},
                           files=[("image", (f.name, _png(f), "image/png")) for f in files], timeout=60)
    assert multipart.status_code == 200, multipart.text
    for reply in (r.json()["data"], multipart.json()["data"]):
        for row, ref in zip(reply, want):
            assert row["label"] == ref["label"]
            assert all(abs(row["probabilities"][k] - v) <= 1e-5 for k, v in ref["probabilities"].items())


@pytest.mark.parametrize("body, fragment", [
    ({"model": "colours", "input": ["text"]}, "classifies images"),
    ({"model": "sentiment-a", "images": ["aGVsbG8="]}, "classifies texts"),
    ({"model": "colours", "images": ["not base64!"]}, "not valid base64"),
    ({"model": "colours", "images": ["aGVsbG8="]}, "not an image"),
    ({"model": "sentiment-a", "input": ["ok", "  "]}, "input[1] is empty"),
    ({"model": "sentiment-a"}, "give 'input'"),
    ({"model": "embedder", "input": "x"}, "does not answer classify"),
    ({"model": "missing", "input": "x"}, "unknown model 'missing'"),
])
def test_bad_classify_requests_are_one_clear_error(server, body, fragment) -> None:
    r = httpx.post(f"{server}/v1/classify", json=body, timeout=60)
    assert r.status_code in (400, 404) and fragment in r.json()["error"]["message"], r.text


def test_a_real_png_round_trip_through_pil(server) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(buffer, format="PNG")
    r = httpx.post(f"{server}/v1/classify", json={"model": "colours",
                                                  "images": [base64.b64encode(buffer.getvalue()).decode()]})
    assert r.status_code == 200 and abs(sum(r.json()["data"][0]["probabilities"].values()) - 1) < 1e-5


# ---------------------------------------------------------------------------- the command line

def test_serve_refuses_bad_runs_in_one_line(encoder_runs, tmp_path) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((encoder_runs["sentiment-a"] / "config.yaml").read_text())
    for args, fragment in ((["serve", str(tmp_path / "nope")], "not a tunelab run directory"),
                           (["serve", str(unfinished)], "is unfinished"),
                           (["serve"], "give at least one run"),
                           (["serve", f"a={encoder_runs['sentiment-a']}", f"a={encoder_runs['sentiment-b']}"],
                            "two models would be named 'a'"),
                           (["serve", str(encoder_runs["embedder"]), "--max-batch-size", "0"], "--max-batch-size")):
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        one_error_line(proc.stderr, fragment)
