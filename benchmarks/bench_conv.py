"""Wide 3x3 convolutions, forward + backward, barenet against PyTorch, in one process.

    python benchmarks/bench_conv.py [--batch 128] [--repeats 5] [--recipe record]
        [--out benchmarks/results/NAME.json]

For each shape (channels in -> out at H x W, "same" padding), the median time of a training
pass: barenet's `Conv2D.forward(x, training=True)` and `backward(dout)` (input and weight
gradients, the direct product), the same by the step the fast plan trains the layer with
(Winograd's F(4x4, 3x3) for wide layers, `nn/winograd.py`), and
PyTorch's `conv2d` forward and backward in channels_last memory format (oneDNN's
layout of choice on a CPU) and in its default NCHW, alternating. Then a member's whole
training step (forward, backward, the recipe's optimiser; `--recipe`: a recipe's name or
.json file, default `record`), its FLOPs against NumPy's float32 GEMM throughput measured in
the same process just before: the share of the machine's matrix-product speed the
step reaches. Run long trainings paused; the machine and the OpenBLAS kernel are recorded.
"""

from __future__ import annotations

import os

# as barenet sets it where it loads before NumPy (src/barenet/__init__.py, docs/speed.md)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from machine import machine

from barenet.nn.conv import Conv2D
from barenet.nn.layers import Dense
from barenet.nn.losses import softmax_cross_entropy
from barenet.nn.plan import plan
from barenet.train.loop import make_optimizer
from barenet.train.recipes import RECIPES, Recipe, build_model

SHAPES = [(64, 64, 28), (64, 128, 14), (128, 128, 14), (128, 128, 28)]


def median_seconds(f, repeats: int) -> float:
    f()  # warm-up: kept arrays, thread pools
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def gemm_throughput(size: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    return 2 * size**3 / median_seconds(lambda: a @ a, repeats)


def barenet_pass(C: int, F: int, H: int, B: int, fast_plan: bool = False):
    """The layer's own passes (the direct product), or with fast_plan the step the fast plan
    trains it by (`plan.plan`: Winograd's F(4x4, 3x3) where it applies)."""
    rng = np.random.default_rng(0)
    conv = Conv2D(C, F, 3, padding=1, rng=rng)
    x = rng.standard_normal((B, H, H, C), dtype=np.float32)
    dout = rng.standard_normal((B, H, H, F), dtype=np.float32)
    step = plan([conv], training=True)[0]

    def run() -> None:
        if fast_plan:
            step.forward(x, True)
            step.backward(dout, True, True)
        else:
            conv.forward(x, training=True)
            conv.backward(dout)

    return run


def torch_pass(C: int, F: int, H: int, B: int, channels_last: bool):
    import torch

    conv = torch.nn.Conv2d(C, F, 3, padding=1)
    x = torch.randn(B, C, H, H)
    dout = torch.randn(B, F, H, H)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        dout = dout.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def run() -> None:
        conv.zero_grad()
        x.grad = None
        conv(x).backward(dout)

    return run


def shape_table(shapes, args: argparse.Namespace, what: str, ours: dict, torch_run,
                passes: int, decimals: int) -> list[dict]:  # fmt: skip
    """For each (C, F, H) of `shapes`, at batch args.batch: the median seconds of args.repeats
    runs of each of `ours` ({key: make(C, F, H, B) -> run}), then of PyTorch's in
    channels_last and NCHW (`torch_run(C, F, H, B, channels_last)`, if PyTorch is installed).
    A row each, printed in milliseconds (of `what`), with the last of ours in GFLOP/s of the
    direct convolution (`passes` of its products: 1 forward only, 3 with both gradients)."""
    B, repeats = args.batch, args.repeats
    if torch_on_every_core() is None:
        torch_run = None
    print(f"batch {B}, median of {repeats}; milliseconds per {what}")
    keys = [*ours, "torch_channels_last", "torch_nchw"]
    labels = {"torch_channels_last": "torch CL", "torch_nchw": "torch NCHW"}
    print(f"{'shape':>22} " + " ".join(f"{labels.get(k, k):>12}" for k in keys)
          + f"  GFLOP/s ({list(ours)[-1]}, direct-convolution FLOPs)")  # fmt: skip
    rows = []
    for C, F, H in shapes:
        flops = passes * 2 * B * H * H * 9 * C * F
        row = {"in": C, "out": F, "size": H, "batch": B, "flops": flops}
        for key, make in ours.items():
            row[key] = median_seconds(make(C, F, H, B), repeats)
        if torch_run is not None:
            row["torch_channels_last"] = median_seconds(torch_run(C, F, H, B, True), repeats)
            row["torch_nchw"] = median_seconds(torch_run(C, F, H, B, False), repeats)
        rows.append(row)
        t = [f"{1000 * row[k]:.{decimals}f}" if k in row else "-" for k in keys]
        print(f"{f'{C}->{F} at {H}x{H}':>22} " + " ".join(f"{v:>12}" for v in t)
              + f"  {flops / row[list(ours)[-1]] / 1e9:.0f}")  # fmt: skip
    return rows


def forward_flops(model) -> int:
    """Multiply-adds x 2 of one image's forward pass through the convolutions and dense
    layers (the rest is a few percent), read from each layer's input as an image passes."""
    flops, x = 0, np.zeros((1, 784), dtype=np.float32)
    for layer in model.layers:
        out = layer.forward(x)
        if isinstance(layer, Conv2D):
            k = layer.kernel_size
            flops += 2 * out.shape[1] * out.shape[2] * k * k * layer.in_channels * out.shape[3]
        elif isinstance(layer, Dense):
            flops += 2 * x.shape[1] * out.shape[1]
        x = out
    return flops


def member_step(B: int, recipe):
    model = build_model(recipe, (28, 28), 10)
    optimizer = make_optimizer(recipe, model)
    rng = np.random.default_rng(0)
    x, y = rng.random((B, 784), dtype=np.float32), np.arange(B) % 10

    def run() -> None:
        _, d = softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(d)
        optimizer.step(recipe.lr)

    # backward twice the forward (the first convolution has no input gradient: a small
    # difference, counted anyway)
    return run, 3 * forward_flops(model) * B


def arguments(doc: str, member: str) -> argparse.ArgumentParser:
    """The options the convolution benchmarks share; `member`: what is timed of a member."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe", default="record",
                        help=f"the member whose {member}: a recipe's name or .json file "
                        "(default: record)")  # fmt: skip
    parser.add_argument("--out", type=Path)
    return parser


def torch_on_every_core():
    """PyTorch, its threads on every CPU this process may use; None if it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    return torch


def recipe_named(name: str) -> Recipe:
    """A recipe by its name, or from a .json file."""
    if name.endswith(".json"):
        return Recipe.from_dict(json.loads(Path(name).read_text()))
    return RECIPES[name]


def main() -> None:
    args = arguments(__doc__, "training step is measured").parse_args()
    rows = shape_table(SHAPES, args, "forward + backward", {"barenet": barenet_pass,
                       "barenet_plan": lambda *a: barenet_pass(*a, fast_plan=True)},
                       torch_pass, passes=3, decimals=0)  # fmt: skip
    B = args.batch
    gemm = gemm_throughput()
    recipe = recipe_named(args.recipe)
    run, step_flops = member_step(B, recipe)
    step = median_seconds(run, args.repeats)
    efficiency = step_flops / step / gemm
    print(f"float32 GEMM 2048^3: {gemm / 1e9:.0f} GFLOP/s")
    print(f"{recipe.name} member, training step of {B}: {1000 * step:.0f} ms, "
          f"{step_flops / step / 1e9:.0f} GFLOP/s = {100 * efficiency:.0f}% of GEMM")  # fmt: skip
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "convolutions": rows,
               "gemm_flops_per_s": gemm, "step_recipe": recipe.name, "record_step_seconds": step,
               "record_step_flops": step_flops, "record_step_gemm_efficiency": efficiency}  # fmt: skip
    out = args.out or Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-conv.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
