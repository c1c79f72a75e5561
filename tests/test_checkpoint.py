"""Checkpoints: a resumed run ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_digits

from barenet.errors import ModelFileError
from barenet.files.modelfile import load_model, model_arrays
from barenet.train.augment import Augment
from barenet.train.checkpoint import load_checkpoint
from barenet.train.distill import Teacher
from barenet.train.loop import train
from barenet.train.recipes import Recipe, build_model, get_recipe

# Every source of randomness at once: dropout, DropConnect, augmentation (a shear too),
# virtual adversarial perturbations, BatchNorm buffers, Adam's moments and its step count; both
# kinds of convolution (the second one, of 4 channels, runs in blocks on both cores:
# `Conv2D.blocked`); and a last epoch on the images as they are.
RECIPE = Recipe(
    name="toy", description="toy", arch="cnn", conv=(4,), convs_per_block=2, kernel_size=3,
    batchnorm=True,
    hidden=(8,), dropout=0.3, dropconnect=0.2, optimizer="adam", lr=0.01, epochs=3,
    batch_size=32, val_size=50, augment=Augment(rotate=10, shift=1, elastic_alpha=8, shear=5),
    schedule="onecycle", max_norm=2.0, label_smoothing=0.1, vat_eps=1.0, clean_epochs=1,
)  # fmt: skip


# The same yielding the moving average of its weights: the averages resume too.
AVERAGED = dataclasses.replace(RECIPE, weight_average=0.9)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("validation", [True, False])
@pytest.mark.parametrize("averaged", [False, True])
def test_resumed_training_is_bit_for_bit_the_uninterrupted_one(tmp_path, validation, averaged):
    """Also without a validation split (val_size 0: every image trains; the history's
    validation figures are NaN, null in the checkpoint's JSON)."""
    recipe = AVERAGED if averaged else RECIPE
    x, y = toy_digits()
    args = (x[:350], y[:350], x[350:], y[350:]) if validation else (x, y, None, None)
    straight = build_model(recipe, (28, 28), 3)
    train(straight, recipe, *args, progress=False)

    def stop_in_epoch_2(line: str) -> None:  # called at the end of each epoch, before its save
        if line.startswith("epoch 2/"):
            raise Interrupt

    ckpt = tmp_path / "checkpoint.npz"
    with pytest.raises(Interrupt):
        train(build_model(recipe, (28, 28), 3), recipe, *args, progress=False, checkpoint=ckpt,
              log=stop_in_epoch_2)  # fmt: skip
    assert load_checkpoint(ckpt).epoch == 1
    resumed = build_model(recipe, (28, 28), 3)
    lines: list[str] = []
    history = train(resumed, recipe, *args, progress=False, checkpoint=ckpt, resume=True,
                    log=lines.append)  # fmt: skip
    assert "resuming" in lines[0] and len(history.epochs) == 3 and len(lines) == 3
    assert load_checkpoint(ckpt).epoch == 3
    assert all(np.isnan(e.val_accuracy) != validation for e in history.epochs)
    assert all((e["val_accuracy"] is None) != validation
               for e in load_checkpoint(ckpt).history["epochs"])  # fmt: skip
    for name, a in model_arrays(straight).items():
        np.testing.assert_array_equal(model_arrays(resumed)[name], a, err_msg=name)


@pytest.mark.parametrize("averaged", [False, True])
@pytest.mark.parametrize("distilled", [False, True])
def test_resumed_within_an_epoch_is_bit_for_bit_the_uninterrupted_one(tmp_path, monkeypatch,
                                                                     averaged, distilled):  # fmt: skip
    """With checkpoint_seconds=0 a checkpoint follows every step; the run stops right after
    the one taken at step 5 of epoch 2 and resumes from it, inside that epoch. A student's
    batches come in chunks of 4 steps (batches.py), so step 5 is within one: the resumed run
    makes that chunk again from its start."""
    import barenet.train.batches
    import barenet.train.loop

    recipe = AVERAGED if averaged else RECIPE
    x, y = toy_digits()
    args = (x[:350], y[:350], x[350:], y[350:])
    kwargs = {}
    if distilled:
        recipe = dataclasses.replace(recipe, label_smoothing=0.0, teacher="toy teacher")
        taught = build_model(dataclasses.replace(RECIPE, dropout=0.0, dropconnect=0.0),
                             (28, 28), 3, seed=7)  # fmt: skip
        kwargs["teacher"] = Teacher([taught], temperature=4.0)
        monkeypatch.setattr(barenet.train.batches, "TEACHER_CHUNK_STEPS", 4)
    straight = build_model(recipe, (28, 28), 3)
    straight_history = train(straight, recipe, *args, progress=False, **kwargs)

    real_save = barenet.train.loop.save_checkpoint

    def save_then_stop(path, **kwargs):
        real_save(path, **kwargs)
        inside = kwargs.get("inside")
        if kwargs["epoch"] == 1 and inside is not None and inside.step == 5:
            raise Interrupt

    ckpt = tmp_path / "checkpoint.npz"
    monkeypatch.setattr(barenet.train.loop, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupt):
        train(build_model(recipe, (28, 28), 3), recipe, *args, progress=False, checkpoint=ckpt,
              checkpoint_seconds=0, **kwargs)  # fmt: skip
    monkeypatch.setattr(barenet.train.loop, "save_checkpoint", real_save)
    state = load_checkpoint(ckpt)
    assert state.epoch == 1 and state.inside is not None and state.inside.step == 5
    assert state.inside.chunk_start == (4 if distilled else 5)
    resumed = build_model(recipe, (28, 28), 3)
    lines: list[str] = []
    history = train(resumed, recipe, *args, progress=False, checkpoint=ckpt, resume=True,
                    log=lines.append, **kwargs)  # fmt: skip
    assert "step 5/11 of epoch 2" in lines[0]
    for name, a in model_arrays(straight).items():
        np.testing.assert_array_equal(model_arrays(resumed)[name], a, err_msg=name)
    for a, b in zip(straight_history.epochs, history.epochs):
        assert (a.train_loss, a.train_accuracy, a.val_accuracy) == (b.train_loss,
                                                                    b.train_accuracy,
                                                                    b.val_accuracy)  # fmt: skip
        assert np.isnan(a.raw_val_accuracy) != averaged
        assert a.raw_val_accuracy == b.raw_val_accuracy or not averaged


def test_resume_rejects_a_checkpoint_of_another_network(tmp_path):
    x, y = toy_digits()
    ckpt = tmp_path / "c.npz"
    small = dataclasses.replace(RECIPE, epochs=1, clean_epochs=0)
    train(build_model(small, (28, 28), 3), small, x[:350], y[:350], x[350:], y[350:],
          progress=False, checkpoint=ckpt)  # fmt: skip
    other = dataclasses.replace(RECIPE, hidden=(9,))
    with pytest.raises(ModelFileError, match="the network needs"):
        train(build_model(other, (28, 28), 3), other, x[:350], y[:350], x[350:], y[350:],
              progress=False, checkpoint=ckpt, resume=True)  # fmt: skip
    ckpt.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="corrupt checkpoint"):
        load_checkpoint(ckpt)


def _barenet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "barenet", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize("within, averaged", [(False, False), (True, False), (True, True)])
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, mnist, within,
                                                                       averaged):  # fmt: skip
    """Killed in epoch 2, after epoch 1's checkpoint or (within) after one taken inside
    epoch 2 (--checkpoint-minutes 0.001: after every step); (averaged) the seed recipe
    yielding the moving average of its weights."""
    flags = ["train", "--epochs", "3", "--batch-size", "256", "--no-progress"]
    if averaged:
        recipe = dataclasses.replace(get_recipe("seed", "mnist"), weight_average=0.99)
        (tmp_path / "averaged.json").write_text(json.dumps(recipe.to_dict()))
        flags += ["--recipe", str(tmp_path / "averaged.json")]
    straight = _barenet(*flags, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    often = ["--checkpoint-minutes", "0.001"] if within else []
    run = subprocess.Popen([sys.executable, "-m", "barenet", *flags, *often, "--out",
                            str(killed_dir)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300

    def taken() -> tuple[int, int]:
        try:
            state = load_checkpoint(killed_dir / "checkpoint.npz")
        except ModelFileError:  # none yet
            return 0, 0
        return state.epoch, state.inside.step if state.inside else 0

    while taken() < ((1, 20) if within else (1, 0)):  # inside epoch 2, or epoch 1 done
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    if not within:
        time.sleep(0.8)  # well into epoch 2 (an epoch takes seconds)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL
    assert not (killed_dir / "model.npz").exists()
    epoch, step = taken()
    assert epoch in (1, 2) and (step > 0 or not within)

    resumed = _barenet("train", "--resume", str(killed_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not (killed_dir / "checkpoint.npz").exists()  # done: nothing left to resume
    a, _ = load_model(tmp_path / "straight")
    b, meta = load_model(killed_dir)
    assert meta["seed"] == 0
    whole = f"training time       {meta['train_seconds']:.1f} s over the whole run, "
    assert whole in resumed.stdout  # the run's epochs, those before the kill too
    for (name, p, _), (_, q, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_sigkill_in_a_later_member_then_resume_gives_the_uninterrupted_ensemble(tmp_path, mnist):
    """A run of two members killed inside member 2 (member 1 saved, member 2 checkpointed
    after each step) and resumed: both members and the ensemble's figures are those of a run
    never killed."""
    flags = ["train", "--members", "2", "--epochs", "2", "--batch-size", "256", "--no-progress"]
    straight = _barenet(*flags, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "-m", "barenet", *flags, "--checkpoint-minutes",
                            "0.001", "--out", str(killed_dir)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    second = killed_dir / "member-2" / "checkpoint.npz"

    def taken() -> tuple[int, int]:
        try:
            state = load_checkpoint(second)
        except ModelFileError:  # none yet
            return 0, 0
        return state.epoch, state.inside.step if state.inside else 0

    while taken() < (0, 30):  # inside member 2's first epoch
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert (killed_dir / "member-1" / "model.npz").exists()
    assert not (killed_dir / "member-2" / "model.npz").exists()

    resumed = _barenet("train", "--resume", str(killed_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "member 1/2 already trained" in resumed.stderr and "resuming from" in resumed.stderr
    # the training time printed is the whole run's (the members' model files), this process's
    # part of it beside: member 1 and member 2's first steps were trained before the kill
    whole = sum(load_model(killed_dir / m)[1]["train_seconds"] for m in ("member-1", "member-2"))
    line = re.search(r"^training time +([0-9.]+) s over the whole run, ([0-9.]+) s of it in "
                     r"this process \(([0-9.]+) s in all\)$", resumed.stdout, re.M)  # fmt: skip
    assert line is not None, resumed.stdout
    assert line[1] == f"{whole:.1f}" and 0 < float(line[2]) < whole
    assert float(line[2]) <= float(line[3])
    for member in ("member-1", "member-2"):
        a, _ = load_model(tmp_path / "straight" / member)
        b, _ = load_model(killed_dir / member)
        for (name, p, _), (_, q, _) in zip(a.parameters(), b.parameters()):
            np.testing.assert_array_equal(p, q, err_msg=f"{member} {name}")
    figures = [
        json.loads((d / "ensemble.json").read_text()) for d in (tmp_path / "straight", killed_dir)
    ]
    assert figures[0] == figures[1] and figures[0]["val_accuracy"] > 0.9


def test_resume_errors_are_one_line(tmp_path):
    p = _barenet("train", "--resume", str(tmp_path))
    assert p.returncode == 1 and "not a run directory" in p.stderr and "Traceback" not in p.stderr
    p = _barenet("train", "--resume", str(tmp_path), "--epochs", "2")
    assert p.returncode == 1 and "drop --epochs" in p.stderr
    (tmp_path / "run.json").write_text('{"recipe": {"name": 3}}')
    p = _barenet("train", "--resume", str(tmp_path))
    assert p.returncode == 1 and "not a valid run description" in p.stderr
    recipe = json.dumps(Recipe(name="x", description="x").to_dict())
    (tmp_path / "run.json").write_text(f'{{"recipe": {recipe}, "dataset": "cifar"}}')
    p = _barenet("train", "--resume", str(tmp_path))
    assert p.returncode == 1 and "unknown dataset 'cifar'" in p.stderr, p.stderr


def _train_one_epoch(ckpt: Path) -> None:
    x, y = toy_digits()
    one = dataclasses.replace(RECIPE, epochs=1, clean_epochs=0)
    train(build_model(one, (28, 28), 3), one, x[:350], y[:350], x[350:], y[350:],
          progress=False, checkpoint=ckpt)  # fmt: skip


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint whole."""
    ckpt = tmp_path / "c.npz"
    _train_one_epoch(ckpt)
    before = ckpt.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        _train_one_epoch(ckpt)
    assert ckpt.read_bytes() == before
    assert [p.name for p in Path(tmp_path).iterdir()] == ["c.npz"]


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    """Damage found by fuzzing model files, which checkpoints share: an .npy header NumPy
    cannot parse, and a member flagged as encrypted."""
    ckpt = tmp_path / "c.npz"
    _train_one_epoch(ckpt)
    original = ckpt.read_bytes()
    header = bytearray(original)
    header[original.index(b")", original.index(b"'shape': ("))] = 0
    flagged = bytearray(original)
    flagged[original.rindex(b"PK\x01\x02") + 8] |= 1
    for blob in (header, flagged):
        ckpt.write_bytes(bytes(blob))
        with pytest.raises(ModelFileError, match="corrupt checkpoint"):
            load_checkpoint(ckpt)
