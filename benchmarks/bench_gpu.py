"""Training speed on a GPU: the `record` recipe's network in barenet (CuPy) and in PyTorch.

    python benchmarks/bench_gpu.py [--steps 100] [--batch 32] [--out benchmarks/results/NAME.json]
    python benchmarks/bench_gpu.py --breakdown [--batch 32]

Needs CuPy, PyTorch and an NVIDIA GPU. Times one training step (forward, cross-entropy,
backward, Adam) of the `record` recipe's network (nine 3x3 convolutions of 128 channels,
BatchNorm and squeeze-and-excitation per block, average pooling, the global head), float32,
after 10 warm-up steps, each side synchronised with its GPU before the clock is read; also
barenet's step with the distillation teacher (`models/cnn-ensemble`, four networks) on the GPU
beside it (predicting for 32 steps' batches at once, as the training loop has it), and what
the recipe's augmentation of one batch costs on the CPU, which a run does
between steps. PyTorch runs the same layers in channels_last with TF32 off (CuPy's float32
products do not use TF32 either), so both compute in float32.

--breakdown says where barenet's step goes instead: each part of it (every step of the
network's plan forward and backward, the loss, the teacher, Adam), timed by
`cupyx.profiler.benchmark` as the CPU's time to issue it and the GPU's time to run it. Where
the CPU's time is the larger, the part is bound by Python and kernel launches, not by the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from barenet.nn.losses import distillation_loss, l1_penalty, softmax_cross_entropy
from barenet.train.augment import augment
from barenet.train.batches import TEACHER_CHUNK_STEPS
from barenet.train.distill import Teacher
from barenet.train.ensemble import load_ensemble
from barenet.train.loop import make_optimizer
from barenet.train.recipes import RECIPES, build_model

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 1719  # 55,000 digits in batches of 32


def batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def barenet_step(steps: int, n: int, with_teacher: bool) -> float:
    import cupy

    recipe = RECIPES["record"]
    model = build_model(recipe, (28, 28), 10).to(cupy)
    opt = make_optimizer(recipe, model)
    teacher = None
    if with_teacher:
        models, _ = load_ensemble([ROOT / "models" / "cnn-ensemble"])
        teacher = Teacher([m.to(cupy) for m in models], 4.0)
    x, y = batch(n * TEACHER_CHUNK_STEPS)
    chunk = cupy.asarray(x.reshape(len(x), -1).astype(np.float32) / 255)
    xb, yb = chunk[:n], cupy.asarray(y[:n])
    done, targets = 0, None

    def step() -> None:
        nonlocal done, targets
        scores = model.forward(xb, training=True)
        if teacher is None:
            _, ds = softmax_cross_entropy(scores, yb)
        else:  # as the loop does: the teacher predicts for a chunk of steps' batches at once
            k = done % TEACHER_CHUNK_STEPS
            if k == 0:
                targets = teacher.targets(chunk)
            assert targets is not None
            _, ds = distillation_loss(scores, yb, targets[k * n : (k + 1) * n], 0.5, 4.0)
        model.backward(ds)
        opt.step(1e-3)
        done += 1

    for _ in range(10):
        step()
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    cupy.cuda.Device().synchronize()
    return (time.perf_counter() - t0) / steps


def torch_step(steps: int, n: int) -> float:
    import torch
    from torch import nn

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    class SE(nn.Module):
        def __init__(self, c: int, r: int) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c),
                                    nn.Sigmoid())  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]

    class Head(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    layers: list[nn.Module] = []
    cin = 1
    for pool in (False, True, True):
        for _ in range(3):
            layers += [nn.Conv2d(cin, 128, 3, padding=1), nn.ReLU()]
            cin = 128
        layers += [nn.BatchNorm2d(128), SE(128, 32)]
        if pool:
            layers.append(nn.AvgPool2d(2))
    model = nn.Sequential(*layers, Head(), nn.Linear(256, 10)).cuda()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = batch(n)
    xb = torch.from_numpy(x.astype(np.float32) / 255).reshape(n, 1, 28, 28).cuda()
    xb = xb.contiguous(memory_format=torch.channels_last)
    yb = torch.from_numpy(y).cuda()
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def augment_seconds(n: int, repeats: int = 50) -> float:
    recipe = RECIPES["record"]
    x, _ = batch(n)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        augment(x, rng, recipe.augment)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(n: int, repeats: int = 50) -> list[tuple[str, float, float]]:
    """(part, CPU ms, GPU ms) for each part of one training step of the record network."""
    import cupy
    from cupyx.profiler import benchmark

    recipe = RECIPES["record"]
    model = build_model(recipe, (28, 28), 10).to(cupy)
    opt = make_optimizer(recipe, model)
    models, _ = load_ensemble([ROOT / "models" / "cnn-ensemble"])
    teacher = Teacher(models, 4.0).to(cupy)
    x, y = batch(n)
    xb, yb = cupy.asarray(x.reshape(n, -1).astype(np.float32) / 255), cupy.asarray(y)
    rows: list[tuple[str, float, float]] = []

    def bench(name: str, func: object) -> None:
        result = benchmark(func, n_repeat=repeats, n_warmup=5)
        rows.append((name, 1e3 * float(np.mean(result.cpu_times)),
                     1e3 * float(np.mean(result.gpu_times))))  # fmt: skip

    bench("forward (training)", lambda: model.forward(xb, training=True))
    scores = model.forward(xb, training=True)
    _, ds = softmax_cross_entropy(scores, yb)
    bench("backward", lambda: model.backward(ds))
    bench("adam step", lambda: opt.step(1e-3))
    bench("cross-entropy", lambda: softmax_cross_entropy(scores, yb))
    targets = teacher.targets(xb)
    bench("teacher's targets (4 networks), one batch", lambda: teacher.targets(xb))
    chunk = cupy.concatenate([xb] * TEACHER_CHUNK_STEPS)
    bench(
        f"teacher's targets, {TEACHER_CHUNK_STEPS} batches at once", lambda: teacher.targets(chunk)
    )
    bench("distillation loss", lambda: distillation_loss(scores, yb, targets, 0.5, 4.0))
    head = model.layers[-1]
    bench("correct count (argmax, to the host)", lambda: int((scores.argmax(axis=1) == yb).sum()))
    bench("host batch to the GPU", lambda: cupy.asarray(x.reshape(n, -1).astype(np.float32)))
    W = head.params["W"]
    bench("L1 on the head", lambda: l1_penalty([W], 0.00025))
    # the plan's steps one by one, forward then backward, on their own inputs
    inputs, out = [], xb
    for step in model._steps:
        inputs.append(out)
        out = step.forward(out, True)
    for k, step in enumerate(model._steps):
        names = "+".join(type(layer).__name__ for layer in model.layers[step.start : step.stop])
        x_in = inputs[k]
        bench(f"  forward  {k:2d} {names}", lambda s=step, v=x_in: s.forward(v, True))
    outs = [*inputs[1:], out]
    for k in reversed(range(len(model._steps))):
        step = model._steps[k]
        step.forward(inputs[k], True)  # its cache, for its backward
        dout = cupy.full_like(outs[k], 1e-3)
        names = "+".join(type(layer).__name__ for layer in model.layers[step.start : step.stop])
        bench(f"  backward {k:2d} {names}", lambda s=step, d=dout, k=k: s.backward(d, k > 1, True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--breakdown", action="store_true", help="where barenet's step goes")
    args = parser.parse_args()
    import cupy

    if args.breakdown:
        rows3 = breakdown(args.batch)
        print(f"record network, batch {args.batch}: {'part':44s} {'CPU ms':>8s} {'GPU ms':>8s}")
        for name, cpu, gpu_ms in rows3:
            print(f"  {name:60s} {cpu:8.3f} {gpu_ms:8.3f}")
        return
    import torch

    rows = {
        "barenet (CuPy)": barenet_step(args.steps, args.batch, with_teacher=False),
        "barenet (CuPy), with the teacher": barenet_step(args.steps, args.batch, True),
        "pytorch (channels_last)": torch_step(args.steps, args.batch),
        "augmentation of one batch (CPU)": augment_seconds(args.batch),
    }
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"record network, batch {args.batch}, float32 on {gpu}; CuPy {cupy.__version__}, "
          f"PyTorch {torch.__version__}, NumPy {np.__version__}")  # fmt: skip
    for name, seconds in rows.items():
        epoch = seconds * STEPS_PER_EPOCH
        print(f"  {name:36s} {1e3 * seconds:8.2f} ms a step   {epoch:7.1f} s an epoch")
    ratio = rows["barenet (CuPy)"] / rows["pytorch (channels_last)"]
    print(f"  ratio barenet/pytorch: {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"gpu": gpu, "batch": args.batch, "steps": args.steps,
                                        "seconds_per_step": rows, "ratio": ratio,
                                        "machine": platform.processor() or platform.machine()},
                                       indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
