"""Data augmentation on the fly: random affine maps and elastic distortions of digit images.

Every image of a batch gets its own random transform, and the whole batch is resampled at once:
    1. a random affine map (rotation, scale (of each axis apart with `scale_apart`), shift, and
       a shear with `shear`) about the image centre gives, for every output pixel, the point
       of the input image it shows; with `flip`, half of the images (at random) are also
       mirrored left to right (clothes, not digits: a mirrored 7 is no 7);
    2. elastic distortion (Simard et al. 2003) adds a random, smooth displacement to that point:
       a field of uniform(-1, 1) values per pixel and axis (to 8 bits: one random byte each),
       smoothed by a Gaussian of width sigma and scaled by alpha. The Gaussian is separable,
       so smoothing the (N, 28, 28) fields is two products with a (28, 28) Gaussian matrix:
       G f G^T;
    3. bilinear interpolation reads the input at those points (zero outside the image);
    4. random erasing (Zhong et al. 2017), with probability `erase` per image: a rectangle of
       area s H W, s ~ U[0.02, 0.4], and aspect ratio h / w = exp(U[log 0.3, log 1/0.3]),
       placed uniformly inside the image, is filled with uniform noise in the input's range.
       The rectangles of the batch are one (N, H, W) mask built by broadcasting row and column
       ranges; a side longer than the image is cut to the image's.
All of it is NumPy arithmetic over the whole batch: a handful of array passes, no Python loop
over images. `benchmarks/augment.py` measures its cost against the training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Augment:
    """Ranges of the random transforms; each is drawn uniformly, per image."""

    rotate: float = 0.0  # degrees: angle in [-rotate, rotate]
    scale: float = 0.0  # relative: zoom in [1 - scale, 1 + scale]
    shift: float = 0.0  # pixels: translation in [-shift, shift] along each axis
    elastic_alpha: float = 0.0  # strength of the elastic displacement, pixels (0: none)
    elastic_sigma: float = 4.0  # smoothness of the elastic field, pixels (Simard et al.: 4)
    flip: bool = False  # mirror each image left to right with probability 1/2
    erase: float = 0.0  # probability of erasing a random rectangle of each image (0: never)
    shear: float = 0.0  # degrees: each row slides sideways by tan(angle) x its height from
    # the centre, angle in [-shear, shear] (Keras's shear_range; a slanted hand)
    scale_apart: bool = False  # draw the zoom of the width apart from the height's, each in
    # [1 - scale, 1 + scale] (Keras's zoom_range: a digit grows taller or wider alone)

    @property
    def active(self) -> bool:
        return any((self.rotate, self.scale, self.shift, self.elastic_alpha, self.flip, self.erase,
                    self.shear))  # fmt: skip

    def check(self) -> None:
        if not (math.isfinite(self.shear) and 0 <= self.shear < 90):
            raise ValueError(f"augmentation shear must be degrees in [0, 90), not {self.shear!r}")
        for name in ("rotate", "scale", "shift", "elastic_alpha", "elastic_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"augmentation {name} must be a number >= 0, not {v!r}")
        if self.scale >= 1:
            raise ValueError(f"augmentation scale must be below 1, not {self.scale}")
        if self.elastic_alpha and self.elastic_sigma <= 0:
            raise ValueError("elastic distortion needs elastic_sigma > 0")
        if not (isinstance(self.erase, (int, float)) and 0 <= self.erase <= 1):
            raise ValueError(f"augmentation erase is a probability in [0, 1], not {self.erase!r}")
        for name in ("flip", "scale_apart"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"augmentation {name} must be true or false, "
                                 f"not {getattr(self, name)!r}")  # fmt: skip


@lru_cache(maxsize=8)
def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """G (size, size), G[i, j] = k(i - j): smoothing a vector v with a Gaussian kernel k of
    width sigma, zero beyond the edges, is G v. The kernel sums to 1 over all integers."""
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    radius = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (d / sigma) ** 2)
    k[np.abs(d) > radius] = 0.0
    k /= np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).sum()
    return k.astype(np.float32)


@lru_cache(maxsize=8)
def _centred_grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the image centre: yy, xx, each (H, W) float32."""
    yy, xx = np.meshgrid(np.arange(H, dtype=np.float32) - np.float32((H - 1) / 2),
                         np.arange(W, dtype=np.float32) - np.float32((W - 1) / 2), indexing="ij")  # fmt: skip
    return yy, xx


def augment(images: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    """Randomly transform a batch of images.

    Arguments:
        images: (N, H, W) uint8 (0..255) or float, dark background.
        rng: the generator of the transforms (seeded: the same draws give the same batch).
        aug: the ranges of the transforms.
    Returns:
        (N, H, W) float32 images in the input's scale (0..255 for uint8 input).
    """
    N, H, W = images.shape
    f32 = np.float32
    # Output pixel coordinates relative to the image centre: (H, W) each.
    cy, cx = (H - 1) / 2, (W - 1) / 2
    yy, xx = _centred_grid(H, W)
    # Inverse affine map per image: the source of output point p is Z^-1 R(-angle) p - shift,
    # Z = diag(zoom_y, zoom_x), one zoom for both axes unless `scale_apart`.
    angle = np.deg2rad(np.asarray(rng.uniform(-aug.rotate, aug.rotate, N), dtype=f32))
    zoom_y = np.asarray(rng.uniform(1 - aug.scale, 1 + aug.scale, N), dtype=f32)
    zoom_x = zoom_y  # drawn apart only when asked for: otherwise every draw is as it was
    if aug.scale_apart:
        zoom_x = np.asarray(rng.uniform(1 - aug.scale, 1 + aug.scale, N), dtype=f32)
    shift = rng.uniform(-aug.shift, aug.shift, (N, 2)).astype(f32)
    cos_y, sin_y = (np.cos(angle) / zoom_y)[:, None, None], (np.sin(angle) / zoom_y)[:, None, None]
    cos_x, sin_x = (np.cos(angle) / zoom_x)[:, None, None], (np.sin(angle) / zoom_x)[:, None, None]
    src_y = cos_y * yy - sin_y * xx + f32(cy) - shift[:, 0, None, None]  # (N, H, W)
    src_x = sin_x * yy + cos_x * xx + f32(cx) - shift[:, 1, None, None]
    if aug.shear:  # drawn only when asked for: without a shear, every draw is as it was
        slant = np.tan(np.deg2rad(rng.uniform(-aug.shear, aug.shear, N))).astype(f32)
        src_x += slant[:, None, None] * (src_y - f32(cy))  # rows slide by their height
    if aug.elastic_alpha:
        G = _gaussian_matrix(H, float(aug.elastic_sigma))
        Gw = G if W == H else _gaussian_matrix(W, float(aug.elastic_sigma))
        # One random byte b per value: u = (b - 127.5) / 128 takes the centres of 256 equal
        # bins of (-1, 1), each with probability 1/256: U(-1, 1) to 8 bits (the same mean, the
        # variance 1/3 to 1 part in 65536), and the Gaussian averages dozens of them. A third
        # of the cost of drawing float32s. The 1 / 128 and alpha go into Gw.
        fields = np.frombuffer(rng.bytes(2 * N * H * W), dtype=np.uint8).astype(f32)
        fields -= f32(127.5)
        scaled_gw = (f32(aug.elastic_alpha / 128) * Gw).T
        # alpha * G u Gw^T for all 2N fields: along W as one (2NH, W) x (W, W) product, then
        # along H as a batch of (H, H) x (H, W) products.
        smooth = G @ (fields.reshape(2 * N * H, W) @ scaled_gw).reshape(2, N, H, W)
        src_y += smooth[0]
        src_x += smooth[1]
    if aug.flip:  # output pixel (y, x) of a mirrored image shows input pixel (y, W - 1 - x)
        mirrored = rng.random(N) < 0.5
        src_x[mirrored] = f32(W - 1) - src_x[mirrored]
    out = _bilinear(images, src_y, src_x)
    if aug.erase:
        top = 255.0 if images.dtype == np.uint8 else 1.0  # the input's range: [0, top]
        _erase(out, rng, aug.erase, f32(top))
    return out


# Random erasing's ranges (Zhong et al. 2017): the rectangle's share of the image's area and
# its aspect ratio height / width (log-uniform between the bounds).
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def _erase(images: np.ndarray, rng: np.random.Generator, p: float, top: np.float32) -> None:
    """Random erasing, in place: each image (N, H, W) float32, with probability p, gets a
    random rectangle (area and aspect ratio drawn from ERASE_AREA, ERASE_ASPECT) replaced by
    uniform noise in [0, top]."""
    N, H, W = images.shape
    area = rng.uniform(*ERASE_AREA, N) * (H * W)
    aspect = np.exp(rng.uniform(np.log(ERASE_ASPECT[0]), np.log(ERASE_ASPECT[1]), N))
    h = np.clip(np.rint(np.sqrt(area * aspect)), 1, H).astype(np.intp)  # (N,)
    w = np.clip(np.rint(np.sqrt(area / aspect)), 1, W).astype(np.intp)
    y0 = (rng.random(N) * (H - h + 1)).astype(np.intp)  # top-left corner: the whole
    x0 = (rng.random(N) * (W - w + 1)).astype(np.intp)  # rectangle inside the image
    chosen = np.less(rng.random(N), p)  # (N,) bool
    rows = np.arange(H)[None, :]
    cols = np.arange(W)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + h)[:, None]) & chosen[:, None]  # (N, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + w)[:, None])  # (N, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    noise = rng.random((N, H, W), dtype=np.float32)
    noise *= top
    np.copyto(images, noise, where=mask)


def _bilinear(images: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Read images (N, H, W) at real coordinates y, x (N, H', W'), bilinearly, zero outside."""
    N, H, W = images.shape
    padded = np.zeros((N, H + 2, W + 2), dtype=np.float32)  # a border of zeros all round
    padded[:, 1:-1, 1:-1] = images
    # In padded coordinates, clipped into the zero border: far-away points read zeros.
    y = np.clip(y + 1, 0, H + 1 - 1e-3)
    x = np.clip(x + 1, 0, W + 1 - 1e-3)
    y0, x0 = np.floor(y), np.floor(x)
    wy, wx = y - y0, x - x0  # weights of the lower-right neighbours
    base = y0.astype(np.intp)
    base *= W + 2
    base += x0.astype(np.intp)
    base += (np.arange(N) * ((H + 2) * (W + 2)))[:, None, None]
    flat = padded.reshape(-1)
    # take: the same gather as flat[base], faster for a flat source
    top = flat.take(base) * (1 - wx) + flat.take(base + 1) * wx
    bottom = flat.take(base + (W + 2)) * (1 - wx) + flat.take(base + (W + 3)) * wx
    return top * (1 - wy) + bottom * wy
