"""Optimisers and learning-rate schedules.

Every optimiser has one method, `step(lr)`, that updates the parameters in place from their
gradients. Every schedule is a callable `schedule(t) -> lr`, where t is the number of epochs
done so far as a float (epoch 2, halfway through its batches: t = 2.5).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..backend.arrays import array_module
from ..backend.blas import NumpyLevel1, level1
from ..backend.threads import in_blocks
from .layers import Array


def _load_into(buffers: dict[str, Array], prefix: str, state: dict[str, Array]) -> None:
    for name, buf in buffers.items():
        src = state[f"{prefix}.{name}"]
        if src.shape != buf.shape:
            raise ValueError(f"optimiser state {prefix}.{name} has shape {src.shape}, "
                             f"not {buf.shape}")  # fmt: skip
        buf[...] = array_module(buf).asarray(src)


def _flat(*arrays: Array) -> list[Array]:
    """Parameter-shaped arrays as 1-D views in their memory order (row- or column-major, as
    the parameter was made; its gradient and the optimiser's buffers follow it), so that
    elementwise updates split into blocks of contiguous memory. Element k of every view is the
    same entry of the parameter only if all share one memory order: anything else is refused.
    """
    orders = {"C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else "?" for a in arrays}
    if len(orders) != 1 or "?" in orders:
        raise ValueError(f"optimiser arrays must share one contiguous memory order, not {orders}")
    return [a.ravel(order="K") for a in arrays]


def max_norm_(W: Array, c: float) -> None:
    """Max-norm constraint (Srivastava et al. 2014), in place: rescale every unit's incoming
    weight vector whose L2 norm exceeds c back onto the ball of radius c.

    W: (D, H) dense weights, or (k, k, C, F) convolution filters; the units are the last axis,
    so the norm of unit j is ||W[..., j]|| over all other axes. Applied after each step.
    """
    xp = array_module(W)
    norms = xp.sqrt((W * W).reshape(-1, W.shape[-1]).sum(axis=0))  # (H,)
    W *= xp.minimum(1.0, c / xp.maximum(norms, 1e-12)).astype(W.dtype)


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

    def state(self) -> dict[str, Array]:
        """Everything the next steps depend on, for a checkpoint: "velocity.<param name>"."""
        return {f"velocity.{name}": v for name, v in self.velocity.items()}

    def load_state(self, state: dict[str, Array]) -> None:
        """Restore `state()`'s arrays (copied into the optimiser's own buffers)."""
        _load_into(self.velocity, "velocity", state)

    def step(self, lr: float) -> None:
        """Update every parameter in place. The grads are used as scratch space (the next
        backward pass overwrites them). Every operation writes into an existing buffer: for the
        seed's 784x1024 weights, allocating temporaries cost as much as the arithmetic."""
        mu, wd = self.momentum, self.weight_decay
        for name, W, g in self.parameters:
            W_, g_, v_, s_ = _flat(W, g, self.velocity[name], self.scratch[name])
            # y <- y + a x and x <- a x: OpenBLAS's axpy and scal where they take the arrays
            # (one fused pass each), else NumPy's (two passes, on every CPU: blas.py)
            ops = level1(W_, g_, v_) or NumpyLevel1(s_)
            if name in self.decayed and wd:
                ops.axpy(wd, W_, g_)  # g <- g + wd W
            if mu == 0.0:
                ops.axpy(-lr, g_, W_)  # W <- W - lr g
                continue
            ops.scal(mu, v_)
            ops.axpy(1.0, g_, v_)  # v <- mu v + g
            if self.nesterov:
                ops.axpy(-lr, g_, W_)
                ops.axpy(-lr * mu, v_, W_)  # W <- W - lr (g + mu v)
            else:
                ops.axpy(-lr, v_, W_)  # W <- W - lr v


class Adam:
    """Adam (Kingma & Ba 2015), with L2 coupled into the gradient, or decoupled as in AdamW.

    At step t = 1, 2, ..., for every parameter W with gradient g:
        g <- g + weight_decay * W                 (Adam: the L2 penalty's gradient)
        W <- W * (1 - lr * weight_decay)          (AdamW: decay applied to W directly)
        m <- beta1 m + (1 - beta1) g              first moment (mean) of the gradient
        v <- beta2 v + (1 - beta2) g^2            second moment, elementwise
        W <- W - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t),
                                                    v_hat = v / (1 - beta2^t)
    The bias corrections undo the zero start of m and v. With decoupled decay (Loshchilov &
    Hutter 2019), the decay is not rescaled by sqrt(v_hat), so every weight shrinks at the same
    rate.

    Arguments:
        parameters: (name, param, grad) triples, as `Sequential.parameters()` yields them.
        betas: (beta1, beta2), each in [0, 1).
        eps: added to sqrt(v_hat), keeps the step finite where v is 0.
        weight_decay: lambda; applied to the params named in `decayed` only.
        decoupled: False for Adam with L2, True for AdamW.
    """

    def __init__(
        self,
        parameters: Iterable[tuple[str, Array, Array]],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decayed: Iterable[str] = (),
        decoupled: bool = False,
    ) -> None:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), not {betas}")
        if eps <= 0.0 or weight_decay < 0.0:
            raise ValueError("eps must be > 0 and weight_decay >= 0")
        self.parameters = list(parameters)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay, self.decoupled = eps, weight_decay, decoupled
        self.decayed = set(decayed)
        self.t = 0
        self.m = {name: array_module(p).zeros_like(p) for name, p, _ in self.parameters}
        self.v = {name: array_module(p).zeros_like(p) for name, p, _ in self.parameters}
        self.scratch = {name: array_module(p).empty_like(p) for name, p, _ in self.parameters}

    def state(self) -> dict[str, Array]:
        """Everything the next steps depend on, for a checkpoint: m, v and the step count t."""
        return {
            **{f"m.{name}": m for name, m in self.m.items()},
            **{f"v.{name}": v for name, v in self.v.items()},
            "t": np.array(self.t, dtype=np.int64),
        }

    def load_state(self, state: dict[str, Array]) -> None:
        """Restore `state()`'s arrays (copied into the optimiser's own buffers)."""
        _load_into(self.m, "m", state)
        _load_into(self.v, "v", state)
        self.t = int(state["t"])

    def step(self, lr: float) -> None:
        """Update every parameter in place; the grads are used as scratch space."""
        self.t += 1
        b1, b2, wd = self.beta1, self.beta2, self.weight_decay
        step_size = lr / (1.0 - b1**self.t)  # lr * m_hat / m
        v_scale = 1.0 / math.sqrt(1.0 - b2**self.t)  # sqrt(v_hat) / sqrt(v)
        decoupled, eps = self.decoupled, self.eps

        def update(W: Array, g: Array, m: Array, v: Array, s: Array, decay: float) -> None:
            xp = array_module(W)
            if decay:
                if decoupled:
                    W *= 1.0 - lr * decay
                else:
                    xp.multiply(W, decay, out=s)
                    g += s
            m *= b1
            xp.multiply(g, 1.0 - b1, out=s)
            m += s  # m <- beta1 m + (1 - beta1) g
            v *= b2
            xp.multiply(g, g, out=s)
            s *= 1.0 - b2
            v += s  # v <- beta2 v + (1 - beta2) g^2
            xp.sqrt(v, out=s)
            s *= v_scale
            s += eps  # sqrt(v_hat) + eps
            xp.divide(m, s, out=s)
            s *= step_size
            W -= s

        for name, W, g in self.parameters:
            decay = wd if name in self.decayed else 0.0
            if array_module(W) is not np:  # on a GPU: the same update as one kernel
                keep, l2 = (1.0 - lr * decay, 0.0) if decoupled else (1.0, decay)
                scalars = (l2, keep, b1, 1.0 - b1, b2, 1.0 - b2, v_scale, eps, step_size)
                _adam_kernel()(g, *map(W.dtype.type, scalars), W, self.m[name], self.v[name])
                continue
            blocks = (W, g, self.m[name], self.v[name], self.scratch[name])
            in_blocks(partial(update, decay=decay), *_flat(*blocks))


@functools.cache
def _adam_kernel() -> Any:
    """`Adam.step`'s update of one parameter as one CuPy kernel: the same operations on the
    same float32 (or float64) values in the same order as the NumPy path above, with fused
    multiply-adds off, so every entry comes out as that path's does, in one launch instead of
    about thirteen (a GPU step of a small batch is bound by its launches)."""
    import cupy

    return cupy.ElementwiseKernel(
        "T g, T l2, T keep, T b1, T one_b1, T b2, T one_b2, T v_scale, T eps, T step_size",
        "T W, T m, T v",
        """
        W = W * keep;                              // AdamW: W <- W (1 - lr decay)
        T grad = g + W * l2;                       // Adam with L2: g <- g + decay W
        m = m * b1 + grad * one_b1;                // m <- beta1 m + (1 - beta1) g
        v = v * b2 + grad * grad * one_b2;         // v <- beta2 v + (1 - beta2) g^2
        W = W - m / (sqrt(v) * v_scale + eps) * step_size;
        """,
        "barenet_adam",
        options=("--fmad=false",),
    )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019); see `Adam`."""

    def __init__(
        self,
        parameters: Iterable[tuple[str, Array, Array]],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decayed: Iterable[str] = (),
    ) -> None:
        super().__init__(parameters, betas=betas, eps=eps, weight_decay=weight_decay,
                         decayed=decayed, decoupled=True)  # fmt: skip


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
class MultiStepLR:
    """lr(t) = lr * gamma ** (the number of milestones <= t): the rate drops by 1/gamma at each
    milestone epoch (Matuzas's nets: 1e-3, then 1e-4 from epoch 13, 1e-5 from epoch 16)."""

    lr: float
    milestones: tuple[float, ...]
    gamma: float = 0.1

    def __call__(self, t: float) -> float:
        return self.lr * self.gamma ** sum(1 for m in self.milestones if m <= t)


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


@dataclass(frozen=True)
class OneCycleLR:
    """The one-cycle policy (Smith & Topin 2019): the lr rises from lr / div to its peak `lr`
    over the first `pct_start` of training, then anneals to lr / final_div, both halves on a
    cosine curve (as PyTorch's OneCycleLR):
        t <= T p:  lr(t) = lo + (lr - lo) * (1 - cos(pi t / (T p))) / 2,      lo = lr / div
        t >  T p:  lr(t) = end + (lr - end) * (1 + cos(pi (t - T p) / (T (1 - p)))) / 2,
                   end = lr / final_div
    """

    lr: float
    epochs: float
    pct_start: float = 0.25
    div: float = 25.0
    final_div: float = 1e4

    def __call__(self, t: float) -> float:
        rise = self.epochs * self.pct_start
        lo, end = self.lr / self.div, self.lr / self.final_div
        if t <= rise:
            return lo + (self.lr - lo) * 0.5 * (1.0 - math.cos(math.pi * t / rise))
        progress = min((t - rise) / max(self.epochs - rise, 1e-12), 1.0)
        return end + (self.lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
