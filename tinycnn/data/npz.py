"""Image sets stored as NumPy ``.npz`` archives in the MedMNIST layout.

A MedMNIST file (https://medmnist.com) holds six arrays:

    train_images (N, H, W) or (N, H, W, 3) uint8      train_labels (N, 1) int
    val_images, val_labels, test_images, test_labels   (the same, for the other two splits)

:func:`load_npz` reads such a file with ``allow_pickle=False`` (an ``.npz`` can then hold nothing but
plain arrays), checks every array, and returns float32 NHWC images in [0, 1] with integer labels
``(N,)``, ready for ``model.fit``. Only the training split is required.
"""
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ._imaging import is_int

SPLITS = ("train", "val", "test")


@dataclass(repr=False)
class NpzDataset:
    """The arrays of an ``.npz`` image set; a split the file does not hold is None.

    Attributes
    ----------
    x_train : ndarray (N, H, W, C) float32 in [0, 1]
    y_train : ndarray (N,) int64, class indices in ``[0, num_classes)``
    x_val, y_val, x_test, y_test : the same for the validation and test splits, or None
    num_classes : int
    class_names : list of str, or None
    path : str
        The file they came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None
    num_classes: int = 0
    class_names: Optional[List[str]] = None
    path: Optional[str] = None

    @property
    def element_shape(self):
        """Per-image shape ``(H, W, C)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self):
        counts = ", ".join(f"{split} {len(getattr(self, 'y_' + split))}" for split in SPLITS
                           if getattr(self, "y_" + split) is not None)
        h, w, c = self.element_shape
        names = f" {self.class_names}" if self.class_names else ""
        return (f"NpzDataset('{self.path}': {counts} images of {h}x{w}x{c}, "
                f"{self.num_classes} classes{names})")


def load_npz(path, num_classes=None, class_names=None):
    """Load a MedMNIST-style ``.npz`` image set.

    Parameters
    ----------
    path : str or os.PathLike
    num_classes : int, optional
        The number of classes; by default the largest label + 1 (over all splits). Give it when a
        class may be missing from the file, so that labels are checked against it.
    class_names : list of str, optional
        Names of the classes in label order (MedMNIST files carry none; see the dataset's
        documentation). Fixes ``num_classes`` to its length.

    Returns
    -------
    NpzDataset
        ``x_*`` float32 ``(N, H, W, C)`` in [0, 1] (grayscale gets ``C = 1``), ``y_*`` int64 ``(N,)``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a readable ``.npz`` (not a zip archive, truncated, holds pickled objects), a
        key is missing, or an array is wrong: images of the wrong rank or a non-numeric dtype, label
        counts that differ from image counts, labels that are negative, not integers, or out of
        range. The message names the file, the key and the problem.

    Notes
    -----
    uint8 images are divided by 255 and uint16 ones by 65535; other integer images must hold values
    in 0..255; float images must already lie in [0, 1].

    Examples
    --------
    >>> data = load_npz('breastmnist.npz', class_names=['malignant', 'normal or benign'])
    >>> model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val))
    """
    path = os.fspath(path)
    where = f"load_npz('{path}')"

    def fail(problem):
        return ValueError(f"{where}: {problem}")

    num_classes, class_names = _check_class_arguments(num_classes, class_names, where)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{where}: this is a folder, not an .npz file (for a folder of images with one "
                                f"subfolder per class, use image_folder)")
    handle = open(path, "rb")  # our own handle, so that it is closed whatever np.load makes of the bytes
    try:
        archive = np.load(handle, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        handle.close()
        raise fail(f"not a readable .npz archive ({type(e).__name__}: {e}); the file may be truncated or "
                   f"not an .npz at all") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        handle.close()
        raise fail(f"holds a single array of shape {archive.shape} (an .npy file), not an .npz archive with "
                   f"keys train_images, train_labels, ...")
    with handle, archive:
        keys = list(archive.files)
        for key in ("train_images", "train_labels"):
            if key not in keys:
                raise fail(f"missing key '{key}' (the file holds {sorted(keys)}); expected the MedMNIST keys "
                           f"train_images, train_labels and optionally val_images, val_labels, test_images, "
                           f"test_labels")
        arrays = {}
        for split in SPLITS:
            image_key, label_key = f"{split}_images", f"{split}_labels"
            if image_key not in keys and label_key not in keys:
                continue
            for have, missing in ((image_key, label_key), (label_key, image_key)):
                if have in keys and missing not in keys:
                    raise fail(f"missing key '{missing}': the file holds '{have}' but not '{missing}'")
            images = _images(_read(archive, image_key, fail), image_key, fail)
            labels = _labels(_read(archive, label_key, fail), label_key, images.shape[0], image_key, fail)
            if arrays and images.shape[1:] != arrays["train"][0].shape[1:]:
                raise fail(f"'{image_key}' holds images of shape {images.shape[1:]} but 'train_images' holds "
                           f"{arrays['train'][0].shape[1:]}")
            arrays[split] = (images, labels)

    largest = max(int(labels.max()) for _, labels in arrays.values())
    if num_classes is None:
        num_classes = largest + 1
        if num_classes < 2:
            raise fail("every label is 0: a classifier needs at least two classes")
    for split, (_, labels) in arrays.items():
        bad = np.flatnonzero(labels >= num_classes)
        if bad.size:
            raise fail(f"'{split}_labels' holds label {labels[bad[0]]} (at index {bad[0]}), out of range for "
                       f"{num_classes} classes: labels must be in [0, {num_classes})")
    present = np.bincount(arrays["train"][1], minlength=num_classes)
    if (present == 0).any():
        warnings.warn(f"{where}: class(es) {np.flatnonzero(present == 0).tolist()} have no training images",
                      stacklevel=2)
    data = {f"{xy}_{split}": None for split in SPLITS for xy in ("x", "y")}
    for split, (images, labels) in arrays.items():
        data[f"x_{split}"], data[f"y_{split}"] = images, labels
    return NpzDataset(**data, num_classes=num_classes, class_names=class_names, path=path)


def _check_class_arguments(num_classes, class_names, where):
    if class_names is not None:
        if (not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names)
                or len(set(class_names)) != len(class_names) or len(class_names) < 2):
            raise ValueError(f"{where}: invalid value for argument `class_names`: expected a list of at least two "
                             f"distinct str, received {class_names!r}")
        class_names = list(class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"{where}: `num_classes`={num_classes!r} disagrees with the {len(class_names)} "
                             f"`class_names`")
        num_classes = len(class_names)
    if num_classes is not None and (not is_int(num_classes) or num_classes < 2):
        raise ValueError(f"{where}: invalid value for argument `num_classes`: expected an int >= 2, "
                         f"received {num_classes!r}")
    return (None if num_classes is None else int(num_classes)), class_names


def _read(archive, key, fail):
    """One array from the archive; a damaged or pickled entry becomes an error naming the key."""
    try:
        value = archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise fail(f"entry '{key}' cannot be read ({type(e).__name__}: {e}); the file may be truncated or "
                   f"corrupt") from None
    if not isinstance(value, np.ndarray):  # a zip member that is not an .npy array
        raise fail(f"entry '{key}' is not a NumPy array")
    return value


def _images(a, key, fail):
    """Check an image array and turn it into float32 ``(N, H, W, C)`` in [0, 1]."""
    if a.dtype.kind not in "biuf":
        raise fail(f"'{key}' has dtype {a.dtype}; expected numeric images (uint8)")
    if a.ndim == 3:
        a = a[..., None]
    elif a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        hint = " (is this a 3-D volume set?)" if a.ndim == 4 else ""
        raise fail(f"'{key}' has shape {a.shape}; expected grayscale images (N, H, W) or colour images "
                   f"(N, H, W, C) with C = 1, 3 or 4 channels{hint}")
    if a.shape[0] == 0:
        raise fail(f"'{key}' holds no images")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535)
    if a.dtype.kind == "b":
        return a.astype(np.float32)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise fail(f"'{key}' holds NaN or infinite values")
    low, high = a.min(), a.max()
    if a.dtype.kind == "f":
        if low < 0 or high > 1:
            raise fail(f"'{key}' holds float values in [{low:g}, {high:g}]; float images must lie in [0, 1] "
                       f"(divide 8-bit values by 255 before saving)")
        return a.astype(np.float32)
    if low < 0 or high > 255:
        raise fail(f"'{key}' holds {a.dtype} values in [{low}, {high}]; expected 8-bit values in 0..255 "
                   f"(or store uint8 / uint16 images)")
    return a.astype(np.float32) / np.float32(255)


def _labels(a, key, n_images, image_key, fail):
    """Check a label array and turn it into int64 ``(N,)``."""
    if a.dtype.kind not in "biuf":
        raise fail(f"'{key}' has dtype {a.dtype}; expected integer class labels")
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2:
        raise fail(f"'{key}' has shape {a.shape}: {a.shape[1]} values per image (one-hot or multi-label); "
                   f"expected one class index per image, shape (N,) or (N, 1)")
    elif a.ndim != 1:
        raise fail(f"'{key}' has shape {a.shape}; expected one class index per image, shape (N,) or (N, 1)")
    if a.shape[0] != n_images:
        raise fail(f"'{key}' has {a.shape[0]} labels but '{image_key}' has {n_images} images")
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if bad.size:
            raise fail(f"'{key}' holds a non-integer label ({a[bad[0]]!r} at index {bad[0]}); expected integer "
                       f"class indices")
    negative = np.flatnonzero(a < 0)
    if negative.size:
        raise fail(f"'{key}' holds a negative label ({a[negative[0]]} at index {negative[0]}); class indices start "
                   f"at 0")
    return a.astype(np.int64)
