"""Your own data: `barenet train --data PATH` and `barenet evaluate MODEL --data PATH`.

PATH is one of three layouts:

- a folder with one sub-folder of image files per class (the ImageFolder layout of torchvision
  and Keras): class names are the folder names, in sorted order. A folder holding `train/` and
  `test/` (each in that layout) gives a held-out test set too.
- a CSV file `label,pixel0,...,pixelK` (Kaggle's digit recognizer): one image per row, K + 1 a
  square number of pixels 0-255; a first row that is not numbers is a header. Class names are
  the labels (any integers), in increasing order.
- a folder with the IDX files of an MNIST-format set (EMNIST, KMNIST, QMNIST, Fashion-MNIST):
  `*train*images*`, `*train*labels*` and, when present, `*t10k*` or `*test*` files, gzipped or
  not. Class names are the labels.

Image files are prepared one of two ways (`prepare`):

- "photo": as `barenet predict` prepares a photo of a digit (data/images.py): ink found,
  cropped, scaled to 20x20 and centred by its mass in 28x28, white on black;
- "resize": kept as they are, in grey, resized to size x size (Lanczos) when they differ, and
  inverted when they are dark on light (the median of their borders is light), so that, as in
  MNIST, the background is dark: a network learns either way, but a light background of ones
  makes the seed's learning rate too large;
- "auto" (the default): "resize" when every image is already small (at most 64 pixels a side),
  else "photo". CSV and IDX data are used as they are.

The examples are shuffled once with a fixed seed when loaded, so that the validation split
(the training set's last examples, as for MNIST) holds every class. Each failure is one
DataError that names the file or row at fault; nothing is loaded halfway.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, ImageError
from .datasets import Dataset, DatasetSpec
from .idx import read_idx
from .images import _greyscale, open_image, prepare_digit

PREPARE = ("auto", "photo", "resize")
SMALL = 64  # "auto": images at most this many pixels a side are kept as they are
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                  ".ppm", ".pbm"}  # fmt: skip
SHUFFLE_SEED = 20_250  # fixed: the same data always splits the same way
LISTED = 5  # bad files named in a message, then a count


@dataclass(frozen=True)
class Source:
    """Where a dataset of one's own came from and how it was prepared (saved with the model and
    the run, so that `evaluate --data` and `--resume` prepare theirs the same way)."""

    path: str
    layout: str  # "folder" | "csv" | "idx"
    prepare: str  # "photo" | "resize" | "as is"
    size: int  # images are size x size
    fingerprint: str  # sha256 of the training images and labels, as loaded
    invert: bool = False  # "resize": dark on light images were inverted (ink bright, as MNIST)

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "layout": self.layout, "prepare": self.prepare,
                "size": self.size, "invert": self.invert,
                "fingerprint": self.fingerprint}  # fmt: skip


def _listed(paths: list[Path]) -> str:
    named = ", ".join(str(p) for p in paths[:LISTED])
    return named + (f" and {len(paths) - LISTED} more" if len(paths) > LISTED else "")


def layout_of(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: give a folder of class folders, a .csv file or a folder of "
                            "IDX files")  # fmt: skip
        return "csv"
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(re.search(r"idx\d-ubyte", p.name) for p in files):
        return "idx"
    return "folder"


# --- a folder of class folders ---------------------------------------------------------------


def _class_folders(root: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted) and each class's image files; every error found, named."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (the layout is {root}/CLASS/IMAGE.png)")
    if len(classes) < 2:
        raise DataError(f"{root}: only one class ({classes[0]}); a classifier needs two or more")
    files, empty, strays = [], [], []
    for name in classes:
        inside = sorted(p for p in (root / name).rglob("*")
                        if p.is_file() and not p.name.startswith("."))  # fmt: skip
        images = [p for p in inside if p.suffix.lower() in IMAGE_SUFFIXES]
        strays += [p for p in inside if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            empty.append(name)
        files.append(images)
    if strays:
        raise DataError(f"{root}: files that are not images: {_listed(strays)}")
    if empty:
        raise DataError(f"{root}: empty class folders (no image files): {', '.join(empty)}")
    return classes, files


def _open_all(files: list[Path]) -> list[Image.Image]:
    images, bad = [], []
    for f in files:
        try:
            images.append(open_image(f))
        except ImageError:
            bad.append(f)
    if bad:
        raise DataError(f"unreadable image files: {_listed(bad)}")
    return images


def _prepare(images: list[Image.Image], files: list[Path], prepare: str, size: int) -> np.ndarray:
    """Images -> (N, size, size) uint8 as `prepare` says ("photo" or "resize")."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    blank = []
    for i, (img, f) in enumerate(zip(images, files)):
        if prepare == "photo":
            try:
                out[i] = prepare_digit(img)
            except ImageError:
                blank.append(f)
        else:
            grey = Image.fromarray(np.clip(_greyscale(img) + 0.5, 0, 255).astype(np.uint8))
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.LANCZOS)
            out[i] = np.asarray(grey)
    if blank:
        raise DataError(f"images with no ink standing out of the background: {_listed(blank)} "
                        "(--prepare resize keeps images as they are)")  # fmt: skip
    return out


def light_background(x: np.ndarray) -> bool:
    """Whether images (N, H, W) are dark on light: the median of their border pixels."""
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    return bool(np.median(border) >= 128)


def load_resized(path: str | Path, size: int, invert: bool) -> np.ndarray:
    """One image file -> (size, size) uint8, in grey, resized (and inverted) as "resize"
    prepared a model's images."""
    try:
        img = open_image(path)
    except ImageError as e:
        raise DataError(str(e)) from None
    out = _prepare([img], [Path(path)], "resize", size)[0]
    return 255 - out if invert else out


def _split(root: Path) -> bool:
    """Whether a folder holds train/ and test/ (each of class folders) rather than classes."""
    parts = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return parts == {"train", "test"}


def _load_folder(root: Path, prepare: str, size: int | None, invert: bool | None = None
                 ) -> tuple[np.ndarray, np.ndarray, list[str], str, int, bool]:  # fmt: skip
    classes, files = _class_folders(root)
    flat = [f for fs in files for f in fs]
    labels = np.concatenate([np.full(len(fs), c, dtype=np.int64) for c, fs in enumerate(files)])
    images = _open_all(flat)
    if prepare == "auto":
        prepare = "resize" if all(max(im.size) <= SMALL for im in images) else "photo"
    if prepare == "photo":
        if size not in (None, 28):
            raise DataError(
                "--prepare photo makes 28x28 images, as MNIST's: leave --image-size out"
            )
        size = 28
    elif size is None:  # the commonest size among the images, when square; else 28
        sizes = [im.size for im in images]
        common = max(set(sizes), key=sizes.count)
        size = common[0] if common[0] == common[1] else 28
    x = _prepare(images, flat, prepare, size)
    if prepare == "resize":
        invert = light_background(x) if invert is None else invert
        if invert:
            x = 255 - x
    return x, labels, classes, prepare, size, bool(invert)


# --- a CSV file ------------------------------------------------------------------------------


def _csv_problem(path: Path, header: bool) -> str:
    """The first row that is wrong, and how (read slowly, only after the fast read failed)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        width = None
        for n, line in enumerate(f, start=1):
            if n == 1 and header or not line.strip():
                continue
            cells = line.rstrip("\r\n").split(",")
            width = width or len(cells)
            if len(cells) != width:
                return f"row {n} has {len(cells)} values, the rows before it {width}"
            if not re.fullmatch(r"\s*-?\d+\s*", cells[0]):
                return f"row {n}: the label {cells[0].strip()!r} is not an integer"
            for k, v in enumerate(cells[1:]):
                if not re.fullmatch(r"\s*\d+(\.0*)?\s*", v) or float(v) > 255:
                    return f"row {n}: pixel {k} is {v.strip()!r}, not a whole number from 0 to 255"
    return "it is not a table of numbers"


def _load_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if not first.strip():
        raise DataError(f"{path}: empty file")
    header = not re.fullmatch(r"[\s\d,.\-]*", first)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=int(header), ndmin=2)
    except ValueError:
        raise DataError(f"{path}: {_csv_problem(path, header)}") from None
    if table.shape[0] == 0:
        raise DataError(f"{path}: no rows of data")
    labels, pixels = table[:, 0], table[:, 1:]
    side = math.isqrt(pixels.shape[1])
    if side < 2 or side * side != pixels.shape[1]:
        raise DataError(f"{path}: rows of {table.shape[1]} values: expected a label and a square "
                        f"number of pixels (1 + 784 for 28x28), not {pixels.shape[1]} pixels")  # fmt: skip
    if not np.all(labels == np.round(labels)):
        raise DataError(f"{path}: {_csv_problem(path, header)}")
    bad = np.flatnonzero(~np.all((pixels >= 0) & (pixels <= 255) & (pixels == np.round(pixels)),
                                 axis=1))  # fmt: skip
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 1 + int(header)}: pixels must be whole numbers "
                        "from 0 to 255")  # fmt: skip
    return pixels.astype(np.uint8).reshape(-1, side, side), labels.astype(np.int64)


# --- a folder of IDX files -------------------------------------------------------------------


def _idx_files(root: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        name = p.name.lower()
        if not p.is_file() or not re.search(r"idx\d-ubyte", name):
            continue
        split = (
            "train" if "train" in name else "test" if ("t10k" in name or "test" in name) else None
        )
        kind = "images" if "idx3" in name else "labels" if "idx1" in name else None
        if split and kind:
            found.setdefault(f"{split}-{kind}", []).append(p)
    many = [ps for ps in found.values() if len(ps) > 1]
    if many:
        raise DataError(f"{root}: more than one file of the same kind: {_listed(many[0])}")
    if "train-images" not in found or "train-labels" not in found:
        raise DataError(f"{root}: needs the training images and labels (*train*images*idx3-ubyte, "
                        "*train*labels*idx1-ubyte)")  # fmt: skip
    if ("test-images" in found) != ("test-labels" in found):
        raise DataError(f"{root}: the test images come without their labels, or the other way")
    return {k: v[0] for k, v in found.items()}


def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, expect_magic=0x00000803, expect_kind="IDX image")
    y = read_idx(labels, expect_magic=0x00000801, expect_kind="IDX label")
    if len(x) != len(y):
        raise DataError(f"{images.name} holds {len(x)} images, {labels.name} {len(y)} labels")
    return x, y.astype(np.int64)


# --- all layouts -----------------------------------------------------------------------------


def _shuffled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(y))
    return x[order], y[order]


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _labels_to_classes(y: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    values = np.unique(y)
    if len(values) < 2:
        raise DataError(f"{path}: only one class ({values[0] if len(values) else 'none'}); a "
                        "classifier needs two or more")  # fmt: skip
    return np.searchsorted(values, y), [str(v) for v in values]


def load_own(path: str | Path, prepare: str = "auto", size: int | None = None,
             invert: bool | None = None) -> tuple[Dataset, Source]:  # fmt: skip
    """Load PATH (see the module doc) as a Dataset whose test set is its held-out part (empty
    when it has none), and how it was prepared.

    invert: for "resize", whether to invert (None: when the images are dark on light).
    Raises: DataError for anything wrong, with the file or row at fault.
    """
    path = Path(path)
    if prepare not in PREPARE:
        raise DataError(f"prepare must be one of {', '.join(PREPARE)}, not {prepare!r}")
    layout = layout_of(path)
    if layout != "folder" and (prepare != "auto" or size is not None):
        raise DataError(f"{path}: --prepare and --image-size apply to folders of image files; "
                        f"{layout.upper()} data is used as it is")  # fmt: skip
    x_test = y_test = None
    test_classes: list[str] = []
    if layout == "folder":
        if _split(path):
            x, y, classes, how, size, invert = _load_folder(path / "train", prepare, size, invert)
            x_test, y_test, test_classes, *_ = _load_folder(path / "test", how, size, invert)
        else:
            x, y, classes, how, size, invert = _load_folder(path, prepare, size, invert)
    elif layout == "csv":
        x, raw = _load_csv(path)
        y, classes = _labels_to_classes(raw, path)
        how, size = "as is", x.shape[1]
    else:
        files = _idx_files(path)
        x, raw = _read_idx_pair(files["train-images"], files["train-labels"])
        y, classes = _labels_to_classes(raw, path)
        if "test-images" in files:
            x_test, raw_test = _read_idx_pair(files["test-images"], files["test-labels"])
            if x_test.shape[1:] != x.shape[1:]:
                raise DataError(f"{path}: the test images are {x_test.shape[1:]}, the training "
                                f"images {x.shape[1:]}")  # fmt: skip
            test_classes = [str(v) for v in np.unique(raw_test)]
            y_test = raw_test
        how, size = "as is", x.shape[1]
        if x.ndim != 3 or x.shape[1] != x.shape[2]:
            raise DataError(f"{path}: images of shape {x.shape[1:]}: square images needed")
    if x_test is not None and y_test is not None:
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{path}: the test set has classes the training set lacks: "
                            f"{', '.join(unknown)}")  # fmt: skip
        if layout == "idx":
            y_test = np.searchsorted(np.array([int(c) for c in classes]), y_test)
        else:  # folder: the test folder's class indices by name
            y_test = np.array([classes.index(test_classes[c]) for c in y_test], dtype=np.int64)
    else:
        x_test, y_test = np.zeros((0, size, size), np.uint8), np.zeros(0, np.int64)
    x, y = _shuffled(x, y)
    name = path.name or str(path)
    spec = DatasetSpec(name=name, md5=("", "", "", ""), classes=tuple(classes))
    dataset = Dataset(spec, path, x, y, x_test, y_test)
    return dataset, Source(str(path.resolve()), layout, how, size, fingerprint(x, y),
                           bool(invert))  # fmt: skip


def held_out(path: str | Path, source: dict[str, object], classes: list[str]) -> Dataset:
    """A held-out set at PATH for a model trained on data prepared as `source` says, with the
    model's `classes`: its images prepared the same way, its labels as the model's indices (the
    test part of PATH when it has one, else all of it).

    Raises: DataError when its layout or image size does not fit, or it has a class the model
    does not know.
    """
    path = Path(path)
    prepare = str(source.get("prepare", "as is"))
    size = int(str(source.get("size", 28)))
    layout = layout_of(path)
    if layout == "folder":  # only the part measured on is read and prepared
        if prepare == "as is":
            prepare = "resize"
        invert = bool(source.get("invert", False)) if prepare == "resize" else None
        folder = path / "test" if _split(path) else path
        x, y, names, *_ = _load_folder(folder, prepare, size, invert)
    else:
        dataset, _ = load_own(path)
        if len(dataset.test_labels):  # its own held-out part
            x, y = dataset.test_images, dataset.test_labels
        else:
            x, y = dataset.train_images, dataset.train_labels
        names = list(dataset.spec.classes)
    unknown = sorted(set(names[c] for c in np.unique(y)) - set(classes))
    if unknown:
        raise DataError(f"{path}: classes the model does not know: {', '.join(unknown)} (it "
                        f"knows {', '.join(classes)})")  # fmt: skip
    if x.shape[1:] != (size, size):
        raise DataError(f"{path}: {x.shape[1]}x{x.shape[2]} images; the model reads "
                        f"{size}x{size}")  # fmt: skip
    mapped = np.array([classes.index(names[c]) for c in range(len(names))])[y]
    spec = DatasetSpec(name=path.name or str(path), md5=("", "", "", ""), classes=tuple(classes))
    return Dataset(spec, path, x[:0], mapped[:0], x, mapped)
