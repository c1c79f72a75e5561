import numpy as np
import pytest

import barenet.backend.threads
from barenet.backend.threads import in_blocks
from barenet.nn.conv import MaxPool2D


def test_blocks_cover_every_row_once(monkeypatch):
    monkeypatch.setattr(barenet.backend.threads, "threads", lambda: 3)
    a = np.zeros((1000, 100), np.float32)  # 100,000 elements: split in 3
    seen = []

    def work(block):
        seen.append(block.shape[0])
        block += 1

    in_blocks(work, a)
    assert sorted(seen) == [333, 333, 334] and (a == 1).all()


def test_small_arrays_and_one_cpu_are_one_call(monkeypatch):
    calls = []
    in_blocks(lambda a: calls.append(a.shape), np.zeros((10, 10)))
    monkeypatch.setattr(barenet.backend.threads, "threads", lambda: 1)
    in_blocks(lambda a: calls.append(a.shape), np.zeros((1000, 100)))
    assert calls == [(10, 10), (1000, 100)]


def test_an_error_in_a_block_is_raised(monkeypatch):
    monkeypatch.setattr(barenet.backend.threads, "threads", lambda: 2)

    def work(block):
        if block[0, 0] == 1:
            raise ValueError("bad block")

    a = np.zeros((1000, 100))
    a[500:] = 1
    with pytest.raises(ValueError, match="bad block"):
        in_blocks(work, a)


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (2, 1)])
def test_max_pool_on_threads_is_identical_to_one_thread(kernel, stride, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 15, 15, 8)).astype(np.float32)
    x[:, ::3] = x[:, 1::3].max()  # ties
    dout = rng.standard_normal(MaxPool2D(kernel, stride).forward(x).shape).astype(np.float32)
    results = []
    for n in (1, 4):
        monkeypatch.setattr(barenet.backend.threads, "threads", lambda n=n: n)
        pool = MaxPool2D(kernel, stride)
        results.append((pool.forward(x, training=True), pool.backward(dout)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
