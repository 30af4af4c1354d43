"""Activation functions by name, as Keras's ``activation=`` argument takes them.

Each activation is a forward and a backward kernel on ``(M, F)`` views (see
``kernels/activations.py``). ``'linear'`` (or ``None``) is the identity.
"""
import numpy as np

from .kernels import activations as K


class ActivationFunction:
    """A named pair of kernels: ``forward(z2d) -> y2d`` and ``backward(dy2d, y2d) -> dz2d``."""

    def __init__(self, name, forward_kernel, backward_kernel):
        self.name = name
        self._forward = forward_kernel
        self._backward = backward_kernel

    def forward(self, z2d):
        if self._forward is None:
            return z2d
        y2d = np.empty_like(z2d)
        self._forward(z2d, y2d)
        return y2d

    def backward(self, dy2d, y2d):
        if self._backward is None:
            return dy2d
        dz2d = np.empty_like(dy2d)
        self._backward(dy2d, y2d, dz2d)
        return dz2d

    def __repr__(self):
        return f"<activation {self.name}>"


_REGISTRY = {
    "linear": ActivationFunction("linear", None, None),
    "relu": ActivationFunction("relu", K.relu_forward, K.relu_backward),
    "sigmoid": ActivationFunction("sigmoid", K.sigmoid_forward, K.sigmoid_backward),
    "tanh": ActivationFunction("tanh", K.tanh_forward, K.tanh_backward),
    "softmax": ActivationFunction("softmax", K.softmax_forward, K.softmax_backward),
}


def get(name, owner="layer"):
    """Resolve ``None``, a name or an :class:`ActivationFunction`."""
    if name is None:
        return _REGISTRY["linear"]
    if isinstance(name, ActivationFunction):
        return name
    if isinstance(name, str) and name.lower() in _REGISTRY:
        return _REGISTRY[name.lower()]
    raise ValueError(f"{owner}: invalid value for argument `activation`: expected None or one of "
                     f"{sorted(_REGISTRY)}, received {name!r}")
