"""Elementwise work split over the CPUs.

The BLAS runs matrix products on every core, but a NumPy elementwise operation runs on one: on
a 2-core laptop half the machine idles through an optimiser's update or a max-pool. NumPy
releases the GIL inside its elementwise loops over large arrays, so a few threads, each given
its own block of rows of the arrays, run in parallel. Every element is computed by the same
operations whichever thread computes it: the results are identical, bit for bit, to one call
on the whole arrays (tests/test_threads.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .arrays import array_module

_pool: ThreadPoolExecutor | None = None
_local = threading.local()  # .count: the calling thread's `limited` share, if any


def threads() -> int:
    """How many threads share elementwise work: the CPUs this process may run on, at most 4;
    inside `limited(count)`, count()."""
    count = getattr(_local, "count", None)
    if count is not None:
        return max(1, count())
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def limited(count: Callable[[], int]) -> Iterator[None]:
    """Within it, `threads()` in the calling thread is count() (at least 1), asked anew at
    every call: the share of the CPUs that work split from above leaves this thread, as an
    ensemble's members side by side do (`ensemble.members_proba`: one core each while
    several run, every core for the last). `in_blocks` and `blas.in_lanes` in it use that
    many threads; other threads are not affected."""
    before = getattr(_local, "count", None)
    _local.count = count
    try:
        yield
    finally:
        _local.count = before


def in_blocks(work: Callable[..., None], *arrays: Any, min_size: int = 1 << 16) -> None:
    """Run work(*blocks) on blocks of rows of `arrays`, in parallel threads.

    arrays: NumPy arrays with the same length along axis 0; each thread gets rows [lo, hi) of
    every one of them (views: `work` writes its results into them). Small arrays (fewer than
    `min_size` elements in the first one), one CPU, or a GPU array: one call, no thread.
    An exception in any block is raised here.
    """
    n = min(threads(), arrays[0].shape[0] if arrays[0].ndim else 1)
    if n < 2 or arrays[0].size < min_size or array_module(arrays[0]) is not np:
        work(*arrays)
        return
    rows = arrays[0].shape[0]
    bounds = [rows * i // n for i in range(n + 1)]
    blocks = [[a[lo:hi] for a in arrays] for lo, hi in zip(bounds, bounds[1:], strict=False)]
    for _ in pool().map(lambda block: work(*block), blocks):
        pass


def pool() -> ThreadPoolExecutor:
    """The process's worker threads (`threads()` of them), made on first use. Work given to
    them must not wait on other work given to them."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="barenet")
    return _pool
