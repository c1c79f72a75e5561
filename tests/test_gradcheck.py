import numpy as np

from barenet.nn.gradcheck import TOLERANCE, check_all, check_layer
from barenet.nn.layers import Dense


def test_every_check_passes():
    results = check_all(seed=0)
    assert len(results) >= 12
    for r in results:
        assert r.error < TOLERANCE, r


class _WrongDense(Dense):
    """A Dense layer whose bias gradient is off by a factor of 2."""

    def backward(self, dout, need_dx=True, need_grads=True):
        dx = super().backward(dout, need_dx, need_grads)
        self.grads["b"] *= 2
        return dx


def test_a_wrong_gradient_is_caught():
    rng = np.random.default_rng(0)
    results = {r.name: r for r in check_layer("W", _WrongDense(3, 2, rng=rng, dtype=np.float64),
                                              rng.standard_normal((4, 3)), rng)}  # fmt: skip
    assert results["W db"].error > 0.1 and not results["W db"].ok
    assert results["W dW"].ok
