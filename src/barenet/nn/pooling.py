"""Average pooling, global pooling and squeeze-and-excitation: the layers of the wider
convolutional designs (the record's candidates), channels-last like `conv.py`.

AvgPool2D(k):        out[n, oh, ow, c] = mean of x over the k x k window at (k oh, k ow)
                     backward: each input of a window gets dout / k^2 (rows and columns past
                     the last whole window get nothing: they were never read)
GlobalPool(mode):    "avg": out[n, c] = mean over (h, w) of x[n, h, w, c]; "max": the largest;
                     "avg+max": both, concatenated: (N, 2C) (Matuzas's head before the dense
                     layer). backward: dout / (H W) to every position; the max's to its winner
SqueezeExcite(C, r): (Hu et al. 2018) a gate per channel computed from the whole image:
                     s = mean_hw x (N, C), z = relu(s W1 + b1) (N, C/r),
                     g = sigmoid(z W2 + b2) (N, C), out = x * g (broadcast over h, w)
                     backward, with dg = sum_hw dout * x and da2 = dg g (1 - g):
                     dW2 = z^T da2, db2 = sum_n da2, dz = da2 W2^T, da1 = dz [z > 0],
                     dW1 = s^T da1, db1 = sum_n da1, ds = da1 W1^T,
                     dx = dout * g + ds / (H W) (broadcast over h, w)
Derivations: docs/backprop.md ("3j"); gradient checks: tests/test_pooling.py and
`barenet gradcheck`; the same maths in `reference.py`, tested equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from ..backend.arrays import array_module
from .layers import Array, init_weights


def _window_slices(k: int, OH: int, OW: int) -> Iterator[tuple[slice, ...]]:
    """The k*k strided views of a k x k, stride-k pooling: view (a, b) holds, for every
    window (oh, ow), its pixel x[:, k*oh + a, k*ow + b] (an (N, OH, OW, C) view of x)."""
    for a in range(k):
        for b in range(k):
            yield (slice(None), slice(a, OH * k, k), slice(b, OW * k, k))


class AvgPool2D:
    """k x k average pooling with stride k, channels-last; no params."""

    decay: tuple[str, ...] = ()

    def __init__(self, kernel_size: int = 2) -> None:
        if not 1 <= kernel_size <= 64:
            raise ValueError(f"AvgPool2D kernel_size must be in 1..64, not {kernel_size}")
        self.kernel_size = kernel_size
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self._x_shape: tuple[int, ...] = ()

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, H, W, C) -> out: (N, H // k, W // k, C)."""
        N, H, W, C = x.shape
        k = self.kernel_size
        OH, OW = H // k, W // k
        if OH < 1 or OW < 1:
            raise ValueError(f"AvgPool2D: a {k}x{k} window does not fit a {H}x{W} input")
        self._x_shape = x.shape
        # out = (1 / k^2) sum over a, b of x[:, k*oh + a, k*ow + b]: k*k strided views added
        # (faster than a mean over the two window axes of a reshaped x, which NumPy reduces
        # with short inner loops)
        windows = _window_slices(k, OH, OW)
        out = x[next(windows)].astype(np.result_type(x.dtype, np.float32))
        for window in windows:
            out += x[window]
        out *= out.dtype.type(1.0 / (k * k))
        return out

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, OH, OW, C) -> dx: (N, H, W, C)."""
        if not self._x_shape:
            raise RuntimeError("AvgPool2D.backward called without a forward before it")
        if not need_dx:
            return None
        xp = array_module(dout)
        _, OH, OW, _ = dout.shape
        k = self.kernel_size
        _, H, W, _ = self._x_shape
        exact = H == OH * k and W == OW * k  # every input pixel in a window: none left zero
        dx = (xp.empty if exact else xp.zeros)(self._x_shape, dtype=dout.dtype)
        share = dout * dout.dtype.type(1.0 / (k * k))  # each of a window's k*k pixels' share
        for window in _window_slices(k, OH, OW):
            dx[window] = share
        return dx

    def config(self) -> dict[str, Any]:
        return {"type": "AvgPool2D", "kernel_size": self.kernel_size}


GLOBAL_MODES = ("avg", "max", "avg+max")


class GlobalPool:
    """Pooling over the whole image: (N, H, W, C) -> (N, C), or (N, 2C) for "avg+max"."""

    decay: tuple[str, ...] = ()

    def __init__(self, mode: str = "avg") -> None:
        if mode not in GLOBAL_MODES:
            raise ValueError(f"GlobalPool mode must be one of {', '.join(GLOBAL_MODES)}, not "
                             f"{mode!r}")  # fmt: skip
        self.mode = mode
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self._x_shape: tuple[int, ...] = ()
        self._winner: Array | None = None  # (N, C): the flat position of each maximum

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = array_module(x)
        N, H, W, C = x.shape
        self._x_shape = x.shape
        parts = []
        if "avg" in self.mode:
            parts.append(x.mean(axis=(1, 2)))
        if "max" in self.mode:
            flat = x.reshape(N, H * W, C)
            winner = flat.argmax(axis=1)  # (N, C); the first of equal maxima
            self._winner = winner
            parts.append(xp.take_along_axis(flat, winner[:, None, :], axis=1)[:, 0])
        return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1)

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, C) or (N, 2C) -> dx: (N, H, W, C)."""
        if not self._x_shape:
            raise RuntimeError("GlobalPool.backward called without a forward before it")
        if not need_dx:
            return None
        xp = array_module(dout)
        N, H, W, C = self._x_shape
        dx = xp.zeros((N, H * W, C), dtype=dout.dtype)
        if "avg" in self.mode:
            dx += dout[:, None, :C] / (H * W)
        if "max" in self.mode:
            assert self._winner is not None
            dmax = dout[:, -C:]
            n, c = xp.meshgrid(xp.arange(N), xp.arange(C), indexing="ij")
            dx[n, self._winner, c] += dmax
        return dx.reshape(self._x_shape)

    def config(self) -> dict[str, Any]:
        return {"type": "GlobalPool", "mode": self.mode}


def _sigmoid(a: Array) -> Array:
    xp = array_module(a)
    return 0.5 * (1 + xp.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow


class SqueezeExcite:
    """Squeeze-and-excitation (Hu et al. 2018): each channel scaled by a gate in (0, 1) that
    two small dense layers compute from every channel's mean (see the module docstring).

    Params: W1 (C, C // r), b1 (C // r,), W2 (C // r, C), b2 (C,); the L2 penalty applies to
    W1 and W2.
    """

    decay: tuple[str, ...] = ("W1", "W2")

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        *,
        rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
        xp: ModuleType = np,
    ) -> None:
        if channels < 1 or not 1 <= reduction <= channels:
            raise ValueError("SqueezeExcite needs channels >= 1 and 1 <= reduction <= channels")
        self.channels, self.reduction = channels, reduction
        C, R = channels, max(1, channels // reduction)
        self.params = {
            "W1": xp.asarray(init_weights((C, R), C, R, init="he", rng=rng, dtype=dtype)),
            "b1": xp.zeros(R, dtype=dtype),
            "W2": xp.asarray(init_weights((R, C), R, C, init="glorot", rng=rng, dtype=dtype)),
            "b2": xp.zeros(C, dtype=dtype),
        }
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers: dict[str, Array] = {}
        self._cache: tuple[Array, ...] | None = None  # x, s, z, g

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, H, W, C) -> out: same shape."""
        P = self.params
        s = x.mean(axis=(1, 2))  # (N, C): squeeze
        z = array_module(x).maximum(s @ P["W1"] + P["b1"], 0)  # (N, C/r)
        g = _sigmoid(z @ P["W2"] + P["b2"])  # (N, C): excite
        self._cache = (x, s, z, g) if training else None
        return x * g[:, None, None, :]

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, H, W, C) -> dx: same shape. Fills grads W1, b1, W2, b2."""
        if self._cache is None:
            raise RuntimeError(
                "SqueezeExcite.backward called without a forward(training=True) before it"
            )
        x, s, z, g = self._cache
        P, G = self.params, self.grads
        xp = array_module(x)
        N, H, W, C = x.shape
        # dg[n, c] = sum over positions of dout * x: one pass, no (N, H, W, C) product array
        dg = xp.einsum("npc,npc->nc", dout.reshape(N, H * W, C), x.reshape(N, H * W, C))
        da2 = dg * g * (1 - g)
        dz = da2 @ P["W2"].T
        da1 = dz * (z > 0)
        G["W2"][...] = z.T @ da2
        G["b2"][...] = da2.sum(axis=0)
        G["W1"][...] = s.T @ da1
        G["b1"][...] = da1.sum(axis=0)
        if not need_dx:
            return None
        ds = da1 @ P["W1"].T  # (N, C)
        dx = dout * g[:, None, None, :]
        dx += (ds / (H * W))[:, None, None, :]
        return dx

    def config(self) -> dict[str, Any]:
        return {"type": "SqueezeExcite", "channels": self.channels, "reduction": self.reduction}
