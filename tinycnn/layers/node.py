"""Symbolic tensors and nodes: how calling layers on ``Input(...)`` records a network.

Keras's functional API, in two small classes:

* a :class:`SymbolicTensor` stands for the batch a layer will produce: it has a per-sample shape
  and a dtype, but no data (Keras's ``KerasTensor``);
* a :class:`Node` is one call of a layer on symbolic tensors: ``output = layer(inputs)``.

``y = Dense(2)(x)`` with a symbolic ``x`` builds the layer for ``x``'s shape (if it is not built
yet), records a node, and returns the node's symbolic output. Calling the same layer again records
a second node: the two calls share the layer's weights. ``tinycnn.graph`` walks the nodes back from
a model's output to its inputs and compiles them into an execution plan.
"""
import numpy as np


class SymbolicTensor:
    """The output of a layer called on symbolic inputs: a shape and a dtype, no data.

    Attributes
    ----------
    shape : tuple
        ``(None,) + sample_shape``, the batch axis unknown, as Keras shows it.
    sample_shape : tuple of int
        Per-sample shape.
    dtype : numpy.dtype
    node : Node
        The call that produces it.
    """

    def __init__(self, sample_shape, dtype, node):
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = np.dtype(dtype)
        self.node = node

    @property
    def shape(self):
        return (None,) + self.sample_shape

    @property
    def name(self):
        return self.node.layer.name

    def __repr__(self):
        return f"<SymbolicTensor shape={self.shape} dtype={self.dtype.name} from layer '{self.name}'>"

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is symbolic (a placeholder for data, used to build a Model); it has no values. "
                        f"Build a model with tinycnn.Model(inputs, outputs) and call model.predict(data)")


class Node:
    """One call of ``layer`` on the symbolic tensors ``inputs``; ``output`` is its result."""

    def __init__(self, layer, inputs, output_shape):
        self.layer = layer
        self.inputs = list(inputs)
        self.output = SymbolicTensor(output_shape, layer.dtype, self)

    @property
    def is_input(self):
        """True for the node of an ``Input``: it has no inputs, and the model feeds it data."""
        return not self.inputs

    def __repr__(self):
        return f"<Node {self.layer.name}({', '.join(t.name for t in self.inputs)})>"


def is_symbolic(x):
    """True for a symbolic tensor, or a non-empty list/tuple of them."""
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, SymbolicTensor) for t in x)
