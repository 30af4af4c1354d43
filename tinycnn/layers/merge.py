"""Merge layers: several inputs, one output (Keras's ``Add``, ``Subtract``, ``Multiply``,
``Average``, ``Concatenate``). They join the branches of a network: a residual block adds its input
to its output, a two-input model concatenates image features with clinical ones.

Each takes a list of inputs in ``forward`` and returns a list of gradients, one per input, from
``backward``. The operations are elementwise (or a copy, for ``Concatenate``), so they are
written with NumPy: there is nothing for a compiler to gain.
"""
import numpy as np

from .base import Layer


class _Merge(Layer):
    """Base of the merge layers: checks and stores a list of input shapes."""

    multi_input = True
    #: Fewest and most inputs the operation takes (None: no limit).
    arity = (2, None)

    def build(self, input_shape):
        shapes = [tuple(int(d) for d in s) for s in input_shape]
        low, high = self.arity
        if len(shapes) < low or (high is not None and len(shapes) > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}"
            raise ValueError(f"{self.describe()} takes {wanted} inputs, received {len(shapes)}")
        self.output_shape = self.compute_output_shape(shapes)
        self.input_shape = shapes
        self.built = True

    def compute_output_shape(self, shapes):
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.describe()}: all inputs must have the same shape, received "
                             f"{[(None,) + s for s in shapes]}")
        return shapes[0]

    def _call_arrays(self, xs, training=False):
        """``layer([a, b])`` on data: validated, as :meth:`Layer._call_arrays` does for one input."""
        if not isinstance(xs, (list, tuple)):
            raise ValueError(f"{self.describe()} takes a list of inputs, received {type(xs).__name__}")
        arrays = [np.asarray(x) for x in xs]
        for a in arrays:
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{self.describe()}: expected real numeric arrays, received dtype {a.dtype}")
        if not self.built:
            self.build([a.shape[1:] for a in arrays])
        shapes = [tuple(a.shape[1:]) for a in arrays]
        if shapes != self.input_shape or len({a.shape[0] for a in arrays}) != 1:
            raise ValueError(f"{self.describe()}: expected inputs with shapes {self._shown_input_shape()}, "
                             f"received {[a.shape for a in arrays]}")
        arrays = [np.ascontiguousarray(a, dtype=self.dtype) for a in arrays]
        return self.forward(arrays, training=training).copy()


class Add(_Merge):
    """``y = x_1 + x_2 + ... + x_k`` (same shapes). Backward: every input receives ``dy``."""

    def forward(self, xs, training=False):
        y = self._buffer("y", xs[0].shape)
        np.add(xs[0], xs[1], out=y)
        for x in xs[2:]:
            y += x
        return y

    def backward(self, grad_out):
        return [grad_out] * len(self.input_shape)


class Subtract(_Merge):
    """``y = x_1 - x_2`` (exactly two inputs). Backward: ``dy`` and ``-dy``."""

    arity = (2, 2)

    def forward(self, xs, training=False):
        return np.subtract(xs[0], xs[1], out=self._buffer("y", xs[0].shape))

    def backward(self, grad_out):
        return [grad_out, np.negative(grad_out, out=self._buffer("dx2", grad_out.shape))]


class Multiply(_Merge):
    """``y = x_1 * x_2 * ... * x_k`` elementwise. Backward: ``dx_i = dy * prod_{j != i} x_j``."""

    def forward(self, xs, training=False):
        self._xs = xs
        y = self._buffer("y", xs[0].shape)
        np.multiply(xs[0], xs[1], out=y)
        for x in xs[2:]:
            y *= x
        return y

    def backward(self, grad_out):
        grads = []
        for i in range(len(self._xs)):
            dx = self._buffer(f"dx{i}", grad_out.shape)
            dx[...] = grad_out
            for j, x in enumerate(self._xs):
                if j != i:
                    dx *= x
            grads.append(dx)
        return grads


class Average(Add):
    """``y = (x_1 + ... + x_k) / k``: the sum of :class:`Add`, scaled. Backward: every input
    receives ``dy / k``."""

    def forward(self, xs, training=False):
        y = super().forward(xs, training)
        y *= 1.0 / len(xs)
        return y

    def backward(self, grad_out):
        dx = np.multiply(grad_out, 1.0 / len(self.input_shape), out=self._buffer("dx", grad_out.shape))
        return [dx] * len(self.input_shape)


class Concatenate(_Merge):
    """Joins the inputs along ``axis`` (default -1, the channels in NHWC); the other axes must
    match. Backward: each input receives its own slice of ``dy``.

    Parameters
    ----------
    axis : int, default -1
        An axis of the per-sample shape counted from the end (-1, -2, ...), or from 1 (1 is the
        first axis after the batch); the batch axis 0 cannot be joined.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
            raise ValueError(f"{self.describe()}: invalid value for argument `axis`: expected a non-zero int "
                             f"(the batch axis 0 cannot be joined), received {axis!r}")
        self.axis = int(axis)

    def compute_output_shape(self, shapes):
        rank = len(shapes[0])
        axis = self.axis + rank if self.axis < 0 else self.axis - 1  # in the per-sample shape
        if not 0 <= axis < rank or any(len(s) != rank for s in shapes):
            raise ValueError(f"{self.describe()}: axis {self.axis} does not fit inputs of shapes "
                             f"{[(None,) + s for s in shapes]}")
        rest = [s[:axis] + s[axis + 1:] for s in shapes]
        if any(r != rest[0] for r in rest):
            raise ValueError(f"{self.describe()}: inputs must match on every axis but axis {self.axis}, received "
                             f"{[(None,) + s for s in shapes]}")
        self._sample_axis = axis
        return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1:]

    def forward(self, xs, training=False):
        y = self._buffer("y", (xs[0].shape[0],) + self.output_shape)
        return np.concatenate(xs, axis=self._sample_axis + 1, out=y)

    def backward(self, grad_out):
        grads, lo = [], 0
        index = [slice(None)] * grad_out.ndim
        for i, shape in enumerate(self.input_shape):
            hi = lo + shape[self._sample_axis]
            index[self._sample_axis + 1] = slice(lo, hi)
            dx = self._buffer(f"dx{i}", (grad_out.shape[0],) + shape)
            dx[...] = grad_out[tuple(index)]
            grads.append(dx)
            lo = hi
        return grads

    def get_config(self):
        config = super().get_config()
        config["axis"] = self.axis
        return config
