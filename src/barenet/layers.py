"""Layers: each computes its forward pass and, right below it, the matching backward pass.

Every layer has the same small interface:
    forward(x, training) -> out      keeps what backward needs (named `self._x`, `self._out`)
    backward(dout, need_dx=True) -> dx (or None when need_dx is False)
    params / grads                   dicts with the same keys; grads are filled by backward
    config() -> dict                 JSON-able description, inverse of `layer_from_config`

Derivations of every gradient are in docs/backprop.md; tests/test_layers.py checks each one
against centred finite differences in float64.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from .backend import array_module

Array = Any  # an ndarray of the engine's array module (NumPy, or CuPy on a GPU)


class Layer(Protocol):
    params: dict[str, Array]
    grads: dict[str, Array]
    decay: tuple[str, ...]  # names of the params the L2 penalty applies to

    def forward(self, x: Array, training: bool = False) -> Array: ...

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None: ...

    def config(self) -> dict[str, Any]: ...


class Dense:
    """Fully connected layer: out = x W + b.

    Arguments:
        in_features: D, size of each input row.
        out_features: H, size of each output row.
        rng: generator for the initial weights; None leaves them zero (for loading saved ones).
        init: "he" (std sqrt(2/D), He et al. 2015, for ReLU nets) or "glorot"
            (std sqrt(2/(D+H)), Glorot & Bengio 2010).
        dtype: float32 for training, float64 for gradient checks.
        xp: array module that holds the parameters (numpy, or cupy).

    Params: W, shape (D, H); b, shape (H,). The L2 penalty applies to W only.
    """

    decay: tuple[str, ...] = ("W",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rng: np.random.Generator | None = None,
        init: str = "he",
        dtype: Any = np.float32,
        xp: ModuleType = np,
    ) -> None:
        if init not in ("he", "glorot"):
            raise ValueError(f"unknown init {init!r}: expected 'he' or 'glorot'")
        self.in_features, self.out_features, self.init = in_features, out_features, init
        W = np.zeros((in_features, out_features), dtype=dtype)
        if rng is not None:
            fan = in_features if init == "he" else (in_features + out_features) / 2
            W[...] = rng.standard_normal(W.shape) * math.sqrt(2.0 / fan)
        self.params = {"W": xp.asarray(W), "b": xp.zeros(out_features, dtype=dtype)}
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self._x: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, D) -> out: (N, H), same dtype as W."""
        self._x = x if training else None
        out = x @ self.params["W"]
        out += self.params["b"]  # (N, H) + (H,): broadcast over the batch
        return out

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None:
        """dout: (N, H) -> dx: (N, D). Fills grads W: (D, H) and b: (H,).

        dW = x^T dout, db = sum_n dout[n], dx = dout W^T (docs/backprop.md, "Dense").
        """
        x = self._x
        if x is None:
            raise RuntimeError("Dense.backward called without a forward(training=True) before it")
        xp = array_module(dout)
        xp.matmul(x.T, dout, out=self.grads["W"])
        dout.sum(axis=0, out=self.grads["b"])
        # The network's input needs no gradient: skipping it saves a third of this layer's work.
        return dout @ self.params["W"].T if need_dx else None

    def config(self) -> dict[str, Any]:
        return {
            "type": "Dense",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "init": self.init,
        }


class ReLU:
    """Rectified linear unit: out = max(x, 0), elementwise; no params.

    The backward pass lets the gradient through where the output is positive:
    dx = dout * [out > 0] (docs/backprop.md, "ReLU").
    """

    decay: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._out: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, ...) -> out: same shape and dtype."""
        out = array_module(x).maximum(x, 0)
        self._out = out if training else None
        return out

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None:
        """dout: same shape as out -> dx: same shape."""
        out = self._out
        if out is None:
            raise RuntimeError("ReLU.backward called without a forward(training=True) before it")
        if not need_dx:
            return None
        return dout * (out > 0)

    def config(self) -> dict[str, Any]:
        return {"type": "ReLU"}


class Dropout:
    """Inverted dropout (Srivastava et al. 2014): while training, each activation is kept with
    probability 1 - p and scaled by 1 / (1 - p), so that its expected value is unchanged and
    inference needs no rescaling: at inference the layer is the identity.

    forward: out = x * mask, mask_ij = [u_ij >= p] / (1 - p), u_ij ~ U[0, 1)
    backward: dx = dout * mask (the same mask: the gradient flows only through kept units)

    Arguments:
        p: probability of dropping each activation, in [0, 1).
        rng: generator of the masks (seeded for reproducible training).
    """

    decay: tuple[str, ...] = ()

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng()
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._mask: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, ...) -> out: same shape and dtype."""
        if not training or self.p == 0.0:
            self._mask = None
            return x
        xp = array_module(x)
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p  # drawn on the CPU: seeded
        self._mask = xp.asarray(keep, dtype=x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None:
        """dout: same shape as out -> dx: same shape."""
        if not need_dx:
            return None
        return dout if self._mask is None else dout * self._mask

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}


class Flatten:
    """Reshape each example to a vector: x (N, d1, d2, ...) -> out (N, d1 * d2 * ...).

    backward reshapes the gradient back: dx = dout.reshape(x.shape). No params.
    """

    decay: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None:
        if self._shape is None:
            raise RuntimeError("Flatten.backward called without a forward before it")
        return dout.reshape(self._shape) if need_dx else None

    def config(self) -> dict[str, Any]:
        return {"type": "Flatten"}


def layer_from_config(
    config: dict[str, Any], *, dtype: Any = np.float32, xp: ModuleType = np
) -> Layer:
    """Rebuild a layer (with zero parameters) from `Layer.config()`; ValueError if it is invalid."""
    kind = config.get("type")
    if kind == "Dense":
        d, h = config.get("in_features"), config.get("out_features")
        for name, v in (("in_features", d), ("out_features", h)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1_000_000:
                raise ValueError(f"Dense {name} must be an integer in 1..1000000, not {v!r}")
        init = config.get("init", "he")
        if init not in ("he", "glorot"):
            raise ValueError(f"Dense init must be 'he' or 'glorot', not {init!r}")
        assert isinstance(d, int) and isinstance(h, int)
        return Dense(d, h, init=init, dtype=dtype, xp=xp)
    if kind == "ReLU":
        return ReLU()
    if kind == "Dropout":
        p = config.get("p")
        if not isinstance(p, float | int) or isinstance(p, bool) or not 0 <= p < 1:
            raise ValueError(f"Dropout p must be a number in [0, 1), not {p!r}")
        return Dropout(float(p))
    if kind == "Flatten":
        return Flatten()
    raise ValueError(f"unknown layer type {kind!r}")
