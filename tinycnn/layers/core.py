"""Dense, Flatten, Dropout and the activation layers."""
import numpy as np

from .. import activations
from .. import rng
from .._threads import split_batch, split_batch_sum
from ..kernels import activations as AK
from .base import ActivatedLayer, Layer
from .node import Node


class Dense(ActivatedLayer):
    """Fully connected layer on the last axis, Keras's ``Dense``: ``y = activation(x @ W + b)``.

    Parameters
    ----------
    units : int
        Output features ``U``.
    activation : None, 'relu', 'sigmoid', 'tanh' or 'softmax'
    use_bias : bool, default True
    kernel_initializer : default 'glorot_uniform'
    bias_initializer : default 'zeros'

    Weights
    -------
    kernel : ndarray (n_in, U); bias : ndarray (U,)

    Notes
    -----
    With ``x2d`` the input viewed as ``(M, n_in)`` (M = batch, or batch times leading axes):

        forward    z = x2d @ W + b,   y = activation(z)
        backward   dz = activation'(dy),  dW = x2d.T @ dz,  db = sum_rows(dz),  dx = dz @ W.T
    """

    weight_names = ("kernel", "bias")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"{self.describe()}: invalid value for argument `units`: expected a positive int, "
                             f"received {units!r}")
        self.units = int(units)
        self._init_activation(activation, use_bias, kernel_initializer, bias_initializer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.describe()}: expected input of rank >= 2 (batch, features), received "
                             f"input with shape {(None,) + tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.units,)

    def build(self, input_shape):
        super().build(input_shape)
        self.add_weight("kernel", (self.input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def forward(self, x, training=False):
        x2d = x.reshape(-1, x.shape[-1])
        w = self.params["kernel"]
        z2d = np.empty((x2d.shape[0], self.units), dtype=self.dtype)
        # Rows in slices, one per thread, with BLAS single-threaded (see tinycnn/_threads.py).
        split_batch(x2d.shape[0], lambda lo, hi, slot, serial: np.matmul(x2d[lo:hi], w, out=z2d[lo:hi]))
        self._x2d = x2d
        self._y2d = self._activate(z2d)
        return self._y2d.reshape(x.shape[:-1] + (self.units,))

    def _linear_backward(self, dz2d):
        x2d, w = self._x2d, self.params["kernel"]
        dx2d = np.empty_like(x2d) if self.input_grad_needed else None

        def work(lo, hi, slot, serial):
            if dx2d is not None:
                np.matmul(dz2d[lo:hi], w.T, out=dx2d[lo:hi])
            return x2d[lo:hi].T @ dz2d[lo:hi]  # this slice's part of dW

        split_batch_sum(x2d.shape[0], work, out=self.grads["kernel"])
        if dx2d is None:
            return None
        return dx2d.reshape((-1,) + self.input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, **self._activation_config())
        return config


class Flatten(Layer):
    """Flattens each sample to one vector (row-major, so NHWC order, as Keras's channels_last)."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        return grad_out.reshape((-1,) + self.input_shape)


class Dropout(Layer):
    """Inverted dropout, Keras's ``Dropout``: in training each value is zeroed with probability
    ``rate`` and the survivors are scaled by ``1 / (1 - rate)``; at inference it is the identity.

    Parameters
    ----------
    rate : float in [0, 1)
    seed : int, optional
        Seeds this layer's own mask generator. Without it the generator comes from
        ``tinycnn.set_seed``'s root, so one global seed still makes masks repeatable.

    Notes
    -----
    The uniform draws come from NumPy's ``Generator`` (reproducible); a kernel turns them into the
    mask and applies it. The mask is kept (one byte per value) for ``backward``:
    ``dx = dy * mask / (1 - rate)``.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)) \
                or not 0 <= rate < 1:
            raise ValueError(f"{self.describe()}: invalid value for argument `rate`: expected a float in "
                             f"[0, 1), received {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.generator = rng.generator(seed)

    def forward(self, x, training=False):
        self._active = training and self.rate > 0
        if not self._active:
            return x
        flat = x.reshape(-1)
        u = self.generator.random(flat.shape[0], dtype=self.dtype)
        y = self._buffer("y", flat.shape)
        self._mask = self._buffer("mask", flat.shape, np.uint8)
        AK.dropout_forward(flat, u, self.rate, y, self._mask)
        return y.reshape(x.shape)

    def backward(self, grad_out):
        if not self._active:
            return grad_out
        flat = np.ascontiguousarray(grad_out).reshape(-1)
        dx = self._buffer("dx", flat.shape)
        AK.dropout_backward(flat, self._mask, self.rate, dx)
        return dx.reshape(grad_out.shape)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


class Activation(Layer):
    """Applies an activation function by name: ``Activation('relu')``, ``Activation('softmax')``.

    Softmax is taken over the last axis. As in Conv2D/Dense, the input is kept as ``self.logits`` so
    that a softmax or sigmoid at the end of a model lets the loss work from logits.
    """

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation, self.describe())

    def forward(self, x, training=False):
        x2d = x.reshape(-1, x.shape[-1])
        self.logits = x2d
        self._y2d = self.activation.forward(x2d)
        return self._y2d.reshape(x.shape)

    def backward(self, grad_out):
        dy2d = np.ascontiguousarray(grad_out).reshape(-1, grad_out.shape[-1])
        return self.activation.backward(dy2d, self._y2d).reshape(grad_out.shape)

    def backward_from_logits(self, grad_logits):
        return grad_logits.reshape((-1,) + self.input_shape)

    def get_config(self):
        config = super().get_config()
        config["activation"] = self.activation.name
        return config


class ReLU(Activation):
    """``max(x, 0)``, Keras's ``ReLU()`` with its default arguments (no max_value, slope or threshold)."""

    def __init__(self, **kwargs):
        super().__init__("relu", **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


class Softmax(Activation):
    """Softmax over the last axis, Keras's ``Softmax()`` (only ``axis=-1`` is supported)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__("softmax", **kwargs)
        if axis != -1:
            raise ValueError(f"{self.describe()}: invalid value for argument `axis`: only -1 (the channel "
                             f"axis in NHWC) is supported, received {axis!r}")

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


class InputLayer(Layer):
    """Declares a model input: its per-sample shape and dtype; the identity on data.

    ``tinycnn.Input(shape=...)`` makes one and returns its symbolic output, the start of a
    functional model; Keras 3's ``Sequential([Input(shape=(64, 64, 3)), Conv2D(...), ...])`` works
    too.
    """

    def __init__(self, shape=None, input_shape=None, **kwargs):
        if shape is not None and input_shape is not None:
            raise ValueError("InputLayer: give `shape` or `input_shape`, not both")
        if shape is None and input_shape is None:
            raise ValueError("InputLayer: argument `shape` is required (per-sample shape, no batch axis)")
        super().__init__(input_shape=shape if shape is not None else input_shape, **kwargs)
        self.build(self.input_shape_arg)

    def symbolic_output(self):
        """The symbolic tensor this input feeds into a network (made on first use)."""
        if not self._nodes:
            self._nodes.append(Node(self, [], self.input_shape))
        return self._nodes[0].output

    def forward(self, x, training=False):
        return x

    def backward(self, grad_out):
        return grad_out

    def get_config(self):
        config = super().get_config()
        config["shape"] = config.pop("input_shape")
        return config


def Input(shape, name=None, dtype="float32"):
    """A model input, Keras's ``Input``: returns a symbolic tensor of per-sample ``shape``.

    Call layers on it to describe a network, then ``tinycnn.Model(inputs, outputs)``::

        image = Input(shape=(64, 64, 3))
        x = Conv2D(32, 3, padding='same', activation='relu')(image)
        model = Model(image, Dense(2, activation='softmax')(GlobalAveragePooling2D()(x)))

    It may also start a ``Sequential`` list: ``Sequential([Input(shape=(64, 64, 3)), ...])``.
    """
    return InputLayer(shape=shape, name=name, dtype=dtype).symbolic_output()
