"""Splitting a labelled set, and per-channel standardisation fitted on the training images."""
import math

import numpy as np
from sklearn.model_selection import train_test_split

from ._imaging import is_int


def _class_labels(y, where):
    """Labels ``(N,)``, ``(N, 1)`` or one-hot ``(N, K)`` -> int64 ``(N,)`` for stratification."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{where}: expected numeric labels, received dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1:
        raise ValueError(f"{where}: expected labels of shape (N,), (N, 1) or one-hot (N, K), received {y.shape}")
    return y


def train_val_split(x, y, validation_fraction=0.2, seed=0, stratify=True):
    """Split into a training and a validation part, keeping class proportions (scikit-learn's
    ``train_test_split`` with ``stratify=y``).

    Parameters
    ----------
    x : ndarray (N, ...)
        Images (or anything indexed by sample first).
    y : ndarray (N,), (N, 1) or one-hot (N, K)
    validation_fraction : float in (0, 1), default 0.2
        Share of samples for validation, rounded up to whole samples.
    seed : int or None, default 0
        The same seed gives the same split.
    stratify : bool, default True
        Give each class the same share in both parts (each class then needs at least 2 samples).

    Returns
    -------
    (x_train, y_train), (x_val, y_val)
        New arrays (copies), in the layouts given.

    Examples
    --------
    >>> (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, validation_fraction=0.2, seed=0)
    >>> model.fit(x_tr, y_tr, validation_data=(x_val, y_val))
    """
    where = "train_val_split"
    x, y = np.asarray(x), np.asarray(y)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float, np.floating)) \
            or not 0 < validation_fraction < 1:
        raise ValueError(f"{where}: invalid value for argument `validation_fraction`: expected a float in (0, 1), "
                         f"received {validation_fraction!r}")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"{where}: invalid value for argument `seed`: expected None or a non-negative int, "
                         f"received {seed!r}")
    if not isinstance(stratify, (bool, np.bool_)):
        raise ValueError(f"{where}: invalid value for argument `stratify`: expected True or False, "
                         f"received {stratify!r}")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: `x` and `y` must hold the same number of samples, received shapes "
                         f"{x.shape} and {y.shape}")
    labels = _class_labels(y, where)
    n = x.shape[0]
    n_val = math.ceil(validation_fraction * n)
    n_train = n - n_val
    if n_train < 1 or n_val < 1:
        raise ValueError(f"{where}: validation_fraction={validation_fraction} of {n} samples leaves {n_train} for "
                         f"training and {n_val} for validation; each part needs at least one")
    if stratify:
        classes, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2:
            k = classes[np.argmin(counts)]
            raise ValueError(f"{where}: class {k} has only 1 sample; a stratified split needs at least 2 per class "
                             f"(add samples, or pass stratify=False)")
        if min(n_val, n_train) < len(classes):
            raise ValueError(f"{where}: validation_fraction={validation_fraction} of {n} samples gives {n_train} "
                             f"training and {n_val} validation samples, but a stratified split needs at least one "
                             f"per class ({len(classes)} classes) in each part")
    train_index, val_index = train_test_split(np.arange(n), test_size=n_val, random_state=seed,
                                              stratify=labels if stratify else None)
    return (x[train_index], y[train_index]), (x[val_index], y[val_index])


class Normalizer:
    """Per-channel standardisation, ``(x - mean) / std``, with the statistics of the training images.

    Parameters
    ----------
    mean, std : sequence of float, optional
        Known statistics (one per channel), e.g. from :meth:`get_config`; else call :meth:`fit`.
    epsilon : float, default 1e-7
        Floor on ``std``, so that a constant channel does not divide by zero (as Keras's
        ``Normalization`` layer).

    Attributes
    ----------
    mean, std : ndarray (C,) float64, or None before fitting

    Notes
    -----
    Over every pixel of every training image (``M = N * H * W`` values per channel ``c``):

        mean_c = sum(x_c) / M,    std_c = sqrt(sum((x_c - mean_c)^2) / M)
        transform(x) = (x - mean) / max(std, epsilon)

    ``fit`` accumulates these in float64, a block of images at a time (Chan's pairwise update of
    mean and squared deviations), so it also takes a batch source such as ``image_folder(...)``
    without loading it whole. Fit on the training split only and apply the same statistics to
    validation, test and new images.

    Examples
    --------
    >>> norm = Normalizer().fit(x_train)
    >>> model.fit(norm.transform(x_train), y_train, validation_data=(norm.transform(x_val), y_val))
    >>> json.dump(norm.get_config(), open('normalizer.json', 'w'))
    """

    def __init__(self, mean=None, std=None, epsilon=1e-7):
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or not epsilon > 0:
            raise ValueError(f"Normalizer: invalid value for argument `epsilon`: expected a float > 0, "
                             f"received {epsilon!r}")
        self.epsilon = float(epsilon)
        self.mean = self.std = None
        if (mean is None) != (std is None):
            raise ValueError("Normalizer: give both `mean` and `std`, or neither (and call fit)")
        if mean is not None:
            mean = np.asarray(mean, dtype=np.float64).reshape(-1)
            std = np.asarray(std, dtype=np.float64).reshape(-1)
            if mean.shape != std.shape or mean.size == 0 or not np.isfinite(mean).all() \
                    or not np.isfinite(std).all() or (std < 0).any():
                raise ValueError(f"Normalizer: `mean` and `std` must be equally long lists of finite floats "
                                 f"(std >= 0), one per channel, received mean={mean.tolist()}, std={std.tolist()}")
            self.mean, self.std = mean, std

    @property
    def fitted(self):
        return self.mean is not None

    def fit(self, x, batch_size=256):
        """Compute the per-channel mean and standard deviation.

        Parameters
        ----------
        x : ndarray (N, H, W, C) (or any ``(N, ..., C)``), or a batch source
            A batch source is anything with ``iter_batches(batch_size, shuffle, seed)``, e.g. what
            :func:`image_folder` returns; it is read once, in order.
        batch_size : int
            Images per block.

        Returns
        -------
        self
        """
        if hasattr(x, "iter_batches"):
            blocks = (xb for xb, _ in x.iter_batches(batch_size=batch_size, shuffle=False, seed=None))
        else:
            x = self._check_array(x, "fit")
            blocks = (x[i:i + batch_size] for i in range(0, x.shape[0], batch_size))
        count, mean, m2 = 0, None, None
        for block in blocks:
            block = np.asarray(block)
            flat = block.reshape(-1, block.shape[-1])
            if mean is not None and flat.shape[1] != mean.size:
                raise ValueError(f"Normalizer.fit: batches disagree on the number of channels ({mean.size} then "
                                 f"{flat.shape[1]})")
            n_b = flat.shape[0]
            if n_b == 0:
                continue
            mean_b = flat.mean(axis=0, dtype=np.float64)
            m2_b = ((flat - mean_b) ** 2).sum(axis=0, dtype=np.float64)
            if mean is None:
                count, mean, m2 = n_b, mean_b, m2_b
                continue
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
            count = total
        if mean is None:
            raise ValueError("Normalizer.fit: received no images")
        if not (np.isfinite(mean).all() and np.isfinite(m2).all()):
            raise ValueError("Normalizer.fit: the images hold NaN or infinite values")
        self.mean, self.std = mean, np.sqrt(m2 / count)
        return self

    def transform(self, x):
        """``(x - mean) / max(std, epsilon)`` per channel.

        x : ndarray (N, ..., C) -> ndarray (N, ..., C) float32
        """
        x = self._check_array(x, "transform")
        scale = np.maximum(self.std, self.epsilon)
        return ((x - self.mean) / scale).astype(np.float32)

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    def inverse_transform(self, x):
        """Back to the original scale: ``x * max(std, epsilon) + mean``."""
        x = self._check_array(x, "inverse_transform")
        return (x * np.maximum(self.std, self.epsilon) + self.mean).astype(np.float32)

    def _check_array(self, x, method):
        where = f"Normalizer.{method}"
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{where}: expected a numeric array, received dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(f"{where}: expected images (N, H, W, C) with channels last, received shape {x.shape}")
        if method != "fit":
            if not self.fitted:
                raise ValueError(f"{where}: the Normalizer is not fitted yet; call fit(x_train) first")
            if x.shape[-1] != self.mean.size:
                raise ValueError(f"{where}: fitted on {self.mean.size} channel(s), received x with shape {x.shape} "
                                 f"({x.shape[-1]} channels)")
        return x

    def get_config(self):
        """Plain JSON data: ``{'mean': [...], 'std': [...], 'epsilon': ...}``."""
        if not self.fitted:
            raise ValueError("Normalizer.get_config: the Normalizer is not fitted yet; call fit(x_train) first")
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std], "epsilon": self.epsilon}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        if not self.fitted:
            return "Normalizer(not fitted)"
        return f"Normalizer(mean={np.round(self.mean, 4).tolist()}, std={np.round(self.std, 4).tolist()})"
