"""`barenet serve` under load (benchmarks/load_serve.py, bounded, loopback only): 32 clients
posting real digits for 30 s get no errors, no 5xx, the same answers as one client alone, and
the server's memory does not grow."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from load_serve import free_port, run_load, start_server, stop_server, warm_up  # noqa: E402


def test_32_clients_for_30_seconds(mnist):
    import json

    bodies = [json.dumps({"pixels": mnist.test_images[i].tolist()}).encode() for i in range(100)]
    port = free_port()
    proc = start_server([], port)
    try:
        answers = warm_up(port, bodies)
        result = run_load(port, proc.pid, bodies, answers, clients=32, seconds=30)
    finally:
        stop_server(proc)
    assert not result.errors, result.errors[:5]
    assert set(result.statuses) == {"200"} and result.requests >= 32
    # the answers match the digits' labels as well as they do alone (the packaged model)
    assert np.mean(np.array(answers, dtype=int) == mnist.test_labels[:100]) >= 0.97
    # flat memory: once warm, the last third of the run holds no more than the middle third
    rss = np.array(result.rss_mb)
    third = len(rss) // 3
    assert len(rss) >= 25
    assert rss[-third:].mean() < rss[third : 2 * third].mean() + 40, rss
