import glob
import os

import numpy as np
import pytest

import barenet.backend.blas
import barenet.nn.optim
from barenet.backend.blas import _numpy_openblas_path, level1, matmul_long
from barenet.nn.optim import SGD


def _numpy_ships_openblas() -> bool:
    """NumPy's wheels carry their OpenBLAS beside the package (the set-up CI and users get)."""
    here = os.path.dirname(os.path.realpath(np.__file__))
    return bool(glob.glob(here + ".libs/*openblas*") + glob.glob(here + "/.dylibs/*openblas*"))


def test_numpys_openblas_is_found_when_numpy_ships_one():
    x = np.zeros(10, np.float32)
    if _numpy_ships_openblas():
        assert level1(x, x.copy()) is not None
    else:  # another BLAS: the optimiser falls back to NumPy's operations
        assert level1(x, x.copy()) is None or _numpy_openblas_path() is not None


def test_a_second_openblas_in_the_process_is_not_taken_for_numpys():
    """scikit-learn loads SciPy's OpenBLAS too; its thread pool must not be the one used."""
    pytest.importorskip("scipy.linalg")  # installed with scikit-learn, a test dependency
    from threadpoolctl import threadpool_info

    openblas = [i["filepath"] for i in threadpool_info() if i["internal_api"] == "openblas"]
    path = _numpy_openblas_path()
    if _numpy_ships_openblas():
        assert len(openblas) >= 2, openblas  # NumPy's and SciPy's
        here = os.path.dirname(os.path.realpath(np.__file__))
        assert path is not None and os.path.realpath(path).startswith(here)
    else:
        assert path is None or len(openblas) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpy_and_scal_give_numpys_results(dtype):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(100_003).astype(dtype), rng.standard_normal(100_003).astype(dtype)
    fused = level1(x, y)
    if fused is None:
        assert not _numpy_ships_openblas()
        return
    expected = (y + dtype(0.3) * x) * dtype(-2.0)
    fused.axpy(0.3, x, y)
    fused.scal(-2.0, y)
    # BLAS may fuse the multiply and the add (one rounding): equal up to the last bits
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def test_arrays_blas_cannot_take_are_refused():
    x = np.zeros(8, np.float32)
    if level1(x, x.copy()) is None:
        assert not _numpy_ships_openblas()
        return
    assert level1(np.zeros(16, np.float32)[::2], x) is None  # strided
    assert level1(np.zeros((2, 4), np.float32), x) is None  # not 1-D
    assert level1(np.zeros(8, np.float64), x) is None  # mixed dtypes
    assert level1(np.zeros(8, np.float16), np.zeros(8, np.float16)) is None
    assert level1(np.zeros(8, np.int64), np.zeros(8, np.int64)) is None
    assert level1(np.zeros(9, np.float32), x) is None  # sizes differ
    frozen = np.zeros(8, np.float32)
    frozen.flags.writeable = False
    assert level1(x, frozen) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"momentum": 0.9, "weight_decay": 5e-4},
        {"momentum": 0.0, "weight_decay": 5e-4},
        {"momentum": 0.5, "nesterov": True},
    ],
)
def test_fused_sgd_update_equals_numpys(kwargs, monkeypatch):
    """The BLAS path and the NumPy path compute the same update (to float32 rounding)."""
    rng = np.random.default_rng(1)
    W0 = np.asfortranarray(rng.standard_normal((300, 301)).astype(np.float32))
    grads = [rng.standard_normal(W0.shape).astype(np.float32) for _ in range(5)]
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(barenet.nn.optim, "level1", lambda *arrays: None)
        W, g = W0.copy(order="F"), np.zeros_like(W0, order="F")
        opt = SGD([("W", W, g)], decayed=["W"], **kwargs)
        for grad in grads:
            g[...] = grad
            opt.step(0.05)
        results.append(W)
    assert not np.array_equal(results[1], W0)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_without_numpys_openblas_the_optimiser_uses_numpy(monkeypatch):
    monkeypatch.setattr(barenet.backend.blas, "_load", lambda: None)
    W, g = np.ones(4, np.float32), np.full(4, 2.0, np.float32)
    assert level1(W, g) is None
    SGD([("W", W, g)], momentum=0.0).step(0.5)
    np.testing.assert_array_equal(W, np.zeros(4, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_add_adds_the_product_in_place(dtype):
    rng = np.random.default_rng(1)
    big = rng.standard_normal((40, 30)).astype(dtype)
    cases = [
        (rng.standard_normal((7, 5)), rng.standard_normal((5, 3))),  # contiguous
        (big[2:9, 4:9], big[10:15, 1:4]),  # blocks of a larger array: a stride of their own
        (big[:5, :7].T, big[20:23, :5].T),  # transposed views
    ]
    for a, b in cases:
        a, b = a.astype(dtype), b.astype(dtype)
        store = rng.standard_normal((12, 6)).astype(dtype)
        c = store[2:9, 1:4]  # (7, 3), rows of a larger array
        expected, untouched = c + a @ b, store.copy()
        if not barenet.backend.blas.matmul_add(a, b, c):
            assert not _numpy_ships_openblas()
            return
        tol = 1e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol)
        outside = np.ones(store.shape, bool)
        outside[2:9, 1:4] = False
        np.testing.assert_array_equal(store[outside], untouched[outside])


def test_matmul_add_refuses_what_blas_cannot_take():
    a, b = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
    c = np.zeros((4, 2), np.float32)
    if not barenet.backend.blas.matmul_add(a, b, c):
        assert not _numpy_ships_openblas()
        return
    assert not barenet.backend.blas.matmul_add(a, b, np.zeros((2, 4), np.float32).T)  # c transposed
    assert not barenet.backend.blas.matmul_add(a, b, np.zeros((4, 3), np.float32))  # shapes
    assert not barenet.backend.blas.matmul_add(a, b.astype(np.float64), c)  # mixed dtypes
    assert not barenet.backend.blas.matmul_add(np.ones((4, 6), np.float32)[:, ::2], b, c)  # strided
    assert not barenet.backend.blas.matmul_add(
        a.astype(np.int64), b.astype(np.int64), c.astype(np.int64)
    )
    frozen = np.zeros((4, 2), np.float32)
    frozen.flags.writeable = False
    assert not barenet.backend.blas.matmul_add(a, b, frozen)
    np.testing.assert_array_equal(c, 3 * np.ones((4, 2)))  # only the first call added


@pytest.mark.parametrize("K", [5, 2048, 3000, 100352])
def test_matmul_long_equals_the_product(K):
    """The sum of chunk products: the same product up to the order of the additions, with a
    remainder chunk where the chunk size does not divide K, and one product for short K."""
    rng = np.random.default_rng(K)
    a, b = rng.standard_normal((10, K)), rng.standard_normal((K, 7))
    np.testing.assert_allclose(matmul_long(a, b), a @ b, rtol=1e-12, atol=1e-10)
    a32, b32 = a.astype(np.float32), b.T.astype(np.float32).T  # b: a transposed view
    out = matmul_long(a32, b32)
    assert out.dtype == np.float32 and out.shape == (10, 7)
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-3 * np.sqrt(K))


def test_lanes_run_every_lane_once_and_give_blas_its_threads_back():
    """`in_lanes` runs its lanes with one BLAS thread each and restores the count after,
    also when several threads call it at once and when a lane raises."""
    import threading

    from barenet.backend.blas import _load, in_lanes

    if not _numpy_ships_openblas():
        pytest.skip("NumPy has no OpenBLAS of its own here: the lanes run one after the other")
    lib = _load()
    assert lib is not None and lib.get_threads is not None
    before = lib.get_threads()
    seen: list[tuple[int, int]] = []

    def lane(i: int) -> None:
        seen.append((i, lib.get_threads()))

    callers = [threading.Thread(target=in_lanes, args=(lane, 4)) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert sorted(i for i, _ in seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert {n for _, n in seen} == {1}
    assert lib.get_threads() == before

    def failing(i: int) -> None:
        if i == 2:
            raise ValueError("lane 2")

    with pytest.raises(ValueError, match="lane 2"):
        in_lanes(failing, 4)
    assert lib.get_threads() == before
