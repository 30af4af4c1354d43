"""scikit-learn's bundled handwritten digits as images: a small real data set that needs no download."""
import numpy as np

from ._imaging import INTERPOLATIONS, check_choice, check_image_size, resize_images


def load_digits_images(image_size=None, channels=1, interpolation="bilinear"):
    """The 1797 8x8 digit images of ``sklearn.datasets.load_digits``, as float32 NHWC in [0, 1].

    Parameters
    ----------
    image_size : (int, int) or int, optional
        ``(height, width)`` to resize to with Pillow (e.g. 32 to feed a deeper network); by default
        the original 8x8.
    channels : {1, 3}, default 1
        3 repeats the gray level into three channels, for models built for RGB input.
    interpolation : str, default 'bilinear'
        Pillow's resampling filter when resizing (see :func:`image_folder`).

    Returns
    -------
    x : ndarray (1797, H, W, channels) float32 in [0, 1]
        The original pixel values 0..16 divided by 16.
    y : ndarray (1797,) int64
        The digit, 0..9 (10 classes, about 180 images each).
    """
    from sklearn.datasets import load_digits

    where = "load_digits_images"
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"{where}: invalid value for argument `channels`: expected 1 or 3, received {channels!r}")
    check_choice(interpolation, INTERPOLATIONS, "interpolation", where)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    if image_size is not None:
        size = check_image_size(image_size, where)
        if size != x.shape[1:3]:
            x = np.clip(resize_images(x, size, interpolation), 0.0, 1.0)
    if channels == 3:
        x = np.repeat(x, 3, axis=3)
    return np.ascontiguousarray(x), digits.target.astype(np.int64)
