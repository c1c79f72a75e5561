"""Preparing photos of digits the way MNIST's digits were prepared."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from barenet.data.images import decode_image, load_digit, prepare_digit
from barenet.errors import ImageError
from barenet.files.modelfile import default_model_path, load_model
from barenet.train.loop import to_inputs


def photo(digit: np.ndarray, rng: np.random.Generator, *, thin: bool = False,
          size: tuple[int, int] = (600, 800)) -> Image.Image:  # fmt: skip
    """A synthetic phone photo of an MNIST digit: dark ink on unevenly lit, tinted paper,
    anywhere in the frame, 8-14x larger than MNIST's, JPEG-compressed."""
    W, H = size
    scale = rng.uniform(8, 14)
    big = Image.fromarray(digit).resize((int(28 * scale),) * 2, Image.Resampling.BICUBIC)
    if thin:  # a fine pen: strokes much thinner than MNIST's, relative to the digit
        big = big.filter(ImageFilter.MinFilter(5))
    ink = np.asarray(big, dtype=float) / 255
    yy, xx = np.mgrid[0:H, 0:W]
    paper = 200 + 40 * (xx / W) - 20 * (yy / H) + rng.normal(0, 4, (H, W))
    oy, ox = rng.integers(0, H - ink.shape[0]), rng.integers(0, W - ink.shape[1])
    window = paper[oy : oy + ink.shape[0], ox : ox + ink.shape[1]]
    window[...] = window * (1 - ink) + 50 * ink
    rgb = np.stack([paper, paper * 0.95, paper * 0.85], axis=-1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    buf.seek(0)
    return Image.open(buf)


def test_photos_are_prepared_like_mnist_and_recognised(mnist):
    model, _ = load_model(default_model_path())
    rng = np.random.default_rng(0)
    n = 100
    prepared = np.stack([prepare_digit(photo(mnist.test_images[i], rng, thin=i % 2 == 1))
                         for i in range(n)])  # fmt: skip
    direct = model.predict(to_inputs(mnist.test_images[:n])) == mnist.test_labels[:n]
    via_photo = model.predict(to_inputs(prepared)) == mnist.test_labels[:n]
    assert via_photo.mean() >= 0.95, (via_photo.mean(), direct.mean())
    assert via_photo.mean() >= direct.mean() - 0.04


def test_prepared_digit_has_mnist_geometry(mnist):
    img = prepare_digit(photo(mnist.test_images[0], np.random.default_rng(1)))
    assert img.shape == (28, 28) and img.dtype == np.uint8 and img.max() == 255
    rows, cols = np.nonzero(img > 0)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (20, 21)  # longest side scaled to 20 px
    ys, xs = np.indices(img.shape)
    w = img.astype(float)
    assert (w * ys).sum() / w.sum() == pytest.approx(13.5, abs=0.6)
    assert (w * xs).sum() / w.sum() == pytest.approx(13.5, abs=0.6)
    assert img[0].max() == 0 and img[:, 0].max() == 0  # background is black


def test_polarity_is_detected():
    canvas = np.zeros((200, 150), np.uint8)
    canvas[40:160, 60:80] = 255  # a white "1" on black
    white_on_black = prepare_digit(Image.fromarray(canvas))
    black_on_white = prepare_digit(Image.fromarray(255 - canvas))
    assert np.abs(white_on_black.astype(int) - black_on_white.astype(int)).max() <= 2
    assert white_on_black[4:24, 12:16].max(axis=1).min() > 150  # the bar, in the middle


def test_mnist_format_is_used_as_it_is(mnist, tmp_path):
    path = tmp_path / "d.png"
    Image.fromarray(mnist.test_images[3]).save(path)
    np.testing.assert_array_equal(load_digit(path), mnist.test_images[3])


def test_transparent_background_and_exif_rotation(mnist, tmp_path):
    model, _ = load_model(default_model_path())
    digit = mnist.test_images[1]  # a 2
    ink = np.asarray(Image.fromarray(digit).resize((280, 280)))
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., 3] = ink  # black strokes, transparent elsewhere, as a drawing app saves them
    path = tmp_path / "drawn.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert model.predict(to_inputs(load_digit(path)[None]))[0] == mnist.test_labels[1]

    # A phone stores the photo sideways and says so in EXIF: orientation 6 = rotate 90 cw.
    sideways = Image.fromarray(255 - ink).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = tmp_path / "phone.jpg"
    sideways.convert("RGB").save(jpeg, exif=exif.tobytes())
    assert model.predict(to_inputs(load_digit(jpeg)[None]))[0] == mnist.test_labels[1]


@pytest.mark.parametrize("fill", [0, 128, 255])
def test_blank_images_are_one_clear_error(tmp_path, fill):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((100, 80), fill, np.uint8)).save(path)
    with pytest.raises(ImageError, match="blank"):
        load_digit(path)


def test_not_an_image_missing_and_bomb(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not an image file"):
        load_digit(text)
    with pytest.raises(ImageError, match="no such image file"):
        load_digit(tmp_path / "missing.png")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 M pixels in a small file
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too large"):
        load_digit(bomb)
    truncated = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    Image.new("L", (300, 300), 200).save(buf, "JPEG")
    truncated.write_bytes(buf.getvalue()[:200])
    with pytest.raises(ImageError, match=r"cut\.jpg"):
        load_digit(truncated)


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400))
def test_fuzzed_bytes_are_an_image_error_or_a_digit(data):
    try:
        image = prepare_digit(decode_image(data))
    except ImageError:
        return
    assert image.shape == (28, 28) and image.dtype == np.uint8


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(
        np.uint8, st.tuples(st.integers(1, 60), st.integers(1, 60)), elements=st.integers(0, 255)
    ),  # fmt: skip
    st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16"]),
)
def test_fuzzed_pictures_are_prepared_or_refused(pixels, mode):
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    try:
        out = prepare_digit(decode_image(buf.getvalue()))
    except ImageError as e:
        assert "blank" in str(e)
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8
    # Ink was found: the pipeline stretches it to 255; a dark 28x28 image (MNIST's own form)
    # passes through as it is, and must have ink too.
    assert out.max() == 255 if pixels.shape != (28, 28) else out.max() >= 16


def test_a_black_28x28_image_is_blank_not_a_digit():
    with pytest.raises(ImageError, match="blank"):
        prepare_digit(Image.new("L", (28, 28), 0))
