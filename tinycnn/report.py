"""A classification report for a trained model: the numbers a clinician-researcher reads.

>>> from tinycnn.report import classification_report
>>> report = classification_report(model, X_test, y_test, class_names=['benign', 'malignant'])
>>> print(report)              # an aligned text table
>>> report.sensitivity, report.specificity, report.roc_auc
>>> json.dumps(report.to_dict())

Without a model, from predictions saved elsewhere: ``report_from_predictions(y_true, y_prob)``.

Definitions (``TP``, ``FP``, ``FN``, ``TN`` counted for one class against the rest):

* precision ``TP / (TP + FP)`` (positive predictive value), recall ``TP / (TP + FN)``,
  F1 ``2 * precision * recall / (precision + recall)``, support = number of true samples;
* accuracy = fraction of samples whose predicted class is the true class;
* binary tasks: sensitivity = recall of the positive class, specificity = recall of the negative
  class; a sample is called positive when the probability of the positive class is above
  ``threshold`` (0.5 by default, which for a 2-unit softmax is the arg-max decision);
* more than two classes: each sample is called its arg-max class;
* ROC AUC: binary, the probability that a positive case scores higher than a negative one;
  more than two classes, the mean of the one-vs-rest AUCs (scikit-learn's ``multi_class='ovr'``,
  ``average='macro'``). NaN when it is undefined (only one class present).

A ratio whose denominator is 0 (e.g. precision of a class never predicted) is reported as 0, as
scikit-learn's ``zero_division=0``; except sensitivity and specificity, which are NaN (None in
``to_dict``) when the data hold no sample of that class, since a clinician must not read 0 there.
"""
import math
from dataclasses import dataclass

import numpy as np

from .metrics import AUC


@dataclass
class ClassificationReport:
    """Results of :func:`classification_report` / :func:`report_from_predictions`.

    Attributes
    ----------
    class_names : list of str (K,)
    accuracy : float
    precision, recall, f1 : ndarray (K,) float
        Per class, in class order.
    support : ndarray (K,) int
        Number of samples whose true class is each class.
    confusion_matrix : ndarray (K, K) int
        ``confusion_matrix[i, j]`` = samples of true class ``i`` predicted as class ``j`` (rows are
        the true class, as scikit-learn).
    roc_auc : float
        Binary ROC AUC, or the macro one-vs-rest AUC; NaN if undefined.
    positive_class : int or None
        Binary tasks: the index of the positive class; None otherwise.
    sensitivity, specificity : float or None
        Binary tasks: recall of the positive class and of the negative class (NaN if the data hold
        no sample of that class); None otherwise.
    threshold : float or None
        Binary tasks: the probability above which a sample is called positive.
    positive_reason : str or None
        Binary tasks: why that class is the positive one ("given", or how the default was chosen).
    """

    class_names: list
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion_matrix: np.ndarray
    roc_auc: float
    positive_class: int = None
    sensitivity: float = None
    specificity: float = None
    threshold: float = None
    positive_reason: str = None

    @property
    def n_samples(self):
        return int(self.support.sum())

    @property
    def n_classes(self):
        return len(self.class_names)

    @property
    def is_binary(self):
        return self.positive_class is not None

    def macro_avg(self):
        """Plain means over classes: ``{'precision', 'recall', 'f1'}``."""
        return {"precision": float(self.precision.mean()), "recall": float(self.recall.mean()),
                "f1": float(self.f1.mean())}

    def weighted_avg(self):
        """Means over classes weighted by support: ``{'precision', 'recall', 'f1'}``."""
        w = self.support / max(1, self.support.sum())
        return {"precision": float(w @ self.precision), "recall": float(w @ self.recall), "f1": float(w @ self.f1)}

    def to_dict(self):
        """Plain Python values, ready for ``json.dumps``; an undefined value (NaN) becomes None."""
        def number(value):
            return None if value is None or math.isnan(value) else float(value)

        result = {
            "n_samples": self.n_samples,
            "accuracy": number(self.accuracy),
            "roc_auc": number(self.roc_auc),
            "classes": {name: {"precision": float(self.precision[k]), "recall": float(self.recall[k]),
                               "f1": float(self.f1[k]), "support": int(self.support[k])}
                        for k, name in enumerate(self.class_names)},
            "macro_avg": self.macro_avg(),
            "weighted_avg": self.weighted_avg(),
            "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                                 "labels": list(self.class_names), "counts": self.confusion_matrix.tolist()},
        }
        if self.is_binary:
            result.update({"positive_class": self.class_names[self.positive_class],
                           "positive_class_reason": self.positive_reason,
                           "threshold": self.threshold,
                           "sensitivity": number(self.sensitivity),
                           "specificity": number(self.specificity)})
        return result

    def __str__(self):
        names = [str(name) for name in self.class_names]
        first = max(len("weighted avg"), *(len(name) for name in names)) + 2
        header = "".join(title.rjust(width) for title, width in
                         (("precision", 11), ("recall", 9), ("f1-score", 10), ("support", 9)))

        def row(label, p, r, f, s):
            return f"{label:<{first}}{p:>11.3f}{r:>9.3f}{f:>10.3f}{s:>9d}"

        lines = [f"Classification report: {self.n_samples} samples, {self.n_classes} classes", "",
                 "class".ljust(first) + header]
        lines += [row(name, self.precision[k], self.recall[k], self.f1[k], int(self.support[k]))
                  for k, name in enumerate(names)]
        macro, weighted = self.macro_avg(), self.weighted_avg()
        lines += ["",
                  f"{'accuracy':<{first}}{'':>20}{self.accuracy:>10.3f}{self.n_samples:>9d}",
                  row("macro avg", macro["precision"], macro["recall"], macro["f1"], self.n_samples),
                  row("weighted avg", weighted["precision"], weighted["recall"], weighted["f1"], self.n_samples)]

        # Confusion matrix: one column per predicted class, wide enough for its name and counts.
        widths = [max(len(name), len(str(self.confusion_matrix.max()))) + 2 for name in names]
        corner = "true \\ predicted"
        left = max(first, len(corner) + 2)
        lines += ["", "Confusion matrix (rows: true class, columns: predicted class)",
                  corner.ljust(left) + "".join(name.rjust(w) for name, w in zip(names, widths))]
        for k, name in enumerate(names):
            lines.append(name.ljust(left) + "".join(str(c).rjust(w) for c, w in zip(self.confusion_matrix[k], widths)))

        label = "ROC AUC" if self.is_binary else "ROC AUC (one-vs-rest, macro)"
        auc = "n/a (undefined: only one class present)" if math.isnan(self.roc_auc) else f"{self.roc_auc:.3f}"
        pad = max(len(label), len("Positive class")) + 2
        lines += ["", f"{label:<{pad}}{auc}"]
        if self.is_binary:
            pos = self.positive_class
            neg = 1 - pos
            matrix, support = self.confusion_matrix, self.support
            why = "" if self.positive_reason in (None, "given") else f"; {self.positive_reason}"
            lines += ["Positive class".ljust(pad) + f"{names[pos]} (called positive when its probability > "
                      f"{self.threshold:g}{why})",
                      "Sensitivity".ljust(pad) + _ratio_text(self.sensitivity, matrix[pos, pos], support[pos], names[pos]),
                      "Specificity".ljust(pad) + _ratio_text(self.specificity, matrix[neg, neg], support[neg], names[neg])]
        return "\n".join(lines)


def _ratio_text(value, hits, total, name):
    if total == 0:
        return f"n/a (no {name} samples)"
    return f"{value:.3f}  ({int(hits)} of {int(total)} {name} samples recognised as {name})"


# --- which class is positive ----------------------------------------------------------------------

#: Words that name the absence of disease: a class named with one is never the default positive class.
NEGATIVE_WORDS = frozenset({"uninfected", "normal", "benign", "healthy", "negative", "control", "no", "non", "not",
                            "none", "absent", "clean", "noninfected", "nonmalignant", "unaffected"})


def _names_a_negative_finding(name):
    words = "".join(c if c.isalnum() else " " for c in str(name).lower()).split()
    return any(word in NEGATIVE_WORDS for word in words)


def default_positive_class(class_names):
    """The class a binary report calls positive when none is given, and why: ``(index, reason)``.

    Sensitivity is the recall of the disease, so "positive" must be the disease. By label order
    alone (class 1, scikit-learn's and Keras's convention) a data set whose labels are
    ``['malignant', 'benign']`` (BreastMNIST) would report the recall of *benign* as sensitivity.
    So: when exactly one of the two names names a negative finding (a word such as normal, benign,
    healthy, uninfected, negative, no, control: :data:`NEGATIVE_WORDS`), the other class is
    positive; otherwise class 1. When both names look negative, nothing is guessed.

    Parameters
    ----------
    class_names : list of two str, or None

    Returns
    -------
    (int, str)

    Raises
    ------
    ValueError
        Both names name a negative finding: the caller must say which class is positive.
    """
    if class_names is None:
        return 1, "class 1 by label order (no class names given); pass positive_class to choose"
    negative = [_names_a_negative_finding(name) for name in class_names]
    if negative == [True, False] or negative == [False, True]:
        k = negative.index(False)
        return k, f"chosen because '{class_names[1 - k]}' names a negative finding"
    if all(negative):
        raise ValueError(f"report: both classes {list(class_names)} name a negative finding, so which one is "
                         f"positive cannot be guessed; pass positive_class")
    return 1, f"'{class_names[1]}' by label order (class 1); pass positive_class to choose"


# --- input checks ---------------------------------------------------------------------------------

def _check_probabilities(y_prob):
    """Class probabilities ``(N, K)``, K >= 2; a sigmoid column ``(N,)``/``(N, 1)`` becomes ``[1 - p, p]``."""
    p = np.asarray(y_prob)
    if p.dtype.kind not in "biuf":
        raise TypeError(f"report: `y_prob` must be a numeric array of probabilities, received dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"report: `y_prob` must have shape (N,) or (N, K) with N > 0, received {np.shape(y_prob)}")
    if not np.isfinite(p).all():
        raise ValueError("report: `y_prob` contains NaN or Inf")
    if (p < -1e-6).any() or (p > 1 + 1e-6).any():
        raise ValueError("report: `y_prob` must hold probabilities in [0, 1] (the output of a softmax or sigmoid "
                         f"head), received values from {p.min():.4g} to {p.max():.4g}")
    if p.shape[1] == 1:
        return np.hstack([1 - p, p])
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > 1e-3:
        i = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"report: each row of `y_prob` (N, {p.shape[1]}) must be class probabilities summing to 1 "
                         f"(a softmax head); row {i} sums to {sums[i]:.4g}. Multi-label (several sigmoid outputs) "
                         f"is not supported by the report")
    return p


def _check_labels(y_true, n, k):
    """Integer labels ``(N,)`` from labels ``(N,)``/``(N, 1)`` or one-hot rows ``(N, K)``."""
    y = np.asarray(y_true)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"report: `y` must be integer labels or one-hot rows, received dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == k and k > 1:
        labels = np.argmax(y, axis=1)
    elif y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        y = y.reshape(-1)
        if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
            raise ValueError("report: `y` given as labels must hold whole numbers (class indices), received "
                             "non-integer values")
        labels = y.astype(np.int64)
        bad = (labels < 0) | (labels >= k)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"report: labels must be class indices in [0, {k}); sample {i} has label {y[i].item()!r}")
    else:
        raise ValueError(f"report: `y` must be integer labels (N,) or (N, 1), or one-hot rows (N, {k}), "
                         f"received shape {y.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"report: `y` has {labels.shape[0]} samples but the predictions have {n}; they must match")
    return labels


def _check_names(class_names, k):
    if class_names is None:
        return [f"class {i}" for i in range(k)]
    names = [str(name) for name in class_names]
    if len(names) != k:
        raise ValueError(f"report: `class_names` must name the model's {k} classes in order, received "
                         f"{len(names)}: {names}")
    if len(set(names)) != k:
        raise ValueError(f"report: `class_names` must be distinct, received {names}")
    return names


# --- the report -----------------------------------------------------------------------------------

def report_from_predictions(y_true, y_prob, class_names=None, positive_class=None, threshold=0.5):
    """Classification report from true classes and predicted probabilities, without a model.

    Parameters
    ----------
    y_true : ndarray (N,) or (N, 1) int, or (N, K) one-hot
    y_prob : ndarray (N, K)
        Class probabilities (softmax rows), or ``(N,)`` / ``(N, 1)`` the probability of class 1
        from a sigmoid head.
    class_names : list of str (K,), optional
        Names printed in the table; default ``'class 0'``, ``'class 1'``, ...
    positive_class : int, optional
        Binary tasks: which class is "positive" (the disease), for sensitivity and specificity.
        Default: :func:`default_positive_class` of ``class_names`` (never a class named "normal",
        "benign", "healthy", ...; otherwise class 1, as Keras and scikit-learn); the report states
        which it took and why. Ignored with more than two classes.
    threshold : float in [0, 1], default 0.5
        Binary tasks: a sample is called positive when its positive-class probability is above it.
        Lower it to trade specificity for sensitivity. Must stay 0.5 with more than two classes
        (they are decided by arg-max).

    Returns
    -------
    ClassificationReport
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probs = _check_probabilities(y_prob)
    n, k = probs.shape
    labels = _check_labels(y_true, n, k)
    names = _check_names(class_names, k)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold <= 1:
        raise ValueError(f"report: invalid value for argument `threshold`: expected a float in [0, 1], "
                         f"received {threshold!r}")
    binary = k == 2
    if binary:
        reason = "given"
        if positive_class is None:
            positive_class, reason = default_positive_class(None if class_names is None else names)
        if isinstance(positive_class, bool) or not isinstance(positive_class, (int, np.integer)) \
                or positive_class not in (0, 1):
            raise ValueError(f"report: invalid value for argument `positive_class`: expected 0 or 1 for a "
                             f"two-class task, received {positive_class!r}")
        positive_class = int(positive_class)
        called_positive = probs[:, positive_class] > threshold
        predicted = np.where(called_positive, positive_class, 1 - positive_class)
    else:
        if threshold != 0.5:
            raise ValueError(f"report: argument `threshold` applies to two-class tasks only; with {k} classes "
                             f"each sample is called its most probable class, received threshold={threshold!r}")
        predicted = np.argmax(probs, axis=1)

    classes = np.arange(k)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                                     zero_division=0)
    matrix = confusion_matrix(labels, predicted, labels=classes)
    auc = AUC(target_kind="sparse")
    auc.update(labels, probs)  # binary: the AUC does not depend on which class is called positive
    report = ClassificationReport(
        class_names=names, accuracy=float(np.trace(matrix) / n), precision=precision.astype(np.float64),
        recall=recall.astype(np.float64), f1=f1.astype(np.float64), support=support.astype(np.int64),
        confusion_matrix=matrix.astype(np.int64), roc_auc=auc.result())
    if binary:
        report.positive_class = positive_class
        report.positive_reason = reason
        report.threshold = float(threshold)
        # Undefined (NaN), not 0, when the test set holds no sample of that class.
        report.sensitivity = float(recall[positive_class]) if support[positive_class] else math.nan
        report.specificity = float(recall[1 - positive_class]) if support[1 - positive_class] else math.nan
    return report


def classification_report(model, x, y, class_names=None, batch_size=32, positive_class=None, threshold=0.5):
    """Predict ``x`` with ``model`` and report how well it classifies: see :func:`report_from_predictions`.

    Parameters
    ----------
    model : Sequential
        A trained classifier ending in a softmax (``(N, K)``) or a single sigmoid unit (``(N, 1)``).
    x : ndarray (N, ...)
        Inputs, as for ``model.predict``.
    y : ndarray (N,) or (N, 1) int, or (N, K) one-hot
        True classes.
    class_names, positive_class, threshold
        As for :func:`report_from_predictions`.
    batch_size : int, default 32

    Returns
    -------
    ClassificationReport
        ``print(report)`` shows the table; ``report.to_dict()`` gives JSON-ready values.
    """
    probs = model.predict(x, batch_size=batch_size)
    return report_from_predictions(y, probs.reshape(probs.shape[0], -1), class_names=class_names,
                                   positive_class=positive_class, threshold=threshold)
