"""Metrics for ``compile(metrics=[...])``: stateful, accumulated over an epoch, Keras's names.

A metric is updated batch by batch (``update``) and read once (``result``), so an epoch's accuracy is
the accuracy over all its samples, not a mean of batch accuracies.

Names that ``compile`` understands (case-insensitive): ``'accuracy'`` (``'acc'``), the three explicit
accuracies, ``'auc'``, ``'precision'`` and ``'recall'``.

How AUC, precision and recall read the targets
----------------------------------------------
They work for every kind of head and target that the losses accept, and turn each batch into
one-vs-rest columns ("is it class k?"):

===========================================  ==============================================================
model output ``y_pred`` and loss              what is measured
===========================================  ==============================================================
``(N, 1)`` sigmoid, 0/1 targets              binary: positive class 1, score = the single output
``(N, 2)`` softmax, one-hot or int labels    binary: positive class 1, score = probability of class 1
``(N, K)`` softmax, K > 2                    multi-class: one-vs-rest per class, macro average
``(N, K)`` sigmoid with binary_crossentropy  multi-label: each output its own yes/no question, macro average
===========================================  ==============================================================

One-hot rows may be soft (label smoothing): the class is their arg-max. A class (or output) that
never occurs, neither in the targets nor in the predictions, is left out of the macro average of
precision and recall, as scikit-learn does for classes (for multi-label outputs scikit-learn would
count such an output as 0 instead).
"""
import math

import numpy as np

#: The kinds of targets a loss takes (``Loss.target_kind``).
TARGET_KINDS = ("categorical", "sparse", "binary")


def _labels(y):
    """Class indices from one-hot/probability rows ``(N, K)``, or integer labels ``(N,)``/``(N, 1)``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return y.reshape(-1).astype(np.int64)


class Metric:
    """Base class: ``reset()``, ``update(y_true, y_pred, sample_weight=None)``, ``result()``.

    ``direction`` says whether larger values are better (``'up'``) or smaller (``'down'``); callbacks
    with ``mode='auto'`` read it, as Keras 3 does.
    """

    direction = "up"

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


# --- one-vs-rest columns, shared by AUC, Precision and Recall ------------------------------------------

def _one_vs_rest(y_true, y_pred, target_kind, owner):
    """Read one batch as one-vs-rest columns (see the module docstring for the rules).

    Parameters
    ----------
    y_true : ndarray (N,), (N, 1) or (N, K)
        Integer labels, 0/1 targets, or one-hot rows.
    y_pred : ndarray (N, K) or (N,)
        The model's outputs (probabilities).
    target_kind : {'categorical', 'sparse', 'binary'} or None
        What the loss takes; only needed to tell multi-label sigmoid outputs (``'binary'``) from
        one-hot softmax outputs when ``K > 1``. None reads ``(N, K)`` targets as one-hot.
    owner : str
        The metric's name, for error messages.

    Returns
    -------
    truth : ndarray (N, L) bool
        Column ``j`` says whether each sample belongs to class (or output) ``j``.
    scores : ndarray (N, L) float64
        The score of each column: a probability.
    mode : {'binary', 'multiclass', 'multilabel'}
        'binary' has ``L = 1`` (the positive class 1); 'multiclass' has one column per class and a
        sample is predicted to be its arg-max class; 'multilabel' has one column per output.
    """
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    if y_pred.ndim != 2:
        raise ValueError(f"{owner}: expected predictions of shape (N, K), received {y_pred.shape}")
    n, k = y_pred.shape
    y_true = np.asarray(y_true)
    if y_true.shape[0] != n:
        raise ValueError(f"{owner}: `y_true` has {y_true.shape[0]} samples but `y_pred` has {n}; they must match")
    if k == 1:
        return (y_true.reshape(n, 1) > 0.5), y_pred, "binary"
    if target_kind == "binary":
        return (y_true.reshape(n, k) > 0.5), y_pred, "multilabel"
    labels = _labels(y_true)
    if k == 2:
        return (labels == 1)[:, None], y_pred[:, 1:], "binary"
    return labels[:, None] == np.arange(k), y_pred, "multiclass"


def _check_target_kind(target_kind, owner):
    if target_kind is not None and target_kind not in TARGET_KINDS:
        raise ValueError(f"{owner}: invalid value for argument `target_kind`: expected None or one of "
                         f"{list(TARGET_KINDS)}, received {target_kind!r}")
    return target_kind


def _weights(sample_weight, n, owner):
    if sample_weight is None:
        return np.ones(n)
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"{owner}: `sample_weight` must hold one weight per sample ({n}), received shape "
                         f"{np.shape(sample_weight)}")
    return w


class AUC(Metric):
    """Area under the ROC curve, exact, over every prediction of the epoch.

    Every ``update`` stores the batch's targets and scores; ``result`` ranks them all at once with
    scikit-learn's ``roc_auc_score``. (Keras's ``AUC`` approximates the curve with 200 fixed
    thresholds; this one is exact, at the price of keeping one score per sample and class.)

    Parameters
    ----------
    name : str, default 'auc'
    target_kind : {'categorical', 'sparse', 'binary'} or None, default None
        Filled in by ``compile`` from the loss. Only ``'binary'`` with ``K > 1`` outputs changes
        anything: each output is then scored as its own yes/no question (multi-label).

    Notes
    -----
    The AUC is the probability that a randomly drawn positive sample scores higher than a randomly
    drawn negative one (ties count one half). Binary task: the score is the probability of class 1
    (the second softmax unit, or the single sigmoid output). More than two classes: one AUC per class
    (that class against all others, scored by its probability), then their plain mean
    (``roc_auc_score(..., multi_class='ovr', average='macro')``). Sample weights weigh each pair.

    **Undefined AUC.** With only one class present in the targets (say, a validation batch with no
    positive case) no pair can be ranked: ``result()`` returns NaN and does not raise or warn.
    With more than two classes, classes absent from the targets are left out of the mean (where
    scikit-learn would raise); NaN only if no class can be scored. Scores that are not finite (a
    diverged model predicts NaN) cannot be ranked either: the AUC is then NaN as well, as the loss
    is, and training goes on (scikit-learn would raise).
    """

    def __init__(self, name="auc", target_kind=None):
        self.target_kind = _check_target_kind(target_kind, "AUC")
        super().__init__(name)

    def reset(self):
        self._truth, self._scores, self._weights = [], [], []

    def update(self, y_true, y_pred, sample_weight=None):
        """Store one batch: ``y_true`` targets, ``y_pred (N, K)`` probabilities, optional weights ``(N,)``."""
        truth, scores, _ = _one_vs_rest(y_true, y_pred, self.target_kind, self.name)
        if self._scores and self._scores[0].shape[1] != scores.shape[1]:
            raise ValueError(f"{self.name}: predictions changed from {self._scores[0].shape[1]} to "
                             f"{scores.shape[1]} columns within one epoch; call reset() between tasks")
        # Copies: the model reuses its output buffer from one batch to the next.
        self._truth.append(truth.copy())
        self._scores.append(np.array(scores, dtype=np.float64, copy=True))
        self._weights.append(_weights(sample_weight, truth.shape[0], self.name))

    def result(self):
        """ROC AUC over everything seen since ``reset()``: a float in [0, 1], or NaN if undefined."""
        if not self._truth:
            return math.nan
        from sklearn.metrics import roc_auc_score
        truth = np.concatenate(self._truth)
        scores = np.concatenate(self._scores)
        w = np.concatenate(self._weights)
        if not (np.isfinite(scores).all() and np.isfinite(w).all()):
            return math.nan
        aucs = []
        for j in range(truth.shape[1]):
            positive = truth[:, j]
            if w[positive].sum() > 0 and w[~positive].sum() > 0:
                aucs.append(roc_auc_score(positive, scores[:, j], sample_weight=w))
        return float(np.mean(aucs)) if aucs else math.nan


class _Counts(Metric):
    """Weighted true-positive, false-positive and false-negative counts per one-vs-rest column."""

    def __init__(self, name, thresholds=0.5, target_kind=None):
        owner = type(self).__name__
        if thresholds is None:  # Keras's default, meaning 0.5
            thresholds = 0.5
        if isinstance(thresholds, bool) or not isinstance(thresholds, (int, float, np.floating)) \
                or not 0 <= thresholds <= 1:
            raise ValueError(f"{owner}: invalid value for argument `thresholds`: expected one float in [0, 1], "
                             f"received {thresholds!r}")
        self.thresholds = float(thresholds)
        self.target_kind = _check_target_kind(target_kind, owner)
        super().__init__(name)

    def reset(self):
        self._tp = self._fp = self._fn = None
        self._seen = None
        self._mode = None

    def update(self, y_true, y_pred, sample_weight=None):
        """Count one batch: ``y_true`` targets, ``y_pred (N, K)`` probabilities, optional weights ``(N,)``."""
        truth, scores, mode = _one_vs_rest(y_true, y_pred, self.target_kind, self.name)
        if mode == "multiclass":
            predicted = np.argmax(scores, axis=1)[:, None] == np.arange(scores.shape[1])
        else:
            predicted = scores > self.thresholds
        w = _weights(sample_weight, truth.shape[0], self.name)[:, None]
        if self._tp is None:
            size = truth.shape[1]
            self._tp, self._fp, self._fn = np.zeros(size), np.zeros(size), np.zeros(size)
            self._seen = np.zeros(size, dtype=bool)
            self._mode = mode
        elif self._tp.shape[0] != truth.shape[1]:
            raise ValueError(f"{self.name}: predictions changed from {self._tp.shape[0]} to {truth.shape[1]} "
                             f"columns within one epoch; call reset() between tasks")
        self._tp += (w * (truth & predicted)).sum(axis=0)
        self._fp += (w * (~truth & predicted)).sum(axis=0)
        self._fn += (w * (truth & ~predicted)).sum(axis=0)
        self._seen |= (truth | predicted).any(axis=0)

    def _ratio(self, numerator, denominator):
        """``numerator / denominator`` per column, 0 where the denominator is 0 (as Keras and
        scikit-learn's ``zero_division=0``); then the positive class's value, or the macro average."""
        values = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        if self._mode == "binary":
            return float(values[0])
        return float(values[self._seen].mean()) if self._seen.any() else 0.0


class Precision(_Counts):
    """Precision, ``TP / (TP + FP)``: of the samples called positive, the fraction that are.

    Parameters
    ----------
    thresholds : float in [0, 1] or None, default 0.5
        None means 0.5, as in Keras. Binary and multi-label tasks: a sample is called positive when its score is above it
        (strictly, as Keras). For a 2-unit softmax the score is the probability of class 1, so 0.5
        gives exactly the arg-max decision. Not used with more than two classes: there each sample
        is called its arg-max class. (Keras's argument of the same name; one value, not a list.)
    name : str, default 'precision'
    target_kind : {'categorical', 'sparse', 'binary'} or None
        Filled in by ``compile``; see :class:`AUC`.

    Notes
    -----
    Binary: the precision of the positive class 1, as Keras and scikit-learn's
    ``average='binary'``. More than two classes: precision of each class, then their plain mean
    (``average='macro'``). Keras instead pools all (sample, class) cells into one micro count.
    Counts are weighted by ``sample_weight``. No sample called positive gives 0, not NaN.
    """

    def __init__(self, thresholds=0.5, name="precision", target_kind=None):
        super().__init__(name, thresholds, target_kind)

    def result(self):
        """Precision over everything counted since ``reset()``, a float in [0, 1]."""
        if self._tp is None:
            return 0.0
        return self._ratio(self._tp, self._tp + self._fp)


class Recall(_Counts):
    """Recall (sensitivity), ``TP / (TP + FN)``: of the positive samples, the fraction found.

    Parameters
    ----------
    thresholds : float in [0, 1], default 0.5
        As for :class:`Precision`.
    name : str, default 'recall'
    target_kind : {'categorical', 'sparse', 'binary'} or None
        Filled in by ``compile``; see :class:`AUC`.

    Notes
    -----
    Binary: the recall of the positive class 1, which clinicians call sensitivity (the
    specificity is the recall of class 0: see :mod:`tinycnn.report`). More than two classes: the
    plain mean of the per-class recalls (``average='macro'``, also called balanced accuracy).
    Counts are weighted by ``sample_weight``. No positive sample gives 0, not NaN.
    """

    def __init__(self, thresholds=0.5, name="recall", target_kind=None):
        super().__init__(name, thresholds, target_kind)

    def result(self):
        """Recall over everything counted since ``reset()``, a float in [0, 1]."""
        if self._tp is None:
            return 0.0
        return self._ratio(self._tp, self._tp + self._fn)


_BY_NAME = {
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
}

#: Metrics that work for every kind of target; ``get`` tells them the kind.
_ANY_TARGETS = {"auc": AUC, "precision": Precision, "recall": Recall}


def get(identifier, target_kind):
    """Resolve a metric name for a loss whose targets are ``target_kind``.

    ``'accuracy'`` (or ``'acc'``) picks the accuracy that fits the loss, as Keras does, and keeps the
    name ``accuracy`` in the logs. ``'auc'``, ``'precision'`` and ``'recall'`` work with every loss
    (names are case-insensitive). A metric instance is returned as it is; if it is an
    :class:`AUC`, :class:`Precision` or :class:`Recall` made without ``target_kind``, it is given
    the loss's.
    """
    if isinstance(identifier, Metric):
        if isinstance(identifier, (AUC, _Counts)) and identifier.target_kind is None:
            identifier.target_kind = target_kind
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            cls = {"categorical": CategoricalAccuracy, "sparse": SparseCategoricalAccuracy,
                   "binary": BinaryAccuracy}[target_kind]
            return cls(name="accuracy")
        if key in _BY_NAME:
            return _BY_NAME[key]()
        if key in _ANY_TARGETS:
            return _ANY_TARGETS[key](target_kind=target_kind)
    raise ValueError(f"Invalid value in argument `metrics`: expected one of "
                     f"{['accuracy'] + sorted(_BY_NAME) + sorted(_ANY_TARGETS)} or a tinycnn.metrics.Metric "
                     f"instance, received {identifier!r}")
