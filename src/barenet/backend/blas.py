"""Fused updates over whole arrays from NumPy's OpenBLAS: axpy (y <- y + a x), scal (x <- a x)
and gemm with beta = 1 (C <- C + A B).

Why: NumPy has no fused multiply-add over arrays, so `y += a * x` is two passes over memory
(the product into a buffer, then the add) and the optimiser's update, which is nothing but
such passes over every weight, costs 8 of them per step for SGD with Nesterov momentum and L2.
For the seed's 784x1024 weights that was a quarter of a training step. BLAS's level-1 `axpy`
does y <- y + a x in one pass, on every core. Likewise NumPy's matmul only assigns its result:
adding a product onto an array costs a temporary and a second pass, where gemm with beta = 1
adds it while it computes (a convolution's input gradient, `Conv2D`). NumPy links OpenBLAS but
exposes only its matrix products, so this module finds NumPy's own copy among the libraries
the process has loaded (threadpoolctl lists them, with their paths) and calls it through ctypes.

It must be NumPy's copy: a second OpenBLAS in the process (SciPy's, which scikit-learn loads)
keeps a pool of worker threads of its own, and the two pools spin against each other (docs/speed.md). Where NumPy's OpenBLAS cannot be identified (another BLAS,
another packaging, a GPU array), `level1` returns None and `matmul_add` False, and callers
use NumPy's operations.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .arrays import array_module
from .threads import in_blocks, pool, threads

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enumerations


class Level1:
    """axpy and scal of one OpenBLAS library, for contiguous 1-D float32 or float64 arrays, and
    its gemm (`matmul_add`)."""

    def __init__(self, lib: ctypes.CDLL, prefix: str, suffix: str, int_type: Any) -> None:
        self._fns = {}
        self._gemm = {}
        for dtype, letter in ((np.float32, "s"), (np.float64, "d")):
            real = ctypes.c_float if letter == "s" else ctypes.c_double
            axpy = getattr(lib, f"{prefix}cblas_{letter}axpy{suffix}")
            axpy.argtypes = [int_type, real, ctypes.c_void_p, int_type, ctypes.c_void_p, int_type]
            axpy.restype = None
            scal = getattr(lib, f"{prefix}cblas_{letter}scal{suffix}")
            scal.argtypes = [int_type, real, ctypes.c_void_p, int_type]
            scal.restype = None
            self._fns[np.dtype(dtype)] = (axpy, scal)
            gemm = getattr(lib, f"{prefix}cblas_{letter}gemm{suffix}")
            # order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
            gemm.argtypes = [ctypes.c_int] * 3 + [int_type] * 3 + [real, ctypes.c_void_p,
                             int_type, ctypes.c_void_p, int_type, real, ctypes.c_void_p, int_type]  # fmt: skip
            gemm.restype = None
            self._gemm[np.dtype(dtype)] = gemm
        self.get_threads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
        self.set_threads = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
        if self.set_threads is not None:
            self.set_threads.argtypes = [ctypes.c_int]
            self.set_threads.restype = None

    def matmul_add(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
        """c <- c + a b in place, if BLAS can take the arrays as they lie (see `matmul_add`)."""
        la, lb, lc = _layout(a), _layout(b), _layout(c)
        if la is None or lb is None or lc is None or lc[0] != _NO_TRANS or not c.flags.writeable:
            return False
        (m, k), (_, n) = a.shape, b.shape
        if b.shape[0] != k or c.shape != (m, n) or not a.dtype == b.dtype == c.dtype:
            return False
        if a.dtype not in self._gemm:
            return False
        if m and n and k:
            self._gemm[a.dtype](_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, a.ctypes.data, la[1],
                                b.ctypes.data, lb[1], 1.0, c.ctypes.data, lc[1])  # fmt: skip
        return True

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


class NumpyLevel1:
    """axpy and scal in NumPy, for arrays `Level1` cannot take (CuPy's, strided, other
    dtypes): the same updates in two elementwise passes each, split over the CPUs
    (`threads.in_blocks`: bit for bit one pass's result). scratch: an array like the ones
    updated, overwritten by axpy."""

    def __init__(self, scratch: Any) -> None:
        self.scratch = scratch

    def axpy(self, a: float, x: Any, y: Any) -> None:
        """y <- y + a x, in place."""

        def work(x: Any, y: Any, s: Any) -> None:
            array_module(x).multiply(x, a, out=s)
            y += s

        in_blocks(work, x, y, self.scratch)

    def scal(self, a: float, x: Any) -> None:
        """x <- a x, in place."""

        def work(x: Any) -> None:
            x *= a

        in_blocks(work, x)


def _layout(x: Any) -> tuple[int, int] | None:
    """How BLAS reads the 2-D NumPy array x as a row-major matrix: (transpose flag, leading
    dimension): rows contiguous, or columns contiguous (the transpose of such an array), with
    a row (column) stride of their own; None for any other layout."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        return None
    item, (r, s), (sr, ss) = x.itemsize, x.shape, x.strides
    if (ss == item or s == 1) and sr % item == 0 and sr // item >= max(s, 1):
        return _NO_TRANS, sr // item
    if (sr == item or r == 1) and ss % item == 0 and ss // item >= max(r, 1):
        return _TRANS, ss // item
    return None


def matmul_add(a: Any, b: Any, c: Any) -> bool:
    """c <- c + a b with BLAS's gemm (beta = 1): the product added in place while it is
    computed, instead of NumPy's temporary and second pass.

    a: (m, k), b: (k, n), c: (m, n): NumPy arrays of one float dtype; a and b with contiguous
    rows or contiguous columns (a transposed view), c with contiguous rows; any of them may be
    a block of rows of a larger array. Returns False, touching nothing, where NumPy's OpenBLAS
    cannot be identified or cannot take the arrays: the caller then computes otherwise.
    """
    lib = _load()
    return lib is not None and lib.matmul_add(a, b, c)


def matmul_long(a: Any, b: Any, chunk: int = 1024) -> Any:
    """a (m, K) @ b (K, n) for K much larger than m and n (a first convolution's weight
    gradient: (10, 100352) @ (100352, 32)), as the sum of the products of its K-chunks.

    OpenBLAS spreads one such product poorly over its threads; the same product as chunks of
    1024, one batched matmul (each chunk's small product runs whole on one thread) and a sum,
    is several times faster (docs/speed.md). The sum over chunks changes only the order
    of the additions. Any array module (NumPy's matmul or CuPy's)."""
    xp = array_module(a)
    (m, K), n = a.shape, b.shape[1]
    c = K // chunk
    if c < 2:
        return a @ b
    L = c * chunk
    parts = xp.matmul(a[:, :L].reshape(m, c, chunk).transpose(1, 0, 2), b[:L].reshape(c, chunk, n))
    out = parts.sum(axis=0)
    if L < K:
        out += a[:, L:] @ b[L:]
    return out


_lanes_lock = threading.Lock()
_lanes_running = 0  # threads inside `one_blas_thread` now
_blas_threads = 0  # OpenBLAS's thread count before the first of them came in


@contextlib.contextmanager
def one_blas_thread() -> Iterator[int]:
    """Within it, NumPy's OpenBLAS runs every product on the thread that calls it, so that
    several threads of ours can multiply side by side; yields the BLAS thread count from
    before (threadpoolctl's limit, if any), how many threads the caller may use. Callers in
    several threads at once share the setting: the last one out restores it. Without NumPy's
    OpenBLAS (`matmul_add`) it changes nothing and yields 1."""
    global _lanes_running, _blas_threads
    lib = _load()
    if lib is None or lib.get_threads is None or lib.set_threads is None:
        yield 1
        return
    with _lanes_lock:
        if _lanes_running == 0:
            _blas_threads = lib.get_threads()
            lib.set_threads(1)
        _lanes_running += 1
        before = _blas_threads
    try:
        yield before
    finally:
        with _lanes_lock:
            _lanes_running -= 1
            if _lanes_running == 0:
                lib.set_threads(_blas_threads)


def in_lanes(work: Callable[[int], None], lanes: int) -> None:
    """work(0), ..., work(lanes - 1) in parallel threads, every product in them on one BLAS
    thread (the calling one).

    Why: small products (a few hundred rows, as a convolution's blocks of patches are) spread
    poorly over BLAS's own threads, and the unfolded patches they read are fastest to make
    just before, in the core's cache; two threads that each unfold and multiply their own
    blocks keep both cores busy with both (docs/speed.md). Each lane does the same work
    whatever the number of threads, so the results do not depend on it. Without NumPy's
    OpenBLAS (`matmul_add`), on one CPU, or where `threads.limited` leaves one, the lanes
    run one after the other.
    """
    with one_blas_thread() as blas_threads:
        width = min(threads(), blas_threads, lanes)  # threadpoolctl's limit holds too
        if width < 2:
            for lane in range(lanes):
                work(lane)
            return

        def run(first: int) -> None:  # thread t runs lanes t, t + width, ...
            for lane in range(first, lanes, width):
                work(lane)

        for _ in pool().map(run, range(width)):
            pass


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
        a, b = x[:6].reshape(2, 3), x[1:7].reshape(3, 2)  # small integers: exact products
        c = np.ones((2, 2), dtype=dtype)
        if not (level1.matmul_add(a, b.T.copy().T, c) and np.array_equal(c, 1 + a @ b)):
            return False
    return True


def level1(*arrays: Any) -> Level1 | None:
    """NumPy's OpenBLAS axpy/scal if they can run on `arrays` (see `Level1.supports`), else None."""
    lib = _load()
    return lib if lib is not None and lib.supports(*arrays) else None
