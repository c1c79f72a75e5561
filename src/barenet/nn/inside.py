"""Inside a trained network: what each layer makes of one input, and which input pixels decided
a class (the draw page's inside view, `barenet serve`).

activations: the input run through the layers one at a time, at inference, every layer's
    output kept: feature maps (H, W, C) after an image layer, units (D,) after a dense one.
attribution: input x gradient (Shrikumar et al. 2016) of class c's score s_c: pixel i gets
    x_i * ds_c/dx_i, positive where the ink there pushed s_c up, negative where it held it
    down. For a network of ReLUs, max-pools and layers without biases, these add up to s_c
    exactly (s_c is then homogeneous of degree one in x); biases and BatchNorm's shifts keep
    a remainder. The gradient is that of the inference network: BatchNorm with its running
    statistics (a fixed scale and shift per channel), no dropout.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .layers import Array, BatchNorm, DropConnect, Dropout
from .model import Sequential


def activations(model: Sequential, x: Array) -> list[Array]:
    """x: (1, D) -> every layer's output at inference, in order (the last: the scores)."""
    outs = []
    for layer in model.layers:
        x = layer.forward(x)
        outs.append(x)
    return outs


class _InferenceBatchNorm:
    """BatchNorm at inference as a layer that trains: out = x s + t with s = gamma /
    sqrt(running_var + eps) and t = beta - running_mean s; dx = dout s."""

    decay: tuple[str, ...] = ()

    def __init__(self, bn: BatchNorm) -> None:
        P, B = bn.params, bn.buffers
        self.s = P["gamma"] / np.sqrt(B["running_var"] + bn.eps)
        self.t = P["beta"] - B["running_mean"] * self.s
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}

    def forward(self, x: Array, training: bool = False) -> Array:
        return x * self.s + self.t

    def backward(self, dout: Array, need_dx: bool = True, need_grads: bool = True) -> Array:
        return dout * self.s

    def config(self) -> dict[str, Any]:
        return {"type": "InferenceBatchNorm"}


def attribution(model: Sequential, x: Array, c: int) -> np.ndarray:
    """x: (1, D) -> input x gradient of class c's score, (D,) float64 (see the module)."""
    net = copy.deepcopy(model)
    for i, layer in enumerate(net.layers):
        if isinstance(layer, BatchNorm):
            net.layers[i] = _InferenceBatchNorm(layer)
        elif isinstance(layer, Dropout | DropConnect):
            layer.p = 0.0  # the inference network: no masks
    net.fast = True
    scores = net.forward(x, training=True, input_grad=True)
    dscores = np.zeros_like(scores)
    dscores[0, c] = 1.0
    dx = net.backward(dscores, input_grad=True)
    assert dx is not None
    return (np.asarray(x, dtype=np.float64) * dx)[0]
