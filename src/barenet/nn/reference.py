"""The maths of every layer, loss and optimiser, in plain NumPy: read this file first.

Each layer is a pair of functions, forward and backward, in the style of cs231n's layers:
forward returns the output and a `cache` of what backward needs; backward takes dL/dout and
the cache and returns dL/dx and the parameter gradients. Shapes are in the docstrings
(N: examples, D: input features, H: output features, C: channels, F: filters, k: kernel
size). Derivations are in docs/backprop.md.

The engine's layers (`layers.py`, `conv.py`) compute exactly this, faster: kept working
arrays, memory layouts, BLAS calls and fused pairs of layers (`plan.py`); wide 3x3
convolutions by Winograd's F(4x4, 3x3) (`winograd.py`; its maths one tile at a time in
`winograd_conv_forward` and `winograd_conv_backward` here). The tests
(tests/test_reference.py) run every layer, loss and optimiser both ways in float64 and
require the same values and gradients, and a whole network run here (`Sequential(layers,
fast=False)`, through `ReferenceStep` at the bottom of this file) to train as the fast one does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .conv import Conv2D, MaxPool2D
from .layers import BatchNorm, Dense, DropConnect, Dropout, Flatten, Layer, ReLU, Reshape
from .pooling import AvgPool2D, GlobalPool, SqueezeExcite
from .winograd import AT, BT, G

# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


def dense_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Any]:
    """x: (N, D), W: (D, H), b: (H,) -> out = x W + b: (N, H)."""
    return x @ W + b, (x, W)


def dense_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, H) -> dx = dout W^T (N, D), dW = x^T dout (D, H), db = sum_n dout (H,)."""
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, Any]:
    """out = max(x, 0), elementwise."""
    out = np.maximum(x, 0)
    return out, out


def relu_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """The gradient passes where the output is positive: dx = dout [out > 0]."""
    return dout * (cache > 0)


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> np.ndarray:
    """Keep each unit with probability 1 - p, scaled by 1 / (1 - p) (inverted dropout, so
    inference needs no rescaling): mask = [u >= p] / (1 - p), u ~ U[0, 1) in float32."""
    return (rng.random(shape, dtype=np.float32) >= p) / (1.0 - p)


def dropout_forward(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, Any]:
    """Dropout (Srivastava et al. 2014): out = x * mask."""
    return x * mask, mask


def dropout_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """dx = dout * mask: only kept units pass a gradient."""
    return dout * cache


def dropconnect_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, Any]:
    """DropConnect (Wan et al. 2013): mask the weights, not the units: out = x (W * M) + b,
    M: (D, H) drawn like a dropout mask, one per batch."""
    out, cache = dense_forward(x, W * mask, b)
    return out, (cache, mask)


def dropconnect_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As Dense with the masked weights; dropped weights get no gradient: dW = (x^T dout) * M."""
    dense_cache, mask = cache
    dx, dW, db = dense_backward(dout, dense_cache)
    return dx, dW * mask, db


def batchnorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, Any]:
    """Batch normalisation (Ioffe & Szegedy 2015) over the last axis, while training.

    x: (..., F), statistics over the M values of each feature (N, or N*H*W for images):
        mu = mean(x), var = mean((x - mu)^2), x_hat = (x - mu) / sqrt(var + eps)
        out = gamma * x_hat + beta
    Returns out and a cache that also holds mu and var (for the running statistics)."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, F)
    mu = x2.mean(axis=0)
    var = ((x2 - mu) ** 2).mean(axis=0)
    std = np.sqrt(var + eps)
    x_hat = (x2 - mu) / std
    out = gamma * x_hat + beta
    return out.reshape(x.shape), (x_hat, gamma, std, mu, var)


def batchnorm_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (..., F) -> dx (same shape), dgamma, dbeta (F,). With dx_hat = dout * gamma:
    dgamma = sum(dout * x_hat), dbeta = sum(dout),
    dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / std."""
    x_hat, gamma, std, _, _ = cache
    d2 = dout.reshape(-1, dout.shape[-1])
    dx_hat = d2 * gamma
    dx = (dx_hat - dx_hat.mean(axis=0) - x_hat * (dx_hat * x_hat).mean(axis=0)) / std
    return dx.reshape(dout.shape), (d2 * x_hat).sum(axis=0), d2.sum(axis=0)


def batchnorm_inference(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
    eps: float,
) -> np.ndarray:  # fmt: skip
    """At inference the running statistics replace the batch's: gamma (x - mean) / sqrt(var +
    eps) + beta."""
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def running_average(running: np.ndarray, batch: np.ndarray, momentum: float) -> np.ndarray:
    """running <- (1 - momentum) running + momentum batch (BatchNorm's running statistics; the
    variance enters unbiased, var M / (M - 1), as in PyTorch)."""
    return (1 - momentum) * running + momentum * batch


def im2col(x: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """x: (N, H, W, C) -> cols: (N, OH, OW, k*k*C), each row the k x k x C patch under one
    output position of the zero-padded input, ordered (i, j, c) like W's first three axes."""
    N, H, W, C = x.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    OH, OW = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    cols = np.empty((N, OH, OW, k, k, C), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j, :] = xp[
                :, i : i + stride * OH : stride, j : j + stride * OW : stride, :
            ]
    return cols.reshape(N, OH, OW, k * k * C)


def col2im(
    dcols: np.ndarray, x_shape: tuple[int, ...], k: int, stride: int, padding: int
) -> np.ndarray:
    """The adjoint of im2col: dcols (N, OH, OW, k*k*C) -> dx (N, H, W, C), each patch entry's
    gradient added back to the pixel it was copied from (overlapping patches add up)."""
    N, H, W, C = x_shape
    OH, OW = dcols.shape[1:3]
    dxp = np.zeros((N, H + 2 * padding, W + 2 * padding, C), dtype=dcols.dtype)
    d = dcols.reshape(N, OH, OW, k, k, C)
    for i in range(k):
        for j in range(k):
            dxp[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] += d[
                :, :, :, i, j, :
            ]
    return dxp[:, padding : padding + H, padding : padding + W, :]


def conv_forward(
    x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, padding: int
) -> tuple[np.ndarray, Any]:
    """2-D convolution (cross-correlation), channels-last, as one matrix product:
    x: (N, H, W, C), W: (k, k, C, F), b: (F,) -> out: (N, OH, OW, F),
        out[n, oh, ow, f] = b[f] + sum_{i, j, c} xpad[n, s oh + i, s ow + j, c] W[i, j, c, f]
    = im2col(x) W.reshape(k*k*C, F) + b."""
    k, F = W.shape[0], W.shape[3]
    cols = im2col(x, k, stride, padding)  # (N, OH, OW, k*k*C)
    out = cols @ W.reshape(-1, F) + b
    return out, (x.shape, cols, W, stride, padding)


def conv_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, OH, OW, F) -> dx (N, H, W, C), dW (k, k, C, F), db (F,):
    dW = cols^T dout, db = sum dout, dx = col2im(dout W^T) (docs/backprop.md)."""
    x_shape, cols, W, stride, padding = cache
    F = W.shape[3]
    d2 = dout.reshape(-1, F)  # (N*OH*OW, F)
    dW = (cols.reshape(len(d2), -1).T @ d2).reshape(W.shape)
    dcols = (d2 @ W.reshape(-1, F).T).reshape(cols.shape)
    return col2im(dcols, x_shape, W.shape[0], stride, padding), dW, d2.sum(axis=0)


def winograd_padded(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """x (N, H, W, C) -> its zero-padded copy for F(4x4, 3x3), (N, 4 th + 2, 4 tw + 2, C), and
    th, tw: the tiles down and across (the last may reach beyond the image)."""
    N, H, W, C = x.shape
    th, tw = -(-H // 4), -(-W // 4)
    xpad = np.zeros((N, 4 * th + 2, 4 * tw + 2, C))
    xpad[:, 1 : H + 1, 1 : W + 1] = x
    return xpad, th, tw


def winograd_conv_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 3x3 convolution with stride 1 and padding 1 that conv_forward computes, by
    Winograd's F(4x4, 3x3), one 6x6 tile of the padded input at a time (docs/backprop.md,
    section 3k): x (N, H, W, C), W (3, 3, C, F), b (F,) -> out (N, H, W, F). Each tile gives
    4x4 outputs, Y = A^T [(G g G^T) * (B^T d B)] A summed over the channels: 36 products
    where the direct sum has 144. The engine's `winograd.py` does the same for all tiles at
    once, as matrix products."""
    N, H, W_ = x.shape[:3]
    xpad, th, tw = winograd_padded(x)
    U = np.einsum("ia,abcf,jb->ijcf", G, W, G)  # G g G^T for every filter (c, f): (6, 6, C, F)
    out = np.zeros((N, 4 * th, 4 * tw, W.shape[3]))
    for t in range(th):
        for s in range(tw):
            d = xpad[:, 4 * t : 4 * t + 6, 4 * s : 4 * s + 6]  # (N, 6, 6, C)
            V = np.einsum("ia,nabc,jb->nijc", BT, d, BT)  # B^T d B
            M = np.einsum("nijc,ijcf->nijf", V, U)  # the 36 products, summed over c
            out[:, 4 * t : 4 * t + 4, 4 * s : 4 * s + 4] = np.einsum(
                "ui,nijf,vj->nuvf", AT, M, AT
            )  # A^T M A
    return out[:, :H, :W_] + b


def winograd_conv_backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, H, W, F), and the forward pass's x and W -> dx, dW, db as conv_backward gives
    them, by F(4x4, 3x3) (docs/backprop.md, section 3k). dx: the same-size correlation of dout
    with the kernel turned half a turn, its channel axes swapped. dW: for each tile,
    G^T [(A dY A^T) * (B^T d B)] G, summed over tiles and images."""
    N, H, W_, C = x.shape
    dx = winograd_conv_forward(dout, W[::-1, ::-1].transpose(0, 1, 3, 2), np.zeros(C))
    xpad, th, tw = winograd_padded(x)
    dpad = np.zeros((N, 4 * th, 4 * tw, dout.shape[3]))  # no gradient beyond the image
    dpad[:, :H, :W_] = dout
    S = np.zeros((6, 6, C, dout.shape[3]))
    for t in range(th):
        for s in range(tw):
            d = xpad[:, 4 * t : 4 * t + 6, 4 * s : 4 * s + 6]
            V = np.einsum("ia,nabc,jb->nijc", BT, d, BT)  # B^T d B
            dY = dpad[:, 4 * t : 4 * t + 4, 4 * s : 4 * s + 4]  # (N, 4, 4, F)
            D = np.einsum("ui,nuvf,vj->nijf", AT, dY, AT)  # A dY A^T
            S += np.einsum("nijc,nijf->ijcf", V, D)
    dW = np.einsum("ia,ijcf,jb->abcf", G, S, G)  # G^T S G
    return dx, dW, dout.sum(axis=(0, 1, 2))


def maxpool_forward(x: np.ndarray, k: int, stride: int) -> tuple[np.ndarray, Any]:
    """x: (N, H, W, C) -> out: (N, OH, OW, C), the largest value of each k x k window (windows
    stride apart; OH = (H - k) // stride + 1)."""
    N, H, W, C = x.shape
    OH, OW = (H - k) // stride + 1, (W - k) // stride + 1
    windows = np.stack(
        [x[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :]
         for i in range(k) for j in range(k)]
    )  # (k*k, N, OH, OW, C): every window's k*k values along the first axis  # fmt: skip
    winner = windows.argmax(axis=0)  # which of the k*k values is the maximum
    return windows.max(axis=0), (x.shape, winner, k, stride)


def maxpool_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """The gradient of a max goes to the value that won: dx is zero except at each window's
    maximum, which receives the window's dout (added up where windows overlap)."""
    x_shape, winner, k, stride = cache
    OH, OW = dout.shape[1:3]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(k):
        for j in range(k):
            won = winner == i * k + j
            dx[:, i : i + stride * OH : stride, j : j + stride * OW : stride, :] += dout * won
    return dx


def avgpool_forward(x: np.ndarray, k: int) -> tuple[np.ndarray, Any]:
    """x: (N, H, W, C) -> out: (N, H // k, W // k, C), the mean of each k x k window."""
    N, H, W, C = x.shape
    OH, OW = H // k, W // k
    out = np.zeros((N, OH, OW, C), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            out += x[:, i : i + k * OH : k, j : j + k * OW : k, :]
    return out / (k * k), (x.shape, k)


def avgpool_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """Every input of a window gets the window's dout / k^2."""
    x_shape, k = cache
    OH, OW = dout.shape[1:3]
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(k):
        for j in range(k):
            dx[:, i : i + k * OH : k, j : j + k * OW : k, :] = dout / (k * k)
    return dx


def global_pool_forward(x: np.ndarray, mode: str) -> tuple[np.ndarray, Any]:
    """x: (N, H, W, C) -> the mean ("avg"), the largest value ("max") of each channel over the
    image, or both side by side ("avg+max", (N, 2C))."""
    N, H, W, C = x.shape
    flat = x.reshape(N, H * W, C)
    parts = {"avg": flat.mean(axis=1), "max": flat.max(axis=1)}
    out = np.concatenate([parts[m] for m in mode.split("+")], axis=1)
    return out, (x.shape, mode, flat.argmax(axis=1))


def global_pool_backward(dout: np.ndarray, cache: Any) -> np.ndarray:
    """The mean's gradient spreads evenly, dout / (H W); the max's goes to the winner."""
    (N, H, W, C), mode, winner = cache
    dx = np.zeros((N, H * W, C), dtype=dout.dtype)
    for k, m in enumerate(mode.split("+")):
        d = dout[:, k * C : (k + 1) * C]
        if m == "avg":
            dx += d[:, None, :] / (H * W)
        else:
            for n in range(N):
                dx[n, winner[n], np.arange(C)] += d[n]
    return dx.reshape(N, H, W, C)


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-a))


def squeeze_excite_forward(
    x: np.ndarray, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray
) -> tuple[np.ndarray, Any]:
    """Squeeze-and-excitation (Hu et al. 2018): x (N, H, W, C) -> x * g, a gate per example and
    channel from the channels' means: s = mean_hw x, z = relu(s W1 + b1), g = sigmoid(z W2 + b2)."""
    s = x.mean(axis=(1, 2))
    z = np.maximum(s @ W1 + b1, 0)
    g = sigmoid(z @ W2 + b2)
    return x * g[:, None, None, :], (x, s, z, g, W1, W2)


def squeeze_excite_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, ...]:
    """-> dx, dW1, db1, dW2, db2. x reaches out twice: through the product (dout * g) and
    through the gate, via its mean s (ds / (H W) to every position)."""
    x, s, z, g, W1, W2 = cache
    H, W = x.shape[1:3]
    dg = (dout * x).sum(axis=(1, 2))
    da2 = dg * g * (1 - g)  # sigmoid'(a) = g (1 - g)
    da1 = (da2 @ W2.T) * (z > 0)
    ds = da1 @ W1.T
    dx = dout * g[:, None, None, :] + ds[:, None, None, :] / (H * W)
    return dx, s.T @ da1, da1.sum(axis=0), z.T @ da2, da2.sum(axis=0)


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def softmax(scores: np.ndarray) -> np.ndarray:
    """scores: (N, C) -> p: (N, C), p[n, c] = exp(s[n, c]) / sum_c' exp(s[n, c'])."""
    e = np.exp(scores - scores.max(axis=1, keepdims=True))  # shifting changes nothing but
    return e / e.sum(axis=1, keepdims=True)  # keeps exp from overflowing


def softmax_cross_entropy(
    scores: np.ndarray, y: np.ndarray, label_smoothing: float = 0.0
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(scores) (N, C) against labels y (N,), with targets
    q = (1 - eps) onehot(y) + eps / C:
        L = -(1/N) sum_n sum_c q[n, c] log p[n, c],   dL/dscores = (p - q) / N
    ("subtract one and divide by N": the gradient of -log p_y is p - onehot(y))."""
    N, C = scores.shape
    p = softmax(scores)
    q = np.full_like(p, label_smoothing / C)
    q[np.arange(N), y] += 1 - label_smoothing
    loss = -float((q * np.log(p)).sum() / N)
    return loss, (p - q) / N


def kl_divergence(p: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean KL(p || q) over the batch, q = softmax(scores) (virtual adversarial training's
    penalty): L = (1/N) sum p (log p - log q), 0 log 0 = 0; dL/dscores = (q - p) / N (p is a
    constant target: only log q depends on the scores, as in the cross-entropy)."""
    N = scores.shape[0]
    q = softmax(scores)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0)
    return float(terms.sum() / N), (q - p) / N


def l2_penalty(weights: list[np.ndarray], lam: float) -> tuple[float, list[np.ndarray]]:
    """0.5 lam sum W^2 over the weights (not biases), and its gradient lam W."""
    return 0.5 * lam * sum(float((W**2).sum()) for W in weights), [lam * W for W in weights]


# ---------------------------------------------------------------------------------------
# Optimisers: one update of one parameter W with gradient g; they return the new state.
# ---------------------------------------------------------------------------------------


def sgd_step(
    W: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, momentum: float, nesterov: bool,
    weight_decay: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """SGD with momentum (Sutskever et al. 2013, PyTorch's form) and L2 in the gradient:
        g <- g + weight_decay W,   v <- momentum v + g
        W <- W - lr v   (classical),   W <- W - lr (g + momentum v)   (Nesterov)
    Returns (W, v)."""
    g = g + weight_decay * W
    v = momentum * v + g
    return W - lr * ((g + momentum * v) if nesterov else v), v


def adam_step(
    W: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float,
    beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
    decoupled: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Adam (Kingma & Ba 2015) at step t = 1, 2, ...; L2 in the gradient, or decoupled from
    it as in AdamW (Loshchilov & Hutter 2019):
        g <- g + weight_decay W  (Adam)   or   W <- W (1 - lr weight_decay)  (AdamW)
        m <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2
        W <- W - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t), v_hat likewise
    Returns (W, m, v)."""
    if decoupled:
        W = W * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * W
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return W - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


# ---------------------------------------------------------------------------------------
# A network's layers through these functions: `Sequential(layers, fast=False)`.
# ---------------------------------------------------------------------------------------


class ReferenceStep:
    """Runs layer `i` of a network with the plain functions above, reading the layer's params
    and writing its grads and running statistics, so that an optimiser, a model file or a
    checkpoint sees no difference. Random masks come from the layer's own generator, drawn as
    the layer draws them."""

    def __init__(self, layers: list[Layer], i: int) -> None:
        self.layer, self.start, self.stop = layers[i], i, i + 1
        self.cache: Any = None
        self.masked = False  # a DropConnect that drew a mask this step

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        layer, P = self.layer, self.layer.params
        self.masked = isinstance(layer, DropConnect) and training and layer.p > 0
        if self.masked:
            assert isinstance(layer, DropConnect)
            mask = dropout_mask(P["W"].shape, layer.p, layer.rng).astype(P["W"].dtype)
            out, self.cache = dropconnect_forward(x, P["W"], P["b"], mask)
        elif isinstance(layer, Dense):  # DropConnect at inference: its mean network
            out, self.cache = dense_forward(x, P["W"], P["b"])
        elif isinstance(layer, Conv2D):
            out, self.cache = conv_forward(x, P["W"], P["b"], layer.stride, layer.padding)
        elif isinstance(layer, MaxPool2D):
            out, self.cache = maxpool_forward(x, layer.kernel_size, layer.stride)
        elif isinstance(layer, AvgPool2D):
            out, self.cache = avgpool_forward(x, layer.kernel_size)
        elif isinstance(layer, GlobalPool):
            out, self.cache = global_pool_forward(x, layer.mode)
        elif isinstance(layer, SqueezeExcite):
            out, self.cache = squeeze_excite_forward(x, P["W1"], P["b1"], P["W2"], P["b2"])
        elif isinstance(layer, ReLU):
            out, self.cache = relu_forward(x)
        elif isinstance(layer, Dropout):
            drop = training and layer.p > 0
            mask = dropout_mask(x.shape, layer.p, layer.rng) if drop else np.ones(x.shape)
            out, self.cache = dropout_forward(x, mask.astype(x.dtype))
        elif isinstance(layer, BatchNorm):
            out = self._batchnorm(layer, x, training)
        elif isinstance(layer, Flatten | Reshape):
            shape = (len(x), -1) if isinstance(layer, Flatten) else (len(x), *layer.shape)
            out, self.cache = x.reshape(shape), x.shape
        else:
            raise TypeError(f"no reference for {type(layer).__name__}")
        return out.astype(x.dtype, copy=False)

    def _batchnorm(self, bn: BatchNorm, x: np.ndarray, training: bool) -> np.ndarray:
        P, B = bn.params, bn.buffers
        if not training:
            return batchnorm_inference(x, P["gamma"], P["beta"], B["running_mean"],
                                       B["running_var"], bn.eps)  # fmt: skip
        out, self.cache = batchnorm_forward(x, P["gamma"], P["beta"], bn.eps)
        mu, var, M = self.cache[3], self.cache[4], x.size // x.shape[-1]
        B["running_mean"][...] = running_average(B["running_mean"], mu, bn.momentum)
        B["running_var"][...] = running_average(B["running_var"], var * M / (M - 1), bn.momentum)
        return out

    def backward(self, dout: np.ndarray, need_dx: bool, need_grads: bool) -> np.ndarray:
        layer, G = self.layer, self.layer.grads
        if self.masked:
            dx, G["W"][...], G["b"][...] = dropconnect_backward(dout, self.cache)
        elif isinstance(layer, Dense | Conv2D):
            backward = dense_backward if isinstance(layer, Dense) else conv_backward
            dx, G["W"][...], G["b"][...] = backward(dout, self.cache)
        elif isinstance(layer, MaxPool2D):
            dx = maxpool_backward(dout, self.cache)
        elif isinstance(layer, AvgPool2D):
            dx = avgpool_backward(dout, self.cache)
        elif isinstance(layer, GlobalPool):
            dx = global_pool_backward(dout, self.cache)
        elif isinstance(layer, SqueezeExcite):
            dx, G["W1"][...], G["b1"][...], G["W2"][...], G["b2"][...] = squeeze_excite_backward(
                dout, self.cache
            )
        elif isinstance(layer, ReLU):
            dx = relu_backward(dout, self.cache)
        elif isinstance(layer, Dropout):
            dx = dropout_backward(dout, self.cache)
        elif isinstance(layer, BatchNorm):
            dx, G["gamma"][...], G["beta"][...] = batchnorm_backward(dout, self.cache)
        else:  # Flatten, Reshape
            dx = dout.reshape(self.cache)
        return dx.astype(dout.dtype, copy=False)
