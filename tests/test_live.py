"""The live training page: the Monitor the training loop reports to (its events, pause and stop,
a stopped run that resumes bit for bit), the page's routes (streams, control, bad input, a
hundred clients, a client that leaves mid-stream), `barenet serve RUN_DIR`, and a real browser
watching `barenet train --watch`."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from barenet.apps.live import Watch, create_live_app, monitor_of_run
from barenet.apps.serve import create_app
from barenet.nn.model import mlp
from barenet.train.loop import train
from barenet.train.monitor import Monitor
from barenet.train.recipes import Recipe

CLASSES = [str(c) for c in range(10)]


def data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 8x8 'images': the class is which of ten bands of pixels is bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i].reshape(-1)[6 * c : 6 * c + 6] = 250
    return x, y


RECIPE = Recipe(name="tiny", description="a test", epochs=3, batch_size=20, lr=0.1)


def tiny(seed: int = 0):
    return mlp([64, 16, 10], rng=np.random.default_rng(seed))


def run_tiny(monitor: Monitor | None = None, **kwargs):
    x, y = data()
    xv, yv = data(100, seed=1)
    model = tiny()
    history = train(model, RECIPE, x, y, xv, yv, progress=False, monitor=monitor, **kwargs)
    return model, history


def test_a_monitor_sees_every_epoch_steps_filters_and_the_confusion_matrix():
    monitor = Monitor()
    _, history = run_tiny(monitor)
    events = monitor.events()
    types = [e["type"] for e in events]
    assert types[0] == "begin" and events[0]["steps"] == 30 and events[0]["epochs"] == 3
    epochs = [e for e in events if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["val_accuracy"] for e in epochs] == [r.val_accuracy for r in history.epochs]
    steps = [e for e in events if e["type"] == "step"]
    assert steps and all(e["step"] == 30 for e in steps if e is steps[-1])  # each epoch's end
    assert {(e["epoch"], e["step"]) for e in steps} >= {(1, 30), (2, 30), (3, 30)}
    # of the others only the newest is kept: one filters, one confusion, one state
    assert types.count("filters") == types.count("confusion") == types.count("state") == 1
    filters = next(e for e in events if e["type"] == "filters")
    assert filters["kind"] == "dense" and filters["size"] == [8, 8]
    assert len(filters["images"]) == 16  # all 16 hidden units
    c = next(e for e in events if e["type"] == "confusion")
    assert c["epoch"] == 3 and np.sum(c["matrix"]) == 100
    correct = np.trace(np.array(c["matrix"])) / 100
    assert correct == pytest.approx(history.epochs[-1].val_accuracy)
    assert len(c["mistakes"]) == min(12, 100 - np.trace(np.array(c["matrix"])))
    assert monitor.state == "done" and events[-1]["type"] == "state"
    # a late reader asks for what it has not seen
    assert monitor.events(events[-2]["seq"]) == [events[-1]]


def test_pause_holds_the_loop_and_stop_ends_it_cleanly_and_resumably(tmp_path):
    """Paused between steps, the loop takes none; stopped, it writes the checkpoint and says
    where; resumed from there, it ends with the same weights as a run never stopped."""
    monitor = Monitor()
    checkpoint = tmp_path / "c.npz"
    monitor.pause()
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(zip(("model", "history"), run_tiny(monitor,
                                     checkpoint=checkpoint))))  # fmt: skip
    thread.start()
    time.sleep(0.5)
    assert monitor.state == "paused" and not [e for e in monitor.events() if e["type"] == "step"]
    monitor.resume()
    while not any(e["type"] == "epoch" for e in monitor.events()):  # wait for an epoch's end
        time.sleep(0.005)
    monitor.pause()
    time.sleep(0.2)
    n = len(monitor.events())
    time.sleep(0.5)
    assert len(monitor.events()) == n  # nothing moves while paused
    monitor.stop()
    thread.join(timeout=30)
    history = result["history"]
    assert history.stopped_at is not None and monitor.state == "stopped"
    assert checkpoint.exists()

    again = tiny()
    x, y = data()
    xv, yv = data(100, seed=1)
    resumed = train(again, RECIPE, x, y, xv, yv, progress=False, checkpoint=checkpoint,
                    resume=True)  # fmt: skip
    straight, _ = run_tiny()
    for (name, a, _), (_, b, _) in zip(again.parameters(), straight.parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert [e.val_accuracy for e in resumed.epochs] == [
        e.val_accuracy for e in run_tiny()[1].epochs
    ]


def test_a_pause_is_pausing_until_the_loop_holds():
    """The page's pause holds the loop before its next step; until the loop gets there (the
    step in hand may still add a point) the state says "pausing", not "paused"."""
    monitor = Monitor()
    monitor.pause()
    assert monitor.state == "pausing"
    answer = []
    loop = threading.Thread(target=lambda: answer.append(monitor.wait()))
    loop.start()
    deadline = time.monotonic() + 10
    while monitor.state != "paused":
        assert time.monotonic() < deadline, "the loop never held"
        time.sleep(0.005)
    assert loop.is_alive()  # held, until the page resumes it
    monitor.resume()
    loop.join(timeout=10)
    assert answer == [False] and monitor.state == "running"
    # paused and resumed before the loop came by: it never holds, and says nothing of a pause
    monitor.pause()
    monitor.resume()
    assert monitor.wait() is False and monitor.state == "running"
    states = [e["state"] for e in monitor.events() if e["type"] == "state"]
    assert states[-1] == "running"
    # a stop while pausing ends the wait at once
    monitor.pause()
    monitor.stop()
    assert monitor.wait() is True and monitor.state == "stopping"


def test_a_finished_run_saves_and_loads_its_events(tmp_path):
    monitor = Monitor()
    run_tiny(monitor)
    monitor.save(tmp_path / "watch.json")
    again = Monitor.load(tmp_path / "watch.json")
    strip = lambda events: [{k: v for k, v in e.items() if k != "seq"} for e in events]  # noqa: E731
    assert strip(again.events()) == strip(monitor.events()) and again.state == "done"


@pytest.fixture(scope="module")
def finished() -> Monitor:
    monitor = Monitor()
    run_tiny(monitor)
    return monitor


def test_routes_of_a_live_run(finished):
    monitor = Monitor(classes=CLASSES)
    monitor.begin(epochs=2, steps=10, batch_size=5, recipe="r", num_classes=10)
    with TestClient(create_live_app(monitor, live=True)) as c:
        assert "watch it learn" in c.get("/").text
        state = c.get("/api/state").json()
        assert state["live"] and state["state"] == "running"
        assert [e["type"] for e in state["events"]] == ["begin", "state"]
        assert c.post("/api/control", json={"action": "pause"}).json() == {"state": "pausing"}
        assert c.post("/api/control", json={"action": "resume"}).json() == {"state": "running"}
        assert c.post("/api/control", json={"action": "stop"}).json() == {"state": "stopping"}
        after = c.get("/api/state?after=1").json()["events"]
        assert all(e["seq"] > 1 for e in after) and after[-1]["state"] == "stopping"


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("post", "/api/control", b"{not json", 400, "malformed JSON"),
        ("post", "/api/control", b"[1, 2]", 422, "send"),
        ("post", "/api/control", b'{"action": "explode"}', 422, "send"),
        ("post", "/api/control", b"x" * 20_000, 413, "over"),
        ("get", "/api/state?after=-1", None, 400, "event number"),
        ("get", "/api/events?after=abc", None, 400, "event number"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(finished, method, path, body, status, fragment):
    with TestClient(create_live_app(finished, live=True)) as c:
        r = c.post(path, content=body) if method == "post" else c.get(path)
    assert r.status_code == status and fragment in r.json()["error"]


def test_a_finished_run_cannot_be_controlled(finished):
    with TestClient(create_live_app(finished, live=False)) as c:
        r = c.post("/api/control", json={"action": "pause"})
        assert r.status_code == 409 and "finished" in r.json()["error"]
        assert not c.get("/api/state").json()["live"]


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(body=st.one_of(st.binary(max_size=200),
                      st.builds(lambda v: json.dumps({"action": v}),
                                st.one_of(st.text(max_size=10), st.integers(), st.none(),
                                          st.lists(st.integers(), max_size=3)))),
       after=st.text(max_size=12))  # fmt: skip
def test_fuzzed_requests_never_crash_the_live_routes(finished, body, after):
    with TestClient(create_live_app(finished, live=True), raise_server_exceptions=False) as c:
        r = c.post("/api/control", content=body)
        assert r.status_code in (400, 409, 413, 422), r.text
        assert "error" in r.json()
        r = c.get("/api/state", params={"after": after})
        assert r.status_code in (200, 400) and ("error" in r.json()) == (r.status_code == 400)


def _read_events(port: int, n: int, timeout: float = 20) -> list[dict]:
    """Open a stream, read until n events have come, and hang up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/api/events")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    events = []
    while len(events) < n:
        line = r.fp.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    conn.close()
    return events


def test_streams_survive_a_hundred_clients_and_one_that_leaves_mid_stream():
    monitor = Monitor(classes=CLASSES)
    monitor.begin(epochs=1, steps=100, batch_size=5, recipe="r", num_classes=10)
    watch = Watch(monitor, port=free_port())
    port = watch.server.config.port
    try:
        # one client reads a little and hangs up mid-stream
        assert _read_events(port, 1)[0]["type"] == "begin"
        # a hundred connect at once; each sees the replay and then live events
        with ThreadPoolExecutor(max_workers=100) as pool:
            futures = [pool.submit(_read_events, port, 5) for _ in range(100)]
            time.sleep(1.0)
            for k in range(3):
                monitor.emit({"type": "step", "epoch": 1, "step": k + 1, "loss": 1.0})
            streams = [f.result(timeout=60) for f in futures]
        for events in streams:
            assert [e["type"] for e in events] == ["begin", "state", "step", "step", "step"]
        # and the server still answers
        again = _read_events(port, 5)
        assert [e["step"] for e in again[2:]] == [1, 2, 3]
    finally:
        watch.close()
    assert not watch.thread.is_alive()


def test_serve_a_run_directory_shows_its_page_beside_the_draw_page(tmp_path):
    monitor = Monitor()
    model, _ = run_tiny(monitor)
    monitor.save(tmp_path / "watch.json")
    run = monitor_of_run(tmp_path)
    digits = mlp([784, 8, 10], rng=np.random.default_rng(0))
    with TestClient(create_app([digits], CLASSES, run=run)) as c:
        assert "draw a digit" in c.get("/").text
        assert "watch it learn" in c.get("/run/").text
        events = c.get("/run/api/state").json()["events"]
        assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2, 3]
        assert c.post("/run/api/control", json={"action": "stop"}).status_code == 409


def test_serve_an_old_run_builds_its_page_from_history_and_model(mnist):
    """A run from before watch.json (the packaged models/cnn): epochs from history.json,
    filters and confusion from its model on the validation split."""
    run = Path(__file__).parents[1] / "models" / "cnn"
    monitor = monitor_of_run(run)
    events = monitor.events()
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [
        e["epoch"] for e in history["epochs"]
    ]
    filters = next(e for e in events if e["type"] == "filters")
    assert filters["kind"] == "conv" and filters["size"] == [3, 3]
    c = next(e for e in events if e["type"] == "confusion")
    val = history["epochs"][-1]["val_accuracy"]
    assert np.trace(c["matrix"]) / np.sum(c["matrix"]) == pytest.approx(val, abs=2e-4)


@contextlib.contextmanager
def _watching(tmp_path: Path, port: int, *extra: str) -> Iterator[subprocess.Popen]:
    """`barenet train --watch` in a subprocess, killed and reaped however the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "barenet", "train", "--epochs", "20", "--out", str(tmp_path / "run"),
         "--no-progress", "--watch", "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _wait_for_page(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the live page did not come up"
            time.sleep(0.2)


def test_ctrl_c_stops_a_watched_run_cleanly(tmp_path, mnist):
    port = free_port()
    with _watching(tmp_path, port) as proc:
        _wait_for_page(port, proc)
        _read_events(port, 4)  # training has begun
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped in epoch 1/20" in out and "Traceback" not in out
    # the model as it stands, on validation only: the test set is read when a run finishes
    assert "test accuracy       not measured: the run stopped before its end" in out
    assert "validation accuracy" in out and "test accuracy       9" not in out
    meta_run = tmp_path / "run"
    assert {"model.npz", "checkpoint.npz", "watch.json", "history.json"} <= {
        p.name for p in meta_run.iterdir()
    }
    states = [e["state"] for e in Monitor.load(meta_run / "watch.json").events()
              if e["type"] == "state"]  # fmt: skip
    assert states == ["stopped"]


def test_ctrl_c_in_an_ensembles_first_member_stops_the_run(tmp_path, mnist):
    port = free_port()
    with _watching(tmp_path, port, "--members", "2", "--batch-size", "512") as proc:
        _wait_for_page(port, proc)
        _read_events(port, 4)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "member 1 as it stands: validation accuracy" in out and "member 2/2" not in out
    assert "test accuracy       not measured" in out and "ensemble of" not in out
    run_dir = tmp_path / "run"
    assert (run_dir / "member-1" / "checkpoint.npz").exists()
    assert not (run_dir / "ensemble.json").exists()  # written once the ensemble is complete
    # `barenet serve RUN` shows the stopped ensemble's training page: its first member's
    states = [e["state"] for e in monitor_of_run(run_dir).events() if e["type"] == "state"]
    assert states == ["stopped"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(apt-get install chromium; .ci/run does it as root)")  # fmt: skip
def test_watching_a_training_in_a_real_browser(tmp_path, mnist):
    from playwright.sync_api import sync_playwright

    port = free_port()
    with _watching(tmp_path, port) as proc:
        _wait_for_page(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("Number(document.body.dataset.points) >= 3")
                assert page.inner_text("#state") == "running"
                assert page.locator("#filters canvas").count() == 32
                # the first epoch ends: a validation point, a confusion matrix, mistakes
                page.wait_for_function("Number(document.body.dataset.epochs) >= 1",
                                       timeout=120_000)  # fmt: skip
                assert page.locator("#confusion tr").count() == 11
                assert page.locator("#mistakes figure").count() > 0
                assert page.inner_text("#val").endswith("%")
                # pause holds the curves and the epoch count
                page.click("#pause")
                page.wait_for_function("document.body.dataset.state === 'paused'")
                held = (page.get_attribute("body", "data-points"), page.inner_text("#step"))
                time.sleep(2.0)
                assert (page.get_attribute("body", "data-points"),
                        page.inner_text("#step")) == held  # fmt: skip
                assert page.inner_text("#pause") == "resume"
                # a second tab sees the same run, history included
                other = browser.new_page()
                other.goto(f"http://127.0.0.1:{port}/")
                other.wait_for_function(f"document.body.dataset.points === '{held[0]}'")
                assert other.inner_text("#state") == "paused"
                page.click("#pause")
                page.wait_for_function(f"Number(document.body.dataset.points) > {held[0]}")
                page.wait_for_function("Number(document.body.dataset.epochs) >= 2",
                                       timeout=120_000)  # fmt: skip
                page.click("#stop")
                page.wait_for_function("document.body.dataset.state === 'stopped'",
                                       timeout=60_000)  # fmt: skip
            finally:
                browser.close()
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "stopped in epoch" in out, out
    assert (tmp_path / "run" / "model.npz").exists()
