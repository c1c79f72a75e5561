"""Distillation: the loss's two terms, the teacher's targets, the teacher's checks, and a run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import toy_digits

from barenet.errors import BarenetError
from barenet.files.modelfile import save_model
from barenet.nn.gradcheck import TOLERANCE, check_all
from barenet.nn.losses import distillation_loss, softmax, softmax_cross_entropy
from barenet.train.distill import Teacher
from barenet.train.loop import train
from barenet.train.recipes import Recipe, build_model

RECIPE = Recipe(
    name="toy", description="toy", arch="cnn", conv=(4,), kernel_size=3, batchnorm=True,
    hidden=(8,), optimizer="adam", lr=0.01, epochs=2, batch_size=32, val_size=50,
    schedule="constant",
)  # fmt: skip
DATASET = {"name": "toy", "classes": ["a", "b", "c"]}


def test_the_loss_is_its_formula_written_out():
    """L = (1 - a) CE + a T^2 KL(t || softmax(s / T)) and its gradient, against the sums
    written out in float64 on a small batch."""
    rng = np.random.default_rng(0)
    s, y = 3 * rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    t = softmax(rng.standard_normal((6, 4)))
    a, T = 0.7, 2.5
    loss, ds = distillation_loss(s, y, t, a, T)
    p, q = softmax(s), softmax(s / T)
    onehot = np.eye(4)[y]
    ce = -np.mean(np.log(p[np.arange(6), y]))
    kl = np.mean(np.sum(t * (np.log(t) - np.log(q)), axis=1))
    assert loss == pytest.approx((1 - a) * ce + a * T * T * kl, rel=1e-12)
    np.testing.assert_allclose(ds, ((1 - a) * (p - onehot) + a * T * (q - t)) / 6, rtol=1e-10)


def test_the_two_ends_of_the_weight():
    """weight 0 is the cross-entropy alone; weight 1 against the student's own softened
    probabilities is a loss of 0 with no gradient."""
    rng = np.random.default_rng(1)
    s, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    t = softmax(rng.standard_normal((5, 3)))
    loss, ds = distillation_loss(s, y, t, 0.0, 4.0)
    ce, dce = softmax_cross_entropy(s, y)
    assert loss == pytest.approx(ce, rel=1e-12)
    np.testing.assert_allclose(ds, dce, rtol=1e-12)
    loss, ds = distillation_loss(s, y, softmax(s / 4.0), 1.0, 4.0)
    assert abs(loss) < 1e-12 and np.abs(ds).max() < 1e-12


def test_the_gradient_check_covers_it():
    (result,) = [r for r in check_all(seed=0) if r.name == "distillation dscores"]
    assert result.error < TOLERANCE


def test_the_teachers_targets_are_its_members_mean_at_the_temperature():
    x, _ = toy_digits(20)
    inputs = x.reshape(20, -1).astype(np.float32) / 255
    members = [build_model(RECIPE, (28, 28), 3, seed=k) for k in range(2)]
    teacher = Teacher(members, temperature=3.0)
    expected = sum(softmax(m.forward(inputs) / 3.0) for m in members) / 2
    np.testing.assert_allclose(teacher.targets(inputs), expected, rtol=1e-6)
    np.testing.assert_allclose(teacher.targets(inputs).sum(axis=1), 1, rtol=1e-6)
    moved = teacher.to(np)  # where its networks are already: the same networks (test_gpu: cupy)
    assert moved.temperature == 3.0 and all(a is b for a, b in zip(moved.models, members))
    with pytest.raises(ValueError, match="temperature"):
        Teacher(members, temperature=0.0)


def save_teacher(path, *, recipe: dict | None, dataset: dict = DATASET, seed: int = 0):
    model = build_model(RECIPE, (28, 28), len(dataset["classes"]), seed=seed)
    meta = {"dataset": dataset, **({"recipe": recipe} if recipe is not None else {})}
    return save_model(path / "model.npz", model, meta)


def load(path, **kw):
    args = {"dataset": "toy", "md5": None, "input_size": 784, "num_classes": 3, "val_size": 50}
    return Teacher.load(path, 4.0, **{**args, **kw})


def test_a_teacher_must_not_have_seen_the_students_validation_digits(tmp_path):
    (tmp_path / "ok").mkdir()
    save_teacher(tmp_path / "ok", recipe={"val_size": 50})
    assert len(load(tmp_path / "ok").models) == 1
    assert len(load(tmp_path / "ok", val_size=20).models) == 1  # held out more: fine
    with pytest.raises(BarenetError, match="held out the last 50 training images"):
        load(tmp_path / "ok", val_size=60)
    with pytest.raises(BarenetError, match="trained on toy, the student trains on other"):
        load(tmp_path / "ok", dataset="other")
    with pytest.raises(BarenetError, match="784 inputs to 3 classes, the student 784 to 10"):
        load(tmp_path / "ok", num_classes=10)
    (tmp_path / "silent").mkdir()
    save_teacher(tmp_path / "silent", recipe=None)
    with pytest.raises(BarenetError, match="do not say which training images it held out"):
        load(tmp_path / "silent")
    (tmp_path / "files").mkdir()
    save_teacher(
        tmp_path / "files", recipe={"val_size": 50}, dataset={**DATASET, "md5": {"a": "1"}}
    )
    assert len(load(tmp_path / "files", md5={"a": "1"}).models) == 1
    with pytest.raises(BarenetError, match="other toy files"):
        load(tmp_path / "files", md5={"a": "2"})


def test_a_run_learns_from_its_teacher(tmp_path):
    """With weight 0 the teacher changes nothing (the same losses as a run without one); with
    weight 0.5 the run trains on other gradients and still learns the toy digits; a recipe
    with a teacher needs its networks."""
    x, y = toy_digits()
    args = (x[:350], y[:350], x[350:], y[350:])
    taught = build_model(RECIPE, (28, 28), 3, seed=5)
    train(taught, RECIPE, *args, progress=False)
    teacher = Teacher([taught], temperature=4.0)
    histories = {}
    for weight in (None, 0.0, 0.5):
        recipe = RECIPE if weight is None else \
            dataclasses.replace(RECIPE, teacher="t", distill_weight=weight)  # fmt: skip
        model = build_model(recipe, (28, 28), 3)
        histories[weight] = train(model, recipe, *args, progress=False,
                                  teacher=None if weight is None else teacher)  # fmt: skip
    losses = {w: [e.train_loss for e in h.epochs] for w, h in histories.items()}
    assert losses[0.0] == losses[None]
    assert losses[0.5] != losses[None]
    assert histories[0.5].epochs[-1].val_accuracy > 0.9
    with pytest.raises(ValueError, match="needs its networks"):
        train(build_model(RECIPE, (28, 28), 3), dataclasses.replace(RECIPE, teacher="t"), *args,
              progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="only such a recipe takes them"):
        train(build_model(RECIPE, (28, 28), 3), RECIPE, *args, progress=False, teacher=teacher)


def test_the_recipe_checks_its_distillation_fields():
    for field, value, message in [
        ("distill_weight", 1.5, "distill weight"),
        ("distill_temperature", 0.0, "distill temperature"),
    ]:
        with pytest.raises(BarenetError, match=message):
            dataclasses.replace(RECIPE, teacher="t", **{field: value}).check()
    with pytest.raises(BarenetError, match="already softens the targets"):
        dataclasses.replace(RECIPE, teacher="t", label_smoothing=0.1).check()
