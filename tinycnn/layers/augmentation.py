"""Random augmentation layers, Keras's ``RandomFlip``, ``RandomRotation``, ``RandomTranslation`` and
``RandomContrast``.

Put them at the front of a model; they change the training images a little every step and do
nothing at inference::

    model = Sequential([
        Input(shape=(64, 64, 3)),
        RandomFlip('horizontal'),
        RandomRotation(0.05),             # up to +-18 degrees
        RandomTranslation(0.1, 0.1),      # up to +-10 % of the height and width
        RandomContrast(0.2),
        Conv2D(32, 3, activation='relu'),
        ...
    ])

Each layer draws its random parameters *per image* from its own ``self.generator`` (as ``Dropout``
does), seeded by ``seed=`` or, without one, by ``tinycnn.set_seed``'s root: one seed makes a run
repeatable. The parameters of the last training call are kept as attributes (``flips``, ``angles``,
``shifts``, ``factors``, and ``transforms`` for the geometric layers) so you can look at what was done.

Once its parameters are drawn, each augmentation is a linear map of the image (plus a constant for
``fill_value``). ``backward`` applies the transpose of that map, so the gradient reaching the layer
in front is exact (``tinycnn.gradcheck`` checks it like any other layer). The per-pixel work is in
``tinycnn/kernels/augment.py``; the textbook loops are at the end of ``kernels/reference.py``.

Unlike Keras, inputs are the float images a tinycnn model takes (any range); there is no
``value_range`` clipping and no ``data_format`` (always channels last, NHWC).
"""
import math

import numpy as np

from .. import rng
from ..kernels import augment as K
from .base import Layer


def _is_number(value):
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value))


def _choice(value, allowed, argument, owner):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected one of {list(allowed)}, "
                         f"received {value!r}")
    return value


def _bounds(value, argument, owner, limit=None):
    """``f`` -> ``(-|f|, |f|)``; ``(lower, upper)`` -> itself; checked (``limit``: largest allowed |bound|)."""
    if _is_number(value):
        lower, upper = -abs(float(value)), abs(float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value):
        lower, upper = float(value[0]), float(value[1])
    else:
        lower = upper = None
    if lower is None or lower > upper or (limit is not None and max(abs(lower), abs(upper)) > limit):
        inside = f" in [-{limit:g}, {limit:g}]" if limit is not None else ""
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float{inside} or a tuple "
                         f"(lower, upper) of such floats with lower <= upper, received {value!r}")
    return lower, upper


def _as_config(value):
    """A checked factor as plain JSON: a float, or a list of two floats."""
    return float(value) if _is_number(value) else [float(v) for v in value]


class _RandomImageLayer(Layer):
    """Shared by the augmentation layers: the seed, the generator, the (H, W, C) input check.

    A subclass draws its parameters in ``_draw(x)`` and applies the sampled map with
    ``_apply(x, y)`` and its transpose with ``_apply_transpose(dy, dx)``.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{self.describe()}: invalid value for argument `seed`: expected None or a "
                             f"non-negative int, received {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.generator = rng.generator(self.seed)
        self._active = False

    def compute_output_shape(self, input_shape):
        self._expect_rank(input_shape, 3, "(batch, height, width, channels)")
        return tuple(input_shape)

    def forward(self, x, training=False):
        """Augment a batch in training; return ``x`` itself at inference.

        x : ndarray (N, H, W, C) -> ndarray (N, H, W, C)
        """
        self._active = bool(training)
        if not self._active:
            return x
        self._draw(x)
        y = self._buffer("y", x.shape)
        self._apply(x, y)
        return y

    def backward(self, grad_out):
        """``dx = A.T dy`` for the map ``A`` sampled by the last forward pass (identity at inference).

        grad_out : ndarray (N, H, W, C) -> ndarray (N, H, W, C), or None for a model's first layer
        """
        if not self._active:
            return grad_out
        if not self.input_grad_needed:
            return None
        dx = self._buffer("dx", grad_out.shape)
        self._apply_transpose(np.ascontiguousarray(grad_out), dx)
        return dx

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


class RandomFlip(_RandomImageLayer):
    """Flips each image left-right and/or up-down at random, Keras's ``RandomFlip``.

    Parameters
    ----------
    mode : {'horizontal_and_vertical', 'horizontal', 'vertical'}, default 'horizontal_and_vertical'
        'horizontal' mirrors left-right (the width axis), 'vertical' upside down (the height axis);
        with both, each happens independently.
    seed : int, optional

    Attributes
    ----------
    flips : ndarray (N, 2) uint8
        After a training call: per image, whether it was flipped vertically (column 0) and
        horizontally (column 1).

    Notes
    -----
    Each flip happens with probability 1/2. A flip is a permutation of the pixels that undoes
    itself, so the backward pass flips the gradient the same way: ``dx = flip(dy)``.
    """

    MODES = ("horizontal_and_vertical", "horizontal", "vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.mode = _choice(mode, self.MODES, "mode", self.describe())

    def _draw(self, x):
        n = x.shape[0]
        flips = np.zeros((n, 2), dtype=np.uint8)
        if self.mode in ("vertical", "horizontal_and_vertical"):
            flips[:, 0] = self.generator.random(n) < 0.5
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            flips[:, 1] = self.generator.random(n) < 0.5
        self.flips = flips

    def _apply(self, x, y):
        K.flip(x, self.flips, y)

    def _apply_transpose(self, dy, dx):
        K.flip(dy, self.flips, dx)

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


class _RandomAffine(_RandomImageLayer):
    """Rotation and translation: resample each image through a per-image affine map."""

    FILL_MODES = ("reflect", "wrap", "constant", "nearest")
    INTERPOLATIONS = ("bilinear", "nearest")

    def _init_resampling(self, fill_mode, interpolation, fill_value):
        owner = self.describe()
        self.fill_mode = _choice(fill_mode, self.FILL_MODES, "fill_mode", owner)
        self.interpolation = _choice(interpolation, self.INTERPOLATIONS, "interpolation", owner)
        if not _is_number(fill_value):
            raise ValueError(f"{owner}: invalid value for argument `fill_value`: expected a finite float, "
                             f"received {fill_value!r}")
        self.fill_value = float(fill_value)

    def _apply(self, x, y):
        K.affine_sample(x, self.transforms, K.FILL_MODES[self.fill_mode], self.fill_value,
                        self.interpolation == "bilinear", y)

    def _apply_transpose(self, dy, dx):
        K.affine_sample_backward(dy, self.transforms, K.FILL_MODES[self.fill_mode],
                                 self.interpolation == "bilinear", dx)

    def _resampling_config(self):
        return {"fill_mode": self.fill_mode, "interpolation": self.interpolation, "fill_value": self.fill_value}


def rotation_transforms(angles, height, width):
    """Keras's rotation about the image centre as output -> input maps.

    Parameters
    ----------
    angles : ndarray (N,)
        Radians; positive turns the picture counter-clockwise.
    height, width : int

    Returns
    -------
    transforms : ndarray (N, 6) float64
        ``[a0, a1, a2, b0, b1, b2]``: output pixel (row i, column j) reads the input at
        ``(b0 j + b1 i + b2, a0 j + a1 i + a2)``.

    Notes
    -----
    With the centre ``(cy, cx) = ((H-1)/2, (W-1)/2)``:

        xs = cos(a) (j - cx) - sin(a) (i - cy) + cx
        ys = sin(a) (j - cx) + cos(a) (i - cy) + cy
    """
    cos, sin = np.cos(angles), np.sin(angles)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    return np.stack([cos, -sin, cx - cos * cx + sin * cy,
                     sin, cos, cy - sin * cx - cos * cy], axis=1).astype(np.float64)


def translation_transforms(shifts):
    """Move image ``n`` down by ``shifts[n, 0]`` and right by ``shifts[n, 1]`` pixels.

    shifts : ndarray (N, 2) -> transforms : ndarray (N, 6) float64 (output ``(i, j)`` reads the
    input at ``(i - dy, j - dx)``; layout as in :func:`rotation_transforms`).
    """
    n = shifts.shape[0]
    ones, zeros = np.ones(n), np.zeros(n)
    return np.stack([ones, zeros, -shifts[:, 1], zeros, ones, -shifts[:, 0]], axis=1).astype(np.float64)


class RandomRotation(_RandomAffine):
    """Rotates each image by a random angle about its centre, Keras's ``RandomRotation``.

    Parameters
    ----------
    factor : float or (float, float)
        A fraction of a full turn (2 pi). ``0.1`` rotates by an angle drawn uniformly in
        ``[-0.1 * 2 pi, 0.1 * 2 pi]``; ``(lower, upper)`` uses that range. Positive angles turn
        counter-clockwise.
    fill_mode : {'reflect', 'wrap', 'constant', 'nearest'}, default 'reflect'
        What the corners that come from outside the image show: the image mirrored about its edge
        (``dcba|abcd|dcba``), repeated (``abcd|abcd|abcd``), ``fill_value`` (``kkkk|abcd|kkkk``) or
        the nearest edge pixel (``aaaa|abcd|dddd``).
    interpolation : {'bilinear', 'nearest'}, default 'bilinear'
    seed : int, optional
    fill_value : float, default 0.0
        Used with ``fill_mode='constant'``.

    Attributes
    ----------
    angles : ndarray (N,)
        After a training call: each image's angle in radians.
    transforms : ndarray (N, 6)
        The same as output -> input maps (:func:`rotation_transforms`).

    Notes
    -----
    Output pixel ``p`` takes the input at ``R(angle) (p - centre) + centre``, interpolated
    bilinearly between the four surrounding pixels. The weights do not depend on the image, so
    ``y = A x + c`` and ``backward`` scatters ``dy`` back through the same weights: ``dx = A.T dy``.
    Outside the image tinycnn applies the fill mode to each of the four neighbours; Keras
    (TensorFlow) maps the real-valued point first, so the two can differ by a fraction of a pixel
    within one pixel of the border.
    """

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.lower, self.upper = _bounds(factor, "factor", self.describe())
        self.factor = _as_config(factor)
        self._init_resampling(fill_mode, interpolation, fill_value)

    def _draw(self, x):
        n, h, w, _ = x.shape
        self.angles = self.generator.uniform(self.lower * 2 * np.pi, self.upper * 2 * np.pi, n)
        self.transforms = rotation_transforms(self.angles, h, w)

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor, **self._resampling_config())
        return config


class RandomTranslation(_RandomAffine):
    """Shifts each image by a random fraction of its height and width, Keras's ``RandomTranslation``.

    Parameters
    ----------
    height_factor : float or (float, float), in [-1, 1]
        ``0.2`` shifts up or down by up to 20 % of the height; ``(lower, upper)`` uses that range of
        fractions (negative is up, positive down).
    width_factor : float or (float, float), in [-1, 1]
        The same for the width (negative is left, positive right).
    fill_mode : {'reflect', 'wrap', 'constant', 'nearest'}, default 'reflect'
        See :class:`RandomRotation`.
    interpolation : {'bilinear', 'nearest'}, default 'bilinear'
    seed : int, optional
    fill_value : float, default 0.0

    Attributes
    ----------
    shifts : ndarray (N, 2)
        After a training call: each image's shift in pixels, (down, right). Shifts are not rounded:
        a fractional shift blends neighbouring pixels.
    transforms : ndarray (N, 6)
        The same as output -> input maps (:func:`translation_transforms`).

    Notes
    -----
    Output ``(i, j)`` = input at ``(i - dy, j - dx)``; backward as in :class:`RandomRotation`.
    """

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        owner = self.describe()
        self.height_lower, self.height_upper = _bounds(height_factor, "height_factor", owner, limit=1.0)
        self.width_lower, self.width_upper = _bounds(width_factor, "width_factor", owner, limit=1.0)
        self.height_factor, self.width_factor = _as_config(height_factor), _as_config(width_factor)
        self._init_resampling(fill_mode, interpolation, fill_value)

    def _draw(self, x):
        n, h, w, _ = x.shape
        down = self.generator.uniform(self.height_lower, self.height_upper, n) * h
        right = self.generator.uniform(self.width_lower, self.width_upper, n) * w
        self.shifts = np.stack([down, right], axis=1)
        self.transforms = translation_transforms(self.shifts)

    def get_config(self):
        config = super().get_config()
        config.update(height_factor=self.height_factor, width_factor=self.width_factor, **self._resampling_config())
        return config


class RandomContrast(_RandomImageLayer):
    """Scales each image's contrast by a random factor, Keras's ``RandomContrast``.

    Parameters
    ----------
    factor : float or (float, float)
        ``f`` or ``(lower, upper)`` with ``0 <= lower <= 1`` and ``upper >= 0``: each image's contrast
        factor is drawn uniformly in ``[1 - lower, 1 + upper]`` (a float ``f`` means ``lower = upper
        = f``).
    seed : int, optional

    Attributes
    ----------
    factors : ndarray (N,)
        After a training call: each image's contrast factor.

    Notes
    -----
    Per image ``n`` and channel ``c``, with ``m`` the channel's mean over the image's pixels:

        y = (x - m) * f + m = f x + (1 - f) m           (the mean is kept)
        dx = f dy + (1 - f) mean(dy)                     (the second term: the path through m)

    Keras 3 also clips the result to ``value_range`` (default ``(0, 255)``); tinycnn does not, so
    the map stays affine and its gradient exact.
    """

    def __init__(self, factor, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if _is_number(factor):
            lower = upper = float(factor)
        elif isinstance(factor, (tuple, list)) and len(factor) == 2 and all(_is_number(v) for v in factor):
            lower, upper = float(factor[0]), float(factor[1])
        else:
            lower = upper = None
        if lower is None or not (0 <= lower <= 1 and upper >= 0):
            raise ValueError(f"{self.describe()}: invalid value for argument `factor`: expected a float in "
                             f"[0, 1] or a tuple (lower, upper) with 0 <= lower <= 1 and upper >= 0, "
                             f"received {factor!r}")
        self.lower, self.upper = lower, upper
        self.factor = _as_config(factor)

    def _draw(self, x):
        self.factors = self.generator.uniform(1 - self.lower, 1 + self.upper, x.shape[0])

    def _apply(self, x, y):
        K.contrast_forward(x, self.factors, y)

    def _apply_transpose(self, dy, dx):
        K.contrast_backward(dy, self.factors, dx)

    def get_config(self):
        config = super().get_config()
        config["factor"] = self.factor
        return config
