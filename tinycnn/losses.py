"""Losses with Keras's names, arguments and formulas; each gives a value and its gradient.

A loss is averaged over the batch as Keras does ("sum over batch size"): with per-sample losses
``l_i`` and sample weights ``w_i`` (1 by default), ``L = sum_i w_i l_i / N``.

When a model ends in a softmax (or sigmoid) and the loss takes probabilities (``from_logits=False``,
the default), the model hands the loss the *logits* instead and the loss folds the activation in:
``log softmax(z) = z - logsumexp(z)`` never takes ``log(0)``, so logits of +-1e4 give a finite loss
and the exact gradient ``p - y``. Keras does the same for cross-entropy; for focal loss Keras clips
the probabilities to ``[1e-7, 1 - 1e-7]`` first, which we only do when we are handed probabilities.
"""
import numpy as np

from .kernels import losses as K

EPSILON = 1e-7  # Keras's backend.epsilon(), for losses on probabilities


def _check_fraction(value, argument, owner, upper=1.0):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= upper:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float in "
                         f"[0, {upper}], received {value!r}")
    return float(value)


def _row(row):
    """One target row for an error message, shortened when long."""
    return np.array2string(np.asarray(row), threshold=8, edgeitems=3, precision=4)


class Loss:
    """Base class. Subclasses set ``kernel_logits`` / ``kernel_probs`` and ``reads_logits_of``."""

    #: The activation of a model's output layer whose logits this loss takes instead of its
    #: probabilities ('softmax', 'sigmoid' or None): exact, and no log(0).
    reads_logits_of = None
    #: 'categorical' (one-hot targets), 'sparse' (integer labels) or 'binary' (0/1 per output).
    target_kind = "categorical"

    def __init__(self, from_logits=False, label_smoothing=0.0, name=None):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(f"{type(self).__name__}: invalid value for argument `from_logits`: expected a bool, "
                             f"received {from_logits!r}")
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_fraction(label_smoothing, "label_smoothing", type(self).__name__)
        self.name = name or _snake_names[type(self)]

    # --- targets ----------------------------------------------------------------------------------

    def check_targets(self, y, n_outputs, owner="fit", argument="y"):
        """Validate ``y`` for a model with ``n_outputs`` outputs; return it as a float or int array.

        Targets are one-hot rows or probabilities: real numbers in [0, 1], and for the categorical
        losses each row sums to 1 (soft labels are fine). Raises a ValueError/TypeError that says
        what the loss expects and what came.
        """
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            hint = " (complex numbers are not targets: pass y.real)" if y.dtype.kind == "c" else ""
            raise TypeError(f"{owner}: loss '{self.name}' expects numeric targets, received dtype {y.dtype}{hint}")
        if y.ndim != 2 or y.shape[1] != n_outputs:
            hint = ""
            if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and n_outputs > 1):
                hint = (" (integer class labels? convert them with tinycnn.utils.to_categorical(y, "
                        f"{n_outputs}) or use loss='sparse_categorical_crossentropy')")
            raise ValueError(f"{owner}: loss '{self.name}' expects one-hot targets of shape (N, {n_outputs}) "
                             f"to match the model's output, received shape {y.shape}{hint}")
        if y.dtype.kind == "f":
            finite = np.isfinite(y).all(axis=1)
            if not finite.all():
                raise ValueError(f"{owner}: `{argument}` contains NaN or Inf, first in sample {int(np.argmin(finite))}")
        outside = ((y < 0) | (y > 1)).any(axis=1)
        if outside.any():
            i = int(np.argmax(outside))
            raise ValueError(f"{owner}: loss '{self.name}' expects targets in [0, 1] (one-hot rows or "
                             f"probabilities); sample {i} of `{argument}` is {_row(y[i])}")
        if self.target_kind == "categorical":
            sums = y.sum(axis=1, dtype=np.float64)
            off = np.abs(sums - 1) > 1e-3
            if off.any():
                i = int(np.argmax(off))
                hint = (" (a single output cannot hold one-hot rows: use activation='sigmoid' and "
                        "loss='binary_crossentropy')" if n_outputs == 1 else "")
                raise ValueError(f"{owner}: loss '{self.name}' expects each row of `{argument}` to sum to 1 "
                                 f"(one-hot or soft labels); sample {i} is {_row(y[i])}, which sums to "
                                 f"{sums[i]:.6g}{hint}")
        return y

    def targets(self, y, n_outputs, dtype):
        """Targets as the kernels take them: float ``(N, K)``, label smoothing applied."""
        t = np.asarray(y, dtype=dtype)
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / n_outputs
        return np.ascontiguousarray(t)

    # --- values and gradients ---------------------------------------------------------------------

    def value_and_grad(self, y_true, y_pred, sample_weight=None, logits=None):
        """Loss value and its gradient with respect to ``y_pred``.

        Parameters
        ----------
        y_true : ndarray (N, K), or (N,) integer labels for the sparse loss
        y_pred : ndarray (N, K)
            Probabilities, or logits when ``logits`` (default: ``self.from_logits``) is True.
        sample_weight : ndarray (N,), optional

        Returns
        -------
        value : float
            ``sum_i w_i l_i / N``
        per_sample : ndarray (N,) float64
            ``l_i`` (unweighted)
        grad : ndarray (N, K), dtype of ``y_pred``
        """
        logits = self.from_logits if logits is None else logits
        y_pred = np.ascontiguousarray(y_pred)
        n, k = y_pred.shape
        t = self.targets(y_true, k, y_pred.dtype)
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        w_over_n = np.ascontiguousarray(w / n)
        per_sample = np.empty(n)
        grad = np.empty_like(y_pred)
        if logits:
            self._from_logits(y_pred, t, w_over_n, per_sample, grad)
        else:
            self._from_probs(y_pred, t, w_over_n, per_sample, grad)
        return float(np.dot(w, per_sample) / n), per_sample, grad

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss value, Keras style: ``loss(y_true, y_pred)``."""
        y_pred = np.asarray(y_pred, dtype=np.float64)
        if y_pred.ndim != 2:
            raise ValueError(f"{self.name}: expected predictions of shape (N, K), received {y_pred.shape}")
        y_true = self.check_targets(y_true, y_pred.shape[1], owner=self.name)
        return self.value_and_grad(y_true, y_pred, sample_weight)[0]

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class CategoricalCrossentropy(Loss):
    """``l = -sum_k y_k log p_k`` on one-hot (or soft) targets, Keras's ``CategoricalCrossentropy``.

    Parameters
    ----------
    from_logits : bool, default False
    label_smoothing : float in [0, 1], default 0
        Targets become ``y * (1 - label_smoothing) + label_smoothing / K``.
    """

    reads_logits_of = "softmax"

    def _from_logits(self, z, t, w, per_sample, grad):
        K.softmax_cross_entropy(z, t, w, per_sample, grad)

    def _from_probs(self, p, t, w, per_sample, grad):
        K.probs_cross_entropy(p, t, EPSILON, w, per_sample, grad)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Cross-entropy with integer class labels ``(N,)`` (or ``(N, 1)``) as targets."""

    target_kind = "sparse"

    def __init__(self, from_logits=False, name=None):
        super().__init__(from_logits=from_logits, name=name)

    def check_targets(self, y, n_outputs, owner="fit", argument="y"):
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{owner}: loss '{self.name}' expects integer class labels, received dtype {y.dtype}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{owner}: loss '{self.name}' expects integer class labels of shape (N,) or (N, 1), "
                             f"received shape {y.shape}")
        if y.dtype.kind == "f":
            finite = np.isfinite(y)
            if not finite.all():
                raise ValueError(f"{owner}: `{argument}` contains NaN or Inf, first in sample {int(np.argmin(finite))}")
            fractional = y != np.round(y)
            if fractional.any():
                i = int(np.argmax(fractional))
                raise TypeError(f"{owner}: loss '{self.name}' expects integer class labels, received non-integer "
                                f"values of dtype {y.dtype} (sample {i} has label {y[i].item()!r})")
        bad = (y < 0) | (y >= n_outputs)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{owner}: labels must be in [0, {n_outputs}) for a model with {n_outputs} outputs; "
                             f"sample {i} has label {y[i].item()!r}")
        return y.astype(np.int64)

    def targets(self, y, n_outputs, dtype):
        y = np.asarray(y).reshape(-1).astype(np.int64)
        t = np.zeros((y.shape[0], n_outputs), dtype=dtype)
        t[np.arange(y.shape[0]), y] = 1
        return t

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class CategoricalFocalCrossentropy(Loss):
    """Focal loss, Keras's ``CategoricalFocalCrossentropy``: ``l = -sum_k a_k y_k (1 - p_k)^gamma log p_k``.

    Down-weights easy examples (``p_k`` near 1) so training focuses on hard ones; useful for
    imbalanced medical sets. With ``gamma=0`` and ``alpha=1`` it is cross-entropy.

    Parameters
    ----------
    alpha : float or sequence of floats, default 0.25
        Weight of every class (a float), or one weight per class (a list of K floats, as Keras does not
        offer but imbalanced sets need).
    gamma : float >= 0, default 2.0
    from_logits : bool, default False
    label_smoothing : float in [0, 1], default 0
    """

    reads_logits_of = "softmax"

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, name=None):
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing, name=name)
        alpha_arr = np.asarray(alpha, dtype=np.float64) if not isinstance(alpha, str) else None
        if alpha_arr is None or alpha_arr.ndim > 1 or not np.all(np.isfinite(alpha_arr)) or np.any(alpha_arr < 0):
            raise ValueError(f"{type(self).__name__}: invalid value for argument `alpha`: expected a float >= 0 "
                             f"or a list of per-class floats >= 0, received {alpha!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) or not 0 <= gamma < np.inf:
            raise ValueError(f"{type(self).__name__}: invalid value for argument `gamma`: expected a float >= 0, "
                             f"received {gamma!r}")
        self.alpha = alpha_arr
        self.gamma = float(gamma)

    def _alpha(self, k):
        if self.alpha.ndim == 0:
            return np.full(k, float(self.alpha))
        if self.alpha.shape[0] != k:
            raise ValueError(f"{self.name}: `alpha` has {self.alpha.shape[0]} per-class weights but the model "
                             f"has {k} outputs")
        return np.ascontiguousarray(self.alpha)

    def _from_logits(self, z, t, w, per_sample, grad):
        K.softmax_focal(z, t, self._alpha(z.shape[1]), self.gamma, w, per_sample, grad)

    def _from_probs(self, p, t, w, per_sample, grad):
        K.probs_focal(p, t, self._alpha(p.shape[1]), self.gamma, EPSILON, w, per_sample, grad)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha.tolist(), gamma=self.gamma)
        return config


class BinaryCrossentropy(Loss):
    """``l = -mean_k [y_k log p_k + (1 - y_k) log(1 - p_k)]``, for a sigmoid head (1 unit, or
    several independent yes/no outputs), Keras's ``BinaryCrossentropy``.

    Targets are 0/1 of shape ``(N, K)`` (or ``(N,)`` for one output). Label smoothing moves them
    towards 0.5: ``y * (1 - ls) + 0.5 * ls``.
    """

    reads_logits_of = "sigmoid"
    target_kind = "binary"

    def check_targets(self, y, n_outputs, owner="fit", argument="y"):
        y = np.asarray(y)
        if y.ndim == 1 and n_outputs == 1:
            y = y[:, None]
        return super().check_targets(y, n_outputs, owner, argument)

    def targets(self, y, n_outputs, dtype):
        t = np.asarray(y, dtype=dtype).reshape(-1, n_outputs)
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return np.ascontiguousarray(t)

    def _from_logits(self, z, t, w, per_sample, grad):
        K.sigmoid_binary_cross_entropy(z, t, w, per_sample, grad)

    def _from_probs(self, p, t, w, per_sample, grad):
        K.probs_binary_cross_entropy(p, t, EPSILON, w, per_sample, grad)


_snake_names = {
    CategoricalCrossentropy: "categorical_crossentropy",
    SparseCategoricalCrossentropy: "sparse_categorical_crossentropy",
    CategoricalFocalCrossentropy: "categorical_focal_crossentropy",
    BinaryCrossentropy: "binary_crossentropy",
}
_ALIASES = {name: cls for cls, name in _snake_names.items()}
LOSS_CLASSES = {cls.__name__: cls for cls in _snake_names}


def get(identifier):
    """A loss from a Keras name (``'categorical_crossentropy'``), a class name, or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _ALIASES:
            return _ALIASES[key]()
        if identifier in LOSS_CLASSES:
            return LOSS_CLASSES[identifier]()
    raise ValueError(f"Invalid value for argument `loss`: expected one of {sorted(_ALIASES)} or a "
                     f"tinycnn.losses.Loss instance, received {identifier!r}")
