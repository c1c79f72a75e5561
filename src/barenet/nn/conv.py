"""Convolution and max-pooling layers, with matrix products doing the work (im2col).

Images travel through the network channels-last: x has shape (N, H, W, C). In that layout the
patches of a convolution unfold into a matrix whose rows are contiguous (kh, kw, C) blocks, the
product with the (kh*kw*C, F) weight matrix is one GEMM, and its (N*OH*OW, F) result already is
the (N, OH, OW, F) output: no transpose anywhere, forward or backward.

Output size, for input size H, kernel k, stride s, padding p: OH = (H + 2p - k) // s + 1.

Three orders of the same work, for speed: a convolution followed by a w x w max-pool may write
its output window-major, (w*w, N, OH/w, OW/w, F), so that the pool reads contiguous blocks
(`Conv2D.forward(pool=w)`, which `Sequential` asks for); with stride 1 the input gradient is a
sum of shifted products added in place by BLAS, without col2im; and a padded convolution of
several channels unfolds and multiplies its patches a block of images at a time, each block's
patches still in the core's cache when the product reads them, blocks on both cores at once
(`blas.in_lanes`; the weight gradient unfolds them again instead of keeping them all).

Derivations in docs/backprop.md ("Conv2D", "MaxPool2D"); gradients are checked in float64 by
tests/test_conv.py and `barenet gradcheck`.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ..backend.arrays import array_module, kept_array
from ..backend.blas import in_lanes, matmul_add, matmul_long
from ..backend.threads import in_blocks
from .layers import Array, column_sums, fold, init_weights


def _windows(x: Array, kh: int, kw: int, stride: int) -> Array:
    """A strided view of every (kh, kw) window of x (N, H, W, C): shape (N, OH, OW, kh, kw, C).

    Nothing is copied: neighbouring windows share memory, so never write into the view.
    """
    xp = array_module(x)
    N, H, W, C = x.shape
    OH, OW = (H - kh) // stride + 1, (W - kw) // stride + 1
    sN, sH, sW, sC = x.strides
    shape, strides = (N, OH, OW, kh, kw, C), (sN, stride * sH, stride * sW, sH, sW, sC)
    if xp is not np:  # CuPy's as_strided has no read-only flag
        return xp.lib.stride_tricks.as_strided(x, shape, strides)
    return xp.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)


def _copy_into(view: Array, buffer: Array) -> Array:
    """A contiguous copy of `view`, of its shape, in the first elements of the 1-D `buffer`."""
    copy = buffer[: view.size].reshape(view.shape)
    copy[...] = view
    return copy


def _unfold(windows: Array, buffer: Array) -> Array:
    """windows (w, w, n, PH, PW, k, k, C), a view (`Conv2D._block_windows`) -> their copy
    in buffer's first elements, as patches (w*w, n*PH*PW, k*k*C)."""
    w, _, n, PH, PW, k, _, C = windows.shape
    return _copy_into(windows, buffer).reshape(w * w, n * PH * PW, k * k * C)


def _scatter_windows(dwin: Array, shape: tuple[int, ...], stride: int, padding: int) -> Array:
    """The adjoint of `_windows` on the padded input, cropped: the input gradient dx.

    dwin: (kh, kw, w, w, N, PH, PW, C), the gradient of each kernel offset's view, its output
    positions (oh, ow) = (w*ph + a, w*pw + b) (window-major rows, `Conv2D.forward(pool=w)`;
    w = 1 for the plain layout) -> dx: `shape` = (N, H, W, C), the unpadded input's. One
    strided add per kernel offset (i, j) and window offset (a, b):
    dx[:, s*oh + i - p, s*ow + j - p, :] += dwin[i, j, a, b, :, ph, pw, :], vectorised over the
    positions that land inside dx (those on the padding are dropped: padding is a constant);
    overlapping windows (stride < kernel) add up, as the chain rule requires. Offsets first,
    so that each add reads a contiguous block. Where the blocks of one kernel offset cover
    all of dx ("same" padding, stride 1: offset (p, p)), they are assigned first instead of
    adding onto zeros: two passes fewer.
    """
    xp = array_module(dwin)
    kh, kw, w, _, N, PH, PW, C = dwin.shape
    _, H, W, _ = shape
    step = stride * w  # between the inputs of neighbouring outputs of one block

    def span(i: int, outputs: int, inputs: int) -> tuple[int, int, int]:
        """Outputs o in [lo, hi) whose input step*o + i - p is in [0, inputs); that input at lo."""
        lo = max(0, -((i - padding) // step))  # ceil((p - i) / step)
        hi = min(outputs, (inputs - 1 - i + padding) // step + 1)
        return lo, hi, step * lo + i - padding

    covering = stride == 1 and (w * PH, w * PW) == (H, W)
    dx = xp.empty(shape, dtype=dwin.dtype) if covering else xp.zeros(shape, dtype=dwin.dtype)
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    if covering:  # the covering offset first: its blocks are assigned
        offsets.remove((padding, padding))
        offsets.insert(0, (padding, padding))
    for i, j in offsets:
        for a in range(w):
            for b in range(w):
                (lo, hi, h), (lo2, hi2, c) = (
                    span(stride * a + i, PH, H),
                    span(stride * b + j, PW, W),
                )
                if lo < hi and lo2 < hi2:
                    target = dx[:, h : h + step * (hi - lo - 1) + 1 : step, c : c + step * (hi2 - lo2 - 1) + 1 : step, :]  # fmt: skip
                    block = dwin[i, j, a, b, :, lo:hi, lo2:hi2, :]
                    if covering and (i, j) == (padding, padding):
                        target[...] = block
                    else:
                        target += block
    return dx


LANES = 4  # the blocked passes' lanes (`blas.in_lanes`): fixed, so results never depend on the CPUs
BLOCK_BYTES = 1 << 20  # the unfolded patches of one block of images: about 1 MB, in a core's cache


def _positions(N: int, OH: int, OW: int, w: int) -> tuple[int, ...]:
    """The shape of a convolution's output positions: (N, OH, OW), or window-major
    (w*w, N, OH/w, OW/w) for w > 1 (`Conv2D.forward`)."""
    return (N, OH, OW) if w == 1 else (w * w, N, OH // w, OW // w)


class Conv2D:
    """2-D convolution (cross-correlation, as in every deep-learning library), channels-last.

    out[n, oh, ow, f] = b[f] + sum_{i, j, c} xpad[n, s*oh + i, s*ow + j, c] W[i, j, c, f]

    Computed as one matrix product: the patches of the zero-padded input are unfolded into
    cols (N*OH*OW, kh*kw*C) ("im2col"), and out = cols W.reshape(kh*kw*C, F) + b.

    Arguments:
        in_channels: C; out_channels: F.
        kernel_size: k (square k x k kernels).
        stride: s >= 1; padding: p >= 0 zeros on each side of H and W.
        rng: generator for the initial weights; None leaves them zero (for loading saved ones).
        init: "he" (std sqrt(2 / fan_in), fan_in = k*k*C) or "glorot" (std sqrt(2 / (fan_in +
            fan_out)), fan_out = k*k*F).
        dtype: float32 for training, float64 for gradient checks.

    Params: W, shape (k, k, C, F); b, shape (F,). The L2 penalty applies to W only.
    """

    decay: tuple[str, ...] = ("W",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        rng: np.random.Generator | None = None,
        init: str = "he",
        dtype: Any = np.float32,
        xp: ModuleType = np,
    ) -> None:
        if kernel_size < 1 or stride < 1 or padding < 0:
            raise ValueError("kernel_size and stride must be >= 1 and padding >= 0")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.init = kernel_size, stride, padding, init
        k = kernel_size
        W = init_weights((k, k, in_channels, out_channels), k * k * in_channels,
                         k * k * out_channels, init=init, rng=rng, dtype=dtype)  # fmt: skip
        self.params = {"W": xp.asarray(W), "b": xp.zeros(out_channels, dtype=dtype)}
        self.grads = {k_: xp.zeros_like(v) for k_, v in self.params.items()}
        self.buffers: dict[str, Array] = {}
        self._cols: Array | None = None
        self._kept: dict[str, Array] = {}  # working arrays kept between training steps
        self._x_shape: tuple[int, ...] = ()
        self._w = 1  # the window-major block size of the last forward's output (1: plain)
        self._blocks: tuple[Array, list[tuple[int, int]]] | None = None  # `_forward_blocks`

    def output_shape(self, H: int, W: int) -> tuple[int, int]:
        k, s, p = self.kernel_size, self.stride, self.padding
        return (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1

    def forward(self, x: Array, training: bool = False, pool: int = 0) -> Array:
        """x: (N, H, W, C) -> out: (N, OH, OW, F), same dtype as W.

        pool = w > 1, for a w x w max-pool with stride w that follows (through per-channel
        layers only): where w divides OH and OW, out is written window-major instead,
        (w*w, N, OH/w, OW/w, F), out[a*w + b, n, ph, pw] being the output at
        (n, w*ph + a, w*pw + b), so that the pool compares contiguous blocks (`MaxPool2D`).
        The same values in another order: each is a row of the product, and the rows of
        cols are simply unfolded in that order."""
        xp = array_module(x)
        N, _, _, C = x.shape
        k, F = self.kernel_size, self.out_channels
        if not training:
            self._kept.clear()  # training is over or paused: give the working arrays back
        xpad, OH, OW = self._padded(x, keep=training)
        w = self._window(OH, OW, pool)
        self._blocks = None
        if C == 1:
            out, cols = self._forward_one_channel(xpad, OH, OW, w, keep=training)
        elif self.blocked(xp):
            out, cols = self._forward_blocks(xpad, OH, OW, w, keep=training), None
        else:
            windows = self._block_windows(xpad, OH, OW, w)  # in the order of cols' rows
            cols = self.work("cols", (N * OH * OW, k * k * C), x.dtype, xp, keep=training)
            cols.reshape(windows.shape)[...] = windows  # the copy
            out = cols @ self.params["W"].reshape(k * k * C, F)  # (N*OH*OW, F)
            r = fold(out.shape[0], F)  # the bias added over (M / r, r F) views: longer loops
            out.reshape(-1, r * F)[...] += xp.tile(self.params["b"], r)
        self._cols = cols if training else None
        self._x_shape, self._w = x.shape, w
        return out.reshape(*_positions(N, OH, OW, w), F)

    def blocked(self, xp: ModuleType) -> bool:
        """Whether the passes run a block of images at a time (`_forward_blocks`): NumPy
        arrays, several input channels and some padding (the padded input is then this layer's
        own copy, which the weight gradient reads again)."""
        return xp is np and self.in_channels > 1 and self.padding > 0

    def _block_windows(self, xpad: Array, OH: int, OW: int, w: int) -> Array:
        """Every window of xpad in the order of the output's rows: (w, w, N, OH/w, OW/w, k, k,
        C), a view; [a, b, n, ph, pw] is the window of output (n, w*ph + a, w*pw + b)
        (w = 1: the plain order)."""
        N, C, k = xpad.shape[0], self.in_channels, self.kernel_size
        windows = _windows(xpad, k, k, self.stride)  # (N, OH, OW, k, k, C)
        windows = windows.reshape(N, OH // w, w, OW // w, w, k, k, C)
        return windows.transpose(2, 4, 0, 1, 3, 5, 6, 7)

    def _image_blocks(self, N: int, OH: int, OW: int, itemsize: int) -> list[tuple[int, int]]:
        """[n0, n1) ranges of images whose patches take about BLOCK_BYTES (at least one image)."""
        per_image = OH * OW * self.kernel_size**2 * self.in_channels * itemsize
        step = max(1, BLOCK_BYTES // per_image)
        return [(n0, min(N, n0 + step)) for n0 in range(0, N, step)]

    def _forward_blocks(self, xpad: Array, OH: int, OW: int, w: int, keep: bool) -> Array:
        """The forward pass a block of images at a time: xpad (N, Hp, Wp, C) -> out, (w*w, N,
        OH/w, OW/w, F) (window-major for w > 1, else (1, N, OH, OW, F): the plain layout).

        For each block [n0, n1): its patches, cols (w*w, rows, k*k*C), are unfolded into a
        buffer of the block's lane, and out[:, n0:n1] = cols W + b: the same sums as one
        product over all of cols, with cols never written out whole (docs/speed.md). Keeps
        what the weight gradient needs to unfold the blocks again (`_weight_gradient_blocks`).
        """
        xp = array_module(xpad)
        N, k, C, F = xpad.shape[0], self.kernel_size, self.in_channels, self.out_channels
        windows = self._block_windows(xpad, OH, OW, w)
        blocks = self._image_blocks(N, OH, OW, xpad.dtype.itemsize)
        rows = (blocks[0][1] - blocks[0][0]) * OH * OW
        buffers = [self.work(f"patches {i}", (rows * k * k * C,), xpad.dtype, xp, keep)
                   for i in range(min(LANES, len(blocks)))]  # fmt: skip
        out = xp.empty((w * w, N, OH // w, OW // w, F), dtype=xpad.dtype)
        W2 = self.params["W"].reshape(k * k * C, F)
        r = fold((blocks[0][1] - blocks[0][0]) * (OH // w) * (OW // w), F)
        bias = xp.tile(self.params["b"], r)

        def lane(i: int) -> None:
            for n0, n1 in blocks[i::LANES]:
                cols = _unfold(windows[:, :, n0:n1], buffers[i])
                block = out[:, n0:n1].reshape(w * w, -1, F)
                xp.matmul(cols, W2, out=block)
                if block.shape[1] % r == 0:  # the bias over (rows / r, r F) views: longer loops
                    block.reshape(w * w, -1, r * F)[...] += bias
                else:  # the last, shorter block
                    block += self.params["b"]

        in_lanes(lane, LANES)
        self._blocks = (windows, blocks) if keep else None
        return out

    def _weight_gradient_blocks(self, dout: Array) -> Array:
        """dW as (k*k*C, F) from dout (w*w, N, OH/w, OW/w, F), the blocks of `_forward_blocks`
        unfolded again: dW = sum over blocks of cols_block^T dout_block, each lane adding its
        blocks' products in place (BLAS's beta = 1), the lanes' sums added in a fixed order."""
        assert self._blocks is not None
        windows, blocks = self._blocks
        xp = array_module(dout)
        k, C, F = self.kernel_size, self.in_channels, self.out_channels
        w2 = dout.shape[0]
        rows = (blocks[0][1] - blocks[0][0]) * math.prod(dout.shape[2:4])
        lanes = min(LANES, len(blocks))
        buffers = [self.work(f"patches {i}", (w2 * rows * k * k * C,), dout.dtype, xp, True)
                   for i in range(lanes)]  # fmt: skip
        # window-major dout: a block's w*w parts lie apart, and are copied together
        douts = [self.work(f"dout {i}", (w2 * rows * F,), dout.dtype, xp, True)
                 for i in range(lanes if w2 > 1 else 0)]  # fmt: skip
        sums = [self.work(f"dW {i}", (F, k * k * C), dout.dtype, xp, True) for i in range(lanes)]

        def lane(i: int) -> None:
            total = sums[i]
            total.fill(0)
            for n0, n1 in blocks[i::LANES]:
                cols = _unfold(windows[:, :, n0:n1], buffers[i]).reshape(-1, k * k * C)
                part = dout[:, n0:n1]  # (w*w, n1 - n0, OH/w, OW/w, F): rows in cols' order
                if w2 > 1:
                    part = _copy_into(part, douts[i])
                d2 = part.reshape(-1, F)
                if not matmul_add(d2.T, cols, total):
                    total += d2.T @ cols

        in_lanes(lane, lanes)
        dW = sums[0].copy()
        for s in sums[1:]:
            dW += s
        return dW.T

    @staticmethod
    def _window(OH: int, OW: int, pool: int) -> int:
        """The window-major block size w for an output of OH x OW (1: the plain layout)."""
        return pool if pool > 1 and OH % pool == 0 and OW % pool == 0 else 1

    def _forward_one_channel(
        self, xpad: Array, OH: int, OW: int, w: int = 1, keep: bool = False
    ) -> tuple[Array, Array]:
        """The forward pass for one input channel (grayscale images: a network's first layer).

        xpad: (N, Hp, Wp, 1) -> out: (N*OH*OW, F), and colsT (`_unfold_one_channel`). The row
        of ones in colsT multiplies the bias as a (k*k + 1)-th weight row, so that
        out = colsT^T [W; b] is the whole layer in one product, and in backward colsT dout
        gives [dW; db] at once.
        """
        colsT = self._unfold_one_channel(xpad, OH, OW, w, keep)
        return colsT.T @ self.weights_with_bias(), colsT

    def patches(
        self, x: Array, pool: int = 0, training: bool = True
    ) -> tuple[Array, tuple[int, ...]]:
        """The unfolded patches of a one-channel input, for work that needs them directly
        (`barenet.nn.fused`): x: (N, H, W, 1) -> colsT: (k*k + 1, N*OH*OW), the transpose of cols
        with a last row of ones, its columns in the order of `forward(x, pool=pool)`'s
        outputs, and the shape of those outputs without F: (N, OH, OW) or (w*w, N, OH/w,
        OW/w). training: in arrays kept for the next step (`work`), valid until then."""
        if self.in_channels != 1:
            raise ValueError("Conv2D.patches is for one-channel inputs")
        xpad, OH, OW = self._padded(x, keep=training)
        w = self._window(OH, OW, pool)
        colsT = self._unfold_one_channel(xpad, OH, OW, w, keep=training)
        return colsT, _positions(x.shape[0], OH, OW, w)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the working arrays kept from one training step to the next (`work`); 0
        after a forward pass at inference, which gives them back."""
        return sum(int(a.nbytes) for a in self._kept.values())

    def work(
        self, name: str, shape: tuple[int, ...], dtype: Any, xp: ModuleType, keep: bool
    ) -> Array:
        """An array for work within a step (this layer's, or a fused pair's, `barenet.nn.fused`):
        a new one, or with keep (while training) the same array from one step to the next,
        made zero once. What a step does not write stays as the last one left it: zero, where
        no step writes (the padding).

        Why keep them: a fresh array of tens of MB each step costs page faults and the
        kernel's zeroing of every page as it is first written (docs/speed.md)."""
        return kept_array(self._kept, name, shape, dtype, xp) if keep else xp.empty(shape, dtype)

    def _padded(self, x: Array, keep: bool = False) -> tuple[Array, int, int]:
        """x: (N, H, W, C) -> the zero-padded input (N, H + 2p, W + 2p, C), OH and OW; a
        ValueError if x does not have C channels or the kernel does not fit. keep: in an
        array kept between steps (`work`), whose border stays zero."""
        N, H, W_, C = x.shape
        if C != self.in_channels:
            raise ValueError(f"Conv2D expects {self.in_channels} input channels, got {C}")
        k, p = self.kernel_size, self.padding
        OH, OW = self.output_shape(H, W_)
        if OH < 1 or OW < 1:
            raise ValueError(f"Conv2D: a {k}x{k} kernel does not fit a {H}x{W_} input")
        if not p:
            return x, OH, OW
        xp = array_module(x)
        if not keep:
            return xp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), OH, OW
        xpad = self.work("xpad", (N, H + 2 * p, W_ + 2 * p, C), x.dtype, xp, keep=True)
        xpad[:, p : p + H, p : p + W_] = x
        return xpad, OH, OW

    def _unfold_one_channel(
        self, xpad: Array, OH: int, OW: int, w: int = 1, keep: bool = False
    ) -> Array:
        """xpad: (N, Hp, Wp, 1) -> colsT: (k*k + 1, N*OH*OW), the transpose of cols with a
        last row of ones; its columns window-major for w > 1 (see `forward`).

        Unfolding windows of k*k single pixels row by row copies k floats at a time (slower than the product itself); colsT instead takes one
        strided block copy per kernel offset (i, j) (and window offset (a, b)),
        colsT[i*k + j, a*w + b] = xpad[:, i + s*(w*ph + a), j + s*(w*pw + b), 0].
        """
        xp = array_module(xpad)
        k, s = self.kernel_size, self.stride
        N = xpad.shape[0]
        PH, PW, step = OH // w, OW // w, s * w
        colsT = self.work("colsT", (k * k + 1, w * w, N, PH, PW), xpad.dtype, xp, keep)
        for i in range(k):
            for j in range(k):
                for a in range(w):
                    for b in range(w):
                        h, c = i + s * a, j + s * b
                        colsT[i * k + j, a * w + b] = xpad[:, h : h + step * (PH - 1) + 1 : step, c : c + step * (PW - 1) + 1 : step, 0]  # fmt: skip
        colsT[k * k] = 1
        return colsT.reshape(k * k + 1, N * OH * OW)

    def weights_with_bias(self) -> Array:
        """[W; b]: (k*k*C + 1, F), the weights as a matrix with the bias as its last row."""
        xp = array_module(self.params["W"])
        F = self.out_channels
        return xp.concatenate([self.params["W"].reshape(-1, F), self.params["b"][None]])

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array | None:
        """dout: (N, OH, OW, F), or window-major (w*w, N, OH/w, OW/w, F) if forward wrote its
        output so -> dx: (N, H, W, C). Fills grads W: (k, k, C, F) and b: (F,) (need_grads).

        With dout2 = dout.reshape(N*OH*OW, F): dW = cols^T dout2, db = sum of dout2's rows,
        dcols = dout2 W^T, and dx is dcols folded back onto the input ("col2im"), the share
        of the padding dropped (docs/backprop.md, "Conv2D").
        """
        cols = self._cols
        if cols is None and self._blocks is None:
            raise RuntimeError("Conv2D.backward called without a forward(training=True) before it")
        xp = array_module(dout)
        k, p, F, w = self.kernel_size, self.padding, self.out_channels, self._w
        N = self._x_shape[0]
        dout2 = dout.reshape(-1, F)  # (N*OH*OW, F), its rows in the order of cols
        blocks = (w, w, N, *dout.shape[-3:-1])  # (w, w, N, OH/w, OW/w); w = 1: plain
        W2 = self.params["W"].reshape(-1, F)  # (k*k*C, F), a view
        if self._x_shape[3] == 1 and cols is not None:  # cols is colsT: _forward_one_channel
            if need_grads:
                dWb = matmul_long(cols, dout2)  # (k*k + 1, F): [dW; db]
                self.grads["W"].reshape(-1, F)[...] = dWb[:-1]
                self.grads["b"][...] = dWb[-1]
            if not need_dx:
                return None
            dcols = (W2 @ dout2.T).reshape(k, k, *blocks, 1)  # dcolsT, a block per offset
            return _scatter_windows(dcols, self._x_shape, self.stride, p)
        # dW^T = dout2^T cols: the same product as cols^T dout2, but OpenBLAS runs this
        # orientation (long contiguous rows on both sides) faster.
        if need_grads and cols is None:  # _forward_blocks: its blocks unfolded again
            self.grads["W"].reshape(-1, F)[...] = self._weight_gradient_blocks(
                dout.reshape(w * w, N, *dout.shape[-3:])
            )
            self.grads["b"][...] = column_sums(dout2)
        elif need_grads:
            self.grads["W"].reshape(-1, F)[...] = (dout2.T @ cols).T
            self.grads["b"][...] = column_sums(dout2)
        if not need_dx:
            return None
        if self.stride == 1:
            dx = self._input_gradient_by_shifts(dout)
            if dx is not None:
                return dx
        # dcols = dout2 W^T, computed as one product per kernel offset (i, j):
        # dout2 W[i, j]^T, (N*OH*OW, C) each, so that each offset's block is contiguous.
        C = self.in_channels
        Wt = W2.reshape(k * k, C, F).transpose(0, 2, 1)  # (k*k, F, C), a view
        dcols = xp.matmul(dout2, Wt).reshape(k, k, *blocks, C)
        return _scatter_windows(dcols, self._x_shape, self.stride, p)

    def _input_gradient_by_shifts(self, dout: Array) -> Array | None:
        """dx for stride 1, as k*k products added onto a grid of the input's rows, without
        dcols or col2im; None where BLAS cannot add them in place (`blas.matmul_add`) or the
        padding exceeds k - 1.

        Lay the input out as rows of C channels on a grid of Hc x Wc positions per image,
        Hc = H + p, Wc = W + p: the image's pixels and p zero rows and columns after them,
        which are at once the bottom and right padding of one image row (or image) and the top
        and left padding of the next (p zero rows before the first image). Pixel (n, h, w)
        sits at row g = n*Hc*Wc + h*Wc + w, counted from the first image's first pixel, and
        output (n, oh, ow), put at the same g, reads at offset (i, j) the position
        g + (i - p)*Wc + (j - p): a pixel, or a zero wherever it reads padding. Every offset is
        a shift of the rows. So with dout at the output positions of an (N*Hc*Wc, F) array D
        (zero elsewhere), dxgrid[g + shift] += D[g] W[i, j]^T for all g at once: one product
        per offset, added onto a shifted block of rows (docs/backprop.md, "Conv2D"). The
        products cover the grid, (H + p)(W + p) rows per image against the outputs' OH*OW
        (1.15x for 14x14 images), but nothing is written out and folded back (docs/speed.md).
        """
        xp = array_module(dout)
        k, p, F, w = self.kernel_size, self.padding, self.out_channels, self._w
        N, H, W_, C = self._x_shape
        OH, OW = H + 2 * p - k + 1, W_ + 2 * p - k + 1
        if xp is not np or p > k - 1:  # p > k - 1: outputs would fall beyond an image's cell
            return None
        Hc, Wc = H + p, W_ + p
        D = self.work("D", (N, Hc, Wc, F), dout.dtype, xp, keep=True)  # zero where no output
        # dout, plain (N, OH, OW, F) or window-major (w*w, N, OH/w, OW/w, F), put in place
        D[:, :OH, :OW].reshape(N, OH // w, w, OW // w, w, F)[...] = dout.reshape(
            w, w, N, OH // w, OW // w, F
        ).transpose(2, 3, 0, 4, 1, 5)
        D2 = D.reshape(-1, F)
        # shifts reach p*(Wc + 1) rows back and (k - 1 - p)*(Wc + 1) on: room on both sides
        origin, beyond = p * (Wc + 1), (k - 1 - p) * (Wc + 1)
        dxgrid = self.work("dxgrid", (origin + N * Hc * Wc + beyond, C), dout.dtype, xp, True)
        dxgrid.fill(0)
        W = self.params["W"]  # (k, k, C, F)
        for i in range(k):
            for j in range(k):
                s = origin + (i - p) * Wc + (j - p)  # from 0 to origin + beyond
                if not matmul_add(D2, W[i, j].T, dxgrid[s : s + D2.shape[0]]):
                    return None
        # a contiguous copy (never the kept grid itself): the layer below (a ReLU) runs
        # faster over it than over a view
        images = dxgrid[origin : origin + N * Hc * Wc].reshape(N, Hc, Wc, C)
        return images[:, :H, :W_].copy()

    def config(self) -> dict[str, Any]:
        return {
            "type": "Conv2D",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "init": self.init,
        }


class MaxPool2D:
    """Max pooling over k x k windows with stride s (default s = k), channels-last; no params.

    out[n, oh, ow, c] = max_{i, j < k} x[n, s*oh + i, s*ow + j, c]

    The gradient goes to the one input that was the maximum of its window (the first one in
    (i, j) order, if several tie): dx[n, s*oh + i*, s*ow + j*, c] += dout[n, oh, ow, c]
    (docs/backprop.md, "MaxPool2D").

    Both passes loop over the k*k window offsets, each a strided view of x of the output's
    shape: no window is copied, and every operation is one vectorised pass over (N, OH, OW, C).
    While training, the forward pass records which offset won each window (one byte per
    output), so the backward pass only routes dout: dx at offset t = dout where the winner is t.
    """

    decay: tuple[str, ...] = ()

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        if kernel_size < 1 or (stride is not None and stride < 1):
            raise ValueError("kernel_size and stride must be >= 1")
        if kernel_size > 16:
            raise ValueError("MaxPool2D: kernel_size above 16 is not supported")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self._x_shape: tuple[int, ...] = ()
        self._winner: Array | None = None  # (N, OH, OW, C) uint8: offset index t = i*k + j

    def _picks(self, OH: int, OW: int, window_major: bool = False) -> list[Any]:
        """For each window offset t = i*k + j: the index that picks its inputs, (N, OH, OW, C),
        out of x (N, H, W, C) (strided slices), or out of a window-major input viewed as
        (N, k*k, OH, OW, C) (block t)."""
        k, s = self.kernel_size, self.stride
        if window_major:
            return [(slice(None), t) for t in range(k * k)]
        return [
            (slice(None), slice(i, i + s * (OH - 1) + 1, s), slice(j, j + s * (OW - 1) + 1, s))
            for i in range(k)
            for j in range(k)
        ]

    def forward(self, x: Array, training: bool = False) -> Array:
        """x: (N, H, W, C) -> out: (N, OH, OW, C), OH = (H - k) // s + 1.

        x may also be window-major, (k*k, N, OH, OW, C) with x[i*k + j, n, oh, ow] the input at
        (n, k*oh + i, k*ow + j) (`Conv2D.forward(pool=k)`, stride k): the window offsets are
        then contiguous blocks instead of strided views whose rows are only C values long."""
        xp = array_module(x)
        k, s = self.kernel_size, self.stride
        if x.ndim == 5:  # window-major
            if x.shape[0] != k * k or s != k:
                raise ValueError(
                    f"MaxPool2D: a window-major input needs {k * k} blocks and stride {k}"
                )
            _, N, OH, OW, C = x.shape
            source = x.swapaxes(0, 1)  # (N, k*k, OH, OW, C), a view: split over images below
        else:
            N, H, W, C = x.shape
            if H < k or W < k:
                raise ValueError(f"MaxPool2D: a {k}x{k} window does not fit a {H}x{W} input")
            OH, OW = (H - k) // s + 1, (W - k) // s + 1
            source = x
        first, *rest = self._picks(OH, OW, window_major=x.ndim == 5)
        out = xp.empty((N, OH, OW, C), dtype=x.dtype)
        winner = xp.empty((N, OH, OW, C), dtype=xp.uint8) if training else None

        def pool(x: Array, out: Array, winner: Array | None = None) -> None:
            out[...] = x[first]
            if winner is not None:
                winner.fill(0)
            for t, pick in enumerate(rest, start=1):
                candidate = x[pick]
                if winner is not None:
                    # Strictly greater: a tie keeps the earlier offset. t grows, so the winner
                    # is max(winner, t * [candidate > out]): no branch per element, unlike a mask.
                    beats = xp.greater(candidate, out).view(xp.uint8)
                    beats *= xp.uint8(t)
                    xp.maximum(winner, beats, out=winner)
                xp.maximum(out, candidate, out=out)

        in_blocks(pool, source, out, *([] if winner is None else [winner]))  # images over CPUs
        self._x_shape, self._winner = x.shape, winner
        return out

    def backward(
        self,
        dout: Array,
        need_dx: bool = True,
        need_grads: bool = True,
        add_to: Array | None = None,
    ) -> Array | None:
        """dout: (N, OH, OW, C) -> dx: (N, H, W, C), or window-major like forward's input.

        add_to: an array of dx's shape to add the routed gradient onto, in place (returned as
        dx), for a caller whose input gradient has other terms (`barenet.nn.fused`)."""
        winner = self._winner
        if winner is None:
            raise RuntimeError(
                "MaxPool2D.backward called without a forward(training=True) before it"
            )
        if not need_dx:
            return None
        xp = array_module(dout)
        k, s = self.kernel_size, self.stride
        _, OH, OW, _ = dout.shape
        if add_to is not None and add_to.shape != self._x_shape:
            raise ValueError(f"MaxPool2D: add_to has shape {add_to.shape}, not {self._x_shape}")
        dx = xp.empty(self._x_shape, dtype=dout.dtype) if add_to is None else add_to
        picks = self._picks(OH, OW, window_major=dx.ndim == 5)
        if dx.ndim == 5:  # window-major, like the input
            target = dx.swapaxes(0, 1)  # (N, k*k, OH, OW, C), a view
            tiled = True
        else:
            _, H, W, _ = self._x_shape
            target = dx
            # Windows that neither overlap nor leave pixels out write every dx entry once.
            tiled = s == k and H == OH * k and W == OW * k
        adding = add_to is not None

        def route(dout: Array, winner: Array, dx: Array) -> None:
            if not (tiled or adding):
                dx.fill(0)
            for t, pick in enumerate(picks):
                if tiled and not adding:  # written in place: no temporary
                    xp.multiply(dout, winner == t, out=dx[pick])
                else:
                    dx[pick] += dout * (winner == t)

        in_blocks(route, dout, winner, target)
        return dx

    def config(self) -> dict[str, Any]:
        return {"type": "MaxPool2D", "kernel_size": self.kernel_size, "stride": self.stride}
