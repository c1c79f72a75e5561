"""Optimisers and learning-rate schedules.

Every optimiser has one method, `step(lr)`, that updates the parameters in place from their
gradients. Every schedule is a callable `schedule(t) -> lr`, where t is the number of epochs
done so far as a float (epoch 2, halfway through its batches: t = 2.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .backend import array_module
from .layers import Array


class SGD:
    """Minibatch stochastic gradient descent with momentum (optionally Nesterov's).

    For every parameter W with gradient g (PyTorch's formulation, Sutskever et al. 2013):
        g <- g + weight_decay * W      (only for decayed params: the gradient of the L2
                                        penalty 0.5 * weight_decay * sum W^2, losses.l2_penalty)
        v <- momentum * v + g
        W <- W - lr * v                (classical momentum)
        W <- W - lr * (g + momentum * v)   (Nesterov)

    Arguments:
        parameters: (name, param, grad) triples, as `Sequential.parameters()` yields them.
        momentum: in [0, 1); 0 is plain SGD.
        nesterov: use Nesterov's look-ahead form (needs momentum > 0).
        weight_decay: the L2 coefficient lambda.
        decayed: names of the params the L2 penalty applies to (`Sequential.decayed()`).
    """

    def __init__(
        self,
        parameters: Iterable[tuple[str, Array, Array]],
        *,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decayed: Iterable[str] = (),
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, not {weight_decay}")
        self.parameters = list(parameters)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.decayed = set(decayed)
        self.velocity = {name: array_module(p).zeros_like(p) for name, p, _ in self.parameters}
        self.scratch = {name: array_module(p).empty_like(p) for name, p, _ in self.parameters}

    def step(self, lr: float) -> None:
        """Update every parameter in place. The grads are used as scratch space (the next
        backward pass overwrites them). Every operation writes into an existing buffer: for the
        seed's 784x1024 weights, allocating temporaries cost as much as the arithmetic."""
        mu, wd = self.momentum, self.weight_decay
        for name, W, g in self.parameters:
            xp, s = array_module(W), self.scratch[name]
            if wd and name in self.decayed:
                xp.multiply(W, wd, out=s)
                g += s  # g <- g + wd W
            if mu == 0.0:
                xp.multiply(g, lr, out=s)
                W -= s
                continue
            v = self.velocity[name]
            v *= mu
            v += g  # v <- mu v + g
            if self.nesterov:
                xp.multiply(v, mu, out=s)
                g += s  # g <- g + mu v
                xp.multiply(g, lr, out=s)
            else:
                xp.multiply(v, lr, out=s)
            W -= s


@dataclass(frozen=True)
class ConstantLR:
    """lr(t) = lr."""

    lr: float

    def __call__(self, t: float) -> float:
        return self.lr


@dataclass(frozen=True)
class StepLR:
    """lr(t) = lr * gamma ** floor(t / step_epochs): divide by 1/gamma every step_epochs."""

    lr: float
    step_epochs: float
    gamma: float = 0.1

    def __call__(self, t: float) -> float:
        return self.lr * self.gamma ** math.floor(t / self.step_epochs)


@dataclass(frozen=True)
class CosineLR:
    """Linear warm-up from 0 over `warmup` epochs, then cosine decay to `final_lr` at `epochs`
    (Loshchilov & Hutter 2017, without restarts):
        lr(t) = final + (lr - final) * (1 + cos(pi * (t - warmup) / (epochs - warmup))) / 2
    """

    lr: float
    epochs: float
    warmup: float = 0.0
    final_lr: float = 0.0

    def __call__(self, t: float) -> float:
        if t < self.warmup:
            return self.lr * t / self.warmup
        span = max(self.epochs - self.warmup, 1e-12)
        progress = min((t - self.warmup) / span, 1.0)
        return self.final_lr + (self.lr - self.final_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )
