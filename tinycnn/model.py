"""``Model`` (Keras's functional API) and ``Sequential`` (a linear ``Model``): build, compile, fit,
evaluate, predict.

A model is a graph of layer calls from its inputs to its output (``layers/node.py``), compiled once
into an execution plan (``graph.py``). The training loop lives here and nowhere else. One step,
for a batch ``(x, y)`` (:meth:`Model.train_step`):

1. forward: the plan's steps in order, in training mode;
2. loss and its gradient with respect to the output (:meth:`Model.compute_loss`). When the output
   layer ends in a softmax (or a sigmoid) and the loss takes probabilities, the loss *reads the
   logits* of that layer and the gradient starts there (``p - y`` for cross-entropy): exact, and no
   ``log(0)``;
3. backward: the steps in reverse, each storing its parameter gradients;
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

from . import archive
from . import callbacks as callbacks_module
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from . import rng
from ._threads import compute_lock
from .batching import ArrayAdapter, SourceAdapter, is_batch_source
from .graph import Plan, topological_nodes
from .layers import LAYER_CLASSES
from .layers.base import Layer, unique_name
from .layers.core import InputLayer
from .layers.node import SymbolicTensor
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


#: ``recalibrate_batchnorm`` keeps each batch's values between two batch-norm layers while they
#: take at most this much memory; beyond it, each layer's pass starts again from the input.
RECALIBRATION_KEEP_BYTES = 256 * 2**20


def _tensor_list(value, argument, where):
    """``value`` (a symbolic tensor or a list of them) as a list, or a ValueError naming the argument."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(t, SymbolicTensor) for t in items):
        raise ValueError(f"{where}: `{argument}` must be symbolic tensors (from tinycnn.Input and layers called on "
                         f"it), received {value!r}")
    return items


class _CallbackList:
    """The callbacks of one ``fit``, called together and in order (Keras's ``CallbackList``)."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)

    def wants_batch_metrics(self):
        return any(cb.wants_batch_metrics() for cb in self.callbacks)

    def dispatch(self, event, *args):
        """``cb.<event>(*args)`` for every callback: ``dispatch('on_epoch_end', epoch, logs)``."""
        for cb in self.callbacks:
            getattr(cb, event)(*args)


class Model:
    """A network of layers from ``inputs`` to ``outputs``, Keras's functional ``Model``.

    Parameters
    ----------
    inputs : SymbolicTensor or list of them
        From :func:`tinycnn.Input`; several inputs (an image and a vector of clinical features) are
        fed as a list: ``model.fit([images, features], y)``.
    outputs : SymbolicTensor (or a list of one)
        The result of calling layers on the inputs. Models with several outputs are not supported
        yet: build one model per output, sharing layers.
    name : str, optional

    Examples
    --------
    >>> image = Input(shape=(28, 28, 1))
    >>> x = Conv2D(16, 3, padding='same', activation='relu')(image)
    >>> y = Conv2D(16, 3, padding='same')(x)
    >>> x = ReLU()(Add()([x, y]))                      # a residual connection
    >>> model = Model(image, Dense(2, activation='softmax')(GlobalAveragePooling2D()(x)))
    >>> model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['auc'])

    A layer called twice shares its weights (its gradients add up). ``Model(model.inputs,
    model.get_layer('flatten').output)`` is a feature extractor that shares the trained weights.
    """

    def __init__(self, inputs=None, outputs=None, name=None):
        self.name = name or unique_name("functional" if type(self) is Model else "sequential")
        self.layers = []
        self.inputs, self.outputs = [], []
        self.built = False
        self.compiled = False
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.stop_training = False
        self.history = None
        #: Free-form JSON-serialisable facts saved with the model (class names, image size, ...).
        self.metadata = {}
        self._fuse_layers = True
        self._fast_inference = False
        self._plan = None
        self._nodes = []
        self._reads_logits = False
        if inputs is None and outputs is None:
            return
        if inputs is None or outputs is None:
            raise ValueError("Model: give both `inputs` and `outputs` (symbolic tensors), e.g. "
                             "Model(inputs=image, outputs=probabilities)")
        inputs = _tensor_list(inputs, "inputs", f"Model '{self.name}'")
        outputs = _tensor_list(outputs, "outputs", f"Model '{self.name}'")
        self._set_graph(inputs, outputs)
        layers = []
        for node in self._nodes:
            if not any(layer is node.layer for layer in layers):
                layers.append(node.layer)
        names = [layer.name for layer in layers]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"Model '{self.name}': layer names must be unique, found several layers named "
                             f"{duplicated}")
        self.layers = layers

    def _set_graph(self, inputs, outputs):
        where = f"Model '{self.name}'"
        for t in inputs:
            if not t.node.is_input:
                raise ValueError(f"{where}: every input must come from tinycnn.Input(...), but `inputs` holds the "
                                 f"output of layer '{t.name}'")
        if len({id(t) for t in inputs}) != len(inputs):
            raise ValueError(f"{where}: the same input appears twice in `inputs`")
        if len(outputs) != 1:
            raise ValueError(f"{where}: models with several outputs are not supported yet (received {len(outputs)}: "
                             f"{[t.name for t in outputs]}); build one model per output (they may share layers)")
        self._nodes = topological_nodes(inputs, outputs, where)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.built = True
        self._plan = None
        self._reading_logits()

    # --- structure --------------------------------------------------------------------------------

    @property
    def input_shape(self):
        """``(None,) + shape`` of the input (a list of them for several inputs), once built."""
        if not self.built:
            return None
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        return self.outputs[0].shape if self.built else None

    @property
    def dtype(self):
        return self.inputs[0].dtype if self.inputs else self.layers[0].dtype

    @property
    def _output_layer(self):
        return self.outputs[0].node.layer

    def get_layer(self, name=None, index=None):
        """The layer called ``name`` (or at position ``index`` of ``model.layers``), as in Keras."""
        if (name is None) == (index is None):
            raise ValueError("get_layer: give either `name` or `index`")
        if index is not None:
            if not _is_int(index) or not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"get_layer: `index` {index!r} is out of range for {len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: model '{self.name}' has no layer named {name!r}; its layers are "
                         f"{[layer.name for layer in self.layers]}")

    def build(self, input_shape=None):
        """A functional model is built when it is made; this only checks ``input_shape`` if given."""
        if input_shape is not None:
            given = tuple(input_shape)
            if given != self.input_shape and given != tuple(self.input_shape[1:]):
                raise ValueError(f"Model '{self.name}' takes input {self.input_shape}, not {given}")

    @property
    def fuse_layers(self):
        """Compute a Winograd Conv2D and the 2x2 MaxPooling2D after it in one step (``graph.py``):
        same results, bit for bit, without storing the full-size output. Set to False to run
        every layer on its own."""
        return self._fuse_layers

    @fuse_layers.setter
    def fuse_layers(self, value):
        self._fuse_layers = bool(value)
        self._plan = None

    @property
    def fast_inference(self):
        """Off by default. On, the inference calls (``predict``, ``evaluate``, ``model(x)``) run each
        Winograd convolution with F(4x4, 3x3) (``tinycnn/kernels/winograd4.py``): 36 matrix products
        per 4x4 outputs instead of 64, 1.2x-1.3x the throughput of the reference model from batch 32
        up (README, Benchmarks), for float32 outputs that differ from the exact ones by about 3e-6 of
        their scale instead of 1e-7. Training, ``train_on_batch`` and Grad-CAM always run
        the exact algorithms. Keras has no such switch; it is a runtime setting, not saved."""
        return self._fast_inference

    @fast_inference.setter
    def fast_inference(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"Model '{self.name}'.fast_inference: expected True or False, received {value!r}")
        self._fast_inference = bool(value)
        self._plan = None  # the next plan hands the setting to the layers (and twins of shared ones)

    @property
    def plan(self):
        """The execution plan (``tinycnn.graph.Plan``), compiled on first use after building."""
        self._require_built("plan")
        if self._plan is None:
            for layer in self.layers:
                if hasattr(layer, "fast_inference"):
                    layer.fast_inference = self._fast_inference
            self._plan = Plan(self.inputs, self.outputs[0], fuse=self._fuse_layers)
        return self._plan

    def _fusion_plan(self):
        """Positions in ``model.layers`` of the convolutions that compute their pooling inside them."""
        return tuple(sorted(self.layers.index(step.owner) for step in self.plan.steps if step.pool is not None))

    _fused_at = property(_fusion_plan)

    def _reading_logits(self):
        """Decide whether the loss reads the output layer's logits (see the module docstring)."""
        act = getattr(self._output_layer, "activation", None) if self.built else None
        self._reads_logits = (self.loss is not None and not self.loss.from_logits and act is not None
                              and self.loss.reads_logits_of == act.name)

    # --- compile ----------------------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Configure training.

        Parameters
        ----------
        optimizer : str or Optimizer, default 'rmsprop'
            'rmsprop', 'adam', 'adamw', 'sgd', or an instance (Keras's default; tinycnn 0.1, which
            had no RMSprop, defaulted to Adam).
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
        self._build_if_shape_known()
        self._reading_logits()

    def _build_if_shape_known(self):
        pass

    def _require_compiled(self, where):
        if not self.compiled:
            raise ValueError(f"{where}: the model must be compiled first: call "
                             f"model.compile(optimizer='adam', loss='categorical_crossentropy', "
                             f"metrics=['accuracy']) before {where}()")

    # --- validation at the entry points -----------------------------------------------------------

    def _input_reader(self, i):
        """The layer error messages name for input ``i``: the first layer that reads it."""
        return self.inputs[i].node.layer

    def _check_x(self, x, where, argument="x", allow_empty=False):
        """Validate the inputs: an array for a one-input model, else a list of arrays."""
        xs = self._check_inputs(x, where, argument, allow_empty)
        return xs[0] if len(xs) == 1 else xs

    def _check_inputs(self, x, where, argument="x", allow_empty=False):
        """``x`` as a list of validated arrays, one per model input."""
        if x is None:
            raise ValueError(f"{where}: argument `{argument}` is required")
        several = self.built and len(self.inputs) > 1
        if several:
            if not isinstance(x, (list, tuple)) or len(x) != len(self.inputs):
                raise ValueError(f"{where}: model '{self.name}' has {len(self.inputs)} inputs "
                                 f"{[t.name for t in self.inputs]}; pass `{argument}` as a list of "
                                 f"{len(self.inputs)} arrays in that order, received "
                                 f"{type(x).__name__ if not isinstance(x, (list, tuple)) else f'{len(x)} items'}")
            arrays = [_as_array(a, where, f"{argument}[{i}]") for i, a in enumerate(x)]
            names = [f"{argument}[{i}]" for i in range(len(arrays))]
        else:
            if isinstance(x, (list, tuple)) and len(x) == 1 and hasattr(x[0], "shape"):
                x = x[0]
            arrays, names = [_as_array(x, where, argument)], [argument]
        for a, name in zip(arrays, names):
            _real_numbers(a, where, name)
        if not self.built:
            if arrays[0].ndim < 2:
                raise ValueError(f"{where}: `{argument}` must be a batch of samples (N, ...), received shape "
                                 f"{arrays[0].shape}")
            self.build(arrays[0].shape[1:])
        for i, (a, name) in enumerate(zip(arrays, names)):
            self._check_one_input(i, a, where, name, allow_empty)
        if len({a.shape[0] for a in arrays}) > 1:
            raise ValueError(f"{where}: the inputs hold different numbers of samples "
                             f"{[a.shape[0] for a in arrays]}; they must match")
        return arrays

    def _check_one_input(self, i, x, where, argument, allow_empty):
        reader = self._input_reader(i)
        expected = self.inputs[i].shape
        if x.ndim != len(expected) or tuple(x.shape[1:]) != expected[1:]:
            hint = ""
            if x.ndim == 4 and len(expected) == 4 and tuple(x.shape[1:]) == (expected[3], *expected[1:3]):
                hint = (f"; these look like channels-first (NCHW) images, as PyTorch takes them: tinycnn takes "
                        f"channels last, `{argument}.transpose(0, 2, 3, 1)`")
            raise ValueError(f"{where}: input to layer '{reader.name}' ({type(reader).__name__}) must have shape "
                             f"{expected}, received `{argument}` with shape {x.shape}{hint}")
        if x.shape[0] == 0 and not allow_empty:
            raise ValueError(f"{where}: `{argument}` holds no samples (shape {x.shape})")
        if x.dtype.kind == "f" and x.size:
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

    def _check_y(self, y, n, where, argument="y"):
        if y is None:
            raise ValueError(f"{where}: argument `{argument}` (the targets) is required")
        head = self._output_layer
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
        k = self._output_layer.output_shape[-1]
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
        n_classes = max(self._output_layer.output_shape[-1], 2)
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
        """Validate the data given to an entry point; return an ArrayAdapter or SourceAdapter."""
        if is_batch_source(x) and need_targets and hasattr(x, "with_class_names"):
            # A folder's labels follow its sorted subfolder names; a model's follow the order it was
            # trained in. Match them by name, so that a folder sorted otherwise is never scored
            # with swapped labels: the first folder a model is fitted on sets its class names.
            if where == "fit" and not self.metadata.get("class_names"):
                self.metadata["class_names"] = list(x.class_names)
            if self.metadata.get("class_names"):
                x = x.with_class_names(self.metadata["class_names"])
        if is_batch_source(x):
            if y is not None or sample_weight is not None:
                raise ValueError(f"{where}: `y` and `sample_weight` must be None when `x` is a batch source "
                                 f"(it yields its own labels), received y={type(y).__name__}")
            shape = tuple(x.element_shape)
            if not self.built:
                self.build(shape)
            if len(self.inputs) != 1:
                raise ValueError(f"{where}: a batch source feeds one input, but model '{self.name}' has "
                                 f"{len(self.inputs)}; pass a list of arrays instead")
            if shape != self.inputs[0].sample_shape:
                reader = self._input_reader(0)
                raise ValueError(f"{where}: input to layer '{reader.name}' ({type(reader).__name__}) must have shape "
                                 f"{self.inputs[0].shape}, but the batch source yields {(None,) + shape}")
            if len(x) == 0 and not allow_empty:
                raise ValueError(f"{where}: the batch source holds no samples")

            def prepare(xb, lb):
                xb = self._check_inputs(xb, where, "a batch from the source")[0]
                xb = np.ascontiguousarray(xb, dtype=self.dtype)
                if not need_targets:
                    return xb, None
                labels = np.asarray(lb).reshape(-1)
                return xb, self._check_y(self._targets_from_labels(labels, where), xb.shape[0], where,
                                         "the source's labels")
            return SourceAdapter(x, prepare, where)
        xs = self._check_inputs(x, where, allow_empty=allow_empty)
        n = xs[0].shape[0]
        y = self._check_y(y, n, where) if need_targets else None
        sw = self._check_sample_weight(sample_weight, n, where) if need_targets else None
        return ArrayAdapter(xs, y, sw, self.dtype, labels=None if y is None else self._class_labels(y))

    def _check_batch_size(self, batch_size, where):
        if batch_size is None:
            return 32
        if not _is_int(batch_size) or batch_size <= 0:
            raise ValueError(f"{where}: invalid value for argument `batch_size`: expected a positive int, "
                             f"received {batch_size!r}")
        return int(batch_size)

    # --- one step ---------------------------------------------------------------------------------

    def _forward(self, xs, training, fold=False):
        """The output for input batches ``xs`` (a list, or one array for a one-input model).
        ``fold``: an inference call that no backward pass follows may fold batch normalizations into
        the convolutions before them (``tinycnn/graph.py``)."""
        return self.plan.forward(xs if isinstance(xs, list) else [xs], training, fold=fold)

    def _loss(self, out, y, sample_weight):
        """Loss value, per-sample losses and the gradient to start backward from."""
        if self._reads_logits:
            return self.loss.value_and_grad(y, self._output_layer.logits, sample_weight, logits=True)
        return self.loss.value_and_grad(y, out.reshape(out.shape[0], -1), sample_weight)

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        """The loss of one batch, with the layers' weight penalties, and its gradient with respect to
        the model's output (or its logits, see the module docstring): ``(value, gradient)``.

        Keras's ``compute_loss`` returns the value alone and lets automatic differentiation find
        the gradient; tinycnn has no automatic differentiation, so an override returns both.
        """
        value, _, grad = self._loss(y_pred, y, sample_weight)
        return value + self._regularization(gradients=False), grad

    @property
    def losses(self):
        """The layers' weight penalties, one float per regularized weight (Keras's ``model.losses``)."""
        return [value for layer in self.layers for value in getattr(layer, "losses", [])]

    def _regularization(self, gradients):
        """The layers' weight penalties (``kernel_regularizer``, ...), added to the loss as Keras
        does; with ``gradients=True`` each layer also adds its penalty's gradient to ``grads``."""
        return sum(layer.regularization(gradients) for layer in self.layers)

    def _trainable(self):
        return [(f"{layer.name}/{key}", value, layer.grads[key])
                for layer in self.layers if layer.trainable for key, value in layer.params.items()]

    def compute_gradients(self, x, y, sample_weight=None, training=True):
        """Forward and backward on one batch without updating: returns ``(loss, output)``; the
        gradients are left in each ``layer.grads``. Used by ``train_step`` and ``gradcheck``."""
        out = self._forward(x, training=training)
        value, grad = self.compute_loss(x, y, out, sample_weight, training)
        self.plan.backward(grad, from_logits=self._reads_logits)
        self._regularization(gradients=True)
        return value, out

    def train_step(self, data):
        """One optimizer step on one batch ``data = (xs, y, sample_weight)`` (Keras's name; override
        it to change what a step does). Updates the metrics; returns ``(loss, output)``."""
        xs, y, w = data
        with compute_lock():
            value, out = self.compute_gradients(xs, y, w)
            self.optimizer.apply(self._trainable())
            for m in self.metrics:
                m.update(y, out.reshape(out.shape[0], -1), w)
        return value, out

    def test_step(self, data):
        """Loss of one batch in inference mode; updates the metrics. Returns ``(loss, output)``."""
        xs, y, w = data
        with compute_lock():
            out = self._forward(xs, training=False, fold=True)
            value, _ = self.compute_loss(xs, y, out, w, training=False)
            for m in self.metrics:
                m.update(y, out.reshape(out.shape[0], -1), w)
        return value, out

    def predict_step(self, data):
        """The output for one batch ``data = (xs, ...)`` in inference mode (a copy)."""
        with compute_lock():
            return self._forward(data[0], training=False, fold=True).copy()

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

        Arguments and defaults are Keras's. ``x`` is an array (a list of arrays for a model with
        several inputs; with targets ``y``) or a batch source such as
        ``tinycnn.data.image_folder(...)`` (which yields its own labels; see ``tinycnn/batching.py``);
        ``validation_data`` likewise takes ``(x_val, y_val)`` or a source. ``validation_split``
        takes the *last* fraction of the arrays before shuffling, as Keras does. ``class_weight`` is
        a dict ``{class: weight}`` or ``'balanced'`` (weights ``N / (K * count_k)``, scikit-learn's
        rule).
        """
        self._require_compiled("fit")
        with self._training("fit"):
            train = self._data(x, y, sample_weight, "fit")
            batch_size = self._check_batch_size(batch_size, "fit")
            if not _is_int(epochs) or epochs < 0:
                raise ValueError(f"fit: invalid value for argument `epochs`: expected an int >= 0, received "
                                 f"{epochs!r}")
            train, validation = self._split_validation(train, validation_split, validation_data)
            if class_weight is not None:  # training samples only, as Keras: validation stays unweighted
                train.class_weights = self._class_weights(class_weight, train.labels, "fit")
            steps = math.ceil(len(train) / batch_size)
            verbose = 1 if verbose == "auto" else int(verbose)
            self.history = callbacks_module.History()
            # BackupAndRestore runs after every other callback and History: what it saves at an epoch's
            # end includes their decisions for that epoch, and what it restores in on_train_begin
            # replaces the fresh state they have just set themselves.
            given = list(callbacks or [])
            backups = [cb for cb in given if isinstance(cb, callbacks_module.BackupAndRestore)]
            cbs = [cb for cb in given if cb not in backups] + [self.history] + backups
            if verbose:  # the progress bar last, as Keras orders it
                cbs.append(callbacks_module.ProgressBar(verbose=verbose, steps=steps, epochs=epochs))
            cbs = _CallbackList(cbs, self)
            # Where the loop stands, for a callback that saves it and resumes from it (BackupAndRestore):
            # the epoch under way, how many of its batches are done, their loss sum and sample count, and
            # the shuffle generator's state when the epoch began (resuming draws the epoch's order
            # again). A callback may move `epoch` and `batch` forward in on_train_begin; fit then
            # starts there, stepping over the batches already done.
            self._fit_loop = loop = {"epoch": initial_epoch, "batch": 0, "loss_sum": 0.0, "seen": 0,
                                     "shuffle_rng": rng.generator(), "shuffle_state": None,
                                     "callbacks": cbs.callbacks}
            self.stop_training = False
            # Metric results after every batch only when something shows or reads them: an exact AUC
            # re-ranks everything seen so far, so per-batch results would cost O(N log N) per batch.
            batch_metrics = cbs.wants_batch_metrics()
            cbs.dispatch("on_train_begin")
            self._warned_nan = False
            for epoch in range(loop["epoch"], epochs):
                if self.stop_training:  # set in the previous epoch, or by a restored backup
                    break
                cbs.dispatch("on_epoch_begin", epoch)
                logs = self._train_epoch(train, batch_size, shuffle, loop, cbs, batch_metrics, epoch)
                if validation is not None:
                    cbs.dispatch("on_test_begin")
                    logs.update({f"val_{k}": v for k, v in self._evaluate_batches(validation, batch_size).items()})
                    cbs.dispatch("on_test_end")
                cbs.dispatch("on_epoch_end", epoch, logs)
            self.optimizer.finalize_variable_values(self._trainable())
            cbs.dispatch("on_train_end")
            return self.history

    def _train_epoch(self, train, batch_size, shuffle, loop, cbs, batch_metrics, epoch):
        """One pass over ``train``; returns the epoch's logs (mean loss and the metrics).

        ``loop`` is fit's record of where training stands (see :meth:`fit`). When it says that
        ``loop['batch']`` batches of this epoch are already done (a resumed run), the metrics and
        loss sums are the restored ones, the shuffle generator is back where it was when the epoch
        began, and those batches are drawn again but not trained on.
        """
        if loop["batch"] == 0:  # a fresh epoch
            loop.update(epoch=epoch, loss_sum=0.0, seen=0, shuffle_state=loop["shuffle_rng"].bit_generator.state)
            for m in self.metrics:
                m.reset()
        done = loop["batch"]
        for step, batch in enumerate(train.batches(batch_size, shuffle, loop["shuffle_rng"])):
            if step < done:
                continue
            value, _ = self.train_step(batch)
            loop["seen"] += batch[0][0].shape[0]
            loop["loss_sum"] += value * batch[0][0].shape[0]
            loop["batch"] = step + 1
            logs = {"loss": loop["loss_sum"] / loop["seen"]}
            if batch_metrics:
                logs.update({m.name: m.result() for m in self.metrics})
            if not math.isfinite(value) and not self._warned_nan:
                warnings.warn(f"fit: the loss became {value} at epoch {epoch + 1}, batch {step + 1}; training "
                              f"has diverged (try a smaller learning rate, or pass "
                              f"callbacks=[TerminateOnNaN()])", RuntimeWarning, stacklevel=_user_stacklevel())
                self._warned_nan = True
            cbs.dispatch("on_train_batch_end", step, logs)
            if self.stop_training:
                break
        loop["batch"] = 0
        return {"loss": loop["loss_sum"] / loop["seen"], **{m.name: m.result() for m in self.metrics}}

    def _split_validation(self, train, validation_split, validation_data):
        if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ValueError(f"fit: invalid value for argument `validation_split`: expected a float in [0, 1), "
                             f"received {validation_split!r}")
        if validation_data is not None:
            return train, self._validation(validation_data)
        if not validation_split:
            return train, None
        if not isinstance(train, ArrayAdapter):
            raise ValueError("fit: `validation_split` needs arrays; with a batch source pass "
                             "`validation_data=` (e.g. another image_folder) instead")
        n_all = len(train)
        n_val = int(n_all * validation_split)
        if n_val == 0 or n_val == n_all:
            raise ValueError(f"fit: validation_split={validation_split} leaves no samples for training or "
                             f"validation out of {n_all}")
        return train.split(n_all - n_val)

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
        for batch in data.batches(batch_size):
            value, _ = self.test_step(batch)
            n = batch[0][0].shape[0]
            loss_sum += value * n
            seen += n
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
        out = np.empty((len(data),) + self.output_shape[1:], dtype=self.dtype)
        lo = 0
        for batch in data.batches(batch_size):
            n = batch[0][0].shape[0]
            out[lo:lo + n] = self.predict_step(batch)
            lo += n
        if lo != out.shape[0]:
            raise ValueError(f"predict: the batch source announced {out.shape[0]} samples but yielded {lo}")
        if verbose:
            print(f"predict: {lo} samples", file=sys.stdout)
        return out

    def __call__(self, x, training=False):
        """``model(x)``: on data, the forward pass on a batch, validated; on symbolic tensors, the
        model used as a layer is not supported yet (call its layers instead)."""
        if isinstance(x, SymbolicTensor) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], SymbolicTensor)):
            raise TypeError(f"Model '{self.name}' cannot be called on symbolic tensors yet (a model used as a layer "
                            f"of another model); build the new model from its layers, e.g. "
                            f"Model(model.inputs, Dense(2)(model.get_layer('flatten').output))")
        xs = self._check_inputs(x, f"{type(self).__name__}.__call__")
        with compute_lock():
            return self._forward([np.ascontiguousarray(a, dtype=self.dtype) for a in xs], training=training,
                                 fold=not training).copy()

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics on that batch)."""
        self._require_compiled("train_on_batch")
        xs = self._check_inputs(x, "train_on_batch")
        y = self._check_y(y, xs[0].shape[0], "train_on_batch")
        sw = self._check_sample_weight(sample_weight, xs[0].shape[0], "train_on_batch")
        if class_weight is not None:
            labels = self._class_labels(y)
            cw = self._class_weights(class_weight, labels, "train_on_batch")[labels]
            sw = cw if sw is None else sw * cw
        with self._training("train_on_batch"):
            for m in self.metrics:
                m.reset()
            value, _ = self.train_step(([np.ascontiguousarray(a, dtype=self.dtype) for a in xs], y, sw))
        result = {"loss": value, **{m.name: m.result() for m in self.metrics}}
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

        The layers are done in plan order, each from the outputs of the steps before it with their
        statistics already recalibrated, so the result is exactly what inference will see. Each
        batch's forward pass goes on from where the previous layer's stopped (the values still
        needed are kept), so a network with L batch-norm layers costs about one forward pass over
        ``x``, not L of them.
        """
        data = self._data(x, None, None, "recalibrate_batchnorm", need_targets=False)
        batch_size = self._check_batch_size(batch_size, "recalibrate_batchnorm")
        plan = self.plan
        done, position, kept = set(), 0, None
        for k, step in enumerate(plan.steps):
            bn = step.owner
            if not isinstance(bn, BatchNormalization) or id(bn) in done:
                continue
            done.add(id(bn))
            c = bn.input_shape[-1]
            total = np.zeros(c)
            total_sq = np.zeros(c)
            count = 0
            shift = None
            progressed, kept_bytes = [], 0
            for b, batch in enumerate(data.batches(batch_size)):
                with compute_lock():
                    values = plan.run(batch[0], training=False, until=k, start=0 if kept is None else position,
                                      values=None if kept is None else kept[b])
                    h2d = values[step.inputs[0]].reshape(-1, c).astype(np.float64)
                    if progressed is not None:
                        progressed.append(plan.live_values(values, k))
                        kept_bytes += sum(v.nbytes for v in progressed[-1] if v is not None)
                        if kept_bytes > RECALIBRATION_KEEP_BYTES:  # too large to keep: start over next time
                            progressed = None
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
            position, kept = (k, progressed) if progressed is not None else (0, None)

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

    def _connections(self, layer):
        """``conv2d[0], input_layer[0]``: what each call of ``layer`` reads, as Keras's summary shows it."""
        calls = [node for node in self._nodes if node.layer is layer and not node.is_input]
        return "; ".join(", ".join(f"{t.name}" for t in node.inputs) for node in calls)

    def summary(self, print_fn=None, show_plan=False):
        """Print a Keras-style table: layer (type), output shape, parameter count, and for a model
        whose layers branch, what each layer reads ("Connected to"); then the totals. With
        ``show_plan=True`` also the execution plan: one line per step, the slots it reads and
        writes, the algorithm each convolution runs and which poolings run inside them."""
        self._require_built("summary")
        print_fn = print_fn or print
        calls = [node.layer for node in self._nodes]
        linear = all(len(node.inputs) <= 1 for node in self._nodes) and all(
            sum(c is layer for c in calls) <= 1 for layer in self.layers)
        labels = [f"{layer.name} ({type(layer).__name__})" for layer in self.layers]
        shapes = [str((None,) + tuple(layer.output_shape)) for layer in self.layers]
        widths = [max(30, max(len(s) for s in labels) + 2), max(26, max(len(s) for s in shapes) + 2), 12]
        header = "Layer (type)".ljust(widths[0]) + "Output Shape".ljust(widths[1]) + "Param #".rjust(widths[2])
        if not linear:
            header += "  Connected to"
        width = sum(widths) + (30 if not linear else 0)
        rule = "_" * width
        lines = [f'Model: "{self.name}"', rule, header, "=" * width]
        for label, shape, layer in zip(labels, shapes, self.layers):
            line = label.ljust(widths[0]) + shape.ljust(widths[1]) + f"{layer.count_params():,}".rjust(widths[2])
            if not linear:
                line += "  " + self._connections(layer)
            lines.append(line)
        total = self.count_params()
        trainable = sum(v.size for _, v, _ in self._trainable())
        itemsize = self.dtype.itemsize
        lines += ["=" * width,
                  f"Total params: {total:,} ({total * itemsize / 1024:,.2f} KB)",
                  f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}",
                  rule]
        if show_plan:
            plan = self.plan
            lines += [f"Execution plan: {len(plan.steps)} steps, inputs in slots "
                      f"{', '.join(f'#{i}' for i in range(plan.n_inputs))}, output in #{plan.output}"]
            lines += plan.describe()
            lines.append(rule)
        print_fn("\n".join(lines))

    # --- configuration and files ------------------------------------------------------------------

    def get_config(self):
        """The architecture as plain JSON data (Keras's name): each layer's class and configuration,
        and the graph: one entry per call (node) in plan order, naming its layer (an index into
        ``layers``) and the earlier calls it reads. :func:`model_from_config` inverts it."""
        self._require_built("get_config")
        position = {id(node): k for k, node in enumerate(self._nodes)}
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        return {"class_name": "Functional", "name": self.name, "layers": [_layer_spec(lay) for lay in self.layers],
                "nodes": [{"layer": index[id(node.layer)], "inputs": [position[id(t.node)] for t in node.inputs]}
                          for node in self._nodes],
                "inputs": [position[id(t.node)] for t in self.inputs],
                "output": position[id(self.outputs[0].node)]}

    @classmethod
    def from_config(cls, config, layers=None):
        """The model described by ``get_config()`` (unbuilt layers may be given instead of being
        made from ``config['layers']``; ``tinycnn.saving`` does so to check a file first)."""
        layers = _layers_from_config(config, layers)
        nodes, tensors = config["nodes"], []
        for k, spec in enumerate(nodes):
            layer, reads = layers[_index(spec["layer"], len(layers), "layer")], spec["inputs"]
            args = [tensors[_index(i, k, f"input of node {k}")] for i in reads]
            if not args:
                if not isinstance(layer, InputLayer):
                    raise ValueError(f"node {k}: layer '{layer.name}' reads nothing but is not an InputLayer")
                tensors.append(layer.symbolic_output())
            else:
                tensors.append(layer(args if layer.multi_input else _single(args, layer)))
        return cls([tensors[_index(i, len(tensors), "input")] for i in config["inputs"]],
                   tensors[_index(config["output"], len(tensors), "output")], name=config.get("name"))

    #: Version of the description ``save`` writes (1: tinycnn 0.1, Sequential only; 2: any graph).
    FORMAT_VERSION = 2

    def save(self, filepath):
        """Save architecture, weights, compile settings, batch-norm and optimizer state to one
        ``.npz`` file of JSON and plain arrays (no pickle), atomically (``tinycnn/archive.py``).
        ``tinycnn.load_model`` reads it back."""
        self._require_built("save")
        config = {"version": self.FORMAT_VERSION, "model": self.get_config(), "metadata": self.metadata,
                  "compile": None,
                  # How settled each batch-norm layer's moving statistics are (for the inference warning).
                  "batchnorm": {str(i): {"updates": layer.updates, "recalibrated": layer.recalibrated}
                                for i, layer in enumerate(self.layers) if isinstance(layer, BatchNormalization)}}
        arrays = {f"layers/{i}/{name}": layer._weight(name) for i, layer in enumerate(self.layers)
                  for name in layer.weight_names if layer._has_weight(name)}
        if self.compiled:
            config["compile"] = {
                "optimizer": {"class_name": type(self.optimizer).__name__, "config": self.optimizer.get_config()},
                "loss": {"class_name": type(self.loss).__name__, "config": self.loss.get_config()},
                "metrics": [m.name for m in self.metrics],
            }
            arrays.update({f"optimizer/{key}": value for key, value in self.optimizer.get_state().items()})
        archive.write(filepath, config, arrays)

    def export(self, filepath, format="onnx", channels_first=False, opset=None):
        """Write the inference graph to ``filepath`` for other engines (Keras 3's ``Model.export``).

        Only ``format='onnx'`` exists (Keras also knows TensorFlow's SavedModel, which has no place
        here). The file takes NHWC images like ``predict`` (a Transpose in front of the first
        convolution) unless ``channels_first=True``; the batch dimension is free. Needs the optional
        ``onnx`` package (``pip install "tinycnn[onnx]"``). See ``tinycnn/onnx_export.py``.
        """
        if format != "onnx":
            raise ValueError(f"Model.export: format must be 'onnx' (the only format tinycnn writes); got {format!r}")
        self._require_built("export")
        from .onnx_export import export_onnx  # the optional onnx package is imported only here
        return export_onnx(self, filepath, channels_first=channels_first, opset=opset)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} layers={len(self.layers)} built={self.built}>"


def _layer_spec(layer):
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def _layers_from_config(config, layers):
    if layers is not None:
        return layers
    specs = config["layers"]
    made = []
    for i, spec in enumerate(specs):
        name = spec["class_name"]
        if name not in LAYER_CLASSES:
            raise ValueError(f"layer {i} asks for class {name!r}, which is not a tinycnn layer")
        made.append(LAYER_CLASSES[name].from_config(spec["config"]))
    return made


def _index(value, limit, what):
    """``value`` as an index below ``limit``, or a ValueError (a description may be hostile)."""
    if not _is_int(value) or not 0 <= value < limit:
        raise ValueError(f"{what}: {value!r} is not an index in [0, {limit})")
    return int(value)


def _single(args, layer):
    if len(args) != 1:
        raise ValueError(f"{layer.describe()} takes one input, the description gives it {len(args)}")
    return args[0]


def model_from_config(config, layers=None):
    """A ``Sequential`` or functional ``Model`` from ``model.get_config()`` (by its ``class_name``)."""
    kinds = {"Sequential": Sequential, "Functional": Model}
    kind = config.get("class_name") if isinstance(config, dict) else None
    if kind not in kinds:
        raise ValueError(f"the model's class_name must be one of {sorted(kinds)}, found {kind!r}")
    return kinds[kind].from_config(config, layers)


class Sequential(Model):
    """A linear stack of layers, Keras's ``Sequential``: a ``Model`` whose graph is a chain.

    Parameters
    ----------
    layers : list of Layer, optional
        May start with ``tinycnn.Input(shape=...)`` (or give the first layer ``input_shape=``).
    name : str, optional

    Examples
    --------
    >>> model = Sequential([Conv2D(8, 3, activation='relu', input_shape=(28, 28, 1)),
    ...                     Flatten(), Dense(2, activation='softmax')])
    >>> model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    >>> history = model.fit(x, y, epochs=3, validation_split=0.2)
    """

    def __init__(self, layers=None, name=None):
        super().__init__(name=name)
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        """Append a layer. Names must be unique within the model."""
        if isinstance(layer, SymbolicTensor) and layer.node.is_input and not self.layers:
            layer = layer.node.layer  # Sequential([Input(shape=...), ...]), as Keras 3 writes it
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a tinycnn layer instance, received {layer!r}"
                            + (" (a class: did you forget the parentheses?)" if isinstance(layer, type) else ""))
        names = self.__dict__.setdefault("_layer_names", set())
        if layer.name in names:
            raise ValueError(f"Sequential.add: the model already has a layer named '{layer.name}'")
        if self.layers and layer.input_shape_arg is not None:
            raise ValueError(f"{layer.describe()}: `input_shape` is only meaningful on the first layer")
        if layer.multi_input:
            raise ValueError(f"{layer.describe()} joins several inputs, which a Sequential model never has; "
                             f"use the functional API (tinycnn.Model)")
        self.layers.append(layer)
        names.add(layer.name)
        self._unbuild()

    def _unbuild(self):
        """Forget the graph (a layer was added): the layers' nodes from it go too."""
        for node in self._nodes:
            if node in node.layer._nodes:
                node.layer._nodes.remove(node)
        self._nodes, self.inputs, self.outputs = [], [], []
        self.built = False
        self._plan = None

    @property
    def dtype(self):
        return self.layers[0].dtype

    def _input_reader(self, i):
        return self.layers[0]

    def get_config(self):
        """The layers' classes and configurations and the input shape (Keras's ``get_config``)."""
        self._require_built("get_config")
        return {"class_name": "Sequential", "name": self.name, "layers": [_layer_spec(lay) for lay in self.layers],
                "input_shape": list(self.inputs[0].sample_shape)}

    @classmethod
    def from_config(cls, config, layers=None):
        model = cls(_layers_from_config(config, layers), name=config.get("name"))
        model.build(tuple(config["input_shape"]))
        return model

    def _build_if_shape_known(self):
        if not self.built and self.layers and self.layers[0].input_shape_arg is not None:
            self.build()

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
        if self.built:
            if input_shape == self.inputs[0].sample_shape:
                return
            self._unbuild()
        dtypes = {layer.dtype for layer in self.layers}
        if len(dtypes) > 1:
            raise ValueError(f"Model '{self.name}': all layers must share one dtype, found "
                             f"{sorted(d.name for d in dtypes)}")
        first = self.layers[0]
        if isinstance(first, InputLayer):
            if tuple(input_shape) != first.input_shape:
                raise ValueError(f"{first.describe()} declares input {(None,) + first.input_shape} but the model "
                                 f"is built for {(None,) + tuple(input_shape)}")
            start, body = first, self.layers[1:]
        else:
            start, body = InputLayer(shape=input_shape, dtype=first.dtype, name=f"{self.name}_input"), self.layers
        x = start.symbolic_output()
        made = [x.node]
        try:
            for layer in body:
                x = layer(x)
                made.append(x.node)
        except Exception:
            for node in made:
                if node in node.layer._nodes:
                    node.layer._nodes.remove(node)
            raise
        self._set_graph([start.symbolic_output()], [x])
