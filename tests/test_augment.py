import numpy as np
import pytest

from barenet.train.augment import Augment, _gaussian_matrix, augment


def digits(n=16, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = rng.integers(100, 256, (n, 12, 8))
    return images


def test_no_transform_is_the_identity():
    x = digits()
    out = augment(x, np.random.default_rng(0), Augment())
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, x)
    assert not Augment().active and Augment(shift=1).active


def test_whole_pixel_shift_moves_the_image():
    x = digits(4)
    # Read the drawn shifts back from a generator with the same seed.
    aug = Augment(shift=3.0)
    out = augment(x, np.random.default_rng(1), aug)
    shifts = np.random.default_rng(1)
    shifts.uniform(0, 0, 4), shifts.uniform(1, 1, 4)  # the angle and zoom draws come first
    dy, dx = shifts.uniform(-3, 3, (4, 2)).T
    ys, xs = np.indices((28, 28))

    def centre(image):
        w = image.astype(float)
        return (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()

    for n in range(4):
        # the centre of mass moves by the drawn shift (no ink crosses the border)
        (cy0, cx0), (cy1, cx1) = centre(x[n]), centre(out[n])
        assert cy1 - cy0 == pytest.approx(dy[n], abs=0.05)
        assert cx1 - cx0 == pytest.approx(dx[n], abs=0.05)


def test_seeded_and_every_image_gets_its_own_transform():
    x = np.repeat(digits(1), 8, axis=0)
    aug = Augment(rotate=15, scale=0.15, shift=2, elastic_alpha=34, elastic_sigma=4)
    a = augment(x, np.random.default_rng(5), aug)
    b = augment(x, np.random.default_rng(5), aug)
    np.testing.assert_array_equal(a, b)
    assert len({a[i].tobytes() for i in range(8)}) == 8
    assert a.min() >= 0 and a.max() <= 255
    # a rotation moves ink without creating any: the total stays within a few percent
    c = augment(x, np.random.default_rng(5), Augment(rotate=15))
    assert c.sum() / x.astype(float).sum() == pytest.approx(1.0, rel=0.03)


def test_elastic_field_has_the_smoothed_uniform_statistics():
    # On a linear ramp, bilinear reading is exact: output - input is 9 times the displacement.
    # Ramps along x and along y, drawn with the same seed, read the same two fields.
    n, alpha, sigma = 3000, 34.0, 4.0
    ramp = np.broadcast_to(9 * np.arange(28, dtype=np.uint8), (n, 28, 28))
    aug = Augment(elastic_alpha=alpha, elastic_sigma=sigma)
    dx = (augment(ramp, np.random.default_rng(3), aug) - ramp) / 9
    dy = (augment(ramp.transpose(0, 2, 1), np.random.default_rng(3), aug) - ramp.mT) / 9
    # at the centre: alpha * sum_ij G[c, i] u_ij G[c, j] with u ~ U(-1, 1), variance 1/3
    G = _gaussian_matrix(28, sigma).astype(float)
    g, g_next = G[14], G[15]
    expected_std = alpha * np.sqrt(1 / 3) * (g**2).sum()
    for d in (dx, dy):
        assert abs(d[:, 14, 14].mean()) < 4 * expected_std / np.sqrt(n)
        assert d[:, 14, 14].std() == pytest.approx(expected_std, rel=0.05)
    # smooth: neighbours move together as the kernel's overlap says; x and y independent
    expected_corr = (g * g_next).sum() / (g**2).sum()
    assert np.corrcoef(dx[:, 14, 14], dx[:, 14, 15])[0, 1] == pytest.approx(expected_corr, abs=0.02)
    assert abs(np.corrcoef(dx[:, 14, 14], dy[:, 14, 14])[0, 1]) < 0.08


def test_rotation_by_180_degrees_flips_the_image():
    x = digits(2)
    out = augment(x, np.random.default_rng(0), Augment(rotate=180))
    # the drawn angles are uniform in [-180, 180]; check against the draw itself
    angle = np.random.default_rng(0).uniform(-180, 180, 2)
    for n in range(2):
        if abs(abs(angle[n]) - 180) < 1:
            np.testing.assert_allclose(out[n], x[n, ::-1, ::-1], atol=5)


def test_gaussian_matrix_smooths_like_the_kernel():
    G = _gaussian_matrix(28, 4.0)
    v = np.zeros(28, np.float32)
    v[14] = 1
    smoothed = G @ v
    assert smoothed.argmax() == 14 and smoothed.sum() == pytest.approx(
        1.0, abs=1e-3
    )  # tails cut by the edge
    np.testing.assert_allclose(smoothed[10], smoothed[18])


@pytest.mark.parametrize("field,value", [("rotate", -1.0), ("scale", 1.0), ("shift", float("nan")),
                                         ("shear", 90.0), ("shear", -5.0)])  # fmt: skip
def test_bad_ranges_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        Augment(**{field: value}).check()


def test_flip_mirrors_about_half_of_the_images_exactly():
    x = digits(64)
    out = augment(x, np.random.default_rng(3), Augment(flip=True))
    mirrored = [bool(np.array_equal(o, img[:, ::-1])) for o, img in zip(out, x, strict=True)]
    unchanged = [bool(np.array_equal(o, img)) for o, img in zip(out, x, strict=True)]
    assert all(m != u for m, u in zip(mirrored, unchanged, strict=True))  # one or the other
    assert 16 <= sum(mirrored) <= 48
    assert Augment(flip=True).active
    with pytest.raises(ValueError, match="flip"):
        Augment(flip="yes").check()  # type: ignore[arg-type]


def test_erase_replaces_one_rectangle_of_each_chosen_image_with_noise():
    x = np.zeros((400, 28, 28), np.uint8)  # black: every erased pixel turns to noise > 0
    out = augment(x, np.random.default_rng(7), Augment(erase=1.0))
    areas, aspects = [], []
    for image in out:
        rows, cols = np.nonzero(image)
        assert len(rows), "every image is erased at p = 1"
        box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box > 0).all()  # the changed pixels fill their bounding box: one rectangle
        assert image.max() <= 255
        areas.append(box.size / 784)
        aspects.append(box.shape[0] / box.shape[1])
    # area shares drawn from [0.02, 0.4] (whole pixels; tall draws cut to the image's height)
    assert 0.01 <= min(areas) < 0.05 and 0.3 < max(areas) <= 0.45
    assert min(aspects) < 0.6 and max(aspects) > 1.6  # both tall and wide rectangles
    np.testing.assert_array_equal(out, augment(x, np.random.default_rng(7), Augment(erase=1.0)))
    floats = augment(x.astype(np.float32), np.random.default_rng(7), Augment(erase=1.0))
    assert 0.5 < floats.max() <= 1.0  # float images: noise in [0, 1]


def test_erase_chooses_images_with_its_probability_and_leaves_the_rest():
    x = digits(2000, seed=1)
    out = augment(x, np.random.default_rng(2), Augment(erase=0.5))
    changed = (out != x).any(axis=(1, 2))
    assert 0.45 < changed.mean() < 0.55
    assert Augment(erase=0.5).active


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "half"])
def test_erase_must_be_a_probability(value):
    with pytest.raises(ValueError, match="erase"):
        Augment(erase=value).check()


def test_shear_slants_a_vertical_bar_and_leaves_the_other_draws_alone():
    n = 64
    bars = np.zeros((n, 28, 28), np.uint8)
    bars[:, 4:24, 13:15] = 255
    cols = np.arange(28)

    def centre(rows):  # the bar's mean column over a band of rows
        ink = rows.sum(axis=1)  # (n, 28)
        return (ink * cols).sum(axis=1) / ink.sum(axis=1)

    out = augment(bars, np.random.default_rng(0), Augment(shear=20.0))
    lean = centre(out[:, 17:22]) - centre(out[:, 6:11])  # bottom band against top band
    # the bands' centres lie 11 rows apart: the bar leans by up to 11 tan(20 degrees) = 4.0
    assert np.abs(lean).max() <= 4.1 and np.abs(lean).max() > 3.0
    assert (lean > 0.5).sum() > n // 4 and (lean < -0.5).sum() > n // 4  # both ways
    straight = augment(bars, np.random.default_rng(0), Augment(rotate=0.0, shift=0.0))
    np.testing.assert_allclose(centre(straight[:, 17:22]), centre(straight[:, 6:11]))
    # the rotation, zoom and shift of each image are drawn first, as without a shear: the same
    # vertical shifts (a shear moves pixels sideways only)
    a = augment(bars, np.random.default_rng(1), Augment(shift=3.0, shear=10.0))
    b = augment(bars, np.random.default_rng(1), Augment(shift=3.0))

    def height(images):  # the mean row of the ink
        ink = images.sum(axis=2)
        return (ink * cols).sum(axis=1) / ink.sum(axis=1)

    assert np.abs(height(b) - 13.5).max() > 1.0  # shifted up and down
    np.testing.assert_allclose(height(a), height(b), atol=0.05)


def test_scale_apart_stretches_height_and_width_each_its_own_way():
    n = 200
    squares = np.zeros((n, 28, 28), np.uint8)
    squares[:, 8:20, 8:20] = 255  # a 12 x 12 square about the centre

    def extent(images, axis):  # the ink's extent along rows (axis 2) or columns (axis 1)
        return (images > 127).any(axis=axis).sum(axis=1)

    same = augment(squares, np.random.default_rng(0), Augment(scale=0.2))
    apart = augment(squares, np.random.default_rng(0), Augment(scale=0.2, scale_apart=True))
    # one zoom for both axes: a square stays a square, of side 12 / zoom in [10, 15]
    np.testing.assert_array_equal(extent(same, 1), extent(same, 2))
    assert 9 <= extent(same, 1).min() and extent(same, 1).max() <= 16
    # apart: height and width each in the same range, and mostly unequal
    h, w = extent(apart, 2), extent(apart, 1)
    assert 9 <= min(h.min(), w.min()) and max(h.max(), w.max()) <= 16
    assert (np.abs(h - w) >= 2).mean() > 0.3
    np.testing.assert_array_equal(h, extent(same, 2))  # the height's zoom is drawn as before
    assert not Augment(scale_apart=True).active  # a zoom range of 0 changes nothing
    with pytest.raises(ValueError, match="scale_apart"):
        Augment(scale_apart=1).check()  # type: ignore[arg-type]
