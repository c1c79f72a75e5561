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
from barenet.train.recipes import RECIPES, Recipe, build_model


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
    # whole numbers of pixels average to fractions, as NumPy's mean gives them
    np.testing.assert_array_equal(AvgPool2D(2).forward(x.astype(np.uint8))[0, :, :, 0],
                                  [[2.5, 4.5], [10.5, 12.5]])  # fmt: skip
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


def test_blocks_with_their_own_pooling_and_one_batchnorm_each():
    """Matuzas's layout: three convolutions and their ReLUs, one BatchNorm, a gate; the first
    block unpooled, the others average-pooled, then the whole-image pooling."""
    recipe = dataclasses.replace(RECIPES["cnn"], conv=(4, 4, 6), convs_per_block=3,
                                 kernel_size=3, batchnorm=True, batchnorm_per="block",
                                 block_pools=("none", "avg", "avg"), head="global",
                                 squeeze_excite=2, hidden=())  # fmt: skip
    recipe.check()
    net = build_model(recipe, (28, 28), 10)
    block = ["Conv2D", "ReLU"] * 3 + ["BatchNorm", "SqueezeExcite"]
    assert [c["type"] for c in net.config()] == [
        "Reshape", *block, *block, "AvgPool2D", *block, "AvgPool2D", "GlobalPool", "Dense",
    ]  # fmt: skip
    assert net.layers[-1].params["W"].shape == (12, 10)  # mean and max of 6 channels
    x = np.random.default_rng(1).random((4, 784))
    h = x
    for layer in net.layers[:-2]:
        h = layer.forward(h)
    assert h.shape == (4, 7, 7, 6)  # 28 -> 28 -> 14 -> 7
    rows = trace(net, x, np.arange(4))
    assert all(r.error < SUSPECT for r in rows), [(r.name, r.error) for r in rows]
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    # block_pools with the dense head: every listed pooling, then the flattened maps
    dense = dataclasses.replace(recipe, head="dense", block_pools=("max", "none", "max"),
                                batchnorm_per="conv", hidden=(8,))  # fmt: skip
    types = [c["type"] for c in build_model(dense, (28, 28), 10).config()]
    assert types.count("MaxPool2D") == 2 and types.count("BatchNorm") == 10
    hidden = next(layer for layer in build_model(dense, (28, 28), 10).layers
                  if type(layer).__name__ == "Dense")  # fmt: skip
    assert hidden.params["W"].shape == (7 * 7 * 6, 8)  # 28 -> 14 -> 14 -> 7


def test_recipes_check_block_pools_and_batchnorm_placement():
    cnn = dataclasses.replace(RECIPES["cnn"], conv=(4, 4))
    for changes, field in (({"block_pools": ("avg",)}, "block_pools"),
                           ({"block_pools": ("avg", "min")}, "block_pools"),
                           ({"batchnorm_per": "layer"}, "batchnorm_per")):  # fmt: skip
        with pytest.raises(BarenetError, match=field):
            dataclasses.replace(cnn, **changes).check()


def test_a_gated_network_traces_clean():
    recipe = dataclasses.replace(RECIPES["cnn"], conv=(8, 16), squeeze_excite=2, pool="avg",
                                 head="global", hidden=(16,))  # fmt: skip
    net = build_model(recipe, (28, 28), 10)
    x = np.random.default_rng(1).random((4, 784))
    rows = trace(net, x, np.arange(4))
    assert all(r.error < SUSPECT for r in rows), [(r.name, r.error) for r in rows]
