"""The fused pairs (barenet.nn.fused) against their layers run apart: the one-channel Conv2D +
BatchNorm, and the BatchNorm + max-pool."""

import copy

import numpy as np
import pytest

from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.fused import BatchNormMaxPool, ConvBatchNorm, fold_batchnorm
from barenet.nn.gradcheck import away_from_kinks, numerical_gradient
from barenet.nn.layers import BatchNorm, Dense, Flatten, ReLU, Reshape
from barenet.nn.losses import softmax_cross_entropy
from barenet.nn.model import Sequential
from barenet.nn.plan import (
    BatchNormPoolStep,
    ConvBatchNormStep,
    FoldedConvStep,
    plan,
    pooled_convolutions,
)
from barenet.train.recipes import RECIPES, build_model


def _pair(k, stride, padding, dtype, seed=0):
    rng = np.random.default_rng(seed)
    conv = Conv2D(1, 5, k, stride=stride, padding=padding, rng=rng, dtype=dtype)
    conv.params["b"][...] = rng.standard_normal(5)
    bn = BatchNorm(5, dtype=dtype)
    bn.params["gamma"][...] = rng.uniform(-1.5, 1.5, 5)  # negative scales too
    bn.params["beta"][...] = rng.standard_normal(5)
    bn.buffers["running_mean"][...] = rng.standard_normal(5)
    return conv, bn


def _apart(conv, bn, x, dy):
    """The two layers one after the other: output, and grads after backward(dy)."""
    y = bn.forward(conv.forward(x, training=True), training=True)
    conv.backward(bn.backward(dy), need_dx=False)
    return y


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (5, 2, 2), (3, 1, 0), (2, 2, 0)])
def test_pair_equals_the_two_layers_in_float64(k, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3, 9, 8, 1))
    conv, bn = _pair(k, stride, padding, np.float64)
    conv2, bn2 = copy.deepcopy(conv), copy.deepcopy(bn)
    pair = ConvBatchNorm(conv, bn)
    y = pair.forward(x)
    dy = rng.standard_normal(y.shape)
    pair.backward(dy)
    y2 = _apart(conv2, bn2, x, dy)
    assert y.shape == y2.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, y2, rtol=0, atol=1e-12)
    for a, b in ((conv, conv2), (bn, bn2)):
        for key in a.grads:
            np.testing.assert_allclose(a.grads[key], b.grads[key], rtol=1e-10, atol=1e-12)
        for key in a.buffers:
            np.testing.assert_allclose(a.buffers[key], b.buffers[key], rtol=1e-12, atol=1e-14)
    # BatchNorm removes any constant shift: the convolution's bias gets no gradient at all.
    assert np.all(conv.grads["b"] == 0)


def test_pair_in_float32_is_closer_to_float64_than_the_layers_apart():
    """The moments come from a float64 product of the patches; the layers apart sum 100,352
    float32 values per channel. Measured on MNIST-like strokes: ~5e-7 against ~5e-4."""
    rng = np.random.default_rng(2)
    x64 = (rng.uniform(0, 1, (128, 28, 28, 1)) > 0.8) * rng.uniform(0.5, 1, (128, 28, 28, 1))
    dy64 = rng.standard_normal((128, 28, 28, 5))
    conv, bn = _pair(3, 1, 1, np.float32)

    def run(dtype, fused):
        c, b = copy.deepcopy(conv), copy.deepcopy(bn)
        for layer in (c, b):
            for store in (layer.params, layer.grads, layer.buffers):
                for key in store:
                    store[key] = store[key].astype(dtype)
        x, dy = x64.astype(dtype), dy64.astype(dtype)
        if fused:
            pair = ConvBatchNorm(c, b)
            y = pair.forward(x)
            pair.backward(dy)
        else:
            y = _apart(c, b, x, dy)
        return [y, c.grads["W"], b.grads["gamma"], b.grads["beta"]]

    def error(got, ref):
        return max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))

    ref = run(np.float64, False)
    fused, apart = run(np.float32, True), run(np.float32, False)
    assert fused[0].dtype == np.float32
    assert error(fused, ref) < 1e-5
    assert error(fused, ref) < error(apart, ref)


def _net(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    bn = BatchNorm(3, dtype=dtype)
    bn.params["gamma"][...] = rng.uniform(0.5, 2.0, 3)
    bn.params["beta"][...] = rng.standard_normal(3)
    return Sequential([
        Reshape((6, 6, 1)),
        Conv2D(1, 3, 3, padding=1, rng=rng, dtype=dtype),
        bn,
        MaxPool2D(2),
        Flatten(),
        Dense(27, 4, rng=rng, dtype=dtype),
    ])  # fmt: skip


def test_sequential_trains_the_pair_and_its_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    net = _net()
    x, y = away_from_kinks(net, rng, (4, 36)), rng.integers(0, 4, 4)

    def loss():
        return softmax_cross_entropy(net.forward(x, training=True), y)[0]

    _, ds = softmax_cross_entropy(net.forward(x, training=True), y)
    assert [type(s) for s in plan(net.layers, training=True)][1] is ConvBatchNormStep
    net.backward(ds)
    for name, p, g in net.parameters():
        index, numeric = numerical_gradient(loss, p)
        if name == "layers.1.b":  # a shift that BatchNorm removes: no gradient
            assert np.all(g == 0) and np.abs(numeric).max() < 1e-9
        else:
            np.testing.assert_allclose(g.reshape(-1)[index], numeric, rtol=1e-7, atol=1e-10)


def test_sequential_uses_the_pair_only_where_it_applies():
    # inference: the layers run one by one, with the running statistics
    assert not any(isinstance(s, ConvBatchNormStep) for s in plan(_net().layers, training=False))
    rng = np.random.default_rng(0)
    cases = [
        # three input channels
        [Reshape((6, 2, 3)), Conv2D(3, 2, 3, padding=1, rng=rng), BatchNorm(2)],
        # no BatchNorm after the convolution
        [Reshape((6, 6, 1)), Conv2D(1, 2, 3, padding=1, rng=rng), ReLU(), BatchNorm(2)],
        # the convolution is not the first layer with parameters: its input gradient is needed
        [Dense(36, 36, rng=rng), Reshape((6, 6, 1)), Conv2D(1, 2, 3, rng=rng), BatchNorm(2)],
    ]
    for layers in cases:
        steps = plan([*layers, Flatten()], training=True)
        assert not any(isinstance(s, ConvBatchNormStep) for s in steps)
    # with input_grad (virtual adversarial training) the first convolution runs alone
    cnn = build_model(RECIPES["cnn"], (28, 28), 10).layers
    assert isinstance(plan(cnn, training=True)[1], ConvBatchNormStep)
    assert not isinstance(plan(cnn, training=True, input_grad=True)[1], ConvBatchNormStep)


def test_pair_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="one-channel"):
        ConvBatchNorm(Conv2D(2, 3, 3), BatchNorm(3))
    with pytest.raises(ValueError, match="one-channel"):
        ConvBatchNorm(Conv2D(1, 3, 3), BatchNorm(4))
    with pytest.raises(RuntimeError, match="without a forward"):
        ConvBatchNorm(Conv2D(1, 3, 3), BatchNorm(3)).backward(np.zeros((1, 1, 1, 3)))
    with pytest.raises(ValueError, match="at least 2 values"):
        ConvBatchNorm(Conv2D(1, 3, 3), BatchNorm(3)).forward(np.zeros((1, 3, 3, 1)))


def test_sequential_training_step_equals_the_layers_run_one_by_one():
    """The pairs and the window-major outputs of the convolutions before each pool change the
    order of the work, not its result: a whole float64 cnn-deep-like step, against each
    layer's own forward and backward in the plain layout; again with a negative gamma, where
    the BatchNorm and max-pool run apart."""
    rng = np.random.default_rng(5)

    def net():
        r = np.random.default_rng(6)
        layers = [
            Reshape((8, 8, 1)),
            Conv2D(1, 4, 3, padding=1, rng=r, dtype=np.float64), BatchNorm(4, dtype=np.float64),
            ReLU(),
            Conv2D(4, 4, 3, padding=1, rng=r, dtype=np.float64), BatchNorm(4, dtype=np.float64),
            MaxPool2D(2), ReLU(),
            Conv2D(4, 6, 3, padding=1, rng=r, dtype=np.float64), BatchNorm(6, dtype=np.float64),
            MaxPool2D(2), ReLU(),
            Flatten(), Dense(24, 3, rng=r, dtype=np.float64),
        ]  # fmt: skip
        return Sequential(layers)

    for negative in (False, True):
        _check_step(net, rng, negative)


def _check_step(net, rng, negative):
    seq, apart = net(), net()
    if negative:
        for model in (seq, apart):
            model.layers[9].params["gamma"][2] = -0.5
    assert pooled_convolutions(seq.layers) == {4: 2, 8: 2}
    x, y = rng.uniform(0, 1, (5, 64)), rng.integers(0, 3, 5)
    steps, h = plan(copy.deepcopy(seq.layers), training=True), x
    for step in steps:
        h = step.forward(h, True)
    fused = [s.start for s in steps if isinstance(s, BatchNormPoolStep) and s.fused is not None]
    assert fused == ([5] if negative else [5, 9])  # a pair with a negative gamma runs apart
    scores = seq.forward(x, training=True)
    _, ds = softmax_cross_entropy(scores, y)
    seq.backward(ds)
    h = x
    for layer in apart.layers:
        h = layer.forward(h, training=True)
    np.testing.assert_allclose(scores, h, rtol=1e-12, atol=1e-12)
    d = ds
    for i in range(len(apart.layers) - 1, 0, -1):
        d = apart.layers[i].backward(d, need_dx=i > 1)
    for (name, _, g), (_, _, g2) in zip(seq.parameters(), apart.parameters()):
        np.testing.assert_allclose(g, g2, rtol=1e-9, atol=1e-12, err_msg=name)
    for (name, b), (_, b2) in zip(seq.buffers(), apart.buffers()):
        np.testing.assert_allclose(b, b2, rtol=1e-12, atol=1e-12, err_msg=name)
    # inference: the window-major layouts, without the pair
    np.testing.assert_allclose(seq.forward(x), _run_plain(apart.layers, x), rtol=1e-12, atol=1e-12)


def _run_plain(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def _bn_pool(k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    bn = BatchNorm(5, dtype=dtype)
    bn.params["gamma"][...] = rng.uniform(0.2, 2.0, 5)
    bn.params["beta"][...] = rng.standard_normal(5)
    bn.buffers["running_mean"][...] = rng.standard_normal(5)
    return bn, MaxPool2D(k)


@pytest.mark.parametrize("k", [2, 3])
def test_batchnorm_maxpool_equals_the_two_layers_in_float64(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((k * k, 3, 4, 2, 5)) * 3 + 1  # window-major: 3 images of 4k x 2k
    bn, pool = _bn_pool(k, np.float64)
    bn2, pool2 = copy.deepcopy(bn), copy.deepcopy(pool)
    pair = BatchNormMaxPool(bn, pool)
    assert BatchNormMaxPool.applies(bn, pool, x)
    out = pair.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pair.backward(dout)
    out2 = pool2.forward(bn2.forward(x, training=True), training=True)
    dx2 = bn2.backward(pool2.backward(dout))
    assert out.shape == out2.shape == (3, 4, 2, 5) and dx.shape == x.shape
    np.testing.assert_allclose(out, out2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, dx2, rtol=0, atol=1e-12)
    for key in bn.grads:
        np.testing.assert_allclose(bn.grads[key], bn2.grads[key], rtol=1e-12, atol=1e-12)
    for key in bn.buffers:
        np.testing.assert_array_equal(bn.buffers[key], bn2.buffers[key])
    assert pair.backward(dout, need_dx=False) is None


def test_batchnorm_maxpool_applies_only_to_window_major_inputs_and_positive_gammas():
    bn, pool = _bn_pool(2, np.float32)
    x = np.ones((4, 2, 3, 3, 5), dtype=np.float32)
    assert BatchNormMaxPool.applies(bn, pool, x)
    assert not BatchNormMaxPool.applies(bn, pool, np.ones((2, 6, 6, 5), dtype=np.float32))
    assert not BatchNormMaxPool.applies(bn, MaxPool2D(3), x)  # 9 blocks needed
    bn.params["gamma"][1] = 0.0  # a flat channel: the max is no longer the winner's
    assert not BatchNormMaxPool.applies(bn, pool, x)
    with pytest.raises(ValueError, match="positive gammas"):
        BatchNormMaxPool(bn, pool).forward(x)
    with pytest.raises(ValueError, match="stride"):
        BatchNormMaxPool(bn, MaxPool2D(2, stride=1))
    with pytest.raises(RuntimeError, match="without a forward"):
        BatchNormMaxPool(bn, pool).backward(np.zeros((2, 3, 3, 5), dtype=np.float32))
    pool.forward(x, training=True)
    with pytest.raises(ValueError, match="add_to"):
        pool.backward(np.zeros((2, 3, 3, 5), dtype=np.float32), add_to=np.zeros((2, 6, 6, 5)))


def _trained_statistics(net, rng):
    """Give every BatchNorm of net running statistics and gammas of either sign, as training
    leaves them."""
    for layer in net.layers:
        if isinstance(layer, BatchNorm):
            F = layer.num_features
            layer.params["gamma"][...] = rng.uniform(0.5, 2.0, F) * rng.choice([-1, 1], F)
            layer.params["beta"][...] = rng.standard_normal(F)
            layer.buffers["running_mean"][...] = rng.standard_normal(F)
            layer.buffers["running_var"][...] = rng.uniform(0.2, 3.0, F)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_inference_folds_batchnorm_into_the_convolutions_and_equals_the_layers_apart(dtype, tol):
    rng = np.random.default_rng(5)
    net = Sequential([
        Reshape((8, 8, 1)),
        Conv2D(1, 4, 3, padding=1, rng=rng, dtype=dtype), BatchNorm(4, dtype=dtype), ReLU(),
        Conv2D(4, 6, 3, padding=1, rng=rng, dtype=dtype), BatchNorm(6, dtype=dtype),
        MaxPool2D(2), ReLU(),  # the convolution's output window-major for the pool
        Conv2D(6, 5, 3, rng=rng, dtype=dtype), BatchNorm(5, dtype=dtype),  # no ReLU after it
        Flatten(), Dense(20, 3, rng=rng, dtype=dtype),
    ])  # fmt: skip
    _trained_statistics(net, rng)
    x = rng.uniform(0, 1, (7, 64)).astype(dtype)
    steps = plan(net.layers, training=False)
    folded = [(s.start, s.stop) for s in steps if isinstance(s, FoldedConvStep)]
    assert folded == [(1, 4), (4, 6), (8, 10)]
    assert not any(isinstance(s, FoldedConvStep) for s in plan(net.layers, training=True))
    expected = _run_plain(net.layers, x)
    weights = [p.copy() for _, p, _ in net.parameters()]
    np.testing.assert_allclose(net.forward(x), expected, rtol=tol, atol=tol)
    # the layers themselves are left as they were
    for (name, p, _), before in zip(net.parameters(), weights):
        np.testing.assert_array_equal(p, before, err_msg=name)


def test_folded_convolution_is_one_convolution_and_refuses_a_mismatch():
    rng = np.random.default_rng(0)
    conv, bn = Conv2D(3, 4, 3, padding=1, rng=rng, dtype=np.float64), BatchNorm(4, dtype=np.float64)
    _trained_statistics(Sequential([conv, bn]), rng)
    x = rng.standard_normal((2, 5, 5, 3))
    single = fold_batchnorm(conv, bn)
    assert isinstance(single, Conv2D) and single.config() == conv.config()
    np.testing.assert_allclose(
        single.forward(x), bn.forward(conv.forward(x)), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="channels"):
        fold_batchnorm(conv, BatchNorm(3))
    with pytest.raises(RuntimeError, match="inference only"):
        FoldedConvStep([conv, bn], 0, relu=False).forward(x, training=True)
