"""Image classification: model building, BatchNorm handling, trunk cache, runs end to end through the
CLI (train, eval, predict from the run alone, exact resume with augmentation), bad inputs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn import metrics as skm

from tests.conftest import run_cli, train_and_kill
from tunelab.methods import apply_methods
from tunelab.methods.freeze import FreezeConfig
from tunelab.tasks.image import build_torchvision, frozen_batchnorms, image_metrics, torchvision_reference
from tunelab.train.checkpoint import trainable_state
from tunelab.train.trunk_cache import FrozenTrunkCache

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


@pytest.fixture(scope="session")
def cnn_weights(tmp_path_factory) -> Path:
    """A randomly initialised torchvision MobileNetV2 saved as a safetensors weights file."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "mobilenet_v2-random.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.mobilenet_v2().state_dict().items()}, str(path))
    return path


def _image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 20) -> np.ndarray:
    noise = rng.integers(-40, 40, (size, size, 3))
    return np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory) -> Path:
    """A class-folder tree: 3 colours x 24 noisy 20x20 PNGs."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(24):
            Image.fromarray(_image(colour, rng)).save(root / name / f"{i:02d}.png")
    return root


def _overrides(weights: Path, data: Path, out: Path, **extra: object) -> list[str]:
    base = {"task.name": "image_classification", "model.name_or_path": str(weights),
            "task.architecture": "mobilenet_v2", "task.image_size": 32, "data.source": str(data),
            "output_dir": str(out), "name": "run", "train.epochs": 2, "train.batch_size": 8, "train.lr": 3e-3,
            "train.log_steps": 1, "method.name": "full", "train.eval_batch_size": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# ---------------------------------------------------------------------------- model building

def test_head_is_resized_and_recorded(cnn_weights):
    model = build_torchvision(torchvision_reference("mobilenet_v2", cnn_weights), 3)
    assert model.classifier[1].out_features == 3 and model.tunelab_head_params == ["classifier.1.weight",
                                                                                     "classifier.1.bias"]
    assert model.tunelab_layer_list == "features"
    saved = load_file(str(cnn_weights))
    assert torch.equal(model.features[0][0].weight, saved["features.0.0.weight"])  # pretrained trunk kept


def test_weights_file_of_another_architecture_is_one_clear_error(cnn_weights, colour_folder, tmp_path):
    proc = run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path, **{"task.architecture": "resnet18"}))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not fit torchvision's resnet18" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_freeze_freezes_batchnorm_statistics(cnn_weights):
    model = build_torchvision(torchvision_reference("mobilenet_v2", cnn_weights), 3)
    apply_methods(model, [FreezeConfig(top_layers=2)])
    frozen = frozen_batchnorms(model)
    assert len(frozen) > 10 and all(not p.requires_grad for bn in frozen for p in bn.parameters())
    trained = [n for n in trainable_state(model) if "running_mean" in n]
    assert trained and all(n.startswith(("features.17.", "features.18.")) for n in trained)


def test_bitfit_trains_biases_and_batchnorm_affine(cnn_weights):
    from tunelab.methods.bitfit import BitFitConfig

    model = build_torchvision(torchvision_reference("mobilenet_v2", cnn_weights), 3)
    apply_methods(model, [BitFitConfig()])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trained) == 2 * len(bns) + 2  # every BatchNorm's scale and shift, plus the head
    assert not frozen_batchnorms(model) and "features.0.1.weight" in trained
    apply_methods(model, [BitFitConfig(batchnorm_affine=False)])
    assert "features.0.1.weight" not in {n for n, p in model.named_parameters() if p.requires_grad}


def test_trunk_cache_equals_running_the_frozen_cnn(cnn_weights):
    model = build_torchvision(torchvision_reference("mobilenet_v2", cnn_weights), 3)
    apply_methods(model, [FreezeConfig(top_layers=0)])  # a linear probe: every block is cached
    g = torch.Generator().manual_seed(0)
    rows = [{"pixel_values": torch.randn(3, 32, 32, generator=g)} for _ in range(6)]

    def collate(items):
        return {"pixel_values": torch.stack([r["pixel_values"] for r in items])}

    cache = FrozenTrunkCache(model)
    cache.build(rows, collate, batch_size=4, forward=lambda m, b: m(b["pixel_values"]))
    assert cache.k == 19 and cache.states[0].shape == (1280, 1, 1)
    model.eval()
    batch = collate([rows[i] for i in (4, 1)])
    expected = model(batch["pixel_values"])
    with cache.active(torch.tensor([4, 1])):
        got = model(torch.zeros_like(batch["pixel_values"]))  # the input is ignored: the cache answers
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_image_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    m = image_metrics(logits, y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, logits.argmax(-1)))
    top5 = np.mean([y[i] in np.argsort(-logits[i])[:5] for i in range(50)])
    assert m["top5_accuracy"] == pytest.approx(top5)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, logits.argmax(-1), average="macro", labels=range(7)))
    assert np.asarray(m["confusion_matrix"]).sum() == 50 and len(m["per_class_recall"]) == 7
    assert "top5_accuracy" not in image_metrics(logits[:, :5], np.minimum(y, 4))


# ---------------------------------------------------------------------------- end to end

def test_train_eval_predict_from_the_run_alone(colour_folder, tmp_path):
    # the built-in pretrained MobileNetV2 (a random one's BatchNorm statistics need far more steps)
    proc = run_cli("train", *_overrides(Path("mobilenet-v2"), colour_folder, tmp_path, **{"train.epochs": 3}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "image_classification" and results["test"]["accuracy"] >= 0.8, results["test"]
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((run / "model" / "image_preprocessing.json").read_text())["size"] == 32
    assert any(k.endswith("running_mean") for k in load_file(str(run / "model" / "weights.safetensors")))
    # eval from the run directory reproduces the test metrics (BatchNorm statistics were saved)
    ev = run_cli("eval", str(run))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(results["test"]["accuracy"])
    # predict: image paths, and a csv whose relative paths resolve against the csv's folder
    files = [colour_folder / "red" / "00.png", colour_folder / "blue" / "03.png"]
    pred = run_cli("predict", str(run), *map(str, files))
    assert pred.returncode == 0, pred.stderr[-2000:]
    rows = [json.loads(line) for line in pred.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["red", "blue"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    listing = tmp_path / "lists" / "in.csv"
    listing.parent.mkdir()
    with listing.open("w", newline="") as f:
        csv.writer(f).writerows([["image"], [os.path.relpath(files[0], listing.parent)]])
    out = tmp_path / "preds.jsonl"
    pred = run_cli("predict", str(run), "--file", str(listing), "--out", str(out))
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert json.loads(out.read_text().splitlines()[0])["label"] == "red"


def test_eval_on_another_folder(cnn_weights, colour_folder, tmp_path):
    assert run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path, **{"train.epochs": 1})).returncode == 0
    other = tmp_path / "other"
    for name in ("red", "green"):
        (other / name).mkdir(parents=True)
        Image.fromarray(_image(COLOURS[name], np.random.default_rng(1))).save(other / name / "x.png")
    ev = run_cli("eval", str(tmp_path / "run"), "--data", str(other))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert np.asarray(json.loads(ev.stdout)["confusion_matrix"]).sum() == 2
    (other / "purple").mkdir()
    Image.fromarray(_image((120, 0, 120), np.random.default_rng(2))).save(other / "purple" / "y.png")
    bad = run_cli("eval", str(tmp_path / "run"), "--data", str(other))
    assert bad.returncode == 2 and "purple" in bad.stderr and "Traceback" not in bad.stderr


def test_probe_with_cached_trunk_equals_uncached(cnn_weights, colour_folder, tmp_path):
    extra = {"method.name": "freeze", "method.top_layers": 0, "train.epochs": 2}
    plain = run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path / "a", **extra))
    cached = run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path / "b",
                                          **extra, **{"train.cache_frozen_trunk": "true"}))
    assert plain.returncode == 0 and cached.returncode == 0, cached.stderr[-2000:]
    assert "cached the frozen trunk (layers 0-18)" in cached.stdout
    a = load_file(str(tmp_path / "a" / "run" / "model" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "model" / "weights.safetensors"))
    assert a.keys() == b.keys() == {"classifier.1.weight", "classifier.1.bias"}
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_cache_is_switched_off_with_augmentation(cnn_weights, colour_folder, tmp_path):
    proc = run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path, **{
        "method.name": "freeze", "method.top_layers": 0, "train.epochs": 1, "train.cache_frozen_trunk": "true",
        "task.augment.horizontal_flip": "true"}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cache_frozen_trunk is off because augmentation is on" in proc.stdout + proc.stderr


def test_killed_run_with_augmentation_resumes_to_identical_weights(cnn_weights, colour_folder, tmp_path):
    extra = {"train.epochs": 12, "train.save_steps": 4, "task.augment.random_resized_crop": "true",
             "task.augment.horizontal_flip": "true", "task.augment.mixup_alpha": 0.4,
             "task.augment.random_erasing": 0.3, "task.augment.label_smoothing": 0.1, "train.eval_strategy": "no",
             "data.validation_ratio": 0.0}
    ref = run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path / "a", **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]
    run_b = tmp_path / "b" / "run"
    train_and_kill(_overrides(cnn_weights, colour_folder, tmp_path / "b", **extra), run_b, at_step=20)
    assert not (run_b / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", str(run_b))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "a" / "run" / "model" / "weights.safetensors"))
    b = load_file(str(run_b / "model" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- bad and unusual inputs

def _two_class_folder(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for name in ("red", "blue"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(_image(COLOURS[name], rng)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["not_an_image", "empty_class", "missing_file"])
def test_bad_image_inputs_are_one_clear_line(cnn_weights, tmp_path, case):
    data = _two_class_folder(tmp_path / "data")
    if case == "not_an_image":
        (data / "red" / "oops.png").write_text("this is not a picture")
        source, named = data, "oops.png"
    elif case == "empty_class":
        (data / "green").mkdir()
        source, named = data, "green"
    else:
        listing = tmp_path / "list.csv"
        listing.write_text("image,label\ndata/red/0.png,red\ndata/red/nope.png,red\ndata/blue/0.png,blue\n")
        source, named = listing, "nope.png"
    proc = run_cli("train", *_overrides(cnn_weights, source, tmp_path / "out", **{"train.epochs": 1}))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert named in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "out" / "run").exists()  # refused before the run directory was made


def test_grey_rgba_and_16bit_images_are_converted(cnn_weights, tmp_path):
    data = _two_class_folder(tmp_path / "data")
    Image.fromarray(np.full((20, 20), 90, np.uint8), "L").save(data / "red" / "grey.png")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 220, 255
    Image.fromarray(rgba, "RGBA").save(data / "red" / "rgba.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(data / "blue" / "deep.png")
    proc = run_cli("train", *_overrides(cnn_weights, data, tmp_path, **{"train.epochs": 1,
                                                                       "data.test_ratio": 0.0}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["train_samples"] > 0


def test_skip_bad_images_counts_them(cnn_weights, tmp_path):
    data = _two_class_folder(tmp_path / "data")
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    proc = run_cli("train", *_overrides(cnn_weights, data, tmp_path, **{"train.epochs": 1,
                                                                       "data.skip_bad_images": "true"}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped 1 train unreadable image(s)" in proc.stderr


def test_csv_paths_resolve_relative_to_the_csv(cnn_weights, tmp_path, monkeypatch):
    data = _two_class_folder(tmp_path / "images")
    listing = tmp_path / "lists" / "train.csv"
    listing.parent.mkdir()
    rows = [["path", "kind"]] + [[f"../images/{c}/{i}.png", c] for c in ("red", "blue") for i in range(6)]
    with listing.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    monkeypatch.chdir(tmp_path / "lists")
    proc = run_cli("train", *_overrides(cnn_weights, listing, tmp_path / "out", **{
        "train.epochs": 1, "data.image_column": "path", "data.label_column": "kind"}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = json.loads((tmp_path / "out" / "run" / "label_map.json").read_text())["label2id"]
    assert set(labels) == {"red", "blue"} and data.is_dir()


def test_virtual_token_methods_are_refused(cnn_weights, colour_folder, tmp_path):
    proc = run_cli("train", *_overrides(cnn_weights, colour_folder, tmp_path, **{"method.name": "prompt_tuning"}))
    assert proc.returncode == 2 and "prompt_tuning" in proc.stderr and "Traceback" not in proc.stderr


def test_hf_image_model_folder(colour_folder, tmp_path):
    """A Hugging Face image classifier from a local folder trains and predicts through the same task."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    folder = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    args = [a for a in _overrides(folder, colour_folder, tmp_path, **{"method.name": "lora", "train.epochs": 1})
            if not a.startswith(("task.architecture", "task.image_size"))]
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = run_cli("predict", str(tmp_path / "run"), str(colour_folder / "green" / "01.png"))
    assert pred.returncode == 0 and json.loads(pred.stdout)["label"] in COLOURS, pred.stderr[-2000:]


@pytest.mark.mobilenet
def test_real_mobilenet_recognises_imagenet_photos():
    """ASSETS sanity check: the built-in weights, before any training, see a cat and an espresso."""
    import torchvision
    from skimage import data

    from tunelab.assets import builtin_model_path
    from tunelab.data.image_transforms import IMAGENET, eval_transform
    from tunelab.tasks.image import _read_state_dict

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(_read_state_dict(builtin_model_path("mobilenet-v2")))
    model.eval()
    transform = eval_transform(IMAGENET)
    batch = torch.stack([transform(Image.fromarray(data.chelsea())), transform(Image.fromarray(data.coffee()))])
    with torch.no_grad():
        assert model(batch).argmax(-1).tolist() == [285, 967]


@pytest.mark.mobilenet
def test_real_mobilenet_probe_on_digits(tmp_path):
    proc = run_cli("train", "task.name=image_classification", "model.name_or_path=mobilenet-v2", "data.source=digits",
                   "task.image_size=64", "method.name=freeze", "method.top_layers=0", "train.epochs=2",
                   "train.lr=1e-2", "train.cache_frozen_trunk=true", f"output_dir={tmp_path}", "name=run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"]["accuracy"] > 0.85


def test_compare_works_on_image_runs(cnn_weights, colour_folder, tmp_path):
    """Two image runs (one with augmentation, a task option compare lets differ) compared by accuracy."""
    import yaml

    spec = {
        "name": "cmp", "output_dir": str(tmp_path),
        "base": {"model": {"name_or_path": str(cnn_weights)}, "data": {"source": str(colour_folder)},
                 "task": {"name": "image_classification", "architecture": "mobilenet_v2", "image_size": 32},
                 "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2}},
        "runs": [{"label": "probe", "method": {"name": "freeze", "top_layers": 0}},
                 {"label": "probe-flip", "method": {"name": "freeze", "top_layers": 0},
                  "set": {"task.augment": {"horizontal_flip": True}}}],
    }
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_cli("compare", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert report["task"] == "image_classification" and report["metric"] == "accuracy" and report["greater_is_better"]
    assert {r["label"] for r in report["runs"] if r["status"] == "ok"} == {"probe", "probe-flip"}
    bad = dict(spec, runs=[spec["runs"][0], {"method": "full", "set": {"task.image_size": 64}}])
    path.write_text(yaml.safe_dump(bad))
    refused = run_cli("compare", str(path))
    assert refused.returncode == 2 and "task.image_size" in refused.stderr  # what is learned may not differ
