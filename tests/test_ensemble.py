"""Ensembles: averaged probabilities, member discovery, and the CLI over several models."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import barenet.backend.threads as threads_module
from barenet.backend import blas
from barenet.errors import BarenetError, ModelFileError
from barenet.files.modelfile import resolve_all, save_model
from barenet.nn.conv import Conv2D
from barenet.nn.layers import Dense, ReLU, Reshape
from barenet.nn.model import Sequential, mlp
from barenet.nn.pooling import GlobalPool
from barenet.train import ensemble
from barenet.train.ensemble import average_proba, load_ensemble, members_proba
from barenet.train.loop import to_inputs, train
from barenet.train.recipes import Recipe

META = {"dataset": {"name": "mnist", "classes": [str(c) for c in range(10)]}}


def _net(seed, hidden=8):
    return mlp([784, hidden, 10], rng=np.random.default_rng(seed))


def test_average_proba_is_the_mean_of_the_members():
    nets = [_net(s) for s in range(3)]
    x = np.random.default_rng(9).random((5, 784), dtype=np.float32)
    expected = np.mean([n.predict_proba(x) for n in nets], axis=0)
    np.testing.assert_allclose(average_proba(nets, x), expected, rtol=1e-6)
    np.testing.assert_allclose(average_proba(nets, x).sum(axis=1), 1, rtol=1e-6)


def test_progress_counts_every_image_of_every_member_and_changes_nothing():
    nets = [_net(s) for s in range(3)]
    x = np.random.default_rng(9).random((23, 784), dtype=np.float32)
    seen: list[int] = []
    for net in nets:  # a few small batches per member, sized as inference sizes them
        net.inference_batch = lambda budget=None: 10  # type: ignore[method-assign]
    proba = average_proba(nets, x, progress=seen.append)
    assert seen == [10, 10, 3] * 3
    np.testing.assert_array_equal(proba, average_proba(nets, x))


def _conv_net(seed):
    """A small convolutional net whose second convolution is wide enough for Winograd's
    F(4x4, 3x3), blocks in lanes (`blas.in_lanes`) when a member runs alone."""
    rng = np.random.default_rng(seed)
    return Sequential([Reshape((28, 28, 1)), Conv2D(1, 64, 3, padding=1, rng=rng), ReLU(),
                       Conv2D(64, 64, 3, padding=1, rng=rng), ReLU(), GlobalPool("avg+max"),
                       Dense(128, 10, rng=rng)])  # fmt: skip


def _watch_threads(monkeypatch) -> list[int]:
    """The threads() every member thread is given, in order, from now on."""
    given: list[int] = []
    original = threads_module.threads

    def watched() -> int:
        n = original()
        if threading.current_thread().name.startswith("barenet-member"):
            given.append(n)
        return n

    monkeypatch.setattr(threads_module, "threads", watched)
    monkeypatch.setattr(blas, "threads", watched)
    return given


def test_members_side_by_side_give_what_they_give_one_after_the_other(monkeypatch):
    nets = [_conv_net(s) for s in range(3)]
    x = np.random.default_rng(9).random((9, 784), dtype=np.float32)
    monkeypatch.setattr(ensemble, "threads", lambda: 1)  # one after the other, lanes inside
    alone = members_proba(nets, x)
    names: set[str] = set()
    monkeypatch.setattr(ensemble, "threads", lambda: 2)  # two side by side
    given = _watch_threads(monkeypatch)
    side = members_proba(nets, x, progress=lambda n: names.add(threading.current_thread().name))
    assert len(names) == 2 and all(n.startswith("barenet-member") for n in names)
    assert given[0] == 1  # one core each while two run: no lanes within their convolutions
    for a, b in zip(alone, side, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert [p.shape for p in side] == [(9, 10)] * 3
    mean = average_proba(nets, x)
    np.testing.assert_array_equal(mean, (side[0] + side[1] + side[2]) / 3)


def test_the_last_member_running_gets_every_core(monkeypatch):
    # two quick members, then a slow one (a batch per image) that ends alone
    nets = [_net(0), _net(1), _conv_net(2)]
    nets[2].inference_batch = lambda budget=None: 1  # type: ignore[method-assign]
    x = np.random.default_rng(9).random((9, 784), dtype=np.float32)
    monkeypatch.setattr(ensemble, "threads", lambda: 2)
    given = _watch_threads(monkeypatch)
    side = members_proba(nets, x)
    assert given[-1] == 2  # its convolutions' lanes on both cores again
    monkeypatch.setattr(ensemble, "threads", lambda: 1)
    for a, b in zip(members_proba(nets, x), side, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_error_in_one_member_stops_the_others(monkeypatch):
    nets = [_conv_net(s) for s in range(2)]
    for net in nets:
        net.inference_batch = lambda budget=None: 1  # type: ignore[method-assign]

    def broken(x, training=False, input_grad=False):
        raise ValueError("member 2 is broken")

    nets[1].forward = broken  # type: ignore[method-assign]
    monkeypatch.setattr(ensemble, "threads", lambda: 2)
    done: list[int] = []
    x = np.random.default_rng(9).random((200, 784), dtype=np.float32)
    with pytest.raises(ValueError, match="member 2 is broken"):
        members_proba(nets, x, progress=done.append)
    assert len(done) < 200  # member 1 stopped after the batch it was in
    assert not [t for t in threading.enumerate() if t.name.startswith("barenet-member")]


def test_resolve_all_finds_members_in_order(tmp_path):
    for k in (1, 2, 10):
        save_model(tmp_path / f"member-{k}" / "model.npz", _net(k), META)
    assert [p.parent.name for p in resolve_all(tmp_path)] == ["member-1", "member-2", "member-10"]
    assert resolve_all(tmp_path / "member-2") == [tmp_path / "member-2" / "model.npz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="no model.npz"):
        resolve_all(tmp_path / "empty")


def test_members_must_agree(tmp_path):
    save_model(tmp_path / "a.npz", _net(0), META)
    save_model(tmp_path / "b.npz", mlp([100, 8, 10], rng=np.random.default_rng(1)), META)
    save_model(tmp_path / "c.npz", _net(2), {"dataset": {"name": "fashion-mnist"}})
    with pytest.raises(BarenetError, match="input or output size"):
        load_ensemble([tmp_path / "a.npz", tmp_path / "b.npz"])
    with pytest.raises(BarenetError, match="trained on fashion-mnist"):
        load_ensemble([tmp_path / "a.npz", tmp_path / "c.npz"])


def test_cli_evaluates_and_predicts_with_an_ensemble(tmp_path, mnist):
    # Three small nets trained briefly are enough to see the ensemble mechanics end to end.
    recipe = Recipe(name="t", description="t", hidden=(32,), epochs=1, batch_size=256)
    x, y = mnist.train_images[:6000], mnist.train_labels[:6000]
    paths = []
    for seed in range(3):
        net = mlp([784, 32, 10], rng=np.random.default_rng(seed))
        train(net, recipe, x[:5000], y[:5000], x[5000:], y[5000:], seed=seed, progress=False)
        paths.append(save_model(tmp_path / f"member-{seed + 1}" / "model.npz", net, META))
    models, _ = load_ensemble([tmp_path])
    expected = average_proba(models, to_inputs(mnist.test_images)).argmax(axis=1)
    accuracy = 100 * float(np.mean(expected == mnist.test_labels))
    p = subprocess.run([sys.executable, "-m", "barenet", "evaluate", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "an ensemble of 3 models" in p.stdout and f"test accuracy {accuracy:.2f}%" in p.stdout
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0]).save(image)
    p = subprocess.run([sys.executable, "-m", "barenet", "predict", *map(str, paths), str(image)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{image}: {mnist.test_labels[0]}  ({mnist.test_labels[0]} ")
