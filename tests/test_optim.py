import math

import numpy as np
import pytest

from barenet.optim import SGD, ConstantLR, CosineLR, StepLR


def _one_param(value, grad):
    W, g = np.array(value, dtype=np.float64), np.array(grad, dtype=np.float64)
    return W, g, [("W", W, g)]


def test_plain_sgd():
    W, g, params = _one_param([1.0, 2.0], [0.5, -1.0])
    SGD(params, momentum=0.0).step(0.1)
    np.testing.assert_allclose(W, [0.95, 2.1])


def test_momentum_by_hand():
    W, g, params = _one_param([1.0], [1.0])
    opt = SGD(params, momentum=0.9)
    opt.step(0.1)  # v = 1, W = 1 - 0.1
    g[...] = 1.0
    opt.step(0.1)  # v = 0.9 + 1 = 1.9, W = 0.9 - 0.19
    np.testing.assert_allclose(W, [0.71])


def test_nesterov_by_hand():
    W, g, params = _one_param([1.0], [1.0])
    opt = SGD(params, momentum=0.9, nesterov=True)
    opt.step(0.1)  # v = 1, W = 1 - 0.1 * (1 + 0.9)
    np.testing.assert_allclose(W, [0.81])
    g[...] = 1.0
    opt.step(0.1)  # v = 1.9, W = 0.81 - 0.1 * (1 + 1.71)
    np.testing.assert_allclose(W, [0.539])


def test_weight_decay_only_on_decayed_params():
    W, gW = np.array([2.0]), np.array([0.0])
    b, gb = np.array([2.0]), np.array([0.0])
    SGD([("W", W, gW), ("b", b, gb)], momentum=0.0, weight_decay=0.5, decayed={"W"}).step(0.1)
    np.testing.assert_allclose(W, [1.9])  # W - lr * lambda * W
    np.testing.assert_allclose(b, [2.0])


def test_sgd_rejects_bad_settings():
    _, _, params = _one_param([1.0], [1.0])
    for kwargs in [{"momentum": 1.0}, {"momentum": -0.1}, {"momentum": 0.0, "nesterov": True},
                   {"weight_decay": -1.0}]:  # fmt: skip
        with pytest.raises(ValueError):
            SGD(params, **kwargs)


def test_schedules():
    assert ConstantLR(0.3)(7.5) == 0.3
    step = StepLR(1.0, step_epochs=2, gamma=0.5)
    assert [step(t) for t in (0, 1.9, 2, 4.5)] == [1.0, 1.0, 0.5, 0.25]
    cos = CosineLR(1.0, epochs=10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    warm = CosineLR(1.0, epochs=10, warmup=2)
    assert warm(1) == pytest.approx(0.5) and warm(2) == pytest.approx(1.0)
    assert warm(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
