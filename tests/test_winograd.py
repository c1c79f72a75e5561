"""Winograd's F(4x4, 3x3) (barenet.nn.winograd) against the plain convolution: the 1-D and 2-D
identities in float64, the layer's outputs in float64 and float32 for every layout and odd size,
and the fast plan's use of it at inference only."""

import numpy as np
import pytest

from barenet.nn import winograd
from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.layers import BatchNorm, Dense, Flatten, ReLU, Reshape
from barenet.nn.model import Sequential
from barenet.nn.plan import FoldedConvStep, InferenceConvStep, WinogradTrainStep, plan
from barenet.nn.pooling import AvgPool2D, GlobalPool
from barenet.nn.winograd import AT, BT, G, applies, transform_filters, winograd_forward


def test_one_dimensional_identity_gives_four_outputs_of_a_three_tap_correlation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal(6), rng.standard_normal(3)
        direct = np.array([d[u : u + 3] @ g for u in range(4)])
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), direct, rtol=1e-12, atol=1e-12)


def test_two_dimensional_identity_and_the_transforms_along_both_axes():
    rng = np.random.default_rng(1)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    direct = np.array([[np.sum(d[u : u + 3, v : v + 3] * g) for v in range(4)] for u in range(4)])
    Y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    np.testing.assert_allclose(Y, direct, rtol=1e-12, atol=1e-12)
    # both_axes: T t T^T for each of R tiles held as (rows, columns, R), in two products
    for T, k in [(BT, 6), (AT, 6), (AT.T.copy(), 4)]:
        t = rng.standard_normal((k, k, 5))
        out = np.empty((len(T), len(T), 5))
        winograd.both_axes(T, t, np.empty((len(T), k, 5)), out)
        for r in range(5):
            np.testing.assert_allclose(out[:, :, r], T @ t[:, :, r] @ T.T, atol=1e-12)
    U = transform_filters(g.reshape(3, 3, 1, 1))
    np.testing.assert_allclose(U[:, 0, 0], (G @ g @ G.T).ravel(), atol=1e-15)
    # the bias: b at tile position (1, 1) of M reaches each of the 16 outputs once
    E = np.zeros((6, 6))
    E[1, 1] = 2.5
    np.testing.assert_array_equal(AT @ E @ AT.T, np.full((4, 4), 2.5))


@pytest.mark.parametrize("columns_first", [False, True])
def test_both_axes_as_one_long_product_or_one_a_row_and_into_views(monkeypatch, columns_first):
    # `_rows` takes one (m, k) by (k, c R) product up to ONE_PRODUCT_WORK multiply-adds, else
    # one (m, k) by (k, R) product for each b: the same sums, also where t and out are views
    # of larger arrays (which the one long product cannot write in place)
    rng = np.random.default_rng(2)
    R = 300
    for T, k in [(BT, 6), (AT, 6), (AT.T.copy(), 4)]:
        m = len(T)
        T32 = T.astype(np.float32)
        wide = rng.standard_normal((k, k, 2, R), dtype=np.float32)
        expected = np.einsum("ia,abr,jb->ijr", T, wide[:, :, 1].astype(np.float64), T)
        results = []
        for work in (0, 1 << 40):
            for views in (False, True):
                monkeypatch.setattr(winograd, "ONE_PRODUCT_WORK", work)
                t = wide[:, :, 1] if views else np.ascontiguousarray(wide[:, :, 1])
                out_wide = np.full((m, m, 3, R), np.nan, np.float32)
                out = out_wide[:, :, 2] if views else np.empty((m, m, R), np.float32)
                half = np.empty((m, k, R), np.float32)
                winograd.both_axes(T32, t, half, out, columns_first=columns_first)
                np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
                if views:  # written in place, nothing else touched
                    assert np.isnan(out_wide[:, :, :2]).all()
                results.append(out.copy())
        for other in results[1:]:
            np.testing.assert_allclose(other, results[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "N, H, C, F, block_bytes",
    [
        (11, 14, 8, 6, 40_000),  # two digits a block, two blocks a group, a shorter last block
        (7, 9, 3, 4, 6_000),  # a digit a block, the last group one block short
        (3, 8, 5, 7, None),  # one block
        (11, 8, 6, 8, 10_000),  # whole tiles, two digits a block, a shorter last block
    ],
)
def test_weight_gradient_from_the_tiles_the_forward_pass_kept(monkeypatch, N, H, C, F, block_bytes):
    # the tiles kept by the forward pass are the ones the weight gradient makes from x: the
    # same outputs and the same weight gradient, bit for bit; the slots no block fills
    # (NaN here) are read by neither
    if block_bytes is not None:
        monkeypatch.setattr(winograd, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    W = rng.standard_normal((3, 3, C, F)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    dout = rng.standard_normal((N, H, H, F)).astype(np.float32)
    tiles = np.full(winograd.kept_tiles_shape(x.shape, F, 4), np.nan, np.float32)
    out = winograd.winograd_conv(x, W, b, tiles=tiles)
    np.testing.assert_array_equal(out, winograd.winograd_conv(x, W, b))
    dW = winograd.winograd_weight_gradient(x, dout, tiles)
    np.testing.assert_array_equal(dW, winograd.winograd_weight_gradient(x, dout))
    # with the tiles, the input's shape is all it needs
    np.testing.assert_array_equal(dW, winograd.winograd_weight_gradient(x.shape, dout, tiles))
    with pytest.raises(ValueError, match="needs the input"):
        winograd.winograd_weight_gradient(x.shape, dout)
    conv = Conv2D(C, F, 3, padding=1, dtype=np.float32)
    conv.params["W"][...] = W
    conv.forward(x, training=True)
    conv.backward(dout)
    np.testing.assert_allclose(dW, conv.grads["W"], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="do not fit"):
        winograd.winograd_weight_gradient(
            np.pad(x, [(0, 0), (0, 4), (0, 4), (0, 0)]),
            np.pad(dout, [(0, 0), (0, 4), (0, 4), (0, 0)]),
            tiles,
        )


def _conv(C, F, dtype, seed=0):
    rng = np.random.default_rng(seed)
    conv = Conv2D(C, F, 3, padding=1, rng=rng, dtype=dtype)
    conv.params["b"][...] = rng.standard_normal(F)
    return conv


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
@pytest.mark.parametrize(
    "N, H, W, C, F, pool",
    [
        (3, 8, 8, 5, 7, 0),  # whole tiles
        (7, 14, 14, 4, 6, 0),  # 14 = 3.5 tiles: the last tile's outputs beyond 14 dropped
        (2, 9, 6, 3, 4, 0),  # odd and unequal sides
        (5, 1, 1, 2, 3, 0),  # a single pixel
        (4, 12, 12, 3, 5, 2),  # window-major for a 2 x 2 pool
        (3, 6, 10, 3, 5, 2),  # window-major with a part tile
        (2, 8, 8, 3, 2, 4),  # window-major for a 4 x 4 pool
        (2, 7, 7, 3, 2, 2),  # a pool that does not divide 7: the plain layout
    ],
)
def test_winograd_forward_equals_the_direct_convolution(N, H, W, C, F, pool, dtype, tol):
    conv = _conv(C, F, dtype)
    x = np.random.default_rng(2).standard_normal((N, H, W, C)).astype(dtype)
    expected = conv.forward(x, pool=pool)
    out = winograd_forward(conv, x, pool=pool)
    assert out.shape == expected.shape and out.dtype == dtype
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out / scale, expected / scale, rtol=0, atol=tol)
    # the ReLU, taken as the outputs leave their tiles, whole or cut, in either order
    np.testing.assert_array_equal(winograd_forward(conv, x, pool=pool, relu=True),
                                  np.maximum(out, 0))  # fmt: skip


def test_many_blocks_on_every_lane_give_the_same_outputs_and_the_relu(monkeypatch):
    conv = _conv(6, 4, np.float64)
    x = np.random.default_rng(3).standard_normal((11, 8, 8, 6))
    whole = winograd_forward(conv, x)
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)  # one image a block: 11 blocks, 4 lanes
    assert len(winograd._Blocks(11, 8, 8, 6, 4, 8).blocks) == 11
    np.testing.assert_array_equal(winograd_forward(conv, x), whole)
    np.testing.assert_allclose(whole, conv.forward(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(winograd_forward(conv, x, relu=True), np.maximum(whole, 0))
    # one or four blocks a product (two, the default, above: the last group of one block)
    for group, sizes in ((1, [1] * 11), (4, [3, 3, 3, 2])):  # four lanes: no more than 3
        monkeypatch.setattr(winograd, "PRODUCT_BLOCKS", group)
        assert [len(g) for g in winograd._Blocks(11, 8, 8, 6, 4, 8).groups] == sizes
        np.testing.assert_allclose(winograd_forward(conv, x), whole, rtol=1e-12, atol=1e-12)


def test_applies_to_wide_same_size_3x3_convolutions_only():
    wide = winograd.MIN_CHANNELS
    assert applies(Conv2D(wide, wide, 3, padding=1))
    assert not applies(Conv2D(wide - 1, wide, 3, padding=1))
    assert not applies(Conv2D(wide, wide - 1, 3, padding=1))
    assert not applies(Conv2D(wide, wide, 3, padding=0))
    assert not applies(Conv2D(wide, wide, 3, padding=1, stride=2))
    assert not applies(Conv2D(wide, wide, 5, padding=2))
    with pytest.raises(ValueError, match="input channels"):
        winograd_forward(Conv2D(wide, wide, 3, padding=1), np.zeros((1, 4, 4, 3), np.float32))


def test_the_fast_plan_uses_it_at_inference_only_and_equals_the_plain_layers(monkeypatch):
    """A small net of a `record` member's shape: convolutions with and without a BatchNorm
    after them, one before a max-pool, an average pool and the global head."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)  # narrow layers: a quick test
    rng = np.random.default_rng(4)
    dtype = np.float64
    net = Sequential([
        Reshape((12, 12, 1)),
        Conv2D(1, 4, 3, padding=1, rng=rng, dtype=dtype), ReLU(),
        Conv2D(4, 6, 3, padding=1, rng=rng, dtype=dtype), ReLU(),
        Conv2D(6, 6, 3, padding=1, rng=rng, dtype=dtype), BatchNorm(6, dtype=dtype), ReLU(),
        MaxPool2D(2),
        Conv2D(6, 5, 3, padding=1, rng=rng, dtype=dtype), ReLU(), AvgPool2D(2),
        GlobalPool("avg+max"), Dense(10, 3, rng=rng, dtype=dtype),
    ])  # fmt: skip
    bn = net.layers[6]
    bn.buffers["running_mean"][...] = rng.standard_normal(6)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 6)
    steps = plan(net.layers, training=False)
    convs = [(s.start, s.stop, s.pool) for s in steps if isinstance(s, InferenceConvStep)]
    assert convs == [(1, 3, 0), (3, 5, 0), (9, 11, 0)]  # each with its ReLU
    assert [(s.start, s.stop, s.pool) for s in steps if isinstance(s, FoldedConvStep)] == [
        (5, 8, 2)
    ]
    assert [applies(net.layers[i]) for i in (1, 3, 5, 9)] == [False, True, True, True]
    assert not any(isinstance(s, InferenceConvStep) for s in plan(net.layers, training=True))
    x = rng.uniform(0, 1, (9, 144))
    plain = Sequential(net.layers, fast=False)
    np.testing.assert_allclose(net.predict_proba(x), plain.predict_proba(x), rtol=1e-10)
    with pytest.raises(RuntimeError, match="inference only"):
        InferenceConvStep(net.layers, 3, relu=True).forward(np.zeros((1, 12, 12, 4)), True)


def test_a_float32_net_predicts_as_the_direct_convolutions_do(monkeypatch):
    rng = np.random.default_rng(6)
    net = Sequential([
        Reshape((8, 8, 1)), Conv2D(1, 64, 3, padding=1, rng=rng), ReLU(),
        Conv2D(64, 64, 3, padding=1, rng=rng), ReLU(), BatchNorm(64),
        Flatten(), Dense(64 * 64, 10, rng=rng),
    ])  # fmt: skip
    x = rng.uniform(0, 1, (50, 64)).astype(np.float32)
    assert applies(net.layers[3])
    fast = net.predict_proba(x)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1 << 30)  # every convolution direct
    assert not applies(net.layers[3])
    direct = net.predict_proba(x)
    np.testing.assert_allclose(fast, direct, atol=1e-5)
    np.testing.assert_array_equal(fast.argmax(axis=1), direct.argmax(axis=1))


@pytest.mark.parametrize(
    "H, pool", [(8, 0), (12, 2), (8, 4), (6, 0), (14, 2), (7, 0), (3, 0), (10, 2)]
)
@pytest.mark.parametrize("relu", [False, True])
def test_training_step_gives_the_direct_gradients(H, pool, relu, monkeypatch):
    """WinogradTrainStep: output, weight and input gradients as Conv2D's own passes give
    them, window-major layouts too, on sides that are multiples of 4 (whole tiles) and sides
    that are not (the last tiles reach beyond the image); with the ReLU after the convolution,
    the pair's as the two layers give them."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 3)
    rng = np.random.default_rng(7)
    conv, twin = _conv(3, 5, np.float64, seed=1), _conv(3, 5, np.float64, seed=1)
    x = rng.standard_normal((4, H, H, 3))
    step = WinogradTrainStep([conv, ReLU()] if relu else [conv], 0, pool)
    assert (step.start, step.stop) == (0, 2 if relu else 1)
    out = step.forward(x, training=True)
    assert step.tiles
    expected = twin.forward(x, training=True, pool=pool)
    twin_relu = ReLU()
    if relu:
        expected = twin_relu.forward(expected, training=True)
        assert (out == 0).any() and (out > 0).any()
    np.testing.assert_allclose(out, expected, rtol=1e-11, atol=1e-11)
    dout = rng.standard_normal(out.shape)
    dx = step.backward(dout, need_dx=True, need_grads=True)
    dx_expected = twin.backward(
        twin_relu.backward(dout) if relu else dout, need_dx=True, need_grads=True
    )
    np.testing.assert_allclose(dx, dx_expected, rtol=1e-11, atol=1e-11)
    for name in ("W", "b"):
        np.testing.assert_allclose(conv.grads[name], twin.grads[name], rtol=1e-11, atol=1e-11)
    assert step.backward(dout, need_dx=False, need_grads=True) is None


def test_a_network_trains_as_on_the_plain_path(monkeypatch):
    """Three SGD steps of a small net whose 3x3 convolutions train by Winograd's F(4x4, 3x3),
    against the same net through the plain layers (`reference.py`), in float64."""
    from barenet.nn.losses import softmax_cross_entropy
    from barenet.nn.optim import SGD

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)

    def net(seed):
        rng = np.random.default_rng(seed)
        return Sequential([
            Reshape((8, 8, 1)),
            Conv2D(1, 4, 3, padding=1, rng=rng, dtype=np.float64), ReLU(),
            Conv2D(4, 6, 3, padding=1, rng=rng, dtype=np.float64), BatchNorm(6, dtype=np.float64),
            ReLU(), MaxPool2D(2),
            Conv2D(6, 4, 3, padding=1, rng=rng, dtype=np.float64), ReLU(),
            GlobalPool("avg"), Dense(4, 3, rng=rng, dtype=np.float64),
        ])  # fmt: skip

    fast, plain = net(0), net(0)
    plain.fast = False
    assert [  # the second with its ReLU
        (s.start, s.stop)
        for s in plan(fast.layers, training=True)
        if isinstance(s, WinogradTrainStep)
    ] == [(3, 4), (7, 9)]
    rng = np.random.default_rng(8)
    optimizers = [SGD(n.parameters(), momentum=0.9) for n in (fast, plain)]
    for _ in range(3):
        x, y = rng.uniform(0, 1, (5, 64)), rng.integers(0, 3, 5)
        for n, optimizer in zip((fast, plain), optimizers):
            _, dscores = softmax_cross_entropy(n.forward(x, training=True), y)
            n.backward(dscores)
            optimizer.step(0.1)
    for (name, p, _), (_, q, _) in zip(fast.parameters(), plain.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "N, H, W, small_blocks", [(3, 14, 9, False), (11, 8, 8, True), (5, 5, 12, True)]
)
def test_weight_gradient_equals_the_direct_one(N, H, W, small_blocks, monkeypatch):
    """Part tiles, several blocks on every lane, and a shorter last block whose spare images
    must add nothing."""
    if small_blocks:  # 8x8 images: two a block (11 images: 6 blocks, the last of one)
        monkeypatch.setattr(winograd, "BLOCK_BYTES", 36 * 2 * 2 * 4 * 8 * 2)
    conv = _conv(4, 3, np.float64, seed=2)
    rng = np.random.default_rng(9)
    x, dout = rng.standard_normal((N, H, W, 4)), rng.standard_normal((N, H, W, 3))
    conv.forward(x, training=True)
    conv.backward(dout, need_dx=False)
    dW = winograd.winograd_weight_gradient(x, dout)
    np.testing.assert_allclose(dW, conv.grads["W"], rtol=1e-11, atol=1e-11)


def test_work_arrays_are_kept_per_thread_and_bounded(monkeypatch):
    """`scratch`: the same array for the same name, shape and dtype in one thread, another in
    another thread; past SCRATCH_BYTES the thread's arrays are made anew."""
    import threading

    a = winograd.scratch("test a", (4, 5), np.float32)
    assert winograd.scratch("test a", (4, 5), np.float32) is a
    assert winograd.scratch("test a", (4, 6), np.float32) is not a
    assert winograd.scratch("test a", (4, 5), np.float64) is not a
    other = []
    thread = threading.Thread(
        target=lambda: other.append(winograd.scratch("test a", (4, 5), np.float32))
    )
    thread.start()
    thread.join()
    assert other[0] is not a
    monkeypatch.setattr(winograd, "SCRATCH_BYTES", 200)
    b = winograd.scratch("test b", (40,), np.float32)  # 160 bytes: the others are dropped
    assert winograd.scratch("test a", (4, 5), np.float32) is not a
    assert winograd.scratch("test b", (40,), np.float32) is not b  # 160 + 80 > 200


def test_kept_work_arrays_carry_nothing_from_one_size_to_the_next(monkeypatch):
    """Images of 16x16 and of 14x14 have the same padded tiles (18x18), so they share work
    arrays: what the 16x16 ones leave beyond 14x14 must not reach the 14x14 outputs and
    gradients."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 3)
    rng = np.random.default_rng(11)
    conv = _conv(4, 3, np.float64, seed=3)
    for H in (16, 14, 16, 14):
        x, dout = rng.standard_normal((3, H, H, 4)), 1 + rng.random((3, H, H, 3))
        out = winograd_forward(conv, x)
        dW = winograd.winograd_weight_gradient(x, dout)
        dx = winograd.winograd_input_gradient(conv, dout)
        np.testing.assert_allclose(out, conv.forward(x, training=True), rtol=1e-11, atol=1e-11)
        conv.backward(dout, need_dx=True)
        np.testing.assert_allclose(dW, conv.grads["W"], rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(dx, conv.backward(dout, need_dx=True), rtol=1e-11, atol=1e-11)


def test_weight_gradient_sums_the_same_at_any_number_of_positions_a_product(monkeypatch):
    # the products' sums added onto the lane's a few tile positions at a time: the same sums
    # whatever the number, one that does not divide 36 too (the last product shorter)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((5, 8, 8, 6)).astype(np.float32)
    dout = rng.standard_normal((5, 8, 8, 7)).astype(np.float32)
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 36 * 4 * 7 * 4 * 2)  # two images a block
    dWs = []
    for positions in (36, 1, 5, 4):
        monkeypatch.setattr(winograd, "SUM_POSITIONS", positions)
        dWs.append(winograd.winograd_weight_gradient(x, dout))
    for dW in dWs[1:]:
        np.testing.assert_array_equal(dW, dWs[0])
    conv = _conv(6, 7, np.float64)
    conv.forward(x.astype(np.float64), training=True)
    conv.backward(dout.astype(np.float64), need_dx=False)
    np.testing.assert_allclose(dWs[0], conv.grads["W"], rtol=1e-4, atol=1e-4)
