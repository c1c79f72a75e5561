"""Sequential: a stack of layers applied in order, with backprop in the reverse order."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..backend.arrays import array_module
from .config import layer_from_config
from .conv import Conv2D, MaxPool2D
from .fused import BatchNormMaxPool, ConvBatchNorm
from .layers import Array, BatchNorm, Dense, Dropout, Layer, ReLU
from .losses import softmax, softmax_cross_entropy


def to_inputs(images: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """images: (N, 28, 28) uint8 -> network inputs (N, 784) in [0, 1], `dtype`.

    Any other dtype is taken as features already scaled: (N, ...) -> (N, D) of `dtype`."""
    if images.dtype != np.uint8:
        return np.asarray(images.reshape(len(images), -1), dtype=dtype)
    return np.multiply(images.reshape(len(images), -1), dtype(1 / 255), dtype=dtype)


class Sequential:
    """A network made of `layers`, applied in order.

    Arguments:
        layers: the layers; the first one receives inputs of shape (N, D).
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = list(layers)
        self._pair: tuple[int, ConvBatchNorm] | None = None  # the last forward's fused pair
        self._bn_pools: dict[int, BatchNormMaxPool] = {}  # {BatchNorm's index: pair} (same)

    def forward(self, x: Array, training: bool = False, input_grad: bool = False) -> Array:
        """x: (N, D) inputs -> scores: (N, C) unnormalised class scores.

        training=True: Dropout and DropConnect draw masks, BatchNorm uses (and updates) batch
        statistics, and every layer keeps what its backward pass needs. A first layer that is a
        one-channel Conv2D with a BatchNorm after it trains as one pair (`barenet.nn.fused`): the
        same function and gradients, without passes over the convolution's output. A Conv2D
        whose output reaches a max-pool writes it window-major for that pool (`Conv2D.forward`,
        `_pooled_convolutions`): the same values in another order. A BatchNorm that receives
        such an output, with the pool right after it, normalises only the pooled values
        (`barenet.nn.fused.BatchNormMaxPool`, while its gammas are positive). Convolutions and
        BatchNorms keep their large working arrays from one training step to the next
        (`Conv2D.work`); a forward pass at inference gives them back. input_grad=True (with
        training): the backward pass after it may ask for the gradient of the input, so the
        first convolution and its BatchNorm run as separate layers."""
        self._pair = self._conv_batchnorm() if training and not input_grad else None
        self._bn_pools = {}
        pools = self._pooled_convolutions()
        for i, layer in enumerate(self.layers):
            following = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if self._pair is not None and i == self._pair[0]:
                x = self._pair[1].forward(x, pool=pools.get(i, 0))
            elif self._pair is not None and i == self._pair[0] + 1:
                continue  # the pair's BatchNorm: done
            elif i - 1 in self._bn_pools:
                continue  # the max-pool of a BatchNormMaxPool: done
            elif (
                training and isinstance(layer, BatchNorm) and isinstance(following, MaxPool2D)
                and BatchNormMaxPool.applies(layer, following, x)
            ):  # fmt: skip
                self._bn_pools[i] = BatchNormMaxPool(layer, following)
                x = self._bn_pools[i].forward(x)
            elif isinstance(layer, Conv2D):
                x = layer.forward(x, training, pool=pools.get(i, 0))
            else:
                x = layer.forward(x, training)
        return x

    def _pooled_convolutions(self) -> dict[int, int]:
        """{i: k} for every Conv2D i whose output reaches a k x k max-pool with stride k
        through per-channel layers only (BatchNorm, ReLU, Dropout): it may write its output
        window-major for that pool (`Conv2D.forward`), which every layer in between treats
        alike, whatever the order of its rows."""
        pools = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, MaxPool2D) and layer.stride == layer.kernel_size > 1:
                j = i - 1
                while j >= 0 and isinstance(self.layers[j], BatchNorm | ReLU | Dropout):
                    j -= 1
                if j >= 0 and isinstance(self.layers[j], Conv2D):
                    pools[j] = layer.kernel_size
        return pools

    def _first_with_params(self) -> int:
        return next((i for i, layer in enumerate(self.layers) if layer.params), 0)

    def _conv_batchnorm(self) -> tuple[int, ConvBatchNorm] | None:
        """(i, pair) if layers i and i + 1 are a one-channel Conv2D, the first layer with
        parameters (nothing needs its input gradient), and a BatchNorm; else None."""
        i = self._first_with_params()
        conv, bn = self.layers[i], self.layers[i + 1] if i + 1 < len(self.layers) else None
        if isinstance(conv, Conv2D) and conv.in_channels == 1 and isinstance(bn, BatchNorm):
            return i, ConvBatchNorm(conv, bn)
        return None

    def backward(
        self, dscores: Array, input_grad: bool = False, param_grads: bool = True
    ) -> Array | None:
        """Backpropagate dL/dscores (N, C) through every layer, filling each layer's grads.

        input_grad=False: no gradient is computed for the network's input, nor for what the
        first layer with parameters reads: nothing uses them. Layers before that one (a
        Reshape, an input Dropout) have no parameters and are not visited at all; returns None.
        input_grad=True (after a forward with input_grad=True): returns dL/dx, the shape of
        the forward's input x (virtual adversarial training reads it: `barenet.train.adversarial`).
        param_grads=False (with input_grad=True): the weight gradients' products are skipped
        (about a third of the pass) and the layers' grads may hold anything afterwards.
        """
        if input_grad and self._pair is not None:
            raise RuntimeError("the input gradient needs a forward pass with input_grad=True")
        if not (input_grad or param_grads):
            raise ValueError("a backward pass needs input_grad or param_grads (or both)")
        first = 0 if input_grad else self._first_with_params()
        dout = dscores
        i = len(self.layers) - 1
        while i >= first:
            if self._pair is not None and i == self._pair[0] + 1:
                self._pair[1].backward(dout)  # both layers of the pair; they start at `first`
                return None
            layer: Layer | BatchNormMaxPool = self.layers[i]
            if i - 1 in self._bn_pools:  # a BatchNorm (i - 1) and its max-pool (i) as one
                i -= 1
                layer = self._bn_pools[i]
            need_dx = input_grad or i > first
            dx = layer.backward(dout, need_dx=need_dx, need_grads=param_grads)
            if need_dx:
                assert dx is not None
                dout = dx
            i -= 1
        return dout if input_grad else None

    def predict_proba(self, x: Array, batch_size: int = 2000) -> Array:
        """x: (N, D) -> class probabilities: (N, C), rows sum to 1; computed in batches."""
        xp = array_module(x)
        chunks = [softmax(self.forward(x[i : i + batch_size]))
                  for i in range(0, x.shape[0], batch_size)]  # fmt: skip
        return xp.concatenate(chunks) if chunks else xp.zeros((0, self.num_classes))

    def predict(self, x: Array, batch_size: int = 2000) -> Array:
        """x: (N, D) -> predicted classes: (N,), int64."""
        xp = array_module(x)
        chunks = [
            self.forward(x[i : i + batch_size]).argmax(axis=1)
            for i in range(0, x.shape[0], batch_size)
        ]
        return xp.concatenate(chunks) if chunks else xp.zeros(0, dtype=np.int64)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy and accuracy on (x, y), with inference behaviour (no dropout,
        BatchNorm's running statistics). x as in `fit`."""
        inputs, y = to_inputs(np.asarray(x)), np.asarray(y).astype(np.int64)
        total, correct = 0.0, 0
        for i in range(0, len(inputs), 2000):
            scores = self.forward(inputs[i : i + 2000])
            total += softmax_cross_entropy(scores, y[i : i + 2000])[0] * len(scores)
            correct += int((scores.argmax(axis=1) == y[i : i + 2000]).sum())
        return {"loss": total / max(len(inputs), 1), "accuracy": correct / max(len(inputs), 1)}

    def parameters(self) -> Iterator[tuple[str, Array, Array]]:
        """(name, param, grad) for every trainable array, named "layers.<i>.<key>"."""
        for i, layer in enumerate(self.layers):
            for key, p in layer.params.items():
                yield f"layers.{i}.{key}", p, layer.grads[key]

    def buffers(self) -> Iterator[tuple[str, Array]]:
        """(name, buffer) for every non-trainable saved array (BatchNorm's running statistics),
        named "layers.<i>.<key>" like the parameters."""
        for i, layer in enumerate(self.layers):
            for key, b in layer.buffers.items():
                yield f"layers.{i}.{key}", b

    def decayed(self) -> set[str]:
        """Names of the params the L2 penalty applies to (weights, not biases)."""
        return {f"layers.{i}.{k}" for i, layer in enumerate(self.layers) for k in layer.decay}

    @property
    def num_classes(self) -> int:
        for layer in reversed(self.layers):
            if isinstance(layer, Dense):  # DropConnect included
                return layer.out_features
        raise ValueError("the network has no Dense layer to tell its number of classes")

    @property
    def input_size(self) -> int:
        """D, the length of each flat input row the network reads."""
        for layer in self.layers:
            config = layer.config()
            if "in_features" in config:
                return int(config["in_features"])
            if config["type"] == "Reshape":
                return math.prod(config["shape"])
            if config["type"] not in ("Dropout", "Flatten"):
                break
        raise ValueError("the network's first layers do not tell its input size")

    def num_params(self) -> int:
        return sum(int(p.size) for _, p, _ in self.parameters())

    def config(self) -> list[dict[str, Any]]:
        return [layer.config() for layer in self.layers]

    @classmethod
    def from_config(
        cls, config: list[dict[str, Any]], *, dtype: Any = np.float32, xp: ModuleType = np
    ) -> Sequential:
        """Rebuild a network (parameters zero) from `config()`; ValueError if it is invalid."""
        if not isinstance(config, list) or not config:
            raise ValueError("the architecture must be a non-empty list of layers")
        for c in config:
            if not isinstance(c, dict):
                raise ValueError(f"each layer must be a JSON object, not {c!r}")
        return cls([layer_from_config(c, dtype=dtype, xp=xp) for c in config])


def mlp(
    sizes: Sequence[int],
    *,
    rng: np.random.Generator,
    init: str = "he",
    dtype: Any = np.float32,
    xp: ModuleType = np,
) -> Sequential:
    """A fully connected ReLU network: sizes (D, H1, ..., C) -> Dense, ReLU, ..., Dense."""
    if len(sizes) < 2:
        raise ValueError("an MLP needs at least an input size and an output size")
    layers: list[Layer] = []
    for i, (d, h) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(d, h, rng=rng, init=init, dtype=dtype, xp=xp))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Sequential(layers)
