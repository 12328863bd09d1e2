"""Read image-classification datasets: built-ins, class folders, and files of image paths.

Every source becomes plain Python rows ``{"image": value, "label": raw_label}`` where ``value`` is
an absolute path string or a ``uint8`` array (``HxW`` or ``HxWxC``). Pixels are decoded lazily by
:func:`load_image` (in the collator), so a dataset of paths costs almost no memory up front.

Accepted sources (see :func:`load_image_source`):

* ``fashion_mnist`` - the Debian package ``dataset-fashion-mnist`` (60,000 train + 10,000 test);
* ``digits`` - scikit-learn's bundled 1,797 8x8 digits (train only);
* a folder with one sub-folder per class, or with ``train/``, ``validation|val|valid/`` and
  ``test/`` sub-folders that each hold class folders;
* a ``.csv``/``.tsv``/``.jsonl``/``.json`` (or ``.parquet``) file with an image-path column and a
  label column; relative paths are resolved against the file's own folder.

Nothing here unpickles anything: images are decoded with Pillow, IDX files with numpy.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tunelab.data.labels import label_key
from tunelab.data.readers import read_file
from tunelab.errors import UserError, did_you_mean

#: File-name endings (lower case) that count as images inside class folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
)

#: Files of image paths that :func:`load_image_source` reads (via ``tunelab.data.readers``).
TABLE_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".json", ".parquet")

#: Names of split sub-folders and the split each stands for.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
}

#: Fashion-MNIST's classes in label-id order (Xiao et al., 2017).
FASHION_MNIST_LABELS: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

#: Where ``apt-get install dataset-fashion-mnist`` puts the files (checked with ``dpkg -L``).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Environment variable naming another folder that holds the four Fashion-MNIST IDX files.
FASHION_MNIST_ENV = "TUNELAB_FASHION_MNIST_DIR"

_FASHION_MNIST_PLACES: tuple[Path, ...] = (
    FASHION_MNIST_DIR,
    Path("/usr/share/dataset-fashion-mnist"),
    Path("/usr/local/share/datasets/fashion-mnist"),
    Path.home() / ".cache" / "tunelab" / "fashion-mnist",
)

_FASHION_MNIST_HINT = (
    "install it with `sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist`, "
    f"or set {FASHION_MNIST_ENV} to a folder holding its four *-ubyte.gz files"
)

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

Row = dict[str, Any]


@dataclass
class ImageSplits:
    """An image dataset as plain rows per split.

    ``splits`` has ``"train"`` and optionally ``"validation"``/``"test"``; each row is
    ``{"image": path-or-array, "label": raw label}``. ``label_names`` are the source's class names
    in id order when the source defines them (sorted folder names, Fashion-MNIST's 10 names), else
    ``None``. ``skipped`` counts the unreadable images dropped per split (``skip_bad_images``).
    """

    splits: dict[str, list[Row]]
    label_names: list[str] | None = None
    skipped: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the entry point


def load_image_source(
    source: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    validation_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    skip_bad_images: bool = False,
    max_rows: int | None = None,
) -> ImageSplits:
    """Load an image dataset from a built-in name, a class-folder tree, or a file of paths.

    ``validation_file``/``test_file`` (a file of paths or a class folder) add or replace those
    splits; ``max_rows`` keeps only the first N train rows. Path rows are checked with
    :func:`check_images` (bad files raise, or are dropped and counted with ``skip_bad_images``).
    A built-in name wins over a same-named local folder; write ``./name`` to read the folder.

    Raises :class:`UserError` for an unknown source, a missing column, an empty class folder, an
    unreadable image, or a split left without rows.
    """
    if max_rows is not None and max_rows < 1:
        raise UserError(f"data.max_rows must be a positive integer, got {max_rows}")
    columns = (image_column, label_column)
    source = str(source)
    if source in BUILTIN_IMAGE_DATASETS:
        result = BUILTIN_IMAGE_DATASETS[source]()
    else:
        result = _load_path(_existing_source(source), columns)
    for split, extra in (("validation", validation_file), ("test", test_file)):
        if extra is not None:
            result.splits[split] = _load_extra_split(split, extra, columns, result.label_names)
    if max_rows is not None:
        result.splits["train"] = result.splits["train"][:max_rows]
    for split in list(result.splits):
        rows, skipped = check_images(result.splits[split], split, skip_bad_images)
        if not rows:
            raise UserError(f"the {split} split of {source} has no readable images left")
        result.splits[split] = rows
        result.skipped[split] = skipped
    return result


def _existing_source(source: str) -> Path:
    """Return ``source`` as an existing path, or explain what sources are accepted."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    builtins = ", ".join(sorted(BUILTIN_IMAGE_DATASETS))
    hint = did_you_mean(source, BUILTIN_IMAGE_DATASETS)
    raise UserError(
        f"image dataset '{source}' is not a built-in{hint} and no such file or folder exists "
        f"(resolved to {path.resolve()}); accepted: a built-in ({builtins}), a folder with one "
        f"sub-folder per class (optionally under train/ validation/ test/), or a "
        f"{'/'.join(TABLE_EXTENSIONS)} file with image-path and label columns"
    )


def _load_path(path: Path, columns: tuple[str, str]) -> ImageSplits:
    """Load a local folder (class folders, or split folders of class folders) or a table file."""
    if path.is_dir():
        split_dirs = _split_folders(path)
        if split_dirs:
            return _load_split_folders(path, split_dirs)
        rows, names = _read_class_folders(path)
        return ImageSplits({"train": rows}, names)
    if path.suffix.lower() in TABLE_EXTENSIONS:
        return ImageSplits({"train": _read_table(path, *columns)}, None)
    raise UserError(
        f"cannot read image dataset {path}: expected a folder of class folders or a "
        f"{'/'.join(TABLE_EXTENSIONS)} file with image-path and label columns"
    )


def _load_extra_split(
    split: str, extra: str | os.PathLike[str], columns: tuple[str, str], names: list[str] | None
) -> list[Row]:
    """Read a ``validation_file``/``test_file`` given as a file of paths or a class folder."""
    path = Path(extra).expanduser()
    if not path.exists():
        raise UserError(f"{split}_file '{extra}' does not exist (resolved to {path.resolve()})")
    if path.is_dir():
        rows, extra_names = _read_class_folders(path)
        _check_known_classes(path, extra_names, names)
        return rows
    if path.suffix.lower() not in TABLE_EXTENSIONS:
        raise UserError(
            f"{split}_file {path} must be a {'/'.join(TABLE_EXTENSIONS)} file with image-path "
            "and label columns, or a folder of class folders"
        )
    return _read_table(path, *columns)


# --------------------------------------------------------------------------- class folders


def _is_image_file(path: Path) -> bool:
    """True for a visible file whose name ends in one of :data:`IMAGE_EXTENSIONS`."""
    return (
        path.is_file() and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` in name order, leaving out hidden ones (``.ipynb_checkpoints``)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_folders(root: Path) -> tuple[list[Row], list[str]]:
    """Rows for ``root/<class>/**/<image>`` with the class folder's name as the label.

    Images in nested folders belong to their top class folder (as in torchvision's
    ``ImageFolder``); files with other endings are ignored. Rows come class by class, files in
    path order, so the listing is the same on every machine.
    """
    classes = _visible_dirs(root)
    if not classes:
        raise UserError(
            f"image folder {root} has no class sub-folders; put each class's images in "
            f"{root}/<class name>/ (image files: {' '.join(IMAGE_EXTENSIONS)})"
        )
    rows: list[Row] = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if _is_image_file(p))
        if not files:
            raise UserError(
                f"class folder {folder} holds no image files; accepted endings: "
                f"{' '.join(IMAGE_EXTENSIONS)} (remove the folder or add images)"
            )
        rows.extend({"image": str(p.resolve()), "label": folder.name} for p in files)
    return rows, [folder.name for folder in classes]


def _split_folders(root: Path) -> dict[str, Path]:
    """Map split name to sub-folder when ``root`` has a ``train/`` folder of class folders."""
    found: dict[str, Path] = {}
    for child in _visible_dirs(root):
        split = SPLIT_FOLDERS.get(child.name.lower())
        if split is None:
            continue
        if split in found:
            raise UserError(
                f"image folder {root} has two {split} folders ({found[split].name}/ and "
                f"{child.name}/); keep one"
            )
        found[split] = child
    train = found.get("train")
    # a class that happens to be called "test" must not turn a flat class tree into splits
    if train is None or not _visible_dirs(train):
        return {}
    others = [c.name for c in _visible_dirs(root) if c.name.lower() not in SPLIT_FOLDERS]
    if others:
        raise UserError(
            f"image folder {root} mixes split folders ({', '.join(p.name for p in found.values())}"
            f") with other folders ({', '.join(others)}); put class folders inside train/, "
            "validation/ and test/ only"
        )
    return found


def _load_split_folders(root: Path, split_dirs: dict[str, Path]) -> ImageSplits:
    """Read each split folder's class folders; classes come from ``train/``."""
    splits: dict[str, list[Row]] = {}
    names: list[str] = []
    for split in ("train", "validation", "test"):
        if split not in split_dirs:
            continue
        rows, split_names = _read_class_folders(split_dirs[split])
        if split == "train":
            names = split_names
        else:
            _check_known_classes(split_dirs[split], split_names, names)
        splits[split] = rows
    return ImageSplits(splits, names)


def _check_known_classes(folder: Path, found: list[str], known: list[str] | None) -> None:
    """A validation/test class the training data lacks could never be predicted: refuse it."""
    if not known:
        return
    extra = [name for name in found if name not in known]
    if extra:
        raise UserError(
            f"image folder {folder} has class folder(s) {', '.join(extra)} that the train split "
            f"lacks; train classes: {', '.join(known)}"
        )


# --------------------------------------------------------------------------- files of paths


def _read_table(path: Path, image_column: str, label_column: str) -> list[Row]:
    """Rows from a file with an image-path column and a label column.

    Relative paths are resolved against the file's folder, not the working directory, so a
    dataset folder can be moved or read from anywhere.
    """
    table = read_file(path)
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in table.column_names:
            raise UserError(
                f"{path} has no {role} column '{column}'"
                f"{did_you_mean(column, table.column_names)}; columns present: "
                f"{', '.join(table.column_names)} (set data.{role}_column)"
            )
    base = path.resolve().parent
    rows: list[Row] = []
    images, labels = table[image_column], table[label_column]
    for number, (value, label) in enumerate(zip(images, labels, strict=True), start=1):
        if not isinstance(value, str) or not value.strip():
            raise UserError(
                f"row {number} of {path} has no image path in column '{image_column}' "
                f"(got {value!r}); each row needs a path to an image file"
            )
        if label_key(label) is None:
            raise UserError(f"row {number} of {path} has no value in label column '{label_column}'")
        rows.append({"image": str((base / Path(value.strip()).expanduser()).resolve()),
                     "label": label})
    return rows


# --------------------------------------------------------------------------- checking images


def check_images(rows: list[Row], split: str, skip_bad: bool) -> tuple[list[Row], int]:
    """Check that every path row names a file Pillow can open; return (kept rows, skipped count).

    Only headers are read (``Image.verify``), so checking thousands of files takes seconds.
    Array rows must be 2-D, or 3-D with 1, 3 or 4 channels. A bad row raises :class:`UserError`
    naming the file and its 1-based row, unless ``skip_bad`` drops it (and counts it).
    """
    kept: list[Row] = []
    for number, row in enumerate(rows, start=1):
        reason = _image_problem(row["image"])
        if reason is None:
            kept.append(row)
        elif not skip_bad:
            raise UserError(
                f"image file {_describe(row['image'])} ({split} row {number}) cannot be read: "
                f"{reason}; set data.skip_bad_images=true to skip bad files"
            )
    return kept, len(rows) - len(kept)


def _image_problem(value: Any) -> str | None:
    """Why ``value`` cannot become an image, or ``None`` when it looks fine."""
    if isinstance(value, np.ndarray):
        if value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4)):
            return None
        return f"array of shape {value.shape} is not HxW or HxWxC with C in 1, 3, 4"
    if isinstance(value, Image.Image):
        return None
    path = Path(value)
    if not path.is_file():
        return "no such file" if not path.exists() else "not a file"
    try:
        with Image.open(path) as image:
            image.verify()
    except UnidentifiedImageError:
        return "not an image in a format Pillow knows (png, jpeg, bmp, gif, webp, tiff, ...)"
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types for damaged files
        return f"damaged image ({_first_line(exc)})"
    return None


def _describe(value: Any) -> str:
    """A short name for an image value in messages: the path, or the array's shape."""
    if isinstance(value, np.ndarray):
        return f"array{tuple(value.shape)}"
    return str(value)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- decoding


def load_image(value: str | os.PathLike[str] | np.ndarray | Image.Image) -> Image.Image:
    """Decode a path, a ``uint8``/``uint16`` array or a PIL image to an 8-bit RGB image.

    Greyscale, palette, CMYK and 16-bit images are converted; transparency is composited onto
    white (dropping alpha would show whatever colour hid under transparent pixels). JPEG EXIF
    rotation is applied so a phone photo is upright. Raises :class:`UserError` naming the file
    when it is missing, damaged or not an image.
    """
    if isinstance(value, np.ndarray):
        return to_rgb(_array_to_image(value))
    if isinstance(value, Image.Image):
        return to_rgb(value)
    path = Path(value)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except FileNotFoundError as exc:
        raise UserError(f"image file {path} does not exist") from exc
    except UnidentifiedImageError as exc:
        raise UserError(
            f"image file {path} is not in an image format Pillow can read "
            "(png, jpeg, bmp, gif, webp, tiff, ...)"
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"image file {path} cannot be decoded: {_first_line(exc)}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples: keep the top 8 bits (v / 256); a plain convert("L") clips at 255
        values = np.asarray(image, dtype=np.int64) >> 8
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round()
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def _array_to_image(array: np.ndarray) -> Image.Image:
    """Wrap an ``HxW``/``HxWxC`` ``uint8`` (or ``uint16``) array as a PIL image."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)  # same 16-to-8-bit rule as 16-bit files
    if array.dtype != np.uint8:
        raise UserError(
            f"image array has dtype {array.dtype}; accepted: uint8 (0..255) or uint16 arrays"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise UserError(
            f"image array has shape {array.shape}; accepted: HxW or HxWxC with C in 1, 3, 4"
        )
    # Pillow picks L / RGB / RGBA from a uint8 array's shape
    return Image.fromarray(np.ascontiguousarray(array))


# --------------------------------------------------------------------------- built-ins


def _load_digits() -> ImageSplits:
    """scikit-learn's 1,797 8x8 digits, scaled from 0..16 to 0..255 (train only)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 16 -> 255 exactly; rounding keeps the scale symmetric
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rows = [{"image": image, "label": label} for image, label in
            zip(images, digits.target.tolist(), strict=True)]
    return ImageSplits({"train": rows}, [str(i) for i in range(10)])


def fashion_mnist_dir() -> Path:
    """The folder holding Fashion-MNIST's IDX files ($TUNELAB_FASHION_MNIST_DIR, then the usual)."""
    override = os.environ.get(FASHION_MNIST_ENV)
    places = (Path(override).expanduser(),) if override else _FASHION_MNIST_PLACES
    for place in places:
        if _idx_path(place, "train-labels-idx1-ubyte") is not None:
            return place
    if override:
        raise UserError(
            f"{FASHION_MNIST_ENV}={override} holds no train-labels-idx1-ubyte(.gz); "
            f"{_FASHION_MNIST_HINT}"
        )
    raise UserError(
        "the built-in fashion_mnist dataset needs the Debian package dataset-fashion-mnist, "
        f"which is not installed; {_FASHION_MNIST_HINT}"
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    """The gzipped (or already unpacked) IDX file ``stem`` in ``folder``, if present."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


@lru_cache(maxsize=4)
def read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode an IDX file (LeCun's MNIST format) into a read-only ``uint8`` array.

    The header is big-endian int32s: a magic number (2051 images, 2049 labels), the count, and
    for images the rows and columns. The payload is decoded in one ``frombuffer`` call; the
    array is read-only, so the cache can hand the same one out again.
    """
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {_first_line(exc)}") from exc
    dims = 3 if magic == _IDX_IMAGES_MAGIC else 1
    header = 4 * (1 + dims)
    if len(data) < header:
        raise UserError(f"IDX file {path} is truncated ({len(data)} bytes)")
    fields = np.frombuffer(data, dtype=">i4", count=1 + dims).tolist()
    if fields[0] != magic:
        raise UserError(f"IDX file {path} has magic number {fields[0]}, expected {magic}")
    shape = tuple(fields[1:])
    if len(data) - header != int(np.prod(shape)):
        raise UserError(f"IDX file {path} holds {len(data) - header} bytes, expected shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_fashion_mnist() -> ImageSplits:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 train and 10,000 test 28x28 greyscale images."""
    folder = fashion_mnist_dir()
    splits: dict[str, list[Row]] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path = _idx_path(folder, f"{prefix}-images-idx3-ubyte")
        label_path = _idx_path(folder, f"{prefix}-labels-idx1-ubyte")
        if image_path is None or label_path is None:
            raise UserError(
                f"folder {folder} lacks the {prefix}-*-ubyte.gz files; {_FASHION_MNIST_HINT}"
            )
        images = read_idx(image_path, _IDX_IMAGES_MAGIC)
        labels = read_idx(label_path, _IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise UserError(
                f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels"
            )
        # one dict per row is the only per-image Python work; pixels stay views of one buffer
        splits[split] = [
            {"image": image, "label": label}
            for image, label in zip(images, labels.tolist(), strict=True)
        ]
    return ImageSplits(splits, list(FASHION_MNIST_LABELS))


#: Built-in image datasets by name.
BUILTIN_IMAGE_DATASETS: dict[str, Callable[[], ImageSplits]] = {
    "fashion_mnist": _load_fashion_mnist,
    "digits": _load_digits,
}
