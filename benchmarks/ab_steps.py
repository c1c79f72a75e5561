"""Training-step time of two checkouts of barenet, alternating, each in a fresh process.

    python benchmarks/ab_steps.py OLD_SRC NEW_SRC [--rounds 3]

OLD_SRC and NEW_SRC are the `src` folders of two checkouts (for example a `git worktree` of
an earlier commit). Each round runs both, one after the other, on the `seed` and `cnn`
recipes' networks (random inputs, batch 128, warm-up steps first) and prints the milliseconds
per step, so that a change can be shown to leave the speed as it was. Pause long trainings
first (`kill -STOP PID`): the figures are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

WORKER = """
import sys, time, json
sys.path.insert(0, sys.argv[1])
import numpy as np
import barenet
try:
    from barenet.train.recipes import RECIPES, build_model
    from barenet.train.loop import make_optimizer
    from barenet.nn.losses import softmax_cross_entropy
except ImportError:  # the layout before barenet.nn and barenet.train
    from barenet.recipes import RECIPES, build_model
    from barenet.train import make_optimizer
    from barenet.losses import softmax_cross_entropy
assert barenet.__file__.startswith(sys.argv[1]), barenet.__file__
rng = np.random.default_rng(0)
out = {}
for name, steps in (("seed", 200), ("cnn", 40)):
    recipe = RECIPES[name]
    model = build_model(recipe, (28, 28), 10)
    optimizer = make_optimizer(recipe, model)
    x, y = rng.random((128, 784), dtype=np.float32), np.arange(128) % 10
    def step():
        _, d = softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(d)
        optimizer.step(0.01)
    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    out[name] = (time.perf_counter() - t) / steps * 1000
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from machine import machine

    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}))
    for _ in range(args.rounds):
        for label, src in (("old", args.old), ("new", args.new)):
            p = subprocess.run([sys.executable, "-c", WORKER, src], capture_output=True,
                               text=True, check=True)  # fmt: skip
            steps = json.loads(p.stdout)
            print(f"{label}: seed {steps['seed']:.2f} ms, cnn {steps['cnn']:.1f} ms per step")


if __name__ == "__main__":
    main()
