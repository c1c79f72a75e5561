import math

import numpy as np
import pytest

from barenet.nn.optim import (
    SGD,
    Adam,
    AdamW,
    ConstantLR,
    CosineLR,
    MultiStepLR,
    OneCycleLR,
    StepLR,
    max_norm_,
)


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
    multi = MultiStepLR(1.0, milestones=(3, 5), gamma=0.5)
    assert [multi(t) for t in (0, 2.9, 3, 4.9, 5, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    cos = CosineLR(1.0, epochs=10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    warm = CosineLR(1.0, epochs=10, warmup=2)
    assert warm(1) == pytest.approx(0.5) and warm(2) == pytest.approx(1.0)
    assert warm(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_adam_first_step_is_lr_times_sign():
    W, g, params = _one_param([1.0, 1.0], [0.3, -20.0])
    Adam(params).step(0.1)
    np.testing.assert_allclose(W, [0.9, 1.1], rtol=1e-6)  # m_hat / sqrt(v_hat) = sign(g)


def test_adam_rejects_bad_settings():
    _, _, params = _one_param([1.0], [1.0])
    with pytest.raises(ValueError):
        Adam(params, betas=(1.0, 0.999))
    with pytest.raises(ValueError):
        Adam(params, eps=0.0)


def test_one_cycle_rises_then_anneals():
    s = OneCycleLR(1.0, epochs=10, pct_start=0.3, div=25, final_div=1e4)
    assert s(0) == pytest.approx(1 / 25)
    assert s(3) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1e-4)
    values = [s(t / 10) for t in range(101)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :]))


def test_max_norm_rescales_only_long_unit_vectors():
    W = np.array([[3.0, 0.1], [4.0, 0.2]])  # unit norms 5 and ~0.22
    max_norm_(W, 2.0)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), [2.0, np.hypot(0.1, 0.2)])
    np.testing.assert_allclose(W[:, 0], [1.2, 1.6])
    F = np.ones((3, 3, 2, 4))  # conv filters: one norm per output channel over (k, k, C)
    max_norm_(F, 1.0)
    np.testing.assert_allclose(np.sqrt((F**2).sum(axis=(0, 1, 2))), 1.0)


def test_optimiser_state_round_trips():
    rng = np.random.default_rng(0)
    for make in (lambda ps: SGD(ps, momentum=0.9), lambda ps: Adam(ps)):
        W, g = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
        opt = make([("W", W, g)])
        opt.step(0.1)
        W2, g2 = W.copy(), g.copy()
        twin = make([("W", W2, g2)])
        twin.load_state({k: np.array(v) for k, v in opt.state().items()})
        opt.step(0.1)
        twin.step(0.1)
        np.testing.assert_array_equal(W, W2)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGD(p, momentum=0.9, nesterov=True, weight_decay=1e-3, decayed=["W"]),
        lambda p: SGD(p, momentum=0.0, weight_decay=1e-3, decayed=["W"]),
        lambda p: Adam(p, weight_decay=1e-3, decayed=["W"]),
        lambda p: AdamW(p, decayed=["W"]),
    ],
)
def test_threaded_update_is_identical_to_one_thread(make, monkeypatch):
    """Large parameters are updated in blocks on several threads: the same bits as one pass.
    (SGD's NumPy path; its fused BLAS path is compared with it in tests/test_blas.py.)"""
    import barenet.backend.threads
    import barenet.nn.optim

    monkeypatch.setattr(barenet.nn.optim, "level1", lambda *arrays: None)

    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((300, 301)).astype(np.float32)  # 90,300 elements: split
    grads = [rng.standard_normal(W0.shape).astype(np.float32) for _ in range(3)]
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(barenet.backend.threads, "threads", lambda n=threads: n)
        W, g = W0.copy(), np.zeros_like(W0)
        opt = make([("W", W, g)])
        for grad in grads:
            g[...] = grad
            opt.step(0.01)
        results.append(W)
    assert not np.array_equal(results[0], W0)
    np.testing.assert_array_equal(results[0], results[1])
