import math

import numpy as np
import pytest

from barenet.nn.gradcheck import TOLERANCE, numerical_gradient, relative_error
from barenet.nn.losses import kl_divergence, l1_penalty, l2_penalty, softmax_cross_entropy


def test_uniform_scores_give_log_C():
    loss, d = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    assert loss == pytest.approx(math.log(4))
    # p = 1/4 everywhere; minus one at the true class; divided by N = 2
    np.testing.assert_allclose(d, [[-0.375, 0.125, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]])


def test_hand_computed_case():
    s = np.array([[1.0, 2.0, 3.0]])
    loss, d = softmax_cross_entropy(s, np.array([2]))
    p = np.exp(s) / np.exp(s).sum()  # [0.0900, 0.2447, 0.6652]
    assert loss == pytest.approx(-math.log(p[0, 2]))
    assert loss == pytest.approx(0.40760596, abs=1e-8)
    np.testing.assert_allclose(d, p - [[0, 0, 1]])


def test_stable_for_huge_scores():
    loss, d = softmax_cross_entropy(
        np.array([[1000.0, -1000.0], [-1000.0, 1000.0]]), np.array([1, 1])
    )
    assert math.isfinite(loss) and loss == pytest.approx(1000.0)
    assert np.all(np.isfinite(d))


def test_float32_in_float32_out():
    _, d = softmax_cross_entropy(np.zeros((3, 5), np.float32), np.array([0, 1, 2]))
    assert d.dtype == np.float32


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(3)
    s, y = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    _, d = softmax_cross_entropy(s, y)
    index, numeric = numerical_gradient(lambda: softmax_cross_entropy(s, y)[0], s)
    assert relative_error(d.reshape(-1)[index], numeric) < TOLERANCE


def test_l2_value_and_gradient():
    W1, W2 = np.array([[1.0, -2.0]]), np.array([3.0])
    loss, (g1, g2) = l2_penalty([W1, W2], 0.1)
    assert loss == pytest.approx(0.5 * 0.1 * (1 + 4 + 9))
    np.testing.assert_allclose(g1, [[0.1, -0.2]])
    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 3))
    index, numeric = numerical_gradient(lambda: l2_penalty([W], 0.7)[0], W)
    assert relative_error(l2_penalty([W], 0.7)[1][0].reshape(-1)[index], numeric) < TOLERANCE


def test_label_smoothing_value_and_gradient():
    rng = np.random.default_rng(4)
    s, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss, d = softmax_cross_entropy(s, y, 0.2)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    q = np.full((5, 4), 0.05)
    q[np.arange(5), y] += 0.8
    assert loss == pytest.approx(-(q * np.log(p)).sum(axis=1).mean(), rel=1e-12)
    np.testing.assert_allclose(d, (p - q) / 5, atol=1e-15)
    index, numeric = numerical_gradient(lambda: softmax_cross_entropy(s, y, 0.2)[0], s)
    assert relative_error(d.reshape(-1)[index], numeric) < 1e-7


def test_kl_divergence_value_and_gradient():
    rng = np.random.default_rng(0)
    p = np.exp(rng.standard_normal((4, 5)))
    p /= p.sum(axis=1, keepdims=True)
    p[0] = [0.5, 0.5, 0, 0, 0]  # zero probabilities count 0 log 0 = 0
    s = rng.standard_normal((4, 5))
    q = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    expected = np.mean([sum(a * math.log(a / b) for a, b in zip(pr, qr) if a > 0)
                        for pr, qr in zip(p, q)])  # fmt: skip
    loss, ds = kl_divergence(p, s)
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(ds, (q - p) / 4, rtol=1e-12)
    index, numeric = numerical_gradient(lambda: kl_divergence(p, s)[0], s)
    assert relative_error(ds.reshape(-1)[index], numeric) < TOLERANCE
    assert kl_divergence(p, np.log(p + 1e-300))[0] == pytest.approx(0, abs=1e-12)


def test_l1_value_and_gradient():
    W1, W2 = np.array([[1.0, -2.0]]), np.array([3.0, 0.0])
    loss, (g1, g2) = l1_penalty([W1, W2], 0.1)
    assert loss == pytest.approx(0.1 * (1 + 2 + 3))
    np.testing.assert_allclose(g1, [[0.1, -0.1]])
    np.testing.assert_allclose(g2, [0.1, 0.0])  # at zero, the subgradient 0
    W = np.random.default_rng(5).standard_normal((3, 3))
    index, numeric = numerical_gradient(lambda: l1_penalty([W], 0.7)[0], W)
    assert relative_error(l1_penalty([W], 0.7)[1][0].reshape(-1)[index], numeric) < TOLERANCE
    assert l1_penalty([np.ones(2, np.float32)], 0.5)[1][0].dtype == np.float32
