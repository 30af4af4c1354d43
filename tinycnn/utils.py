"""Small helpers with Keras's names."""
import numpy as np


def to_categorical(y, num_classes=None, dtype="float32"):
    """Integer class labels ``(N,)`` or ``(N, 1)`` to one-hot rows ``(N, num_classes)``.

    Raises a ValueError naming the first label that is not an integer in ``[0, num_classes)``.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"to_categorical: expected labels of shape (N,) or (N, 1), received {y.shape}")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"to_categorical: expected integer labels, received dtype {y.dtype}")
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
        raise ValueError("to_categorical: expected integer labels, received non-integer values")
    labels = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"to_categorical: labels must be in [0, {num_classes}); sample {i} has label {y[i].item()!r}")
    out = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out
