"""What watching costs: the same training with and without the live page (`--watch`), side by
side in one process, with a browser-like client reading the event stream all along.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_watch.py \
        [--recipe cnn] [--images 12800] [--rounds 3] [--json results/FILE.json]

Each round trains one epoch over the first --images training images twice, unwatched then
watched (the order alternates between rounds so that drift favours neither), from the same
seed; it prints images per second of each and the watched run's slowdown. The median round is
the figure (docs/web.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load_serve import free_port  # noqa: E402
from machine import machine  # noqa: E402

from barenet.apps.live import Watch  # noqa: E402
from barenet.data import datasets  # noqa: E402
from barenet.train.loop import train  # noqa: E402
from barenet.train.monitor import Monitor  # noqa: E402
from barenet.train.recipes import build_model, get_recipe  # noqa: E402


def reader(port: int, stop: threading.Event, counts: list[int]) -> None:
    """A client of the event stream, as a page is: reads every event until told to stop."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/events")
    r = conn.getresponse()
    while not stop.is_set():
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            counts[0] += 1
    conn.close()


def one(recipe, x, y, xv, yv, watched: bool) -> tuple[float, int]:
    """Images per second of one epoch (validation excluded), and the events the client read."""
    model = build_model(recipe, (28, 28), 10, seed=0)
    monitor, watch, stop, counts = None, None, threading.Event(), [0]
    if watched:
        monitor = Monitor()
        watch = Watch(monitor, port=free_port())
        client = threading.Thread(target=reader, args=(watch.server.config.port, stop, counts))
        client.start()
    start = time.perf_counter()
    history = train(model, recipe, x, y, xv, yv, progress=False, monitor=monitor)
    seconds = time.perf_counter() - start
    if watch is not None:
        watch.close()
        stop.set()
        client.join(timeout=10)
    del history
    return len(x) / seconds, counts[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="cnn")
    ap.add_argument("--images", type=int, default=12_800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    mnist = datasets.load("mnist")
    recipe = dataclasses.replace(get_recipe(args.recipe), epochs=1)
    x, y = mnist.train_images[: args.images], mnist.train_labels[: args.images]
    xv, yv = mnist.train_images[-1000:], mnist.train_labels[-1000:]  # a small validation
    info = machine()
    print(f"{info['cpu']}, {info['blas']}, commit {info['commit']}")
    print(f"recipe {recipe.name}, one epoch of {len(x)} images (+ {len(xv)} validated)")
    rows = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        got = {w: one(recipe, x, y, xv, yv, w) for w in order}
        (plain, _), (watched, events) = got[False], got[True]
        slowdown = 1 - watched / plain
        rows.append({"plain": plain, "watched": watched, "slowdown": slowdown, "events": events})
        print(f"round {r + 1}: unwatched {plain:7.1f} images/s   watched {watched:7.1f} images/s"
              f"   slowdown {100 * slowdown:+.1f}%   ({events} events streamed)")  # fmt: skip
    median = statistics.median(row["slowdown"] for row in rows)
    print(f"median slowdown {100 * median:+.1f}% (target: under 5%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "recipe": recipe.name,
                                               "images": len(x), "rounds": rows,
                                               "median_slowdown": median}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
