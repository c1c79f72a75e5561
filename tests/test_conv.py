import copy

import numpy as np
import pytest

import barenet.backend.blas
import barenet.nn.conv
from barenet.nn import reference
from barenet.nn.config import layer_from_config
from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.gradcheck import TOLERANCE, check_layer


def naive_conv(x, W, b, stride, pad):
    """The definition, one output at a time: x (N, H, W, C), W (k, k, C, F)."""
    N, H, W_, C = x.shape
    k, F = W.shape[0], W.shape[3]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    OH, OW = (H + 2 * pad - k) // stride + 1, (W_ + 2 * pad - k) // stride + 1
    out = np.zeros((N, OH, OW, F))
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                patch = xp[n, i * stride : i * stride + k, j * stride : j * stride + k, :]
                out[n, i, j] = np.tensordot(patch, W, axes=3) + b
    return out


@pytest.mark.parametrize("channels", [1, 3])  # one channel takes its own unfolding
@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (3, 1, 1), (3, 2, 0), (5, 1, 2), (2, 3, 1)])
def test_conv_matches_definition_and_gradients(k, stride, pad, channels):
    rng = np.random.default_rng(k * 10 + stride)
    conv = Conv2D(channels, 4, k, stride=stride, padding=pad, rng=rng, dtype=np.float64)
    conv.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 8, 7, channels))
    out = conv.forward(x)
    definition = naive_conv(x, conv.params["W"], conv.params["b"], stride, pad)
    np.testing.assert_allclose(out, definition, rtol=1e-12, atol=1e-12)
    # the reference's im2col (nn/reference.py) is the definition too
    plain, _ = reference.conv_forward(x, conv.params["W"], conv.params["b"], stride, pad)
    np.testing.assert_allclose(plain, definition, rtol=1e-12, atol=1e-12)
    assert out.shape[1:3] == conv.output_shape(8, 7)
    for r in check_layer("Conv2D", conv, x, rng):
        assert r.error < TOLERANCE, r


def test_conv_float32_skips_input_gradient_and_checks_channels():
    conv = Conv2D(2, 3, 3, padding=1, rng=np.random.default_rng(0))
    x = np.ones((2, 5, 5, 2), np.float32)
    out = conv.forward(x, training=True)
    assert out.dtype == np.float32 and out.shape == (2, 5, 5, 3)
    assert conv.backward(np.ones_like(out), need_dx=False) is None
    np.testing.assert_array_equal(conv.grads["b"], [50, 50, 50])
    with pytest.raises(ValueError, match="input channels"):
        conv.forward(np.ones((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        Conv2D(2, 3, 7).forward(np.ones((1, 5, 5, 2), np.float32))


def test_conv_he_init_scale():
    W = Conv2D(16, 64, 5, rng=np.random.default_rng(0)).params["W"]
    assert W.shape == (5, 5, 16, 64)
    assert W.std() == pytest.approx(np.sqrt(2 / (5 * 5 * 16)), rel=0.03)


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 1), (3, 2), (2, 1)])
def test_maxpool_forward_and_gradient(k, stride):
    rng = np.random.default_rng(k + stride)
    x = rng.permutation(2 * 7 * 6 * 3).reshape(2, 7, 6, 3) / 10.0  # distinct: no ties
    pool = MaxPool2D(k, stride)
    out = pool.forward(x)
    OH, OW = (7 - k) // stride + 1, (6 - k) // stride + 1
    expected = np.array([[[[x[n, i * stride : i * stride + k, j * stride : j * stride + k, c].max()
                            for c in range(3)] for j in range(OW)] for i in range(OH)]
                         for n in range(2)])  # fmt: skip
    np.testing.assert_array_equal(out, expected)
    for r in check_layer("MaxPool2D", MaxPool2D(k, stride), x, rng):
        assert r.error < TOLERANCE, r


def test_maxpool_routes_a_tie_to_one_input():
    pool = MaxPool2D(2)
    pool.forward(np.full((1, 2, 2, 1), 3.0), training=True)
    dx = pool.backward(np.array([[[[5.0]]]]))
    assert dx is not None
    np.testing.assert_array_equal(dx[0, :, :, 0], [[5, 0], [0, 0]])


def test_conv_and_pool_configs_round_trip():
    for layer in (Conv2D(3, 8, 5, stride=2, padding=1, init="glorot"), MaxPool2D(3, 2)):
        rebuilt = layer_from_config(layer.config())
        assert rebuilt.config() == layer.config()
    with pytest.raises(ValueError, match="kernel_size"):
        layer_from_config({**Conv2D(1, 1, 3).config(), "kernel_size": 0})
    with pytest.raises(ValueError, match="stride"):
        layer_from_config({"type": "MaxPool2D", "kernel_size": 2, "stride": True})


def window_major(x, w):
    """(N, OH, OW, C) -> (w*w, N, OH/w, OW/w, C): block a*w + b holds (n, w*ph + a, w*pw + b)."""
    N, OH, OW, C = x.shape
    blocks = x.reshape(N, OH // w, w, OW // w, w, C).transpose(2, 4, 0, 1, 3, 5)
    return blocks.reshape(w * w, N, OH // w, OW // w, C)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("k,stride,pad,w", [(3, 1, 1, 2), (5, 1, 2, 2), (3, 2, 1, 2), (2, 1, 0, 3), (3, 1, 1, 4)])  # fmt: skip
def test_conv_window_major_output_is_the_same_values_and_gradients(k, stride, pad, w, channels):
    """forward(pool=w) writes the same outputs in window-major order; backward takes the
    gradient in that order and gives the same dx, dW and db."""
    rng = np.random.default_rng(k + 7 * w)
    conv = Conv2D(channels, 4, k, stride=stride, padding=pad, rng=rng, dtype=np.float64)
    conv.params["b"][...] = rng.standard_normal(4)
    H, W = {(3, 1, 1, 4): (8, 12), (2, 1, 0, 3): (7, 10)}.get((k, stride, pad, w), (8, 12))
    x = rng.standard_normal((3, H, W, channels))
    plain = conv.forward(x, training=True)
    assert plain.shape[1] % w == 0 and plain.shape[2] % w == 0  # the cases are chosen so
    dout = rng.standard_normal(plain.shape)
    dx = conv.backward(dout)
    grads = {key: g.copy() for key, g in conv.grads.items()}
    blocked = conv.forward(x, training=True, pool=w)
    np.testing.assert_allclose(blocked, window_major(plain, w), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(conv.backward(window_major(dout, w)), dx, rtol=1e-12, atol=1e-13)
    for key, g in grads.items():
        np.testing.assert_allclose(conv.grads[key], g, rtol=1e-12, atol=1e-13)


def test_conv_keeps_the_plain_layout_where_the_pool_does_not_divide_the_output():
    conv = Conv2D(2, 3, 3, padding=1, rng=np.random.default_rng(0))
    assert conv.forward(np.ones((2, 7, 8, 2), np.float32), pool=2).shape == (2, 7, 8, 3)
    assert conv.forward(np.ones((2, 8, 8, 2), np.float32), pool=2).shape == (4, 2, 4, 4, 3)
    with pytest.raises(ValueError, match="one-channel"):
        conv.patches(np.ones((2, 8, 8, 2), np.float32))
    colsT, shape = Conv2D(1, 3, 3, padding=1).patches(np.ones((2, 8, 6, 1), np.float32), pool=2)
    assert colsT.shape == (10, 96) and shape == (4, 2, 4, 3)


@pytest.mark.parametrize("k", [2, 3])
def test_maxpool_of_a_window_major_input_equals_the_plain_pool(k):
    rng = np.random.default_rng(k)
    x = rng.permutation(2 * 6 * 6 * 5).reshape(2, 6, 6, 5).astype(np.float64)  # no ties
    pool = MaxPool2D(k)
    out = pool.forward(x, training=True)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    np.testing.assert_array_equal(pool.forward(window_major(x, k), training=True), out)
    np.testing.assert_array_equal(pool.backward(dout), window_major(dx, k))
    with pytest.raises(ValueError, match="window-major"):
        MaxPool2D(k, stride=1).forward(window_major(x, k))
    with pytest.raises(ValueError, match="window-major"):
        MaxPool2D(k + 1).forward(window_major(x, k))


@pytest.mark.parametrize(
    "k,pad,w", [(3, 1, 1), (3, 1, 2), (5, 2, 1), (5, 1, 1), (3, 0, 1), (2, 1, 1), (3, 3, 1)]
)
def test_conv_input_gradient_by_shifts_equals_col2im(k, pad, w, monkeypatch):
    """Stride 1 adds k*k products onto the padded input's gradient (BLAS gemm, beta = 1);
    where BLAS cannot, or the padding exceeds k - 1, col2im runs: both give the same dx."""
    rng = np.random.default_rng(k + pad)
    conv = Conv2D(3, 4, k, padding=pad, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 8, 6, 3))
    out = conv.forward(x, training=True, pool=w)
    dout = rng.standard_normal(out.shape)
    shifted = conv.backward(dout)
    blas_adds = barenet.backend.blas.matmul_add(np.ones((1, 1)), np.ones((1, 1)), np.zeros((1, 1)))
    assert (conv._input_gradient_by_shifts(dout) is not None) == (blas_adds and pad <= k - 1)
    monkeypatch.setattr(barenet.nn.conv, "matmul_add", lambda a, b, c: False)
    assert conv._input_gradient_by_shifts(dout) is None
    np.testing.assert_allclose(shifted, conv.backward(dout), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("C, pool", [(3, 2), (3, 0), (1, 2)])
def test_working_arrays_kept_between_training_steps_change_nothing(C, pool):
    """A training step rewrites the padded input, the patches and the gradient grids in
    arrays kept from the step before (Conv2D.work): results equal a layer's with new arrays,
    whatever the batch before (other values, another size), and nothing returned is a kept
    array. Inference gives the arrays back."""
    rng = np.random.default_rng(C + pool)
    conv = Conv2D(C, 4, 3, padding=1, rng=rng, dtype=np.float64)
    results = []
    for n in (2, 2, 3, 2):
        x = rng.standard_normal((n, 6, 4, C))
        fresh = copy.deepcopy(conv)
        fresh.forward(x)  # inference gives the kept arrays back: this copy starts anew
        assert fresh.kept_bytes == 0
        out, ref = conv.forward(x, training=True, pool=pool), fresh.forward(x, True, pool=pool)
        dout = rng.standard_normal(out.shape)
        dx, dx_ref = conv.backward(dout), fresh.backward(dout)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(dx, dx_ref)
        np.testing.assert_array_equal(conv.grads["W"], fresh.grads["W"])
        results.append((out.copy(), dx.copy(), out, dx))
        assert conv.kept_bytes > 0
    for out_then, dx_then, out, dx in results:  # later steps left earlier results alone
        np.testing.assert_array_equal(out, out_then)
        np.testing.assert_array_equal(dx, dx_then)
    conv.forward(x)
    assert conv.kept_bytes == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", [0, 2])
def test_blocked_passes_equal_the_whole_product_on_any_number_of_threads(pool, dtype, monkeypatch):
    """A padded convolution of several channels runs a block of images at a time, in lanes
    (`Conv2D._forward_blocks`): one thread or two, the same bits; and the whole product's
    outputs and gradients to rounding. Not bit for bit: whether a BLAS product's rows depend
    on how many rows it has, or on its thread count, is BLAS's own affair (OpenBLAS's Haswell
    float32 kernel on an AMD Zen 5 gives other last bits for 5 rows than for 720, and on two
    threads than on one)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 12, 12, 40)).astype(dtype)  # blocks of 5 (float64: 2) images
    runs = {}
    for name, threads, blocked in [("one", 1, True), ("two", 2, True), ("whole", 2, False)]:
        monkeypatch.setattr(barenet.backend.blas, "threads", lambda n=threads: n)
        conv = Conv2D(40, 16, 3, padding=1, rng=np.random.default_rng(1), dtype=dtype)
        conv.params["b"][...] = np.random.default_rng(2).standard_normal(16)
        if not blocked:
            monkeypatch.setattr(conv, "blocked", lambda xp: False)
        else:
            assert conv.blocked(np)
            assert len(conv._image_blocks(37, 12, 12, x.itemsize)) == (8 if x.itemsize == 4 else 19)
        outs = []
        for step in range(2):  # the second step on the working arrays the first one kept
            y = conv.forward(x * (step + 1), training=True, pool=pool)
            dy = np.random.default_rng(step).standard_normal(y.shape).astype(dtype)
            dx = conv.backward(dy)
            outs.append((y, dx, conv.grads["W"].copy(), conv.grads["b"].copy()))
        outs.append((conv.forward(x, pool=pool),))  # inference: nothing kept
        assert conv.kept_bytes == 0
        runs[name] = outs
    for a, b in zip(runs["one"], runs["two"]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    rtol, atol = (1e-5, 1e-5) if dtype == np.float32 else (1e-12, 1e-12)
    for a, b in zip(runs["two"], runs["whole"]):
        np.testing.assert_allclose(a[0], b[0], rtol=rtol, atol=atol)  # the output
        if len(a) > 1:
            np.testing.assert_allclose(a[1], b[1], rtol=rtol, atol=atol)  # dx
            np.testing.assert_allclose(a[2], b[2], rtol=1e-4 if dtype == np.float32 else 1e-12,
                                       atol=1e-3 if dtype == np.float32 else 1e-10)  # fmt: skip
            np.testing.assert_allclose(a[3], b[3], rtol=rtol, atol=atol)  # db
