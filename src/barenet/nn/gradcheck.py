"""Numerical gradient checking: centred finite differences in float64.

For a scalar function f of an array x, the simplest centred estimate of a partial derivative,
    D(h) = (f(x + h e_i) - f(x - h e_i)) / (2h),
has an error of O(h^2). Combining two step sizes cancels that term (Richardson extrapolation):
    df/dx_i ~ (4 D(h) - D(2h)) / 3 = (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / (12h),
whose error is O(h^4). With h = 1e-3 both the truncation error and the rounding error of
float64 stay near 1e-12, so a correct gradient shows relative errors far below the tolerance
(the two-point rule leaves ~1e-8 on small entries, too close to the 1e-7 tolerance for comfort).
Each estimate is compared with the analytic gradient g by the relative error
    |g_i - n_i| / max(|g_i| + |n_i|, tiny)
(cs231n's convention), reported as the worst over all checked entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .conv import Conv2D, MaxPool2D
from .layers import BatchNorm, Dense, DropConnect, Dropout, Flatten, ReLU, Reshape
from .losses import (
    distillation_loss,
    kl_divergence,
    l1_penalty,
    l2_penalty,
    softmax,
    softmax_cross_entropy,
)
from .model import Sequential, mlp
from .pooling import AvgPool2D, GlobalPool, SqueezeExcite

TOLERANCE = 1e-7  # worst relative error accepted in float64


def numerical_gradient(
    f: Callable[[], float],
    x: np.ndarray,
    h: float = 1e-3,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
    index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Centred finite differences of f() with respect to x, which f reads and this perturbs.

    Arguments:
        f: computes the scalar from the current content of x (and other fixed inputs).
        x: float64 array, modified in place during the check and restored after.
        max_entries: check only this many entries, drawn at random (all if None).
        index: or exactly these flat indices.
    Returns:
        index: flat indices checked, shape (K,); grad: the estimates there, shape (K,).
    """
    if x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays, not {x.dtype}")
    if index is not None:
        index = np.asarray(index)
    elif max_entries is None or max_entries >= x.size:
        index = np.arange(x.size)
    else:
        index = (rng or np.random.default_rng(0)).choice(x.size, max_entries, replace=False)
    grad = np.empty(index.size)
    for k, i in enumerate(index):
        # Flat index i in row-major order, whatever x's memory order: the entry that
        # x.reshape(-1)[i] reads (a copy, not a view, for a column-major x).
        at = np.unravel_index(i, x.shape)
        old = x[at]
        values = []
        for step in (h, -h, 2 * h, -2 * h):
            x[at] = old + step
            values.append(f())
        x[at] = old
        f1, f_1, f2, f_2 = values
        grad[k] = (8 * (f1 - f_1) - (f2 - f_2)) / (12 * h)
    return index, grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max_i |a_i - n_i| / max(|a_i| + |n_i|, 1e-12)."""
    denom = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-12)
    return float(np.max(np.abs(analytic - numeric) / denom)) if analytic.size else 0.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    error: float  # worst relative error

    @property
    def ok(self) -> bool:
        return self.error < TOLERANCE


def check_layer(
    name: str,
    layer,
    x: np.ndarray,
    rng: np.random.Generator,
    before_forward: Callable[[], None] | None = None,
) -> list[CheckResult]:
    """Check a layer's dx and every param gradient, through f = sum(forward(x) * R), R random,
    so that dL/dout = R. `layer` and `x` must be float64. `before_forward`, if given, runs
    before every forward pass (a random layer reseeds its generator there, so that every
    evaluation of f sees the same mask)."""
    reset = before_forward or (lambda: None)
    reset()
    R = rng.standard_normal(layer.forward(x, training=True).shape)
    reset()
    layer.forward(x, training=True)
    dx = layer.backward(R.copy())
    analytic = {"x": dx, **{k: g.copy() for k, g in layer.grads.items()}}

    def f() -> float:
        reset()
        return float((layer.forward(x, training=True) * R).sum())

    results = []
    for key, arr in [("x", x), *layer.params.items()]:
        index, numeric = numerical_gradient(f, arr)
        results.append(
            CheckResult(f"{name} d{key}", relative_error(analytic[key].reshape(-1)[index], numeric))
        )
    return results


def away_from_kinks(
    net, rng: np.random.Generator, shape: tuple[int, ...], margin: float = 0.02
) -> np.ndarray:
    """An input batch for which no ReLU of `net` sees a pre-activation within `margin` of 0, and
    no max-pooling window has its two largest inputs within `margin` of each other, so
    that the finite differences (steps of at most 2h = 0.002) never cross a kink: ReLU's at 0,
    or a window's switch of winner, where the derivative jumps and no difference quotient
    can match it. The layers run in training mode, as the checks run them."""
    for _ in range(1000):
        x = z = rng.standard_normal(shape)
        clear = True
        for layer, following in zip(net.layers, net.layers[1:] + [None]):
            if isinstance(layer, MaxPool2D):
                clear = clear and _runner_up_gap(layer, z) >= margin
            z = layer.forward(z, training=True)
            if isinstance(following, ReLU) and np.abs(z).min() < margin:
                clear = False
        if clear:
            return x
    raise RuntimeError("could not draw an input away from the kinks")


def _runner_up_gap(pool, x: np.ndarray) -> float:
    """The smallest difference between the largest and second-largest input of any window of
    `pool` (a MaxPool2D) over x (N, H, W, C)."""
    _, H, W, _ = x.shape
    k, s = pool.kernel_size, pool.stride
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    if k * k < 2:
        return np.inf
    windows = np.stack([x[pick] for pick in pool._picks(OH, OW)])
    top = np.sort(windows, axis=0)
    return float((top[-1] - top[-2]).min())


def check_all(seed: int = 0) -> list[CheckResult]:
    """Check every layer, every loss and a whole network, on small random float64 inputs."""
    rng = np.random.default_rng(seed)
    results = []
    results += check_layer(
        "Dense", Dense(7, 5, rng=rng, dtype=np.float64), rng.standard_normal((4, 7)), rng
    )
    # ReLU's derivative jumps at 0: keep inputs away from the kink so differences are smooth.
    x = rng.uniform(0.1, 1.0, (4, 6)) * rng.choice([-1.0, 1.0], (4, 6))
    results += check_layer("ReLU", ReLU(), x, rng)
    dropout = Dropout(0.4)

    def same_mask() -> None:
        dropout.rng = np.random.default_rng(seed)

    results += check_layer("Dropout", dropout, rng.standard_normal((4, 6)), rng, same_mask)
    results += check_layer("Flatten", Flatten(), rng.standard_normal((3, 2, 4, 5)), rng)
    results += check_layer("Reshape", Reshape((4, 5, 1)), rng.standard_normal((3, 20)), rng)
    dropconnect = DropConnect(7, 5, 0.4, rng=rng, dtype=np.float64)

    def same_weight_mask() -> None:
        dropconnect.rng = np.random.default_rng(seed)

    results += check_layer(
        "DropConnect", dropconnect, rng.standard_normal((4, 7)), rng, same_weight_mask
    )
    for name, shape in (("BatchNorm (N, D)", (6, 5)), ("BatchNorm (N, H, W, C)", (3, 4, 4, 5))):
        bn = BatchNorm(5, dtype=np.float64)
        bn.params["gamma"][...] = rng.uniform(0.5, 2.0, 5)
        bn.params["beta"][...] = rng.standard_normal(5)
        results += check_layer(name, bn, rng.standard_normal(shape), rng)
    for C, k, stride, pad in ((3, 3, 1, 1), (3, 3, 2, 0), (3, 5, 1, 2), (1, 3, 2, 1)):
        conv = Conv2D(C, 4, k, stride=stride, padding=pad, rng=rng, dtype=np.float64)
        conv.params["b"][...] = rng.standard_normal(4)
        x = rng.standard_normal((2, 7, 6, C))
        name = f"Conv2D k{k} s{stride} p{pad}" + (" (1 channel)" if C == 1 else "")
        results += check_layer(name, conv, x, rng)
    # Max-pooling's derivative jumps where two inputs of a window tie: distinct values 0.1 apart
    # keep every finite difference on one side.
    for k, stride in ((2, 2), (3, 1)):
        x = rng.permutation(2 * 6 * 6 * 3).reshape(2, 6, 6, 3) / 10.0
        results += check_layer(f"MaxPool2D k{k} s{stride}", MaxPool2D(k, stride), x, rng)
    results += check_layer("AvgPool2D k2 (7x7: a row left over)", AvgPool2D(2),
                           rng.standard_normal((2, 7, 7, 3)), rng)  # fmt: skip
    for mode in ("avg", "max", "avg+max"):
        x = rng.permutation(2 * 4 * 4 * 3).reshape(2, 4, 4, 3) / 10.0  # distinct: no ties
        results += check_layer(f"GlobalPool {mode}", GlobalPool(mode), x, rng)
    se = SqueezeExcite(8, 2, rng=rng, dtype=np.float64)
    se.params["b1"][...] = rng.uniform(0.2, 0.5, 4)  # pre-activations away from ReLU's kink
    se.params["b2"][...] = rng.standard_normal(8)
    results += check_layer("SqueezeExcite 8/2", se, rng.uniform(0.5, 1.5, (3, 4, 4, 8)), rng)

    # Scores of unit scale: a probability near 0 gives a gradient entry so small that float64
    # rounding in the loss would dominate its relative error.
    scores, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    _, dscores = softmax_cross_entropy(scores, y)
    index, numeric = numerical_gradient(lambda: softmax_cross_entropy(scores, y)[0], scores)
    results.append(
        CheckResult(
            "softmax_cross_entropy dscores", relative_error(dscores.reshape(-1)[index], numeric)
        )
    )

    target = softmax(rng.standard_normal((5, 4)))
    _, dscores = kl_divergence(target, scores)
    index, numeric = numerical_gradient(lambda: kl_divergence(target, scores)[0], scores)
    results.append(
        CheckResult("kl_divergence dscores", relative_error(dscores.reshape(-1)[index], numeric))
    )
    # its own generator, so that the draws of the checks after it stay as they were
    drng = np.random.default_rng([seed, 10])
    teacher = softmax(drng.standard_normal((5, 4)) / 3.0)

    def distill() -> tuple[float, np.ndarray]:
        return distillation_loss(scores, y, teacher, weight=0.3, temperature=3.0)

    index, numeric = numerical_gradient(lambda: distill()[0], scores)
    results.append(
        CheckResult(
            "distillation dscores", relative_error(distill()[1].reshape(-1)[index], numeric)
        )
    )

    W = rng.standard_normal((3, 4))
    _, (dW,) = l2_penalty([W], 0.3)
    index, numeric = numerical_gradient(lambda: l2_penalty([W], 0.3)[0], W)
    results.append(CheckResult("l2_penalty dW", relative_error(dW.reshape(-1)[index], numeric)))
    _, (dW,) = l1_penalty([W], 0.3)  # |w| has a kink at 0 only: a normal draw is away from it
    index, numeric = numerical_gradient(lambda: l1_penalty([W], 0.3)[0], W)
    results.append(CheckResult("l1_penalty dW", relative_error(dW.reshape(-1)[index], numeric)))

    # The whole network: cross-entropy + L2 through Dense-ReLU-Dense-ReLU-Dense.
    net = mlp([6, 8, 7, 3], rng=rng, dtype=np.float64)
    xb, yb, lam = away_from_kinks(net, rng, (5, 6)), rng.integers(0, 3, 5), 0.1
    decayed = net.decayed()

    def loss() -> float:
        data, _ = softmax_cross_entropy(net.forward(xb, training=True), yb)
        weights = [p for n, p, _ in net.parameters() if n in decayed]
        return data + l2_penalty(weights, lam)[0]

    _, ds = softmax_cross_entropy(net.forward(xb, training=True), yb)
    net.backward(ds)
    for name, p, g in net.parameters():
        analytic = g + lam * p if name in decayed else g.copy()
        index, numeric = numerical_gradient(loss, p)
        results.append(
            CheckResult(f"mlp {name}", relative_error(analytic.reshape(-1)[index], numeric))
        )
    # The gradient of the network's input (virtual adversarial training reads it).
    _, ds = softmax_cross_entropy(net.forward(xb, training=True, input_grad=True), yb)
    dx = net.backward(ds, input_grad=True)
    assert dx is not None
    index, numeric = numerical_gradient(
        lambda: softmax_cross_entropy(net.forward(xb, training=True), yb)[0], xb
    )
    results.append(CheckResult("mlp input", relative_error(dx.reshape(-1)[index], numeric)))

    # A small convolutional network, end to end, with label smoothing:
    # Reshape-Conv2D-MaxPool2D-Flatten-Dense. No ReLU (its kinks are checked above) and no
    # BatchNorm: BatchNorm removes any constant shift of its input, so the convolution's bias
    # would get a true gradient of exactly 0, whose relative error is meaningless.
    cnn = Sequential([
        Reshape((6, 6, 1)),
        Conv2D(1, 3, 3, padding=1, rng=rng, dtype=np.float64),
        MaxPool2D(2),
        Flatten(),
        Dense(27, 4, rng=rng, dtype=np.float64),
    ])  # fmt: skip
    xc, yc = away_from_kinks(cnn, rng, (4, 36)), rng.integers(0, 4, 4)
    results += _check_network("cnn", cnn, xc, yc)

    def with_batchnorm(*convolutions: Conv2D) -> Sequential:
        """The network above with these convolutions, a BatchNorm (positive gammas) and the pool."""
        bn = BatchNorm(3, dtype=np.float64)
        bn.params["gamma"][...] = rng.uniform(0.5, 2.0, 3)
        bn.params["beta"][...] = rng.standard_normal(3)
        return Sequential([Reshape((6, 6, 1)), *convolutions, bn, MaxPool2D(2), Flatten(),
                           Dense(27, 4, rng=rng, dtype=np.float64)])  # fmt: skip

    # The same network with a BatchNorm after its one-channel convolution: Sequential trains
    # the pair as one (barenet.nn.fused), from the patches' moments. The convolution's bias is
    # left out here for the reason above (tests/test_fused.py checks that its gradient is 0).
    fused = with_batchnorm(Conv2D(1, 3, 3, padding=1, rng=rng, dtype=np.float64))
    xc = away_from_kinks(fused, rng, (4, 36))
    results += _check_network("cnn with BatchNorm (fused pair)", fused, xc, yc, {"layers.1.b"})

    # A BatchNorm between a (two-channel) convolution and a max-pool, with positive gammas:
    # Sequential normalises only the pooled values (barenet.nn.fused.BatchNormMaxPool).
    pooled = with_batchnorm(
        Conv2D(1, 2, 3, padding=1, rng=rng, dtype=np.float64),
        Conv2D(2, 3, 3, padding=1, rng=rng, dtype=np.float64),
    )
    xc = away_from_kinks(pooled, rng, (4, 36))
    label = "cnn with BatchNorm and max-pool (fused)"
    results += _check_network(label, pooled, xc, yc, {"layers.2.b"})
    return results


def _check_network(
    label: str, net, x: np.ndarray, y: np.ndarray, skip: frozenset[str] | set[str] = frozenset()
) -> list[CheckResult]:
    """Every parameter of `net` (but those in `skip`) under cross-entropy with label smoothing
    0.1, the layers in training mode, as the training step runs them."""

    def loss() -> float:
        return softmax_cross_entropy(net.forward(x, training=True), y, 0.1)[0]

    _, ds = softmax_cross_entropy(net.forward(x, training=True), y, 0.1)
    net.backward(ds)
    results = []
    for name, p, g in net.parameters():
        if name in skip:
            continue
        index, numeric = numerical_gradient(loss, p)
        results.append(
            CheckResult(f"{label} {name}", relative_error(g.reshape(-1)[index], numeric))
        )
    return results
