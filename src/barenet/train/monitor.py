"""What a running training shows the live page (`barenet train --watch`), and the pause and
stop buttons it listens to.

The training loop calls a Monitor at every step and at the end of every epoch; the Monitor keeps
what a page needs as a list of small JSON events, and the page (apps/live.py) streams them:

    {"type": "begin", "member", "members", "epochs", "steps", "batch_size", "recipe", "classes"}
    {"type": "step", "epoch", "step", "loss", "accuracy", "lr", "images_per_second",
     "seconds_left"}                                  a point of the training curves
    {"type": "epoch", ...one EpochRecord...}          a point of the validation curve
    {"type": "filters", "kind": "conv"|"dense", "size": [h, w], "images": [base64 uint8]}
    {"type": "confusion", "epoch", "matrix": C x C counts, "mistakes": [{"image": base64
     uint8 28x28, "true", "predicted", "confidence"}]}
    {"type": "state", "state": "running"|"pausing"|"paused"|"stopping"|"stopped"|"done"}

A pause asked for is "pausing" until the loop has finished the step in hand and holds before
the next one; only then "paused": from there on, nothing moves until it resumes.

Costs are kept off the training's path: a step records four numbers and at most every
STEP_SECONDS (a fast recipe makes ~100 steps a second); the first layer's weights are copied at
most every FILTER_SECONDS; the confusion matrix comes from the validation predictions the epoch
makes anyway. Thread-safe: the loop writes from its thread, the web server reads from others.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.arrays import to_numpy
from ..files.atomic import atomic_write
from ..nn.conv import Conv2D
from ..nn.layers import Dense
from ..nn.model import Sequential

STEP_SECONDS = 0.25  # at most four curve points a second
FILTER_SECONDS = 2.0  # the first layer's weights redrawn at most every two seconds
MAX_FILTERS = 32
MISTAKES = 12
REPLAYED = ("begin", "step", "epoch")  # kept in full; of the others only the latest is kept


def json_number(x: float) -> float | None:
    """x as JSON holds it: NaN (a figure not measured) becomes null, since JSON has no NaN."""
    return None if math.isnan(x) else x


def _pixels(a: np.ndarray) -> str:
    """An array scaled to 0..255 uint8, its bytes in base64 (row-major)."""
    a = to_numpy(a).astype(np.float64)  # a network on a GPU: its copy here
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return base64.b64encode(np.rint(255 * scaled).astype(np.uint8).tobytes()).decode()


def first_layer_images(model: Sequential, side: int) -> dict[str, Any] | None:
    """The first weighted layer's weights as small images: a convolution's filters (k x k, the
    first input channel), or a dense layer's first units (side x side, one per unit). None when the
    model has neither."""
    layer = next((la for la in model.layers if isinstance(la, Conv2D | Dense)), None)
    if isinstance(layer, Conv2D):
        W = layer.params["W"]  # (k, k, C, F)
        filters = [W[:, :, 0, f] for f in range(min(W.shape[3], MAX_FILTERS))]
        return {"type": "filters", "kind": "conv", "size": list(W.shape[:2]),
                "images": [_pixels(f) for f in filters]}  # fmt: skip
    if isinstance(layer, Dense) and layer.params["W"].shape[0] == side * side:
        W = layer.params["W"]  # (side*side, H)
        units = [W[:, j].reshape(side, side) for j in range(min(W.shape[1], MAX_FILTERS))]
        return {"type": "filters", "kind": "dense", "size": [side, side],
                "images": [_pixels(u) for u in units]}  # fmt: skip
    return None


def _image(images: np.ndarray, i: int) -> dict[str, Any]:
    """Image i of (N, H, W) uint8 images, its bytes in base64; nothing for (N, D) features."""
    if images.ndim != 3:
        return {}
    data = base64.b64encode(np.ascontiguousarray(images[i], dtype=np.uint8).tobytes()).decode()
    return {"image": data, "size": list(images.shape[1:])}


def confusion(
    epoch: int, proba: np.ndarray, labels: np.ndarray, images: np.ndarray
) -> dict[str, Any]:
    """The confusion matrix of predictions `proba` (N, C) against `labels` (N,), and the most
    confident mistakes with their images (N, H, W) uint8 (none for (N, D) features)."""
    C = proba.shape[1]
    predicted = proba.argmax(axis=1)
    matrix = np.zeros((C, C), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-proba[wrong, predicted[wrong]], kind="stable")][:MISTAKES]
    return {
        "type": "confusion",
        "epoch": epoch,
        "matrix": matrix.tolist(),
        "mistakes": [
            {
                **_image(images, i),
                "true": int(labels[i]),
                "predicted": int(predicted[i]),
                "confidence": round(float(proba[i, predicted[i]]), 4),
            }
            for i in worst
        ],
    }


class Monitor:
    """A training's events for the live page, and its pause and stop requests."""

    def __init__(self, *, member: int = 1, members: int = 1,
                 classes: list[str] | None = None) -> None:  # fmt: skip
        self.member, self.members, self.classes = member, members, classes
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []  # replayed in full, in order
        self._latest: dict[str, dict[str, Any]] = {}  # the newest of each other type
        self.seq = 0  # every event gets the next number; readers ask for those after theirs
        self._running = threading.Event()  # clear while paused
        self._running.set()
        self._control = threading.Lock()  # one state change at a time (page and loop)
        self.stop_requested = False
        self.state = "running"
        self._last_step = self._last_filters = -math.inf
        self._window: tuple[float, int] | None = None  # (time, images seen) at the last point
        self._images = 0
        self._steps_left = 0
        self.paused_seconds = 0.0

    # --- written by the training loop -------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.seq += 1
            event = {**event, "seq": self.seq}
            if event["type"] in REPLAYED:
                self._events.append(event)
            else:
                self._latest[event["type"]] = event

    def begin(self, *, epochs: int, steps: int, batch_size: int, recipe: str, num_classes: int,
              first_epoch: int = 0, done: Sequence[Any] = ()) -> None:  # fmt: skip
        """A member's training starts, or resumes after `first_epoch` epochs whose records
        are `done`: a fresh page, with those epochs on it. Classes are named by `classes`, or
        "0", "1", ... when the monitor was given none."""
        classes = self.classes or [str(c) for c in range(num_classes)]
        with self._lock:
            self._events, self._latest = [], {}
        self._window, self._images = None, 0
        self._steps_left = (epochs - first_epoch) * steps
        self.emit({"type": "begin", "member": self.member, "members": self.members,
                   "epochs": epochs, "steps": steps, "batch_size": batch_size,
                   "recipe": recipe, "classes": classes})  # fmt: skip
        for record in done:
            self.emit({"type": "epoch", **record.to_dict()})
        self._set_state("pausing" if not self._running.is_set() else "running")

    def step(self, epoch: int, step: int, steps: int, batch: int, loss: float, accuracy: float,
             lr: float, model: Sequential, side: int) -> None:  # fmt: skip
        """After step `step` (1-based) of `epoch` (1-based): loss and accuracy are the epoch's
        running means. Records a curve point at most every STEP_SECONDS."""
        now = time.monotonic()
        self._images += batch
        self._steps_left -= 1
        if now - self._last_filters >= FILTER_SECONDS:
            self._last_filters = now
            filters = first_layer_images(model, side)
            if filters is not None:
                self.emit(filters)
        if now - self._last_step < STEP_SECONDS and step < steps:
            return
        self._last_step = now
        rate = math.nan
        if self._window is not None and now > self._window[0]:
            rate = (self._images - self._window[1]) / (now - self._window[0])
        self._window = (now, self._images)
        left = self._steps_left * batch / rate if rate > 0 else None
        self.emit({"type": "step", "epoch": epoch, "step": step, "loss": round(loss, 5),
                   "accuracy": round(accuracy, 5), "lr": lr,
                   "images_per_second": json_number(round(rate, 1)),
                   "seconds_left": None if left is None else round(left, 1)})  # fmt: skip

    def epoch(self, record: Any, proba: np.ndarray | None, labels: np.ndarray | None,
              images: np.ndarray | None) -> None:  # fmt: skip
        """An epoch ended: its record (an EpochRecord), and its validation predictions (N, C)
        of `labels` (N,) for `images` (N, H, W) uint8, when it has a validation split."""
        self.emit({"type": "epoch", **record.to_dict()})
        if proba is not None and labels is not None and images is not None:
            self.emit(confusion(record.epoch, proba, labels, images))

    def wait(self) -> bool:
        """Block while paused; True when a stop was requested. Called before each step."""
        if not self._running.is_set():
            with self._control:
                if self.state == "pausing":  # the step in hand is done: now nothing moves
                    self._set_state("paused")
            t0 = time.monotonic()
            while not self._running.wait(0.1):
                if self.stop_requested:
                    break
            self.paused_seconds += time.monotonic() - t0
            self._window = None  # a pause is no measure of speed
        return self.stop_requested

    def finish(self, stopped: bool) -> None:
        self._set_state("stopped" if stopped else "done")

    # --- asked by the page (from other threads) ----------------------------------------------

    def pause(self) -> None:
        """Hold the loop before its next step: "pausing" now, "paused" once it holds."""
        with self._control:
            if self.state == "running":
                self._running.clear()
                self._set_state("pausing")

    def resume(self) -> None:
        with self._control:
            if self.state in ("pausing", "paused"):
                self._running.set()
                self._set_state("running")

    def stop(self) -> None:
        with self._control:
            if self.state in ("running", "pausing", "paused"):
                self.stop_requested = True
                self._running.set()
                self._set_state("stopping")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.emit({"type": "state", "state": state})

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """The events numbered above `after`, in order: with after=0, the whole run so far (the
        curves in full, the newest filters, confusion matrix and state)."""
        with self._lock:
            found = [e for e in self._events if e["seq"] > after]
            found += [e for e in self._latest.values() if e["seq"] > after]
        return sorted(found, key=lambda e: e["seq"])

    # --- a finished run, kept beside its model ------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write every event (watch.json) for `barenet serve RUN_DIR`, atomically."""
        with atomic_write(path, "w") as f:
            json.dump({"events": self.events()}, f)

    @classmethod
    def load(cls, path: str | Path) -> Monitor:
        """A finished run's monitor, from its watch.json (read-only: nothing is running)."""
        events = json.loads(Path(path).read_text())["events"]
        if not isinstance(events, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str) for e in events
        ):
            raise ValueError("not a list of events")
        monitor = cls()
        for e in events:
            monitor.emit({k: v for k, v in e.items() if k != "seq"})
        monitor.state = next((e["state"] for e in reversed(events) if e["type"] == "state"), "done")
        return monitor
