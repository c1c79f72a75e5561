"""Virtual adversarial training: the network's input gradient, the perturbation's direction,
and the training step's gradients (the KL divergence: tests/test_losses.py)."""

from __future__ import annotations

import numpy as np
import pytest

from barenet.nn.gradcheck import TOLERANCE, away_from_kinks, numerical_gradient, relative_error
from barenet.nn.layers import Dense
from barenet.nn.losses import kl_divergence, softmax, softmax_cross_entropy
from barenet.nn.model import Sequential
from barenet.train.adversarial import perturbation, virtual_adversarial_step
from barenet.train.recipes import Recipe, build_model


def _float64(model: Sequential) -> Sequential:
    for layer in model.layers:
        for d in (layer.params, layer.grads, layer.buffers):
            for k in d:
                d[k] = d[k].astype(np.float64)
    return model


@pytest.mark.parametrize(
    "recipe",
    [Recipe(name="m", description="", hidden=(12, 7), dropout=0.0),
     Recipe(name="c", description="", arch="cnn", conv=(3,), kernel_size=3, batchnorm=True,
            hidden=(6,))],  # the fused first convolution and BatchNorm must come apart
    ids=["mlp", "cnn-batchnorm"],
)  # fmt: skip
def test_input_gradient_matches_finite_differences(recipe):
    rng = np.random.default_rng(1)
    model = _float64(build_model(recipe, (8, 8), 4, seed=0))
    x, p = away_from_kinks(model, rng, (5, 64)), softmax(rng.standard_normal((5, 4)))

    def loss() -> float:
        return kl_divergence(p, model.forward(x, training=True, input_grad=True))[0]

    _, ds = kl_divergence(p, model.forward(x, training=True, input_grad=True))
    dx = model.backward(ds, input_grad=True)
    assert dx.shape == x.shape
    index, numeric = numerical_gradient(loss, x)
    assert relative_error(dx.reshape(-1)[index], numeric) < TOLERANCE


@pytest.mark.parametrize(
    "recipe",
    [Recipe(name="m", description="", hidden=(12, 7), dropout=0.0, batchnorm=True),
     Recipe(name="c", description="", arch="cnn", conv=(3, 4), kernel_size=3, batchnorm=True,
            convs_per_block=2, hidden=(6,), dropconnect=0.5)],
    ids=["mlp-batchnorm", "cnn-dropconnect"],
)  # fmt: skip
def test_input_gradient_alone_skips_the_weight_gradients_and_is_the_same(recipe):
    rng = np.random.default_rng(2)
    x = rng.random((5, 64)).astype(np.float32)
    ds = rng.standard_normal((5, 4)).astype(np.float32)
    results = []
    for param_grads in (True, False):
        model = build_model(recipe, (8, 8), 4, seed=0)  # the same masks in both passes
        for _, _, g in model.parameters():
            g[...] = 7.0
        model.forward(x, training=True, input_grad=True)
        results.append(model.backward(ds, input_grad=True, param_grads=param_grads))
        # Dense and Conv2D leave their grads as they were; BatchNorm makes dx from its own.
        weights = [g for name, _, g in model.parameters() if not name.endswith(("gamma", "beta"))]
        assert all((g == 7.0).all() != param_grads for g in weights), param_grads
    np.testing.assert_array_equal(results[0], results[1])


def test_a_backward_pass_must_compute_something():
    model = build_model(Recipe(name="m", description="", hidden=(5,)), (8, 8), 4, seed=0)
    scores = model.forward(np.zeros((2, 64), np.float32), training=True, input_grad=True)
    with pytest.raises(ValueError, match="input_grad or param_grads"):
        model.backward(scores, param_grads=False)


def test_input_gradient_needs_a_forward_that_allows_it():
    recipe = Recipe(name="c", description="", arch="cnn", conv=(3,), kernel_size=3,
                    batchnorm=True, hidden=(6,))  # fmt: skip
    model = build_model(recipe, (8, 8), 4, seed=0)
    scores = model.forward(np.zeros((2, 64), np.float32), training=True)
    assert model.backward(scores) is None
    with pytest.raises(RuntimeError, match="input_grad=True"):
        model.backward(scores, input_grad=True)


def _linear(rng, D=6, C=4):
    layer = Dense(D, C, rng=rng, dtype=np.float64)
    layer.params["W"] *= 3
    return Sequential([layer])


def test_perturbation_is_the_leading_eigenvector_of_the_kl_curvature():
    # For softmax(x W + b), the curvature of KL(p || q(x + r)) at r = 0 is exactly
    # W (diag p - p p^T) W^T; its leading eigenvector is the most damaging direction.
    rng = np.random.default_rng(2)
    model = _linear(rng)
    x = rng.random((8, 6))
    p = softmax(model.forward(x))
    r = perturbation(model, x, p, 0.5, rng, xi=1e-4, iterations=30)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 0.5, rtol=1e-12)
    W = model.layers[0].params["W"]
    for n in range(len(x)):
        H = W @ (np.diag(p[n]) - np.outer(p[n], p[n])) @ W.T
        u = np.linalg.eigh(H)[1][:, -1]
        assert abs(r[n] @ u) / 0.5 > 0.9999
        # and near x no random direction raises the KL more (to second order; a radius as
        # large as 0.5 leaves that regime)
        worst = kl_divergence(p[n : n + 1], model.forward(x[n : n + 1] + 0.02 * r[n]))[0]
        others = rng.standard_normal((200, 6))
        others *= 0.01 / np.linalg.norm(others, axis=1, keepdims=True)
        kls = [kl_divergence(p[n : n + 1], model.forward(x[n : n + 1] + o))[0] for o in others]
        assert worst >= max(kls) * 0.999


def test_float32_probe_finds_the_float64_direction():
    # xi = XI in float32 against a tiny probe in float64, one iteration from the same start.
    rng = np.random.default_rng(3)
    recipe = Recipe(name="m", description="", hidden=(64,))
    model64 = _float64(build_model(recipe, (8, 8), 10, seed=0))
    model32 = build_model(recipe, (8, 8), 10, seed=0)
    for layer in model64.layers:
        if "W" in layer.params:
            layer.params["W"] *= 4.0  # confident predictions, like a trained net's
    for a, b in zip(model32.layers, model64.layers):
        for k in a.params:
            a.params[k][...] = b.params[k]
    x = rng.random((200, 64))
    p = softmax(model64.forward(x))
    r64 = perturbation(model64, x, p, 1.0, np.random.default_rng(4), xi=1e-5)
    r32 = perturbation(model32, x.astype(np.float32), p, 1.0, np.random.default_rng(4))
    assert r32.dtype == np.float32
    cos = np.abs((r32 * r64).sum(axis=1))
    assert np.median(cos) > 0.99 and np.percentile(cos, 10) > 0.9


def test_training_step_adds_the_weighted_penalty_gradient_and_keeps_batchnorm_buffers():
    recipe = Recipe(name="m", description="", hidden=(10,), batchnorm=True)
    rng = np.random.default_rng(5)
    x = rng.random((16, 64)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    grads = {}
    for weight in (0.0, 2.0):
        model = build_model(recipe, (8, 8), 3, seed=0)
        scores = model.forward(x, training=True)
        model.backward(softmax_cross_entropy(scores, y)[1])
        before = [b.copy() for _, b in model.buffers()]
        virtual_adversarial_step(model, x, scores, 1.5, weight, np.random.default_rng(6))
        grads[weight] = [g.copy() for _, _, g in model.parameters()]
        for b0, (_, b1) in zip(before, model.buffers(), strict=True):
            np.testing.assert_array_equal(b0, b1)
    # The penalty's own gradient, from the same perturbation recomputed apart:
    model = build_model(recipe, (8, 8), 3, seed=0)
    p = softmax(model.forward(x, training=True).astype(np.float64))
    r = perturbation(model, x, p, 1.5, np.random.default_rng(6))
    assert np.allclose(np.linalg.norm(r, axis=1), 1.5, rtol=1e-5)
    _, ds = kl_divergence(p, model.forward(x + r, training=True))
    model.backward(ds)
    penalty = [g for _, _, g in model.parameters()]
    for g0, g2, gp in zip(grads[0.0], grads[2.0], penalty, strict=True):
        np.testing.assert_allclose(g2 - g0, 2.0 * gp, rtol=1e-4, atol=1e-6)
