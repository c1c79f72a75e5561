"""The fast engine computes exactly the plain maths of `barenet.nn.reference`, in float64:
every layer's output and gradients, every loss, every optimiser's update, and a whole network
trained a few steps one way and the other."""

import copy

import numpy as np
import pytest

from barenet.nn import losses, reference
from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.layers import BatchNorm, Dense, DropConnect, Dropout, Flatten, ReLU, Reshape
from barenet.nn.model import Sequential
from barenet.nn.optim import SGD, Adam
from barenet.nn.pooling import AvgPool2D, GlobalPool, SqueezeExcite
from barenet.nn.reference import ReferenceStep

F64 = np.float64


def _layers():
    rng = np.random.default_rng(0)
    return {
        "Dense": (Dense(7, 5, rng=rng, dtype=F64), (6, 7)),
        "DropConnect": (
            DropConnect(7, 5, 0.4, rng=rng, mask_rng=np.random.default_rng(1), dtype=F64),
            (6, 7),
        ),  # fmt: skip
        "ReLU": (ReLU(), (6, 4, 3)),
        "Dropout": (Dropout(0.3, rng=np.random.default_rng(2)), (6, 9)),
        "BatchNorm dense": (BatchNorm(5, dtype=F64), (8, 5)),
        "BatchNorm image": (BatchNorm(3, dtype=F64), (4, 5, 5, 3)),
        "Conv2D": (Conv2D(3, 4, 3, padding=1, rng=rng, dtype=F64), (2, 6, 6, 3)),
        "Conv2D strided": (Conv2D(2, 3, 3, stride=2, rng=rng, dtype=F64), (2, 7, 7, 2)),
        "Conv2D one channel": (Conv2D(1, 4, 5, padding=2, rng=rng, dtype=F64), (3, 8, 8, 1)),
        "MaxPool2D": (MaxPool2D(2), (2, 6, 6, 3)),
        "MaxPool2D overlapping": (MaxPool2D(3, 2), (2, 7, 7, 2)),
        "Flatten": (Flatten(), (2, 3, 3, 2)),
        "Reshape": (Reshape((4, 4, 1)), (3, 16)),
        "AvgPool2D": (AvgPool2D(2), (2, 7, 6, 3)),
        "GlobalPool avg": (GlobalPool("avg"), (2, 5, 5, 3)),
        "GlobalPool avg+max": (GlobalPool("avg+max"), (2, 5, 5, 3)),
        "SqueezeExcite": (SqueezeExcite(6, 2, rng=rng, dtype=F64), (3, 4, 4, 6)),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_every_layer_equals_its_reference(name):
    layer, shape = _layers()[name]
    rng = np.random.default_rng(3)
    for params in layer.params.values():  # non-trivial gammas, betas and biases
        params[...] = rng.standard_normal(params.shape)
    plain = copy.deepcopy(layer)  # the same weights and the same mask generator state
    step = ReferenceStep([plain], 0)
    x = rng.standard_normal(shape)
    out = layer.forward(x, training=True)
    expected = step.forward(x, training=True)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, step.backward(dout, True, True), rtol=1e-10, atol=1e-12)
    for key in layer.grads:
        np.testing.assert_allclose(layer.grads[key], plain.grads[key], rtol=1e-10, atol=1e-12,
                                   err_msg=key)  # fmt: skip
    for key in layer.buffers:
        np.testing.assert_allclose(layer.buffers[key], plain.buffers[key], rtol=1e-12,
                                   err_msg=key)  # fmt: skip
    # inference: running statistics, no masks
    np.testing.assert_allclose(layer.forward(x), step.forward(x, training=False), rtol=1e-12,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_losses_equal_their_reference(smoothing):
    rng = np.random.default_rng(0)
    scores, y = rng.standard_normal((9, 4)) * 3, rng.integers(0, 4, 9)
    loss, d = losses.softmax_cross_entropy(scores.copy(), y, smoothing)
    loss_ref, d_ref = reference.softmax_cross_entropy(scores, y, smoothing)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(losses.softmax(scores), reference.softmax(scores), rtol=1e-12)
    p = reference.softmax(rng.standard_normal((9, 4)))
    p[0] = [1, 0, 0, 0]  # 0 log 0 = 0
    kl, d = losses.kl_divergence(p, scores)
    kl_ref, d_ref = reference.kl_divergence(p, scores)
    assert kl == pytest.approx(kl_ref, rel=1e-12)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-15)
    weights = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    value, grads = losses.l2_penalty(weights, 0.01)
    value_ref, grads_ref = reference.l2_penalty(weights, 0.01)
    assert value == pytest.approx(value_ref, rel=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12)


def _params(rng):
    W, b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    return [("w", W, np.zeros_like(W)), ("b", b, np.zeros_like(b))]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_equals_its_reference(nesterov):
    rng = np.random.default_rng(0)
    params = _params(rng)
    plain = {name: (p.copy(), np.zeros_like(p)) for name, p, _ in params}  # (W, v)
    sgd = SGD(params, momentum=0.9, nesterov=nesterov, weight_decay=0.01, decayed={"w"})
    for lr in (0.1, 0.05, 0.02):
        grads = {name: rng.standard_normal(p.shape) for name, p, _ in params}
        for name, _, g in params:
            g[...] = grads[name]
        sgd.step(lr)
        for name, (W, v) in plain.items():
            wd = 0.01 if name == "w" else 0.0
            plain[name] = reference.sgd_step(W, grads[name], v, lr, 0.9, nesterov, wd)
    for name, p, _ in params:
        np.testing.assert_allclose(p, plain[name][0], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_equals_its_reference(decoupled):
    rng = np.random.default_rng(0)
    params = _params(rng)
    plain = {name: (p.copy(), np.zeros_like(p), np.zeros_like(p)) for name, p, _ in params}
    adam = Adam(params, weight_decay=0.01, decayed={"w"}, decoupled=decoupled)
    for t, lr in enumerate((1e-2, 5e-3, 1e-3), start=1):
        grads = {name: rng.standard_normal(p.shape) for name, p, _ in params}
        for name, _, g in params:
            g[...] = grads[name]
        adam.step(lr)
        for name, (W, m, v) in plain.items():
            wd = 0.01 if name == "w" else 0.0
            plain[name] = reference.adam_step(W, grads[name], m, v, t, lr, weight_decay=wd,
                                              decoupled=decoupled)  # fmt: skip
    for name, p, _ in params:
        np.testing.assert_allclose(p, plain[name][0], rtol=1e-12, err_msg=name)


def _network(seed):
    """Every layer type, with each of the fast plan's fusions in play: a one-channel
    convolution and its BatchNorm (a pair), a window-major convolution output, and a BatchNorm
    with its max-pool."""
    r = np.random.default_rng(seed)
    return Sequential([
        Reshape((8, 8, 1)),
        Conv2D(1, 4, 3, padding=1, rng=r, dtype=F64), BatchNorm(4, dtype=F64), ReLU(),
        Conv2D(4, 6, 3, padding=1, rng=r, dtype=F64), BatchNorm(6, dtype=F64),
        MaxPool2D(2), ReLU(), Dropout(0.2, rng=np.random.default_rng([seed, 1])),
        Flatten(),
        DropConnect(96, 16, 0.3, rng=r, mask_rng=np.random.default_rng([seed, 2]), dtype=F64),
        BatchNorm(16, dtype=F64), ReLU(),
        Dense(16, 3, rng=r, dtype=F64),
    ])  # fmt: skip


def test_a_network_trains_the_same_on_the_plain_path_as_on_the_fast_one():
    fast, plain = _network(0), _network(0)
    plain.fast = False
    rng = np.random.default_rng(5)
    optimizers = [SGD(net.parameters(), momentum=0.9, nesterov=True, weight_decay=1e-3,
                      decayed=net.decayed()) for net in (fast, plain)]  # fmt: skip
    for _ in range(4):
        x, y = rng.uniform(0, 1, (6, 64)), rng.integers(0, 3, 6)
        for net, optimizer in zip((fast, plain), optimizers):
            _, dscores = losses.softmax_cross_entropy(net.forward(x, training=True), y)
            net.backward(dscores)
            optimizer.step(0.05)
    for (name, p, _), (_, q, _) in zip(fast.parameters(), plain.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12, err_msg=name)
    for (name, b), (_, c) in zip(fast.buffers(), plain.buffers()):
        np.testing.assert_allclose(b, c, rtol=1e-9, atol=1e-12, err_msg=name)
    x = rng.uniform(0, 1, (7, 64))
    np.testing.assert_allclose(fast.predict_proba(x), plain.predict_proba(x), rtol=1e-9)
    # the input gradient (virtual adversarial training's probe) as well
    for net in (fast, plain):
        net.forward(x, training=True, input_grad=True)
    dscores = np.ones((7, 3)) / 7
    np.testing.assert_allclose(fast.backward(dscores, input_grad=True),
                               plain.backward(dscores, input_grad=True), rtol=1e-9,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("H, W", [(8, 8), (5, 7), (14, 14)])
def test_winograd_reference_equals_the_direct_convolution(H, W):
    """reference.winograd_conv_forward and _backward, one tile at a time, against conv_forward
    and conv_backward (stride 1, padding 1), in float64: outputs and all three gradients; the
    sides that are no multiple of 4 too."""
    rng = np.random.default_rng(12)
    x, Wt, b = (
        rng.standard_normal((2, H, W, 3)),
        rng.standard_normal((3, 3, 3, 4)),
        rng.standard_normal(4),
    )
    out, cache = reference.conv_forward(x, Wt, b, stride=1, padding=1)
    np.testing.assert_allclose(
        reference.winograd_conv_forward(x, Wt, b), out, rtol=1e-12, atol=1e-12
    )
    dout = rng.standard_normal(out.shape)
    for mine, theirs in zip(
        reference.winograd_conv_backward(dout, x, Wt), reference.conv_backward(dout, cache)
    ):
        np.testing.assert_allclose(mine, theirs, rtol=1e-11, atol=1e-11)
