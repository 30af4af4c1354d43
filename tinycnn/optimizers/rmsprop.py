"""RMSprop, Keras's ``RMSprop`` (and ``compile``'s default optimizer)."""
from ..kernels import optimizers as K
from .base import Optimizer, _check_bool, _check_positive, _check_unit


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012): divide each gradient by a running root mean square of its past values.

    Keras's form, with ``epsilon`` inside the square root::

        velocity = rho * velocity + (1 - rho) * g^2
        average_gradient = rho * average_gradient + (1 - rho) * g          (centered only)
        increment = lr * g / sqrt(velocity - average_gradient^2 + epsilon) (centered)
                  = lr * g / sqrt(velocity + epsilon)                      (otherwise)
        momentum_buffer = momentum * momentum_buffer + increment; w = w - momentum_buffer
                                                                (momentum > 0; else w = w - increment)

    ``centered=True`` divides by an estimate of the gradient's variance instead of its raw second
    moment. There is no bias correction, so the first steps are large (``~ lr / sqrt(1 - rho)``).

    Parameters
    ----------
    learning_rate : float or LearningRateSchedule, default 1e-3
    rho : float in [0, 1), default 0.9
    momentum : float in [0, 1], default 0
    epsilon : float > 0, default 1e-7
    centered : bool, default False
    **kwargs
        The arguments every optimizer takes (:class:`~tinycnn.optimizers.Optimizer`):
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema``,
        ``ema_momentum``, ``ema_overwrite_frequency``, ``name``.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho = _check_unit(rho, "rho", "RMSprop")
        self.momentum = _check_unit(momentum, "momentum", "RMSprop", closed_right=True)
        self.epsilon = _check_positive(epsilon, "epsilon", "RMSprop")
        self.centered = _check_bool(centered, "centered", "RMSprop")

    @property
    def rule_slots(self):
        """Keras's names; the momentum buffer and the average gradient exist only when used."""
        return ("velocity",) + (("momentum",) if self.momentum > 0 else ()) \
            + (("average_gradient",) if self.centered else ())

    def _update(self, p, g, slots, lr):
        names = self.rule_slots
        unused = slots[0][:0]
        momentum_buffer = slots[names.index("momentum")] if self.momentum > 0 else unused
        average_gradient = slots[names.index("average_gradient")] if self.centered else unused
        K.rmsprop_update(p, g, slots[0], momentum_buffer, average_gradient, lr, self.rho, self.momentum,
                         self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}
