"""ONNX export: a barenet model or ensemble as one ONNX graph, for onnxruntime, browsers and
Netron (`barenet export MODEL FILE.onnx`).

The graph takes `image`: (N, 1, H, W) float32 pixels in [0, 1] (an image batch the way
image libraries lay it out) and gives `probabilities`: (N, classes), softmax over each model's
scores, averaged over the members of an ensemble. Layer by layer, at inference:
    Dense, DropConnect       Gemm (x W + b; DropConnect's mean network)
    Conv2D                   Conv, weights (k, k, C, F) -> ONNX's (F, C, k, k)
    MaxPool2D                MaxPool;   BatchNorm: BatchNormalization (running statistics)
    AvgPool2D, GlobalPool    AveragePool; GlobalAveragePool and GlobalMaxPool, concatenated
    SqueezeExcite            GlobalAveragePool, Gemm, Relu, Gemm, Sigmoid, Mul
    ReLU                     Relu;      Dropout: nothing (the identity at inference)
    Reshape, Flatten         barenet's images are channels-last (N, H, W, C), ONNX's
                             convolutions channels-first (N, C, H, W): a Reshape to images
                             transposes to channels-first, and a Flatten transposes back
                             first, so that a Dense layer after it reads its inputs in
                             barenet's order.
The class names and the model's metadata travel in the file's metadata_props. Needs the `onnx`
package (`pip install 'barenet[onnx]'`); tests/test_onnx.py runs every shipped model in
onnxruntime against barenet's own predict_proba.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BarenetError
from ..nn.conv import Conv2D, MaxPool2D
from ..nn.layers import BatchNorm, Dense, Dropout, Flatten, ReLU, Reshape
from ..nn.model import Sequential
from ..nn.pooling import AvgPool2D, GlobalPool, SqueezeExcite
from .atomic import atomic_write

OPSET = 17


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise BarenetError(
            "ONNX export needs the onnx package: pip install 'barenet[onnx]'"
        ) from None
    return onnx


def _member_nodes(
    onnx: Any, model: Sequential, prefix: str, image_shape: tuple[int, int]
) -> tuple[list[Any], list[Any], str]:
    """The nodes and weights that compute one model's probabilities from "image"; returns
    (nodes, initializers, name of the probabilities)."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    nodes, weights = [], []
    count = 0

    def name(what: str) -> str:
        nonlocal count
        count += 1
        return f"{prefix}{what}_{count}"

    def const(what: str, value: np.ndarray) -> str:
        n = name(what)
        weights.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # barenet's input rows: the pixels in row-major order (C = 1: NCHW's order too)
    x = node("Reshape", ["image", const("rows", np.array([0, -1], dtype=np.int64))])
    channels_first = False  # x is (N, C, H, W) rather than (N, D)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Reshape) and len(layer.shape) == 3:
            shape = np.array([0, *layer.shape], dtype=np.int64)  # (N, H, W, C)
            x = node("Transpose", [node("Reshape", [x, const("shape", shape)])], perm=[0, 3, 1, 2])
            channels_first = True
        elif isinstance(layer, Flatten):
            if channels_first:  # back to barenet's (H, W, C) order before flattening
                x = node("Transpose", [x], perm=[0, 2, 3, 1])
            x = node("Flatten", [x], axis=1)
            channels_first = False
        elif isinstance(layer, Dense):  # DropConnect too: its mean network
            W = np.asarray(layer.params["W"], dtype=np.float32)
            b = np.asarray(layer.params["b"], dtype=np.float32)
            x = node("Gemm", [x, const("W", W), const("b", b)])
        elif isinstance(layer, Conv2D):
            W = np.asarray(layer.params["W"], dtype=np.float32).transpose(3, 2, 0, 1)
            b = np.asarray(layer.params["b"], dtype=np.float32)
            k, s, p = layer.kernel_size, layer.stride, layer.padding
            x = node("Conv", [x, const("W", W), const("b", b)], kernel_shape=[k, k],
                     strides=[s, s], pads=[p, p, p, p])  # fmt: skip
        elif isinstance(layer, MaxPool2D):
            k, s = layer.kernel_size, layer.stride
            x = node("MaxPool", [x], kernel_shape=[k, k], strides=[s, s])
        elif isinstance(layer, AvgPool2D):
            k = layer.kernel_size
            x = node("AveragePool", [x], kernel_shape=[k, k], strides=[k, k])
        elif isinstance(layer, GlobalPool):
            parts = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}
            pooled = [node(parts[m], [x]) for m in layer.mode.split("+")]
            x = pooled[0] if len(pooled) == 1 else node("Concat", pooled, axis=1)
            x = node("Flatten", [x], axis=1)  # (N, C, 1, 1) -> (N, C): as barenet's
            channels_first = False
        elif isinstance(layer, SqueezeExcite):
            Q = {key: np.asarray(v, dtype=np.float32) for key, v in layer.params.items()}
            mean = node("Flatten", [node("GlobalAveragePool", [x])], axis=1)  # (N, C)
            z = node("Relu", [node("Gemm", [mean, const("W1", Q["W1"]), const("b1", Q["b1"])])])
            g = node("Sigmoid", [node("Gemm", [z, const("W2", Q["W2"]), const("b2", Q["b2"])])])
            gate = node("Reshape", [g, const("gate", np.array([0, -1, 1, 1], dtype=np.int64))])
            x = node("Mul", [x, gate])
        elif isinstance(layer, BatchNorm):
            P, B = layer.params, layer.buffers
            arrays = [P["gamma"], P["beta"], B["running_mean"], B["running_var"]]
            names = [const(n, np.asarray(a, dtype=np.float32))
                     for n, a in zip(("gamma", "beta", "mean", "var"), arrays)]  # fmt: skip
            x = node("BatchNormalization", [x, *names], epsilon=float(layer.eps))
        elif isinstance(layer, ReLU):
            x = node("Relu", [x])
        elif isinstance(layer, Dropout):
            continue  # the identity at inference
        else:
            raise BarenetError(
                f"cannot export layer {i} ({type(layer).__name__}) to ONNX: no ONNX operator "
                "for it here"
            )
    if channels_first:
        raise BarenetError("cannot export a network that ends on images: flatten them first")
    return nodes, weights, node("Softmax", [x], axis=1)


def export_onnx(
    models: Sequence[Sequential],
    path: str | os.PathLike[str],
    *,
    image_shape: tuple[int, int] = (28, 28),
    classes: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `models` (one, or an ensemble's members) as one ONNX graph to `path`, atomically.

    Raises BarenetError for a layer ONNX cannot express here, or without the onnx package."""
    onnx = _onnx()
    helper = onnx.helper
    H, W = image_shape
    if any(m.input_size != H * W for m in models):
        raise BarenetError(f"the models do not read {H}x{W} images")
    C = models[0].num_classes
    nodes, weights, outputs = [], [], []
    for k, model in enumerate(models):
        n, w, out = _member_nodes(onnx, model, f"m{k}_" if len(models) > 1 else "", image_shape)
        nodes += n
        weights += w
        outputs.append(out)
    final = helper.make_node("Mean", outputs, ["probabilities"], name="mean")
    if len(outputs) == 1:
        final = helper.make_node("Identity", outputs, ["probabilities"], name="probabilities")
    graph = helper.make_graph(
        [*nodes, final],
        "barenet",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 1, H, W])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", C])],
        initializer=weights,
    )
    model_proto = helper.make_model(
        graph,
        producer_name="barenet",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="pixels in [0, 1], (N, 1, H, W) -> class probabilities (N, classes)",
    )
    model_proto.ir_version = min(model_proto.ir_version, 9)  # readable by older runtimes
    names = list(classes) or [str(c) for c in range(C)]
    props = {"classes": json.dumps(names), "members": str(len(models)),
             "barenet": json.dumps(metadata or {}, default=str)}  # fmt: skip
    helper.set_model_props(model_proto, props)
    onnx.checker.check_model(model_proto)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(model_proto.SerializeToString())
    return path


def parameters_in(models: Sequence[Sequential]) -> int:
    """How many numbers the graph's weights hold (for the command's report)."""
    return sum(math.prod(p.shape) for m in models for _, p, _ in m.parameters()) + sum(
        math.prod(b.shape) for m in models for _, b in m.buffers()
    )
