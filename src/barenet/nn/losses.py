"""Losses: each returns its value and its gradient together, computed in one pass.

Derivations in docs/backprop.md; tests/test_losses.py checks values on hand-computed cases and
gradients against finite differences.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backend.arrays import array_module
from .layers import Array


def softmax(scores: Array) -> Array:
    """scores: (N, C) -> probabilities (N, C), rows summing to 1."""
    xp = array_module(scores)
    e = xp.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(
    scores: Array, y: Array, label_smoothing: float = 0.0
) -> tuple[float, Array]:
    """Mean cross-entropy of the softmax of `scores` against integer labels `y`.

    Arguments:
        scores: unnormalised class scores (logits), shape (N, C), float.
        y: true classes, shape (N,), integers in [0, C).
        label_smoothing: eps in [0, 1): the target is q = (1 - eps) onehot(y) + eps / C
            (Szegedy et al. 2016), which stops the scores from growing without bound.
    Returns:
        loss: L = -(1/N) sum_n sum_c q[n, c] log p[n, c], where p = softmax(scores) row by row
            (with eps = 0: -(1/N) sum_n log p[n, y_n]).
        dscores: dL/dscores = (p - q) / N, shape (N, C), same dtype as scores.

    Numerically stable: log p = s - max(s) - log sum exp(s - max(s)) never overflows, and
    the loss is read from log p rather than from log(p), which would be -inf for p == 0.
    """
    xp = array_module(scores)
    N = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)  # (N, C), max of each row is 0
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)  # (N, 1), >= 1
    rows = xp.arange(N)
    log_sum = xp.log(sum_exp[:, 0])  # (N,)
    log_p_true = shifted[rows, y] - log_sum  # (N,)
    eps = label_smoothing
    loss = -float(log_p_true.mean())
    if eps:
        # sum_c q_c log p_c = (1 - eps) log p_y + (eps / C) sum_c log p_c
        C = scores.shape[1]
        mean_log_p = (shifted.sum(axis=1) - C * log_sum) / C  # (N,)
        loss = (1 - eps) * loss - eps * float(mean_log_p.mean())
    dscores = exp
    dscores /= sum_exp  # p, reusing the exp buffer
    if eps:
        dscores -= eps / scores.shape[1]
    dscores[rows, y] -= 1 - eps  # p - q
    dscores /= N
    return loss, dscores


def kl_divergence(p: Array, scores: Array) -> tuple[float, Array]:
    """Mean KL(p_n || q_n) over the batch, q = softmax(scores), and its gradient.

    Arguments:
        p: (N, C) target probabilities (held constant).
        scores: (N, C) unnormalised class scores.
    Returns:
        loss: (1/N) sum_n sum_c p_nc (log p_nc - log q_nc), with 0 log 0 = 0.
        dscores: dL/dscores = (q - p) / N, (N, C), the dtype of scores.
    """
    xp = array_module(scores)
    N = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_q = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    positive = p > 0
    log_p = xp.log(xp.where(positive, p, 1))
    loss = float((p * xp.where(positive, log_p - log_q, 0)).sum()) / max(N, 1)
    return loss, ((xp.exp(log_q) - p) / max(N, 1)).astype(scores.dtype, copy=False)


def distillation_loss(
    scores: Array, y: Array, teacher: Array, weight: float, temperature: float
) -> tuple[float, Array]:
    """Learning from the labels and from a teacher's softened probabilities (Hinton et al. 2015).

    Arguments:
        scores: the student's unnormalised class scores z, shape (N, C), float.
        y: true classes, shape (N,), integers in [0, C).
        teacher: the teacher's probabilities at temperature T, shape (N, C), rows summing to 1
            (for an ensemble, the mean of softmax(z_m / T) over its members), held constant.
        weight: alpha in [0, 1], the teacher's share of the loss.
        temperature: T > 0; T > 1 softens both distributions, bringing out which wrong
            classes the teacher finds nearly right.
    Returns:
        loss: L = (1 - alpha) CE(softmax(z), y) + alpha T^2 KL(teacher || softmax(z / T)).
        dscores: dL/dz = (1 - alpha) (p - onehot(y)) / N + alpha T (q_T - teacher) / N, with
            p = softmax(z) and q_T = softmax(z / T). The T^2 keeps the teacher's term as
            strong as the labels' when T changes: d/dz of KL at z / T brings a factor 1 / T.
    """
    hard, d_hard = softmax_cross_entropy(scores, y)
    soft, d_soft = kl_divergence(teacher, scores / temperature)  # d_soft = (q_T - teacher) / N
    T2 = temperature * temperature
    d_hard *= 1 - weight
    d_hard += (weight * temperature) * d_soft  # T^2 * d_soft / T
    return (1 - weight) * hard + weight * T2 * soft, d_hard


def l2_penalty(weights: Sequence[Array], lam: float) -> tuple[float, list[Array]]:
    """The L2 penalty 0.5 * lam * sum of squares of `weights` (biases are not passed in).

    Returns:
        loss: 0.5 * lam * sum_W sum_ij W_ij^2.
        grads: lam * W for each W, same shapes. During training the optimiser adds this term
            in place (`SGD(weight_decay=lam)`) instead of allocating it.
    """
    loss = 0.5 * lam * sum(float((W * W).sum()) for W in weights)
    return loss, [lam * W for W in weights]


def l1_penalty(weights: Sequence[Array], lam: float) -> tuple[float, list[Array]]:
    """The L1 penalty lam * sum of absolute values of `weights`.

    Returns:
        loss: lam * sum_W sum_ij |W_ij|.
        grads: lam * sign(W) for each W, same shapes (0 where W_ij = 0: a subgradient, as
            |w| has no derivative there).
    """
    loss = lam * sum(float(abs(W).sum()) for W in weights)
    return loss, [l1_gradient(W, lam) for W in weights]


def l1_gradient(W: Array, lam: float) -> Array:
    """d(lam * sum |W|)/dW = lam * sign(W), the L1 penalty's gradient alone: in training, where
    the penalty's value (a sum, read back from a GPU) is not needed each step."""
    return lam * array_module(W).sign(W)
