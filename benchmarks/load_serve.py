"""`barenet serve` under load: many clients posting digits to /api/predict at once, on loopback.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/load_serve.py \
        [--clients 32] [--seconds 30] [MODEL ...] [--json results/FILE.json]

Starts `barenet serve` in its own process, warms it up, then has --clients threads (each with
its own keep-alive connection) post real MNIST test digits back to back for --seconds. Prints
requests per second, latency percentiles, every status seen, and the server's resident memory
(from /proc) sampled each second: at the start of the run, its middle and its end. The test
suite runs the same load (tests/test_load.py) and asserts no errors, no 5xx and flat memory.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Load:
    clients: int
    seconds: float
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # connection failures, wrong answers
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, max
    requests_per_second: float = 0.0
    rss_mb: list[float] = field(default_factory=list)  # the server's, once a second


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run_load(port: int, pid: int, bodies: list[bytes], answers: list[str], *, clients: int = 32,
             seconds: float = 30.0) -> Load:  # fmt: skip
    """`clients` threads post `bodies` (JSON) round-robin for `seconds`; a 200 must carry the
    prediction `answers[i]` (the model's own, asked once beforehand)."""
    result = Load(clients, seconds)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        while time.monotonic() < end:
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/predict", body=body,
                             headers={"Content-Type": "application/json"})  # fmt: skip
                r = conn.getresponse()
                payload = r.read()
                ok = (
                    r.status != 200 or json.loads(payload)["prediction"] == answers[i % len(bodies)]
                )
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                with lock:
                    result.errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                statuses[r.status] += 1
                if not ok:
                    result.errors.append(f"request {i}: a different prediction than alone")
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        result.rss_mb.append(round(rss_mb(pid), 1))
        time.sleep(1.0)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    ms = 1000 * np.array(latencies)
    result.requests = len(latencies)
    result.statuses = {str(k): v for k, v in sorted(statuses.items())}
    result.requests_per_second = round(len(latencies) / elapsed, 1)
    if len(ms):
        result.latency_ms = {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)}
        result.latency_ms["max"] = round(float(ms.max()), 1)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "barenet", "serve", *models, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"the server did not start: {proc.stderr.read().decode()}"
                ) from None
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()


def digits(n: int = 200) -> list[bytes]:
    from barenet.data import datasets

    mnist = datasets.load("mnist")
    return [json.dumps({"pixels": mnist.test_images[i].tolist()}).encode() for i in range(n)]


def warm_up(port: int, bodies: list[bytes]) -> list[str]:
    """Ask for each digit once, alone: the answers every later request must repeat."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    answers = []
    for body in bodies:
        conn.request(
            "POST", "/api/predict", body=body, headers={"Content-Type": "application/json"}
        )
        answers.append(json.loads(conn.getresponse().read())["prediction"])
    conn.close()
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="default: the packaged model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import machine

    bodies, port = digits(), free_port()
    proc = start_server(args.models, port)
    try:
        answers = warm_up(port, bodies)
        result = run_load(port, proc.pid, bodies, answers, clients=args.clients,
                          seconds=args.seconds)  # fmt: skip
    finally:
        stop_server(proc)
    info = machine()
    print(f"{info['cpu']}, {info['blas']}, commit {info['commit']}")
    print(f"{result.clients} clients for {result.seconds:.0f} s: {result.requests} requests, "
          f"{result.requests_per_second} per second; statuses {result.statuses}; "
          f"{len(result.errors)} errors")  # fmt: skip
    print("latency ms: " + ", ".join(f"{k} {v}" for k, v in result.latency_ms.items()))
    rss = result.rss_mb
    print(f"server memory MB: start {rss[0]}, middle {rss[len(rss) // 2]}, end {rss[-1]}, "
          f"max {max(rss)}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "models": args.models or
                                               ["packaged"], **asdict(result)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
