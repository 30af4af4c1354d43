"""Callbacks: hooks into ``fit``, Keras's interface. ``History`` and the progress display live here.

A callback overrides any of ``on_train_begin``, ``on_epoch_begin``, ``on_train_batch_end``,
``on_epoch_end`` and ``on_train_end``; ``self.model`` is set before training starts. Setting
``model.stop_training = True`` ends ``fit`` after the current epoch.

Ready-made, with Keras's names, arguments and defaults: ``History`` (always added by ``fit``),
``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau``, ``LearningRateScheduler``,
``SwapEMAWeights``, ``CSVLogger``, ``TerminateOnNaN``.
Callbacks run in the order given, then ``History``; all of them receive the same ``logs`` dict
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


class Callback:
    def __init__(self):
        self.model = None

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
