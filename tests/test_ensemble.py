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
from barenet.train.ensemble import (
    SLACK,
    average_proba,
    ensemble_classes,
    load_ensemble,
    members_proba,
)
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


def _one_after_the_other(monkeypatch, nets, x):
    """members_proba with the members one after the other (lanes inside their convolutions),
    every product on one BLAS thread as members_proba runs them on two cores or more (see
    test_the_blas_own_threads_may_round_a_product_otherwise); threads() stays 1 afterwards."""
    monkeypatch.setattr(ensemble, "threads", lambda: 1)
    with blas.one_blas_thread():
        return members_proba(nets, x)


def test_members_side_by_side_give_what_they_give_one_after_the_other(monkeypatch):
    nets = [_conv_net(s) for s in range(3)]
    x = np.random.default_rng(9).random((9, 784), dtype=np.float32)
    alone = _one_after_the_other(monkeypatch, nets, x)
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


def test_a_last_short_round_is_cut_into_parts_of_whole_batches(monkeypatch):
    nets = [_conv_net(s) for s in range(3)]
    for net in nets:
        net.inference_batch = lambda budget=None: 2  # type: ignore[method-assign]
    jobs = ensemble._jobs(nets, 9, 2)  # five batches each: 2 + 2 | 2 + 2 + 1
    assert [(m, lo, hi) for m, _, lo, hi in jobs] == [(0, 0, 9), (1, 0, 9), (2, 0, 4), (2, 4, 9)]
    twin = jobs[3][1]  # the second part's network: layers of its own, the same weights
    assert jobs[2][1] is nets[2] and twin is not nets[2]
    assert all(a is not b and a.params is b.params for a, b in zip(twin.layers, nets[2].layers))
    quarters = [(0, 2), (2, 4), (4, 6), (6, 9)]  # three members on four cores: 12 parts
    assert [(m, lo, hi) for m, _, lo, hi in ensemble._jobs(nets, 9, 4)] == [
        (m, lo, hi) for m in range(3) for lo, hi in quarters]  # fmt: skip
    assert [(m, lo, hi) for m, _, lo, hi in ensemble._jobs(nets[:2], 9, 4)] == [
        (m, lo, hi) for m in range(2) for lo, hi in [(0, 4), (4, 9)]]  # fmt: skip
    x = np.random.default_rng(9).random((9, 784), dtype=np.float32)
    monkeypatch.setattr(ensemble, "threads", lambda: 2)
    side = members_proba(nets, x)
    alone = _one_after_the_other(monkeypatch, nets, x)
    for a, b in zip(alone, side, strict=True):
        np.testing.assert_array_equal(a, b)  # the same batches: the same bits

    def unknown(*args, **kwargs):
        raise ValueError("unknown layer type")

    monkeypatch.setattr(Sequential, "from_config", unknown)  # no twin: the member runs whole
    assert [(m, lo, hi) for m, _, lo, hi in ensemble._jobs(nets, 9, 2)][2:] == [(2, 0, 9)]


def test_the_blas_own_threads_may_round_a_product_otherwise():
    """Why the tests here that compare members side by side with members one after the
    other run the latter on one BLAS thread, as members_proba runs every product on two cores
    or more: OpenBLAS splitting a product over its own threads may round it otherwise in the
    last bit with some kernels (its AVX2 sgemm kernel: 1.2e-7 here); lanes and members side by
    side never do. Checked on whatever kernel runs: equal to one BLAS thread within float32
    rounding, and identical with lanes (`limited`) of 1 or 2."""
    net, x = _conv_net(0), np.random.default_rng(9).random((9, 784), dtype=np.float32)
    with blas.one_blas_thread():
        one = net.predict_proba(x, 2)
        with threads_module.limited(lambda: 2):
            np.testing.assert_array_equal(net.predict_proba(x, 2), one)
    np.testing.assert_allclose(net.predict_proba(x, 2), one, rtol=0, atol=1e-6)


def test_the_last_member_running_gets_every_core(monkeypatch):
    # a quick member beside a slow one (a batch per image) that ends alone
    nets = [_net(0), _conv_net(2)]
    nets[1].inference_batch = lambda budget=None: 1  # type: ignore[method-assign]
    x = np.random.default_rng(9).random((9, 784), dtype=np.float32)
    monkeypatch.setattr(ensemble, "threads", lambda: 2)
    given = _watch_threads(monkeypatch)
    side = members_proba(nets, x)
    assert given[-1] == 2  # its convolutions' lanes on both cores again
    alone = _one_after_the_other(monkeypatch, nets, x)
    for a, b in zip(alone, side, strict=True):
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


class _Fixed:
    """A stand-in member that gives set probabilities: row i of `table` for input i (the
    inputs are their own row numbers), whatever batch they come in."""

    def __init__(self, table):
        self.table = np.asarray(table, dtype=np.float32)
        self.seen = 0  # inputs asked about

    def inference_batch(self, budget=None):
        return 2

    def predict_proba(self, x, batch_size=None, temperature=1.0, progress=None):
        self.seen += len(x)
        if progress is not None:
            progress(len(x))
        return self.table[x[:, 0].astype(int)]


def test_later_members_see_only_the_inputs_the_first_leave_open(monkeypatch):
    # Five members, three classes. Members 1-3 each lead class 0 by 0.8 on input 0 (together
    # 2.4: settled, members 4-5 can take back at most 2), by 2/3 on input 1 (together 2: a tie
    # is still possible, open), by 0.2 on input 2 (open); input 3 is a sure class 2.
    first = [[0.9, 0.0, 0.1], [5 / 6, 0.0, 1 / 6], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]]
    last = [[0.0, 1.0, 0.0]] * 4  # members 4 and 5 vote class 1 everywhere, fully sure
    members = [_Fixed(first) for _ in range(3)] + [_Fixed(last) for _ in range(2)]
    x = np.arange(4, dtype=np.float32)[:, None]
    monkeypatch.setattr(ensemble, "threads", lambda: 1)  # one after the other: no copies
    planned: list[int] = []
    done: list[int] = []
    classes, undecided = ensemble_classes(members, x, done.append, planned.append)
    assert classes.tolist() == [0, 0, 1, 2]  # input 2 turned by the last two
    assert undecided == 2 and [m.seen for m in members] == [4, 4, 4, 2, 2]
    assert planned == [3 * 4, 2 * 2] and sum(done) == 16
    for m in members:
        m.seen = 0
    np.testing.assert_array_equal(classes, average_proba(members, x).argmax(axis=1))
    assert SLACK < 1e-3


def test_ensemble_classes_are_those_of_the_average():
    # Members near one another, sure of themselves: most inputs are settled by the first ones,
    # some are not.
    for K in (2, 3, 4, 5):
        nets = [_net(0, hidden=16) for _ in range(K)]
        rng = np.random.default_rng(K)
        for net in nets:
            for layer in net.layers:
                if "W" in layer.params:
                    W = layer.params["W"]
                    W += 0.5 * W.std() * rng.standard_normal(W.shape).astype(W.dtype)
                    W *= 4
        x = np.random.default_rng(K).random((300, 784), dtype=np.float32) * 3
        planned: list[int] = []
        done: list[int] = []
        classes, undecided = ensemble_classes(nets, x, done.append, planned.append)
        np.testing.assert_array_equal(classes, average_proba(nets, x).argmax(axis=1))
        assert sum(done) == sum(planned)
        k = K // 2 + 1
        assert planned[0] == (K if K < 3 else k) * 300
        if K >= 3:
            assert 0 < undecided < 300 and planned[1:] == [(K - k) * undecided]


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
    _, undecided = ensemble_classes(models, to_inputs(mnist.test_images))
    assert 0 < undecided < len(mnist.test_labels) // 2
    assert (f"members 1-2 settled the vote on {len(mnist.test_labels) - undecided} images; "
            f"member 3 went through the other {undecided}") in p.stdout  # fmt: skip
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0]).save(image)
    p = subprocess.run([sys.executable, "-m", "barenet", "predict", *map(str, paths), str(image)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{image}: {mnist.test_labels[0]}  ({mnist.test_labels[0]} ")
