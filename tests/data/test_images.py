"""Image datasets (tunelab.data.images) and image transforms (tunelab.data.image_transforms)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tunelab.data.image_transforms import (
    IMAGENET,
    PREPROCESSING_FILE,
    ImageAugmentConfig,
    ImageCollator,
    ImagePreprocessing,
    eval_transform,
    soft_target_loss,
    train_transform,
)
from tunelab.data.images import (
    FASHION_MNIST_LABELS,
    fashion_mnist_dir,
    load_image,
    load_image_source,
)
from tunelab.errors import UserError


def _png(path: Path, colour=(10, 20, 30), size=(6, 5), mode="RGB") -> Path:
    """Write a small solid-colour image (format from the file ending)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _class_tree(root: Path) -> Path:
    _png(root / "dog" / "b.jpg")
    _png(root / "dog" / "c.PNG")
    (root / "dog" / "notes.txt").write_text("not an image")
    _png(root / "cat" / "a.png")
    return root


# --------------------------------------------------------------------------- folders


def test_class_folders_give_sorted_names_and_absolute_paths(tmp_path):
    result = load_image_source(str(_class_tree(tmp_path / "pets")))
    assert result.label_names == ["cat", "dog"]
    assert list(result.splits) == ["train"]
    rows = result.splits["train"]
    assert [row["label"] for row in rows] == ["cat", "dog", "dog"]  # notes.txt ignored
    assert all(os.path.isabs(row["image"]) and Path(row["image"]).is_file() for row in rows)
    assert Path(rows[0]["image"]).name == "a.png"
    assert result.skipped == {"train": 0}


def test_split_sub_folders_become_splits(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "val", "test"):
        _png(root / split / "ant" / "1.png")
        _png(root / split / "bee" / "2.bmp")
    _png(root / "train" / "bee" / "3.webp")
    result = load_image_source(str(root))
    assert sorted(result.splits) == ["test", "train", "validation"]
    assert result.label_names == ["ant", "bee"]
    assert len(result.splits["train"]) == 3
    assert [r["label"] for r in result.splits["validation"]] == ["ant", "bee"]


def test_empty_class_folder_is_named(tmp_path):
    root = _class_tree(tmp_path / "pets")
    (root / "empty_cls").mkdir()
    (root / "empty_cls" / "readme.md").write_text("x")
    with pytest.raises(UserError, match=r"class folder .*empty_cls holds no image files"):
        load_image_source(str(root))


def test_unknown_source_lists_builtins_and_forms(tmp_path):
    with pytest.raises(UserError) as info:
        load_image_source("fashion_mnst")
    message = str(info.value)
    assert "did you mean 'fashion_mnist'" in message
    assert "digits" in message and "class" in message and ".csv" in message


# --------------------------------------------------------------------------- files of paths


def test_csv_relative_paths_resolve_against_the_csv(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _png(data / "local" / "x.png")
    _png(tmp_path / "imgs" / "a.png")
    (data / "labels.csv").write_text("path,cls\nlocal/x.png,yes\n../imgs/a.png,no\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = load_image_source(
        "../data/labels.csv", image_column="path", label_column="cls", max_rows=5
    )
    rows = result.splits["train"]
    assert [row["image"] for row in rows] == [
        str((data / "local" / "x.png").resolve()),
        str((tmp_path / "imgs" / "a.png").resolve()),
    ]
    assert [row["label"] for row in rows] == ["yes", "no"]
    assert result.label_names is None


def test_jsonl_validation_file_and_max_rows(tmp_path):
    for name in "abc":
        _png(tmp_path / f"{name}.png")
    lines = [f'{{"image": "{n}.png", "label": {i}}}' for i, n in enumerate("abc")]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.jsonl").write_text(lines[0] + "\n")
    result = load_image_source(
        str(tmp_path / "train.jsonl"), validation_file=tmp_path / "val.jsonl", max_rows=2
    )
    assert [row["label"] for row in result.splits["train"]] == [0, 1]
    assert [row["label"] for row in result.splits["validation"]] == [0]


def test_missing_column_names_it_and_lists_columns(tmp_path):
    (tmp_path / "d.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(UserError, match=r"no image column 'image'.*columns present: file, label"):
        load_image_source(str(tmp_path / "d.csv"))


def test_missing_image_names_file_and_row_or_is_skipped(tmp_path):
    _png(tmp_path / "ok.png")
    (tmp_path / "d.csv").write_text("image,label\nok.png,a\ngone.png,b\nok.png,c\n")
    missing = str((tmp_path / "gone.png").resolve())
    with pytest.raises(UserError) as info:
        load_image_source(str(tmp_path / "d.csv"))
    assert str(info.value).startswith(f"image file {missing} (train row 2) cannot be read:")
    assert "data.skip_bad_images=true" in str(info.value)
    result = load_image_source(str(tmp_path / "d.csv"), skip_bad_images=True)
    assert [row["label"] for row in result.splits["train"]] == ["a", "c"]
    assert result.skipped == {"train": 1}


def test_corrupt_and_non_image_files_are_user_errors(tmp_path):
    rng = np.random.default_rng(0)
    corrupt = _class_tree(tmp_path / "c") / "cat" / "noise.png"
    corrupt.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"noise\.png \(train row 2\) cannot be read"):
        load_image_source(str(tmp_path / "c"))
    assert load_image_source(str(tmp_path / "c"), skip_bad_images=True).skipped == {"train": 1}

    text = tmp_path / "t" / "letter.png"
    text.parent.mkdir()
    text.write_text("Dear reader, this is text.\n")
    with pytest.raises(UserError, match=r"letter\.png is not in an image format"):
        load_image(text)
    with pytest.raises(UserError, match=r"noise\.png"):
        load_image(corrupt)


# --------------------------------------------------------------------------- decoding modes


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def test_modes_convert_to_8bit_rgb(tmp_path):
    _png(tmp_path / "grey.png", colour=77, mode="L")
    assert _pixels(load_image(tmp_path / "grey.png"))[0, 0].tolist() == [77, 77, 77]

    rgba = Image.new("RGBA", (2, 1), (200, 10, 10, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black must show as white
    rgba.save(tmp_path / "rgba.png")
    assert _pixels(load_image(tmp_path / "rgba.png")).tolist() == [[[200, 10, 10], [255] * 3]]

    Image.new("LA", (1, 1), (40, 0)).save(tmp_path / "la.png")
    assert _pixels(load_image(tmp_path / "la.png")).tolist() == [[[255, 255, 255]]]

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "pal.png")
    assert _pixels(load_image(tmp_path / "pal.png")).tolist() == [[[0, 0, 0], [10, 200, 30]]]
    palette.save(tmp_path / "pal_t.png", transparency=0)  # index 0 transparent -> white
    assert _pixels(load_image(tmp_path / "pal_t.png")).tolist() == [[[255] * 3, [10, 200, 30]]]

    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = _pixels(load_image(tmp_path / "cmyk.jpg"))[0, 0]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15


def test_16bit_png_scales_instead_of_clipping(tmp_path):
    Image.fromarray(np.array([[65535, 32768, 255]], dtype=np.uint16)).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    values = _pixels(load_image(tmp_path / "d.png"))[0, :, 0].tolist()
    assert values == [255, 128, 0]
    as_int32 = Image.fromarray(np.array([[65535, 32768]], dtype=np.int32))  # mode "I"
    assert _pixels(load_image(as_int32))[0, :, 1].tolist() == [255, 128]


def test_arrays_decode_and_bad_arrays_are_user_errors():
    grey = np.full((3, 4), 9, dtype=np.uint8)
    assert _pixels(load_image(grey)).shape == (3, 4, 3)
    assert _pixels(load_image(grey[:, :, None]))[0, 0].tolist() == [9, 9, 9]
    with pytest.raises(UserError, match="dtype float64"):
        load_image(np.zeros((2, 2)))


# --------------------------------------------------------------------------- built-ins


def test_digits_builtin():
    result = load_image_source("digits")
    rows = result.splits["train"]
    assert len(rows) == 1797 and list(result.splits) == ["train"]
    assert result.label_names == [str(i) for i in range(10)]
    assert sorted({row["label"] for row in rows}) == list(range(10))
    images = np.stack([row["image"] for row in rows])
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0


def _fashion_dir() -> Path:
    """The installed Fashion-MNIST folder; scripts/setup.sh installs the Debian package, so a
    missing one fails here (it is a missing install step, not a reason to skip)."""
    return fashion_mnist_dir()


def test_fashion_mnist_builtin():
    folder = _fashion_dir()
    result = load_image_source("fashion_mnist")
    train, test = result.splits["train"], result.splits["test"]
    assert (len(train), len(test)) == (60_000, 10_000)
    assert result.label_names == FASHION_MNIST_LABELS and len(FASHION_MNIST_LABELS) == 10
    assert train[0]["image"].shape == (28, 28) and train[0]["image"].dtype == np.uint8
    counts = np.bincount([row["label"] for row in train])
    assert counts.tolist() == [6000] * 10
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "rb") as handle:
        raw = handle.read(9)
    assert int.from_bytes(raw[:4], "big") == 2049
    assert train[0]["label"] == raw[8]
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "rb") as handle:
        first = np.frombuffer(handle.read(16 + 784)[16:], dtype=np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(train[0]["image"], first)


def test_fashion_mnist_env_override_checks_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_image_source("fashion_mnist")
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write((1234).to_bytes(4, "big") + (0).to_bytes(4, "big"))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(b"\x00" * 16)
    for name in ("t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (tmp_path / name).write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(UserError, match="magic number"):
        load_image_source("fashion_mnist")


# --------------------------------------------------------------------------- transforms


def test_eval_transform_is_deterministic_and_normalises():
    pre = ImagePreprocessing(16)
    assert pre.resize == round(16 / 0.875)
    image = Image.new("RGB", (28, 28), (51, 102, 204))
    transform = eval_transform(pre)
    first, second = transform(image), transform(image)
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, second)
    rgb = (51, 102, 204)
    expected = [(v / 255 - m) / s for v, m, s in zip(rgb, pre.mean, pre.std, strict=True)]
    torch.testing.assert_close(first.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)


def _noise_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))


def test_train_transform_reproducible_per_seed():
    aug = ImageAugmentConfig(
        random_resized_crop=True, horizontal_flip=True, auto_augment="trivial",
        color_jitter=0.3, random_erasing=0.5,
    )
    transform, image = train_transform(ImagePreprocessing(24), aug), _noise_image()

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([transform(image) for _ in range(4)])

    assert run(0).shape == (4, 3, 24, 24)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    plain = train_transform(ImagePreprocessing(24), ImageAugmentConfig())
    assert torch.equal(plain(image), eval_transform(ImagePreprocessing(24))(image))


def test_augment_config_flags_and_validation():
    assert not ImageAugmentConfig(label_smoothing=0.1).enabled
    assert ImageAugmentConfig(horizontal_flip=True).enabled
    mix = ImageAugmentConfig(cutmix_alpha=1.0)
    assert mix.enabled and mix.batch_mixing
    assert not ImageAugmentConfig(color_jitter=0.2).batch_mixing
    for bad in ({"label_smoothing": 1.0}, {"random_erasing": 1.5}, {"flip": True}):
        with pytest.raises(ValueError):
            ImageAugmentConfig(**bad)
    assert "MixUp" in ImageAugmentConfig.model_fields["mixup_alpha"].description


def _rows(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(1)
    return [
        {"image": rng.integers(0, 256, (28, 28), dtype=np.uint8), "label": i % 3,
         "row_index": 10 + i, "note": "kept out"}
        for i in range(n)
    ]


def test_collator_shapes_and_passthrough():
    collate = ImageCollator(eval_transform(ImagePreprocessing(20)), num_classes=3)
    batch = collate(_rows())
    assert set(batch) == {"pixel_values", "labels", "row_index"}
    assert batch["pixel_values"].shape == (4, 3, 20, 20)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["labels"].dtype == torch.long
    assert batch["row_index"].tolist() == [10, 11, 12, 13]
    unlabelled = ImageCollator(eval_transform(ImagePreprocessing(20)), 3, with_labels=False)
    assert set(unlabelled(_rows())) == {"pixel_values", "row_index"}


def test_mixup_gives_soft_labels_summing_to_one():
    aug = ImageAugmentConfig(mixup_alpha=0.4, cutmix_alpha=1.0)
    collate = ImageCollator(eval_transform(ImagePreprocessing(20)), 3, batch_mixing=aug)
    torch.manual_seed(0)
    batch = collate(_rows())
    labels = batch["labels"]
    assert labels.shape == (4, 3) and labels.is_floating_point()
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(4))
    assert (labels > 0).sum(dim=1).max() == 2  # each row mixes with one other row
    assert batch["pixel_values"].shape == (4, 3, 20, 20)


def test_soft_target_loss_matches_torch_label_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    one_hot = F.one_hot(labels, 5).float()
    for eps in (0.0, 0.1, 0.3):
        reference = F.cross_entropy(logits, labels, label_smoothing=eps)
        assert abs(soft_target_loss(logits, one_hot, eps).item() - reference.item()) <= 1e-6
        assert abs(soft_target_loss(logits, labels, eps).item() - reference.item()) <= 1e-6
    soft = torch.softmax(torch.randn(6, 5), dim=1)
    expected = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert abs(soft_target_loss(logits, soft).item() - expected.item()) <= 1e-6


def test_preprocessing_save_load_round_trip(tmp_path):
    pre = ImagePreprocessing(32, 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = pre.save(tmp_path)
    assert path == tmp_path / PREPROCESSING_FILE
    assert ImagePreprocessing.load(tmp_path) == pre
    assert ImagePreprocessing.from_dict(IMAGENET.to_dict()) == IMAGENET
    assert (IMAGENET.size, IMAGENET.resize) == (224, 256)
    with pytest.raises(UserError, match="does not exist"):
        ImagePreprocessing.load(tmp_path / "nowhere")
    with pytest.raises(UserError, match="resize"):
        ImagePreprocessing(32, 16)
