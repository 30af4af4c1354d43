"""tinycnn as a scikit-learn citizen: :class:`CNNClassifier` and a cross-validation report.

A floor-5 integration: it uses only a model's public face (a builder function or a model,
``compile``, ``fit``, ``predict``, ``recalibrate_batchnorm``, ``get_config``) and the
archive of :mod:`tinycnn.saving`.

>>> from sklearn.model_selection import GridSearchCV, cross_val_score
>>> from tinycnn.sklearn import CNNClassifier
>>> clf = CNNClassifier(epochs=10, random_state=0)                  # reference_model by default
>>> cross_val_score(clf, X, y, cv=5, scoring='roc_auc')              # X: (n, h, w, c) images
>>> GridSearchCV(clf, {'model__augment': [False, True], 'optimizer__learning_rate': [1e-3, 3e-4]})

Routed parameters
-----------------
As in scikeras and skorch, a parameter named ``<route>__<name>`` goes to one component:

* ``model__<name>``: keyword argument of the builder function (``model__augment=True`` calls
  ``reference_model(..., augment=True)``);
* ``optimizer__<name>``: argument of the optimizer (``optimizer__learning_rate=3e-4``);
* ``loss__<name>``: argument of the loss (``loss__label_smoothing=0.1``).

They are ordinary parameters for ``get_params``/``set_params``/``clone``, so grid searches can
vary them. The builder also receives, when its signature names them and no ``model__`` value is
given, ``input_shape`` (``X.shape[1:]``), ``num_classes`` (the outputs the loss needs: the number of
classes, or 1 for ``binary_crossentropy``) and ``seed`` (from ``random_state``).

Pickling
--------
joblib and Dask ship estimators to other processes by pickling them. A fitted network is never
pickled as Python objects: ``__getstate__`` writes it into tinycnn's model archive (JSON
configuration + ``.npz`` arrays) and pickles those bytes; ``__setstate__`` reads them back with
:func:`tinycnn.saving.load_model`, which refuses pickled arrays and unknown classes. A model
given as the ``model`` parameter is pickled as its JSON configuration (``get_config``).
"""
import contextlib
import copy
import inspect
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import losses as losses_module
from . import optimizers as optimizers_module
from .layers import LAYER_CLASSES
from .model import Model, Sequential, model_from_config
from .models import reference_model
from .report import report_from_predictions
from .rng import set_seed
from .saving import load_model, save_model

__all__ = ["CNNClassifier", "cross_validate_report", "CrossValidationReport"]

#: Prefixes of routed parameters and what receives them.
ROUTES = ("model", "optimizer", "loss")

# ``random_state`` seeds tinycnn's one process-wide generator (``tinycnn.set_seed``), so two
# seeded fits in two threads of one process would draw from it in an unpredictable interleaving.
# They take turns instead; parallel fits belong in separate processes (joblib's default, Dask).
_SEEDED_FIT = threading.RLock()


@contextlib.contextmanager
def _seeded(seed):
    """Run the block with tinycnn seeded by ``seed`` (nothing is seeded for None).

    ``tinycnn.set_seed`` also seeds Python's and NumPy's global generators, as Keras's does; an
    estimator should not, so their states are put back afterwards.
    """
    if seed is None:
        yield
        return
    with _SEEDED_FIT:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        set_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _is_routed(name):
    route, sep, rest = name.partition("__")
    return bool(sep and rest) and route in ROUTES


# --- the archive as bytes ------------------------------------------------------------------------

def _model_to_bytes(model):
    """The model's archive (see :mod:`tinycnn.saving`) as bytes. ``save_model`` writes files only,
    so the archive goes through a private temporary folder."""
    folder = tempfile.mkdtemp(prefix="tinycnn-")
    try:
        path = os.path.join(folder, "model.npz")
        save_model(model, path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _model_from_bytes(data):
    """Inverse of :func:`_model_to_bytes`: the archive is checked by ``load_model`` as any file is."""
    folder = tempfile.mkdtemp(prefix="tinycnn-")
    try:
        path = os.path.join(folder, "model.npz")
        with open(path, "wb") as f:
            f.write(data)
        return load_model(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _architecture(model):
    """A model's architecture as plain JSON text: ``model.get_config()`` once built; an unbuilt
    ``Sequential``'s layers as ``[{"class_name", "config"}, ...]``."""
    if model.built:
        return json.dumps(model.get_config())
    return json.dumps([{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in model.layers])


def _from_architecture(text):
    """A new model (fresh weights) from :func:`_architecture`'s text; tinycnn's own layer classes only."""
    description = json.loads(text)
    if isinstance(description, dict):
        return model_from_config(description)
    layers = []
    for spec in description:
        name = spec["class_name"]
        if name not in LAYER_CLASSES:
            raise ValueError(f"CNNClassifier: cannot restore layer class {name!r}: not a tinycnn layer "
                             f"(allowed: {sorted(LAYER_CLASSES)})")
        layers.append(LAYER_CLASSES[name].from_config(spec["config"]))
    return Sequential(layers)


class _PickledArchitecture(str):
    """Marks the ``model`` parameter pickled as layer configuration (JSON text)."""


# --- the estimator -------------------------------------------------------------------------------

class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A tinycnn network as a scikit-learn classifier (scikeras's ``KerasClassifier``, skorch's
    ``NeuralNetClassifier``).

    Parameters
    ----------
    model : callable or Model, default :func:`tinycnn.models.reference_model`
        A function returning an (uncompiled) ``Sequential`` or functional ``Model`` (one input),
        called at every fresh ``fit`` with ``input_shape``, ``num_classes``, ``seed`` (those its
        signature names) and the ``model__`` parameters; or a model, whose architecture is copied
        from its configuration (new weights) at every fresh ``fit``, so the instance given is never
        trained itself.
    optimizer : str, Optimizer class or instance, default 'adam'
        Built anew for every fresh fit, with the ``optimizer__`` parameters applied.
    loss : str, Loss class or instance, default 'categorical_crossentropy'
        ``'categorical_crossentropy'`` (one-hot targets), ``'sparse_categorical_crossentropy'``
        (integer targets), ``'categorical_focal_crossentropy'``, or ``'binary_crossentropy'``
        (two classes, one sigmoid output); ``loss__`` parameters applied.
    epochs : int, default 10
        Passes over the data per ``fit``; ``partial_fit`` always does one.
    batch_size : int, default 32
        For training and prediction.
    class_weight : dict {label: weight}, 'balanced' or None
        Keys are labels as they appear in ``y`` (scikit-learn's convention, not class indices).
    validation_split : float in [0, 1), default 0.0
        Passed to ``Sequential.fit`` (the last fraction of the data, as Keras).
    callbacks : list of Callback, optional
        Deep-copied for each fit, so the instances given stay untouched and picklable.
    random_state : int, RandomState or None
        Seeds weights, shuffling, dropout and augmentation of each fit (``tinycnn.set_seed``, then
        Python's and NumPy's global generators are restored). The same seed repeats a fit bit for
        bit at a fixed thread count. None: nothing is seeded.
    verbose : int, default 0
        ``Sequential.fit``'s progress display.
    warm_start : bool, default False
        ``fit`` continues training the network of the previous fit instead of building a new one.
    recalibrate_batchnorm : bool, default True
        After each fit, set the batch-norm moving statistics from the training images
        (``Sequential.recalibrate_batchnorm``). Not in Keras: with its momentum of 0.99 a few epochs
        on a few hundred images leave the statistics near their initial values and inference near
        chance (README, "Small data sets and batch norm"). No effect on networks without batch norm.
    **routed
        ``model__*``, ``optimizer__*``, ``loss__*`` (see the module docstring).

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
        The labels seen in ``fit`` (or given to the first ``partial_fit``), sorted.
    model_ : Sequential
        The trained network; its outputs are in the order of ``classes_``.
    history_ : dict of lists
        Keras's ``History.history`` over every epoch trained so far.
    n_features_in_ : int
        ``X.shape[1]``, as scikit-learn defines it (the image height for (n, h, w, c) images).
    input_shape_ : tuple
        ``X.shape[1:]``, the per-sample shape the network was built for.

    Notes
    -----
    ``X`` is an array of samples of any per-sample shape the network accepts: (n, h, w, c) images
    for the reference model; (n, features) works with a builder that starts with ``Dense``, which
    is how scikit-learn's generic estimator checks run (tests/test_sklearn.py). Predictions are
    per sample; ``predict``/``predict_proba`` may be called from several threads at once (they take
    turns batch by batch, README "Threads"); fitting one estimator from two threads is refused.
    """

    def __init__(self, model=reference_model, *, optimizer="adam", loss="categorical_crossentropy", epochs=10,
                 batch_size=32, class_weight=None, validation_split=0.0, callbacks=None, random_state=None,
                 verbose=0, warm_start=False, recalibrate_batchnorm=True, **routed):
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.validation_split = validation_split
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.recalibrate_batchnorm = recalibrate_batchnorm
        # Checked by fit, not here: scikit-learn estimators validate their parameters in fit.
        self._routed = dict(routed)

    # --- parameters ------------------------------------------------------------------------------

    def get_params(self, deep=True):
        """The constructor's parameters and the routed ``model__``/``optimizer__``/``loss__`` ones."""
        params = super().get_params(deep=deep)
        params.update(self._routed)
        return params

    def set_params(self, **params):
        """Set parameters; routed ones (``model__filters=16``) are kept for the next fresh fit."""
        own = {}
        for name, value in params.items():
            if _is_routed(name):
                self._routed[name] = value
            else:
                own[name] = value
        return super().set_params(**own)

    def _check_routed(self, where):
        unknown = sorted(name for name in self._routed if not _is_routed(name))
        if unknown:
            raise ValueError(f"CNNClassifier.{where}: unknown parameter(s) {unknown}; besides its own parameters "
                             f"CNNClassifier takes routed ones named model__*, optimizer__* or loss__*")

    def _routed_to(self, route):
        prefix = route + "__"
        return {name[len(prefix):]: value for name, value in self._routed.items() if name.startswith(prefix)}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # --- pickling through the archive --------------------------------------------------------------

    def __getstate__(self):
        state = dict(super().__getstate__())
        if "model_" in state:
            state["model_"] = _model_to_bytes(state["model_"])
        if isinstance(state.get("model"), Model):
            state["model"] = _PickledArchitecture(_architecture(state["model"]))
        return state

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("model_"), bytes):
            state["model_"] = _model_from_bytes(state["model_"])
        if isinstance(state.get("model"), _PickledArchitecture):
            state["model"] = _from_architecture(state["model"])
        super().__setstate__(state)

    # --- building ----------------------------------------------------------------------------------

    def _component(self, module, value, route):
        """A new optimizer or loss from ``value`` (name, class or instance) and its routed arguments."""
        if isinstance(value, type):
            try:
                value = value()
            except TypeError as e:
                raise TypeError(f"CNNClassifier: `{route}` class {value.__name__} cannot be created without "
                                f"arguments ({e})") from None
        base = module.get(value)  # raises ValueError naming the allowed values
        config = base.get_config()
        extra = self._routed_to(route)
        unknown = sorted(set(extra) - set(config))
        if unknown:
            raise ValueError(f"CNNClassifier: {', '.join(f'{route}__{k}' for k in unknown)} is not an argument of "
                             f"{type(base).__name__} (its arguments: {sorted(config)})")
        return type(base)(**{**config, **extra})

    def _new_network(self, input_shape, n_outputs, seed):
        """A fresh, uncompiled model (``Sequential`` or functional ``Model``) from the ``model`` parameter."""
        routed = self._routed_to("model")
        if isinstance(self.model, Model):
            if routed:
                raise ValueError(f"CNNClassifier: model__ parameters {sorted(routed)} need `model` to be a builder "
                                 f"function; a model instance takes no arguments")
            return _from_architecture(_architecture(self.model))  # same architecture, fresh weights
        if not callable(self.model):
            raise TypeError(f"CNNClassifier: `model` must be a function returning a tinycnn model, or a "
                            f"model (Sequential or Model), received {self.model!r}")
        signature = inspect.signature(self.model).parameters
        any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
        unknown = sorted(name for name in routed if name not in signature and not any_keyword)
        if unknown:
            raise ValueError(f"CNNClassifier: {', '.join('model__' + k for k in unknown)} is not an argument of the "
                             f"builder {getattr(self.model, '__name__', self.model)!r} (its arguments: "
                             f"{list(signature)})")
        meta = {"input_shape": tuple(input_shape), "num_classes": n_outputs, "seed": seed}
        kwargs = {name: value for name, value in meta.items()
                  if (name in signature or any_keyword) and name not in routed and value is not None}
        network = self.model(**kwargs, **routed)
        if not isinstance(network, Model):
            raise TypeError(f"CNNClassifier: the builder {getattr(self.model, '__name__', self.model)!r} must return "
                            f"a tinycnn model (Sequential or Model), it returned {type(network).__name__}")
        return network

    def _compile(self, network, loss, input_shape, n_outputs):
        optimizer = self._component(optimizers_module, self.optimizer, "optimizer")
        network.compile(optimizer=optimizer, loss=loss)
        if not network.built:
            network.build(input_shape)
        units = network.output_shape[1:]
        if units != (n_outputs,):
            raise ValueError(f"CNNClassifier.fit: the network outputs shape {(None,) + units} per batch, but "
                             f"{len(self.classes_)} classes with loss {type(loss).__name__} need (None, {n_outputs}): "
                             f"end the builder's model with Dense(num_classes, ...) using the `num_classes` it "
                             f"receives")
        return network

    # --- data --------------------------------------------------------------------------------------

    def _check_X(self, X, where, reset):
        X = validate_data(self, X, reset=reset, allow_nd=True, dtype="numeric")
        if not reset and X.shape[1:] != self.input_shape_:
            raise ValueError(f"CNNClassifier.{where}: X must have per-sample shape {self.input_shape_} (as in fit), "
                             f"received X of shape {X.shape}")
        return X

    def _targets(self, encoded):
        """Integer class indices in the form the loss wants."""
        kind = self.model_.loss.target_kind
        if kind == "sparse":
            return encoded
        if kind == "binary":
            return encoded[:, None].astype(np.float32)
        return np.eye(len(self.classes_), dtype=np.float32)[encoded]

    def _n_outputs(self, loss):
        """Output units the loss needs: one per class, or one sigmoid unit for a binary loss."""
        if loss.target_kind == "binary":
            if len(self.classes_) != 2:
                raise ValueError(f"CNNClassifier.fit: loss binary_crossentropy needs exactly 2 classes, y holds "
                                 f"{len(self.classes_)}: use categorical_crossentropy")
            return 1
        return len(self.classes_)

    def _class_weight(self):
        cw = self.class_weight
        if cw is None or (isinstance(cw, str) and cw == "balanced"):
            return cw
        if not isinstance(cw, dict):
            raise ValueError(f"CNNClassifier: `class_weight` must be None, 'balanced' or a dict {{label: weight}}, "
                             f"received {cw!r}")
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        unknown = [label for label in cw if label not in index]
        if unknown:
            raise ValueError(f"CNNClassifier: `class_weight` names labels {unknown} that are not classes of y "
                             f"{self.classes_.tolist()}")
        return {index[label]: weight for label, weight in cw.items()}

    def _seed(self, call):
        """An int seed for this fit from ``random_state`` (None stays None); ``call`` counts the
        partial fits, so that each one shuffles differently but repeatably."""
        if self.random_state is None:
            return None
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            base = int(self.random_state)
        else:
            base = int(check_random_state(self.random_state).randint(2**31))
        return int(np.random.SeedSequence([base, call]).generate_state(1)[0]) if call else base

    # --- fit ---------------------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Train on images ``X`` (n, ...) with labels ``y`` (n,) of any type; returns ``self``.

        A new network is built and trained for ``epochs`` (unless ``warm_start`` and already
        fitted, then the same network trains on). ``sample_weight`` (n,) weighs each sample's loss.
        """
        return self._fit(X, y, sample_weight, self.epochs, warm=self.warm_start, classes=None, where="fit")

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``(X, y)``, continuing the current network (built on the first call).

        ``classes``: every label the classifier will ever see; needed on the first call when that
        batch of data does not hold all of them (scikit-learn's convention).
        """
        return self._fit(X, y, sample_weight, 1, warm=True, classes=classes, where="partial_fit")

    def _fit(self, X, y, sample_weight, epochs, warm, classes, where):
        fresh = not (warm and hasattr(self, "model_"))
        self._check_routed(where)
        if y is None:
            raise ValueError(f"CNNClassifier.{where}: requires y to be passed, but the target y is None")
        X, y = validate_data(self, X, y, reset=fresh, allow_nd=True, dtype="numeric")
        check_classification_targets(y)
        if sample_weight is not None:
            w = np.asarray(sample_weight)
            if w.dtype.kind in "biuf" and w.size and not w.any():
                raise ValueError(f"CNNClassifier.{where}: `sample_weight` is zero for every sample: nothing to learn")
        if fresh:
            self.input_shape_ = X.shape[1:]
            labels = y if classes is None else np.asarray(classes)
            self.classes_ = np.unique(labels)
            if len(self.classes_) < 2:
                raise ValueError(f"CNNClassifier.{where}: y holds only one class ({self.classes_[0]!r}); a classifier "
                                 f"needs at least 2 classes to learn")
        elif X.shape[1:] != self.input_shape_:
            raise ValueError(f"CNNClassifier.{where}: X must have per-sample shape {self.input_shape_} (as before), "
                             f"received X of shape {X.shape}")
        encoded = np.searchsorted(self.classes_, y)
        seen = (encoded < len(self.classes_)) & (self.classes_[np.minimum(encoded, len(self.classes_) - 1)] == y)
        if not seen.all():
            raise ValueError(f"CNNClassifier.{where}: y holds labels {np.unique(y[~seen]).tolist()} not among the "
                             f"classes {self.classes_.tolist()} of the first fit; give every label to the first "
                             f"partial_fit with `classes=`")
        seed = self._seed(0 if fresh else self._fits)
        with _seeded(seed):
            if fresh:
                loss = self._component(losses_module, self.loss, "loss")
                n_outputs = self._n_outputs(loss)
                network = self._new_network(X.shape[1:], n_outputs, seed)
                self.model_ = self._compile(network, loss, X.shape[1:], n_outputs)
                self.history_ = {}
                self._fits = 0
            history = self.model_.fit(X, self._targets(encoded), batch_size=self.batch_size, epochs=epochs,
                                      verbose=self.verbose, callbacks=copy.deepcopy(self.callbacks),
                                      validation_split=self.validation_split, class_weight=self._class_weight(),
                                      sample_weight=sample_weight)
            if self.recalibrate_batchnorm:
                self.model_.recalibrate_batchnorm(X, batch_size=self.batch_size)
        self._fits += 1
        for key, values in history.history.items():
            self.history_.setdefault(key, []).extend(values)
        return self

    # --- predict -----------------------------------------------------------------------------------

    def predict_proba(self, X):
        """Class probabilities (n, n_classes), float64, columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        X = self._check_X(X, "predict_proba", reset=False)
        probs = self.model_.predict(X, batch_size=self.batch_size).astype(np.float64)
        if probs.shape[1] == 1:  # one sigmoid unit: the probability of classes_[1]
            probs = np.hstack([1.0 - probs, probs])
        return probs

    def predict(self, X):
        """The most probable label of each sample, from ``classes_``."""
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# --- cross-validation report ---------------------------------------------------------------------

@contextlib.contextmanager
def _thread_count(threads):
    """Run the block with ``threads`` Numba threads (at most the pool's size) and as many BLAS
    threads; yield the Numba count used. Both matter for bit-identical results: with one Numba
    thread tinycnn's layers call a threaded BLAS, whose own thread count changes its sums."""
    import numba
    from threadpoolctl import threadpool_limits
    before = numba.get_num_threads()
    if threads is None:
        yield before
        return
    used = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(used)
    try:
        with threadpool_limits(limits=used, user_api="blas"):
            yield used
    finally:
        numba.set_num_threads(before)


def _run_fold(estimator, X, y, train, held_out, X_test, threads):
    """Fit one fold; return the held-out and test probabilities, the seconds and the threads used."""
    start = time.perf_counter()
    with _thread_count(threads) as used:
        estimator.fit(X[train], y[train])
        held_out_probs = estimator.predict_proba(X[held_out])
        test_probs = None if X_test is None else estimator.predict_proba(X_test)
    return held_out_probs, test_probs, estimator.classes_, time.perf_counter() - start, used


#: Figures of each fold summarised as mean and standard deviation.
CV_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")


@dataclass
class CrossValidationReport:
    """What :func:`cross_validate_report` found.

    Attributes
    ----------
    folds : list of dict
        One row per fold: ``fold``, ``n_train``, ``n_held_out``, ``seed``, ``seconds``, ``threads``,
        the :data:`CV_METRICS` on the fold's held-out part, and ``test_roc_auc`` when a test split
        was given.
    summary : dict {metric: {'mean', 'sd'}}
        Over folds; ``sd`` is the sample standard deviation (n - 1). Sensitivity and specificity
        are for two classes only (None otherwise).
    test : ClassificationReport or None
        The test split scored by the mean of the folds' predicted probabilities.
    test_probabilities : ndarray (n_test, n_classes) or None
        That mean.
    classes : list
        Labels in column order; ``positive_class`` the one whose recall is the sensitivity.
    """

    folds: list
    summary: dict
    classes: list
    positive_class: object = None
    test: object = None
    test_probabilities: np.ndarray = field(default=None, repr=False)

    def to_dict(self):
        """Plain JSON data (undefined values as None), as written to ``report.json``."""
        def number(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        return {"classes": [str(c) for c in self.classes],
                "positive_class": None if self.positive_class is None else str(self.positive_class),
                "summary": {k: {s: number(v) for s, v in stats.items()} for k, stats in self.summary.items()},
                "folds": [{k: number(v) for k, v in row.items()} for row in self.folds],
                "test": None if self.test is None else self.test.to_dict()}

    def __str__(self):
        columns = ["fold", "n_train", "n_held_out", *CV_METRICS] + (["test_roc_auc"] if self.test is not None else [])
        columns.append("seconds")

        def cell(v, column):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "-"
            return f"{v:.0f}" if column == "seconds" else f"{v:.3f}" if isinstance(v, float) else str(v)

        lines = ["  ".join(f"{c:>12s}" for c in columns)]
        lines += ["  ".join(f"{cell(row.get(c), c):>12s}" for c in columns) for row in self.folds]
        lines.append("")
        for metric, stats in self.summary.items():
            if stats["mean"] is not None:
                lines.append(f"{metric:>12s}: {stats['mean']:.3f} ± {stats['sd']:.3f} (mean ± sd over "
                             f"{len(self.folds)} folds)")
        if self.test is not None:
            lines.append(f"\nTest split, mean of the {len(self.folds)} fold models' probabilities:\n{self.test}")
        return "\n".join(lines)


def cross_validate_report(estimator, X, y, *, folds=5, seed=0, X_test=None, y_test=None, positive_class=None,
                          class_names=None, threads=None, n_jobs=None, verbose=1):
    """Stratified k-fold cross-validation of a classifier, reported as a study reports it.

    Each fold trains a clone of ``estimator`` with its own seed (from ``seed``) on k-1 parts and
    scores the held-out part: ROC AUC, accuracy, and for two classes sensitivity and specificity.
    The report gives each fold and their mean ± standard deviation. When a test split is given,
    every fold's model scores it too, and the mean of their probabilities is reported separately
    (an ensemble of the k models; it is not part of the cross-validated estimate).

    Parameters
    ----------
    estimator : CNNClassifier (or any scikit-learn classifier with ``random_state`` and ``predict_proba``)
    X, y : arrays (n, ...) and (n,)
        All images meant for training (e.g. the training and validation splits together).
    folds : int, default 5
    seed : int, default 0
        Seeds the split and, through ``random_state``, every fold; the same seed repeats the study.
    X_test, y_test : optional
        A held-out test split, scored once per fold model.
    positive_class : label, optional
        Two classes: the label whose recall is the sensitivity (default: the second of the sorted labels).
    class_names : list of str, optional
        Names for the report, in the order of the sorted labels.
    threads : int, optional
        Numba (and BLAS) threads each fold trains with. Results are bit-identical between runs only at equal
        thread counts; Dask workers started by :func:`tinycnn.dask.scheduler` use 1, so pass
        ``threads=1`` to compare a local run with a cluster run.
    n_jobs : int, optional
        Folds run through ``joblib.Parallel(n_jobs)``: in this process by default, in worker
        processes with ``n_jobs=2``, and on a Dask cluster inside
        ``joblib.parallel_config(backend='dask')`` (or :func:`tinycnn.dask.scheduler`).
    verbose : int, default 1
        Print one line per fold as it finishes.

    Returns
    -------
    CrossValidationReport
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    X, y = np.asarray(X), np.asarray(y).reshape(-1)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"cross_validate_report: X has {X.shape[0]} samples but y has {y.shape[0]}")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"cross_validate_report: invalid value for argument `folds`: expected an int >= 2, "
                         f"received {folds!r}")
    if (X_test is None) != (y_test is None):
        raise ValueError("cross_validate_report: give both `X_test` and `y_test`, or neither")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"cross_validate_report: y holds only one class ({classes[0]!r})")
    if positive_class is None:
        positive_index = 1
    elif positive_class in classes.tolist():
        positive_index = classes.tolist().index(positive_class)
    else:
        raise ValueError(f"cross_validate_report: `positive_class` {positive_class!r} is not a label of y "
                         f"{classes.tolist()}")
    if y_test is not None:
        y_test = np.asarray(y_test).reshape(-1)
        unknown = np.setdiff1d(y_test, classes)
        if unknown.size:
            raise ValueError(f"cross_validate_report: y_test holds labels {unknown.tolist()} that y does not have "
                             f"{classes.tolist()}")
    names = list(class_names) if class_names is not None else [str(c) for c in classes]
    seeds = np.random.SeedSequence(seed).generate_state(folds).tolist()
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    jobs = (delayed(_run_fold)(clone(estimator).set_params(random_state=int(s)), X, y, train, held_out, X_test, threads)
            for s, (train, held_out) in zip(seeds, splits))
    rows, test_probs = [], []
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    for k, ((train, held_out), s, result) in enumerate(zip(splits, seeds, results)):
        probs, fold_test, fold_classes, seconds, used = result
        if not np.array_equal(fold_classes, classes):
            raise ValueError(f"cross_validate_report: fold {k + 1} was trained on classes {fold_classes.tolist()}, "
                             f"not all of {classes.tolist()}; use fewer folds")
        report = report_from_predictions(np.searchsorted(classes, y[held_out]), probs, class_names=names,
                                         positive_class=positive_index if len(classes) == 2 else 1)
        row = {"fold": k + 1, "n_train": len(train), "n_held_out": len(held_out), "seed": int(s),
               "roc_auc": report.roc_auc, "accuracy": report.accuracy, "sensitivity": report.sensitivity,
               "specificity": report.specificity, "seconds": round(seconds, 1), "threads": used}
        if fold_test is not None:
            row["test_roc_auc"] = report_from_predictions(np.searchsorted(classes, y_test), fold_test).roc_auc
            test_probs.append(fold_test)
        rows.append(row)
        if verbose:
            print(f"fold {k + 1}/{folds}: AUC {report.roc_auc:.3f}, accuracy {report.accuracy:.3f} on "
                  f"{len(held_out)} held-out images ({seconds:.0f} s)", flush=True)
    summary = {}
    for metric in CV_METRICS:
        values = [row[metric] for row in rows]
        summary[metric] = ({"mean": None, "sd": None} if any(v is None for v in values) else
                           {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))})
    result = CrossValidationReport(folds=rows, summary=summary, classes=classes.tolist(),
                                   positive_class=classes[positive_index] if len(classes) == 2 else None)
    if test_probs:
        result.test_probabilities = np.mean(test_probs, axis=0)
        result.test = report_from_predictions(np.searchsorted(classes, y_test),
                                              result.test_probabilities, class_names=names,
                                              positive_class=positive_index if len(classes) == 2 else 1)
    return result
