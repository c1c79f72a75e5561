"""Fused y <- y + a x over whole arrays: BLAS's axpy (and scal, x <- a x), from NumPy's OpenBLAS.

Why: NumPy has no fused multiply-add over arrays, so `y += a * x` is two passes over memory
(the product into a buffer, then the add) and the optimiser's update, which is nothing but
such passes over every weight, costs 8 of them per step for SGD with Nesterov momentum and L2.
For the seed's 784x1024 weights that was a quarter of a training step. BLAS's level-1 `axpy`
does y <- y + a x in one pass, on every core; NumPy links OpenBLAS but exposes only its matrix
products, so this module finds NumPy's own copy among the libraries the process has loaded
(threadpoolctl lists them, with their paths) and calls it through ctypes.

It must be NumPy's copy: a second OpenBLAS in the process (SciPy's, which scikit-learn loads)
keeps a pool of worker threads of its own, and the two pools spin against each other (a seed
training step went from 4 to 20 ms). Where NumPy's OpenBLAS cannot be identified (another BLAS,
another packaging, a GPU array), `level1` returns None and callers use NumPy's operations.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from typing import Any

import numpy as np


class Level1:
    """axpy and scal of one OpenBLAS library, for contiguous 1-D float32 or float64 arrays."""

    def __init__(self, lib: ctypes.CDLL, prefix: str, suffix: str, int_type: Any) -> None:
        self._fns = {}
        for dtype, letter in ((np.float32, "s"), (np.float64, "d")):
            real = ctypes.c_float if letter == "s" else ctypes.c_double
            axpy = getattr(lib, f"{prefix}cblas_{letter}axpy{suffix}")
            axpy.argtypes = [int_type, real, ctypes.c_void_p, int_type, ctypes.c_void_p, int_type]
            axpy.restype = None
            scal = getattr(lib, f"{prefix}cblas_{letter}scal{suffix}")
            scal.argtypes = [int_type, real, ctypes.c_void_p, int_type]
            scal.restype = None
            self._fns[np.dtype(dtype)] = (axpy, scal)

    def supports(self, *arrays: Any) -> bool:
        """Whether every array is a contiguous 1-D NumPy array of one float dtype it handles."""
        first = arrays[0]
        return all(
            isinstance(a, np.ndarray) and a.ndim == 1 and a.flags.c_contiguous
            and a.flags.writeable and a.dtype == first.dtype and a.size == first.size
            for a in arrays
        ) and first.dtype in self._fns  # fmt: skip

    def axpy(self, a: float, x: np.ndarray, y: np.ndarray) -> None:
        """y <- y + a x, in place; x and y: (n,), one dtype (checked by `supports`)."""
        self._fns[x.dtype][0](x.size, a, x.ctypes.data, 1, y.ctypes.data, 1)

    def scal(self, a: float, x: np.ndarray) -> None:
        """x <- a x, in place; x: (n,)."""
        self._fns[x.dtype][1](x.size, a, x.ctypes.data, 1)


def _numpy_openblas_path() -> str | None:
    """The file of the OpenBLAS NumPy computes with, if it can be told apart from others."""
    from threadpoolctl import threadpool_info

    with warnings.catch_warnings():  # its notes on OpenMP runtimes concern other libraries
        warnings.simplefilter("ignore")
        libraries = threadpool_info()
    paths = [
        info["filepath"]
        for info in libraries
        if info.get("internal_api") == "openblas" and info.get("filepath")
    ]
    # NumPy's wheels carry their OpenBLAS beside the package (numpy.libs, numpy/.dylibs).
    numpy_dir = os.path.dirname(os.path.realpath(np.__file__))
    own = [p for p in paths if os.path.realpath(p).startswith(numpy_dir)]
    if len(own) == 1:
        return own[0]
    return paths[0] if len(paths) == 1 else None  # one shared library (a distribution's numpy)


@functools.cache
def _load() -> Level1 | None:
    path = _numpy_openblas_path()
    if path is None:
        return None
    lib = ctypes.CDLL(path)  # already loaded by NumPy: this returns a handle to the same copy
    for prefix in ("scipy_", ""):  # NumPy >= 2 wheels prefix their OpenBLAS's symbols
        for suffix in ("64_", "_64", ""):
            if not hasattr(lib, f"{prefix}cblas_saxpy{suffix}"):
                continue
            config_fn = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
            if config_fn is None:
                return None
            config_fn.restype = ctypes.c_char_p
            config = (config_fn() or b"").decode(errors="replace")
            int_type = ctypes.c_int64 if "USE64BITINT" in config else ctypes.c_int32
            level1 = Level1(lib, prefix, suffix, int_type)
            return level1 if _agrees_with_numpy(level1) else None
    return None


def _agrees_with_numpy(level1: Level1) -> bool:
    """A call on small arrays gives NumPy's answer (a wrongly bound library is never used)."""
    for dtype in (np.float32, np.float64):
        x = np.arange(1.0, 8.0, dtype=dtype)
        y = np.full(7, 2.0, dtype=dtype)
        level1.axpy(0.5, x, y)
        level1.scal(2.0, y)
        if not np.array_equal(y, 2.0 * (2.0 + 0.5 * x)):
            return False
    return True


def level1(*arrays: Any) -> Level1 | None:
    """NumPy's OpenBLAS axpy/scal if they can run on `arrays` (see `Level1.supports`), else None."""
    lib = _load()
    return lib if lib is not None and lib.supports(*arrays) else None
