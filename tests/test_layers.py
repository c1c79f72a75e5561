import numpy as np
import pytest

from barenet.gradcheck import TOLERANCE, check_layer
from barenet.layers import Dense, Dropout, Flatten, ReLU, layer_from_config


def test_dense_gradients_float64():
    rng = np.random.default_rng(1)
    layer = Dense(9, 6, rng=rng, dtype=np.float64)
    layer.params["b"][...] = rng.standard_normal(6)  # non-zero bias, so db is exercised fully
    for r in check_layer("Dense", layer, rng.standard_normal((5, 9)), rng):
        assert r.error < TOLERANCE, r


def test_relu_gradient_float64():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.05, 2.0, (4, 7)) * rng.choice([-1.0, 1.0], (4, 7))
    for r in check_layer("ReLU", ReLU(), x, rng):
        assert r.error < TOLERANCE, r


def test_dense_forward_is_affine_map():
    layer = Dense(2, 3, dtype=np.float64)
    layer.params["W"][...] = [[1, 2, 3], [4, 5, 6]]
    layer.params["b"][...] = [0.5, -1, 0]
    out = layer.forward(np.array([[1.0, -1.0]]))
    np.testing.assert_array_equal(out, [[-2.5, -4.0, -3.0]])


def test_dense_keeps_float32_and_skips_input_gradient():
    layer = Dense(4, 3, rng=np.random.default_rng(0))
    x = np.ones((2, 4), np.float32)
    out = layer.forward(x, training=True)
    assert out.dtype == np.float32
    assert layer.backward(np.ones_like(out), need_dx=False) is None
    assert layer.grads["W"].dtype == np.float32
    np.testing.assert_array_equal(layer.grads["b"], [2, 2, 2])


def test_he_init_scale():
    W = Dense(1000, 500, rng=np.random.default_rng(0)).params["W"]
    assert W.std() == pytest.approx(np.sqrt(2 / 1000), rel=0.02)
    assert abs(W.mean()) < 1e-3


def test_relu_forward_and_mask():
    relu = ReLU()
    out = relu.forward(np.array([[-1.0, 0.0, 2.0]]), training=True)
    np.testing.assert_array_equal(out, [[0, 0, 2]])
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 5.0, 5.0]])), [[0, 0, 5]])


def test_backward_without_forward_is_an_error():
    with pytest.raises(RuntimeError):
        Dense(2, 2).backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError):
        ReLU().backward(np.ones((1, 2)))


def test_config_round_trip_and_validation():
    d = Dense(5, 4, init="glorot")
    again = layer_from_config(d.config())
    assert isinstance(again, Dense) and again.config() == d.config()
    assert isinstance(layer_from_config({"type": "ReLU"}), ReLU)
    for bad in [{"type": "Conv"}, {"type": "Dense", "in_features": 0, "out_features": 3},
                {"type": "Dense", "in_features": "5", "out_features": 3},
                {"type": "Dense", "in_features": 5, "out_features": 3, "init": "zeros"}]:  # fmt: skip
        with pytest.raises(ValueError):
            layer_from_config(bad)


def test_dropout_gradient_float64():
    rng = np.random.default_rng(5)
    layer = Dropout(0.3)

    def same_mask():
        layer.rng = np.random.default_rng(11)

    for r in check_layer("Dropout", layer, rng.standard_normal((6, 8)), rng, same_mask):
        assert r.error < TOLERANCE, r


def test_dropout_is_inverted_and_identity_at_inference():
    layer = Dropout(0.25, rng=np.random.default_rng(0))
    x = np.ones((400, 500), np.float32)
    out = layer.forward(x, training=True)
    assert out.dtype == np.float32
    assert np.mean(out == 0) == pytest.approx(0.25, abs=0.01)
    np.testing.assert_allclose(np.unique(out), [0, 1 / 0.75])
    assert out.mean() == pytest.approx(1.0, abs=0.01)  # the expected activation is unchanged
    dx = layer.backward(np.ones_like(out))
    np.testing.assert_array_equal(dx, out)  # the gradient flows through the same mask
    assert layer.forward(x, training=False) is x
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_dropout_is_reproducible_with_a_seed():
    x = np.ones((10, 10), np.float32)
    a = Dropout(0.5, rng=np.random.default_rng(3)).forward(x, training=True)
    b = Dropout(0.5, rng=np.random.default_rng(3)).forward(x, training=True)
    np.testing.assert_array_equal(a, b)


def test_flatten_gradient_and_shapes():
    rng = np.random.default_rng(6)
    for r in check_layer("Flatten", Flatten(), rng.standard_normal((2, 3, 4, 5)), rng):
        assert r.error < TOLERANCE, r
    flat = Flatten()
    assert flat.forward(np.zeros((2, 3, 4))).shape == (2, 12)
    assert flat.backward(np.zeros((2, 12))).shape == (2, 3, 4)


def test_new_layers_config_round_trip():
    assert layer_from_config(Dropout(0.2).config()).config() == {"type": "Dropout", "p": 0.2}
    assert isinstance(layer_from_config({"type": "Flatten"}), Flatten)
    for bad in [
        {"type": "Dropout", "p": 1.5},
        {"type": "Dropout", "p": "0.5"},
        {"type": "Dropout"},
    ]:
        with pytest.raises(ValueError):
            layer_from_config(bad)
