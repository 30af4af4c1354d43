"""Pillow helpers shared by the loaders: argument checks, and one image -> float32 ``(H, W, C)`` in [0, 1].

Colour conversion comes first, then resizing (as Keras's ``load_img`` does), both with Pillow.
8-bit images are divided by 255. 16-bit grayscale images (common in medical imaging; Pillow opens
them in mode ``'I;16'`` or ``'I'``) are divided by 65535 instead: Pillow's own conversion to 8 bits
would clip every value above 255 to white. Float images (mode ``'F'``) are taken to be in [0, 1]
already and clipped to it.

Files are distrusted before they are decoded (:func:`image_problem`, :func:`read_image`): only regular
files are opened (a FIFO named ``x.png`` would block the reader forever, a device never ends), an
empty file is named as such, and an image whose header declares more than :data:`MAX_PIXELS`
pixels is refused before a byte of it is decoded: a PNG of a few hundred bytes may declare
100,000 x 100,000 pixels (a "decompression bomb"), 30 GB once decoded.
"""
import os
import stat

import numpy as np
from PIL import Image, UnidentifiedImageError

#: color_mode -> (Pillow mode, channels)
COLOR_MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3), "rgba": ("RGBA", 4)}

#: Keras's interpolation names -> Pillow's resampling filters
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}

#: Pillow modes holding more than 8 bits per pixel, and the value that maps to 1.0
_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


#: Largest image (width x height) that is decoded: 50 megapixels, e.g. 7000 x 7000, 150 MB as 8-bit RGB.
#: Larger headers are refused unread. Lower than Pillow's own limit (89 MP warns, 179 MP raises).
MAX_PIXELS = 50_000_000


def _regular_file_problem(path):
    """None for a non-empty regular file; otherwise what it is, as text (following symlinks)."""
    try:
        info = os.stat(path)
    except OSError as e:  # missing, a symlink loop (ELOOP), a dangling link, no permission
        return f"cannot be opened ({type(e).__name__}: {e.strerror or e})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a folder, FIFO, socket or device); not opened"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    return None


def listing_problem(error):
    """The reason to report for a folder ``os.walk`` could not list (its ``onerror`` argument)."""
    return f"folder cannot be listed ({type(error).__name__}: {error.strerror or error}); nothing in it was read"


def _check_pixels(image):
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise _Refused(f"declares {width} x {height} pixels, more than the {MAX_PIXELS:,} that are decoded "
                       f"(tinycnn.data._imaging.MAX_PIXELS); a decompression bomb, or an image far larger than a "
                       f"classifier's input: refused unread")


class _Refused(Exception):
    """An image refused by a check of ours; its message is the whole reason."""


def _reason(error):
    if isinstance(error, _Refused):
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow recognises (UnidentifiedImageError)"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused unread as a decompression bomb ({error})"
    return f"{type(error).__name__}: {error}"


def image_problem(path, decode=True):
    """None if ``path`` is an image that :func:`read_image` will read; otherwise the reason, as text.

    With ``decode`` the pixels are decoded too (finds truncated and corrupt files, not only bad
    headers); without it only the header is read.
    """
    problem = _regular_file_problem(path)
    if problem is not None:
        return problem
    try:
        with Image.open(path) as image:
            _check_pixels(image)
            if decode:
                image.load()
        return None
    except Exception as e:  # any failure to read means "skip and report", whatever Pillow's plugin raised
        return _reason(e)


class UnreadableImage(OSError):
    """A file that cannot be read as an image: ``.path``, and ``.reason`` as :func:`image_problem` words it."""

    def __init__(self, path, reason):
        super().__init__(f"'{path}': {reason}")
        self.path, self.reason = path, reason


def read_image(path, image_size, color_mode, interpolation="bilinear"):
    """One image file -> float32 ``(height, width, C)`` in [0, 1] (see :func:`image_to_array`).

    Raises
    ------
    UnreadableImage
        (an OSError) The file cannot be read as an image; the message names it and says why.
    """
    problem = _regular_file_problem(path)
    if problem is None:
        try:
            with Image.open(path) as image:
                _check_pixels(image)
                return image_to_array(image, image_size, color_mode, interpolation)
        except Exception as e:
            problem = _reason(e)
    raise UnreadableImage(path, problem)


def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_image_size(image_size, where):
    """``64`` or ``(64, 48)`` -> ``(height, width)``, or raise naming the argument."""
    size = (image_size, image_size) if is_int(image_size) else image_size
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        raise ValueError(f"{where}: invalid value for argument `image_size`: expected (height, width) as two "
                         f"positive ints, received {image_size!r}")
    return int(size[0]), int(size[1])


def check_choice(value, allowed, argument, where):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{where}: invalid value for argument `{argument}`: expected one of {list(allowed)}, "
                         f"received {value!r}")
    return value


def image_to_array(image, image_size, color_mode, interpolation="bilinear"):
    """Convert, resize and scale one Pillow image.

    Parameters
    ----------
    image : PIL.Image.Image
    image_size : (int, int)
        Target ``(height, width)``.
    color_mode : {'grayscale', 'rgb', 'rgba'}
    interpolation : str
        A key of :data:`INTERPOLATIONS`.

    Returns
    -------
    ndarray (height, width, C) float32 in [0, 1]
        ``C`` is 1, 3 or 4 for grayscale, rgb, rgba.
    """
    height, width = image_size
    mode, channels = COLOR_MODES[color_mode]
    resample = INTERPOLATIONS[interpolation]
    if image.mode in _WIDE_MODES:
        # One high-bit-depth channel: scale to [0, 1] in float ('F' mode), then resize and copy it into
        # the colour channels (alpha, if asked for, is opaque).
        scaled = np.clip(np.asarray(image, dtype=np.float32) / _WIDE_MODES[image.mode], 0.0, 1.0)
        gray = Image.fromarray(np.ascontiguousarray(scaled, dtype=np.float32))
        if gray.size != (width, height):
            gray = gray.resize((width, height), resample)
        plane = np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0)
        out = np.repeat(plane[:, :, None], channels, axis=2)
        if channels == 4:
            out[:, :, 3] = 1.0
        return out
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), resample)
    out = np.asarray(image, dtype=np.float32) / np.float32(255)
    return out.reshape(height, width, channels)


def resize_images(x, image_size, interpolation="bilinear"):
    """Resize a batch of float images with Pillow, channel by channel (mode ``'F'``, no 8-bit rounding).

    x : ndarray (N, H, W, C) -> ndarray (N, height, width, C) float32
    """
    height, width = image_size
    resample = INTERPOLATIONS[interpolation]
    n, _, _, c = x.shape
    out = np.empty((n, height, width, c), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            plane = Image.fromarray(np.ascontiguousarray(x[i, :, :, ch], dtype=np.float32))
            out[i, :, :, ch] = np.asarray(plane.resize((width, height), resample))
    return out
