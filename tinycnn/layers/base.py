"""The ``Layer`` base class: parameters by name, build, forward beside backward.

A layer's life:

1. ``__init__`` checks its hyperparameters (a bad one raises at once, naming the argument).
2. ``build(input_shape)`` learns the per-sample input shape (no batch axis), checks it, and creates
   the weights. ``output_shape`` is known from then on.
3. ``forward(x, training)`` computes the output for a batch and keeps what ``backward`` will need.
4. ``backward(grad_out)`` returns the gradient with respect to the input and stores the gradient
   of every trainable parameter in ``self.grads[name]``.

Large outputs and gradients are written into buffers the layer keeps from one call to the next
(:meth:`Layer._buffer`): a training step then touches no fresh memory. That matters: the first
write to a newly allocated 32 MB array cost three times the matrix product that filled it
(page faults), measured on a 2-core VM. The price is that an array returned by ``forward`` or
``backward`` is overwritten by the layer's next call. The model consumes each one before that; the
public entry points (``layer(x)``, ``model(x)``, ``predict``) return copies.

``forward``/``backward`` trust their inputs (the model validated them once, at its entry). Calling a
layer directly, ``layer(x)``, goes through :meth:`Layer.__call__`, which validates, builds if needed
and casts to the layer's dtype first.
"""
import copy
import re
import threading
from collections import defaultdict

import numpy as np

from .. import activations
from .. import initializers
from .. import regularizers
from .. import rng
from .._threads import compute_lock
from ..kernels import conv as conv_kernels
from ..kernels._util import column_sums
from .node import Node, is_symbolic

_name_counts = defaultdict(int)
_name_lock = threading.Lock()


def _snake(name):
    """Keras's rule: ``Conv2D`` -> ``conv2d``, ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base):
    """Keras-style automatic names: ``conv2d``, ``conv2d_1``, ``conv2d_2``, ..."""
    with _name_lock:  # layers may be created (load_model) from several threads at once
        count = _name_counts[base]
        _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


def check_int_tuple(value, n, argument, owner, minimum=1):
    """Turn ``3`` or ``(3, 3)`` into a tuple of ``n`` ints >= ``minimum``, or raise naming the argument."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * n
    try:
        value = tuple(value)
    except TypeError:
        value = None
    ok = (value is not None and len(value) == n
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                  for v in value))
    if not ok:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected an int >= {minimum} "
                         f"or a tuple of {n} such ints, received {value!r}")
    return tuple(int(v) for v in value)


def check_padding(padding, owner):
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"{owner}: invalid value for argument `padding`: expected 'valid' or 'same', "
                         f"received {padding!r}")
    return padding.lower()


class Layer:
    """Base class of every layer.

    Parameters
    ----------
    name : str, optional
        Unique name; by default the snake-case class name with a counter (``conv2d_1``).
    dtype : {'float32', 'float64'}
        Dtype of weights and computation. float32 trains; float64 is for gradient checks.
    input_shape : tuple of int, optional
        Per-sample input shape (no batch axis), for the first layer of a model, as in Keras.
    trainable : bool
        If False the optimizer leaves this layer's parameters alone.
    """

    #: Keras order of the arrays returned by ``get_weights()``; trainable ones are in ``params``,
    #: the others (batch-norm moving statistics) in ``state``.
    weight_names = ()
    #: True for layers that take a list of inputs (``Add``, ``Concatenate``, ...): their
    #: ``input_shape`` is then a list of shapes, ``forward`` takes a list of arrays and ``backward``
    #: returns a list of gradients.
    multi_input = False

    def __init__(self, name=None, dtype="float32", input_shape=None, trainable=True, **kwargs):
        cls = type(self).__name__
        if kwargs:
            raise TypeError(f"{cls}: unexpected keyword argument(s) {sorted(kwargs)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{cls}: argument `name` must be a str, received {name!r}")
        self.name = name or unique_name(_snake(cls))
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.name not in ("float32", "float64"):
            raise ValueError(f"{self.describe()}: invalid value for argument `dtype`: expected 'float32' "
                             f"or 'float64', received {dtype!r}")
        if input_shape is not None:
            input_shape = check_int_tuple(input_shape, len(tuple(input_shape)), "input_shape",
                                          self.describe())
        self.input_shape_arg = input_shape
        self.trainable = bool(trainable)
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self.params = {}
        self.grads = {}
        self.state = {}
        #: False for a model's first layer: its input gradient is never used, so skip computing it.
        self.input_grad_needed = True
        self._buffers = {}
        #: Calls of this layer on symbolic tensors (see ``layers/node.py``), in order.
        self._nodes = []

    def describe(self):
        """``"Layer 'conv2d' (Conv2D)"``: how error messages name this layer."""
        return f"Layer '{getattr(self, 'name', '?')}' ({type(self).__name__})"

    # --- building ---------------------------------------------------------------------------------

    def build(self, input_shape):
        """Check the per-sample ``input_shape``, create weights, set ``output_shape``."""
        input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = self.compute_output_shape(input_shape)
        self.input_shape = input_shape
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def add_weight(self, name, shape, initializer, trainable=True):
        """Create a weight from an initializer, in this layer's dtype, C-contiguous."""
        value = np.ascontiguousarray(initializer(tuple(shape), self._rng()), dtype=self.dtype)
        if trainable:
            self.params[name] = value
            self.grads[name] = np.zeros_like(value)
        else:
            self.state[name] = value
        return value

    def _rng(self):
        if not hasattr(self, "_weight_rng"):
            self._weight_rng = rng.generator()
        return self._weight_rng

    def _buffer(self, name, shape, dtype=None):
        """A scratch array kept between calls (contents undefined), reallocated when the shape changes."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        shape = tuple(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            self._buffers[name] = buf
        return buf

    def _expect_rank(self, input_shape, rank, what):
        if len(input_shape) != rank:
            raise ValueError(f"{self.describe()}: expected input of rank {rank + 1} {what}, received "
                             f"input with shape {(None,) + tuple(input_shape)}")

    # --- computing --------------------------------------------------------------------------------

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def regularization(self, gradients=False):
        """This layer's weight penalty (0.0 without regularizers). With ``gradients=True`` the
        penalty's gradient is added to ``self.grads`` (called after ``backward``)."""
        return 0.0

    def __call__(self, x, training=False):
        """``layer(x)``: on a symbolic tensor (from ``tinycnn.Input``), record the call and return its
        symbolic output (Keras's functional API); on data, a validated forward pass."""
        if is_symbolic(x):
            return self._call_symbolic(x)
        return self._call_arrays(x, training)

    def _call_symbolic(self, inputs):
        """Record ``self(inputs)`` as a node, building the layer for the inputs' shapes if needed."""
        if self.multi_input != isinstance(inputs, (list, tuple)):
            expected = "a list of inputs" if self.multi_input else "one input"
            raise ValueError(f"{self.describe()} takes {expected}, received {inputs!r}")
        tensors = list(inputs) if self.multi_input else [inputs]
        for t in tensors:
            if t.dtype != self.dtype:
                raise ValueError(f"{self.describe()} computes in {self.dtype.name} but its input from layer "
                                 f"'{t.name}' is {t.dtype.name}; give every layer of a model the same dtype")
        shapes = [t.sample_shape for t in tensors] if self.multi_input else tensors[0].sample_shape
        if not self.built:
            self.build(shapes)
        elif self.input_shape != shapes:
            shown = [(None,) + s for s in shapes] if self.multi_input else (None,) + shapes
            raise ValueError(f"{self.describe()} was built for input {self._shown_input_shape()} but is called on "
                             f"{shown}")
        node = Node(self, tensors, self.output_shape)
        self._nodes.append(node)
        return node.output

    def _shown_input_shape(self):
        """The input shape(s) with the batch axis, as error messages show them."""
        if self.multi_input:
            return [(None,) + tuple(s) for s in self.input_shape]
        return (None,) + tuple(self.input_shape)

    @property
    def output(self):
        """The symbolic output of this layer's call in a functional model (Keras's ``layer.output``):
        ``Model(model.inputs, model.get_layer('flatten').output)`` is a feature extractor."""
        return self._only_node("output").output

    @property
    def input(self):
        """The symbolic input(s) of this layer's call in a functional model."""
        node = self._only_node("input")
        return node.inputs if self.multi_input else (node.inputs[0] if node.inputs else node.output)

    def _only_node(self, what):
        if not self._nodes:
            raise ValueError(f"{self.describe()} has not been called on a symbolic input yet, so it has no "
                             f"`{what}`; use it in a Model (tinycnn.Model or Sequential) first")
        if len(self._nodes) > 1:
            raise ValueError(f"{self.describe()} has been called {len(self._nodes)} times (its weights are "
                             f"shared), so `layer.{what}` is ambiguous")
        return self._nodes[0]

    def twin(self):
        """A second caller of this layer's weights, for a layer used at two places in one network.

        It shares ``params`` and ``state`` (the same arrays), but has its own ``grads``, buffers
        and saved activations, so that the two calls of one forward pass do not overwrite each
        other's. The plan adds the twin's gradients into the layer's after each backward pass.
        """
        twin = copy.copy(self)
        twin._buffers = {}
        twin.grads = {k: np.zeros_like(v) for k, v in self.grads.items()}
        twin._nodes = []
        return twin

    def _call_arrays(self, x, training=False):
        """Validated forward pass for direct use: ``y = layer(x)``."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{self.describe()}: expected a real numeric array, received dtype {x.dtype}")
        if not self.built:
            if x.ndim < 1:
                raise ValueError(f"{self.describe()}: expected a batch of inputs, received a scalar")
            self.build(x.shape[1:])
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.describe()}: expected input with shape {(None,) + self.input_shape}, "
                             f"received {x.shape}")
        with compute_lock():
            return self.forward(np.ascontiguousarray(x, dtype=self.dtype), training=training).copy()

    # --- weights ----------------------------------------------------------------------------------

    def _weight(self, name):
        return self.params[name] if name in self.params else self.state[name]

    def get_weights(self):
        """Copies of the weights, in Keras's order and layouts."""
        return [self._weight(n).copy() for n in self.weight_names if self._has_weight(n)]

    def _has_weight(self, name):
        return name in self.params or name in self.state

    def set_weights(self, weights):
        """Copy ``weights`` (same order and shapes as ``get_weights()``) into the layer, in place."""
        names = [n for n in self.weight_names if self._has_weight(n)]
        if not self.built:
            raise ValueError(f"{self.describe()}: cannot set weights before the layer is built "
                             f"(its input shape is not known yet)")
        if len(weights) != len(names):
            raise ValueError(f"{self.describe()}: expected {len(names)} weight arrays {names}, "
                             f"received {len(weights)}")
        for n, w in zip(names, weights):
            w = np.asarray(w)
            target = self._weight(n)
            if w.shape != target.shape:
                raise ValueError(f"{self.describe()}: weight '{n}' must have shape {target.shape}, "
                                 f"received {w.shape}")
            if w.dtype.kind not in "biuf":
                raise TypeError(f"{self.describe()}: weight '{n}' must be numeric, received dtype {w.dtype}")
            target[...] = w

    def count_params(self):
        return int(sum(self._weight(n).size for n in self.weight_names if self._has_weight(n)))

    def get_config(self):
        """Constructor arguments as plain JSON data (see ``saving.py``)."""
        config = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self.input_shape_arg is not None:
            config["input_shape"] = list(self.input_shape_arg)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"


class ActivatedLayer(Layer):
    """A layer ``y = activation(linear(x) + bias)``: Conv2D and Dense.

    The bias add and a ReLU run as one fused pass (``kernels.conv.bias_act_forward``). For the other
    activations the pre-activation ``z`` is kept as ``self.logits``, so that a softmax (or sigmoid)
    head can hand its logits to the loss: the model then calls :meth:`backward_from_logits` with
    ``dL/dz`` and the activation's own backward is skipped.

    Parameters
    ----------
    kernel_regularizer, bias_regularizer : Regularizer, str or dict, optional
        A weight penalty added to the loss (``tinycnn.regularizers``: ``'l2'``, ``L2(1e-4)``, ...);
        :meth:`regularization` gives its value and adds its gradient to ``grads``.
    **kwargs
        :class:`Layer`'s arguments.
    """

    def __init__(self, kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer", self.describe())
        self.bias_regularizer = regularizers.get(bias_regularizer, "bias_regularizer", self.describe())

    def _penalties(self):
        """``(regularizer, weight name)`` for each penalty that applies to a built weight."""
        return [(reg, name) for reg, name in ((self.kernel_regularizer, "kernel"), (self.bias_regularizer, "bias"))
                if reg is not None and name in self.params]

    def regularization(self, gradients=False):
        """The weight penalties' sum; with ``gradients=True`` also ``grads[name] += d penalty / d w``."""
        total = 0.0
        for reg, name in self._penalties():
            w = self.params[name]
            total += reg.penalty(w)
            if gradients:
                reg.add_gradient(w, self.grads[name])
        return total

    @property
    def losses(self):
        """The penalties as a list of floats, one per regularized weight (Keras's ``layer.losses``)."""
        return [reg.penalty(self.params[name]) for reg, name in self._penalties()]

    def _init_activation(self, activation, use_bias, kernel_initializer, bias_initializer):
        self.activation = activations.get(activation, self.describe())
        if not isinstance(use_bias, (bool, np.bool_)):
            raise ValueError(f"{self.describe()}: invalid value for argument `use_bias`: expected a bool, "
                             f"received {use_bias!r}")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.logits = None

    def _activation_config(self):
        config = {"activation": self.activation.name, "use_bias": self.use_bias}
        for arg in ("kernel_initializer", "bias_initializer"):
            name = initializers.name_of(getattr(self, arg))
            if name is None:
                raise ValueError(f"{self.describe()}: a custom `{arg}` callable cannot be saved; "
                                 f"use one of the named initializers")
            config[arg] = name
        config["kernel_regularizer"] = regularizers.serialize(self.kernel_regularizer)
        config["bias_regularizer"] = regularizers.serialize(self.bias_regularizer)
        return config

    def _bias(self):
        return self.params["bias"] if self.use_bias else np.empty(0, dtype=self.dtype)

    def _no_affine(self):
        """The empty scale (and shift) that tells an output pass there is no affine map to apply (one
        array, kept: every forward pass asks for it)."""
        return self._buffer("no_affine", (0,))

    def _activate(self, z2d, affine=None):
        """Bias + activation on the (M, F) product, in place where possible. Returns y2d.

        ``affine``: ``(scale, shift)`` of an inference-time batch normalization after the layer, folded
        into the same pass (ReLU or linear activation only; see ``tinycnn/graph.py``)."""
        relu = self.activation.name == "relu"
        scale, shift = (self._no_affine(),) * 2 if affine is None else affine
        conv_kernels.bias_act_forward(z2d, self._bias(), relu, scale, shift)
        if relu or self.activation.name == "linear":
            self.logits = None if relu else z2d
            return z2d
        self.logits = z2d
        return self.activation.forward(z2d)

    def _activation_backward(self, dy2d, y2d):
        """``dL/dz`` from ``dL/dy``; also stores the bias gradient."""
        name = self.activation.name
        if name in ("relu", "linear"):
            dz2d = self._buffer("dz", dy2d.shape)
            db = conv_kernels.bias_act_backward(dy2d, y2d, name == "relu", dz2d)
        else:
            dz2d = self.activation.backward(dy2d, y2d)
            db = column_sums(dz2d) if self.use_bias else None
        if self.use_bias:
            self.grads["bias"][...] = db
        return dz2d

    def backward(self, grad_out):
        dy2d = grad_out.reshape(-1, grad_out.shape[-1])
        dz2d = self._activation_backward(dy2d, self._y2d)
        return self._linear_backward(dz2d)

    def backward_from_logits(self, grad_logits):
        """Backward pass starting from ``dL/dz`` (the loss folded the activation in)."""
        dz2d = np.ascontiguousarray(grad_logits.reshape(-1, grad_logits.shape[-1]))
        if self.use_bias:
            self.grads["bias"][...] = column_sums(dz2d)
        return self._linear_backward(dz2d)

    def _linear_backward(self, dz2d):
        raise NotImplementedError
