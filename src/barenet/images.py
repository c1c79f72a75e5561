"""Reading a digit image file for prediction.

The network was trained on MNIST's format: 28x28 greyscale, white digit on black (0 = background).
This reads such a file (any format Pillow knows; colour is converted to greyscale) and refuses
anything else with one clear ImageError.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

MAX_PIXELS = 50_000_000  # a larger image is refused before it is decoded (decompression bombs)


def load_digit(path: str | os.PathLike[str]) -> np.ndarray:
    """path -> (28, 28) uint8 image, as MNIST stores its digits.

    Raises: ImageError if the file is missing, not an image, too large, or not 28x28.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: image of {img.width}x{img.height} pixels is too large"
                    )
                if img.size != (28, 28):
                    raise ImageError(
                        f"{path}: image is {img.width}x{img.height}; barenet predict takes 28x28 "
                        "greyscale digits, white on black, as in MNIST"
                    )
                grey = img.convert("L")
                grey.load()
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: image is too large (decompression bomb check)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: unreadable image ({e})") from None
    return np.asarray(grey, dtype=np.uint8)
