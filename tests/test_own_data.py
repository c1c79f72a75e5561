"""Your own data (`barenet train --data PATH`, `barenet evaluate MODEL --data PATH`): the three
layouts, class names carried through to every command, both preparations, and each bad input
as one clear line with nothing written."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from barenet.data.idx import write_idx
from barenet.data.own import held_out, load_own
from barenet.errors import DataError

NAMES = ["circle", "cross", "line"]


def shape(kind: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A light shape on a dark background, jittered: 0 a ring, 1 an X, 2 a vertical bar."""
    y, x = np.indices((size, size)) - (size - 1) / 2 - rng.uniform(-1.5, 1.5, 2)[:, None, None]
    r = np.hypot(x, y)
    if kind == 0:
        ink = np.abs(r - size / 3.5) < 1.2
    elif kind == 1:
        ink = (np.abs(x - y) < 1.2) | (np.abs(x + y) < 1.2)
        ink &= r < size / 2.5
    else:
        ink = (np.abs(x) < 1.3) & (np.abs(y) < size / 3)
    noise = rng.integers(0, 30, (size, size))
    return np.where(ink, 220, 0) + noise


def make_folder(root: Path, n: int = 40, seed: int = 0, light: bool = False, suffix=".png"):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = shape(c, rng).astype(np.uint8)
            Image.fromarray(255 - img if light else img).save(root / name / f"{i}{suffix}")
    return root


def make_csv(path: Path, n: int = 60, seed: int = 0, labels=(3, 7, 9)) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = i % 3
        rows.append([labels[c], *shape(c, rng).ravel().tolist()])
    with path.open("w") as f:
        f.write("label," + ",".join(f"pixel{k}" for k in range(256)) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "barenet", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)  # fmt: skip


def one_line_error(p: subprocess.CompletedProcess, fragment: str) -> None:
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("barenet: error:") and fragment in lines[0], (
        p.stderr
    )


def test_a_folder_of_class_folders(tmp_path):
    root = make_folder(tmp_path / "shapes")
    dataset, source = load_own(root)
    assert dataset.spec.classes == tuple(NAMES) and source.layout == "folder"
    assert source.prepare == "resize" and source.size == 16 and not source.invert
    assert dataset.train_images.shape == (120, 16, 16) and len(dataset.test_labels) == 0
    # shuffled once, the same way every time: the validation split (the last 10) is mixed
    assert len(set(dataset.train_labels[-10:].tolist())) > 1
    again, again_source = load_own(root)
    np.testing.assert_array_equal(again.train_labels, dataset.train_labels)
    assert again_source.fingerprint == source.fingerprint


def test_dark_on_light_images_are_inverted_and_a_train_test_layout_is_held_out(tmp_path):
    make_folder(tmp_path / "d" / "train", light=True)
    make_folder(tmp_path / "d" / "test", n=10, seed=1, light=True)
    dataset, source = load_own(tmp_path / "d", size=20)
    assert source.invert and dataset.train_images.shape[1:] == (20, 20)
    assert np.median(dataset.train_images[:, 0]) < 60  # the background is dark now
    assert len(dataset.test_labels) == 30 and dataset.test_images.shape == (30, 20, 20)


def test_photo_preparation_makes_mnist_style_digits(tmp_path):
    root = make_folder(tmp_path / "shapes", n=5, light=True)
    dataset, source = load_own(root, prepare="photo")
    assert source.prepare == "photo" and dataset.train_images.shape == (15, 28, 28)
    with pytest.raises(DataError, match="--prepare photo makes 28x28"):
        load_own(root, prepare="photo", size=32)


def test_a_csv_file_with_any_integer_labels(tmp_path):
    dataset, source = load_own(make_csv(tmp_path / "d.csv"))
    assert dataset.spec.classes == ("3", "7", "9") and source.layout == "csv"
    assert dataset.train_images.shape == (60, 16, 16) and set(dataset.train_labels) == {0, 1, 2}


def test_a_folder_of_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 15)):
        y = np.arange(n) % 3
        x = np.stack([shape(c, rng) for c in y]).astype(np.uint8)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", x)
        data = tmp_path / f"{split}-labels-idx1-ubyte"
        write_idx(data, (y + 1).astype(np.uint8))  # labels 1..3, as EMNIST letters count
        data.with_suffix(".gz").write_bytes(gzip.compress(data.read_bytes()))
        data.with_suffix(".gz").rename(data.parent / (data.name + ".gz"))
        data.unlink()  # gzipped labels, raw images
    dataset, source = load_own(tmp_path)
    assert source.layout == "idx" and dataset.spec.classes == ("1", "2", "3")
    assert len(dataset.test_labels) == 15 and set(dataset.test_labels) == {0, 1, 2}


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: (p / "only").mkdir(parents=True), "only one class"),
        (
            lambda p: (
                [(p / c).mkdir(parents=True) for c in "ab"]
                and Image.new("L", (8, 8)).save(p / "a" / "x.png")
            ),
            "empty class folders",
        ),  # fmt: skip
        (
            lambda p: make_folder(p, n=2) and (p / "cross" / "notes.txt").write_text("hi"),
            "not images: ",
        ),
        (
            lambda p: make_folder(p, n=2) and (p / "line" / "bad.png").write_bytes(b"not a png"),
            "unreadable image files: ",
        ),
    ],
    ids=["one-class", "empty-class", "non-image", "unreadable"],
)
def test_bad_folders(tmp_path, make, fragment):
    make(tmp_path / "d")
    with pytest.raises(DataError, match=fragment):
        load_own(tmp_path / "d")


def test_bad_files_are_all_listed(tmp_path):
    make_folder(tmp_path / "d", n=2)
    for k in range(7):
        (tmp_path / "d" / "line" / f"junk{k}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"junk0.png.*junk4.png and 2 more"):
        load_own(tmp_path / "d")


@pytest.mark.parametrize(
    "row, fragment",
    [
        ("seven," + ",".join(["0"] * 256), "row 3: the label 'seven' is not an integer"),
        ("3," + ",".join(["0"] * 255), "row 3 has 256 values, the rows before it 257"),
        (
            "3," + ",".join(["0"] * 255 + ["300"]),
            "row 3: pixels must be whole numbers from 0 to 255",
        ),
        (
            "3," + ",".join(["0"] * 255 + ["-1"]),
            "row 3: pixels must be whole numbers from 0 to 255",
        ),
        ("3.5," + ",".join(["0"] * 256), "the label '3.5' is not an integer"),
    ],
    ids=["label-word", "short-row", "pixel-300", "pixel-negative", "label-fraction"],
)
def test_bad_csv_rows(tmp_path, row, fragment):
    path = make_csv(tmp_path / "d.csv", n=6)
    lines = path.read_text().splitlines()
    lines.insert(2, row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=fragment):
        load_own(path)


def test_a_csv_of_one_class_or_not_square(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("label,a,b,c,d\n1,0,0,0,0\n1,5,5,5,5\n")
    with pytest.raises(DataError, match="only one class"):
        load_own(path)
    path.write_text("1,0,0,0\n2,0,0,0\n")
    with pytest.raises(DataError, match="a square number of pixels"):
        load_own(path)


def test_a_held_out_set_with_other_classes_is_refused(tmp_path):
    make_folder(tmp_path / "d")
    _, source = load_own(tmp_path / "d")
    (tmp_path / "h" / "square").mkdir(parents=True)
    make_folder(tmp_path / "h", n=3)
    Image.new("L", (16, 16)).save(tmp_path / "h" / "square" / "0.png")
    with pytest.raises(DataError, match="classes the model does not know: square"):
        held_out(tmp_path / "h", source.to_dict(), NAMES)


def test_train_evaluate_predict_plot_with_class_names(tmp_path):
    make_folder(tmp_path / "d" / "train", n=60, light=True)
    make_folder(tmp_path / "d" / "test", n=15, seed=1, light=True)
    out = tmp_path / "run"
    p = run("train", "--data", str(tmp_path / "d"), "--epochs", "4", "--out", str(out),
            "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "180 images in 3 classes (circle, cross, line), 16x16" in p.stderr
    assert "inverted to light on dark" in p.stderr
    test = float(p.stdout.split("test accuracy")[1].split("%")[0])
    assert test >= 90
    meta_run = json.loads((out / "run.json").read_text())
    assert meta_run["data"]["layout"] == "folder" and meta_run["recipe"]["val_size"] == 15
    # evaluate on the held-out part, by class name
    e = run("evaluate", str(out), "--data", str(tmp_path / "d" / "test"))
    assert e.returncode == 0, e.stderr
    assert "held-out set" in e.stdout and " cross " in e.stdout
    assert float(e.stdout.split("test accuracy")[1].split("%")[0]) == test
    # predict names the class; the file is prepared as the model's data was (inverted)
    image = tmp_path / "d" / "test" / "cross" / "3.png"
    q = run("predict", str(out), str(image))
    assert q.returncode == 0 and q.stdout.split(": ")[1].startswith("cross"), q.stdout
    # without --data, a model of one's own data says what to do
    one_line_error(run("evaluate", str(out)), "measure it on a held-out set with --data PATH")
    r = run("plot", str(out), "--data", str(tmp_path / "d" / "test"), "--out",
            str(tmp_path / "plots"))  # fmt: skip
    assert r.returncode == 0 and (tmp_path / "plots" / "confusion.png").exists(), r.stderr
    # resume of the finished run: nothing to do, and the data is checked unchanged
    again = run("train", "--resume", str(out), "--no-progress")
    assert again.returncode == 0 and "already trained" in again.stderr
    (tmp_path / "d" / "train" / "line" / "0.png").unlink()
    one_line_error(run("train", "--resume", str(out)), "the data changed since the run started")


def test_a_cnn_adapts_to_the_image_size(tmp_path):
    path = make_csv(tmp_path / "d.csv", n=120)
    out = tmp_path / "run"
    p = run("train", "--data", str(path), "--recipe", "cnn", "--epochs", "1", "--out", str(out),
            "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "test accuracy       none: the data has no held-out test set" in p.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "nowhere"], "nowhere: no such file or folder"),
        (["--data", "d", "--dataset", "mnist"], "give one of them"),
        (["--prepare", "photo"], "apply to your own data"),
        (["--data", "d.csv", "--prepare", "photo"], "apply to folders of image files"),
        (["--data", "one"], "only one class"),
    ],
)
def test_bad_train_data_is_one_line_and_writes_nothing(tmp_path, args, fragment):
    make_folder(tmp_path / "d", n=2)
    make_csv(tmp_path / "d.csv", n=6)
    (tmp_path / "one" / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 200).save(tmp_path / "one" / "a" / "x.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(run("train", *args, "--out", "out", cwd=tmp_path), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_packaged_model_on_a_folder_of_digit_photos(tmp_path, mnist):
    """`evaluate --data` also measures an MNIST model on photos of one's own: a folder per digit,
    each image prepared as `barenet predict` prepares a photo (dark ink on white paper here)."""
    for c in range(10):
        (tmp_path / "photos" / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(mnist.test_labels == c)[:10]:
            big = Image.fromarray(255 - mnist.test_images[i]).resize((112, 112))
            big.save(tmp_path / "photos" / str(c) / f"{i}.jpg")
    p = run("evaluate", "--data", str(tmp_path / "photos"),
            str(Path(__file__).parents[1] / "models" / "cnn"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "held-out set" in p.stdout and ": 100 images" in p.stdout
    assert float(p.stdout.split("test accuracy")[1].split("%")[0]) >= 95
