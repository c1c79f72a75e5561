"""Weight averaging: the moving average's maths, its swap, and a run that yields it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import toy_digits

from barenet.errors import BarenetError
from barenet.files.modelfile import model_arrays
from barenet.train.augment import Augment
from barenet.train.averaging import WeightAverage
from barenet.train.checkpoint import load_checkpoint
from barenet.train.loop import train
from barenet.train.recipes import Recipe, build_model

RECIPE = Recipe(
    name="toy", description="toy", arch="cnn", conv=(4,), kernel_size=3, batchnorm=True,
    hidden=(8,), optimizer="adam", lr=0.01, epochs=3, batch_size=32, val_size=50,
    augment=Augment(rotate=10, shift=1), schedule="constant", weight_average=0.9,
)  # fmt: skip


def test_the_average_follows_its_formula():
    """w_bar_t = d_t w_bar_{t-1} + (1 - d_t) w_t with d_t = min(decay, (1 + t) / (10 + t)),
    from the initial weights, against the same sums written out in float64."""
    model = build_model(RECIPE, (28, 28), 3)
    rng = np.random.default_rng(1)
    average = WeightAverage(model, decay=0.6)
    expected = {name: p.astype(np.float64) for name, p, _ in model.parameters()}
    for t in range(8):
        for _, p, _ in model.parameters():
            p += rng.normal(size=p.shape).astype(p.dtype)
        average.update()
        d = min(0.6, (1 + t) / (10 + t))  # 0.1, 0.18, ... then 0.6 from t = 5
        for name, p, _ in model.parameters():
            expected[name] = d * expected[name] + (1 - d) * p.astype(np.float64)
    assert average.count == 8
    for name, a in expected.items():
        np.testing.assert_allclose(average.average[name], a, rtol=1e-12, err_msg=name)


def test_swap_and_restore_give_back_the_weights_and_running_statistics():
    model = build_model(RECIPE, (28, 28), 3)
    average = WeightAverage(model, decay=0.5)
    for _, p, _ in model.parameters():
        p += 1.0
    for _, b in model.buffers():
        b += 2.0
    before = {k: v.copy() for k, v in model_arrays(model).items()}
    saved = average.swap(model)
    for name, p, _ in model.parameters():  # the initial weights: nothing averaged yet
        np.testing.assert_array_equal(p, average.average[name].astype(p.dtype), err_msg=name)
        assert not np.array_equal(p, before[name])
    average.restore(model, saved)
    for name, a in model_arrays(model).items():
        np.testing.assert_array_equal(a, before[name], err_msg=name)


def test_a_run_yields_the_average_and_trains_the_weights_as_without_it(tmp_path):
    """The model a run returns holds the averaged weights (the final checkpoint's averages);
    the weights it trains are those of the same run without averaging (the same losses, and
    the same validation figures as trained, in every epoch); each epoch records both."""
    x, y = toy_digits()
    args = (x[:350], y[:350], x[350:], y[350:])
    plain = dataclasses.replace(RECIPE, weight_average=0.0)
    runs = {}
    for recipe in (RECIPE, plain):
        ckpt = tmp_path / f"{recipe.weight_average}.npz"
        model = build_model(recipe, (28, 28), 3)
        lines: list[str] = []
        history = train(model, recipe, *args, progress=False, log=lines.append, checkpoint=ckpt)
        runs[recipe.weight_average] = (model, history, lines, ckpt)
    model, history, lines, ckpt = runs[0.9]
    state = load_checkpoint(ckpt)
    assert state.epoch == 3 and int(state.average["count"]) == 3 * 11
    for name, p, _ in model.parameters():
        np.testing.assert_array_equal(p, state.average[name].astype(p.dtype), err_msg=name)
    assert all(0 < e.raw_val_accuracy <= 1 and 0 < e.val_accuracy <= 1 for e in history.epochs)
    assert all("as trained" in line for line in lines)
    assert history.to_dict()["epochs"][0]["raw_val_accuracy"] == history.epochs[0].raw_val_accuracy
    _, plain_history, plain_lines, _ = runs[0.0]
    assert all(np.isnan(e.raw_val_accuracy) for e in plain_history.epochs)
    assert not any("as trained" in line for line in plain_lines)
    # the trained weights: the same with and without averaging
    assert [e.train_loss for e in history.epochs] == [e.train_loss for e in plain_history.epochs]
    assert [e.raw_val_accuracy for e in history.epochs] == [
        e.val_accuracy for e in plain_history.epochs
    ]


def test_the_decay_is_checked():
    with pytest.raises(BarenetError, match="weight average"):
        dataclasses.replace(RECIPE, weight_average=1.0).check()
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(build_model(RECIPE, (28, 28), 3), decay=0.0)
