import numpy as np
import pytest

from barenet.nn.config import layer_from_config
from barenet.nn.gradcheck import TOLERANCE, check_layer
from barenet.nn.layers import (
    BatchNorm,
    Dense,
    DropConnect,
    Dropout,
    Flatten,
    ReLU,
    Reshape,
    fold,
)
from barenet.nn.reference import dropout_mask


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


def test_dense_training_products_run_transposed_and_agree_with_inference():
    # W and its gradient are column-major (the optimiser needs them to share a layout); the
    # training pass computes (W^T x^T)^T, inference x W: the same map up to rounding. For
    # DropConnect the masked weights W * M take W's place in every product.
    rng = np.random.default_rng(4)
    for layer in (Dense(30, 20, rng=rng), DropConnect(30, 20, 0.5, rng=rng, mask_rng=rng)):
        assert layer.params["W"].flags.f_contiguous and layer.grads["W"].flags.f_contiguous
        x = rng.standard_normal((16, 30)).astype(np.float32)
        W = layer.params["W"]
        np.testing.assert_allclose(layer.forward(x), x @ W, rtol=1e-5, atol=1e-5)
        train_out = layer.forward(x, training=True)
        mask = getattr(layer, "_mask", None)
        M = np.ones_like(W) if mask is None else mask
        assert mask is None or (mask == 0).any()  # some weights were dropped
        np.testing.assert_allclose(train_out, x @ (W * M), rtol=1e-5, atol=1e-5)
        dout = rng.standard_normal(train_out.shape).astype(np.float32)
        dx = layer.backward(dout)
        np.testing.assert_allclose(layer.grads["W"], (x.T @ dout) * M, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, dout @ (W * M).T, rtol=1e-5, atol=1e-5)


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


def test_batchnorm_gradients_dense_and_image_layouts():
    rng = np.random.default_rng(5)
    for shape in ((6, 4), (3, 3, 2, 4)):
        bn = BatchNorm(4, dtype=np.float64)
        bn.params["gamma"][...] = rng.uniform(0.5, 2, 4)
        bn.params["beta"][...] = rng.standard_normal(4)
        for r in check_layer("BatchNorm", bn, rng.standard_normal(shape), rng):
            assert r.error < TOLERANCE, r


def test_fold_divides_the_rows_and_fills_a_numpy_buffer():
    assert fold(128 * 28 * 28, 32) * 32 == np.getbufsize()  # rows of one ufunc buffer
    assert fold(128 * 196, 64) * 64 == np.getbufsize()
    assert fold(6, 4) == 2 and fold(7, 32) == 1 and fold(0, 5) == 1
    assert fold(10, 20000) == 1  # rows already longer than a buffer


def test_batchnorm_on_folded_rows_matches_the_plain_formulas():
    # M = 512 values per channel: BatchNorm works on rows of 8192 values (r = 256 folded rows).
    rng = np.random.default_rng(2)
    x, dout = rng.normal(3.0, 2.0, (2, 16, 16, 32)), rng.standard_normal((2, 16, 16, 32))
    bn = BatchNorm(32, dtype=np.float64)
    gamma, beta = rng.uniform(0.5, 2, 32), rng.standard_normal(32)
    bn.params["gamma"][...], bn.params["beta"][...] = gamma, beta
    mu, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    x_hat = (x - mu) / np.sqrt(var + bn.eps)
    np.testing.assert_allclose(bn.forward(x, training=True), gamma * x_hat + beta, atol=1e-12)
    dx = bn.backward(dout)
    M, g = 512, dout * gamma
    dx_ref = g - g.sum(axis=(0, 1, 2)) / M - x_hat * (g * x_hat).sum(axis=(0, 1, 2)) / M
    np.testing.assert_allclose(dx, dx_ref / np.sqrt(var + bn.eps), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.grads["gamma"], (dout * x_hat).sum(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(bn.grads["beta"], dout.sum(axis=(0, 1, 2)), rtol=1e-10)
    # Inference with the running statistics: the same affine map, on folded rows too.
    rm, rv = bn.buffers["running_mean"], bn.buffers["running_var"]
    expected = gamma * (x - rm) / np.sqrt(rv + bn.eps) + beta
    np.testing.assert_allclose(bn.forward(x), expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_normalises_and_keeps_running_statistics_as_buffers():
    rng = np.random.default_rng(0)
    bn = BatchNorm(3, momentum=0.5, dtype=np.float64)
    assert set(bn.buffers) == {"running_mean", "running_var"} and set(bn.params) == {
        "gamma",
        "beta",
    }
    x = rng.normal(5.0, 2.0, (400, 3))
    out = bn.forward(x, training=True)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=0), 1, rtol=1e-4)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.5 * x.mean(axis=0))
    np.testing.assert_allclose(bn.buffers["running_var"], 0.5 + 0.5 * x.var(axis=0, ddof=1))
    # Inference: the running statistics, not the batch's; one example is fine.
    bn.buffers["running_mean"][...] = [1, 2, 3]
    bn.buffers["running_var"][...] = [4, 4, 4]
    np.testing.assert_allclose(bn.forward(np.array([[3.0, 2.0, 1.0]])), [[1, 0, -1]], atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        bn.forward(np.ones((1, 3)), training=True)


def test_dropconnect_masks_weights_per_batch_and_is_mean_network_at_inference():
    rng = np.random.default_rng(3)
    layer = DropConnect(6, 4, 0.5, rng=rng, mask_rng=np.random.default_rng(0), dtype=np.float64)
    x = rng.standard_normal((5, 6))
    dense_out = x @ layer.params["W"] + layer.params["b"]
    np.testing.assert_allclose(layer.forward(x), dense_out)  # inference: the mean weights
    out = layer.forward(x, training=True)
    mask = dropout_mask((6, 4), 0.5, np.random.default_rng(0))  # the mask the layer drew
    assert set(np.unique(mask)) <= {0.0, 2.0}
    np.testing.assert_allclose(out, x @ (layer.params["W"] * mask) + layer.params["b"])

    def same_mask():
        layer.rng = np.random.default_rng(7)

    for r in check_layer("DropConnect", layer, x, rng, same_mask):
        assert r.error < TOLERANCE, r


def test_reshape_round_trip_and_size_check():
    layer = Reshape((4, 5, 1))
    x = np.arange(40.0).reshape(2, 20)
    out = layer.forward(x)
    assert out.shape == (2, 4, 5, 1)
    back = layer.backward(out)
    assert back is not None
    np.testing.assert_array_equal(back, x)
    with pytest.raises(ValueError, match="cannot give"):
        layer.forward(np.ones((2, 21)))


@pytest.mark.parametrize(
    "layer",
    [
        Dense(3, 2, init="glorot"),
        DropConnect(3, 2, 0.25),
        ReLU(),
        Dropout(0.3),
        Flatten(),
        Reshape((2, 3)),
        BatchNorm(7, momentum=0.2, eps=1e-3),
    ],  # fmt: skip
)
def test_layer_configs_round_trip(layer):
    assert layer_from_config(layer.config()).config() == layer.config()


@pytest.mark.parametrize(
    "config",
    [
        {"type": "Dense", "in_features": 0, "out_features": 2},
        {"type": "DropConnect", "in_features": 2, "out_features": 2, "p": 1.0},
        {"type": "BatchNorm", "num_features": 3, "momentum": 2, "eps": 1e-5},
        {"type": "Reshape", "shape": [0, 3]},
        {"type": "Reshape", "shape": "28x28"},
        {"type": "Dropout", "p": "half"},
        {"type": "Magic"},
    ],  # fmt: skip
)
def test_bad_layer_configs_are_value_errors(config):
    with pytest.raises(ValueError):
        layer_from_config(config)


def test_dense_input_gradient_takes_the_layout_of_its_input():
    """dx = dout W^T is laid out like x: row-major after a Flatten, feature-major after a
    Dense (whose training outputs are feature-major); the same values either way."""
    rng = np.random.default_rng(0)
    layer = Dense(6, 4, rng=rng, dtype=np.float64)
    x = rng.standard_normal((5, 6))
    dout = rng.standard_normal((5, 4))
    expected = dout @ layer.params["W"].T
    for xin, c_order in ((x, True), (np.asfortranarray(x), False)):
        layer.forward(xin, training=True)
        dx = layer.backward(dout)
        np.testing.assert_allclose(dx, expected, rtol=1e-13, atol=1e-13)
        assert dx.flags.c_contiguous == c_order and dx.flags.f_contiguous == (not c_order)


def test_dropconnect_masks_follow_a_seeded_rng():
    """Built with a seeded rng and no mask_rng, DropConnect draws the same masks every time
    (the course's chapter 4 once trained differently on every run without it)."""
    from barenet.nn.layers import DropConnect

    x = np.ones((4, 6), dtype=np.float32)
    outs = [DropConnect(6, 5, 0.5, rng=np.random.default_rng(3)).forward(x, training=True)
            for _ in range(2)]  # fmt: skip
    np.testing.assert_array_equal(outs[0], outs[1])
    other = DropConnect(6, 5, 0.5, rng=np.random.default_rng(4)).forward(x, training=True)
    assert not np.array_equal(outs[0], other)
