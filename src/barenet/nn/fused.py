"""Layers trained as one, where the pair's maths saves whole passes over a large array:
the same function and gradients as the layers run one after the other (tests/test_fused.py).

ConvBatchNorm: a one-channel Conv2D followed by BatchNorm, from the patches' moments.

A network's first convolution reads k*k pixels per output position but writes F channels, and
BatchNorm then passes over that output eight times forward and a dozen times backward (in the `cnn` recipe, 128 x 28 x 28 x 32 floats, 12.8 MB per pass).
The convolution is linear in its patches, so BatchNorm's statistics follow from the patches'
second moments, a small (k*k + 1)^2 matrix, and the normalisation folds into the weights: the
pair costs one matrix product each way, like the convolution alone.

With P = colsT (K, M), K = k*k + 1, the patches as columns with a last row of ones (`Conv2D.
patches`), and Wb = [W; b] (K, F), the convolution's output is z = P^T Wb (M, F). Then
    m = P 1 / M (K,)                   the mean of each patch entry (m[-1] = 1)
    S = P P^T / M - m m^T (K, K)       their covariance (its last row and column are 0)
    mu = Wb^T m,  var_f = Wb_f^T S Wb_f   exactly the mean and variance of z's column f
    y = gamma (z - mu) / sigma + beta = P^T Wb',   sigma = sqrt(var + eps),
    Wb' = Wb diag(gamma / sigma), its last (bias) row plus beta - mu gamma / sigma.
Backward, from Q = P dy (K, F), the product the convolution's own backward pass computes:
    dbeta = Q[-1],  dgamma = (diag(Wb^T Q) - mu dbeta) / sigma
    dWb = (gamma / sigma) (Q - m dbeta^T - S Wb diag(dgamma / sigma))   (per column)
Derivation in docs/backprop.md ("3h"); tests/test_fused.py compares both passes with the two
layers run one after the other and checks the gradients against finite differences.

The small K x K and K x F arithmetic runs in float64: a filter that takes differences of
neighbouring pixels has a variance far below the pixels' own, and S Wb cancels most of them.

`Sequential` uses this pair while training when the first layer with parameters is a
one-channel Conv2D and a BatchNorm follows it (no input gradient is needed there, and the
pair's output gradient never has to be formed); at inference the layers run one by one.

BatchNormMaxPool: a BatchNorm followed by a k x k max-pool with stride k, normalising only
the pooled quarter. Where every gamma is positive, BatchNorm is an increasing function of each
channel, so it commutes with the max: pool(bn(x)) = (gamma / sigma) pool(x - mu) + beta
(docs/backprop.md, "3i"). `Sequential` uses it while training where the BatchNorm's input is
window-major for that pool (`Conv2D.forward(pool=k)`), and runs the two layers apart in a step
where some gamma is not positive.

fold_batchnorm: at inference, a Conv2D and the BatchNorm after it as one convolution. With the
running statistics BatchNorm is a fixed affine map of each channel, y = s z + t with
s = gamma / sqrt(running_var + eps) and t = beta - running_mean s, and z = cols W + b is linear,
so y = cols (W diag(s)) + (s b + t): the convolution with its weights' columns scaled and a new
bias. `Sequential` runs the pair so at inference (and a ReLU after it in place on the
convolution's new output), saving BatchNorm's two passes over the output and ReLU's new array.
"""

from __future__ import annotations

import numpy as np

from ..backend.arrays import array_module, to_numpy
from ..backend.blas import matmul_long
from .conv import Conv2D, MaxPool2D
from .layers import Array, BatchNorm, column_sums, fold


class ConvBatchNorm:
    """Trains `conv` (one input channel) and the `bn` after it as one step; holds no parameters
    of its own: it reads and fills the two layers' params, grads and running statistics."""

    def __init__(self, conv: Conv2D, bn: BatchNorm) -> None:
        if conv.in_channels != 1 or bn.num_features != conv.out_channels:
            raise ValueError("ConvBatchNorm needs a one-channel Conv2D and its BatchNorm")
        self.conv, self.bn = conv, bn
        self._P: Array | None = None  # colsT (K, M), kept for backward
        self._moments: tuple[np.ndarray, ...] = ()  # m, S, Wb, mu, inv_std: float64

    def forward(self, x: Array, pool: int = 0) -> Array:
        """x: (N, H, W, 1) -> y = bn(conv(x)): (N, OH, OW, F), with the batch's statistics;
        updates bn's running statistics. pool: as for `Conv2D.forward` (y window-major).
        y, like the patches, lies in an array that the next forward pass rewrites
        (`Conv2D.work`): the layers after the pair use it within the step."""
        xp = array_module(x)
        conv, bn = self.conv, self.bn
        P, shape = conv.patches(x, pool)  # (K, M), the output's shape without F
        M = P.shape[1]
        if M < 2:
            raise ValueError("BatchNorm needs at least 2 values per feature while training")
        P64 = conv.work("patches, float64", P.shape, np.float64, xp, keep=True)
        P64[...] = P
        G = _float64(P64 @ P64.T) / M  # (K, K) second moments; its last row is m
        m = G[-1].copy()
        S = G - np.outer(m, m)
        Wb = _float64(conv.weights_with_bias())
        mu = m @ Wb  # (F,)
        var = np.maximum(np.einsum("kf,kf->f", S @ Wb, Wb), 0.0)  # (F,)
        inv_std = 1.0 / np.sqrt(var + bn.eps)
        gamma = _float64(bn.params["gamma"])
        scale = gamma * inv_std
        Wb_folded = Wb * scale
        Wb_folded[-1] += _float64(bn.params["beta"]) - mu * scale
        dtype = P.dtype
        bn.update_running(xp.asarray(mu.astype(dtype)), xp.asarray(var.astype(dtype)), M)
        self._P, self._moments = P, (m, S, Wb, mu, inv_std)
        y = conv.work("pair output", (M, conv.out_channels), dtype, xp, keep=True)
        xp.matmul(P.T, xp.asarray(Wb_folded.astype(dtype)), out=y)  # (M, F)
        return y.reshape(*shape, -1)

    def backward(self, dy: Array) -> None:
        """dy: the gradient of y, its shape. Fills conv's grads W (k, k, 1, F) and b (F,)
        and bn's grads gamma and beta (F,); no input gradient (the pair reads the input)."""
        P = self._P
        if P is None:
            raise RuntimeError("ConvBatchNorm.backward called without a forward before it")
        xp = array_module(dy)
        conv, bn = self.conv, self.bn
        m, S, Wb, mu, inv_std = self._moments
        F = conv.out_channels
        Q = _float64(matmul_long(P, dy.reshape(-1, F)))  # (K, F)
        dbeta = Q[-1]
        dgamma = (np.einsum("kf,kf->f", Wb, Q) - mu * dbeta) * inv_std
        gamma = _float64(bn.params["gamma"])
        dWb = (gamma * inv_std) * (Q - np.outer(m, dbeta) - (S @ Wb) * (dgamma * inv_std))
        dtype = P.dtype
        conv.grads["W"][...] = xp.asarray(dWb[:-1].reshape(conv.grads["W"].shape).astype(dtype))
        conv.grads["b"][...] = xp.asarray(dWb[-1].astype(dtype))
        bn.grads["gamma"][...] = xp.asarray(dgamma.astype(dtype))
        bn.grads["beta"][...] = xp.asarray(dbeta.astype(dtype))


class BatchNormMaxPool:
    """Trains `bn` and the k x k, stride-k `pool` after it as one step, on a window-major
    input (k*k, N, OH, OW, F); holds no parameters of its own: it reads and fills bn's params,
    grads and running statistics, and uses pool's forward and backward.

    With xc = x - mu, s = gamma / sigma > 0 and q = pool(xc) (N, OH, OW, F):
        out = s q + beta             BatchNorm's output at each window's maximum, = pool(bn(x))
    Backward, from dout (N, OH, OW, F), whose only inputs are the windows' maxima:
        dbeta = sum(dout), dgamma = sum(dout q) / sigma     (over N*OH*OW rows, not M = N*H*W)
        dx = route(s dout) - s dbeta / M - xc s dgamma / (sigma M)
    where route puts each window's gradient at its maximum (MaxPool2D.backward). BatchNorm's
    passes over the whole input forward (normalising) and its reductions backward run on a
    quarter of it instead (for 2 x 2 windows), and its output is never written out.
    """

    def __init__(self, bn: BatchNorm, pool: MaxPool2D) -> None:
        if pool.stride != pool.kernel_size:
            raise ValueError("BatchNormMaxPool needs a max-pool whose stride is its size")
        self.bn, self.pool = bn, pool
        self._xc: Array | None = None  # x - mu (M, F), kept for backward
        self._pooled: Array | None = None  # q = pool(xc) (N, OH, OW, F)
        self._inv_std: Array | None = None
        self._shape: tuple[int, ...] = ()

    @staticmethod
    def applies(bn: BatchNorm, pool: MaxPool2D, x: Array) -> bool:
        """Whether the pair can take x: window-major for pool, and every gamma positive."""
        k = pool.kernel_size
        return (
            x.ndim == 5 and pool.stride == k and x.shape[0] == k * k
            and bool((bn.params["gamma"] > 0).all())
        )  # fmt: skip

    def forward(self, x: Array) -> Array:
        """x: window-major (k*k, N, OH, OW, F) -> pool(bn(x)): (N, OH, OW, F), with the
        batch's statistics; updates bn's running statistics."""
        if not self.applies(self.bn, self.pool, x):
            raise ValueError("BatchNormMaxPool needs a window-major input and positive gammas")
        xp = array_module(x)
        bn, F = self.bn, self.bn.num_features
        xc, inv_std = bn.centre(x.reshape(-1, F))
        pooled = self.pool.forward(xc.reshape(x.shape), training=True)  # q = pool(x - mu)
        q2 = pooled.reshape(-1, F)
        r = fold(*q2.shape)
        out = q2.reshape(-1, r * F) * xp.tile(bn.params["gamma"] * inv_std, r)
        out += xp.tile(bn.params["beta"], r)
        self._xc, self._pooled, self._inv_std, self._shape = xc, pooled, inv_std, x.shape
        return out.reshape(pooled.shape)

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, OH, OW, F) -> dx: window-major like forward's input. Fills bn's grads
        gamma and beta: (F,) (always: dx is made from them)."""
        xc, pooled, inv_std = self._xc, self._pooled, self._inv_std
        if xc is None or pooled is None or inv_std is None:
            raise RuntimeError("BatchNormMaxPool.backward called without a forward before it")
        xp = array_module(dout)
        bn, F = self.bn, self.bn.num_features
        d2 = dout.reshape(-1, F)
        bn.grads["gamma"][...] = xp.einsum("mf,mf->f", d2, pooled.reshape(-1, F)) * inv_std
        bn.grads["beta"][...] = column_sums(d2)
        if not need_dx:
            return None
        M = xc.shape[0]
        s = bn.params["gamma"] * inv_std
        r = fold(M, F)
        dx = bn.work("max-pool pair's input gradient", (M // r, r * F), xc.dtype, xp)
        xp.multiply(xc.reshape(-1, r * F), xp.tile(-s * bn.grads["gamma"] * inv_std / M, r), out=dx)
        dx -= xp.tile(s * bn.grads["beta"] / M, r)
        rq = fold(*d2.shape)
        routed = d2.reshape(-1, rq * F) * xp.tile(s, rq)  # s dout
        return self.pool.backward(routed.reshape(dout.shape), add_to=dx.reshape(self._shape))


def _float64(a: Array) -> np.ndarray:
    """A small array of either module as a NumPy float64 array (on the CPU)."""
    return to_numpy(a).astype(np.float64)


def fold_batchnorm(conv: Conv2D, bn: BatchNorm) -> Conv2D:
    """A Conv2D computing bn(conv(x)) at inference (bn's running statistics): its weights
    W[..., f] s_f and bias b_f s_f + t_f, s = gamma / sqrt(running_var + eps), t = beta -
    running_mean s (the module's docstring). A new layer: conv and bn are left as they are."""
    if bn.num_features != conv.out_channels:
        raise ValueError("fold_batchnorm needs a BatchNorm over the convolution's channels")
    xp = array_module(conv.params["W"])
    dtype = conv.params["W"].dtype
    s = bn.params["gamma"] / xp.sqrt(bn.buffers["running_var"] + dtype.type(bn.eps))
    t = bn.params["beta"] - bn.buffers["running_mean"] * s
    folded = Conv2D(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dtype=dtype, xp=xp)  # fmt: skip
    folded.params["W"] = conv.params["W"] * s
    folded.params["b"] = conv.params["b"] * s + t
    return folded
