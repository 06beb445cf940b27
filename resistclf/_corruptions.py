"""The 15 corruptions of MNIST-C (Mu and Gilmer 2019), generated locally.

A port of google-research/mnist-c ``corruptions.py`` at the severity each function there
takes by default, which is the one the published MNIST-C was built with. MNIST-C works on
28x28 uint8 images in 0-255 and divides them by 255 first; here images are floats in
[0, 1], so its parameters keep their meaning. Every difference from MNIST-C is listed in
:func:`corrupt`'s docstring and in the user guide (``docs/user_guide/shift.rst``).
"""

import math
import numbers

import numpy as np
from scipy import ndimage
from skimage import color, feature, filters, transform, util

#: Images corrupted at a time.
CHUNK = 256
#: The smallest height and width accepted: MNIST-C's pixel-sized parameters (a 3-pixel
#: translation, a zigzag 2 pixels from each side) need room.
MIN_SIZE = 8


def _shot_noise(x, rngs):
    # Severity 5: a photon count of 3 at full intensity.
    count = 3
    return np.stack([rng.poisson(image * count) for image, rng in zip(x, rngs)]) / count


def _impulse_noise(x, rngs):
    # Severity 4: 17% of the pixels set to 0 or 1, with equal odds.
    return np.stack([util.random_noise(image, mode="s&p", amount=0.17, rng=rng)
                     for image, rng in zip(x, rngs)])


def _vertical_blur(x, sigma):
    # MNIST-C calls scikit-image's `gaussian(image, sigma, multichannel=True)` on 2-D
    # images. The scikit-image of 2019 then took the last axis for colour channels and
    # smoothed along the rows' axis only: its glass blur blurs vertically.
    return filters.gaussian(x, sigma=(0, sigma, 0), mode="nearest")


def _glass_blur(x, rngs):
    # Severity 1: sigma 0.7, shuffle distance 1, two passes.
    sigma, delta, passes = 0.7, 1, 2
    x = _vertical_blur(x, sigma)
    height, width = x.shape[1:]
    rows = np.arange(height - delta, delta, -1)
    cols = np.arange(width - delta, delta, -1)
    steps = passes * rows.size * cols.size
    row = np.tile(np.repeat(rows, cols.size), passes)
    col = np.tile(cols, passes * rows.size)
    # Per image and step: a fair coin for whether to swap, then (dx, dy), each in
    # [-delta, delta) as numpy's randint draws them (the upper bound is excluded).
    swap = np.stack([rng.random(steps) < 0.5 for rng in rngs])
    shift = np.stack([rng.integers(-delta, delta, size=(steps, 2)) for rng in rngs])
    # The swaps are sequential within an image (a pixel can move twice) and independent
    # across images: one step at a time, on every image at once.
    for step in range(steps):
        i = np.flatnonzero(swap[:, step])
        r, c = row[step], col[step]
        r2, c2 = r + shift[i, step, 1], c + shift[i, step, 0]
        x[i, r, c], x[i, r2, c2] = x[i, r2, c2], x[i, r, c]
    return _vertical_blur(x, sigma)


def _motion_blur_image(image, angle):
    """ImageMagick's ``MotionBlurImage`` at MNIST-C's radius 10 and sigma 3.

    Its kernel is one-sided: ``width = 2 * ceil(radius) + 1`` taps with Gaussian weights
    ``exp(-i**2 / (2 sigma**2))``, normalised, each reading the pixel at
    ``(x, y) + round(i * (cos, sin)(angle))`` (rounded half down, ``ceil(v - 0.5)``, as
    ImageMagick does). Pixels beyond the border are the nearest edge pixel (ImageMagick's
    default "edge" virtual pixels), which is scipy's ``mode="nearest"``.
    """
    radius, sigma = 10, 3
    width = 2 * math.ceil(radius) + 1
    i = np.arange(width)
    weights = np.exp(-(i ** 2) / (2 * sigma ** 2))
    radians = np.deg2rad(angle)
    dx = np.ceil(i * np.cos(radians) - 0.5).astype(int)  # 0 to width - 1: |angle| <= 45
    dy = np.ceil(i * np.sin(radians) - 0.5).astype(int)
    reach = np.abs(dy).max()
    kernel = np.zeros((2 * reach + 1, width))
    # Near 45 degrees two taps can round to the same pixel: their weights add up.
    np.add.at(kernel, (reach + dy, dx), weights / weights.sum())
    # origin puts the kernel's centre on its first column, where the offsets start.
    return ndimage.correlate(image, kernel, mode="nearest", origin=(0, -(width // 2)))


def _motion_blur(x, rngs):
    # Severity 1: radius 10, sigma 3, an angle drawn uniformly in [-45, 45) degrees.
    return np.stack([_motion_blur_image(image, rng.uniform(-45, 45))
                     for image, rng in zip(x, rngs)])


def _linear_map(scale=1.0, rotation=0.0, shear=0.0):
    """The 2x2 part of ``AffineTransform(scale, rotation, shear)`` as scikit-image built
    it in 2019. Its shear term changed in 2023 (scikit-image pull request #6717), so the
    matrix is written out rather than taken from today's ``AffineTransform``."""
    return np.array([[scale * math.cos(rotation), -scale * math.sin(rotation + shear)],
                     [scale * math.sin(rotation), scale * math.cos(rotation + shear)]])


def _about_centre(linear, shape):
    """The 3x3 map that applies ``linear`` about the image's centre, which it keeps fixed
    (MNIST-C's ``13.5 * (1 - a1 - a2)`` translation, for any height and width)."""
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])  # (x, y) = (column, row)
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre
    return matrix


def _warp(x, matrices):
    """``skimage.transform.warp(image, inverse_map=AffineTransform(matrix))`` per image, as
    MNIST-C calls it (bilinear, zeros outside); images that share a map go through one
    call, as the channels of one image."""
    out = np.empty_like(x)
    unique, which = np.unique(matrices.reshape(len(x), 9), axis=0, return_inverse=True)
    which = which.ravel()
    for k, matrix in enumerate(unique):
        i = np.flatnonzero(which == k)
        warped = transform.warp(np.moveaxis(x[i], 0, -1),
                                inverse_map=transform.AffineTransform(matrix=matrix.reshape(3, 3)))
        out[i] = np.moveaxis(warped, -1, 0)
    return out


def _signs(rngs, size=None):
    return np.array([rng.choice([-1, 1], size=size) for rng in rngs])


def _shear(x, rngs):
    # Severity 2: a shear angle of 0.4 rad, its direction drawn at random.
    return _warp(x, np.stack([_about_centre(_linear_map(shear=0.4 * sign), x.shape[1:])
                              for sign in _signs(rngs)]))


def _scale(x, rngs):
    # Severity 3: the inverse map scales coordinates by 1 / 0.7, so the content shrinks
    # to 70% about the centre.
    matrix = _about_centre(_linear_map(scale=1 / 0.7), x.shape[1:])
    return _warp(x, np.broadcast_to(matrix, (len(x), 3, 3)))


def _rotate(x, rngs):
    # Severity 2: 0.4 rad (about 23 degrees), its direction drawn at random.
    return _warp(x, np.stack([_about_centre(_linear_map(rotation=0.4 * sign), x.shape[1:])
                              for sign in _signs(rngs)]))


def _brightness(x, rngs):
    # Severity 5: +0.5 on the value channel in HSV, through RGB and back to grey.
    hsv = color.rgb2hsv(color.gray2rgb(x))
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.5, 0, 1)
    return color.rgb2gray(color.hsv2rgb(hsv))


def _translate(x, rngs):
    # Severity 3: 3 pixels along each axis, each direction drawn at random. The inverse
    # map adds (dx, dy), so the content moves by (-dx, -dy).
    matrices = np.tile(np.eye(3), (len(x), 1, 1))
    matrices[:, :2, 2] = 3 * _signs(rngs, size=2)
    return _warp(x, matrices)


def _stripe(x, rngs):
    # The left and right quarters inverted: columns 0-6 and 21-27 of a 28-wide image.
    band = x.shape[2] // 4
    x[:, :, :band] = 1 - x[:, :, :band]
    x[:, :, x.shape[2] - band:] = 1 - x[:, :, x.shape[2] - band:]
    return x


def _plasma_fractal(rng, mapsize, wibbledecay):
    """MNIST-C's ``plasma_fractal`` (diamond-square, from ImageNet-C): a map in [0, 1].
    No maintained library generates it. One image at a time: the 0.5 MB map stays in
    the cache, which runs faster than a batch of maps."""
    maps = np.empty((mapsize, mapsize))
    maps[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbled_mean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # Squares: each square's centre from its four corners.
        corners = maps[0::stepsize, 0::stepsize]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        maps[half::stepsize, half::stepsize] = wibbled_mean(square)
        # Diamonds: the edge midpoints from their four neighbours.
        centres = maps[half::stepsize, half::stepsize]
        maps[0::stepsize, half::stepsize] = wibbled_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1))
        maps[half::stepsize, 0::stepsize] = wibbled_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0))
        stepsize //= 2
        wibble /= wibbledecay
    maps -= maps.min()
    return maps / maps.max()


def _fog(x, rngs):
    # Severity 5: fog 3.0 times a plasma fractal of decay 1.4, the top-left crop of a
    # 256x256 map (the next power of two for images larger than 256).
    strength, decay = 3.0, 1.4
    height, width = x.shape[1:]
    mapsize = max(256, 1 << (max(height, width) - 1).bit_length())
    plasma = np.stack([_plasma_fractal(rng, mapsize, decay)[:height, :width] for rng in rngs])
    top = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * plasma) * top / (top + strength)


def _spatter(x, rngs):
    # Severity 4: a liquid layer N(0.65, 0.3) smoothed with sigma 1 and thresholded at
    # 0.65; its mask smoothed with sigma 1.5 and kept where >= 0.8 becomes mud of colour
    # 63/255 (MNIST-C's sixth parameter, the "mud" switch, is unused in its code).
    liquid = np.stack([rng.normal(0.65, 0.3, x.shape[1:]) for rng in rngs])
    liquid = filters.gaussian(liquid, sigma=1, channel_axis=0)
    mask = filters.gaussian((liquid > 0.65).astype(float), sigma=1.5, channel_axis=0)
    mask[mask < 0.8] = 0
    return x * (1 - mask) + 63 / 255 * mask


def _line(shape, c0, r0, c1, r1):
    """MNIST-C's ``line_from_points``: a line from (column c0, row r0) to (c1, r1) whose
    intensity decays as ``log(1 - d / 2.3) + 1`` with the vertical distance d, zero
    outside columns ``floor(c0)`` to ``ceil(c1) - 1``. No library draws this profile."""
    if c1 == c0:
        return np.zeros(shape)
    rows, cols = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
    slope = (r1 - r0) / (c1 - c0)
    distance = np.clip(np.abs(rows - (slope * (cols - c0) + r0)), 0, 2.3 - 1e-10)
    line = np.clip(np.log(1 - distance / 2.3) + 1, 0, 1)
    line[:, :math.floor(c0)] = 0
    line[:, math.ceil(c1):] = 0
    return line


def _dotted_line(x, rngs):
    # A line across the image between two random rows, in dashes of 2 pixels (MNIST-C
    # blanks columns 0-1, 4-5, 8-9 and so on).
    height, width = x.shape[1:]
    lines = np.stack([_line((height, width), 0, r0, width - 1, r1)
                      for r0, r1 in (rng.integers(0, height - 1, size=2) for rng in rngs)])
    lines[:, :, (np.arange(width) // 2) % 2 == 0] = 0
    return x + lines


def _zigzag_points(rng, height, width):
    """MNIST-C's zigzag from column 2 to column width - 3 (2 to 25 at 28x28) as a list of
    (column, row) points, its quirks kept: teeth of length and height 2 along a line of
    random slope, and a last point at ``r_i / (2 * (d - max_c))``."""
    a = b = 2.0
    c0, c1 = 2, width - 3
    r0 = rng.integers(0, height - 1)
    r1 = r0 + rng.integers(-5, 5)
    theta = np.arctan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / np.cos(theta)
    points = [(0.0, 0.0)]
    for i in range(int((d - a) // (2 * a)) + 1):
        r_i = (-1) ** i * b
        points.append(((2 * i + 1) * a, r_i))
    max_c = (2 * a) * (d // (2 * a))
    if d != max_c:
        points.append((d, r_i / (2 * (d - max_c))))
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cols, rows = rotation @ np.array(points).T
    return cols + c0, rows + r0


def _zigzag(x, rngs):
    height, width = x.shape[1:]
    for image, rng in zip(x, rngs):
        cols, rows = _zigzag_points(rng, height, width)
        for k in range(1, len(cols)):
            image += _line((height, width), cols[k - 1], rows[k - 1], cols[k], rows[k])
    return x


def _canny_edges(x, rngs):
    # scikit-image's Canny detector at its defaults (sigma 1, hysteresis thresholds 0.1
    # and 0.2 of the float range), edges white on black.
    return np.stack([feature.canny(image) for image in x]).astype(float)


#: Name to function, in MNIST-C's order (``CORRUPTIONS`` in its ``corruptions.py``, less
#: ``identity``).
FUNCTIONS = {
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "shear": _shear,
    "scale": _scale,
    "rotate": _rotate,
    "brightness": _brightness,
    "translate": _translate,
    "stripe": _stripe,
    "fog": _fog,
    "spatter": _spatter,
    "dotted_line": _dotted_line,
    "zigzag": _zigzag,
    "canny_edges": _canny_edges,
}
#: The corruptions that draw nothing at random: the seed does not change them.
DETERMINISTIC = frozenset({"scale", "brightness", "stripe", "canny_edges"})


def _generators(name, seed, index):
    """One generator per image, from (seed, corruption, image index) alone."""
    key = list(FUNCTIONS).index(name)
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, int(i))))
            for i in index]


def _check_index(index, n):
    if index is None:
        return np.arange(n)
    index = np.asarray(index)
    if index.shape != (n,):
        raise ValueError(f"index must have one entry per image, shape ({n},); got shape "
                         f"{index.shape}.")
    if n and not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"index must hold integers; got dtype {index.dtype}.")
    if n and index.min() < 0:
        raise ValueError(f"index must be non-negative; got {index.min()}.")
    return index


def corrupt(X, name, *, seed=0, index=None):
    """One of MNIST-C's 15 corruptions, applied to every image of ``X``.

    A port of google-research/mnist-c ``corruptions.py`` (Mu and Gilmer 2019), each at
    the severity the published MNIST-C was built with, built on scikit-image and SciPy.
    Nothing is downloaded.

    Parameters
    ----------
    X : array-like of shape (n, 1, H, W) or (n, H, W)
        Grey-scale images, floating point, in [0, 1] (the layout of :func:`load_mnist`).
        ``H`` and ``W`` are at least 8. MNIST-C's parameters are in pixels of 28x28
        images; other sizes get the same pixel values (a translation is 3 pixels at any
        size), while positions tied to the frame (the centre of the affine maps, the
        stripes, the ends of the lines) follow the image's size.
    name : str
        One of :data:`CORRUPTIONS`.
    seed : int, default=0
        Non-negative. Image ``i`` draws from its own random stream, derived from
        ``seed``, ``name`` and ``index[i]`` only: a corrupted image does not depend on
        the other images passed with it, so batches or a subset (passed with its
        ``index``) give the same images as the whole set.
    index : array-like of int of shape (n,), default=None
        Each image's position in the data set it comes from; ``None`` means
        ``0, ..., n - 1``.

    Returns
    -------
    X_corrupted : ndarray of the shape and dtype of ``X``
        A new array, in [0, 1]; ``X`` is not modified. ``scale``, ``brightness``,
        ``stripe`` and ``canny_edges`` draw nothing at random and ignore ``seed``.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists the valid ones), a shape other than
        the two above, images smaller than 8x8, non-finite values or values outside
        [0, 1], a negative ``seed``, or an ``index`` of the wrong length or with
        negative entries.
    TypeError
        For ``X`` not of a floating dtype, a ``seed`` that is not an integer, or an
        ``index`` that does not hold integers.

    Notes
    -----
    The parameters are the default severities of ``corruptions.py``: shot noise 5,
    impulse noise 4, glass blur 1, motion blur 1, shear 2, scale 3, rotate 2,
    brightness 5, translate 3, fog 5, spatter 4 (stripe, dotted line, zigzag and Canny
    edges have none). Where this port differs from MNIST-C:

    - Random draws: MNIST-C uses numpy's global random state and did not publish its
      seed, so the published images cannot be regenerated draw for draw. Here every
      image has its own :class:`numpy.random.Generator`; the distributions are MNIST-C's.
    - Precision: MNIST-C's inputs, its published images, motion blur's PNG round trip
      and glass blur's first blur (truncated to uint8) are 8-bit; here every step is in
      float64 and the result is cast to ``X``'s dtype, without rounding to 8 bits.
    - ``motion_blur``: MNIST-C calls ImageMagick's ``MotionBlurImage`` through Wand,
      which is not a dependency here. Its kernel is rebuilt (21 taps of a one-sided
      Gaussian of sigma 3 along the angle, offsets rounded as ImageMagick rounds them,
      edge pixels repeated beyond the border) and applied with
      :func:`scipy.ndimage.correlate`.
    - ``shear``, ``rotate``, ``scale``: scikit-image changed ``AffineTransform``'s shear
      formula in 2023; the 2019 matrix (``[[1, -sin s], [0, cos s]]`` for shear ``s``)
      is written out and applied with today's :func:`skimage.transform.warp`.
    - ``glass_blur``: MNIST-C's ``gaussian(..., multichannel=True)`` on 2-D images
      smoothed along the vertical axis only in the scikit-image of 2019; this port
      does the same on purpose. Its pixel shuffle has no library equivalent and is
      ported, run on all images at once.
    - ``fog`` (plasma fractal), ``dotted_line`` and ``zigzag`` (MNIST-C's own line
      profile) are ported: no library generates them.
    - Images other than 28x28 follow the rule under ``X`` above; at 28x28 the
      geometry is MNIST-C's.

    Examples
    --------
    >>> import numpy as np
    >>> from resistclf.datasets import corrupt, load_digits_images
    >>> X, y = load_digits_images()
    >>> X28 = np.kron(X[:4], np.ones((3, 3), np.float32))  # 8x8 to 24x24
    >>> X28 = np.pad(X28, [(0, 0), (0, 0), (2, 2), (2, 2)])  # a margin, as in MNIST
    >>> corrupt(X28, "zigzag", seed=0).shape
    (4, 1, 28, 28)
    """
    if not isinstance(name, str) or name not in FUNCTIONS:
        raise ValueError(f"Unknown corruption {name!r}; the corruptions are "
                         f"{', '.join(FUNCTIONS)}.")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer; got {seed!r}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative; got {seed}.")
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        raise TypeError(f"X must hold floats in [0, 1]; got dtype {X.dtype}.")
    if not (X.ndim == 3 or (X.ndim == 4 and X.shape[1] == 1)):
        raise ValueError(f"X must have shape (n, 1, H, W) or (n, H, W) (grey-scale images); "
                         f"got shape {X.shape}.")
    if min(X.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"Images must be at least {MIN_SIZE}x{MIN_SIZE}; got "
                         f"{X.shape[-2]}x{X.shape[-1]}.")
    if not np.isfinite(X).all():
        raise ValueError("X holds NaN or infinite values.")
    if X.size and (X.min() < 0 or X.max() > 1):
        raise ValueError(f"X must lie in [0, 1]; its values range from {X.min()} to "
                         f"{X.max()}.")
    index = _check_index(index, len(X))
    images = X.reshape(-1, *X.shape[-2:])
    out = np.empty(images.shape, X.dtype)
    # In chunks, to bound the memory of the intermediate arrays (brightness holds its
    # images in RGB and HSV); every image's draws are its own, so chunks change no value.
    for start in range(0, len(images), CHUNK):
        part = slice(start, start + CHUNK)
        rngs = None if name in DETERMINISTIC else _generators(name, int(seed), index[part])
        # astype copies: the functions work in float64 and X is never written to.
        out[part] = np.clip(FUNCTIONS[name](images[part].astype(np.float64), rngs), 0, 1)
    return out.reshape(X.shape)
