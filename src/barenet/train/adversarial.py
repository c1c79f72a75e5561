"""Virtual adversarial training (Miyato et al. 2016): a smoothness penalty along the input
direction in which the network's prediction changes fastest.

For a batch x: (N, D) with the network's current class probabilities p = softmax(f(x)), held
constant, the virtual adversarial perturbation of each input is the r of length eps that
changes its prediction most:

    r_n = argmax_{||r|| = eps} KL(p_n || q_n(r)),    q_n(r) = softmax(f(x_n + r))

and the penalty added to the cross-entropy is

    L_vat = w * (1/N) sum_n KL(p_n || q_n(r_n)),    r_n held constant.

No label takes part, and nothing is known about images: the direction comes from the
network alone, so a net trained with it still treats its inputs as an unordered set of
features (like dropout, and unlike shifting or distorting digits).

Finding r. KL(p || q(r)) is 0 at r = 0, its minimum, so its gradient there vanishes; to
second order it is 0.5 r^T H r with H = J^T (diag p - p p^T) J (J = d scores / d x, exact
inside one linear region of a ReLU net). The maximiser is eps times H's leading eigenvector,
found by power iteration from a random unit vector d, each product H d read as a finite
difference of gradients:

    g = d/dr KL(p || q(r)) at r = xi d  ~  xi H d,    d <- g / ||g||

(per example; `iterations` times, one in the paper). The gradient of the KL divergence with
respect to the scores is (q - p) / N (`losses.kl_divergence`; docs/backprop.md, section 8).
"""

from __future__ import annotations

import numpy as np

from ..backend.arrays import array_module
from ..nn.layers import Array
from ..nn.losses import kl_divergence, softmax
from ..nn.model import Sequential

XI = 0.1  # length of the probe xi d; see `perturbation`


def _unit_rows(v: Array) -> Array:
    """Each row of v (N, D) divided by its Euclidean length (rows of zeros stay zero)."""
    xp = array_module(v)
    norms = xp.sqrt((v.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (v / xp.maximum(norms, 1e-30)).astype(v.dtype, copy=False)


def perturbation(
    model: Sequential,
    x: Array,
    p: Array,
    eps: float,
    rng: np.random.Generator,
    *,
    xi: float = XI,
    iterations: int = 1,
) -> Array:
    """The virtual adversarial perturbations r: (N, D), each row of length eps.

    Arguments:
        x: (N, D) inputs; p: (N, C) the network's probabilities for them (held constant).
        rng: draws the random start of the power iteration.
        xi: length of the probe: small enough to stay near x (in a ReLU net H is exact while
            x + xi d stays in x's linear region), large enough for q - p to stand out of
            float32 rounding. On the shipped `seed` net and 500 test digits (||x|| ~ 9), one
            float32 iteration against one float64 iteration with xi = 1e-4 from the same start
            (|cosine|, median / 5th percentile): xi = 1e-6: 0.82 / 0.25 (rounding noise),
            1e-3: 0.989 / 0.37, 0.1: 0.9994 / 0.91, 1: 0.990 / 0.83 (nonlinearity).
    Runs the model in training mode (its BatchNorms use batch statistics); the caller keeps
    what the clean pass needs, since these passes overwrite every layer's saved state.
    """
    xp = array_module(x)
    d = xp.asarray(rng.standard_normal(x.shape, dtype=np.float32)).astype(x.dtype, copy=False)
    for _ in range(iterations):
        scores = model.forward(x + x.dtype.type(xi) * _unit_rows(d), training=True,
                               input_grad=True)  # fmt: skip
        _, dscores = kl_divergence(p, scores)
        d = model.backward(dscores, input_grad=True, param_grads=False)
    return x.dtype.type(eps) * _unit_rows(d)


def virtual_adversarial_step(
    model: Sequential,
    x: Array,
    scores: Array,
    eps: float,
    weight: float,
    rng: np.random.Generator,
) -> float:
    """Add w * grad L_vat to the gradients the clean pass left in the model's layers.

    Arguments:
        x: (N, D) the batch; scores: (N, C) the clean training pass's scores for it, whose
            backward pass has already filled the layers' grads.
        eps: length of each perturbation (pixels in [0, 1]); weight: w.
    Returns:
        the penalty's KL divergence (before the weight), for the record.
    BatchNorm's running statistics are kept as the clean pass left them: the perturbed
    passes must not count as data the network will see. Dropout and DropConnect would draw
    new masks in each pass, adding their noise to the KL divergence; the `mlp` recipe, which
    trains with this penalty, has neither.
    """
    saved_grads = [g.copy() for _, _, g in model.parameters()]
    saved_buffers = [b.copy() for _, b in model.buffers()]
    p = softmax(scores.astype(np.float64))
    r = perturbation(model, x, p, eps, rng)
    kl, dscores = kl_divergence(p, model.forward(x + r, training=True))
    model.backward(dscores * dscores.dtype.type(weight))
    for (_, _, g), clean in zip(model.parameters(), saved_grads, strict=True):
        g += clean
    for (_, b), kept in zip(model.buffers(), saved_buffers, strict=True):
        b[...] = kept
    return kl
