"""Sequential: a stack of layers applied in order, with backprop in the reverse order."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..backend.arrays import array_module, to_numpy
from .config import layer_from_config
from .conv import Conv2D, MaxPool2D
from .layers import Array, Dense, DropConnect, Dropout, Flatten, Layer, ReLU, Reshape
from .losses import softmax, softmax_cross_entropy
from .plan import Step, first_with_params, plan
from .pooling import AvgPool2D, GlobalPool
from .reference import ReferenceStep


def to_inputs(images: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """images: (N, 28, 28) uint8 -> network inputs (N, 784) in [0, 1], `dtype`.

    Any other dtype is taken as features already scaled: (N, ...) -> (N, D) of `dtype`."""
    if images.dtype != np.uint8:
        return np.asarray(images.reshape(len(images), -1), dtype=dtype)
    return np.multiply(images.reshape(len(images), -1), dtype(1 / 255), dtype=dtype)


# Working memory of one inference batch: enough for large, efficient matrix products, and a
# peak resident memory well under 1 GB for every shipped model and ensemble.
INFERENCE_BYTES = 192 * 2**20


class Sequential:
    """A network made of `layers`, applied in order.

    Arguments:
        layers: the layers; the first one receives inputs of shape (N, D).
    """

    def __init__(self, layers: Sequence[Layer], *, fast: bool = True) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = list(layers)
        self.fast = fast  # False: every layer runs its plain maths from `reference.py`
        self._steps: list[Step] = []  # how the last forward pass ran the layers

    def forward(self, x: Array, training: bool = False, input_grad: bool = False) -> Array:
        """x: (N, D) inputs -> scores: (N, C) unnormalised class scores.

        training=True: Dropout and DropConnect draw masks, BatchNorm uses (and updates) batch
        statistics, and every layer keeps what its backward pass needs. input_grad=True (with
        training): the backward pass after it may ask for the gradient of the input.

        The layers run in order, each as a step of the fast plan (`plan.py`: a few
        neighbouring layers run as one, with the same function and gradients), or, with
        fast=False, each through its plain maths (`reference.py`)."""
        if self.fast:
            self._steps = plan(self.layers, training, input_grad)
        else:
            self._steps = [ReferenceStep(self.layers, i) for i in range(len(self.layers))]
        for step in self._steps:
            x = step.forward(x, training)
        return x

    def backward(
        self, dscores: Array, input_grad: bool = False, param_grads: bool = True
    ) -> Array | None:
        """Backpropagate dL/dscores (N, C) through every layer, filling each layer's grads.

        input_grad=False: no gradient is computed for the network's input, nor for what the
        first layer with parameters reads: nothing uses them. Layers before that one (a
        Reshape, an input Dropout) have no parameters and are not visited at all; returns None.
        input_grad=True (after a forward with input_grad=True): returns dL/dx, the shape of
        the forward's input x (virtual adversarial training reads it: `barenet.adversarial`).
        param_grads=False (with input_grad=True): the weight gradients' products are skipped
        (about a third of the pass) and the layers' grads may hold anything afterwards.
        """
        if not (input_grad or param_grads):
            raise ValueError("a backward pass needs input_grad or param_grads (or both)")
        first = 0 if input_grad else first_with_params(self.layers)
        dout = dscores
        for step in reversed(self._steps):
            if step.stop <= first:
                break
            need_dx = input_grad or step.start > first
            dx = step.backward(dout, need_dx, param_grads)
            if need_dx:
                assert dx is not None
                dout = dx
        return dout if input_grad else None

    def predict_proba(
        self,
        x: Array,
        batch_size: int | None = None,
        temperature: float = 1.0,
        progress: Callable[[int], object] | None = None,
    ) -> Array:
        """x: (N, D) -> class probabilities softmax(z / T): (N, C), rows sum to 1; computed in
        batches of `batch_size` examples (default: as many as `INFERENCE_BYTES` of working
        memory hold). A temperature T > 1 softens them (a distillation teacher's targets).
        progress(n), if given, is called after each batch of n examples (a progress bar's
        update: a `record` member takes seconds per thousand digits)."""
        xp = array_module(x)
        B = batch_size or self.inference_batch()
        chunks = []
        for i in range(0, x.shape[0], B):
            chunks.append(softmax(self.forward(x[i : i + B]) / temperature))
            if progress is not None:
                progress(len(chunks[-1]))
        return xp.concatenate(chunks) if chunks else xp.zeros((0, self.num_classes))

    def predict(self, x: Array, batch_size: int | None = None) -> Array:
        """x: (N, D) -> predicted classes: (N,), int64 (batches as in `predict_proba`)."""
        xp = array_module(x)
        B = batch_size or self.inference_batch()
        chunks = [self.forward(x[i : i + B]).argmax(axis=1) for i in range(0, x.shape[0], B)]
        return xp.concatenate(chunks) if chunks else xp.zeros(0, dtype=np.int64)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy and accuracy on (x, y), with inference behaviour (no dropout,
        BatchNorm's running statistics). x as in `fit`."""
        inputs, y = to_inputs(np.asarray(x)), np.asarray(y).astype(np.int64)
        total, correct, B = 0.0, 0, self.inference_batch()
        for i in range(0, len(inputs), B):
            scores = self.forward(inputs[i : i + B])
            total += softmax_cross_entropy(scores, y[i : i + B])[0] * len(scores)
            correct += int((scores.argmax(axis=1) == y[i : i + B]).sum())
        return {"loss": total / max(len(inputs), 1), "accuracy": correct / max(len(inputs), 1)}

    def inference_bytes(self) -> int:
        """Bytes of working memory one example needs in a forward pass at inference: the most
        any layer holds at once, its input, its output and, for a convolution, its padded
        input and its patches (k*k*C values per output position; a blocked convolution,
        `Conv2D.blocked`, unfolds a few images' patches at a time, in a fixed few MB, as a
        Winograd convolution, `winograd.py`, transforms a few images' tiles at a time)."""
        item = next((p.itemsize for _, p, _ in self.parameters()), 4)
        shape: tuple[int, ...] = (self.input_size,)
        most = 0
        for layer in self.layers:
            size = math.prod(shape)
            extra = 0
            if isinstance(layer, Reshape):
                shape = layer.shape
            elif isinstance(layer, Flatten):
                shape = (size,)
            elif isinstance(layer, Dense):
                shape = (layer.out_features,)
            elif isinstance(layer, AvgPool2D):
                H, W, C = shape
                shape = (H // layer.kernel_size, W // layer.kernel_size, C)
            elif isinstance(layer, GlobalPool):
                shape = (shape[-1] * (2 if layer.mode == "avg+max" else 1),)
            elif isinstance(layer, Conv2D | MaxPool2D):
                H, W, C = shape
                k, s = layer.kernel_size, layer.stride
                p = layer.padding if isinstance(layer, Conv2D) else 0
                OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
                if isinstance(layer, Conv2D):
                    shape = (OH, OW, layer.out_channels)
                    extra = (H + 2 * p) * (W + 2 * p) * C  # the padded input
                    if not layer.blocked(array_module(layer.params["W"])):
                        extra += OH * OW * k * k * C  # all its patches at once
                else:
                    shape = (OH, OW, C)
            most = max(most, size + math.prod(shape) + extra)
        return most * item

    def inference_batch(self, budget: int | None = None) -> int:
        """Examples per batch at inference so that the working arrays fit `budget` bytes
        (default INFERENCE_BYTES): large batches keep the matrix products efficient, and
        a wide network's patches stay within memory."""
        return max(1, (budget or INFERENCE_BYTES) // self.inference_bytes())

    @property
    def xp(self) -> ModuleType:
        """The array module that holds the parameters: numpy, or cupy for a network on a GPU
        (its inputs must be that module's arrays too)."""
        return next((array_module(p) for _, p, _ in self.parameters()), np)

    def to(self, xp: ModuleType) -> Sequential:
        """This network with its arrays held by `xp`: numpy, or cupy to run it on a GPU (and
        numpy to bring it back). A new network, with the same weights, running statistics and
        random layers' generators; itself when its arrays are there already."""
        if xp is self.xp:
            return self
        dtype = next((p.dtype for _, p, _ in self.parameters()), np.dtype(np.float32))
        moved = Sequential.from_config(self.config(), dtype=dtype, xp=xp)
        moved.fast = self.fast
        for (_, dst, _), (_, src, _) in zip(moved.parameters(), self.parameters(), strict=True):
            dst[...] = xp.asarray(to_numpy(src))
        for (_, dst), (_, src) in zip(moved.buffers(), self.buffers(), strict=True):
            dst[...] = xp.asarray(to_numpy(src))
        for new, old in zip(moved.layers, self.layers, strict=True):
            if isinstance(old, Dropout | DropConnect) and isinstance(new, Dropout | DropConnect):
                new.rng = old.rng  # their masks' generators, on the CPU
        return moved

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
