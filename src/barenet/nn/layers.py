"""Layers: each computes its forward pass and, right below it, the matching backward pass.

Every layer has the same small interface:
    forward(x, training) -> out      keeps what backward needs (named `self._x`, `self._out`)
    backward(dout, need_dx=True, need_grads=True) -> dx (or None when need_dx is False)
    params / grads                   dicts with the same keys; grads are filled by backward
                                     (need_grads=False: the products that only weight
                                     gradients need are skipped, and grads may hold anything)
    buffers                          non-trainable state that is saved with the model
                                     (BatchNorm's running statistics); empty for most layers
    config() -> dict                 JSON-able description, inverse of `layer_from_config`

Derivations of every gradient are in docs/backprop.md; tests/test_layers.py checks each one
against centred finite differences in float64.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..backend.arrays import array_module, kept_array

Array = NDArray[Any]  # an ndarray of the engine's array module (typed as NumPy's; CuPy's on a GPU)


class Layer(Protocol):
    params: dict[str, Array]
    grads: dict[str, Array]
    buffers: dict[str, Array]
    decay: tuple[str, ...]  # names of the params the L2 penalty applies to

    def forward(self, x: Array, training: bool = False) -> Array: ...

    def backward(
        self, dout: Array, need_dx: bool = True, need_grads: bool = True
    ) -> Array | None: ...

    def config(self) -> dict[str, Any]: ...


def init_weights(
    shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
    *,
    init: str,
    rng: np.random.Generator | None,
    dtype: Any,
) -> np.ndarray:
    """Initial weights of `shape`: normal with std sqrt(2 / fan_in) ("he", He et al. 2015, for
    ReLU nets) or sqrt(2 / ((fan_in + fan_out) / 2)) ("glorot", Glorot & Bengio 2010); zeros
    when rng is None (a layer about to be loaded from a file).

    Raises ValueError for an unknown init."""
    if init not in ("he", "glorot"):
        raise ValueError(f"unknown init {init!r}: expected 'he' or 'glorot'")
    W = np.zeros(shape, dtype=dtype)
    if rng is not None:
        fan = fan_in if init == "he" else (fan_in + fan_out) / 2
        W[...] = rng.standard_normal(shape) * math.sqrt(2.0 / fan)
    return W


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

    Memory layout (speed only; the maths and shapes are as above): W is stored column-major,
    i.e. its memory holds W^T (H, D) row by row, like PyTorch's (out, in) weights, and while
    training the products run as the transposed ones, out^T = W^T x^T and dW^T = dout^T x:
    OpenBLAS computes these orientations faster at the seed's
    shapes (N = 128, D = 784, H = 1024; docs/speed.md). Training outputs therefore come out feature-major: (N, H) views of
    (H, N) arrays, which every NumPy operation accepts as they are. The input gradient
    dx = dout W^T takes the layout of x (see `_backward`).
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
        W = init_weights((in_features, out_features), in_features, out_features, init=init,
                         rng=rng, dtype=dtype)  # fmt: skip
        self.in_features, self.out_features, self.init = in_features, out_features, init
        W = xp.asfortranarray(xp.asarray(W))  # column-major: see "Memory layout" above
        self.params = {"W": W, "b": xp.zeros(out_features, dtype=dtype)}
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers: dict[str, Array] = {}
        self._x: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, D) -> out: (N, H), same dtype as W."""
        self._x = x if training else None
        return self._affine(x, self.params["W"], training)

    def _affine(self, x: Array, W: Array, training: bool) -> Array:
        """x W + b: while training as (W^T x^T)^T (see "Memory layout"); at inference as x W,
        in which an example's scores stay the same, bit for bit, when the batch around it is
        reordered (the transposed product broke that for some small shapes; scikit-learn's
        estimator checks test it: tests/test_sklearn.py)."""
        xp = array_module(x)
        out = xp.matmul(W.T, x.T).T if training else x @ W  # (N, H)
        out += self.params["b"]  # (N, H) + (H,): broadcast over the batch
        return out

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, H) -> dx: (N, D). Fills grads W: (D, H) and b: (H,) (need_grads).

        dW = x^T dout, db = sum_n dout[n], dx = dout W^T (docs/backprop.md, "Dense").
        """
        return self._backward(dout, self.params["W"], need_dx, need_grads)

    def _backward(self, dout: Array, W: Array, need_dx: bool, need_grads: bool) -> Array | None:
        x = self._x
        if x is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a forward(training=True) before it"
            )
        xp = array_module(dout)
        # A pass that only wants dx (virtual adversarial training's probe) skips dW: a product
        # as large as the one for dx.
        if need_grads:
            xp.matmul(dout.T, x, out=self.grads["W"].T)  # dW^T = dout^T x, into (H, D) memory
            dout.sum(axis=0, out=self.grads["b"])
        # The network's input needs no gradient: skipping it saves a third of this layer's work.
        if not need_dx:
            return None
        # dx = dout W^T, laid out in memory like x, so that the layer below (a ReLU) runs over
        # dx and its own arrays in step: row-major after a Flatten of row-major images,
        # feature-major after a Dense (the orientation OpenBLAS runs faster, see above).
        return dout @ W.T if x.flags.c_contiguous else xp.matmul(W, dout.T).T

    def config(self) -> dict[str, Any]:
        return {
            "type": "Dense",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "init": self.init,
        }


class DropConnect(Dense):
    """A Dense layer with DropConnect (Wan et al. 2013): mask the weights, not the activations.

    While training, each weight is kept with probability 1 - p and scaled by 1 / (1 - p):
        out = x (W * M) + b,   M_ij = [u_ij >= p] / (1 - p), u_ij ~ U[0, 1)
    backward (same mask): dW = (x^T dout) * M, db = sum_n dout[n], dx = dout (W * M)^T.

    One mask is drawn per minibatch, shared by its examples. Wan et al. draw one per example,
    which for a 784x1024 layer means a (N, 784, 1024) mask and a matrix-vector product per
    example instead of one matrix product per batch; a mask per batch keeps the cost of a
    Dense layer. Inference uses the mean network: since E[W * M] = W, the layer computes
    x W + b. (The paper's alternative, a Gaussian moment-matching of each unit's pre-activation
    sampled at test time, is slower and changes results by hundredths of a percent there.)

    Arguments: as Dense, plus
        p: probability of dropping each weight, in [0, 1).
        rng: generator of the initial weights; mask_rng: generator of the masks (default: a
            child of rng, so that a seeded rng makes the whole training repeatable).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = 0.5,
        *,
        rng: np.random.Generator | None = None,
        mask_rng: np.random.Generator | None = None,
        init: str = "he",
        dtype: Any = np.float32,
        xp: ModuleType = np,
    ) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropConnect probability must be in [0, 1), not {p}")
        super().__init__(in_features, out_features, rng=rng, init=init, dtype=dtype, xp=xp)
        self.p = p
        if mask_rng is None:  # a seeded rng seeds the masks too (a child: its stream untouched)
            mask_rng = rng.spawn(1)[0] if rng is not None else np.random.default_rng()
        self.rng = mask_rng
        self._mask: Array | None = None
        self._masked: Array | None = None  # W * mask of the last training batch

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, D) -> out: (N, H)."""
        W = self.params["W"]
        if not training or self.p == 0.0:
            self._x, self._mask, self._masked = (x if training else None), None, None
            return super().forward(x, training)
        xp = array_module(x)
        keep = self.rng.random(W.shape, dtype=np.float32) >= self.p  # drawn on the CPU: seeded
        mask = xp.asarray(keep, dtype=W.dtype) * W.dtype.type(1.0 / (1.0 - self.p))
        self._mask = xp.asfortranarray(mask)  # W's memory layout
        self._masked = W * self._mask  # the weights this batch uses, forward and backward
        self._x = x
        return self._affine(x, self._masked, training)

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, H) -> dx: (N, D). Fills grads W: (D, H) and b: (H,)."""
        if self._mask is None or self._masked is None:
            return super().backward(dout, need_dx, need_grads)
        dx = self._backward(dout, self._masked, need_dx, need_grads)
        if need_grads:
            self.grads["W"] *= self._mask  # only kept weights took part: the others get none
        return dx

    def config(self) -> dict[str, Any]:
        return {**super().config(), "type": "DropConnect", "p": self.p}


class ReLU:
    """Rectified linear unit: out = max(x, 0), elementwise; no params.

    The backward pass lets the gradient through where the output is positive:
    dx = dout * [out > 0] (docs/backprop.md, "ReLU").
    """

    decay: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self._out: Array | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, ...) -> out: same shape and dtype."""
        out = array_module(x).maximum(x, 0)
        self._out = out if training else None
        return out

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
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
        self.buffers: dict[str, Array] = {}
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

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
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
        self.buffers: dict[str, Array] = {}
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        if self._shape is None:
            raise RuntimeError("Flatten.backward called without a forward before it")
        return dout.reshape(self._shape) if need_dx else None

    def config(self) -> dict[str, Any]:
        return {"type": "Flatten"}


def column_sums(x2: Array) -> Array:
    """x2 (M, F) -> (F,): the sum of each column, as the product ones(M) x2.

    Same result as x2.sum(axis=0), but NumPy reduces over the first axis of a narrow array
    (F = 32 channels of a convolution) row by row,
    far slower than one BLAS matrix-vector product (docs/speed.md)."""
    xp = array_module(x2)
    return xp.ones(x2.shape[0], dtype=x2.dtype) @ x2


def fold(M: int, F: int) -> int:
    """How many rows r of an (M, F) array to view as one row, for per-feature arithmetic.

    An elementwise NumPy operation between x (M, F) and a per-feature vector v (F,) runs its
    inner loop over one row at a time; with F = 32 (a convolution's channels) that loop is too
    short to be fast. The same operation on x viewed as (M / r, r F) (no copy), against v tiled
    r times, runs faster, fastest when a row is a whole number of NumPy's ufunc buffers
    (np.getbufsize(), 8192 values; docs/speed.md). r = gcd(M,
    bufsize // F): it divides M, and gives rows of one buffer where M allows it."""
    r = max(1, np.getbufsize() // max(F, 1))
    return math.gcd(M, r) if M else 1


class BatchNorm:
    """Batch normalisation (Ioffe & Szegedy 2015) over the last axis (the features of a dense
    input (N, D), or the channels of an image (N, H, W, C)).

    Training, with statistics over the M = N (or N*H*W) values of each feature:
        mu = mean(x), var = mean((x - mu)^2), x_hat = (x - mu) / sqrt(var + eps)
        out = gamma * x_hat + beta
    and the running statistics move towards the batch's (the unbiased variance, as PyTorch):
        running_mean <- (1 - momentum) running_mean + momentum mu   (likewise running_var)
    Inference uses the running statistics instead of the batch's.

    backward (docs/backprop.md, "BatchNorm"), with dx_hat = dout * gamma:
        dgamma = sum(dout * x_hat), dbeta = sum(dout),
        dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sqrt(var + eps)

    Arguments:
        num_features: size of the last axis.
        momentum: weight of each new batch in the running statistics.
        eps: added to the variance, so that a constant feature does not divide by zero.

    Params: gamma (ones), beta (zeros), shape (num_features,); not decayed.
    Buffers: running_mean (zeros), running_var (ones), shape (num_features,).
    """

    decay: tuple[str, ...] = ()

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        dtype: Any = np.float32,
        xp: ModuleType = np,
    ) -> None:
        if not 0.0 <= momentum <= 1.0 or eps <= 0:
            raise ValueError("BatchNorm needs momentum in [0, 1] and eps > 0")
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.params = {
            "gamma": xp.ones(num_features, dtype=dtype),
            "beta": xp.zeros(num_features, dtype=dtype),
        }
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {
            "running_mean": xp.zeros(num_features, dtype=dtype),
            "running_var": xp.ones(num_features, dtype=dtype),
        }
        self._xc: Array | None = None  # x - mu, shape (M, F), kept for backward
        self._inv_std: Array | None = None  # 1 / sqrt(var + eps), shape (F,)
        self._kept: dict[str, Array] = {}  # working arrays kept between training steps

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (..., F) -> out: same shape and dtype.

        out = (x - mu) * s + beta with s = gamma / sqrt(var + eps): x_hat itself is never
        stored, so that each pass over x does a share of the work (memory traffic, not
        arithmetic, is what these passes cost)."""
        xp = array_module(x)
        F = self.num_features
        if x.shape[-1] != F:
            raise ValueError(f"BatchNorm expects {F} features on the last axis, got {x.shape}")
        x2 = x.reshape(-1, F)  # (M, F)
        M = x2.shape[0]
        r = fold(M, F)  # elementwise work on (M / r, r F) views, vectors tiled r times
        if training:
            xc, inv_std = self.centre(x2)
            out = xc.reshape(-1, r * F) * xp.tile(self.params["gamma"] * inv_std, r)
            out += xp.tile(self.params["beta"], r)
        else:
            self._kept.clear()  # training is over or paused: give the working arrays back
            # out = x s + (beta - mu s): two passes
            s = self.params["gamma"] / xp.sqrt(self.buffers["running_var"] + x.dtype.type(self.eps))
            out = x2.reshape(-1, r * F) * xp.tile(s, r)
            out += xp.tile(self.params["beta"] - self.buffers["running_mean"] * s, r)
            self._xc = None
        return out.reshape(x.shape)

    def centre(self, x2: Array) -> tuple[Array, Array]:
        """The batch statistics of x2 (M, F): returns xc = x2 - mu (M, F) and 1 / sqrt(var +
        eps) (F,), keeps both for backward and moves the running statistics (training)."""
        xp = array_module(x2)
        M, F = x2.shape
        if M < 2:
            raise ValueError("BatchNorm needs at least 2 values per feature while training")
        r = fold(M, F)
        mu = column_sums(x2) / M
        xc = self.work("xc", (M, F), x2.dtype, xp)  # x - mu, rewritten every step
        xp.subtract(x2.reshape(-1, r * F), xp.tile(mu, r), out=xc.reshape(-1, r * F))
        var = xp.einsum("mf,mf->f", xc, xc) / M
        inv_std = 1.0 / xp.sqrt(var + x2.dtype.type(self.eps))
        self._xc, self._inv_std = xc, inv_std
        self.update_running(mu, var, M)
        return xc, inv_std

    @property
    def kept_bytes(self) -> int:
        """Bytes of the working arrays kept from one training step to the next (`work`); 0
        after a forward pass at inference, which gives them back."""
        return sum(int(a.nbytes) for a in self._kept.values())

    def work(self, name: str, shape: tuple[int, ...], dtype: Any, xp: ModuleType) -> Array:
        """An array kept from one training step to the next, for this layer's work or a fused
        pair's (`backend.kept_array`; `Conv2D.work` says why)."""
        return kept_array(self._kept, name, shape, dtype, xp)

    def update_running(self, mu: Array, var: Array, M: int) -> None:
        """Move the running statistics towards a batch's mean and (biased) variance, (F,)
        each, over M values per feature: the variance enters unbiased, var M / (M - 1)."""
        m = self.momentum
        self.buffers["running_mean"] *= 1 - m
        self.buffers["running_mean"] += m * mu
        self.buffers["running_var"] *= 1 - m
        self.buffers["running_var"] += (m * M / (M - 1)) * var

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (..., F) -> dx: same shape. Fills grads gamma and beta: (F,) (always: dx is
        made from them).

        With x_hat = xc / std (xc = x - mu, kept by forward): dgamma = sum(dout * xc) / std,
        and dx = (gamma / std) (dout - dbeta / M - xc (dgamma / (M std)))."""
        xc, inv_std = self._xc, self._inv_std
        if xc is None or inv_std is None:
            raise RuntimeError(
                "BatchNorm.backward called without a forward(training=True) before it"
            )
        xp = array_module(dout)
        F = self.num_features
        d2 = dout.reshape(-1, F)  # (M, F)
        M = d2.shape[0]
        self.grads["gamma"][...] = xp.einsum("mf,mf->f", d2, xc) * inv_std
        self.grads["beta"][...] = column_sums(d2)
        if not need_dx:
            return None
        r = fold(M, F)
        # mean(dx_hat) = gamma * dbeta / M and mean(dx_hat * x_hat) = gamma * dgamma / M
        dx = xc.reshape(-1, r * F) * xp.tile(self.grads["gamma"] * inv_std / M, r)
        xp.subtract(d2.reshape(-1, r * F), dx, out=dx)
        dx -= xp.tile(self.grads["beta"] / M, r)
        dx *= xp.tile(self.params["gamma"] * inv_std, r)
        return dx.reshape(dout.shape)

    def config(self) -> dict[str, Any]:
        return {
            "type": "BatchNorm",
            "num_features": self.num_features,
            "momentum": self.momentum,
            "eps": self.eps,
        }


class Reshape:
    """Give each example a shape: x (N, d1 * d2 * ...) -> out (N, *shape); e.g. flat 784-pixel
    inputs -> (N, 28, 28, 1) images for a convolutional network. backward reshapes back."""

    decay: tuple[str, ...] = ()

    def __init__(self, shape: tuple[int, ...]) -> None:
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"Reshape needs a shape of positive sizes, not {shape}")
        self.shape = tuple(shape)
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self._in_shape: tuple[int, ...] | None = None

    def forward(self, x: Array, training: bool = False) -> Array:
        if math.prod(x.shape[1:]) != math.prod(self.shape):
            raise ValueError(f"Reshape: cannot give examples of shape {x.shape[1:]} the shape "
                             f"{self.shape}")  # fmt: skip
        self._in_shape = x.shape
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        if self._in_shape is None:
            raise RuntimeError("Reshape.backward called without a forward before it")
        return dout.reshape(self._in_shape) if need_dx else None

    def config(self) -> dict[str, Any]:
        return {"type": "Reshape", "shape": list(self.shape)}
