"""Wide 3x3 convolutions at inference: direct and Winograd F(4x4, 3x3), against PyTorch, in one
process; then a member's predictions both ways.

    python benchmarks/bench_inference.py [--batch 128] [--repeats 5] [--recipe record]
        [--images 2000] [--out benchmarks/results/NAME.json]

For each shape (channels in -> out at H x W, "same" padding), the median time of a forward pass
at inference: barenet's direct convolution (`Conv2D.forward`), its Winograd F(4x4, 3x3)
(`winograd.winograd_forward`, what the fast plan runs at inference for convolutions of at least
`winograd.MIN_CHANNELS` channels), and PyTorch's `conv2d` under `no_grad` in channels_last
memory format and in its default NCHW. Then a member of `--recipe` (random weights) predicts
`--images` random digits with the fast plan as it is and with every convolution direct; the
seconds per 10,000 digits both ways, and how far the two sets of probabilities lie apart. Run
long trainings paused; the machine and the OpenBLAS kernel are recorded.
"""

from __future__ import annotations

import os

# as barenet sets it where it loads before NumPy (src/barenet/__init__.py, docs/speed.md)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import json
import time
from pathlib import Path

import numpy as np
from bench_conv import arguments, recipe_named, shape_table
from machine import machine

from barenet.nn import winograd
from barenet.nn.conv import Conv2D
from barenet.nn.winograd import winograd_forward
from barenet.train.recipes import Recipe, build_model

SHAPES = [(32, 32, 28), (64, 64, 28), (64, 64, 14), (64, 128, 14), (128, 128, 14), (128, 128, 28)]


def barenet_forward(C: int, F: int, H: int, B: int, fast: bool = False):
    rng = np.random.default_rng(0)
    conv = Conv2D(C, F, 3, padding=1, rng=rng)
    x = rng.standard_normal((B, H, H, C), dtype=np.float32)
    if fast:
        return lambda: winograd_forward(conv, x)
    return lambda: conv.forward(x)


def torch_forward(C: int, F: int, H: int, B: int, channels_last: bool):
    import torch

    conv = torch.nn.Conv2d(C, F, 3, padding=1)
    x = torch.randn(B, C, H, H)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad():
            conv(x)

    return run


def member_predictions(recipe: Recipe, images: int, direct: bool) -> tuple[float, np.ndarray]:
    """Seconds for predict_proba of `images` random digits, and the probabilities."""
    model = build_model(recipe, (28, 28), 10)
    x = np.random.default_rng(1).random((images, 784), dtype=np.float32)
    saved = winograd.MIN_CHANNELS
    if direct:
        winograd.MIN_CHANNELS = 1 << 30  # no convolution is wide enough: all direct
    try:
        model.predict_proba(x[: model.inference_batch()])  # warm-up
        t = time.perf_counter()
        p = model.predict_proba(x)
        return time.perf_counter() - t, p
    finally:
        winograd.MIN_CHANNELS = saved


def main() -> None:
    parser = arguments(__doc__, "predictions are timed")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    rows = shape_table(SHAPES, args, "forward pass at inference", {"direct": barenet_forward,
                       "winograd": lambda *a: barenet_forward(*a, fast=True)}, torch_forward,
                       passes=1, decimals=1)  # fmt: skip
    recipe = recipe_named(args.recipe)
    fast, p_fast = member_predictions(recipe, args.images, direct=False)
    direct, p_direct = member_predictions(recipe, args.images, direct=True)
    gap = float(np.abs(p_fast - p_direct).max())
    agree = float((p_fast.argmax(1) == p_direct.argmax(1)).mean())
    per = 10_000 / args.images
    print(f"{recipe.name} member, {args.images} random digits: {fast:.1f} s with Winograd "
          f"({fast * per:.0f} s per 10,000), {direct:.1f} s direct ({direct * per:.0f} s per "
          f"10,000); probabilities at most {gap:.1e} apart, {100 * agree:.2f}% the same class")  # fmt: skip
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "convolutions": rows,
               "member_recipe": recipe.name, "member_images": args.images,
               "member_seconds_winograd": fast, "member_seconds_direct": direct,
               "member_max_probability_gap": gap, "member_same_class": agree}  # fmt: skip
    out = (
        args.out
        or Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-inference.json"
    )
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
