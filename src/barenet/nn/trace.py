"""A trace of one small batch through a network: what every layer computes and whether its
gradients are right (`barenet trace`).

The batch (with uniform noise of up to 0.01 per pixel, so that no max-pool window holds equal
values) runs through a float64 copy of the network, one layer at a time in training mode
(batch statistics; every Dropout or DropConnect draws the same mask each time it runs), and
back. For every layer the trace records
    forward:   its output's shape, mean, standard deviation and fraction of exact zeros
               (after a ReLU: the units that are off, "dead" if they stay off for every input);
    backward:  the norm of dL/d(output) and of the gradient of each of its parameters;
    check:     the worst relative error between the backward pass's gradients (of the layer's
               input and of each parameter) and centred finite differences of the loss, on a
               few entries drawn at random: the loss is recomputed from that layer's input on.
The checked entries are drawn among the largest gradients of each array, and each is estimated
with two step sizes, keeping the closer estimate: a ReLU's or a max-pool's kink within reach of
one step spoils that one only. A correct backward pass shows errors of 1e-6 or (mostly) far
less; a wrong one above 1e-4 (SUSPECT), at its own layer and at every layer before it, whose
gradients flow through it: the deepest layer that fails is the one to fix. Even a subtle bug
shows: a BatchNorm backward that forgets the mean's share over 1,176 values gives 9e-4.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .gradcheck import numerical_gradient
from .layers import Array, Layer
from .losses import softmax_cross_entropy
from .model import Sequential

STEPS = (1e-6, 1e-7)  # two finite-difference steps: a kink crossed by one is not by both
TIE_NOISE = 0.01  # uniform noise added to the inputs (pixels in [0, 1]): no exact ties
TINY = 1e-8  # gradients below this both ways are zero (a bias before a BatchNorm has none)
SUSPECT = 1e-4  # a worse relative error than this points at a wrong backward pass
LARGE = 0.1  # the checked entries: those whose gradient is at least this share of the largest


def pick(analytic: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k flat indices among the entries with the largest gradients (at least LARGE times the
    largest): where a wrong backward pass shows, and where the finite differences' rounding
    (~1e-10 here) is negligible against the gradient."""
    flat = np.abs(analytic.reshape(-1))
    top = flat.max()
    candidates = np.flatnonzero(flat >= LARGE * top) if top > 0 else np.arange(flat.size)
    return rng.choice(candidates, min(k, candidates.size), replace=False)


@dataclass
class LayerTrace:
    index: int
    name: str  # the layer's type and sizes, e.g. "Conv2D 1->32 3x3"
    shape: tuple[int, ...]  # of its output
    mean: float
    std: float
    zeros: float  # fraction of the output that is exactly 0
    grad_norm: float  # ||dL/d(output)||
    param_grad_norms: dict[str, float] = field(default_factory=dict)
    error: float = 0.0  # worst relative error of the checked gradients (input, params)


def describe(layer: Layer) -> str:
    """A layer's type and its sizes, from its config."""
    c = layer.config()
    kind = c.pop("type")
    if "in_channels" in c:
        k = c["kernel_size"]
        return f"{kind} {c['in_channels']}->{c['out_channels']} {k}x{k}"
    if "in_features" in c:
        return f"{kind} {c['in_features']}->{c['out_features']}"
    if kind == "MaxPool2D":
        return f"{kind} {c['kernel_size']}x{c['kernel_size']}"
    if "p" in c:
        return f"{kind} p={c['p']:g}"
    return kind


def float64_copy(model: Sequential) -> Sequential:
    """A copy of the network with every parameter, gradient and buffer in float64 (NumPy):
    the same layers, a learner's own included."""
    net = copy.deepcopy(model)
    for layer in net.layers:
        for arrays in (layer.params, layer.grads, layer.buffers):
            for key, a in arrays.items():
                arrays[key] = np.asarray(a).astype(np.float64)  # the same memory order
    return net


def trace(
    model: Sequential, x: Array, y: Array, *, entries: int = 3, seed: int = 0
) -> list[LayerTrace]:
    """Trace the batch x (N, D) with labels y (N,) through `model` (left untouched): one
    LayerTrace per layer, in order. `entries`: how many entries of each layer's input and of
    each parameter the finite differences check."""
    net = float64_copy(model)
    layers = net.layers
    random_layers = [layer for layer in layers if hasattr(layer, "rng")]

    def same_masks() -> None:  # every random layer draws the same masks on every run
        for k, layer in enumerate(random_layers):
            layer.rng = np.random.default_rng([seed, k])

    def loss_from(i: int, a: np.ndarray) -> Callable[[], float]:
        """The loss as a function of layer i's input a (which the check perturbs in place)
        and of the parameters of layers i, i + 1, ..."""

        def f() -> float:
            same_masks()
            h = a
            for layer in layers[i:]:
                h = layer.forward(h, training=True)
            return softmax_cross_entropy(h, y)[0]

        return f

    # A digit's blank background gives equal values across a max-pool's window, where the
    # max has no derivative; noise far above the finite-difference step breaks the ties.
    noise = np.random.default_rng([seed, 1]).uniform(0, TIE_NOISE, np.shape(x))
    same_masks()
    acts = [np.asarray(x, dtype=np.float64) + noise]
    for layer in layers:
        acts.append(layer.forward(acts[-1], training=True))
    _, d = softmax_cross_entropy(acts[-1], y)
    douts: list[np.ndarray] = [d]  # dL/d(output of layer i), from the last layer back
    dins: list[np.ndarray] = []  # dL/d(input of layer i)
    grads: list[dict[str, np.ndarray]] = []
    for layer in reversed(layers):
        dx = layer.backward(douts[-1])
        assert dx is not None
        grads.append({k: g.copy() for k, g in layer.grads.items()})
        dins.append(dx)
        douts.append(dx)
    douts, dins, grads = douts[-2::-1], dins[::-1], grads[::-1]

    rng = np.random.default_rng(seed)
    result = []
    for i, layer in enumerate(layers):
        out = acts[i + 1]
        errors = []
        a = acts[i].copy()
        checks = [(a, dins[i], loss_from(i, a))]
        checks += [(p, grads[i][key], loss_from(i, acts[i])) for key, p in layer.params.items()]
        for array, analytic, f in checks:
            index = pick(analytic, entries, rng)
            checked = analytic.reshape(-1)[index]
            numeric = [numerical_gradient(f, array, h, index=index)[1] for h in STEPS]
            if np.abs(checked).max() + np.abs(numeric[0]).max() > TINY:  # else zero both ways
                # per entry, the closer of the two estimates: a ReLU's or a max-pool's kink
                # within one step's reach spoils that estimate only
                err = np.minimum(*(np.abs(checked - n) / np.maximum(np.abs(checked) + np.abs(n),
                                                                   1e-12) for n in numeric))  # fmt: skip
                errors.append(float(err.max()))
        result.append(
            LayerTrace(
                index=i,
                name=describe(layer),
                shape=tuple(out.shape),
                mean=float(out.mean()),
                std=float(out.std()),
                zeros=float(np.mean(out == 0)),
                grad_norm=float(np.linalg.norm(douts[i])),
                param_grad_norms={k: float(np.linalg.norm(g)) for k, g in grads[i].items()},
                error=max(errors, default=0.0),
            )
        )
    return result
