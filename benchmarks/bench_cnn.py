"""Training speed of the `cnn` recipe's network: barenet vs PyTorch, and what augmentation costs.

    pip install '.[bench]'
    python benchmarks/bench_cnn.py [--repeats 3] [--steps 60] [--out benchmarks/results/NAME.json]

The network of the `cnn` recipe (3x3 conv 32, BatchNorm, 2x2 max-pool, ReLU; 3x3 conv 64,
BatchNorm, 2x2 max-pool, ReLU; dense 256, BatchNorm, ReLU, dropout 0.3; dense 10), batch 128,
float32, SGD with Nesterov momentum 0.9 and L2 5e-4 on the weights, without augmentation (the
same work in both). Each repeat runs each contestant in a fresh process of its own (interleaved), which
trains `--steps` batches after 5 warm-up batches; the epoch time is the time per step times
the 430 steps of an epoch of 55,000 images.

It also times, in this process, what the recipes' augmentation costs per batch against the
training step of their own network: the issue's bound is 20% of the step.
"""

from __future__ import annotations

import os

# as barenet sets it where it loads before NumPy (src/barenet/__init__.py, docs/speed.md)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine

from barenet.data.datasets import load
from barenet.nn.losses import softmax_cross_entropy
from barenet.train.augment import augment
from barenet.train.loop import make_optimizer, to_inputs, train
from barenet.train.recipes import RECIPES, build_model

BATCH, STEPS_PER_EPOCH, WARMUP = 128, 430, 5
RECIPE = dataclasses.replace(RECIPES["cnn"], augment=dataclasses.replace(RECIPES["cnn"].augment,
                             rotate=0.0, scale=0.0, shift=0.0, elastic_alpha=0.0),
                             schedule="constant", epochs=1)  # fmt: skip


def barenet_step_seconds(x: np.ndarray, y: np.ndarray, steps: int) -> float:
    model = build_model(RECIPE, (28, 28), 10)
    n = (WARMUP + steps) * BATCH
    warm = dataclasses.replace(RECIPE, seed=1)
    train(model, warm, x[: WARMUP * BATCH], y[: WARMUP * BATCH], None, None, progress=False)
    start = time.perf_counter()
    train(model, RECIPE, x[WARMUP * BATCH : n], y[WARMUP * BATCH : n], None, None, progress=False)
    return (time.perf_counter() - start) / steps


def torch_step_seconds(x: np.ndarray, y: np.ndarray, steps: int) -> float:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(3136, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(256, 10),
    )  # fmt: skip
    weights = [m.weight for m in model if isinstance(m, nn.Conv2d | nn.Linear)]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4},
                           {"params": others, "weight_decay": 0.0}],
                          lr=RECIPE.lr, momentum=0.9, nesterov=True)  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()
    xs = torch.from_numpy(to_inputs(x).reshape(-1, 1, 28, 28))
    ys = torch.from_numpy(y.astype(np.int64))

    def run(lo: int, hi: int) -> None:
        model.train()
        order = torch.randperm(hi - lo) + lo
        bx, by = xs[order], ys[order]  # one gather, like barenet's loop
        for i in range(0, hi - lo, BATCH):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(bx[i : i + BATCH]), by[i : i + BATCH]).backward()
            opt.step()

    run(0, WARMUP * BATCH)
    start = time.perf_counter()
    run(WARMUP * BATCH, (WARMUP + steps) * BATCH)
    return (time.perf_counter() - start) / steps


WORKERS = {"barenet": barenet_step_seconds, "pytorch": torch_step_seconds}


def augmentation_cost(x: np.ndarray, y: np.ndarray, repeats: int = 20) -> dict[str, dict]:
    """Per batch of 128: augmenting (the recipe's transforms) vs one training step."""
    out = {}
    for name in ("cnn", "mlp-augment"):
        recipe = RECIPES[name]
        model = build_model(recipe, (28, 28), 10)
        opt = make_optimizer(recipe, model)
        rng = np.random.default_rng(0)
        aug_t, step_t = [], []
        for i in range(repeats):
            batch = x[i * BATCH : (i + 1) * BATCH]
            start = time.perf_counter()
            xb = augment(batch, rng, recipe.augment).reshape(BATCH, -1) * np.float32(1 / 255)
            aug_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            scores = model.forward(xb, training=True)
            _, d = softmax_cross_entropy(scores, y[i * BATCH : (i + 1) * BATCH].astype(np.int64))
            model.backward(d)
            opt.step(0.01)
            step_t.append(time.perf_counter() - start)
        a, s = statistics.median(aug_t[2:]), statistics.median(step_t[2:])
        out[name] = {"augment_ms": 1e3 * a, "step_ms": 1e3 * s, "fraction": a / s}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    mnist = load("mnist")
    x, y = mnist.train_images, mnist.train_labels
    if args.worker:
        print(json.dumps({"step": WORKERS[args.worker](x, y, args.steps)}))
        return
    steps: dict[str, list[float]] = {name: [] for name in WORKERS}
    for r in range(args.repeats):
        for name in list(steps):
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--steps",
                                   str(args.steps)], capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                print(f"{name}: {proc.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                del steps[name]
                continue
            steps[name].append(json.loads(proc.stdout)["step"])
            print(f"repeat {r + 1}/{args.repeats}: {name:8s} {1e3 * steps[name][-1]:.1f} ms/step",
                  file=sys.stderr)  # fmt: skip
    epoch = {k: STEPS_PER_EPOCH * statistics.median(v) for k, v in steps.items()}
    aug = augmentation_cost(x, y)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "network": "cnn recipe: conv3x3-32 BN pool ReLU, conv3x3-64 BN pool ReLU, 256 BN ReLU dropout, 10",
        "batch_size": BATCH,
        "steps_timed": args.steps,
        "step_seconds": steps,
        "epoch_seconds_median": epoch,
        "augmentation_per_batch": aug,
    }
    if "pytorch" in epoch:
        results["ratio barenet/pytorch"] = epoch["barenet"] / epoch["pytorch"]
    out = args.out or Path(__file__).parent / "results" / f"{results['date']}-cnn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\ncnn network, batch {BATCH}, epoch of {STEPS_PER_EPOCH} steps (median of "
          f"{args.repeats} x {args.steps} steps):")  # fmt: skip
    for k, v in epoch.items():
        extra = f"   barenet / {k} = {epoch['barenet'] / v:.2f}" if k != "barenet" else ""
        print(f"  {k:8s} {v:6.1f} s{extra}")
    for name, a in aug.items():
        print(f"augmentation ({name}): {a['augment_ms']:.1f} ms per batch vs {a['step_ms']:.1f} ms "
              f"per step = {100 * a['fraction']:.0f}% (bound: 20%)")  # fmt: skip
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
