"""Adam and AdamW, Keras's ``Adam`` and ``AdamW``."""
import math

from ..kernels import optimizers as K
from .base import Optimizer, _check_bool, _check_positive, _check_unit


class Adam(Optimizer):
    """Adam, Keras's defaults and update rule (bias correction folded into the step size).

    At step ``t`` (counted from 1)::

        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g^2 - v)
        w = w - lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

    Parameters
    ----------
    learning_rate : float or LearningRateSchedule, default 1e-3
    beta_1 : float in [0, 1), default 0.9
    beta_2 : float in [0, 1), default 0.999
    epsilon : float > 0, default 1e-7
    amsgrad : bool, default False
        Divide by the running maximum ``v_hat = max(v_hat, v)`` instead of ``v`` (Reddi et al.,
        2018), so no step grows because the second moment shrank.
    **kwargs
        The arguments every optimizer takes (:class:`~tinycnn.optimizers.Optimizer`):
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``use_ema``,
        ``ema_momentum``, ``ema_overwrite_frequency``, ``name``.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        owner = type(self).__name__
        self.beta_1 = _check_unit(beta_1, "beta_1", owner)
        self.beta_2 = _check_unit(beta_2, "beta_2", owner)
        self.epsilon = _check_positive(epsilon, "epsilon", owner)
        self.amsgrad = _check_bool(amsgrad, "amsgrad", owner)

    @property
    def rule_slots(self):
        return ("m", "v", "v_hat") if self.amsgrad else ("m", "v")

    def _update(self, p, g, slots, lr):
        t = self.iterations + 1
        lr_t = lr * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        if self.amsgrad:
            K.amsgrad_update(p, g, slots[0], slots[1], slots[2], lr_t, self.beta_1, self.beta_2, self.epsilon)
        else:
            K.adam_update(p, g, slots[0], slots[1], lr_t, self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), Keras's ``AdamW``.

    Exactly ``Adam(weight_decay=...)``: before each Adam step every parameter not excluded with
    :meth:`exclude_from_weight_decay` shrinks by ``w = w - w * weight_decay * lr``. Unlike an L2
    penalty in the loss, the decay never passes through Adam's ``1 / sqrt(v)`` scaling, so every
    weight decays at the same relative rate.

    Parameters
    ----------
    learning_rate : float or LearningRateSchedule, default 1e-3
    weight_decay : float >= 0, default 0.004
        Keras's default; ``None`` is refused (use :class:`Adam`).
    beta_1, beta_2, epsilon, amsgrad, **kwargs
        As :class:`Adam`.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, **kwargs):
        if weight_decay is None:
            raise ValueError("AdamW: invalid value for argument `weight_decay`: expected a float >= 0, "
                             "received None (use Adam for no weight decay)")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay=weight_decay, **kwargs)
