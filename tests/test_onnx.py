"""ONNX export: every shipped model, and a network with every layer, run in onnxruntime give
barenet's own probabilities."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_cli import assert_one_line_error, run

from barenet.errors import BarenetError
from barenet.files.onnxfile import export_onnx
from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.layers import BatchNorm, Dense, DropConnect, Dropout, Flatten, ReLU, Reshape
from barenet.nn.model import Sequential, to_inputs
from barenet.nn.pooling import AvgPool2D, GlobalPool, SqueezeExcite
from barenet.train.ensemble import average_proba, load_ensemble


def _run(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = to_inputs(images).reshape(len(images), 1, *images.shape[1:])
    return session.run(["probabilities"], {"image": x})[0]


@pytest.mark.parametrize("name", ["seed", "cnn", "cnn-ensemble", "record"])
def test_every_shipped_model_runs_in_onnxruntime_as_in_barenet(name, mnist, tmp_path):
    p = run("export", f"models/{name}", str(tmp_path / "m.onnx"))
    assert p.returncode == 0, p.stderr
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"))
    images = mnist.test_images[:1000]
    ours = average_proba(load_ensemble([f"models/{name}"])[0], to_inputs(images))
    theirs = _run(tmp_path / "m.onnx", images)
    np.testing.assert_array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))
    assert np.abs(theirs - ours).max() <= 1e-5
    props = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(props["classes"]) == [str(c) for c in range(10)]
    assert json.loads(props["barenet"])["dataset"]["name"] == "mnist"


def test_every_layer_exports(tmp_path):
    """Strided and padded convolutions, an overlapping pool, BatchNorm on images and on
    features, DropConnect, Dropout, and a second Flatten: the same probabilities."""
    rng = np.random.default_rng(0)
    net = Sequential([
        Reshape((12, 12, 1)),
        Conv2D(1, 3, 3, padding=1, rng=rng), BatchNorm(3), ReLU(),
        Conv2D(3, 5, 3, stride=2, rng=rng), MaxPool2D(3, 1), ReLU(), Dropout(0.3),
        Flatten(), DropConnect(45, 7, 0.4, rng=rng), BatchNorm(7), ReLU(), Flatten(),
        Dense(7, 4, rng=rng),
    ])  # fmt: skip
    for layer in net.layers:  # non-trivial running statistics and BatchNorm parameters
        for arrays in (layer.params, layer.buffers):
            for key in ("gamma", "beta", "running_mean"):
                if key in arrays:
                    arrays[key][...] = rng.uniform(0.5, 1.5, arrays[key].shape)
    images = rng.integers(0, 256, (20, 12, 12)).astype(np.uint8)
    path = export_onnx([net, net], tmp_path / "all.onnx", image_shape=(12, 12),
                       classes=list("abcd"))  # fmt: skip
    np.testing.assert_allclose(_run(path, images), net.predict_proba(to_inputs(images)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_pooling_and_gating_layers_export(tmp_path):
    rng = np.random.default_rng(1)
    net = Sequential([
        Reshape((12, 12, 1)), Conv2D(1, 6, 3, padding=1, rng=rng), ReLU(),
        SqueezeExcite(6, 2, rng=rng), AvgPool2D(2), Conv2D(6, 8, 3, rng=rng), ReLU(),
        GlobalPool("avg+max"), Dense(16, 3, rng=rng),
    ])  # fmt: skip
    for layer in net.layers:
        if isinstance(layer, SqueezeExcite):
            layer.params["b2"][...] = rng.standard_normal(6)
    images = rng.integers(0, 256, (10, 12, 12)).astype(np.uint8)
    path = export_onnx([net], tmp_path / "p.onnx", image_shape=(12, 12))
    np.testing.assert_allclose(_run(path, images), net.predict_proba(to_inputs(images)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_what_cannot_be_exported_is_one_clear_error(tmp_path):
    class Mine:  # a learner's own layer: barenet runs it, ONNX has no operator for it
        params, grads, buffers, decay = {}, {}, {}, ()

        def forward(self, x, training=False):
            return np.tanh(x)

        def config(self):
            return {"type": "Mine"}

    with pytest.raises(BarenetError, match=r"layer 1 \(Mine\)"):
        export_onnx([Sequential([Dense(4, 4), Mine(), Dense(4, 2)])], tmp_path / "x.onnx",
                    image_shape=(2, 2))  # fmt: skip
    assert not (tmp_path / "x.onnx").exists()
    assert_one_line_error(run("export", "models/seed", str(tmp_path / "x.txt")), "end in .onnx")
    assert_one_line_error(run("export", "nothing.npz", str(tmp_path / "x.onnx")), "")
