"""The engine on a GPU through CuPy: the same layers, gradients and training as on the CPU.

These tests need CuPy and an NVIDIA GPU; elsewhere (CI, a laptop) they are skipped, and the
skip says so: they are run on a machine with a GPU (docs/speed.md, "On a GPU", has the run).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import toy_digits

from barenet.backend.arrays import array_module, to_numpy
from barenet.nn.losses import softmax_cross_entropy
from barenet.nn.model import Sequential
from barenet.nn.optim import Adam
from barenet.train.augment import Augment
from barenet.train.checkpoint import load_checkpoint
from barenet.train.distill import Teacher
from barenet.train.loop import accuracy, make_optimizer, train
from barenet.train.recipes import RECIPES, Recipe, build_model

cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the GPU tests need it")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # CuPy's CUDA errors: no driver, no device
    HAVE_GPU = False
pytestmark = pytest.mark.skipif(not HAVE_GPU, reason="no GPU: CuPy finds no device")


def close(a, b, what: str, tol: float = 2e-3, floor: float = 1e-6) -> None:
    """float32 on two devices: equal up to summation order, relative to the array's scale, and
    within `floor` where that scale is rounding noise itself (a bias before a BatchNorm, whose
    gradient is 0 but for rounding)."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    error = np.abs(a - b).max()
    assert error <= tol * np.abs(b).max() + floor, f"{what}: {error:.2e} of {np.abs(b).max():.2e}"


@pytest.mark.parametrize("name", ["seed", "mlp", "cnn", "cnn-deep", "record"])
def test_a_step_on_the_gpu_is_the_step_on_the_cpu(name):
    """Each recipe's network: forward (training), backward and one optimiser step from the
    same weights on the same batch, in float32 on the GPU and on the CPU, each against the same
    step in float64 on the CPU: the GPU's rounding errors are of the size of the CPU's."""
    recipe = dataclasses.replace(RECIPES[name], dropout=0.0, dropconnect=0.0, input_dropout=0.0)
    cpu = build_model(recipe, (28, 28), 10, seed=3)
    exact = Sequential.from_config(cpu.config(), dtype=np.float64)
    for (_, d, _), (_, s, _) in zip(exact.parameters(), cpu.parameters(), strict=True):
        d[...] = s
    for (_, d), (_, s) in zip(exact.buffers(), cpu.buffers(), strict=True):
        d[...] = s
    gpu = cpu.to(cupy)
    assert gpu.xp is cupy and cpu.xp is np
    x, y = toy_digits(16, seed=1)
    xb = x.reshape(16, -1).astype(np.float32) / 255
    yb = y.astype(np.int64)
    results = {}
    for where, model, xp in (("exact", exact, np), ("cpu", cpu, np), ("gpu", gpu, cupy)):
        inputs = xp.asarray(xb.astype(np.float64) if where == "exact" else xb)
        scores = model.forward(inputs, training=True)
        _, ds = softmax_cross_entropy(scores, xp.asarray(yb))
        model.backward(ds)
        grads = {n: to_numpy(g).astype(np.float64) for n, _, g in model.parameters()}
        assert all(array_module(g) is xp for _, _, g in model.parameters())
        make_optimizer(recipe, model).step(recipe.lr)
        params = {n: to_numpy(p).astype(np.float64) for n, p, _ in model.parameters()}
        results[where] = {"scores": to_numpy(scores).astype(np.float64), **{
            f"grad {n}": g for n, g in grads.items()}, **{f"param {n}": p for n, p in params.items()}}  # fmt: skip
    exact_, cpu_, gpu_ = results["exact"], results["cpu"], results["gpu"]
    for key, want in exact_.items():
        kept = np.ones(want.shape, dtype=bool)
        if key.startswith("param"):
            # Adam's first step moves each weight by about lr sign(g): where the gradient is
            # rounding noise (a bias before a BatchNorm, a channel its ReLU shuts) either sign
            # is right, so the weights are compared where the gradient is not noise
            g = np.abs(exact_["grad" + key[5:]])
            kept = g > 1e-3 * g.max() + 1e-9
        scale = np.abs(want).max() + 1e-12
        on_cpu, on_gpu = (np.abs(r[key] - want)[kept].max(initial=0) / scale for r in (cpu_, gpu_))
        assert on_gpu <= 10 * on_cpu + 1e-5, f"{key}: GPU {on_gpu:.1e}, CPU {on_cpu:.1e}"


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_on_the_gpu_updates_as_on_the_cpu_to_the_bit(decoupled):
    """Adam's one-kernel update on the GPU does the NumPy path's float32 operations in its
    order: three steps, with weight decay on one parameter and none on the other, give the
    same bits on both."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((64, 33)), "b": rng.standard_normal(33)}
    grads = [{k: rng.standard_normal(w.shape) * 10.0**-t for k, w in weights.items()}
             for t in range(3)]  # fmt: skip
    after = {}
    for where, xp in (("cpu", np), ("gpu", cupy)):
        params = [(k, xp.asarray(w, dtype=np.float32), xp.zeros(w.shape, np.float32))
                  for k, w in weights.items()]  # fmt: skip
        adam = Adam(params, weight_decay=0.01, decayed={"w"}, decoupled=decoupled)
        for t, g in enumerate(grads):
            for k, _, grad in params:
                grad[...] = xp.asarray(g[k], dtype=np.float32)  # the CPU's step writes on it
            adam.step(1e-3 * (t + 1))
        state = after[where] = {}
        for k, w, _ in params:
            state[k], state[f"m.{k}"], state[f"v.{k}"] = map(to_numpy, (w, adam.m[k], adam.v[k]))
    for key, value in after["cpu"].items():
        np.testing.assert_array_equal(after["gpu"][key], value, err_msg=key)


def test_to_moves_weights_statistics_and_back():
    recipe = RECIPES["cnn-deep"]
    cpu = build_model(recipe, (28, 28), 10, seed=0)
    for _, b in cpu.buffers():
        b += 0.5
    back = cpu.to(cupy).to(np)
    assert back.to(np) is back
    for (n, a, _), (_, b, _) in zip(cpu.parameters(), back.parameters(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=n)
    for (n, a), (_, b) in zip(cpu.buffers(), back.buffers(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=n)


TOY = Recipe(
    name="toy", description="toy", arch="cnn", conv=(4,), kernel_size=3, batchnorm=True,
    hidden=(8,), optimizer="adam", lr=0.01, epochs=2, batch_size=32, val_size=50,
    schedule="constant", weight_average=0.9,
)  # fmt: skip


def test_training_on_the_gpu_learns_checkpoints_and_resumes_on_the_cpu(tmp_path):
    """A run on the GPU (with a teacher there too, augmentation and weight averaging) learns the
    toy digits as the CPU run does; its checkpoint is NumPy's, and the CPU takes the run on."""
    x, y = toy_digits()
    args = (x[:350], y[:350], x[350:], y[350:])
    recipe = dataclasses.replace(TOY, augment=Augment(rotate=10, shift=1))
    taught = build_model(recipe, (28, 28), 3, seed=5)
    train(taught, recipe, *args, progress=False)
    student = dataclasses.replace(recipe, teacher="t", epochs=3)
    histories = {}
    for xp in (np, cupy):
        model = build_model(student, (28, 28), 3).to(xp)
        teacher = Teacher([taught], temperature=4.0).to(xp)
        ckpt = tmp_path / f"{xp.__name__}.npz"
        histories[xp.__name__] = train(model, student, *args, progress=False, teacher=teacher,
                                       checkpoint=ckpt)  # fmt: skip
        assert model.xp is xp
    cpu, gpu = (histories[k].epochs for k in ("numpy", "cupy"))
    np.testing.assert_allclose([e.train_loss for e in gpu], [e.train_loss for e in cpu], rtol=0.02)
    assert gpu[-1].val_accuracy > 0.9 and abs(gpu[-1].val_accuracy - cpu[-1].val_accuracy) <= 0.04
    state = load_checkpoint(tmp_path / "cupy.npz")
    assert all(isinstance(a, np.ndarray) for a in state.model.values())
    # a run of 3 epochs on the GPU, taken on to a 4th on the CPU from its checkpoint
    plain = dataclasses.replace(student, weight_average=0.0)
    gpu_ckpt = tmp_path / "plain.npz"
    train(build_model(plain, (28, 28), 3).to(cupy), plain, *args, progress=False,
          teacher=Teacher([taught], 4.0).to(cupy), checkpoint=gpu_ckpt)  # fmt: skip
    longer = dataclasses.replace(plain, epochs=4)
    resumed = build_model(longer, (28, 28), 3)
    history = train(resumed, longer, *args, progress=False, teacher=Teacher([taught], 4.0),
                    checkpoint=gpu_ckpt, resume=True)  # fmt: skip
    assert len(history.epochs) == 4 and history.epochs[-1].val_accuracy > 0.9
    assert accuracy(resumed, x[350:], y[350:]) == history.epochs[-1].val_accuracy


def test_a_teacher_elsewhere_is_refused():
    x, y = toy_digits()
    model = build_model(TOY, (28, 28), 3).to(cupy)
    with pytest.raises(ValueError, match="must be where the student is"):
        train(model, dataclasses.replace(TOY, teacher="t"), x[:350], y[:350], None, None,
              progress=False, teacher=Teacher([build_model(TOY, (28, 28), 3)], 4.0))  # fmt: skip


def test_sequential_from_config_on_the_gpu_predicts_as_on_the_cpu():
    cpu = build_model(RECIPES["cnn"], (28, 28), 10, seed=1)
    gpu = Sequential.from_config(cpu.config(), xp=cupy)
    for (_, d, _), (_, s, _) in zip(gpu.parameters(), cpu.parameters(), strict=True):
        d[...] = cupy.asarray(s)
    for (_, d), (_, s) in zip(gpu.buffers(), cpu.buffers(), strict=True):
        d[...] = cupy.asarray(s)
    x, _ = toy_digits(64)
    xb = x.reshape(64, -1).astype(np.float32) / 255
    close(gpu.predict_proba(cupy.asarray(xb)), cpu.predict_proba(xb), "probabilities")
