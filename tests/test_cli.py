"""Each CLI command through a subprocess, on the real MNIST, with its error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from barenet.apps.live import monitor_of_run
from barenet.files.modelfile import load_model


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barenet", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)  # fmt: skip


def assert_one_line_error(p: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) >= 1 and fragment in lines[-1], p.stderr
    assert "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist):
    """One epoch of the seed recipe, trained by `barenet train`."""
    out = tmp_path_factory.mktemp("run")
    p = run("train", "--epochs", "1", "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    return out, p


def test_train_writes_model_and_history(trained):
    out, p = trained
    assert "test accuracy" in p.stdout and "model saved to" in p.stdout
    history = json.loads((out / "history.json").read_text())
    (epoch,) = history["epochs"]
    assert set(epoch) >= {"train_loss", "val_accuracy", "seconds"} and epoch["val_accuracy"] > 0.95
    test_acc = float(p.stdout.split("test accuracy")[1].split("%")[0])
    assert test_acc >= 96.0


def test_train_refuses_to_overwrite_a_model(trained):
    out, _ = trained
    assert_one_line_error(run("train", "--epochs", "1", "--out", str(out)), "exists")


def test_default_run_directories_never_clobber(tmp_path, mnist):
    for _ in range(2):
        assert run("train", "--epochs", "1", "--no-progress", cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seed-mnist", "seed-mnist-2"]


def test_evaluate(trained):
    out, p = trained
    e = run("evaluate", str(out))
    assert e.returncode == 0, e.stderr
    assert "per-class accuracy" in e.stdout and "confusion matrix" in e.stdout
    acc = float(e.stdout.split("test accuracy")[1].split("%")[0])
    assert f"{acc:.2f}" == p.stdout.split("test accuracy")[1].split("%")[0].strip()
    rows = [line.split() for line in e.stdout.splitlines()[-10:]]
    assert sum(int(v) for row in rows for v in row[1:]) == 10000


def test_evaluate_on_the_validation_split(trained):
    out, _ = trained
    e = run("evaluate", str(out), "--validation")
    assert e.returncode == 0, e.stderr
    assert "mnist validation split (held out in training): 5000 images" in e.stdout
    val = json.loads((out / "history.json").read_text())["epochs"][-1]["val_accuracy"]
    assert f"validation accuracy {100 * val:.2f}%" in e.stdout
    assert "test accuracy" not in e.stdout
    rows = [line.split() for line in e.stdout.splitlines()[-10:]]
    assert sum(int(v) for row in rows for v in row[1:]) == 5000
    for extra, fragment in ((["--dataset", "mnist"], "leave --data and --dataset out"),
                            (["--data", str(out)], "leave --data and --dataset out")):  # fmt: skip
        assert_one_line_error(run("evaluate", str(out), "--validation", *extra), fragment)


def test_evaluate_refuses_models_of_different_validation_splits(trained, tmp_path):
    out, _ = trained
    other = tmp_path / "other"
    p = run("train", "--epochs", "1", "--batch-size", "512", "--out", str(other), "--no-progress",
            "--recipe", str(_recipe_file(tmp_path, val_size=1000)))  # fmt: skip
    assert p.returncode == 0, p.stderr
    e = run("evaluate", str(other), "--validation")
    assert e.returncode == 0 and "split (held out in training): 1000 images" in e.stdout
    assert_one_line_error(run("evaluate", str(out), str(other), "--validation"),
                          "the same validation split")  # fmt: skip


def _recipe_file(tmp_path: Path, **changes) -> Path:
    from barenet.train.recipes import RECIPES

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**RECIPES["seed"].to_dict(), **changes}))
    return path


def test_output_into_a_closed_pipe_ends_quietly(trained):
    out, _ = trained
    # `true` reads nothing and is gone long before the accuracy is known: every write fails
    p = subprocess.run(f"{sys.executable} -m barenet evaluate {out} | true", shell=True,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0 and p.stderr == ""


def test_predict_real_test_digits(trained, mnist, tmp_path):
    out, _ = trained
    paths = []
    for i in range(5):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(mnist.test_images[i]).save(path)
        paths.append(str(path))
    p = run("predict", str(out / "model.npz"), *paths)
    assert p.returncode == 0, p.stderr
    predicted = [int(line.split(": ")[1].split()[0]) for line in p.stdout.splitlines()]
    assert predicted == [int(v) for v in mnist.test_labels[:5]]
    assert p.stdout.count("%") == 15  # the top 3 of each


def test_predict_with_the_packaged_model_shows_what_it_saw(mnist, tmp_path):
    photo = tmp_path / "seven.jpg"
    big = Image.fromarray(255 - mnist.test_images[0]).resize((300, 300))  # dark on light
    big.convert("RGB").save(photo)
    p = run("predict", str(photo), "--show", str(tmp_path / "seen"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{photo}: 7  (7 ")
    seen = np.asarray(Image.open(tmp_path / "seen" / "seven-28x28.png"))
    assert seen.shape == (28, 28) and seen.max() == 255 and seen[0, 0] == 0
    p = run("predict", str(photo), "--min-confidence", "1")
    assert p.returncode == 0 and "not sure" in p.stdout
    assert_one_line_error(run("predict", str(photo), "--min-confidence", "2"), "between 0 and 1")


def test_gradcheck_command():
    p = run("gradcheck")
    assert p.returncode == 0, p.stderr
    assert "worst relative error" in p.stdout


def test_data_info_and_fetch(mnist):
    p = run("data", "info", "mnist")
    assert p.returncode == 0 and "ready, MD5 checksums hold" in p.stdout
    p = run("data", "fetch", "mnist")
    assert p.returncode == 0 and "ready in" in p.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--lr", "-0.1"], "--lr: must be a positive number"),
        (["train", "--epochs", "0"], "--epochs: must be at least 1"),
        (["train", "--epochs", "two"], "expected a whole number"),
        (["train", "--batch-size", "-5"], "--batch-size: must be at least 1"),
        (["train", "--dataset", "cifar"], "invalid choice"),
        (["train", "--recipe", "huge"], "invalid choice"),
        (["evaluate", "nope.npz"], "no such model file"),
        (["predict", "nope.npz", "x.png"], "no such model file"),
        (["data", "fetch", "emnist"], "unknown dataset 'emnist'"),
        (["frobnicate"], "invalid choice"),
        (["train", "--gpu", "--ray"], "--gpu trains in this process"),
    ],
)
def test_bad_flags_and_files_one_line(args, fragment):
    assert_one_line_error(run(*args), fragment)


def test_evaluate_refuses_a_dataset_the_model_was_not_trained_on(trained):
    out, _ = trained
    for command in ("evaluate", "plot"):
        p = run(command, str(out), "--dataset", "fashion-mnist")
        assert_one_line_error(p, "the model was trained on mnist, not fashion-mnist")
    assert not (out / "plots").exists()


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(run("evaluate", str(bad)), "not a valid .npz archive")


def test_bad_images(trained, tmp_path):
    out, _ = trained
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert_one_line_error(run("predict", str(out), str(text)), "not an image file")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(blank)
    assert_one_line_error(run("predict", str(out), str(blank)), "blank.png: the image is blank")
    assert_one_line_error(
        run("predict", str(out), str(tmp_path / "missing.png")), "no such image file"
    )


def test_bad_data_dir_is_reported_but_cache_still_serves(trained, tmp_path):
    out, _ = trained
    p = run("evaluate", str(out), "--data-dir", str(tmp_path / "nothing"))
    assert p.returncode == 0  # the verified cache already holds MNIST


def test_missing_data_everywhere_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BARENET_DATA", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    # fashion-mnist from an empty --data-dir, with the OS copy and downloads out of reach
    p = subprocess.run([sys.executable, "-c",
                        "import sys; from barenet.data import datasets as d\n"
                        "d.DATASETS['fashion-mnist'] = d.DatasetSpec('fashion-mnist', d.DATASETS['fashion-mnist'].md5, ('x',),"
                        " mirrors=('http://127.0.0.1:9/',), system_dirs=())\n"
                        "from barenet.apps.cli import main; sys.exit(main(sys.argv[1:]))",
                        "data", "fetch", "fashion-mnist", "--data-dir", str(empty)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert_one_line_error(p, "could not get fashion-mnist")
    assert "--data-dir" in p.stderr.splitlines()[-1] and "127.0.0.1:9" in p.stderr.splitlines()[-1]
    assert not any((tmp_path / "cache" / "fashion-mnist").glob("*-ubyte"))


def test_plot_writes_the_four_pictures(trained, tmp_path):
    out, _ = trained
    p = run("plot", str(out), "--out", str(tmp_path / "pics"))
    assert p.returncode == 0, p.stderr
    for name in ("curves", "confusion", "mistakes", "weights"):
        with Image.open(tmp_path / "pics" / f"{name}.png") as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_accuracy,val_accuracy") and len(rows) == 2
    assert_one_line_error(run("plot", str(tmp_path / "nothing")), "no such model file")


def test_train_on_every_image_without_a_validation_split(tmp_path, mnist):
    """--val-size 0: the members train on all 60,000 images; no validation figure anywhere
    (null in the JSON files the pages read), the test set measured at the end as usual."""
    out = tmp_path / "all"
    p = run("train", "--epochs", "1", "--batch-size", "512", "--members", "2", "--val-size", "0",
            "--out", str(out), "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "member 1: validation none, test " in p.stderr and " val " not in p.stderr
    assert ("ensemble of 2 validation accuracy none: trained on every training image "
            "(val_size 0)") in p.stdout  # fmt: skip
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["val_accuracy"] is None and summary["test_accuracy"] > 0.95
    assert f"ensemble of 2 test accuracy       {100 * summary['test_accuracy']:.2f}%" in p.stdout
    history = json.loads((out / "member-1" / "history.json").read_text())
    assert history["recipe"]["val_size"] == 0 and history["epochs"][0]["val_accuracy"] is None
    events = json.loads((out / "member-1" / "watch.json").read_text())["events"]
    begin = next(e for e in events if e["type"] == "begin")
    assert begin["steps"] == 118  # ceil(60,000 / 512): every training image, none held out
    assert next(e for e in events if e["type"] == "epoch")["val_accuracy"] is None
    (out / "member-1" / "watch.json").unlink()  # `barenet serve` then builds it from history
    rebuilt = monitor_of_run(out / "member-1").events()
    assert [e["val_accuracy"] for e in rebuilt if e["type"] == "epoch"] == [None]
    assert not any(e["type"] == "confusion" for e in rebuilt)  # no validation digits to show
    assert_one_line_error(run("evaluate", str(out), "--validation"), "no validation split")
    pics = run("plot", str(out / "member-1"), "--out", str(tmp_path / "pics"))
    assert pics.returncode == 0, pics.stderr
    assert run("evaluate", str(out)).returncode == 0
    assert_one_line_error(run("train", "--val-size", "60000", "--out", str(tmp_path / "x")),
                          "leaves none of mnist's 60000 training images")  # fmt: skip
    assert_one_line_error(run("train", "--val-size", "-1"), "--val-size: must be 0 or more")


def test_train_an_ensemble_then_evaluate_it(tmp_path, mnist):
    out = tmp_path / "ens"
    p = run("train", "--epochs", "1", "--batch-size", "512", "--members", "3", "--out", str(out),
            "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "member 3/3 (seed 2)" in p.stderr and "ensemble of 3 test accuracy" in p.stdout
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["members"] == [f"member-{k}/model.npz" for k in (1, 2, 3)]
    seeds = [json.loads((out / f"member-{k}" / "history.json").read_text()) for k in (1, 2, 3)]
    assert all(len(h["epochs"]) == 1 for h in seeds)
    assert not list(out.glob("member-*/checkpoint.npz"))
    e = run("evaluate", str(out))
    assert e.returncode == 0 and "an ensemble of 3 models" in e.stdout
    assert "members 1-2 settled the vote on " in e.stdout  # member 3 saw only the rest
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in e.stdout
    # --members: each member alone (its own last validation figure), the first k together
    m = run("evaluate", str(out), "--validation", "--members")
    assert m.returncode == 0, m.stderr
    lines = m.stdout.splitlines()
    start = lines.index("members (validation accuracy alone; the first k together):")
    rows = [line.split() for line in lines[start + 1 : start + 4]]
    vals = [100 * h["epochs"][-1]["val_accuracy"] for h in seeds]
    assert [row[0] for row in rows] == ["1", "2", "3"] and rows[0][1] == rows[0][2]
    assert [row[1] for row in rows] == [f"{v:.2f}%" for v in vals]
    assert rows[2][3].endswith("member-3/model.npz")
    assert f"members' mean {np.mean(vals):.2f}% ± {np.std(vals):.2f} (std over 3)" in m.stdout
    assert f"validation accuracy {rows[2][2]}" in m.stdout  # the ensemble: all three together
    # the vote settled early (train's figure) is the full average's (--members)
    assert f"{100 * summary['val_accuracy']:.2f}%" == rows[2][2]
    again = run("train", "--resume", str(out), "--no-progress")  # nothing left to do
    assert again.returncode == 0 and again.stderr.count("already trained") == 3
    # Member k is exactly the single run with seed k - 1: the same weights, bit for bit.
    single = run("train", "--epochs", "1", "--batch-size", "512", "--seed", "1",
                 "--out", str(tmp_path / "seed-1"), "--no-progress")  # fmt: skip
    assert single.returncode == 0, single.stderr
    member, alone = (
        load_model(d / "model.npz")[0] for d in (out / "member-2", tmp_path / "seed-1")
    )
    for (name, a, _), (_, b, _) in zip(member.parameters(), alone.parameters(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_train_with_a_teacher(trained, tmp_path):
    """--teacher distils from a trained model: the run records where the teacher is (a
    recipe file's relative path read from the file's folder), and a teacher that trained on
    the student's validation digits, or none at all, is one line."""
    from barenet.train.recipes import RECIPES

    teacher, _ = trained
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = {**RECIPES["seed"].to_dict(), "epochs": 1,
              "teacher": os.path.relpath(teacher, folder)}  # fmt: skip
    (folder / "taught.json").write_text(json.dumps(recipe))
    out = tmp_path / "taught"
    p = run("train", "--recipe", str(folder / "taught.json"), "--out", str(out), "--no-progress",
            cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "test accuracy" in p.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["recipe"]["teacher"] == str(teacher.resolve())
    assert history["epochs"][0]["val_accuracy"] > 0.95
    assert_one_line_error(run("train", "--teacher", str(teacher), "--val-size", "6000",
                              "--out", str(tmp_path / "x")),
                          "held out the last 5000 training images")  # fmt: skip
    assert_one_line_error(run("train", "--teacher", str(tmp_path / "none"), "--out",
                              str(tmp_path / "y")), "no such model file")  # fmt: skip


def test_train_on_a_gpu_without_one_is_one_line(tmp_path):
    """Where CuPy or a GPU is missing (CI, this machine), --gpu says which, before any file."""
    try:
        import cupy

        have_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        have_gpu = False
    if have_gpu:
        pytest.skip("a GPU is present: tests/test_gpu.py trains on it")
    p = run("train", "--gpu", "--out", str(tmp_path / "run"))
    assert_one_line_error(p, "--gpu")
    assert "CuPy" in p.stderr and not (tmp_path / "run").exists()
