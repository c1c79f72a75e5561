"""Losses: each returns its value and its gradient together, computed in one pass.

Derivations in docs/backprop.md; tests/test_losses.py checks values on hand-computed cases and
gradients against finite differences.
"""

from __future__ import annotations

from collections.abc import Sequence

from .backend import array_module
from .layers import Array


def softmax_cross_entropy(scores: Array, y: Array) -> tuple[float, Array]:
    """Mean cross-entropy of the softmax of `scores` against integer labels `y`.

    Arguments:
        scores: unnormalised class scores (logits), shape (N, C), float.
        y: true classes, shape (N,), integers in [0, C).
    Returns:
        loss: L = -(1/N) sum_n log p[n, y_n], where p = softmax(scores) row by row.
        dscores: dL/dscores = (p - onehot(y)) / N, shape (N, C), same dtype as scores.

    Numerically stable: log p = s - max(s) - log sum exp(s - max(s)) never overflows, and
    the loss is read from log p rather than from log(p), which would be -inf for p == 0.
    """
    xp = array_module(scores)
    N = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)  # (N, C), max of each row is 0
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)  # (N, 1), >= 1
    rows = xp.arange(N)
    log_p_true = shifted[rows, y] - xp.log(sum_exp[:, 0])  # (N,)
    loss = -float(log_p_true.mean())
    dscores = exp
    dscores /= sum_exp  # p, reusing the exp buffer
    dscores[rows, y] -= 1  # p - onehot(y)
    dscores /= N
    return loss, dscores


def l2_penalty(weights: Sequence[Array], lam: float) -> tuple[float, list[Array]]:
    """The L2 penalty 0.5 * lam * sum of squares of `weights` (biases are not passed in).

    Returns:
        loss: 0.5 * lam * sum_W sum_ij W_ij^2.
        grads: lam * W for each W, same shapes. During training the optimiser adds this term
            in place (`SGD(weight_decay=lam)`) instead of allocating it.
    """
    loss = 0.5 * lam * sum(float((W * W).sum()) for W in weights)
    return loss, [lam * W for W in weights]
