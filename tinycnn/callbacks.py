"""Callbacks: hooks into ``fit``, Keras's interface. ``History`` and the progress display live here.

A callback overrides any of ``on_train_begin``, ``on_epoch_begin``, ``on_train_batch_end``,
``on_epoch_end`` and ``on_train_end``; ``self.model`` is set before training starts. Setting
``model.stop_training = True`` ends ``fit`` after the current epoch.

Ready-made, with Keras's names, arguments and defaults: ``History`` (always added by ``fit``),
``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau``, ``LearningRateScheduler``,
``SwapEMAWeights``, ``CSVLogger``, ``TerminateOnNaN``, ``BackupAndRestore``.
Callbacks run in the order given, then ``History``, then ``BackupAndRestore`` (which saves what
the others keep in ``state_attributes``); all of them receive the same ``logs`` dict
at the end of an epoch, so a value one callback adds (``ReduceLROnPlateau``'s ``learning_rate``)
is seen by those after it and recorded in the history.
"""
import csv
import inspect
import math
import os
import string
import sys
import time
import warnings

import numpy as np

from . import archive, rng
from .layers.normalization import BatchNormalization


class Callback:
    #: Names of the attributes in which the callback keeps what it has learnt during ``fit`` (a
    #: patience counter, the best score so far): :meth:`get_state` reads them and
    #: :class:`BackupAndRestore` saves and restores them. A callback with other state overrides
    #: :meth:`get_state` and :meth:`set_state`.
    state_attributes = ()

    def __init__(self):
        self.model = None

    def get_state(self):
        """``{name: value}`` of the :attr:`state_attributes` that are set; plain data (numbers,
        strings, None, arrays, and lists and str-keyed dicts of them). Not in Keras: it lets
        ``BackupAndRestore`` resume a run with every callback where it stood."""
        return {name: getattr(self, name) for name in self.state_attributes if hasattr(self, name)}

    def set_state(self, state):
        """Put back what :meth:`get_state` returned (called after ``on_train_begin``)."""
        for name, value in state.items():
            setattr(self, name, value)

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def wants_batch_metrics(self):
        """Whether ``on_train_batch_end`` reads metric values (by default: whenever it is overridden).
        ``fit`` computes metrics after every batch only if some callback wants them."""
        return type(self).on_train_batch_end is not Callback.on_train_batch_end

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_test_begin(self, logs=None):
        """Called before each validation pass of ``fit`` (Keras's name)."""
        pass

    def on_test_end(self, logs=None):
        """Called after each validation pass of ``fit`` (Keras's name)."""
        pass


class History(Callback):
    """Records every epoch's logs: ``history.history['loss']``, ``['val_accuracy']``, ...; ``history.epoch``."""

    state_attributes = ("history", "epoch")

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and says so."""

    def wants_batch_metrics(self):
        return False  # reads the loss only

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training", file=sys.stderr)
            self.model.stop_training = True


# --- argument checks shared by the callbacks below ------------------------------------------------

class RecalibrateBatchNorm(Callback):
    """Before each validation pass, set every batch-norm layer's moving statistics to the exact
    statistics of ``x`` (see ``Sequential.recalibrate_batchnorm``).

    With Keras's momentum 0.99 and a small data set, the moving statistics lag far behind the
    network for hundreds of steps, and validation scores look like chance although training goes
    well. Recalibrating first shows what the network has actually learnt. Training itself is
    unchanged (it uses batch statistics); only the moving statistics are replaced.

    Parameters
    ----------
    x : ndarray (N, H, W, C) or a batch source
        Training images (a few hundred are plenty).
    max_samples : int or None, default 512
        Use at most this many samples of ``x`` (the first ones), to bound the cost per epoch.
    batch_size : int, default 32
    """

    def __init__(self, x, max_samples=512, batch_size=32):
        super().__init__()
        if max_samples is not None:
            _check_int(max_samples, "max_samples", "RecalibrateBatchNorm", minimum=1)
        self.x = x[:max_samples] if (max_samples is not None and hasattr(x, "shape")) else x
        self.batch_size = _check_int(batch_size, "batch_size", "RecalibrateBatchNorm", minimum=1)

    def on_test_begin(self, logs=None):
        self.model.recalibrate_batchnorm(self.x, batch_size=self.batch_size)


def _check_int(value, argument, owner, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected an int >= {minimum}, "
                         f"received {value!r}")
    return int(value)


def _check_float(value, argument, owner, minimum=0.0):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float >= {minimum}, "
                         f"received {value!r}")
    return float(value)


def _check_bool(value, argument, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected True or False, "
                         f"received {value!r}")
    return bool(value)


def _check_monitor(monitor, owner):
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{owner}: invalid value for argument `monitor`: expected the name of a logged "
                         f"quantity such as 'val_loss' or 'val_accuracy', received {monitor!r}")
    return monitor


def _check_mode(mode, owner):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: invalid value for argument `mode`: expected 'auto', 'min' or 'max', "
                         f"received {mode!r}")
    return mode


def _check_path(path, argument, owner):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a file path "
                         f"(str or os.PathLike), received {path!r}")
    return os.fspath(path)


#: Parts of a logged name that mean "larger is better" when ``mode='auto'``.
HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "fmeasure", "sensitivity", "specificity")


def resolve_mode(mode, monitor, model=None):
    """``'min'`` or ``'max'``: which way ``monitor`` improves.

    ``'min'`` and ``'max'`` are returned as they are. ``'auto'``: ``loss`` / ``val_loss`` decrease;
    a metric of ``model`` with that name (less its ``val_`` prefix) says so in its ``direction``
    (``'up'`` or ``'down'``, as Keras 3); otherwise a name containing one of :data:`HIGHER_IS_BETTER`
    ('acc', 'auc', 'precision', 'recall', ...) increases, and anything else decreases.
    """
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if name == "loss":
        return "min"
    for metric in getattr(model, "metrics", None) or []:
        if getattr(metric, "name", None) == name and getattr(metric, "direction", None) in ("up", "down"):
            return "max" if metric.direction == "up" else "min"
    return "max" if any(part in name.lower() for part in HIGHER_IS_BETTER) else "min"


def _is_better(current, best, mode, min_delta):
    """``current`` beats ``best`` by more than ``min_delta`` in direction ``mode`` (NaN never does)."""
    if mode == "min":
        return current < best - min_delta
    return current > best + min_delta


def _missing_monitor_message(owner, monitor, logs):
    available = ", ".join(logs) if logs else "none"
    hint = ""
    if monitor.startswith("val_") and not any(key.startswith("val_") for key in logs):
        hint = " (no validation metrics: pass `validation_data=` or `validation_split=` to fit)"
    return (f"{owner} is conditioned on metric `{monitor}` which is not available. Available metrics are: "
            f"{available}{hint}")


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving, Keras's ``EarlyStopping``.

    Parameters
    ----------
    monitor : str, default 'val_loss'
        A key of the epoch logs: 'loss', 'val_loss', 'val_accuracy', 'val_auc', ...
    min_delta : float >= 0, default 0
        A change of no more than ``min_delta`` does not count as an improvement.
    patience : int >= 0, default 0
        Epochs without improvement after which training stops.
    verbose : int, default 0
        1 prints the epoch it stopped at and the epoch whose weights are restored.
    mode : {'auto', 'min', 'max'}, default 'auto'
        Whether the quantity should decrease or increase; 'auto' decides from its name (see
        :func:`resolve_mode`): 'max' for accuracy, AUC, precision, recall; 'min' for losses.
    baseline : float, optional
        Training stops unless the quantity beats this value within ``patience`` epochs. (Keras 3
        never stops while the value keeps improving without reaching the baseline; tinycnn stops,
        as Keras's documentation of ``baseline`` says.)
    restore_best_weights : bool, default False
        At the end of training, put back the weights of the best epoch (with
        ``get_weights``/``set_weights``). As Keras 3, this also happens when training ends because
        the epochs ran out, not only after an early stop.
    start_from_epoch : int >= 0, default 0
        Epochs of warm-up during which nothing is monitored.

    Attributes
    ----------
    stopped_epoch : int
        The epoch (0-based) at which training was stopped, 0 if it was not.
    best_epoch : int
        The epoch (0-based) with the best value.
    best : float

    Notes
    -----
    Each epoch the waiting count goes up by one; an improvement (``current < best - min_delta`` for
    'min', ``current > best + min_delta`` for 'max') sets it back to 0. Training stops once the count
    reaches ``patience``. A monitor missing from the logs (e.g. 'val_loss' without validation
    data) gives one warning per ``fit``, not an error, and nothing is monitored.
    """

    state_attributes = ("best", "wait", "stopped_epoch", "best_epoch", "best_weights", "_warned")

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        owner = "EarlyStopping"
        self.monitor = _check_monitor(monitor, owner)
        self.min_delta = _check_float(min_delta, "min_delta", owner)
        self.patience = _check_int(patience, "patience", owner)
        self.verbose = _check_int(verbose, "verbose", owner)
        self.mode = _check_mode(mode, owner)
        if baseline is not None:
            baseline = _check_float(baseline, "baseline", owner, minimum=-math.inf)
        self.baseline = baseline
        self.restore_best_weights = _check_bool(restore_best_weights, "restore_best_weights", owner)
        self.start_from_epoch = _check_int(start_from_epoch, "start_from_epoch", owner)
        self._direction = None

    def on_train_begin(self, logs=None):
        # Everything is reset, so one instance can serve several fit calls.
        self._direction = resolve_mode(self.mode, self.monitor, self.model)
        self.best = math.inf if self._direction == "min" else -math.inf
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best_weights = None
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        if self._direction is None:
            self.on_train_begin()
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            if not self._warned:
                warnings.warn(_missing_monitor_message("Early stopping", self.monitor, logs), stacklevel=2)
                self._warned = True
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Nothing better seen yet: the weights as they are now are the best.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if _is_better(current, self.best, self._direction, self.min_delta):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or _is_better(current, self.baseline, self._direction, self.min_delta):
                self.wait = 0
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model after every epoch, or only when it improves, Keras's ``ModelCheckpoint``.

    Parameters
    ----------
    filepath : str or os.PathLike
        Where to save. May hold placeholders filled from the epoch (counted from 1, as Keras) and
        the logs: ``'ckpt/model-{epoch:02d}-{val_loss:.3f}.npz'``. Missing folders are created.
        The file is a whole model (``model.save``), read back with ``tinycnn.load_model``.
    monitor : str, default 'val_loss'
        The logged quantity that decides "better" with ``save_best_only``.
    verbose : int, default 0
        1 prints a line for every save (or skipped save).
    save_best_only : bool, default False
        Save only when ``monitor`` beats its best value so far. The best value is kept from one
        ``fit`` call to the next (as Keras), so continuing training never overwrites a better model.
    save_weights_only : bool, default False
        Keras's argument; tinycnn always saves the whole model, so only False is accepted.
    mode : {'auto', 'min', 'max'}, default 'auto'
        See :class:`EarlyStopping`.
    save_freq : 'epoch'
        Keras's argument; tinycnn saves at epoch ends only.
    initial_value_threshold : float, optional
        With ``save_best_only``: a model must beat this value to be saved at all.

    Notes
    -----
    Every save is atomic (a temporary file renamed over the target), so a run interrupted while
    saving still leaves the previous checkpoint intact.
    """

    state_attributes = ("best", "_warned")

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        owner = "ModelCheckpoint"
        self.filepath = _check_path(filepath, "filepath", owner)
        self._check_placeholders()
        self.monitor = _check_monitor(monitor, owner)
        self.verbose = _check_int(verbose, "verbose", owner)
        self.save_best_only = _check_bool(save_best_only, "save_best_only", owner)
        if _check_bool(save_weights_only, "save_weights_only", owner):
            raise ValueError("ModelCheckpoint: invalid value for argument `save_weights_only`: expected False "
                             "(tinycnn saves whole models, read back with tinycnn.load_model), received True")
        self.mode = _check_mode(mode, owner)
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: invalid value for argument `save_freq`: expected 'epoch' "
                             f"(tinycnn saves at the end of epochs only), received {save_freq!r}")
        if initial_value_threshold is not None:
            initial_value_threshold = _check_float(initial_value_threshold, "initial_value_threshold", owner,
                                                   minimum=-math.inf)
        self.initial_value_threshold = initial_value_threshold
        self.best = None
        self._direction = None
        self._warned = False

    def _check_placeholders(self):
        """Refuse a malformed pattern now rather than after the first epoch."""
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(self.filepath) if field is not None]
        except ValueError as err:
            raise ValueError(f"ModelCheckpoint: invalid value for argument `filepath`: {err} in "
                             f"{self.filepath!r}; write a literal brace as '{{{{' or '}}}}'") from None
        unnamed = [field for field in fields if field == "" or field.isdigit()]
        if unnamed:
            raise ValueError(f"ModelCheckpoint: invalid value for argument `filepath`: placeholders must be "
                             f"named, like '{{epoch:02d}}' or '{{val_loss:.3f}}', received {self.filepath!r}")

    def on_train_begin(self, logs=None):
        self._direction = resolve_mode(self.mode, self.monitor, self.model)
        if self.best is None:
            worst = math.inf if self._direction == "min" else -math.inf
            self.best = worst if self.initial_value_threshold is None else self.initial_value_threshold
        self._warned = False

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as err:
            raise KeyError(f"ModelCheckpoint: cannot fill in `filepath` {self.filepath!r}: it names "
                           f"{err.args[0]!r}, which is not in the logs; available: "
                           f"{', '.join(['epoch', *logs])}") from None
        except (ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"ModelCheckpoint: cannot fill in `filepath` {self.filepath!r}: {err} "
                             f"(epoch is an int, logged values are floats)") from None

    def on_epoch_end(self, epoch, logs=None):
        if self._direction is None:
            self.on_train_begin()
        logs = logs or {}
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                if not self._warned:
                    warnings.warn(_missing_monitor_message("Saving the best model", self.monitor, logs)
                                  + "; no checkpoint is saved", stacklevel=2)
                    self._warned = True
                return
            if not _is_better(current, self.best, self._direction, 0.0):
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            path = self._path(epoch, logs)
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                      f"saving model to {path}")
            self.best = current
        else:
            path = self._path(epoch, logs)
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: saving model to {path}")
        self._save(path)

    def _save(self, path):
        if os.path.isdir(path):
            raise IsADirectoryError(f"ModelCheckpoint: `filepath` must name a file, but {path!r} is an "
                                    f"existing folder; use e.g. {os.path.join(path, 'model-{epoch:02d}.npz')!r}")
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.model.save(path)


class ReduceLROnPlateau(Callback):
    """Lower the learning rate when a monitored quantity stops improving, Keras's ``ReduceLROnPlateau``.

    Parameters
    ----------
    monitor : str, default 'val_loss'
    factor : float in (0, 1), default 0.1
        ``new_lr = max(lr * factor, min_lr)``.
    patience : int >= 0, default 10
        Epochs without improvement before the rate is lowered.
    verbose : int, default 0
        1 prints a line whenever the rate changes.
    mode : {'auto', 'min', 'max'}, default 'auto'
        See :class:`EarlyStopping`.
    min_delta : float >= 0, default 1e-4
        A change of no more than this does not count as an improvement.
    cooldown : int >= 0, default 0
        Epochs to wait after a reduction before counting again.
    min_lr : float >= 0, default 0
        The rate never goes below this.

    Notes
    -----
    Every epoch the current rate is written to the logs as ``learning_rate`` (Keras 3 does so too),
    before the decision, so ``history.history['learning_rate'][i]`` is the rate epoch ``i`` trained
    with. Put this callback before any callback that should see it (``History`` always runs last).
    """

    state_attributes = ("best", "wait", "cooldown_counter", "_warned")

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        owner = "ReduceLROnPlateau"
        self.monitor = _check_monitor(monitor, owner)
        if isinstance(factor, bool) or not isinstance(factor, (int, float, np.integer, np.floating)) \
                or not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: invalid value for argument `factor`: expected a float in "
                             f"(0, 1) (the rate is multiplied by it), received {factor!r}")
        self.factor = float(factor)
        self.patience = _check_int(patience, "patience", owner)
        self.verbose = _check_int(verbose, "verbose", owner)
        self.mode = _check_mode(mode, owner)
        self.min_delta = _check_float(min_delta, "min_delta", owner)
        self.cooldown = _check_int(cooldown, "cooldown", owner)
        self.min_lr = _check_float(min_lr, "min_lr", owner)
        self._direction = None

    def on_train_begin(self, logs=None):
        self._direction = resolve_mode(self.mode, self.monitor, self.model)
        self.best = math.inf if self._direction == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        if self._direction is None:
            self.on_train_begin()
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            if not self._warned:
                warnings.warn(_missing_monitor_message("Learning rate reduction", self.monitor, logs),
                              stacklevel=2)
                self._warned = True
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if _is_better(current, self.best, self._direction, self.min_delta):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(optimizer.learning_rate)
                new_lr = max(old_lr * self.factor, self.min_lr)
                if 0 < new_lr < old_lr:
                    optimizer.learning_rate = new_lr
                    if self.verbose:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of every epoch from a function of the epoch, Keras's
    ``LearningRateScheduler``.

    Parameters
    ----------
    schedule : callable
        ``schedule(epoch, lr) -> new_lr`` (``epoch`` counted from 0, ``lr`` the current rate), or
        ``schedule(epoch) -> new_lr``. The result must be a float > 0.
    verbose : int, default 0
        1 prints the new rate every epoch.

    Notes
    -----
    The rate is written to the logs as ``learning_rate`` at the end of every epoch, so it is in
    ``history.history['learning_rate']`` (as Keras 3). For a rate that changes every batch, give
    the optimizer a schedule from ``tinycnn.optimizers.schedules`` instead; an optimizer built with
    one refuses to have its rate set (TypeError), as in Keras.

    Examples
    --------
    >>> LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 else lr * 0.9)
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler: invalid value for argument `schedule`: expected a function "
                             f"schedule(epoch, lr) -> float, received {schedule!r}")
        self.schedule = schedule
        self.verbose = _check_int(verbose, "verbose", "LearningRateScheduler")
        self._takes_lr = _accepts_two_arguments(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if self._takes_lr:
            lr = self.schedule(epoch, float(optimizer.learning_rate))
        else:
            lr = self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)) \
                or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"LearningRateScheduler: the schedule returned {lr!r} for epoch {epoch}; expected a "
                             f"float > 0")
        optimizer.learning_rate = float(lr)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


def _accepts_two_arguments(function):
    """Whether ``function(epoch, lr)`` is a valid call (else it is called as ``function(epoch)``)."""
    try:
        inspect.signature(function).bind(0, 0.0)
    except TypeError:
        return False
    except ValueError:  # no signature available (some builtins): try the newer form
        return True
    return True


class SwapEMAWeights(Callback):
    """Evaluate (and optionally checkpoint) the moving average of the weights during training,
    Keras's ``SwapEMAWeights``; needs an optimizer with ``use_ema=True``.

    Before each validation pass the weights are exchanged with their moving averages, and after
    it exchanged back, so ``val_*`` scores are those of the averaged model while training goes on
    with the raw weights. With ``swap_on_epoch=True`` the averages also stay in the model from the
    end of each epoch to the start of the next, so callbacks after this one (``ModelCheckpoint``)
    see and save the averaged model.

    Parameters
    ----------
    swap_on_epoch : bool, default False

    Notes
    -----
    The swap is the optimizer's (:meth:`~tinycnn.optimizers.Optimizer.swap_average_weights`), which
    knows whether the averages are in: whatever the order of callbacks, the optimizer always steps
    the raw weights, and ``fit`` ends with the averages in the model (Keras's
    ``finalize_variable_values``).
    """

    def __init__(self, swap_on_epoch=False):
        super().__init__()
        self.swap_on_epoch = _check_bool(swap_on_epoch, "swap_on_epoch", "SwapEMAWeights")

    def _swap(self, averages_in):
        optimizer = self.model.optimizer
        if not getattr(optimizer, "use_ema", False):
            raise ValueError(f"SwapEMAWeights: the model's optimizer must keep a moving average of the weights "
                             f"(create it with use_ema=True), received {type(optimizer).__name__} without one")
        if optimizer.average_swapped != averages_in:
            optimizer.swap_average_weights(self.model._trainable())

    def on_train_begin(self, logs=None):
        self._swap(False)  # checks the optimizer

    def on_epoch_begin(self, epoch, logs=None):
        self._swap(False)

    def on_test_begin(self, logs=None):
        self._swap(True)

    def on_test_end(self, logs=None):
        if not self.swap_on_epoch:
            self._swap(False)

    def on_epoch_end(self, epoch, logs=None):
        self._swap(self.swap_on_epoch)


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` and every logged value, Keras's ``CSVLogger``.

    Parameters
    ----------
    filename : str or os.PathLike
    separator : str, default ','
        One character.
    append : bool, default False
        False starts a new file at the start of ``fit``; True adds rows to an existing one (its
        header is kept, and written only if the file is new or empty).

    Notes
    -----
    As Keras: ``epoch`` is counted from 0, the other columns are the log keys in sorted order, and a
    key missing in some epoch is written ``NA``. Each row is written and the file closed at once,
    so the log is complete up to the last finished epoch even if training is interrupted. When
    appending to a file that has a header, its columns are used (keys it lacks are not written,
    with one warning).
    """

    state_attributes = ("keys", "_warned")

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        owner = "CSVLogger"
        self.filename = _check_path(filename, "filename", owner)
        if not isinstance(separator, str) or len(separator) != 1 or separator in "\"\r\n":
            raise ValueError(f"CSVLogger: invalid value for argument `separator`: expected one character such "
                             f"as ',' or ';' or '\\t', received {separator!r}")
        self.sep = separator
        self.append = _check_bool(append, "append", owner)
        self.keys = None
        self._warned = False

    def on_train_begin(self, logs=None):
        self.keys = None
        self._warned = False
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f, delimiter=self.sep), None)
            if header:
                self.keys = header[1:] if header[0] == "epoch" else header
        else:
            open(self.filename, "w").close()  # start a new file now: an old log never survives half-mixed

    def get_state(self):
        """The columns, and the file's bytes so far: a resumed run puts them back, so the log has
        every row once (``on_train_begin`` has just started a new file, and rows written after the
        backup was made are dropped, to be written again)."""
        state = super().get_state()
        if os.path.exists(self.filename):
            with open(self.filename, "rb") as f:
                state["file"] = np.frombuffer(f.read(), dtype=np.uint8)
        return state

    def set_state(self, state):
        state = dict(state)
        content = state.pop("file", None)
        if content is not None:
            with open(self.filename, "wb") as f:
                f.write(np.asarray(content, dtype=np.uint8).tobytes())
        super().set_state(state)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        new_file = self.keys is None
        if new_file:
            self.keys = sorted(logs)
        dropped = [key for key in logs if key not in self.keys]
        if dropped and not self._warned:
            warnings.warn(f"CSVLogger: the logs have {dropped}, which the existing header of {self.filename!r} "
                          f"lacks; they are not written (use append=False to start a new file)", stacklevel=2)
            self._warned = True
        with open(self.filename, "a", newline="") as f:
            writer = csv.writer(f, delimiter=self.sep)
            if new_file:
                writer.writerow(["epoch", *self.keys])
            writer.writerow([epoch, *(logs.get(key, "NA") for key in self.keys)])


class BackupAndRestore(Callback):
    """Back up the whole training state regularly, so that a run that was killed resumes where it
    stood when the same ``fit`` is run again, Keras's ``BackupAndRestore``.

    Parameters
    ----------
    backup_dir : str or os.PathLike
        Folder for the backup (created if missing). Only for this run's backup: two runs sharing
        it would resume each other.
    save_freq : 'epoch' or int >= 1, default 'epoch'
        ``'epoch'``: a backup at the end of every epoch. An int ``N``: also one every ``N`` batches.
    delete_checkpoint : bool, default True
        Delete the backup when ``fit`` ends normally (a run that was interrupted keeps it).

    Notes
    -----
    **What is saved.** Keras saves the weights and the epoch; tinycnn saves everything that decides
    what comes next, so that the resumed run ends with weights, history and reports *bit-identical*
    to a run that was never interrupted (same machine, library versions and thread counts, as
    README's "Runs repeat"): the weights and batch-norm statistics, each batch-norm layer's update
    count, the optimizer's state and learning rate, every random generator (tinycnn's root
    generator, each layer's own one for dropout and augmentation, and ``fit``'s shuffling one), the
    epoch and batch reached with the epoch's running loss and metrics, ``model.stop_training``, and
    every callback's :meth:`~Callback.get_state` (the history so far, ``EarlyStopping``'s
    patience counter, best score and best weights, ``ModelCheckpoint``'s and
    ``ReduceLROnPlateau``'s best score and counters, ``CSVLogger``'s file). A callback written by
    the user is restored if it names its state in ``state_attributes``.

    **Resuming.** At ``on_train_begin`` the backup is read (checked as strictly as a model file,
    see ``tinycnn/archive.py``) and put back; ``fit`` then starts at the saved epoch and, after a
    backup from the middle of an epoch, draws that epoch's batches again in the same order and
    trains on the ones not done yet. This callback runs after all others (``fit`` puts it last), so
    it saves their decisions for the epoch and restores their state after they have reset it.

    **Crashes while saving.** The backup is written to a temporary file and renamed over
    ``backup.npz`` (see ``tinycnn/archive.py``); the one before it is kept as
    ``backup.previous.npz``. A backup that cannot be read (truncated, damaged, a disk that was
    full) is reported with a warning, moved aside to ``backup.damaged.npz``, and the previous one is
    used; if neither can be read, the run starts over from its first epoch, with a warning. A
    backup made by a different model (other layers or weight shapes) is refused with a ValueError,
    and left in place. A failed save (a full disk) raises its OSError: the previous backup is kept.

    Only this callback's own files are ever deleted in ``backup_dir`` (Keras deletes the whole
    folder), so nothing else kept there is lost.
    """

    LATEST = "backup.npz"
    PREVIOUS = "backup.previous.npz"
    DAMAGED = "backup.damaged.npz"
    #: Version of the backup's description.
    FORMAT_VERSION = 1

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        owner = "BackupAndRestore"
        self.backup_dir = _check_path(backup_dir, "backup_dir", owner)
        if os.path.exists(self.backup_dir) and not os.path.isdir(self.backup_dir):
            raise ValueError(f"BackupAndRestore: invalid value for argument `backup_dir`: {self.backup_dir!r} is a "
                             f"file; expected a folder (it is created if missing)")
        if save_freq != "epoch":
            if isinstance(save_freq, str):
                raise ValueError(f"BackupAndRestore: invalid value for argument `save_freq`: expected 'epoch' or "
                                 f"an int >= 1 (batches), received {save_freq!r}")
            save_freq = _check_int(save_freq, "save_freq", owner, minimum=1)
        self.save_freq = save_freq
        self.delete_checkpoint = _check_bool(delete_checkpoint, "delete_checkpoint", owner)
        self._batches = 0

    def _file(self, name):
        return os.path.join(self.backup_dir, name)

    # --- when ----------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        for name in os.listdir(self.backup_dir):  # left by a crash in the middle of a save
            if name.startswith(".tmp-") and name.endswith(".npz"):
                os.unlink(self._file(name))
        self._batches = 0
        backup = self._read_usable()
        if backup is not None:
            self._restore(backup)

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        # After a stop request the epoch ends at once and its end is backed up instead.
        if self._batches % self.save_freq == 0 and not self.model.stop_training:
            loop = self.model._fit_loop
            self._save(loop["epoch"], loop["batch"], loop["shuffle_state"], mid_epoch=True)

    def wants_batch_metrics(self):
        return False  # reads the metrics' state, not their results

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0, self.model._fit_loop["shuffle_rng"].bit_generator.state, mid_epoch=False)

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint:
            return
        for name in (self.LATEST, self.PREVIOUS, self.DAMAGED):
            if os.path.exists(self._file(name)):
                os.unlink(self._file(name))
        try:
            os.rmdir(self.backup_dir)  # only if nothing else is in it
        except OSError:
            pass

    # --- saving --------------------------------------------------------------------------------

    def _others(self):
        return [cb for cb in self.model._fit_loop["callbacks"] if not isinstance(cb, BackupAndRestore)]

    def _save(self, epoch, batch, shuffle_state, mid_epoch):
        model, loop = self.model, self.model._fit_loop
        optimizer, params = model.optimizer, model._trainable()
        swapped = optimizer.average_swapped
        if swapped:  # save the raw weights, and that the averages were in the model
            optimizer.swap_average_weights(params)
        try:
            weights = model.get_weights()
            keys = {key: str(i) for i, (key, _, _) in enumerate(params)}
            slots = {}
            for name, value in optimizer.get_state().items():  # copies: swapping back changes them
                key, _, slot = name.rpartition("/")
                slots[f"{keys[key]}/{slot}" if key in keys else name] = np.array(value)
        finally:
            if swapped:
                optimizer.swap_average_weights(params)
        arrays = {f"weights/{i}": w for i, w in enumerate(weights)}
        arrays.update({f"optimizer/{name}": value for name, value in slots.items()})
        callbacks = {}
        for key, cb in _keyed(self._others()):
            state = cb.get_state()
            if state:
                callbacks[key] = _pack(state, arrays, f"callbacks/{key}", "BackupAndRestore: callback " + key)
        config = {
            "backup": self.FORMAT_VERSION,
            "layers": [type(layer).__name__ for layer in model.layers],
            "weights": [list(w.shape) for w in weights],
            "epoch": epoch, "batch": batch,
            "loss_sum": _pack(loop["loss_sum"] if mid_epoch else 0.0, arrays, "loss_sum", "BackupAndRestore"),
            "seen": loop["seen"] if mid_epoch else 0,
            "shuffle": shuffle_state,
            "metrics": [_pack(vars(m), arrays, f"metrics/{i}", f"BackupAndRestore: metric {m.name}")
                        for i, m in enumerate(model.metrics)] if mid_epoch else None,
            "stop_training": bool(model.stop_training),
            "rng": rng.get_state(),
            "generators": {f"{i}/{name}": value.bit_generator.state for i, layer in enumerate(model.layers)
                           for name, value in vars(layer).items() if isinstance(value, np.random.Generator)},
            "batchnorm": {str(i): [layer.updates, layer.recalibrated] for i, layer in enumerate(model.layers)
                          if isinstance(layer, BatchNormalization)},
            "optimizer": {"learning_rate": None if optimizer.schedule is not None else optimizer.learning_rate,
                          "averages_in_model": swapped},
            "callbacks": callbacks,
        }
        latest = self._file(self.LATEST)
        if os.path.exists(latest):
            os.replace(latest, self._file(self.PREVIOUS))  # keep the last good backup until the new one is in
        archive.write(latest, config, arrays, where="BackupAndRestore")

    # --- restoring -----------------------------------------------------------------------------

    def _read_usable(self):
        """The newest backup that reads back whole, decoded (see :meth:`_read`), or None."""
        found = [self._file(name) for name in (self.LATEST, self.PREVIOUS) if os.path.exists(self._file(name))]
        for path in found:
            try:
                return self._read(path)
            except archive.ModelFileError as e:
                # Moved aside, so that the next save does not rotate it over a good one.
                os.replace(path, self._file(self.DAMAGED))
                warnings.warn(f"BackupAndRestore: the backup cannot be used (moved to {self.DAMAGED}): {e}",
                              RuntimeWarning, stacklevel=3)
        if found:
            warnings.warn(f"BackupAndRestore: no usable backup in {self.backup_dir!r}; training starts over from "
                          f"its first epoch", RuntimeWarning, stacklevel=3)
        return None

    def _read(self, path):
        """Everything in the backup ``path``, read whole and decoded, so that nothing is changed
        before the backup is known to be good. A damaged file raises ModelFileError; a backup of
        another model, ValueError."""
        model = self.model
        shapes = [list(w.shape) for w in model.get_weights()]
        layers = [type(layer).__name__ for layer in model.layers]
        with archive.ArchiveReader(path) as reader:
            config = reader.config
            if config.get("backup") != self.FORMAT_VERSION:
                raise reader.fail(f"not a backup of BackupAndRestore version {self.FORMAT_VERSION}")
            if config.get("layers") != layers or config.get("weights") != shapes:
                raise ValueError(f"BackupAndRestore: the backup {path!r} was made while training another model "
                                 f"(layers {config.get('layers')}, weight shapes {config.get('weights')}); this "
                                 f"model has layers {layers}, weight shapes {shapes}. Delete the backup, or pass "
                                 f"another `backup_dir`")
            expected = {f"weights/{i}": shape for i, shape in enumerate(shapes)}
            arrays = {name: reader.read(name, reader.header(name, "biuf", expected.get(name)))
                      for name in reader.names if name != "__config__"}
        try:
            keys = [key for key, _, _ in model._trainable()]
            slots = {}
            for name, value in arrays.items():
                if name.startswith("optimizer/"):
                    name = name[len("optimizer/"):]
                    key, _, slot = name.rpartition("/")
                    slots[f"{keys[int(key)]}/{slot}" if key.isdigit() else name] = value
            return {
                "path": path, "config": config, "slots": slots,
                "weights": [arrays[name] for name in expected],
                "callbacks": {key: _unpack(state, arrays) for key, state in config["callbacks"].items()},
                "metrics": None if config["metrics"] is None else [_unpack(m, arrays) for m in config["metrics"]],
                "loss_sum": _unpack(config["loss_sum"], arrays),
                "generators": [(model.layers[int(i)], name, state) for i, name, state in
                               ((*key.split("/", 1), state) for key, state in config["generators"].items())],
                "batchnorm": [(model.layers[int(i)], int(updates), bool(recalibrated))
                              for i, (updates, recalibrated) in config["batchnorm"].items()],
            }
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise archive.ModelFileError(f"{path}: the backup's description is incomplete or inconsistent "
                                         f"({type(e).__name__}: {e})") from None

    def _restore(self, backup):
        model, loop, config = self.model, self.model._fit_loop, backup["config"]
        model.set_weights(backup["weights"])
        for layer, updates, recalibrated in backup["batchnorm"]:
            layer.updates, layer.recalibrated = updates, recalibrated
        for layer, name, state in backup["generators"]:
            getattr(layer, name).bit_generator.state = state
        optimizer = model.optimizer
        optimizer.set_state(backup["slots"])
        if config["optimizer"]["learning_rate"] is not None:
            optimizer.learning_rate = config["optimizer"]["learning_rate"]
        if config["optimizer"]["averages_in_model"]:
            optimizer.swap_average_weights(model._trainable())
        rng.set_state(config["rng"])
        loop["shuffle_rng"].bit_generator.state = config["shuffle"]
        loop.update(epoch=config["epoch"], batch=config["batch"], loss_sum=backup["loss_sum"], seen=config["seen"],
                    shuffle_state=config["shuffle"])
        for m, state in zip(model.metrics, backup["metrics"] or []):
            vars(m).update(state)
        saved, unmatched = backup["callbacks"], []
        for key, cb in _keyed(self._others()):
            if key in saved:
                cb.set_state(saved.pop(key))
            elif cb.get_state():
                unmatched.append(key)
        if unmatched or saved:
            warnings.warn(f"BackupAndRestore: the callbacks differ from those of the run that made the backup: "
                          f"{', '.join(unmatched + list(saved))} start afresh or are dropped", stacklevel=3)
        model.stop_training = bool(config["stop_training"])
        where = (f"epoch {config['epoch'] + 1}, after batch {config['batch']}" if config["batch"]
                 else f"the start of epoch {config['epoch'] + 1}")
        print(f"BackupAndRestore: resuming from {backup['path']} at {where}", file=sys.stderr)


def _keyed(callbacks):
    """``('EarlyStopping#0', cb)``: each callback named by its class and its rank among those of its class."""
    count = {}
    for cb in callbacks:
        name = type(cb).__name__
        count[name] = count.get(name, -1) + 1
        yield f"{name}#{count[name]}", cb


def _pack(value, arrays, name, owner):
    """``value`` as JSON data for an archive: arrays and NumPy scalars go into ``arrays`` under
    names built from ``name`` and are referred to as ``{"array": name}``; lists (and tuples) become
    ``{"list": [...]}`` (a list of Python floats, one float64 array: ``{"floats": name}``), str-keyed
    dicts ``{"dict": {...}}``. :func:`_unpack` inverts it, keeping
    every array's dtype and every scalar's type, so restored values are bit for bit the saved ones."""
    if isinstance(value, (np.ndarray, np.generic)):
        arrays[name] = np.asarray(value)
        return {"array": name, "scalar": isinstance(value, np.generic)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and value and all(type(v) is float for v in value):
        arrays[name] = np.array(value, dtype=np.float64)  # a history's column: one array, not long JSON
        return {"floats": name}
    if isinstance(value, (list, tuple)):
        return {"list": [_pack(v, arrays, f"{name}/{i}", owner) for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _pack(v, arrays, f"{name}/{k}", owner) for k, v in value.items()}}
    raise TypeError(f"{owner}: its state is not plain data: {name.rpartition('/')[2]!r} holds a "
                    f"{type(value).__name__}; use numbers, strings, None, arrays, and lists and dicts of them")


def _unpack(value, arrays):
    if isinstance(value, dict):
        if "array" in value:
            array = arrays[value["array"]]
            return array[()] if value["scalar"] else array
        if "floats" in value:
            return arrays[value["floats"]].tolist()
        if "list" in value:
            return [_unpack(v, arrays) for v in value["list"]]
        return {k: _unpack(v, arrays) for k, v in value["dict"].items()}
    return value


def _format_logs(logs):
    """Keras's progress-bar format: 4 decimals, or 4 significant digits for values up to 1e-3
    (a learning rate of 1e-4 shows as ``1.0000e-04``)."""
    return " - ".join(f"{k}: {v:.4f}" if abs(v) > 1e-3 else f"{k}: {v:.4e}" for k, v in logs.items())


def _format_time(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


class ProgressBar(Callback):
    """Keras-style progress display.

    ``verbose=1``: a live bar per epoch (redrawn in place on a terminal) with ETA, time per step and
    the running loss and metrics; ``verbose=2``: one line per epoch, for log files.
    """

    def __init__(self, verbose=1, steps=None, epochs=1, stream=None, width=20):
        super().__init__()
        self.verbose = verbose
        self.steps = steps
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.width = width
        encoding = getattr(self.stream, "encoding", None) or ""
        self._fill, self._empty = ("━", "─") if encoding.lower().replace("-", "") == "utf8" else ("=", ".")
        self._live = self.verbose == 1 and getattr(self.stream, "isatty", lambda: False)()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self.verbose:
            self.stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")
            self.stream.flush()

    def _bar(self, done):
        filled = int(round(self.width * done / max(1, self.steps)))
        return self._fill * filled + self._empty * (self.width - filled)

    def wants_batch_metrics(self):
        return self._live

    def on_train_batch_end(self, batch, logs=None):
        if not self._live:
            return
        done = batch + 1
        elapsed = time.perf_counter() - self._start
        eta = elapsed / done * (self.steps - done)
        line = (f"\r{done}/{self.steps} {self._bar(done)} {_format_time(eta)} "
                f"{1000 * elapsed / done:.0f}ms/step - {_format_logs(logs or {})}")
        self.stream.write(line + "\x1b[K")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        if not self.verbose:
            return
        elapsed = time.perf_counter() - self._start
        per_step = 1000 * elapsed / max(1, self.steps)
        prefix = "\r" if self._live else ""
        bar = f"{self.steps}/{self.steps} {self._bar(self.steps)} " if self.verbose == 1 else ""
        self.stream.write(f"{prefix}{bar}{_format_time(elapsed)} {per_step:.0f}ms/step - "
                          f"{_format_logs(logs or {})}" + ("\x1b[K" if self._live else "") + "\n")
        self.stream.flush()
