"""Training speed of the seed network: barenet vs PyTorch vs scikit-learn, in one run.

    pip install '.[bench]'
    python benchmarks/bench.py [--repeats 3] [--out benchmarks/results/NAME.json]

Each repeat times one training epoch of each contestant in turn (interleaved, so that drift in
the machine's speed hits them alike), each in a fresh process of its own (PyTorch's OpenMP
threads and NumPy's OpenBLAS threads in one process slow each other down), after one warm-up
epoch, on MNIST's 55,000 training images already in memory,
784-1024-10 ReLU network, batch 128, float32, SGD with Nesterov momentum 0.9, L2 1e-4 on the
weights, a shuffle every epoch. It also measures the machine's float32 GEMM throughput through
NumPy in each barenet process just before its timed epoch, barenet's efficiency (counted
matrix-product FLOPs / epoch time / that process's GEMM throughput; the median over repeats),
inference throughput, the latency of one `barenet predict` call, and the whole `barenet train`
command: wall time, training time, test accuracy and peak resident memory.
Medians are reported; the JSON file keeps every sample.
"""

from __future__ import annotations

import os

# as barenet sets it where it loads before NumPy (src/barenet/__init__.py, docs/speed.md)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine

from barenet.data.datasets import load
from barenet.nn.model import mlp
from barenet.train.loop import to_inputs, train
from barenet.train.recipes import get_recipe

N_TRAIN, BATCH, HIDDEN, LR = 55_000, 128, 1024, 0.1


def epoch_flops(
    n: int = N_TRAIN, b: int = BATCH, d: int = 784, h: int = HIDDEN, c: int = 10
) -> int:
    """Matrix-product FLOPs of one epoch (2 per multiply-add): forward x W1 and h W2; backward
    dW2 = h^T ds, dh = ds W2^T, dW1 = x^T dh (no gradient for the input)."""
    total = 0
    for start in range(0, n, b):
        m = min(b, n - start)
        total += 2 * m * d * h + 2 * m * h * c  # forward
        total += 2 * h * m * c + 2 * m * c * h + 2 * d * m * h  # backward
    return total


def gemm_throughput(size: int = 2048, repeats: int = 5) -> float:
    """float32 GEMM FLOP/s through NumPy on size x size matrices (best of `repeats`)."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


class Barenet:
    name = "barenet"

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y  # (N, 28, 28) uint8, as the training loop takes them
        self.recipe = dataclasses.replace(get_recipe("seed"), epochs=1, lr=LR, schedule="constant",
                                          batch_size=BATCH)  # fmt: skip
        self.model = mlp([784, HIDDEN, 10], rng=np.random.default_rng(0))
        self.seed = 0

    def epoch(self) -> float:
        self.seed += 1  # a new shuffle each epoch
        recipe = dataclasses.replace(self.recipe, seed=self.seed)
        # The real training loop; validation on a single image costs nothing.
        return _timed(
            lambda: train(
                self.model, recipe, self.x, self.y, self.x[:1], self.y[:1], progress=False
            )
        )

    def predict(self, x: np.ndarray) -> float:
        inputs = to_inputs(x)
        return _timed(lambda: self.model.predict_proba(inputs))


class Torch:
    name = "pytorch"

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        import torch

        self.torch = torch
        torch.manual_seed(0)
        self.x = torch.from_numpy(to_inputs(x))  # (N, 784) float32 in memory
        self.y = torch.from_numpy(y.astype(np.int64))
        self.model = torch.nn.Sequential(
            torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10)
        )
        for layer in (self.model[0], self.model[2]):  # the same He initialisation, zero biases
            torch.nn.init.normal_(layer.weight, std=(2 / layer.in_features) ** 0.5)
            torch.nn.init.zeros_(layer.bias)
        weights = [self.model[0].weight, self.model[2].weight]
        biases = [self.model[0].bias, self.model[2].bias]
        self.opt = torch.optim.SGD([{"params": weights, "weight_decay": 1e-4}, {"params": biases, "weight_decay": 0.0}],
                                   lr=LR, momentum=0.9, nesterov=True)  # fmt: skip
        self.loss = torch.nn.CrossEntropyLoss()

    def epoch(self) -> float:
        torch = self.torch

        def run() -> None:
            order = torch.randperm(len(self.x))
            xs, ys = self.x[order], self.y[order]  # one gather per epoch, like barenet
            for i in range(0, len(xs), BATCH):
                self.opt.zero_grad(set_to_none=True)
                loss = self.loss(self.model(xs[i : i + BATCH]), ys[i : i + BATCH])
                loss.backward()
                self.opt.step()

        return _timed(run)

    def predict(self, x: np.ndarray) -> float:
        torch = self.torch
        inputs = torch.from_numpy(to_inputs(x))

        def run() -> None:
            with torch.inference_mode():
                for i in range(0, len(inputs), 2000):
                    torch.softmax(self.model(inputs[i : i + 2000]), dim=1)

        return _timed(run)


class Sklearn:
    name = "scikit-learn"

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.neural_network import MLPClassifier

        self.x, self.y = to_inputs(x), y.astype(np.int64)
        self.model = MLPClassifier(hidden_layer_sizes=(HIDDEN,), solver="sgd", batch_size=BATCH,
                                   learning_rate_init=LR, momentum=0.9, nesterovs_momentum=True,
                                   alpha=1e-4, shuffle=True, random_state=0)  # fmt: skip
        self.classes = np.arange(10)

    def epoch(self) -> float:
        return _timed(lambda: self.model.partial_fit(self.x, self.y, classes=self.classes))

    def predict(self, x: np.ndarray) -> float:
        inputs = to_inputs(x)
        return _timed(lambda: self.model.predict_proba(inputs))


# Runs the CLI and, at exit, reports the process's own peak resident memory (VmHWM). Measured
# from inside because a forked child's ru_maxrss starts from the parent's size before exec.
_TRAIN_WRAPPER = """
import sys
from barenet.apps.cli import main
rc = main(sys.argv[1:])
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("peak-rss-kib", hwm, file=sys.stderr)
sys.exit(rc)
"""


def train_command(out: Path) -> dict:
    """Run `barenet train` (default recipe, data cached) and measure it from start to exit."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _TRAIN_WRAPPER, "train", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"barenet train failed: {proc.stderr.strip().splitlines()[-1:]}")
    text = proc.stdout
    return {
        "wall_seconds": wall,
        "train_seconds": float(re.search(r"training time\s+([\d.]+) s", text).group(1)),  # type: ignore[union-attr]
        "test_accuracy": float(re.search(r"test accuracy\s+([\d.]+)%", text).group(1)) / 100,  # type: ignore[union-attr]
        "peak_rss_mb": int(re.search(r"peak-rss-kib (\d+)", proc.stderr).group(1)) / 1024,  # type: ignore[union-attr]
    }


def predict_latency(model: Path, image: Path, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "barenet", "predict", str(model), str(image)], check=True,
                       capture_output=True)  # fmt: skip
        samples.append(time.perf_counter() - start)
    return samples


CONTESTANTS = (Barenet, Torch, Sklearn)


def worker(name: str) -> None:
    """In a fresh process: one warm-up epoch, one timed epoch, one timed inference; JSON out."""
    mnist = load("mnist")
    cls = next(c for c in CONTESTANTS if c.name == name)
    contestant = cls(mnist.train_images[:N_TRAIN], mnist.train_labels[:N_TRAIN])
    contestant.epoch()  # warm-up: first-touch allocations, thread pools start
    # The BLAS's throughput in this process, just before the timed epoch: the machine's speed
    # drifts by tens of percent from minute to minute, and barenet's GEMM efficiency compares
    # the epoch with the products of the same moment.
    gemm = gemm_throughput(repeats=3)
    epoch = contestant.epoch()
    contestant.predict(mnist.test_images)
    result = {"epoch": epoch, "gemm": gemm, "predict": contestant.predict(mnist.test_images)}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, help="JSON file (default: benchmarks/results/<date>.json)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["pytorch", "scikit-learn"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    names = [c.name for c in CONTESTANTS if c.name not in args.skip]
    epochs: dict[str, list[float]] = {name: [] for name in names}
    infer: dict[str, list[float]] = {name: [] for name in names}
    gemm: list[float] = []  # measured by each barenet process, before its timed epoch
    for r in range(args.repeats):
        for name in list(epochs):
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", name], capture_output=True, text=True
            )
            if proc.returncode != 0:
                print(
                    f"{name}: {proc.stderr.strip().splitlines()[-1]}; pip install '.[bench]'",
                    file=sys.stderr,
                )
                del epochs[name], infer[name]
                continue
            sample = json.loads(proc.stdout)
            epochs[name].append(sample["epoch"])
            infer[name].append(sample["predict"])
            if name == "barenet":
                gemm.append(sample["gemm"])
            print(
                f"repeat {r + 1}/{args.repeats}: {name:12s} epoch {sample['epoch']:.3f} s",
                file=sys.stderr,
            )
    mnist = load("mnist")

    with tempfile.TemporaryDirectory() as tmp:
        command = train_command(Path(tmp) / "run")
        from PIL import Image

        Image.fromarray(mnist.test_images[0]).save(Path(tmp) / "digit.png")
        latency = predict_latency(Path(tmp) / "run", Path(tmp) / "digit.png", args.repeats)

    med = {k: statistics.median(v) for k, v in epochs.items()}
    flops, gemm_med = epoch_flops(), statistics.median(gemm)
    # each barenet epoch against the GEMM throughput of its own process and moment
    efficiency = [flops / e / g for e, g in zip(epochs["barenet"], gemm, strict=True)]
    results = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "setup": {
            "n_train": N_TRAIN,
            "batch_size": BATCH,
            "network": f"784-{HIDDEN}-10",
            "dtype": "float32",
            "optimizer": "SGD, Nesterov momentum 0.9, L2 1e-4 on weights",
            "repeats": args.repeats,
        },  # fmt: skip
        "epoch_seconds": epochs,
        "epoch_seconds_median": med,
        "gemm_flops_per_s": gemm,
        "epoch_matmul_flops": flops,
        "barenet_gemm_efficiency_per_repeat": efficiency,
        "barenet_gemm_efficiency": statistics.median(efficiency),
        "ratios": {f"barenet/{k}": med["barenet"] / v for k, v in med.items() if k != "barenet"},
        "inference_seconds_10k": infer,
        "inference_images_per_s": {k: 10_000 / statistics.median(v) for k, v in infer.items()},
        "predict_command_seconds": latency,
        "train_command": command,
    }
    out = args.out or Path(__file__).parent / "results" / f"{results['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")

    print(f"\nseed network epoch (55,000 images, batch {BATCH}), median of {args.repeats}:")
    for k, v in med.items():
        print(
            f"  {k:14s} {v:7.3f} s"
            + (f"   barenet / {k} = {med['barenet'] / v:.2f}" if k != "barenet" else "")
        )
    print(f"GEMM throughput (NumPy float32, 2048^3, in each barenet process): "
          f"{gemm_med / 1e9:.0f} GFLOP/s (median; {min(gemm) / 1e9:.0f}-{max(gemm) / 1e9:.0f})")  # fmt: skip
    print(f"barenet epoch: {flops / 1e9:.0f} GFLOP of matrix products -> "
          f"{flops / med['barenet'] / 1e9:.0f} GFLOP/s (median epoch); against the GEMM "
          f"throughput of the same process: {100 * results['barenet_gemm_efficiency']:.0f}% "
          f"(median of {', '.join(f'{100 * e:.0f}' for e in efficiency)})")  # fmt: skip
    for k, v in results["inference_images_per_s"].items():
        print(f"inference {k:14s} {v:10.0f} images/s (predict_proba, 10,000 test images)")
    print(f"`barenet predict` one image: {statistics.median(latency):.2f} s (whole command)")
    print(f"`barenet train`: {command['train_seconds']:.1f} s training, {command['wall_seconds']:.1f} s whole command, "
          f"test {100 * command['test_accuracy']:.2f}%, peak RSS {command['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
