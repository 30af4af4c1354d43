"""Optimizers with Keras's names, defaults and update rules; they change parameters in place.

* ``SGD`` (momentum, Nesterov), ``Adam``, ``AdamW``, ``RMSprop``: ``sgd.py``, ``adam.py``, ``rmsprop.py``.
* What every optimizer shares (learning-rate schedules, gradient clipping, decoupled weight decay,
  a moving average of the weights, saved state): :class:`Optimizer` in ``base.py``.
* ``tinycnn.optimizers.schedules``: the learning-rate schedules.

State (Adam's moments, SGD's velocity, ...) is kept per parameter, keyed by
``"layer_name/param_name"``, and never shared between parameters or layers.
"""
from . import schedules
from .adam import Adam, AdamW
from .base import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

#: The optimizers a saved model may name, and ``compile``'s strings.
OPTIMIZER_CLASSES = {"Adam": Adam, "AdamW": AdamW, "RMSprop": RMSprop, "SGD": SGD}

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "schedules", "OPTIMIZER_CLASSES", "get"]


def get(identifier):
    """An optimizer from a name (``'rmsprop'``, ``'adam'``, ``'adamw'``, ``'sgd'``, any case, with
    Keras's defaults), a config dict ``{"class_name": "SGD", "config": {...}}``, or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    by_name = {name.lower(): cls for name, cls in OPTIMIZER_CLASSES.items()}
    if isinstance(identifier, str) and identifier.lower() in by_name:
        return by_name[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in OPTIMIZER_CLASSES \
            and isinstance(identifier.get("config", {}), dict):
        return OPTIMIZER_CLASSES[identifier["class_name"]].from_config(identifier.get("config", {}))
    raise ValueError(f"Invalid value for argument `optimizer`: expected one of {sorted(by_name)}, a config dict "
                     f"{{'class_name': ..., 'config': {{...}}}} or a tinycnn.optimizers.Optimizer instance, "
                     f"received {identifier!r}")
