"""Your own digits: turning a photo or scan of one digit into what MNIST's digits look like.

MNIST's digits were prepared this way (LeCun et al.): the ink's bounding box was scaled to fit
a 20x20 box keeping its aspect ratio, with anti-aliasing, and placed in a 28x28 image so that
its centre of mass is at the centre; the ink is white (255) on black (0). A network trained on
them sees nothing else, so a photo must be brought into the same form first:

1. orientation from the EXIF tag (phones store photos sideways), greyscale, and a first
   downscale of large photos to at most WORK_SIZE pixels (for speed);
2. polarity: if the background (the median of the border) is lighter than the middle grey, the
   image is dark ink on light paper and is inverted, so that ink is bright;
3. uneven lighting: a heavy blur of the image estimates the paper's brightness everywhere
   (the strokes are thin, so the blur sees mostly paper) and is subtracted;
4. the ink: Otsu's threshold separates ink from paper; faint noise below half of it is zeroed;
5. cropping to the ink: the box holding all but a sliver (TRIM) of the ink on each side, so
   that a speck of dust at the edge does not stretch it;
6. stroke width: a pen line on a phone photo is much thinner, relative to the digit, than
   MNIST's (about 2.5 px in 28); strokes thinner than that are thickened (a max filter);
7. scaling so that the longest side is 20 px (Lanczos, anti-aliased), contrast stretched so
   the ink peaks at 255, and placement in 28x28 with the centre of mass at (14, 14).

An image that is already in MNIST's form (28x28, dark background) is used as it is.
Each failure is one ImageError: no file, not an image, a decompression bomb, an empty image.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from ..errors import ImageError

BLANK = "the image is blank: no ink stands out from the background"
MAX_PIXELS = 50_000_000  # a larger image is refused before it is decoded (decompression bombs)
WORK_SIZE = 512  # photos are first shrunk to at most this many pixels on their longest side
TRIM = 0.002  # fraction of the ink allowed outside the crop on each side
STROKE = 2.4  # MNIST's median stroke width in its 28x28 images (2 * ink area / ink perimeter)


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file safely: its size is checked before it is decoded.

    Raises: ImageError if the file is missing, not an image, too large, or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with path.open("rb") as f:
            return decode_image(f)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


def decode_image(data: bytes | BinaryIO) -> Image.Image:
    """Decode an image from bytes or a binary file, refusing decompression bombs (more than
    MAX_PIXELS pixels) before decoding. Raises ImageError for anything but a readable image."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"image of {img.width}x{img.height} pixels is too large")
                img.load()
                return img.copy()
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image is too large (decompression bomb check)") from None
    except ImageError:
        raise
    except Exception as e:  # Pillow's decoders raise many kinds on hostile input
        raise ImageError(f"unreadable image ({type(e).__name__}: {e})") from None


def load_digit(path: str | os.PathLike[str]) -> np.ndarray:
    """path -> (28, 28) uint8, white digit on black, prepared as MNIST's digits were.

    Raises: ImageError (see `open_image` and `prepare_digit`), naming the file.
    """
    try:
        return prepare_digit(open_image(path))
    except ImageError as e:
        message = str(e)
        raise ImageError(message if message.startswith(str(path)) else f"{path}: {e}") from None


def _greyscale(img: Image.Image) -> np.ndarray:
    """Any Pillow image -> (H, W) float32 in [0, 255]; transparency is laid on white paper."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    grey = img.convert("L")
    if max(grey.size) > WORK_SIZE:
        grey.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(grey, dtype=np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 255]: the split that maximises the between-class
    variance of the two sides (Otsu 1979)."""
    hist, edges = np.histogram(values, bins=256, range=(0, 256))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu0 = np.cumsum(p * centres)
    total = mu0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - mu0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = 0
    return float(centres[int(np.argmax(between))])


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary ink mask in pixels: a stroke of width w and length L has
    area w L and a boundary of about 2 L pixels, so w ~ 2 * area / boundary."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
             & padded[1:-1, :-2] & padded[1:-1, 2:])  # fmt: skip
    boundary = max(area - int(inner.sum()), 1)
    return 2.0 * area / boundary


def _crop_box(ink: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the box holding all but TRIM of the ink on each side."""

    def span(profile: np.ndarray) -> tuple[int, int]:
        c = np.cumsum(profile) / profile.sum()
        lo = int(np.searchsorted(c, TRIM))
        hi = int(np.searchsorted(c, 1 - TRIM)) + 1
        return lo, max(hi, lo + 1)

    top, bottom = span(ink.sum(axis=1))
    left, right = span(ink.sum(axis=0))
    return top, bottom, left, right


def prepare_digit(img: Image.Image) -> np.ndarray:
    """A photo or scan of one digit -> (28, 28) uint8 MNIST-style image (see the module doc).

    Raises: ImageError if the image holds no ink (blank, or of one colour).
    """
    grey = _greyscale(img)
    H, W = grey.shape
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if (H, W) == (28, 28) and np.median(border) < 128:  # already MNIST's form
        if grey.max() - np.median(border) < 16:
            raise ImageError(BLANK)
        return np.clip(grey + 0.5, 0, 255).astype(np.uint8)
    if np.median(border) >= 128:
        grey = 255.0 - grey  # dark ink on light paper: make the ink bright
    # Paper brightness everywhere (a blur much wider than a stroke), subtracted.
    radius = max(H, W) / 12
    background = Image.fromarray(grey.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    ink = np.clip(grey - np.asarray(background, dtype=np.float32), 0, None)
    if ink.max() < 16:
        raise ImageError(BLANK)
    ink *= 255.0 / ink.max()
    threshold = _otsu(ink)
    ink[ink < threshold / 2] = 0  # paper grain and noise
    top, bottom, left, right = _crop_box(ink)
    ink = ink[top:bottom, left:right]
    h, w = ink.shape
    # Work at 4x the final size: the stroke width is measured and fixed there.
    scale = 80.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    work = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.LANCZOS
    )
    width = _stroke_width(np.asarray(work) >= 128)
    wanted = 4 * STROKE  # MNIST's stroke, in pixels of the 4x image
    if 0 < width < 0.8 * wanted:
        k = int(round(wanted - width)) | 1  # odd filter size
        work = work.filter(ImageFilter.MaxFilter(min(k, 15)))
    small_size = (max(1, round(size[0] / 4)), max(1, round(size[1] / 4)))
    small = np.asarray(work.resize(small_size, Image.Resampling.LANCZOS), dtype=np.float32)
    if small.max() <= 0:
        raise ImageError(BLANK)
    small *= 255.0 / small.max()
    # Centre of mass at the centre of the 28x28 image: pixel index 13.5 (between 13 and 14).
    ys, xs = np.indices(small.shape)
    mass = small.sum()
    cy, cx = (ys * small).sum() / mass, (xs * small).sum() / mass
    out = np.zeros((28, 28), dtype=np.float32)
    h, w = small.shape
    oy = int(np.clip(round(13.5 - cy), 0, 28 - h))
    ox = int(np.clip(round(13.5 - cx), 0, 28 - w))
    out[oy : oy + h, ox : ox + w] = small
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
