"""Average pooling, global pooling and squeeze-and-excitation: gradients (float64, here and
in `barenet gradcheck`), configs, model files, recipes and the trace."""

import dataclasses

import numpy as np
import pytest

from barenet.errors import BarenetError
from barenet.files.modelfile import load_model, save_model
from barenet.nn.config import layer_from_config
from barenet.nn.gradcheck import TOLERANCE, check_layer
from barenet.nn.pooling import AvgPool2D, GlobalPool, SqueezeExcite
from barenet.nn.trace import SUSPECT, trace
from barenet.train.recipes import RECIPES, build_model


def test_gradients_float64():
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 6 * 5 * 3).reshape(2, 6, 5, 3) / 10.0  # distinct values: no ties
    for layer in (AvgPool2D(2), AvgPool2D(3), GlobalPool("max"), GlobalPool("avg+max")):
        for r in check_layer(type(layer).__name__, layer, x, rng):
            assert r.error < TOLERANCE, r
    se = SqueezeExcite(6, 3, rng=rng, dtype=np.float64)
    se.params["b1"][...] = 0.3  # pre-activations away from the ReLU's kink
    for r in check_layer("SqueezeExcite", se, rng.uniform(0.5, 1.5, (3, 4, 4, 6)), rng):
        assert r.error < TOLERANCE, r


def test_values_on_a_hand_made_case():
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(AvgPool2D(2).forward(x)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_array_equal(GlobalPool("avg+max").forward(x), [[7.5, 15.0]])
    se = SqueezeExcite(1, 1)
    se.params["W1"][...], se.params["W2"][...] = 0.0, 0.0  # gate = sigmoid(0) = 1/2
    np.testing.assert_array_equal(se.forward(x), x / 2)


def test_configs_and_model_files(tmp_path):
    rng = np.random.default_rng(0)
    recipe = dataclasses.replace(RECIPES["cnn"], pool="avg", head="global", squeeze_excite=4,
                                 hidden=())  # fmt: skip
    net = build_model(recipe, (28, 28), 10)
    assert {"AvgPool2D", "GlobalPool", "SqueezeExcite"} <= {c["type"] for c in net.config()}
    path = save_model(tmp_path / "m.npz", net, {})
    again, _ = load_model(path)
    x = rng.random((5, 784), dtype=np.float32)
    np.testing.assert_array_equal(net.predict_proba(x), again.predict_proba(x))
    for bad in ({"type": "AvgPool2D", "kernel_size": 0}, {"type": "GlobalPool", "mode": "sum"},
                {"type": "SqueezeExcite", "channels": 4, "reduction": 5}):  # fmt: skip
        with pytest.raises(ValueError):
            layer_from_config(bad)


def test_recipes_check_the_new_fields():
    for field, value in (("pool", "min"), ("head", "none"), ("squeeze_excite", 100)):
        with pytest.raises(BarenetError, match=field):
            dataclasses.replace(RECIPES["cnn"], **{field: value}).check()
    # the recipes that do not ask for them build the networks they built before
    assert [c["type"] for c in build_model(RECIPES["cnn"], (28, 28), 10).config()] == [
        "Reshape", "Conv2D", "BatchNorm", "MaxPool2D", "ReLU", "Conv2D", "BatchNorm",
        "MaxPool2D", "ReLU", "Flatten", "Dense", "BatchNorm", "ReLU", "Dropout", "Dense",
    ]  # fmt: skip


def test_a_gated_network_traces_clean():
    recipe = dataclasses.replace(RECIPES["cnn"], conv=(8, 16), squeeze_excite=2, pool="avg",
                                 head="global", hidden=(16,))  # fmt: skip
    net = build_model(recipe, (28, 28), 10)
    x = np.random.default_rng(1).random((4, 784))
    rows = trace(net, x, np.arange(4))
    assert all(r.error < SUSPECT for r in rows), [(r.name, r.error) for r in rows]
