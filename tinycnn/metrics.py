"""Metrics for ``compile(metrics=[...])``: stateful, accumulated over an epoch, Keras's names.

A metric is updated batch by batch (``update``) and read once (``result``), so an epoch's accuracy is
the accuracy over all its samples, not a mean of batch accuracies.
"""
import numpy as np


def _labels(y):
    """Class indices from one-hot/probability rows ``(N, K)``, or integer labels ``(N,)``/``(N, 1)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return y.reshape(-1).astype(np.int64)


class Metric:
    """Base class: ``reset()``, ``update(y_true, y_pred, sample_weight=None)``, ``result()``."""

    def __init__(self, name):
        self.name = name
        self.reset()

    def reset(self):
        self._total = 0.0
        self._count = 0.0

    def result(self):
        return self._total / self._count if self._count else 0.0

    def _add(self, values, sample_weight):
        w = np.ones(len(values)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self._total += float(np.dot(w, values))
        self._count += float(w.sum())


class CategoricalAccuracy(Metric):
    """Fraction of samples whose arg-max prediction is the arg-max target."""

    def __init__(self, name="categorical_accuracy"):
        super().__init__(name)

    def update(self, y_true, y_pred, sample_weight=None):
        self._add(_labels(y_true) == np.argmax(y_pred, axis=1), sample_weight)


class SparseCategoricalAccuracy(CategoricalAccuracy):
    """As :class:`CategoricalAccuracy`, with integer labels as targets."""

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)


class BinaryAccuracy(Metric):
    """Fraction of outputs on the right side of ``threshold`` (0.5), averaged per sample."""

    def __init__(self, name="binary_accuracy", threshold=0.5):
        self.threshold = threshold
        super().__init__(name)

    def update(self, y_true, y_pred, sample_weight=None):
        y_pred = np.asarray(y_pred)
        y_true = np.asarray(y_true).reshape(y_pred.shape)
        hits = ((y_pred > self.threshold) == (y_true > 0.5)).mean(axis=1)
        self._add(hits, sample_weight)


_BY_NAME = {
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
}


def get(identifier, target_kind):
    """Resolve a metric name for a loss whose targets are ``target_kind``.

    ``'accuracy'`` (or ``'acc'``) picks the accuracy that fits the loss, as Keras does, and keeps the
    name ``accuracy`` in the logs.
    """
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            cls = {"categorical": CategoricalAccuracy, "sparse": SparseCategoricalAccuracy,
                   "binary": BinaryAccuracy}[target_kind]
            return cls(name="accuracy")
        if key in _BY_NAME:
            return _BY_NAME[key]()
    raise ValueError(f"Invalid value in argument `metrics`: expected one of "
                     f"{['accuracy'] + sorted(_BY_NAME)} or a tinycnn.metrics.Metric instance, received "
                     f"{identifier!r}")
