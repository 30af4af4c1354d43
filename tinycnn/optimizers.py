"""Optimizers with Keras's names, defaults and update rules; they change parameters in place.

State (Adam's moments, SGD's velocity) is kept per parameter, keyed by ``"layer_name/param_name"``,
and never shared between parameters or layers.
"""
import math

import numpy as np

from .kernels import optimizers as K


def _check_positive(value, argument, owner):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float > 0, "
                         f"received {value!r}")
    return float(value)


def _check_unit(value, argument, owner, closed_right=False):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and (
        0 <= value <= 1 if closed_right else 0 <= value < 1)
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float in {interval}, "
                         f"received {value!r}")
    return float(value)


class Optimizer:
    """Base class: ``apply(params)`` with ``params`` a list of ``(key, value, gradient)``."""

    slot_names = ()

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate
        self.iterations = 0
        self.slots = {}

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = _check_positive(value, "learning_rate", type(self).__name__)

    def _slots_for(self, key, value):
        slots = self.slots.get(key)
        if slots is None or slots[0].size != value.size:
            slots = [np.zeros(value.size, dtype=value.dtype) for _ in self.slot_names]
            self.slots[key] = slots
        return slots

    def apply(self, params):
        """One update step for every ``(key, value, gradient)``; increments ``iterations``."""
        self.iterations += 1
        for key, value, grad in params:
            self._update(value.reshape(-1), grad.reshape(-1), self._slots_for(key, value))

    def finalize_variable_values(self, params):
        """Called by ``fit`` when training ends, with the same ``params`` as :meth:`apply` (Keras's
        name). Nothing to do here; an optimizer that keeps a moving average of the weights puts it
        in place now."""

    def get_config(self):
        return {"learning_rate": self.learning_rate}

    def get_state(self):
        """Plain arrays for saving: ``{"iterations": ..., "key/slot": array}``."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for key, arrays in self.slots.items():
            for slot, arr in zip(self.slot_names, arrays):
                state[f"{key}/{slot}"] = arr
        return state

    def set_state(self, state):
        self.iterations = int(state.get("iterations", 0))
        slots = {}
        for name, arr in state.items():
            if name == "iterations":
                continue
            key, slot = name.rsplit("/", 1)
            if slot not in self.slot_names:
                raise ValueError(f"{type(self).__name__}: unknown optimizer slot '{slot}' in saved state")
            slots.setdefault(key, {})[slot] = np.ascontiguousarray(arr)
        self.slots = {}
        for key, by_name in slots.items():
            missing = [s for s in self.slot_names if s not in by_name]
            if missing:
                raise ValueError(f"{type(self).__name__}: saved state for '{key}' lacks slots {missing}")
            self.slots[key] = [by_name[s] for s in self.slot_names]


class Adam(Optimizer):
    """Adam, Keras's defaults and update rule (bias correction folded into the step size).

    Parameters
    ----------
    learning_rate : float, default 1e-3
    beta_1 : float, default 0.9
    beta_2 : float, default 0.999
    epsilon : float, default 1e-7

    Notes
    -----
    At step ``t`` (from 1): ``m += (1 - beta_1)(g - m)``, ``v += (1 - beta_2)(g^2 - v)``,
    ``p -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)``.
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = _check_unit(beta_1, "beta_1", "Adam")
        self.beta_2 = _check_unit(beta_2, "beta_2", "Adam")
        self.epsilon = _check_positive(epsilon, "epsilon", "Adam")

    def _update(self, p, g, slots):
        t = self.iterations
        lr_t = self.learning_rate * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        K.adam_update(p, g, slots[0], slots[1], lr_t, self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras's ``SGD``.

    Parameters
    ----------
    learning_rate : float, default 0.01
    momentum : float in [0, 1], default 0
    nesterov : bool, default False
    """

    slot_names = ("velocity",)

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = _check_unit(momentum, "momentum", "SGD", closed_right=True)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"SGD: invalid value for argument `nesterov`: expected a bool, received {nesterov!r}")
        self.nesterov = bool(nesterov)

    def _update(self, p, g, slots):
        K.sgd_update(p, g, slots[0], self.learning_rate, self.momentum, self.nesterov)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "momentum": self.momentum, "nesterov": self.nesterov}


OPTIMIZER_CLASSES = {"Adam": Adam, "SGD": SGD}


def get(identifier):
    """An optimizer from ``'adam'``/``'sgd'`` (Keras defaults) or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in ("adam", "sgd"):
        return Adam() if identifier.lower() == "adam" else SGD()
    raise ValueError(f"Invalid value for argument `optimizer`: expected 'adam', 'sgd' or a "
                     f"tinycnn.optimizers.Optimizer instance, received {identifier!r}")
