import dataclasses

import numpy as np
import pytest

from barenet.errors import BarenetError
from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.layers import BatchNorm, DropConnect, Dropout, Reshape
from barenet.train.recipes import RECIPES, Recipe, build_model, get_recipe


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_builds_a_network_that_runs(name):
    recipe = RECIPES[name]
    recipe.check()
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    model = build_model(recipe, (28, 28), 10)
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    scores = model.forward(x, training=True)
    assert scores.shape == (4, 10) and scores.dtype == np.float32
    assert model.input_size == 784 and model.num_classes == 10


def test_cnn_recipe_architecture():
    model = build_model(RECIPES["cnn"], (28, 28), 10)
    kinds = [type(layer) for layer in model.layers]
    assert kinds[0] is Reshape and kinds.count(Conv2D) == 2 and kinds.count(MaxPool2D) == 2
    assert kinds.count(BatchNorm) == 3
    assert model.layers[kinds.index(Conv2D)].params["W"].shape == (3, 3, 1, 32)
    ensemble = RECIPES["cnn-ensemble"]
    assert ensemble.members == 4  # four cnn-deep members
    same = {
        k: v for k, v in ensemble.to_dict().items() if k not in ("name", "description", "members")
    }
    assert same == {k: v for k, v in RECIPES["cnn-deep"].to_dict().items() if k in same}
    deep = RECIPES["cnn-deep"]
    kinds = [type(layer) for layer in build_model(deep, (28, 28), 10).layers]
    assert kinds.count(Conv2D) == 4 and kinds.count(MaxPool2D) == 2 and kinds.count(BatchNorm) == 5
    assert deep.augment == RECIPES["cnn"].augment and deep.augment.elastic_alpha == 0


def test_record_recipe_is_pilot_6s_design():
    """Nine 128-channel convolutions (six at 28 pixels, three at 14), a BatchNorm and an SE gate
    per block, average pooling, a global head: 1,188,758 parameters, as pilot 6 has."""
    from barenet.nn.pooling import AvgPool2D, GlobalPool, SqueezeExcite

    recipe = RECIPES["record"]
    model = build_model(recipe, (28, 28), 10)
    kinds = [type(layer) for layer in model.layers]
    assert kinds.count(Conv2D) == 9 and kinds.count(BatchNorm) == 3
    assert kinds.count(SqueezeExcite) == 3 and kinds.count(AvgPool2D) == 2
    assert kinds.count(GlobalPool) == 1 and MaxPool2D not in kinds
    assert model.num_params() == 1_188_758
    assert recipe.optimizer == "adam" and recipe.batch_size == 32 and recipe.epochs == 20
    assert recipe.schedule == "multistep" and recipe.milestones == (13, 16)
    assert recipe.clean_epochs == 1 and recipe.augment.shear == 10 and recipe.members == 5
    assert recipe.init == "glorot" and recipe.head_l1 == 0.00025 and recipe.augment.scale_apart


def test_conv_dropout_closes_every_convolution_block():
    recipe = dataclasses.replace(RECIPES["cnn"], conv_dropout=0.25)
    layers = build_model(recipe, (28, 28), 10).layers
    drops = [i for i, layer in enumerate(layers) if isinstance(layer, Dropout)]
    assert len(drops) == 3  # two blocks and the dense layer
    for i in drops[:2]:
        assert isinstance(layers[i - 2], MaxPool2D) and layers[i].p == 0.25
    assert RECIPES["cnn"].conv_dropout == 0.0


def test_random_layers_get_their_own_seeded_generators():
    recipe = dataclasses.replace(RECIPES["mlp"], input_dropout=0.2, dropout=0.5, dropconnect=0.3)
    a, b = build_model(recipe, (28, 28), 10), build_model(recipe, (28, 28), 10)
    random = [layer for layer in a.layers if isinstance(layer, Dropout | DropConnect)]
    assert len(random) >= 4
    assert len({layer.rng.random() for layer in random}) == len(random)  # distinct streams
    for la, lb in zip(a.layers, b.layers):
        for k in la.params:
            np.testing.assert_array_equal(la.params[k], lb.params[k])
    other = build_model(recipe, (28, 28), 10, seed=1)
    assert not np.array_equal(other.layers[1].params["W"], a.layers[1].params["W"])


@pytest.mark.parametrize(
    "change,message",
    [
        ({"arch": "rnn"}, "architecture"),
        ({"arch": "cnn", "conv": ()}, "convolution block"),
        ({"dropout": 1.0}, "dropout"),
        ({"conv_dropout": -0.1}, "conv dropout"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"members": 0}, "members"),
        ({"max_norm": -1.0}, "max norm"),
        ({"label_smoothing": 1.5}, "label smoothing"),
        ({"val_size": -1}, "validation size"),
    ],  # fmt: skip
)
def test_check_names_the_bad_field(change, message):
    with pytest.raises(BarenetError, match=message):
        dataclasses.replace(RECIPES["seed"], **change).check()


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(BarenetError, match="unknown fields"):
        Recipe.from_dict({**RECIPES["seed"].to_dict(), "magic": 1})


def test_recipes_have_fashion_settings_where_mnist_ones_do_not_suit():
    mnist, fashion = get_recipe("cnn"), get_recipe("cnn", "fashion-mnist")
    assert fashion.name == "cnn" and fashion.augment.flip and not mnist.augment.flip
    assert fashion.augment.rotate == fashion.augment.scale == 0 < mnist.augment.rotate
    assert get_recipe("mlp", "fashion-mnist").augment.flip
    assert get_recipe("seed", "fashion-mnist") == get_recipe("seed")  # no settings of its own
    for recipe in (fashion, get_recipe("mlp", "fashion-mnist")):
        recipe.check()
