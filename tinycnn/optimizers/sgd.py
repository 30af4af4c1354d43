"""Stochastic gradient descent, Keras's ``SGD``."""
from ..kernels import optimizers as K
from .base import Optimizer, _check_bool, _check_unit


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras's ``SGD``.

    With momentum ``mu`` (Keras's form, the learning rate inside the velocity)::

        velocity = mu * velocity - lr * g
        w = w + velocity                    (plain)
        w = w + mu * velocity - lr * g      (nesterov=True)

    Parameters
    ----------
    learning_rate : float or LearningRateSchedule, default 0.01
    momentum : float in [0, 1], default 0
    nesterov : bool, default False
    **kwargs
        The arguments every optimizer takes (:class:`~tinycnn.optimizers.Optimizer`):
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema``,
        ``ema_momentum``, ``ema_overwrite_frequency``, ``name``.
    """

    # Kept even when momentum == 0 (then unused), so the saved state has one layout.
    rule_slots = ("velocity",)

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.momentum = _check_unit(momentum, "momentum", "SGD", closed_right=True)
        self.nesterov = _check_bool(nesterov, "nesterov", "SGD")

    def _update(self, p, g, slots, lr):
        K.sgd_update(p, g, slots[0], lr, self.momentum, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}
