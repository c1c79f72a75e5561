import dataclasses

import numpy as np
import pytest

from barenet.errors import BarenetError, TrainingDiverged
from barenet.nn.model import mlp
from barenet.train.augment import Augment
from barenet.train.loop import accuracy, to_inputs, train
from barenet.train.recipes import RECIPES, Recipe, get_recipe


def _toy(n=600, seed=0):
    """Two blobs of 'images': class 1 is brighter in the top half."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 100, (n, 28, 28))
    x[y == 1, :14] += 120
    return x.astype(np.uint8), y.astype(np.uint8)


RECIPE = Recipe(
    name="toy", description="toy", hidden=(16,), epochs=3, batch_size=32, lr=0.05, val_size=100
)


def test_to_inputs():
    x = to_inputs(np.array([[[0, 255]]], np.uint8))
    assert x.dtype == np.float32 and x.shape == (1, 2)
    np.testing.assert_allclose(x, [[0, 1]])


def test_training_learns_and_reports():
    x, y = _toy()
    net = mlp([784, 16, 2], rng=np.random.default_rng(0))
    lines = []
    h = train(net, RECIPE, x[:500], y[:500], x[500:], y[500:], progress=False, log=lines.append)
    assert len(h.epochs) == 3 and len(lines) == 3 and "val" in lines[0]
    assert h.epochs[-1].train_loss < h.epochs[0].train_loss
    assert (
        h.epochs[-1].val_accuracy > 0.95
        and accuracy(net, x[500:], y[500:]) == h.epochs[-1].val_accuracy
    )
    assert all(e.seconds > 0 for e in h.epochs)


def test_same_seed_same_weights():
    x, y = _toy()
    weights = []
    for _ in range(2):
        net = mlp([784, 16, 2], rng=np.random.default_rng([RECIPE.seed, 0]))
        train(net, RECIPE, x[:500], y[:500], x[500:], y[500:], progress=False)
        weights.append([p.copy() for _, p, _ in net.parameters()])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_divergence_stops_with_a_clear_message():
    x, y = _toy()
    net = mlp([784, 16, 2], rng=np.random.default_rng(0))
    wild = dataclasses.replace(RECIPE, lr=1e30, momentum=0.0, nesterov=False)
    with pytest.raises(
        TrainingDiverged,
        match=r"epoch 1: the loss became (nan|inf).*lower learning rate than 1e\+30",
    ):
        train(net, wild, x[:500], y[:500], x[500:], y[500:], progress=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("epochs", 0, "epochs"), ("batch_size", 0, "batch size"), ("lr", -0.1, "learning rate"),
     ("lr", float("nan"), "learning rate"), ("momentum", 1.0, "momentum"), ("l2", -1.0, "l2"),
     ("schedule", "linear", "schedule"), ("warmup_epochs", 99.0, "warmup"), ("hidden", (0,), "hidden"),
     ("vat_eps", -1.0, "vat eps"), ("vat_weight", float("inf"), "vat weight"),
     ("clean_epochs", 2, "clean epochs"), ("clean_epochs", -1, "clean epochs")],
)  # fmt: skip
def test_recipe_check(field, value, message):
    with pytest.raises(BarenetError, match=message):
        dataclasses.replace(RECIPES["seed"], **{field: value}).check()


def test_seed_recipe_is_the_seeds_network():
    seed = get_recipe("seed")
    assert seed.hidden == (1024,) and seed.val_size == 5000
    seed.check()
    with pytest.raises(BarenetError, match="unknown recipe"):
        get_recipe("resnet")


def test_batchnorm_recalibration_averages_clean_batch_statistics():
    from barenet.nn.layers import BatchNorm, Dense, Dropout
    from barenet.nn.model import Sequential
    from barenet.train.loop import recalibrate_batchnorm

    rng = np.random.default_rng(0)
    dense = Dense(784, 6, rng=rng)
    net = Sequential([Dropout(0.5, rng=rng), dense, BatchNorm(6, momentum=0.1)])
    x = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)
    recalibrate_batchnorm(net, x, 100)
    h = to_inputs(x) @ dense.params["W"]  # dropout is off during recalibration
    means = [h[i : i + 100].mean(axis=0) for i in range(0, 300, 100)]
    bn = net.layers[2]
    np.testing.assert_allclose(bn.buffers["running_mean"], np.mean(means, axis=0), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    assert bn.momentum == 0.1 and net.layers[0].p == 0.5  # settings restored


def test_multistep_needs_increasing_milestones_inside_the_run():
    seed = dataclasses.replace(RECIPES["seed"], epochs=20, schedule="multistep")
    for bad in ((), (13, 13), (16, 13), (0,), (20,)):
        with pytest.raises(BarenetError, match="milestones"):
            dataclasses.replace(seed, milestones=bad).check()
    good = dataclasses.replace(seed, milestones=(13, 16), lr=1e-3)
    good.check()
    schedule = good.lr_schedule()
    assert [schedule(t) for t in (0, 12.9, 13, 15.5, 16, 19.9)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    )
    assert Recipe.from_dict(good.to_dict()) == good


def test_the_last_clean_epochs_train_on_the_images_as_they_are():
    x, y = _toy()
    recipe = dataclasses.replace(RECIPE, augment=Augment(shift=2.0), clean_epochs=1)
    weights, lines = [], []
    for clean in (1, 0):
        net = mlp([784, 16, 2], rng=np.random.default_rng([RECIPE.seed, 0]))
        h = train(net, dataclasses.replace(recipe, clean_epochs=clean), x[:500], y[:500],
                  x[500:], y[500:], progress=False, log=lines.append)  # fmt: skip
        weights.append([p.copy() for _, p, _ in net.parameters()])
        augmented = [e.augment_seconds > 0 for e in h.epochs]
        assert augmented == ([True, True, False] if clean else [True, True, True])
    assert "augmentation" in lines[1] and "augmentation" not in lines[2]
    # the same first two epochs, then another third one
    assert any(not np.array_equal(a, b) for a, b in zip(*weights))


def test_head_l1_adds_lam_sign_w_to_the_output_layers_gradient_only():
    x, y = _toy()
    one_step = dataclasses.replace(RECIPE, epochs=1, batch_size=500, schedule="constant",
                                   momentum=0.0, nesterov=False, l2=0.0, lr=0.1)  # fmt: skip
    lam = 0.01
    nets, histories = [], []
    for head_l1 in (0.0, lam):
        net = mlp([784, 16, 2], rng=np.random.default_rng([RECIPE.seed, 0]))
        start = net.layers[-1].params["W"].copy()
        histories.append(train(net, dataclasses.replace(one_step, head_l1=head_l1), x[:500],
                               y[:500], x[500:], y[500:], progress=False))  # fmt: skip
        nets.append(net)
    plain, l1 = nets
    # one SGD step: the same data gradient, and lr * lam * sign(W) more off the head's weights
    np.testing.assert_allclose(l1.layers[-1].params["W"],
                               plain.layers[-1].params["W"] - 0.1 * lam * np.sign(start),
                               rtol=0, atol=1e-7)  # fmt: skip
    for a, b in zip(plain.layers[:-1], l1.layers[:-1]):
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])
    np.testing.assert_array_equal(plain.layers[-1].params["b"], l1.layers[-1].params["b"])
    # the reported loss holds the penalty of the weights at the epoch's end
    penalty = lam * np.abs(l1.layers[-1].params["W"]).sum()
    assert histories[1].epochs[0].train_loss == pytest.approx(
        histories[0].epochs[0].train_loss + penalty, rel=1e-6
    )
    with pytest.raises(BarenetError, match="head_l1"):
        dataclasses.replace(RECIPE, head_l1=-1.0).check()
