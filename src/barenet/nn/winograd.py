"""Winograd's minimal filtering F(4x4, 3x3): a 3x3 convolution (stride 1, padding 1), and its
gradients, with a quarter of the multiplications of the direct product (Lavin and Gray 2016,
"Fast Algorithms for Convolutional Neural Networks").

The 1-D idea. Four outputs of a 3-tap correlation, y[u] = sum_r d[u + r] g[r] (u < 4), read six
inputs. Written as polynomials they are the coefficients of a product, which is fixed by its
values at six points: here 0, 1, -1, 2, -2 and infinity. So
    y = A^T [ (G g) * (B^T d) ]          (* elementwise, 6 products instead of 12)
with B^T (6, 6) evaluating the inputs at the points, G (6, 3) the filter, and A^T (4, 6)
interpolating the product back (the matrices below; tests/test_winograd.py checks the identity
in float64 on random vectors). In 2-D the same holds along both axes: a 6x6 tile d of the padded
input and the 3x3 filter g give the 4x4 outputs
    Y = A^T [ (G g G^T) * (B^T d B) ] A     36 products instead of 144.
Summed over the input channels c, for output channel f, the product becomes, at each of the 36
tile positions xi, a matrix product over all tiles p at once:
    M[xi] (P, F) = V[xi] (P, C) U[xi] (C, F),   V = B^T d B per tile and channel, U = G g G^T
That is 36 products of (P, C) by (C, F), where the direct convolution multiplies (16 P, 9 C) by
(9 C, F): 36 P C F multiply-adds against 144 P C F, four times fewer, while the transforms cost
O(C + F) per tile against the products' O(C F). It pays where C and F are wide.

The 2-D transforms are the 1-D ones along both axes (`both_axes`): with the tiles of a few images
held as (6 rows, 6 columns, tiles and channels), B^T d B is one product with B^T down the rows
of every tile and channel at once, then one across the columns; A^T M A likewise. That is
2 x 216 multiply-adds a tile and channel for B^T d B, where the 36x36 Kronecker matrix
B^T kron B^T, which maps a flattened tile in one product, takes 1,296 (the engine used it
until 2026-12-06: 6% more time at 28x28, 15% at 14x14; docs/speed.md). A block's tiles stay
in a core's cache while they are transformed; the 36 products then take the tiles of
PRODUCT_BLOCKS blocks at once (longer products run nearer the GEMM rate); groups of blocks on
both cores at once (`blas.in_lanes`), every product on one BLAS thread.

The fast plan (plan.py) runs wide convolutions (`applies`) so: at inference, and while training
(on images of any size: the last tiles may reach beyond a side), the forward pass, the input
gradient, itself a same-size 3x3 correlation (`winograd_input_gradient`), and the weight gradient
(`winograd_weight_gradient`, the same identity read backwards). Winograd's sums round to
about 1e-5 of the outputs' size in float32, against 1e-6 for the direct product, far below
what a step of SGD or Adam moves; in float64 they agree to 1e-11 (tests/test_winograd.py, with
the plain convolution, `Conv2D`, as the reference). The same maths one tile at a time, to
read: `reference.winograd_conv_forward` and `winograd_conv_backward`; the derivation in
docs/backprop.md, section 3k. Timings in docs/speed.md ("Winograd's minimal filtering",
"Winograd on a Zen 5", and "The tile transforms' long products, split").
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from ..backend.arrays import kept_array
from ..backend.blas import in_lanes
from .conv import LANES, Conv2D

# F(4, 3) at the points 0, 1, -1, 2, -2, infinity (Lavin and Gray 2016, section 4.2)
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)  # fmt: skip
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)  # fmt: skip
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)  # fmt: skip


MIN_CHANNELS = 64  # below it the transforms, O(C + F) a tile, eat most of the saving
BLOCK_BYTES = 1 << 20  # one block's transformed tiles V: about 1 MB, in a core's cache
# Blocks whose tiles meet in one matrix product: each block transformed on its own (in cache),
# the 36 products over the tiles of two, twice as long (faster on a CPU where a product of a
# single image's 49 tiles runs far below the GEMM rate; docs/speed.md)
PRODUCT_BLOCKS = 2
# At inference, blocks twice that: half the interpreter's calls a digit, which counts where
# ensemble members run side by side in threads (docs/speed.md); training keeps 1 MB (faster).
INFERENCE_BLOCK_BYTES = 2 << 20
# The tile transforms' products with the 6x6 (or 4x6) matrices: one long product up to this
# many multiply-adds, one a tile row beyond it (`_rows`; docs/speed.md)
ONE_PRODUCT_WORK = 750_000
# The weight gradient's products at this many tile positions at once, each block's sums added
# onto the lane's while they are in the core's cache (4 x 128 x 128 floats: 256 kB)
SUM_POSITIONS = 4
SCRATCH_BYTES = 96 << 20  # the work arrays a thread keeps (`scratch`), at most
# While training, a layer's forward pass keeps its input's transformed tiles V for the weight
# gradient, which then need not transform the input again, where they take at most this much
KEEP_TILES_BYTES = 64 << 20

_kept = threading.local()  # each thread's work arrays: {'name shape dtype': array}


def scratch(name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A work array of the calling thread's, kept from one call to the next: the caller
    rewrites all it reads (its contents are what the last call left). Why: a fresh array of a
    few MB per block and call costs page faults and the kernel's zeroing of every page, which
    took more time than the arithmetic at 14x14 (docs/speed.md). The blocks bound the sizes,
    whatever the batch; at most SCRATCH_BYTES a thread (beyond it the thread's arrays are
    dropped and made anew)."""
    arrays: dict[str, np.ndarray] | None = getattr(_kept, "arrays", None)
    if arrays is None:
        arrays = _kept.arrays = {}
    key = f"{name} {shape} {np.dtype(dtype).str}"  # 14x14 and 28x28 blocks side by side
    if key not in arrays:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if sum(a.nbytes for a in arrays.values()) + nbytes > SCRATCH_BYTES:
            arrays.clear()
    return kept_array(arrays, key, shape, dtype, np)


def applies(conv: Conv2D) -> bool:
    """Whether the fast plan runs conv by Winograd's F(4x4, 3x3): NumPy arrays, a 3x3 kernel
    with stride 1 and padding 1 ("same" size), at least MIN_CHANNELS channels in and out."""
    return (
        isinstance(conv.params["W"], np.ndarray)
        and (conv.kernel_size, conv.stride, conv.padding) == (3, 1, 1)
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )  # fmt: skip


def kept_tiles_shape(x_shape: tuple[int, ...], F: int, itemsize: int) -> tuple[int, ...]:
    """The shape of the array in which `winograd_conv` keeps the transformed tiles V of an
    input x_shape (N, H, W, C) for F output channels (`tiles`): (groups, 36, g, P C), group i's
    V as its products read it, block j of the group at [i, :, j]."""
    N, H, W_, C = x_shape
    return _Blocks(N, H, W_, C, F, itemsize).kept_shape


def transform_filters(W: np.ndarray, kept: bool = False) -> np.ndarray:
    """W (3, 3, C, F) -> U = G g G^T for every (c, f): (36, C, F), float32 like W; row
    xi = 6 i + j holds tile position (i, j). Computed in float64, as two matrix products (G
    down the kernel's rows, then across its columns), in work arrays kept between calls
    (`scratch`): it runs on every pass while training. kept: U itself in one of them too,
    valid until the calling thread's next call."""
    C, F = W.shape[2:]
    W64 = scratch("winograd W64", (3, 3, C, F), np.float64)
    W64[...] = W  # W may be a view (the input gradient's turned kernel)
    T = scratch("winograd GW", (6, 3 * C * F), np.float64)
    np.matmul(G, W64.reshape(3, 3 * C * F), out=T)  # (G g)[i, b]
    U64 = scratch("winograd GWG", (6, 6, C * F), np.float64)
    np.matmul(G, T.reshape(6, 3, C * F), out=U64)  # [i, j] = (G g G^T)
    U = scratch("winograd U", (36, C, F), W.dtype) if kept else np.empty((36, C, F), W.dtype)
    U.reshape(U64.shape)[...] = U64
    return U


def both_axes(
    T: np.ndarray, t: np.ndarray, half: np.ndarray, out: np.ndarray, columns_first: bool = False
) -> None:
    """A 1-D transform T (m, k) along both axes of every tile: t (k, k, R) holds R tiles' k x k
    values (row a, column b, then tile and channel), out (m, m, R) gets T t T^T of each:
        half[i, b] = sum_a T[i, a] t[a, b]       down the rows
        out[i, j]  = sum_b T[j, b] half[i, b]    then, for each i, across the columns
    half (m, k, R) is contiguous work space. B^T d B is both_axes(B^T, d), A^T M A
    both_axes(A^T, M), and A dy A^T both_axes(A, dy). t and out may be views of a larger array
    (R contiguous): out is then written in place. With columns_first, the other way round,
    for a t that cannot be read as one (k, k R) matrix:
        half'[a, j] = sum_b T[j, b] t[a, b]      out[i, j] = sum_a T[i, a] half'[a, j]
    Each step is products with T: one (m, k) by (k, k R) product (`_rows`) where it is small, k
    products (m, k) by (k, R) otherwise: the same sums (bit for bit with OpenBLAS's SkylakeX
    and Haswell kernels; docs/speed.md)."""
    m, k, R = T.shape[0], t.shape[1], t.shape[2]
    if not columns_first:
        _rows(T, t, half)
        np.matmul(T, half, out=out)
    else:
        across = half.reshape(k, m, R)
        np.matmul(T, t, out=across)
        _rows(T, across, out)


def _rows(T: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
    """out[i, b] = sum_a T[i, a] t[a, b] for T (m, k), t (k, c, R), out (m, c, R), the last axis
    of t and out contiguous. Up to ONE_PRODUCT_WORK multiply-adds, with t and out contiguous
    arrays, as one (m, k) by (k, c R) product; otherwise c products (m, k) by (k, R), one for
    each b: OpenBLAS ran the one long product at two thirds of their speed beyond that size
    (docs/speed.md)."""
    m, k = T.shape
    c, R = t.shape[1], t.shape[2]
    one = m * k * c * R <= ONE_PRODUCT_WORK and t.flags.c_contiguous and out.flags.c_contiguous
    if one:
        np.matmul(T, t.reshape(k, c * R), out=out.reshape(m, c * R))
    else:
        np.matmul(T, t.transpose(1, 0, 2), out=out.transpose(1, 0, 2))


class _Blocks:
    """How F(4x4, 3x3) covers images of H x W with C channels in and F out: th x tw tiles of
    4x4 outputs each (the last row and column of tiles may reach beyond the image), nb images a
    block (their transformed tiles about block_bytes, default BLOCK_BYTES), the blocks
    [n0, n1) of N images, g of them a group whose tiles meet in one product (group, default
    PRODUCT_BLOCKS, but fewer where the groups would not keep every lane busy), and the lanes
    that share the groups (`blas.in_lanes`; lane k takes groups k, k + lanes, ...)."""

    def __init__(
        self, N: int, H: int, W: int, C: int, F: int, itemsize: int,
        block_bytes: int | None = None, group: int | None = None,
    ) -> None:  # fmt: skip
        self.th, self.tw = -(-H // 4), -(-W // 4)
        per_image = 36 * self.th * self.tw * max(C, F) * itemsize
        block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
        self.nb = max(1, min(N, block_bytes // per_image))
        self.blocks = [(n0, min(N, n0 + self.nb)) for n0 in range(0, N, self.nb)]
        group = PRODUCT_BLOCKS if group is None else group  # but a group for every lane
        self.g = max(1, min(group, -(-len(self.blocks) // LANES)))
        self.groups = [self.blocks[i : i + self.g] for i in range(0, len(self.blocks), self.g)]
        self.lanes = min(LANES, len(self.groups))
        self.P = self.nb * self.th * self.tw  # tiles a block
        self.padded = (self.nb, 4 * self.th + 2, 4 * self.tw + 2, C)  # a block's padded input
        self.kept_shape = (len(self.groups), 36, self.g, self.P * C)  # `kept_tiles_shape`
        self.whole = 4 * self.th == H and 4 * self.tw == W  # the tiles end at the image's sides

    def tiles(self, xpad: np.ndarray, d: np.ndarray) -> None:
        """The 6x6 input tiles of a block's padded images xpad into d (36, nb, th, tw, C),
        (a, b) = 6 a + b: tile (t, s) holds padded rows 4t + a, columns 4s + b."""
        nb, _, _, C = xpad.shape
        sN, sH, sW, sC = xpad.strides  # all 36 tile positions as one view: one copy
        shape, strides = (6, 6, nb, self.th, self.tw, C), (sH, sW, sN, 4 * sH, 4 * sW, sC)
        d.reshape(shape)[...] = np.lib.stride_tricks.as_strided(xpad, shape, strides,
                                                                 writeable=False)  # fmt: skip


def _by_tile_position(Y: np.ndarray) -> np.ndarray:
    """Y (n, 4 th, 4 tw, F), whole tiles of 4x4 outputs, as the view (4, 4, n, th, tw, F):
    [u, v, n, t, s] is Y[n, 4t + u, 4s + v]."""
    n, H4, W4, F = Y.shape
    return Y.reshape(n, H4 // 4, 4, W4 // 4, 4, F).transpose(2, 4, 0, 1, 3, 5)


def _window_major_by_tile_position(out: np.ndarray, w: int, th: int, tw: int) -> np.ndarray:
    """out (w*w, n, H/w, W/w, F), window-major outputs of images whose sides H = 4 th and
    W = 4 tw are whole tiles, w dividing 4, as the view (4/w, w, 4/w, w, n, th, tw, F):
    [p, a, q, b, n, t, s] is output (n, 4t + w p + a, 4s + w q + b), which out holds at
    [w a + b, n, (4/w) t + p, (4/w) s + q]. Read (4, 4, n, th, tw, F) as (4/w, w, 4/w, w, n,
    th, tw, F), tile outputs (u, v) = (w p + a, w q + b) go straight to their places."""
    n, F, r = out.shape[1], out.shape[4], 4 // w
    return out.reshape(w, w, n, th, r, tw, r, F).transpose(4, 0, 6, 1, 2, 3, 5, 7)


def winograd_forward(
    conv: Conv2D,
    x: np.ndarray,
    pool: int = 0,
    relu: bool = False,
    block_bytes: int | None = None,
    tiles: np.ndarray | None = None,
) -> np.ndarray:
    """conv(x) by F(4x4, 3x3), relu(conv(x)) with relu: x (N, H, W, C) -> out (N, H, W, F),
    or window-major (w*w, N, H/w, W/w, F) for pool = w as in `Conv2D.forward`. tiles: an
    array of `kept_tiles_shape` that gets x's transformed tiles, for the weight gradient
    (`WinogradTrainStep` in plan.py keeps what it needs). conv must satisfy `applies`."""
    if x.shape[3] != conv.in_channels:
        raise ValueError(f"Conv2D expects {conv.in_channels} input channels, got {x.shape[3]}")
    return winograd_conv(x, conv.params["W"], conv.params["b"], pool, relu, block_bytes, tiles)


def winograd_input_gradient(conv: Conv2D, dout: np.ndarray) -> np.ndarray:
    """dx for conv (3x3, stride 1, padding 1) from dout (N, H, W, F), or window-major
    (w*w, N, H/w, W/w, F) as `Conv2D.forward(pool=w)` wrote the output -> (N, H, W, C).

    dx[n, h, w, c] = sum_{i, j, f} dout[n, h + 1 - i, w + 1 - j, f] W[i, j, c, f]: the same-size
    correlation of dout with the kernel turned half a turn and its channels swapped,
    W'[i, j, f, c] = W[2 - i, 2 - j, c, f] (docs/backprop.md, "Conv2D"), so F(4x4, 3x3) too."""
    Wt = conv.params["W"][::-1, ::-1].transpose(0, 1, 3, 2)  # (3, 3, F, C), a view
    return winograd_conv(plain(dout), Wt, None)


def plain(dout: np.ndarray) -> np.ndarray:
    """An output (gradient) as (N, H, W, F): window-major (w*w, N, H/w, W/w, F) reordered,
    [a*w + b, n, ph, pw] being (n, w*ph + a, w*pw + b); a plain one as it is."""
    if dout.ndim == 4:
        return dout
    w2, N, PH, PW, F = dout.shape
    w = int(round(w2**0.5))
    dout = dout.reshape(w, w, N, PH, PW, F).transpose(2, 3, 0, 4, 1, 5)
    return dout.reshape(N, PH * w, PW * w, F)


def winograd_weight_gradient(
    x: np.ndarray | tuple[int, ...], dout: np.ndarray, tiles: np.ndarray | None = None
) -> np.ndarray:
    """dW (3, 3, C, F) of a same-size 3x3 correlation, from its input x (N, H, W, C) and
    output gradient dout (N, H, W, F): dW[i, j, c, f] = sum_{n, h, w} xpad[n, h + i, w + j, c]
    dout[n, h, w, f], by F(4x4, 3x3) read backwards.

    A tile's outputs are Y = A^T [U * V] A, U = G g G^T, V = B^T d B, so the loss's share
    sum_{u, v} dy[u, v] Y[u, v] = sum_xi (A dy A^T)_xi U_xi V_xi, whose gradient with respect
    to g is G^T [(A dy A^T) * V] G. Summed over tiles and images, at each tile position xi a
    matrix product over all tiles at once: S[xi] (C, F) = V[xi]^T (C, P) D[xi] (P, F),
    D = A dy A^T; then dW = G^T S G for every (c, f). Products over the long tile axis P, each
    block's added onto its lane's sums (SUM_POSITIONS tile positions at a time, in cache),
    the lanes' sums added in a fixed order. One block a product: longer ones, as the forward
    pass takes them, were slower here (docs/speed.md).
    tiles: V as the forward pass kept them (`winograd_conv`'s tiles, from this x), which
    spares transforming x again: the same V, so the same sums; x is then only its shape."""
    N, H, W_, C = x if isinstance(x, tuple) else x.shape
    F = dout.shape[3]
    dtype = tiles.dtype if tiles is not None else np.asarray(x).dtype
    cover = _Blocks(N, H, W_, C, F, dtype.itemsize, group=1)
    kept = _Blocks(N, H, W_, C, F, dtype.itemsize)  # the forward pass's blocks and groups
    if tiles is not None and tiles.shape != kept.kept_shape:
        raise ValueError(
            f"kept tiles of shape {tiles.shape} do not fit an input of {(N, H, W_, C)}"
        )
    if tiles is None and isinstance(x, tuple):
        raise ValueError("the weight gradient needs the input x, or the tiles kept from it")
    th, tw, nb, P = cover.th, cover.tw, cover.nb, cover.P
    bt, a = BT.astype(dtype), np.ascontiguousarray(AT.T, dtype=dtype)  # B^T d B, A dy A^T
    # each lane's sums, in the calling thread's work arrays (the lanes may run in others)
    sums = [scratch(f"winograd dW sums {k}", (36, C, F), dtype) for k in range(cover.lanes)]

    def lane(k: int) -> None:
        dy = scratch("winograd dy", (16, nb, th, tw, F), dtype)  # tiles' output gradients, 4u + v
        D = scratch("winograd D", (36, P * F), dtype)
        half_dy = scratch("winograd half dy", (6, 4, P * F), dtype)
        S = scratch("winograd S", (SUM_POSITIONS, C, F), dtype)  # a block's, at some positions
        if not cover.whole:  # zero beyond H, W, where no outputs are: dout padded to whole tiles
            dpad = scratch("winograd dpad", (nb, 4 * th, 4 * tw, F), dtype)
            dpad.fill(0)
        if tiles is None:  # x's tiles, transformed block by block
            assert not isinstance(x, tuple)
            xpad = scratch("winograd xpad", cover.padded, dtype)
            xpad.fill(0)  # the padding, and beyond H, W to whole tiles
            d = scratch("winograd d", (36, nb, th, tw, C), dtype)
            V = scratch("winograd V", (36, P * C), dtype)
            half_d = scratch("winograd half d", (6, 6, P * C), dtype)
        sums[k].fill(0)
        for b in range(k, len(cover.blocks), cover.lanes):
            n0, n1 = cover.blocks[b]
            n = n1 - n0
            by_tiles = dy.reshape(4, 4, nb, th, tw, F)
            if cover.whole:  # the tiles end at the images' sides: straight from dout
                by_tiles[:, :, :n] = _by_tile_position(dout[n0:n1])
                by_tiles[:, :, n:] = 0  # a shorter last block's spare images add nothing
            else:
                dpad[n:] = 0
                dpad[:n, :H, :W_] = dout[n0:n1]
                by_tiles[...] = _by_tile_position(dpad)
            if tiles is None:
                xpad[n:] = 0
                xpad[:n, 1 : H + 1, 1 : W_ + 1] = x[n0:n1]
                cover.tiles(xpad, d)
                both_axes(bt, d.reshape(6, 6, P * C), half_d, V.reshape(6, 6, P * C))
                Vb = V
            else:  # block b is block b % g of the forward pass's group b // g
                Vb = tiles[b // kept.g, :, b % kept.g]
            both_axes(a, dy.reshape(4, 4, P * F), half_dy, D.reshape(6, 6, P * F))
            VT, Db = Vb.reshape(36, P, C).transpose(0, 2, 1), D.reshape(36, P, F)
            for i in range(0, 36, SUM_POSITIONS):  # added on while in the core's cache
                j = min(36, i + SUM_POSITIONS)
                np.matmul(VT[i:j], Db[i:j], out=S[: j - i])
                sums[k][i:j] += S[: j - i]

    in_lanes(lane, cover.lanes)
    total = sums[0]
    for other in sums[1:]:
        total += other
    kg = np.kron(G.T, G.T).astype(dtype)  # (9, 36): G^T S G for every (c, f)
    return (kg @ total.reshape(36, C * F)).reshape(3, 3, C, F)


def winograd_conv(
    x: np.ndarray,
    W: np.ndarray,
    bias: np.ndarray | None,
    pool: int = 0,
    relu: bool = False,
    block_bytes: int | None = None,
    tiles: np.ndarray | None = None,
) -> np.ndarray:
    """The same-size 3x3 correlation of x (N, H, W, C) with W (3, 3, C, F), plus bias (F,)
    (None: no bias), relu with relu, by F(4x4, 3x3): out (N, H, W, F), or window-major for
    pool = w (`winograd_forward`); blocks of about block_bytes of transformed tiles (default
    BLOCK_BYTES), PRODUCT_BLOCKS of them a product. tiles (default blocks only): an array of
    `kept_tiles_shape` in which the transformed tiles V are made and kept (a shorter last
    block's spare images zero), for `winograd_weight_gradient`."""
    N, H, W_, C = x.shape
    F, dtype = W.shape[3], W.dtype
    x = x.astype(dtype, copy=False)
    U = transform_filters(W, kept=True)  # (36, C, F)
    bt, at = BT.astype(dtype), AT.astype(dtype)
    w = Conv2D._window(H, W_, pool)
    out = np.empty((w * w, N, H // w, W_ // w, F), dtype=dtype)
    cover = _Blocks(N, H, W_, C, F, dtype.itemsize, block_bytes)
    th, tw, nb, P, g = cover.th, cover.tw, cover.nb, cover.P, cover.g
    direct = cover.whole and 4 % w == 0  # the outputs straight from their tiles into out
    if tiles is not None and (
        block_bytes is not None or tiles.dtype != dtype or tiles.shape != cover.kept_shape
    ):
        raise ValueError(f"tiles {tiles.shape} {tiles.dtype} do not fit an input of {x.shape}")

    def lane(k: int) -> None:
        xpad = scratch("winograd xpad", cover.padded, dtype)
        xpad.fill(0)  # zero padding, and beyond H, W to whole tiles
        d = scratch("winograd d", (36, nb, th, tw, C), dtype)  # the tiles, (a, b) = 6 a + b
        V = scratch("winograd V", (36, g, P * C), dtype)  # a group's, block j at [:, j]
        half_d = scratch("winograd half d", (6, 6, P * C), dtype)
        M = scratch("winograd M", (36, g * P, F), dtype)
        half_M = scratch("winograd half M", (4, 6, P * F), dtype)
        Y16 = scratch("winograd Y16", (16, P * F), dtype)  # the outputs, (u, v) = 4 u + v
        # the block's outputs, whole tiles, where they cannot go straight into out
        Y = Y16 if direct else scratch("winograd Y", (nb, 4 * th, 4 * tw, F), dtype)
        for i in range(k, len(cover.groups), cover.lanes):
            group = cover.groups[i]
            Vg = V if tiles is None else tiles[i]
            for j, (n0, n1) in enumerate(group):  # B^T d B of each block, into its part of V
                xpad[: n1 - n0, 1 : H + 1, 1 : W_ + 1] = x[n0:n1]
                if tiles is not None and n1 - n0 < nb:  # kept: a shorter block's spare
                    xpad[n1 - n0 :] = 0  # images zero, as the weight gradient makes its own
                cover.tiles(xpad, d)
                both_axes(bt, d.reshape(6, 6, P * C), half_d, Vg.reshape(6, 6, g, P * C)[:, :, j])
            q = len(group) * P  # the group's tiles: 36 products over C, (q, C) by (C, F)
            np.matmul(Vg.reshape(36, g * P, C)[:, :q], U, out=M[:, :q])
            if bias is not None:  # at tile position (1, 1): A^T's column 1 is all ones, so
                M[7, :q] += bias  # A^T M A adds it to each of the tile's 16 outputs, once
            for j, (n0, n1) in enumerate(group):  # A^T M A of each block
                n = n1 - n0
                Mj = M.reshape(6, 6, g, P * F)[:, :, j]
                both_axes(at, Mj, half_M, Y16.reshape(4, 4, P * F), columns_first=True)
                # output (4t + u, 4s + v) of tile (t, s), through the ReLU on the way, in one
                # strided copy: where the tiles end at the images' sides, straight into out;
                # otherwise into the whole tiles Y, then the part inside the images into out
                if direct:
                    src = Y16.reshape(4 // w, w, 4 // w, w, nb, th, tw, F)[:, :, :, :, :n]
                    dst = _window_major_by_tile_position(out[:, n0:n1], w, th, tw)
                else:
                    src, dst = Y16.reshape(4, 4, nb, th, tw, F), _by_tile_position(Y)
                if relu:
                    np.maximum(src, 0, out=dst)
                else:
                    dst[...] = src
                if not direct:  # (n, H, W, F): the part inside the images, in out's order
                    Yn = Y[:n, :H, :W_].reshape(n, H // w, w, W_ // w, w, F)
                    out[:, n0:n1].reshape(w, w, n, H // w, W_ // w, F)[...] = Yn.transpose(
                        2, 4, 0, 1, 3, 5
                    )

    in_lanes(lane, cover.lanes)
    return out.reshape(N, H, W_, F) if w == 1 else out
