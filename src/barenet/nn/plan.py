"""The fast plan: how a Sequential's layers run in one training or inference pass.

A network's maths is its layers applied one after the other (`Sequential`, and the plain
functions of `reference.py`). These speed-ups change how neighbouring layers run, never what
they compute, Winograd's convolutions up to float32 rounding (tests/test_fused.py,
tests/test_reference.py and tests/test_winograd.py compare them with the layers run one by one):
  - a Conv2D whose output reaches a k x k, stride-k max-pool through per-channel layers only
    (BatchNorm, ReLU, Dropout) writes that output window-major for the pool
    (`Conv2D.forward(pool=k)`): the same values in another order, which every layer in
    between treats alike;
  - while training, a one-channel Conv2D that is the first layer with parameters, with a
    BatchNorm after it, runs as one pair (`fused.ConvBatchNorm`): BatchNorm's statistics from
    the patches' moments, no pass over the convolution's output;
  - while training, a BatchNorm with the max-pool right after it normalises only the pooled
    values (`fused.BatchNormMaxPool`), in a step where its input is window-major and every
    gamma positive; otherwise the two run apart.
  - at inference, a Conv2D with a BatchNorm after it runs as one convolution, BatchNorm folded
    into its weights (`fused.fold_batchnorm`), and a ReLU after the pair in place on its output;
  - at inference, a Conv2D without a BatchNorm after it runs with the ReLU after it, if any,
    in place on its output (`InferenceConvStep`);
  - a wide 3x3 Conv2D (stride 1, "same" padding) runs by Winograd's F(4x4, 3x3) (`winograd.py`):
    at inference, and while training its forward pass and both gradients
    (`WinogradTrainStep`, with the ReLU after it, if any, taken as the outputs leave their
    tiles): a quarter of the multiplications, the same outputs and gradients to float32
    rounding (tests/test_winograd.py compares them with the plain layers).

`plan(layers, training, input_grad)` returns the steps of one pass. Every step runs layers
[start, stop) with the layer interface: forward(x, training) and backward(dout, need_dx,
need_grads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..backend.arrays import array_module
from .conv import Conv2D, MaxPool2D
from .fused import BatchNormMaxPool, ConvBatchNorm, fold_batchnorm
from .layers import Array, BatchNorm, Dropout, Layer, ReLU, column_sums
from .winograd import (
    INFERENCE_BLOCK_BYTES,
    KEEP_TILES_BYTES,
    kept_tiles_shape,
    winograd_forward,
    winograd_input_gradient,
    winograd_weight_gradient,
)
from .winograd import applies as winograd_applies
from .winograd import plain as winograd_plain


class Step(Protocol):
    """Runs layers [start, stop) of a network as one, with the layer interface."""

    start: int
    stop: int

    def forward(self, x: Array, training: bool) -> Array: ...

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None: ...


class LayerStep:
    """One layer, run as it is; a Conv2D may write its output window-major for a pool."""

    def __init__(self, layers: Sequence[Layer], i: int, pool: int = 0) -> None:
        self.layer, self.start, self.stop, self.pool = layers[i], i, i + 1, pool

    def forward(self, x: Array, training: bool) -> Array:
        if self.pool:
            assert isinstance(self.layer, Conv2D)
            return self.layer.forward(x, training, pool=self.pool)
        return self.layer.forward(x, training)

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None:
        return self.layer.backward(dout, need_dx=need_dx, need_grads=need_grads)


class ConvBatchNormStep:
    """A one-channel Conv2D (layer `start`) and its BatchNorm, trained as one pair. Nothing
    needs the gradient of the pair's input (it is the first layer with parameters)."""

    def __init__(self, layers: Sequence[Layer], i: int, pool: int = 0) -> None:
        conv, bn = layers[i], layers[i + 1]
        assert isinstance(conv, Conv2D) and isinstance(bn, BatchNorm)
        self.pair, self.start, self.stop, self.pool = ConvBatchNorm(conv, bn), i, i + 2, pool

    def forward(self, x: Array, training: bool) -> Array:
        return self.pair.forward(x, pool=self.pool)

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None:
        if need_dx:
            raise RuntimeError("the input gradient needs a forward pass with input_grad=True")
        self.pair.backward(dout)
        return None


class BatchNormPoolStep:
    """A BatchNorm (layer `start`) and the max-pool after it: one fused step where its input
    is window-major for the pool and every gamma positive, else the two layers apart."""

    def __init__(self, layers: Sequence[Layer], i: int) -> None:
        bn, pool = layers[i], layers[i + 1]
        assert isinstance(bn, BatchNorm) and isinstance(pool, MaxPool2D)
        self.bn, self.pool, self.start, self.stop = bn, pool, i, i + 2
        self.fused: BatchNormMaxPool | None = None  # this step's pair, when it applies

    def forward(self, x: Array, training: bool) -> Array:
        self.fused = None
        if BatchNormMaxPool.applies(self.bn, self.pool, x):
            self.fused = BatchNormMaxPool(self.bn, self.pool)
            return self.fused.forward(x)
        return self.pool.forward(self.bn.forward(x, training), training)

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None:
        if self.fused is not None:
            return self.fused.backward(dout, need_dx=need_dx, need_grads=need_grads)
        dmid = self.pool.backward(dout)
        assert dmid is not None  # a max-pool always passes its gradient on
        return self.bn.backward(dmid, need_dx=need_dx, need_grads=need_grads)


class FoldedConvStep:
    """At inference, a Conv2D (layer `start`), its BatchNorm and, with relu, the ReLU after
    them: one convolution with BatchNorm folded into its weights, the ReLU applied in place
    on the convolution's output (a new array of its own)."""

    def __init__(self, layers: Sequence[Layer], i: int, relu: bool, pool: int = 0) -> None:
        conv, bn = layers[i], layers[i + 1]
        assert isinstance(conv, Conv2D) and isinstance(bn, BatchNorm)
        self.conv, self.bn, self.relu, self.pool = conv, bn, relu, pool
        self.start, self.stop = i, i + 3 if relu else i + 2

    def forward(self, x: Array, training: bool) -> Array:
        if training:
            raise RuntimeError("FoldedConvStep is for inference only")
        return inference_conv(fold_batchnorm(self.conv, self.bn), x, self.relu, self.pool)

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None:
        raise RuntimeError("FoldedConvStep is for inference only: no backward pass")


class WinogradTrainStep:
    """While training, a wide 3x3 Conv2D (layer `start`; `winograd.applies`) and the ReLU after
    it, if any: its output and both its gradients by Winograd's F(4x4, 3x3), the tiles covering
    images of any size (the last row and column of tiles reaching beyond a side that is not a
    multiple of 4); the ReLU taken as the outputs leave their tiles, and its gradient as
    ReLU.backward takes it, dout * [out > 0], before the convolution's. The same gradients to
    float32 rounding (tests/test_winograd.py). The forward pass keeps its input's transformed
    tiles for the weight gradient (up to `winograd.KEEP_TILES_BYTES`), which then need not
    make them again."""

    def __init__(self, layers: Sequence[Layer], i: int, pool: int = 0) -> None:
        conv = layers[i]
        assert isinstance(conv, Conv2D)
        relu = layers[i + 1] if i + 1 < len(layers) else None
        self.relu = relu if isinstance(relu, ReLU) else None
        self.conv, self.pool, self.start = conv, pool, i
        self.stop = i + 2 if self.relu else i + 1
        self.tiles = False  # whether the last forward pass ran by Winograd
        self._x: Array | tuple[int, ...] | None = None  # its input (its shape where V is kept)
        self._V: Array | None = None  # the input's transformed tiles, where kept
        self._out: Array | None = None  # the output after the ReLU, for the ReLU's gradient

    def forward(self, x: Array, training: bool) -> Array:
        self.tiles = training
        if not self.tiles:
            out = self.conv.forward(x, training, pool=self.pool)
            return self.relu.forward(out, training) if self.relu else out
        dtype = self.conv.params["W"].dtype
        shape = kept_tiles_shape(x.shape, self.conv.out_channels, dtype.itemsize)
        if math.prod(shape) * dtype.itemsize <= KEEP_TILES_BYTES:
            self._V = self.conv.work("winograd V", shape, dtype, np, keep=True)
            self._x = x.shape
        else:  # the input in the layer's own array (the layer below may reuse its own)
            self._V = None
            self._x = self.conv.work("winograd x", x.shape, x.dtype, array_module(x), keep=True)
            self._x[...] = x
        out = winograd_forward(self.conv, x, pool=self.pool, relu=bool(self.relu), tiles=self._V)
        self._out = out if self.relu else None
        return out

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None:
        if not self.tiles:
            through = self.relu.backward(dout) if self.relu else dout
            assert through is not None
            return self.conv.backward(through, need_dx=need_dx, need_grads=need_grads)
        assert self._x is not None
        if self._out is not None:  # the ReLU's gradient dout * [out > 0], as ReLU.backward
            mask = self._out > 0  # takes it, in an array kept from step to step
            kept = self.conv.work("relu dout", dout.shape, dout.dtype, array_module(dout), True)
            dout = np.multiply(dout, mask, out=kept)
        dy = winograd_plain(dout)  # (N, H, W, F)
        if need_grads:
            self.conv.grads["W"][...] = winograd_weight_gradient(self._x, dy, self._V)
            self.conv.grads["b"][...] = column_sums(dy.reshape(-1, dy.shape[3]))
        return winograd_input_gradient(self.conv, dy) if need_dx else None


class InferenceConvStep:
    """At inference, a Conv2D (layer `start`) and, with relu, the ReLU after it, applied in
    place on the convolution's output (a new array of its own); a wide 3x3 convolution by
    Winograd's F(4x4, 3x3) (`winograd.applies`)."""

    def __init__(self, layers: Sequence[Layer], i: int, relu: bool, pool: int = 0) -> None:
        conv = layers[i]
        assert isinstance(conv, Conv2D)
        self.conv, self.relu, self.pool = conv, relu, pool
        self.start, self.stop = i, i + 2 if relu else i + 1

    def forward(self, x: Array, training: bool) -> Array:
        if training:
            raise RuntimeError("InferenceConvStep is for inference only")
        return inference_conv(self.conv, x, self.relu, self.pool)

    def backward(self, dout: Array, need_dx: bool, need_grads: bool) -> Array | None:
        raise RuntimeError("InferenceConvStep is for inference only: no backward pass")


def inference_conv(conv: Conv2D, x: Array, relu: bool, pool: int) -> Array:
    """conv(x) at inference, relu(conv(x)) with relu: by Winograd's F(4x4, 3x3) where it
    applies, else by `Conv2D.forward`; its output window-major for a pool as there."""
    if winograd_applies(conv):
        return winograd_forward(conv, x, pool=pool, relu=relu, block_bytes=INFERENCE_BLOCK_BYTES)
    out = conv.forward(x, pool=pool)
    if relu:
        array_module(out).maximum(out, 0, out=out)
    return out


def first_with_params(layers: Sequence[Layer]) -> int:
    """The index of the first layer with parameters (0 if none has any)."""
    return next((i for i, layer in enumerate(layers) if layer.params), 0)


def pooled_convolutions(layers: Sequence[Layer]) -> dict[int, int]:
    """{i: k} for every Conv2D i whose output reaches a k x k max-pool with stride k through
    per-channel layers only (BatchNorm, ReLU, Dropout)."""
    pools = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, MaxPool2D) and layer.stride == layer.kernel_size > 1:
            j = i - 1
            while j >= 0 and isinstance(layers[j], BatchNorm | ReLU | Dropout):
                j -= 1
            if j >= 0 and isinstance(layers[j], Conv2D):
                pools[j] = layer.kernel_size
    return pools


def plan(layers: Sequence[Layer], training: bool, input_grad: bool = False) -> list[Step]:
    """The steps of one forward pass over `layers` (see the module's docstring).

    input_grad=True (with training): the backward pass may ask for the gradient of the input,
    so the first convolution and its BatchNorm run as separate layers."""
    pools = pooled_convolutions(layers)
    first = first_with_params(layers)
    steps: list[Step] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if (
            training and not input_grad and i == first and isinstance(layer, Conv2D)
            and layer.in_channels == 1 and isinstance(following, BatchNorm)
        ):  # fmt: skip
            steps.append(ConvBatchNormStep(layers, i, pools.get(i, 0)))
        elif training and isinstance(layer, Conv2D) and winograd_applies(layer):
            steps.append(WinogradTrainStep(layers, i, pools.get(i, 0)))
        elif training and isinstance(layer, BatchNorm) and isinstance(following, MaxPool2D):
            steps.append(BatchNormPoolStep(layers, i))
        elif not training and isinstance(layer, Conv2D) and isinstance(following, BatchNorm):
            relu = i + 2 < len(layers) and isinstance(layers[i + 2], ReLU)
            steps.append(FoldedConvStep(layers, i, relu, pools.get(i, 0)))
        elif not training and isinstance(layer, Conv2D):
            steps.append(InferenceConvStep(layers, i, isinstance(following, ReLU), pools.get(i, 0)))
        else:
            steps.append(LayerStep(layers, i, pools.get(i, 0)))
        i = steps[-1].stop
    return steps
