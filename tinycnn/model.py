"""``Sequential``: a stack of layers with Keras's build / compile / fit / evaluate / predict.

The training loop lives here and nowhere else. One step, for a batch ``(x, y)``:

1. forward: ``out = layer_n(...layer_1(x))`` in training mode;
2. loss and its gradient with respect to the output. When the last layer ends in a softmax (or a
   sigmoid) and the loss takes probabilities, the loss is computed from that layer's logits and the
   gradient starts at the logits (``p - y`` for cross-entropy): exact, and no ``log(0)``;
3. backward through the layers in reverse, each storing its parameter gradients;
4. the optimizer updates every trainable parameter in place.

Inputs are validated once, here, at the entry points; the layers trust what they are given.
"""
import math
import os
import sys
import threading
import warnings
from contextlib import contextmanager

import numpy as np

from . import callbacks as callbacks_module
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from . import rng
from ._threads import compute_lock
from .batching import ArrayBatches, SourceBatches, is_batch_source
from .layers.base import Layer, unique_name
from .layers.conv import Conv2D
from .layers.normalization import BatchNormalization


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_array(value, where, argument):
    """``np.asarray(value)``, with an error naming the argument when nested lists are ragged."""
    try:
        return np.asarray(value)
    except ValueError as e:
        raise ValueError(f"{where}: `{argument}` cannot be read as one array: its samples have different shapes "
                         f"or lengths ({e})") from None


def _real_numbers(a, where, argument):
    """Refuse complex, string, object and other non-numeric arrays, saying what to do instead."""
    if a.dtype.kind == "c":
        raise TypeError(f"{where}: `{argument}` must be a real numeric array, received complex dtype {a.dtype}; "
                        f"tinycnn computes with real numbers only: pass {argument}.real, or np.abs({argument}) "
                        f"for magnitudes")
    if a.dtype.kind not in "biuf":
        hint = (f" (an object array: if it holds numbers, convert it with np.asarray({argument}, dtype=np.float32))"
                if a.dtype.kind == "O" else "")
        raise TypeError(f"{where}: `{argument}` must be a real numeric array, received dtype {a.dtype}{hint}")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel():
    """``stacklevel`` for ``warnings.warn`` (called from the caller of this function) that points at the
    first frame outside the tinycnn package: the user's line, however deep the call came from."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


class Sequential:
    """A linear stack of layers, Keras's ``Sequential``.

    Parameters
    ----------
    layers : list of Layer, optional
    name : str, optional

    Examples
    --------
    >>> model = Sequential([Conv2D(8, 3, activation='relu', input_shape=(28, 28, 1)),
    ...                     Flatten(), Dense(2, activation='softmax')])
    >>> model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    >>> history = model.fit(x, y, epochs=3, validation_split=0.2)
    """

    def __init__(self, layers=None, name=None):
        self.name = name or unique_name("sequential")
        self.layers = []
        self.built = False
        self.compiled = False
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.stop_training = False
        self.history = None
        #: Free-form JSON-serialisable facts saved with the model (class names, image size, ...).
        self.metadata = {}
        #: Compute a Winograd Conv2D and the 2x2 MaxPooling2D after it in one pass during fit,
        #: evaluate and predict (``Conv2D.forward_pooled``): same results, bit for bit, without
        #: storing the full-size output. Set to False to run every layer on its own.
        self.fuse_layers = True
        self._fused_at = ()
        for layer in layers or []:
            self.add(layer)

    # --- structure --------------------------------------------------------------------------------

    def add(self, layer):
        """Append a layer. Names must be unique within the model."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a tinycnn layer instance, received {layer!r}"
                            + (" (a class: did you forget the parentheses?)" if isinstance(layer, type) else ""))
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"Sequential.add: the model already has a layer named '{layer.name}'")
        if self.layers and layer.input_shape_arg is not None:
            raise ValueError(f"{layer.describe()}: `input_shape` is only meaningful on the first layer")
        self.layers.append(layer)
        self.built = False

    @property
    def input_shape(self):
        """Per-sample input shape with a leading ``None``, once known."""
        return (None,) + self.layers[0].input_shape if self.built else None

    @property
    def output_shape(self):
        return (None,) + self.layers[-1].output_shape if self.built else None

    @property
    def dtype(self):
        return self.layers[0].dtype

    def build(self, input_shape=None):
        """Build every layer in turn from the per-sample ``input_shape`` (no batch axis).

        Without an argument the first layer's ``input_shape=`` is used. Keras's form with a leading
        ``None`` batch axis is accepted too.
        """
        if not self.layers:
            raise ValueError(f"Model '{self.name}' has no layers: add some before building it")
        if input_shape is None:
            input_shape = self.layers[0].input_shape_arg
        if input_shape is None:
            raise ValueError(f"Model '{self.name}' does not know its input shape yet: pass `input_shape=` to "
                             f"the first layer, call build(input_shape), or call fit/predict with data first")
        input_shape = tuple(input_shape)
        if input_shape and input_shape[0] is None:
            input_shape = input_shape[1:]
        dtypes = {layer.dtype for layer in self.layers}
        if len(dtypes) > 1:
            raise ValueError(f"Model '{self.name}': all layers must share one dtype, found "
                             f"{sorted(d.name for d in dtypes)}")
        shape = input_shape
        grad_needed = False
        for layer in self.layers:
            if not layer.built or layer.input_shape != tuple(shape):
                if layer.built:
                    raise ValueError(f"{layer.describe()} was built for input {(None,) + layer.input_shape} "
                                     f"but receives {(None,) + tuple(shape)} in this model")
                layer.build(shape)
            # A layer needs to pass a gradient to its input only if something below it learns.
            layer.input_grad_needed = grad_needed
            grad_needed = grad_needed or bool(layer.params)
            shape = layer.output_shape
        self.built = True
        self._head_fusion()

    def _head_fusion(self):
        """Decide whether the loss takes the last layer's logits (see the module docstring)."""
        head = self.layers[-1]
        act = getattr(head, "activation", None)
        self._fused = (self.loss is not None and not self.loss.from_logits and act is not None
                       and self.loss.fuses_with == act.name)

    # --- compile ----------------------------------------------------------------------------------

    def compile(self, optimizer="adam", loss=None, metrics=None):
        """Configure training.

        Parameters
        ----------
        optimizer : 'adam', 'sgd' or an Optimizer, default 'adam'
            Keras's default is 'rmsprop', which tinycnn does not ship; Adam is what people pass.
        loss : str or Loss
            'categorical_crossentropy', 'sparse_categorical_crossentropy',
            'categorical_focal_crossentropy', 'binary_crossentropy', or an instance.
        metrics : list of str or Metric, optional
            'accuracy' picks the accuracy matching the loss, as in Keras.
        """
        if loss is None:
            raise ValueError("compile: argument `loss` is required, e.g. loss='categorical_crossentropy'")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        self.metrics = [metrics_module.get(m, self.loss.target_kind) for m in metrics]
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"compile: metric names must be unique and not 'loss', received {names}")
        self.compiled = True
        if not self.built and self.layers and self.layers[0].input_shape_arg is not None:
            self.build()
        if self.built:
            self._head_fusion()

    def _require_compiled(self, where):
        if not self.compiled:
            raise ValueError(f"{where}: the model must be compiled first: call "
                             f"model.compile(optimizer='adam', loss='categorical_crossentropy', "
                             f"metrics=['accuracy']) before {where}()")

    # --- validation at the entry points -----------------------------------------------------------

    def _check_x(self, x, where, argument="x", allow_empty=False):
        if x is None:
            raise ValueError(f"{where}: argument `{argument}` is required")
        x = _as_array(x, where, argument)
        _real_numbers(x, where, argument)
        if not self.built:
            if x.ndim < 2:
                raise ValueError(f"{where}: `{argument}` must be a batch of samples (N, ...), received shape "
                                 f"{x.shape}")
            self.build(x.shape[1:])
        first = self.layers[0]
        expected = (None,) + first.input_shape
        if x.ndim != len(expected) or tuple(x.shape[1:]) != first.input_shape:
            raise ValueError(f"{where}: input to layer '{first.name}' ({type(first).__name__}) must have shape "
                             f"{expected}, received `{argument}` with shape {x.shape}")
        if x.shape[0] == 0 and not allow_empty:
            raise ValueError(f"{where}: `{argument}` holds no samples (shape {x.shape})")
        if x.dtype.kind == "f":
            # Per-sample extremes: NaN propagates through max/min, so one pass each finds NaN, Inf and
            # values too large for the model's dtype, without a temporary the size of x.
            axes = tuple(range(1, x.ndim))
            high, low = x.max(axis=axes), x.min(axis=axes)
            finite = np.isfinite(high) & np.isfinite(low)
            if not finite.all():
                raise ValueError(f"{where}: `{argument}` contains NaN or Inf, first in sample "
                                 f"{int(np.argmin(finite))}")
            if x.dtype.itemsize > self.dtype.itemsize:  # e.g. float64 data for a float32 model
                limit = np.finfo(self.dtype).max
                inside = (high <= limit) & (low >= -limit)
                if not inside.all():
                    raise ValueError(f"{where}: `{argument}` holds values beyond the {self.dtype} range "
                                     f"(|value| > {limit:.3g}), first in sample {int(np.argmin(inside))}; they "
                                     f"would become Inf in the model's {self.dtype}")
        elif x.dtype in (np.uint8, np.uint16):
            top = np.iinfo(x.dtype).max
            self._warn_once("unscaled input", (
                f"{where}: `{argument}` holds {x.dtype} values (unscaled pixels, 0..{top}), but the network "
                f"works best on floats in [0, 1]: divide by {top} first ({argument}.astype('float32') / {top}), "
                f"or read images with tinycnn.data (load_npz, image_folder), which scale them. "
                f"(Shown once per model.)"))
        return x

    def _check_y(self, y, n, where, argument="y"):
        if y is None:
            raise ValueError(f"{where}: argument `{argument}` (the targets) is required")
        head = self.layers[-1]
        if len(head.output_shape) != 1:
            raise ValueError(f"{where}: the loss expects the model's output to be (batch, classes), but "
                             f"{head.describe()} outputs {(None,) + head.output_shape}; end the model with "
                             f"Flatten() or GlobalAveragePooling2D() and a Dense layer")
        y = _as_array(y, where, argument)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"{where}: `x` has {n} samples but `{argument}` has "
                             f"{y.shape[0] if y.ndim else 'none (a scalar)'}; they must match")
        return self.loss.check_targets(y, head.output_shape[-1], owner=where, argument=argument)

    def _check_sample_weight(self, sample_weight, n, where):
        if sample_weight is None:
            return None
        w = _as_array(sample_weight, where, "sample_weight")
        _real_numbers(w, where, "sample_weight")
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.shape != (n,):
            raise ValueError(f"{where}: `sample_weight` must hold one weight per sample, shape ({n},), received "
                             f"shape {w.shape}")
        w = w.astype(np.float64)
        finite = np.isfinite(w)
        if not finite.all():
            raise ValueError(f"{where}: `sample_weight` contains NaN or Inf, first in sample {int(np.argmin(finite))}")
        if (w < 0).any():
            i = int(np.argmax(w < 0))
            raise ValueError(f"{where}: `sample_weight` must be >= 0, sample {i} has weight {float(w[i])!r}")
        return w

    def _warn_once(self, key, message, category=UserWarning):
        """Warn with ``message`` the first time ``key`` comes up for this model; stay silent after."""
        warned = self.__dict__.setdefault("_warned_once", set())
        if key not in warned:
            warned.add(key)
            warnings.warn(message, category, stacklevel=_user_stacklevel())

    def _class_labels(self, y):
        if self.loss.target_kind == "sparse":
            return y.astype(np.int64)
        if y.shape[1] == 1:
            return (y[:, 0] > 0.5).astype(np.int64)
        return np.argmax(y, axis=1)

    def _targets_from_labels(self, labels, where):
        """Integer class labels (from a batch source) in the form the loss expects."""
        k = self.layers[-1].output_shape[-1]
        if labels.dtype.kind not in "biu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
            raise TypeError(f"{where}: a batch source must yield integer class labels, received dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if self.loss.target_kind == "categorical":
            bad = (labels < 0) | (labels >= k)
            if bad.any():
                raise ValueError(f"{where}: labels must be in [0, {k}) for a model with {k} outputs; received "
                                 f"label {labels[np.argmax(bad)]}")
            return np.eye(k, dtype=np.float32)[labels]
        if self.loss.target_kind == "binary":
            return labels[:, None].astype(np.float32)
        return labels

    def _class_weights(self, class_weight, labels, where):
        """Per-class weight table from ``class_weight`` (a dict or ``'balanced'``) and the labels."""
        n_classes = max(self.layers[-1].output_shape[-1], 2)
        if isinstance(class_weight, str) and class_weight == "balanced":
            from sklearn.utils.class_weight import compute_class_weight
            present = np.unique(labels)
            weights = compute_class_weight("balanced", classes=present, y=labels)
            table = np.ones(n_classes)
            table[present] = weights
        elif isinstance(class_weight, dict):
            table = np.ones(n_classes)
            for key, value in class_weight.items():
                if not _is_int(key) or not 0 <= key < n_classes:
                    raise ValueError(f"{where}: `class_weight` key {key!r} is not a class index in [0, {n_classes})")
                if not isinstance(value, (int, float, np.floating, np.integer)) or not 0 <= value < math.inf:
                    raise ValueError(f"{where}: `class_weight` value for class {key} must be a finite float >= 0, "
                                     f"received {value!r}")
                table[key] = float(value)
        else:
            raise ValueError(f"{where}: `class_weight` must be a dict {{class_index: weight}} or 'balanced', "
                             f"received {class_weight!r}")
        return table

    def _data(self, x, y, sample_weight, where, need_targets=True, allow_empty=False):
        """Validate the data given to an entry point; return an ArrayBatches or SourceBatches."""
        if is_batch_source(x):
            if y is not None or sample_weight is not None:
                raise ValueError(f"{where}: `y` and `sample_weight` must be None when `x` is a batch source "
                                 f"(it yields its own labels), received y={type(y).__name__}")
            shape = tuple(x.element_shape)
            if not self.built:
                self.build(shape)
            if shape != self.layers[0].input_shape:
                first = self.layers[0]
                raise ValueError(f"{where}: input to layer '{first.name}' ({type(first).__name__}) must have shape "
                                 f"{(None,) + first.input_shape}, but the batch source yields {(None,) + shape}")
            if len(x) == 0 and not allow_empty:
                raise ValueError(f"{where}: the batch source holds no samples")
            return SourceBatches(x, self, where, need_targets)
        x = self._check_x(x, where, allow_empty=allow_empty)
        y = self._check_y(y, x.shape[0], where) if need_targets else None
        sw = self._check_sample_weight(sample_weight, x.shape[0], where) if need_targets else None
        return ArrayBatches(x, y, sw, self.dtype)

    def _check_batch_size(self, batch_size, where):
        if batch_size is None:
            return 32
        if not _is_int(batch_size) or batch_size <= 0:
            raise ValueError(f"{where}: invalid value for argument `batch_size`: expected a positive int, "
                             f"received {batch_size!r}")
        return int(batch_size)

    # --- one step ---------------------------------------------------------------------------------

    def _fusion_plan(self):
        """Indices of the Conv2D layers whose next layer (a 2x2 max pooling) runs inside them."""
        if not self.fuse_layers:
            return ()
        body = self.layers[:-1]  # the head stays on its own: the loss reads its logits
        return tuple(i for i in range(len(body) - 1)
                     if isinstance(body[i], Conv2D) and body[i].fuses_with(body[i + 1]))

    def _forward(self, x, training):
        self._fused_at = fused = self._fusion_plan()
        i = 0
        while i < len(self.layers):
            if i in fused:
                x = self.layers[i].forward_pooled(x, training=training)
                i += 2
            else:
                x = self.layers[i].forward(x, training=training)
                i += 1
        return x

    def _loss(self, out, y, sample_weight):
        """Loss value, per-sample losses and the gradient to start backward from."""
        if self._fused:
            value, per_sample, grad = self.loss.value_and_grad(y, self.layers[-1].logits, sample_weight,
                                                               logits=True)
        else:
            value, per_sample, grad = self.loss.value_and_grad(y, out.reshape(out.shape[0], -1), sample_weight)
        return value, per_sample, grad

    def _backward(self, grad):
        head = self.layers[-1]
        grad = head.backward_from_logits(grad) if self._fused else head.backward(grad.reshape(
            (-1,) + head.output_shape))
        fused = self._fused_at
        for i in reversed(range(len(self.layers) - 1)):
            if grad is None:
                break
            if i - 1 in fused:    # a pooling layer that ran inside the convolution before it
                continue
            layer = self.layers[i]
            grad = layer.backward_pooled(grad) if i in fused else layer.backward(grad)
        return grad

    def _trainable(self):
        return [(f"{layer.name}/{key}", value, layer.grads[key])
                for layer in self.layers if layer.trainable for key, value in layer.params.items()]

    def compute_gradients(self, x, y, sample_weight=None, training=True):
        """Forward and backward on one batch without updating: returns ``(loss, output)``; the
        gradients are left in each ``layer.grads``. Used by ``train_on_batch`` and ``gradcheck``."""
        out = self._forward(x, training=training)
        value, _, grad = self._loss(out, y, sample_weight)
        self._backward(grad)
        return value + self._regularization(gradients=True), out

    def _regularization(self, gradients):
        """The layers' weight penalties (``kernel_regularizer``, ...), added to the loss as Keras
        does; with ``gradients=True`` each layer also adds its penalty's gradient to ``grads``."""
        return sum(layer.regularization(gradients) for layer in self.layers)

    # --- fit --------------------------------------------------------------------------------------

    @contextmanager
    def _training(self, where):
        """Mark this model as being trained by the calling thread for the duration of the block.

        Another thread that tries to train the same model meanwhile gets a RuntimeError: two
        training loops interleaving their steps on one set of weights and optimizer moments would
        silently corrupt both. The same thread may nest (``train_on_batch`` from a callback).
        """
        me = threading.get_ident()
        with self.__dict__.setdefault("_trainer_lock", threading.Lock()):
            owner = self.__dict__.get("_trainer")
            if owner is not None and owner[0] != me:
                raise RuntimeError(f"{where}: model '{self.name}' is already being trained by another thread "
                                   f"({owner[1]}); train one model from one thread at a time (predict and "
                                   f"evaluate may be called from any thread)")
            self._trainer = (me, where) if owner is None else owner
        try:
            yield
        finally:
            if owner is None:
                self._trainer = None

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0):
        """Train for ``epochs`` passes over the data; returns a :class:`~tinycnn.callbacks.History`.

        Arguments and defaults are Keras's. ``x`` is an array (with targets ``y``) or a batch source
        such as ``tinycnn.data.image_folder(...)`` (which yields its own labels; see
        ``tinycnn/batching.py``); ``validation_data`` likewise takes ``(x_val, y_val)`` or a source.
        ``validation_split`` takes the *last* fraction of the arrays before shuffling, as Keras does.
        ``class_weight`` is a dict ``{class: weight}`` or ``'balanced'`` (weights
        ``N / (K * count_k)``, scikit-learn's rule).
        """
        self._require_compiled("fit")
        with self._training("fit"):
            return self._fit(x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                             shuffle, class_weight, sample_weight, initial_epoch)

    def _fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
             class_weight, sample_weight, initial_epoch):
        train = self._data(x, y, sample_weight, "fit")
        batch_size = self._check_batch_size(batch_size, "fit")
        if not _is_int(epochs) or epochs < 0:
            raise ValueError(f"fit: invalid value for argument `epochs`: expected an int >= 0, received {epochs!r}")
        if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ValueError(f"fit: invalid value for argument `validation_split`: expected a float in [0, 1), "
                             f"received {validation_split!r}")
        if validation_data is None and validation_split:
            if not isinstance(train, ArrayBatches):
                raise ValueError("fit: `validation_split` needs arrays; with a batch source pass "
                                 "`validation_data=` (e.g. another image_folder) instead")
            n_all = len(train)
            n_val = int(n_all * validation_split)
            if n_val == 0 or n_val == n_all:
                raise ValueError(f"fit: validation_split={validation_split} leaves no samples for training or "
                                 f"validation out of {n_all}")
            cut = n_all - n_val
            sw = train.sample_weight
            validation = ArrayBatches(train.x[cut:], train.y[cut:], None if sw is None else sw[cut:], self.dtype)
            train = ArrayBatches(train.x[:cut], train.y[:cut], None if sw is None else sw[:cut], self.dtype)
        elif validation_data is not None:
            validation = self._validation(validation_data)
        else:
            validation = None
        if class_weight is not None:  # training samples only, as Keras: validation stays unweighted
            train.class_weights = self._class_weights(class_weight, train.labels(self), "fit")
            if isinstance(train, ArrayBatches):
                per_sample = train.class_weights[train.labels(self)]
                sw = train.sample_weight
                train.sample_weight = per_sample if sw is None else sw * per_sample

        steps = math.ceil(len(train) / batch_size)
        verbose = 1 if verbose == "auto" else int(verbose)
        self.history = callbacks_module.History()
        cbs = list(callbacks or [])
        if verbose:
            cbs.insert(0, callbacks_module.ProgressBar(verbose=verbose, steps=steps, epochs=epochs))
        cbs.append(self.history)
        for cb in cbs:
            cb.set_model(self)
        shuffle_rng = rng.generator()
        self.stop_training = False
        warned_nan = False
        # Metric results after every batch only when something shows or reads them: an exact AUC
        # re-ranks everything seen so far, so per-batch results would cost O(N log N) per batch.
        batch_metrics = any(cb.wants_batch_metrics() for cb in cbs)
        for cb in cbs:
            cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            loss_sum, seen, logs = 0.0, 0, {}
            for m in self.metrics:
                m.reset()
            for step, (xb, yb, wb) in enumerate(train.batches(batch_size, shuffle, shuffle_rng)):
                with compute_lock():
                    value, out = self.compute_gradients(xb, yb, wb)
                    self.optimizer.apply(self._trainable())
                    for m in self.metrics:
                        m.update(yb, out.reshape(out.shape[0], -1), wb)
                seen += xb.shape[0]
                loss_sum += value * xb.shape[0]
                logs = {"loss": loss_sum / seen}
                if batch_metrics:
                    logs.update({m.name: m.result() for m in self.metrics})
                if not math.isfinite(value) and not warned_nan:
                    warnings.warn(f"fit: the loss became {value} at epoch {epoch + 1}, batch {step + 1}; training "
                                  f"has diverged (try a smaller learning rate, or pass "
                                  f"callbacks=[TerminateOnNaN()])", RuntimeWarning, stacklevel=_user_stacklevel())
                    warned_nan = True
                for cb in cbs:
                    cb.on_train_batch_end(step, logs)
                if self.stop_training:
                    break
            logs.update({m.name: m.result() for m in self.metrics})
            if validation is not None:
                for cb in cbs:
                    cb.on_test_begin()
                val = self._evaluate_batches(validation, batch_size)
                logs.update({f"val_{k}": v for k, v in val.items()})
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        self.optimizer.finalize_variable_values(self._trainable())
        for cb in cbs:
            cb.on_train_end()
        return self.history

    def _validation(self, validation_data):
        if is_batch_source(validation_data):
            return self._data(validation_data, None, None, "fit (validation_data)")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: `validation_data` must be a tuple (x_val, y_val), (x_val, y_val, sample_weight) "
                             "or a batch source")
        return self._data(validation_data[0], validation_data[1],
                          validation_data[2] if len(validation_data) == 3 else None, "fit (validation_data)")

    # --- evaluate / predict -----------------------------------------------------------------------

    def _evaluate_batches(self, data, batch_size):
        self._warn_if_batchnorm_unsettled()
        loss_sum, seen = 0.0, 0
        for m in self.metrics:
            m.reset()
        for xb, yb, wb in data.batches(batch_size):
            with compute_lock():
                out = self._forward(xb, training=False)
                value, _, _ = self._loss(out, yb, wb)
                for m in self.metrics:
                    m.update(yb, out.reshape(out.shape[0], -1), wb)
            loss_sum += (value + self._regularization(gradients=False)) * xb.shape[0]
            seen += xb.shape[0]
        return {"loss": loss_sum / seen, **{m.name: m.result() for m in self.metrics}}

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, return_dict=False):
        """Loss and metrics in inference mode: ``[loss, *metrics]`` (or just the loss with no metrics),
        or a dict with ``return_dict=True``, as Keras returns them. ``x`` may be a batch source."""
        self._require_compiled("evaluate")
        data = self._data(x, y, sample_weight, "evaluate")
        batch_size = self._check_batch_size(batch_size, "evaluate")
        result = self._evaluate_batches(data, batch_size)
        verbose = 1 if verbose == "auto" else int(verbose)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in result.items()), file=sys.stdout)
        if return_dict:
            return result
        values = list(result.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for ``x`` in inference mode, batch by batch: ``(N,) + output_shape``.

        ``x`` may be a batch source (read in its own order, unshuffled). Zero samples give an empty
        ``(0,) + output_shape`` array, as Keras and NumPy code expect after filtering a batch down to
        nothing. Keras's default ``verbose`` is 'auto'; tinycnn prints nothing unless asked.
        """
        data = self._data(x, None, None, "predict", need_targets=False, allow_empty=True)
        batch_size = self._check_batch_size(batch_size, "predict")
        self._warn_if_batchnorm_unsettled()
        out = np.empty((len(data),) + self.layers[-1].output_shape, dtype=self.dtype)
        lo = 0
        for xb, _, _ in data.batches(batch_size):
            with compute_lock():
                out[lo:lo + xb.shape[0]] = self._forward(xb, training=False)
            lo += xb.shape[0]
        if lo != out.shape[0]:
            raise ValueError(f"predict: the batch source announced {out.shape[0]} samples but yielded {lo}")
        if verbose:
            print(f"predict: {lo} samples", file=sys.stdout)
        return out

    def __call__(self, x, training=False):
        """``model(x)``: the forward pass on a batch, validated, as Keras's functional call."""
        x = self._check_x(x, "Sequential.__call__")
        with compute_lock():
            return self._forward(np.ascontiguousarray(x, dtype=self.dtype), training=training).copy()

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics on that batch)."""
        self._require_compiled("train_on_batch")
        x = self._check_x(x, "train_on_batch")
        y = self._check_y(y, x.shape[0], "train_on_batch")
        sw = self._check_sample_weight(sample_weight, x.shape[0], "train_on_batch")
        if class_weight is not None:
            labels = self._class_labels(y)
            cw = self._class_weights(class_weight, labels, "train_on_batch")[labels]
            sw = cw if sw is None else sw * cw
        with self._training("train_on_batch"), compute_lock():
            value, out = self.compute_gradients(np.ascontiguousarray(x, dtype=self.dtype), y, sw)
            self.optimizer.apply(self._trainable())
            result = {"loss": value}
            for m in self.metrics:
                m.reset()
                m.update(y, out.reshape(out.shape[0], -1), sw)
                result[m.name] = m.result()
        if return_dict:
            return result
        values = list(result.values())
        return values[0] if len(values) == 1 else values

    # --- batch-norm statistics ---------------------------------------------------------------------

    def recalibrate_batchnorm(self, x, batch_size=None):
        """Replace every BatchNormalization layer's moving statistics by the exact population mean
        and variance of its input over ``x``, as the network computes it in inference mode.

        Why: with Keras's default momentum 0.99 the moving statistics need several hundred updates
        to forget their initial values (0 and 1). A small data set trained for a few epochs gives
        far fewer, and the model then behaves well in training mode but badly at inference. This
        fixes it in one pass per batch-norm layer, without changing any trained weight.

        The layers are done in order, each from the outputs of the layers before it with their
        statistics already recalibrated, so the result is exactly what inference will see.
        """
        data = self._data(x, None, None, "recalibrate_batchnorm", need_targets=False)
        batch_size = self._check_batch_size(batch_size, "recalibrate_batchnorm")
        for k, bn in enumerate(self.layers):
            if not isinstance(bn, BatchNormalization):
                continue
            c = bn.input_shape[-1]
            total = np.zeros(c)
            total_sq = np.zeros(c)
            count = 0
            shift = None
            for h, _, _ in data.batches(batch_size):
                with compute_lock():
                    for layer in self.layers[:k]:
                        h = layer.forward(h, training=False)
                    h2d = h.reshape(-1, c).astype(np.float64)
                if shift is None:
                    shift = h2d[0].copy()  # shifted sums keep the variance accurate
                d = h2d - shift
                total += d.sum(axis=0)
                total_sq += (d * d).sum(axis=0)
                count += h2d.shape[0]
            mean = total / count
            bn.state["moving_mean"][...] = shift + mean
            bn.state["moving_variance"][...] = np.maximum(total_sq / count - mean * mean, 0.0)
            bn.recalibrated = True

    def _warn_if_batchnorm_unsettled(self):
        """Warn once per model when inference would use moving statistics that still mostly hold
        their initial values (see :meth:`recalibrate_batchnorm`)."""
        if "batchnorm" in self.__dict__.get("_warned_once", ()):
            return
        for layer in self.layers:
            if isinstance(layer, BatchNormalization) and not layer.statistics_settled():
                left = layer.momentum ** layer.updates
                self._warn_once("batchnorm", (
                    f"{layer.describe()} has had {layer.updates} training updates with momentum {layer.momentum}: "
                    f"its moving statistics still carry {100 * left:.0f}% of their initial values (0 and 1), so "
                    f"inference-mode outputs may be poor. Call model.recalibrate_batchnorm(x_train) after training "
                    f"to set them from the data."), RuntimeWarning)
                return

    # --- weights, summary, saving -----------------------------------------------------------------

    def get_weights(self):
        """All layers' weights, in layer order and Keras's per-layer order and layouts."""
        self._require_built("get_weights")
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Inverse of :meth:`get_weights`; shapes must match exactly."""
        self._require_built("set_weights")
        weights = list(weights)
        expected = sum(len(layer.get_weights()) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"set_weights: model '{self.name}' has {expected} weight arrays, received "
                             f"{len(weights)}")
        i = 0
        for layer in self.layers:
            k = len(layer.get_weights())
            layer.set_weights(weights[i:i + k])
            i += k

    def _require_built(self, where):
        if not self.built:
            try:
                self.build()
            except ValueError:
                raise ValueError(f"{where}: model '{self.name}' is not built yet (its input shape is unknown): "
                                 f"pass `input_shape=` to the first layer or call build(input_shape)") from None

    def count_params(self):
        self._require_built("count_params")
        return sum(layer.count_params() for layer in self.layers)

    def summary(self, print_fn=None):
        """Print a Keras-style table: layer (type), output shape, parameter count, then totals."""
        self._require_built("summary")
        print_fn = print_fn or print
        labels = [f"{layer.name} ({type(layer).__name__})" for layer in self.layers]
        widths = (max(30, max(len(s) for s in labels) + 2), 26, 12)
        rule = "_" * sum(widths)
        lines = [f'Model: "{self.name}"', rule,
                 "Layer (type)".ljust(widths[0]) + "Output Shape".ljust(widths[1]) + "Param #".rjust(widths[2]),
                 "=" * sum(widths)]
        for label, layer in zip(labels, self.layers):
            lines.append(label.ljust(widths[0]) + str((None,) + layer.output_shape).ljust(widths[1])
                         + f"{layer.count_params():,}".rjust(widths[2]))
        total = self.count_params()
        trainable = sum(v.size for _, v, _ in self._trainable())
        itemsize = self.dtype.itemsize
        lines += ["=" * sum(widths),
                  f"Total params: {total:,} ({total * itemsize / 1024:,.2f} KB)",
                  f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}",
                  rule]
        print_fn("\n".join(lines))

    def save(self, filepath):
        """Save architecture, weights, compile settings and optimizer state to one file (no pickle).
        See :func:`tinycnn.saving.save_model`."""
        from .saving import save_model
        save_model(self, filepath)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)} built={self.built}>"
