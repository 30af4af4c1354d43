"""Weight penalties, Keras's ``keras.regularizers``: ``L1``, ``L2``, ``L1L2``.

A regularizer maps a weight array ``w`` to a number added to the training loss, and gives that
number's gradient, which the layer adds to the weight's gradient::

    L1(l1):      l1 * sum(|w|)                 gradient  l1 * sign(w)   (0 at w = 0)
    L2(l2):      l2 * sum(w^2)                 gradient  2 * l2 * w
    L1L2(l1, l2): the sum of both

Keras's formulas: there is no one-half in L2, so ``L2(l2)`` matches a weight decay of ``2 * l2``
under plain SGD. Layers take them as ``kernel_regularizer=`` / ``bias_regularizer=``, as a
regularizer, a name (``'l1'``, ``'l2'``, ``'l1l2'``, Keras's defaults 0.01) or a config dict. The
penalty is part of the reported ``loss`` (training and evaluation), as in Keras.
"""
import math

import numpy as np


def _factor(value, argument, owner):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float >= 0, "
                         f"received {value!r}")
    return float(value)


def _sum_squares(w):
    flat = w.reshape(-1)
    return float(np.dot(flat, flat))


class Regularizer:
    """Base class: ``penalty(w)`` (a float) and ``add_gradient(w, grad)`` (in place)."""

    def __call__(self, w):
        return self.penalty(w)

    def penalty(self, w):
        raise NotImplementedError

    def add_gradient(self, w, grad):
        """``grad += d penalty / d w``."""
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w^2)``; both factors default to 0, as Keras's ``L1L2``."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1", type(self).__name__)
        self.l2 = _factor(0.0 if l2 is None else l2, "l2", type(self).__name__)

    def penalty(self, w):
        value = 0.0
        if self.l1:
            value += self.l1 * float(np.abs(w).sum(dtype=np.float64))
        if self.l2:
            value += self.l2 * _sum_squares(w)
        return value

    def add_gradient(self, w, grad):
        if self.l1:
            grad += (self.l1 * np.sign(w)).astype(grad.dtype, copy=False)
        if self.l2:
            grad += (2 * self.l2) * w

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum(|w|)``, default ``l1=0.01``: drives small weights to exactly zero under SGD."""

    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum(w^2)`` (no one-half), default ``l2=0.01``: shrinks every weight towards zero."""

    def __init__(self, l2=0.01):
        super().__init__(l2=0.01 if l2 is None else l2)

    def get_config(self):
        return {"l2": self.l2}


#: The regularizers a saved model may name; strings are these names or their lower-case forms.
REGULARIZER_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
_ALIASES = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}


def serialize(regularizer):
    """``{"class_name": "L2", "config": {"l2": 0.01}}``, or None."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def get(identifier, argument="kernel_regularizer", owner="get"):
    """A regularizer from None, an instance, a name (``'l2'``: Keras's default factor) or a dict
    from :func:`serialize`; anything else is a ValueError naming ``owner`` and ``argument``."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        cls = REGULARIZER_CLASSES.get(identifier) or _ALIASES.get(identifier.lower())
        if cls is not None:
            return cls()
    if isinstance(identifier, dict) and identifier.get("class_name") in REGULARIZER_CLASSES \
            and isinstance(identifier.get("config", {}), dict):
        try:
            return REGULARIZER_CLASSES[identifier["class_name"]].from_config(identifier.get("config", {}))
        except TypeError as err:
            raise ValueError(f"{owner}: invalid value for argument `{argument}`: {err}") from None
    raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected None, 'l1', 'l2', 'l1l2', a "
                     f"tinycnn.regularizers.Regularizer or its config dict, received {identifier!r}")
