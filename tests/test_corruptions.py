"""MNIST-C's corruptions: contract (shape, range, seeds, subsets, errors) and reference values.

The images are scikit-learn's 8x8 digits scaled up to 28x28 (each pixel a 3x3 block, a 2-pixel
margin, as MNIST centres its digits), so that MNIST-C's pixel-sized parameters mean what they
mean on MNIST.
"""

import math
from functools import cache

import numpy as np
import pytest
import scipy.stats
from scipy import ndimage
from skimage import transform

from resistclf import _corruptions
from resistclf._corruptions import _glass_blur, _motion_blur_image
from resistclf.datasets import CORRUPTIONS, corrupt, load_digits_images

RANDOM = [name for name in CORRUPTIONS
          if name not in {"scale", "brightness", "stripe", "canny_edges"}]


@cache
def _digits28(n=16):
    X, _ = load_digits_images()
    X = np.pad(np.kron(X[:n], np.ones((3, 3), np.float32)), [(0, 0), (0, 0), (2, 2), (2, 2)])
    X.setflags(write=False)  # a corruption that wrote into its input would raise
    return X


def test_corruptions_are_mnist_c_names_in_its_order():
    assert CORRUPTIONS == (
        "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
        "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
        "canny_edges")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_keeps_shape_dtype_range_and_changes_every_image(name):
    X = _digits28()
    before = X.copy()
    out = corrupt(X, name, seed=0)
    assert out.shape == X.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert np.all(np.any(out != X, axis=(1, 2, 3)))
    np.testing.assert_array_equal(X, before)
    # (n, H, W) and float64 in, the same out; the values do not depend on the layout.
    out64 = corrupt(X[:, 0].astype(np.float64), name, seed=0)
    assert out64.shape == X[:, 0].shape and out64.dtype == np.float64
    np.testing.assert_allclose(out64, out[:, 0], atol=1e-6)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_is_deterministic_given_the_seed(name):
    X = _digits28()
    np.testing.assert_array_equal(corrupt(X, name, seed=3), corrupt(X, name, seed=3))
    other = corrupt(X, name, seed=4)
    if name in RANDOM:
        assert np.any(other != corrupt(X, name, seed=3))
    else:
        np.testing.assert_array_equal(other, corrupt(X, name, seed=3))


@pytest.mark.parametrize("name", RANDOM)
def test_corrupt_gives_a_subset_or_batches_the_images_of_the_whole(name, monkeypatch):
    X = _digits28()
    whole = corrupt(X, name, seed=1)
    monkeypatch.setattr(_corruptions, "CHUNK", 3)  # the chunks corrupt works in
    np.testing.assert_array_equal(corrupt(X, name, seed=1), whole)
    subset = np.array([11, 2, 7])
    np.testing.assert_array_equal(corrupt(X[subset], name, seed=1, index=subset), whole[subset])
    batches = [corrupt(X[i:i + 5], name, seed=1, index=np.arange(i, min(i + 5, len(X))))
               for i in range(0, len(X), 5)]
    np.testing.assert_array_equal(np.concatenate(batches), whole)
    # Without its index, the subset is taken for images 0, 1, 2 and drawn differently.
    assert np.any(corrupt(X[subset], name, seed=1) != whole[subset])


def test_corrupt_draws_each_corruption_from_its_own_stream():
    # Same seed and index, another corruption: not the same draws (the signs of shear and
    # rotate would otherwise agree image by image).
    X = _digits28()
    sheared, rotated = corrupt(X, "shear", seed=0), corrupt(X, "rotate", seed=0)
    shear_sign = [_sign_of(X[i, 0], sheared[i, 0], _shear_reference) for i in range(len(X))]
    rotate_sign = [_sign_of(X[i, 0], rotated[i, 0], _rotate_reference) for i in range(len(X))]
    assert shear_sign != rotate_sign


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_accepts_8x8_images(name):
    X, _ = load_digits_images()
    out = corrupt(X[:6], name, seed=0)
    assert out.shape == (6, 1, 8, 8) and 0 <= out.min() and out.max() <= 1


def test_corrupt_returns_an_empty_set_empty():
    out = corrupt(np.zeros((0, 1, 28, 28), np.float32), "fog")
    assert out.shape == (0, 1, 28, 28) and out.dtype == np.float32


GOOD = np.full((2, 1, 28, 28), 0.5, np.float32)


@pytest.mark.parametrize("X, name, kwargs, error, match", [
    (GOOD, "blur", {}, ValueError, r"Unknown corruption 'blur'.*shot_noise, impulse_noise"),
    (GOOD, None, {}, ValueError, "Unknown corruption None"),
    (GOOD.astype(np.uint8), "fog", {}, TypeError, "floats in .0, 1.; got dtype uint8"),
    (np.full((2, 3, 28, 28), 0.5), "fog", {}, ValueError, r"shape \(n, 1, H, W\) or \(n, H, W\)"),
    (np.full((28, 28), 0.5), "fog", {}, ValueError, r"got shape \(28, 28\)"),
    (np.full((2, 1, 4, 28), 0.5), "fog", {}, ValueError, "at least 8x8; got 4x28"),
    (np.where(np.eye(28) > 0, np.nan, 0.5)[None, None], "fog", {}, ValueError, "NaN or infinite"),
    (np.full((1, 28, 28), np.inf), "fog", {}, ValueError, "NaN or infinite"),
    (np.full((1, 28, 28), 1.5), "fog", {}, ValueError, r"\[0, 1\].*from 1.5 to 1.5"),
    (np.full((1, 28, 28), -0.1), "fog", {}, ValueError, r"\[0, 1\].*from -0.1"),
    (GOOD, "fog", {"seed": -1}, ValueError, "seed must be non-negative"),
    (GOOD, "fog", {"seed": 1.5}, TypeError, "seed must be an integer"),
    (GOOD, "fog", {"seed": None}, TypeError, "seed must be an integer"),
    (GOOD, "fog", {"index": [0]}, ValueError, r"one entry per image, shape \(2,\); got \S+ \(1,\)"),
    (GOOD, "fog", {"index": [0.0, 1.0]}, TypeError, "index must hold integers"),
    (GOOD, "fog", {"index": [0, -1]}, ValueError, "index must be non-negative"),
])
def test_corrupt_rejects_bad_input(X, name, kwargs, error, match):
    with pytest.raises(error, match=match):
        corrupt(X, name, **kwargs)


# Reference values: each corruption against what MNIST-C's parameters give, computed another way.

def test_shot_noise_is_poisson_with_a_count_of_3():
    X = _digits28()
    out = corrupt(X, "shot_noise", seed=0).astype(np.float64)
    np.testing.assert_allclose(out * 3, np.round(out * 3), atol=1e-5)
    # A white pixel becomes min(P, 3) / 3 with P ~ Poisson(3), of mean 0.776.
    expected = sum(min(k, 3) * scipy.stats.poisson.pmf(k, 3) for k in range(60)) / 3
    assert abs(out[X == 1].mean() - expected) < 0.03


def test_impulse_noise_sets_17_percent_of_the_pixels_to_0_or_1():
    X = _digits28()
    out = corrupt(X, "impulse_noise", seed=0)
    grey = (X > 0) & (X < 1)  # such a pixel changes exactly when it is hit
    hit = out[grey] != X[grey]
    assert set(np.unique(out[grey][hit])) == {0.0, 1.0}
    assert abs(hit.mean() - 0.17) < 0.03


def _ordered_shift(image, dx, dy):
    """``image`` moved by (-dx, -dy) pixels (columns, rows), zeros coming in."""
    return ndimage.shift(image, (-dy, -dx), order=0, mode="constant", cval=0)


def test_translate_moves_each_image_3_pixels_along_each_axis():
    X = _digits28()
    out = corrupt(X, "translate", seed=0)
    moves = []
    for image, moved in zip(X[:, 0], out[:, 0]):
        found = [(dx, dy) for dx in (-3, 3) for dy in (-3, 3)
                 if np.array_equal(moved, _ordered_shift(image, dx, dy))]
        assert len(found) == 1
        moves += found
    assert len(set(moves)) > 1


def _rotate_reference(image, sign):
    # skimage.transform.rotate turns about the centre by an angle in degrees.
    return transform.rotate(image.astype(np.float64), np.degrees(0.4 * sign), order=1)


def _shear_reference(image, sign):
    """MNIST-C's shear through its 2019 matrix [[1, -sin s], [0, cos s]] about the centre,
    written as coordinates: output (x, y) reads input (x - sin(s) (y - c), c + cos(s) (y - c))."""
    s, c = 0.4 * sign, (image.shape[0] - 1) / 2

    def inverse_map(xy):
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([x - math.sin(s) * (y - c), c + math.cos(s) * (y - c)])

    return transform.warp(image.astype(np.float64), inverse_map, order=1)


def _sign_of(image, corrupted, reference):
    """Which of the two directions ``corrupted`` took, or None if neither fits."""
    signs = [sign for sign in (-1, 1)
             if np.allclose(corrupted, reference(image, sign), atol=1e-6)]
    return signs[0] if len(signs) == 1 else None


@pytest.mark.parametrize("name, reference", [("rotate", _rotate_reference),
                                             ("shear", _shear_reference)])
def test_rotate_and_shear_turn_by_0_4_radians_either_way(name, reference):
    X = _digits28()
    out = corrupt(X, name, seed=0)
    signs = [_sign_of(image, moved, reference) for image, moved in zip(X[:, 0], out[:, 0])]
    assert None not in signs and set(signs) == {-1, 1}


def test_scale_shrinks_to_70_percent_about_the_centre():
    # A centred square of side 20 becomes one of side 14 (rows and columns 7 to 20).
    X = np.zeros((1, 28, 28))
    X[0, 4:24, 4:24] = 1
    out = corrupt(X, "scale")[0]
    np.testing.assert_allclose(out[8:20, 8:20], 1)
    assert out[:6].max() == 0 and out[22:].max() == 0
    np.testing.assert_allclose(out.sum(), 14 ** 2, rtol=0.02)


def test_brightness_adds_half_to_the_value():
    X = _digits28()
    np.testing.assert_allclose(corrupt(X, "brightness"), np.minimum(X + 0.5, 1), atol=1e-6)


def test_stripe_inverts_the_left_and_right_quarters():
    X = _digits28()
    out = corrupt(X, "stripe")
    np.testing.assert_array_equal(out[..., :7], 1 - X[..., :7])
    np.testing.assert_array_equal(out[..., 21:], 1 - X[..., 21:])
    np.testing.assert_array_equal(out[..., 7:21], X[..., 7:21])


class _NoSwaps:
    """A generator whose coins never ask for a swap."""

    def random(self, size):
        return np.ones(size)

    def integers(self, low, high, size):
        return np.zeros(size, int)


def test_glass_blur_blurs_vertically_only_as_mnist_c_did():
    # MNIST-C's gaussian(..., multichannel=True) on a 2-D image smoothed axis 0 only (in the
    # scikit-image of 2019). Without swaps, glass blur is that blur twice, sigma 0.7.
    image = _digits28()[:1, 0].astype(np.float64)
    expected = image
    for _ in range(2):
        expected = ndimage.gaussian_filter1d(expected, 0.7, axis=1, mode="nearest")
    np.testing.assert_allclose(_glass_blur(image.copy(), [_NoSwaps()]), expected, atol=1e-12)


def _imagemagick_motion_blur(image, angle):
    """ImageMagick's MotionBlurImage loop, pixel by pixel: 21 taps of exp(-i^2 / 18), the
    pixel at (x, y) + ceil(i (cos, sin)(angle) - 0.5), edge pixels beyond the border."""
    i = np.arange(21)
    weights = np.exp(-(i ** 2) / 18.0)
    weights /= weights.sum()
    dx = np.ceil(i * math.cos(math.radians(angle)) - 0.5).astype(int)
    dy = np.ceil(i * math.sin(math.radians(angle)) - 0.5).astype(int)
    height, width = image.shape
    out = np.zeros_like(image)
    for y in range(height):
        for x in range(width):
            rows = np.clip(y + dy, 0, height - 1)
            cols = np.clip(x + dx, 0, width - 1)
            out[y, x] = weights @ image[rows, cols]
    return out


@pytest.mark.parametrize("angle", [-45.0, -30.0, 0.0, 12.5, 44.9, 45.0])
def test_motion_blur_is_imagemagicks(angle):
    image = _digits28()[3, 0].astype(np.float64)
    np.testing.assert_allclose(_motion_blur_image(image, angle),
                               _imagemagick_motion_blur(image, angle), atol=1e-12)


def test_motion_blur_smears_a_point_along_a_line_behind_it():
    X = np.zeros((1, 28, 28))
    X[0, 14, 14] = 1
    out = corrupt(X, "motion_blur", seed=0)[0]
    weight0 = 1 / np.exp(-np.arange(21) ** 2 / 18.0).sum()
    np.testing.assert_allclose(out[14, 14], weight0)
    np.testing.assert_allclose(out.sum(), 1, atol=1e-4)
    assert out[:, 15:].max() == 0  # the taps read ahead (cos > 0): the trail lies behind


def test_fog_adds_3_times_a_plasma_map_and_rescales_by_the_maximum():
    # MNIST-C: (x + 3 p) * m / (m + 3), m the image's maximum and p a plasma map in [0, 1]
    # that depends on the seed and the image's index only. Recover p from two images.
    X = _digits28()
    first, second = X[[0]], X[[5]] * 0.7
    plasma = []
    for image in (first, second):
        top = image.max()
        out = corrupt(image, "fog", seed=2, index=[9]).astype(np.float64)
        plasma.append((out * (top + 3) / top - image) / 3)
    np.testing.assert_allclose(plasma[0], plasma[1], atol=1e-5)
    assert plasma[0].min() > -1e-5 and plasma[0].max() < 1 + 1e-5
    assert plasma[0].max() - plasma[0].min() > 0.1


def test_spatter_moves_pixels_towards_mud():
    X = _digits28()
    out = corrupt(X, "spatter", seed=0)
    mud = np.float32(63 / 255)
    low, high = np.minimum(X, mud), np.maximum(X, mud)
    assert np.all((out >= low - 1e-6) & (out <= high + 1e-6))
    assert np.mean(out != X) > 0.01


def test_dotted_line_adds_dashes_of_2_pixels():
    X = _digits28()
    added = corrupt(X, "dotted_line", seed=0) - X
    assert added.min() >= 0
    columns = np.arange(28)
    blank = ((columns // 2) % 2 == 0) | (columns == 27)
    assert added[..., blank].max() == 0
    assert np.all(added[..., ~blank].max(axis=(1, 2, 3)) > 0.5)


def test_zigzag_only_adds_ink_between_columns_1_and_25():
    X = _digits28()
    added = corrupt(X, "zigzag", seed=0) - X
    assert added.min() >= 0
    assert added[..., :1].max() == 0 and added[..., 26:].max() == 0


def test_canny_edges_are_black_and_white():
    out = corrupt(_digits28(), "canny_edges")
    assert set(np.unique(out)) == {0.0, 1.0}
