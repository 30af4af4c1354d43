"""The optimizer base class: what every optimizer shares, as Keras 3's ``Optimizer`` does it.

``apply(params)`` is one training step, with ``params`` a list of ``(key, value, gradient)``
(``key`` is ``"layer_name/param_name"``, ``value`` and ``gradient`` arrays changed or read in
place). The step runs in Keras's order:

1. ``lr`` = the learning rate of this step: the float, or ``schedule(iterations)`` where
   ``iterations`` counts the steps already made (0 at the first one).
2. Clip the gradients (at most one of the three options):

   * ``clipnorm=c``: each gradient on its own, ``g * c / max(||g||, c)``;
   * ``global_clipnorm=c``: all of them together, ``g * c / max(sqrt(sum_k ||g_k||^2), c)``;
   * ``clipvalue=c``: each entry into ``[-c, c]``.

3. Decoupled weight decay, ``w = w - w * weight_decay * lr``, on every parameter not excluded
   with :meth:`Optimizer.exclude_from_weight_decay` (Keras's rule: biases and batch-norm
   ``gamma``/``beta`` are decayed too unless excluded). It is not a loss term: its gradient is
   never seen by the update rule (Loshchilov & Hutter's "decoupled" decay). PyTorch's
   ``SGD(weight_decay=wd)`` instead adds ``wd * w`` to the gradient, which then goes through the
   momentum; that coupled form is ``kernel_regularizer=L2(wd / 2)`` here.
4. The optimizer's own update rule (``_update``), with ``lr``.
5. With ``use_ema``: ``average = m * average + (1 - m) * w`` with ``m = ema_momentum``, except
   at the very first step, where ``m = 0`` (the average starts as the weights). Every
   ``ema_overwrite_frequency`` steps, if set, the weights are overwritten by their average; in
   any case ``fit`` puts the average in place when training ends (:meth:`finalize_variable_values`).
6. ``iterations += 1``.

State (moments, velocities, the weight average) is kept per parameter, keyed like ``params``,
as flat arrays named by ``slot_names``; ``get_state``/``set_state`` turn it into plain arrays for
saving, so that training continues exactly after a reload.
"""
import math

import numpy as np

from ..kernels import optimizers as K
from . import schedules as schedules_module


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _check_positive(value, argument, owner):
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float > 0, "
                         f"received {value!r}")
    return float(value)


def _check_optional(value, argument, owner, minimum=0.0, strict=True):
    """None, or a finite float > ``minimum`` (>= with ``strict=False``)."""
    if value is None:
        return None
    if not _is_number(value) or (value <= minimum if strict else value < minimum):
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected None or a float "
                         f"{'>' if strict else '>='} {minimum}, received {value!r}")
    return float(value)


def _check_unit(value, argument, owner, closed_right=False):
    ok = _is_number(value) and (0 <= value <= 1 if closed_right else 0 <= value < 1)
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a float in {interval}, "
                         f"received {value!r}")
    return float(value)


def _check_bool(value, argument, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected a bool, received {value!r}")
    return bool(value)


class Optimizer:
    """Base class of the optimizers; the arguments below are accepted by every one of them.

    Parameters
    ----------
    learning_rate : float > 0 or LearningRateSchedule
        A schedule (``tinycnn.optimizers.schedules``) is called with the step count before every
        step. Its serialised form ``{"class_name": ..., "config": ...}`` is accepted too.
    weight_decay : float >= 0 or None, default None
        Decoupled weight decay (step 3 of the module docstring).
    clipnorm, clipvalue, global_clipnorm : float > 0 or None, default None
        Gradient clipping; at most one may be set (Keras refuses two as well). Keras silently
        ignores 0; tinycnn refuses it, since "clip at 0" is never what was meant.
    use_ema : bool, default False
        Keep an exponential moving average of the weights.
    ema_momentum : float in [0, 1], default 0.99
    ema_overwrite_frequency : int >= 1 or None, default None
    name : str, optional
        Default: the class name in lower case (``'adamw'``).
    exclude_from_weight_decay : list of str, optional
        Not a Keras constructor argument: the names set by :meth:`exclude_from_weight_decay`,
        so that a saved optimizer's configuration rebuilds it completely.
    """

    #: State arrays of the update rule, per parameter (the weight average is added by ``use_ema``).
    rule_slots = ()

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, name=None,
                 exclude_from_weight_decay=None, **kwargs):
        owner = type(self).__name__
        if kwargs:
            raise TypeError(f"{owner}: unexpected keyword argument(s) {sorted(kwargs)}")
        self.iterations = 0
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.weight_decay = _check_optional(weight_decay, "weight_decay", owner, strict=False)
        self.clipnorm = _check_optional(clipnorm, "clipnorm", owner)
        self.clipvalue = _check_optional(clipvalue, "clipvalue", owner)
        self.global_clipnorm = _check_optional(global_clipnorm, "global_clipnorm", owner)
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(f"{owner}: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                             f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                             f"global_clipnorm={global_clipnorm}")
        self.use_ema = _check_bool(use_ema, "use_ema", owner)
        self.ema_momentum = _check_unit(ema_momentum, "ema_momentum", owner, closed_right=True)
        if ema_overwrite_frequency is not None and (
                isinstance(ema_overwrite_frequency, bool) or not isinstance(ema_overwrite_frequency, (int, np.integer))
                or ema_overwrite_frequency < 1):
            raise ValueError(f"{owner}: invalid value for argument `ema_overwrite_frequency`: expected None or "
                             f"an int >= 1, received {ema_overwrite_frequency!r}")
        self.ema_overwrite_frequency = None if ema_overwrite_frequency is None else int(ema_overwrite_frequency)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{owner}: invalid value for argument `name`: expected a str, received {name!r}")
        self.name = name or owner.lower()
        self.slots = {}
        self._swapped = None  # the swapped-in params by key, while swap_average_weights is in effect
        self.exclude_from_weight_decay(var_names=exclude_from_weight_decay)

    # --- learning rate ------------------------------------------------------------------------------

    @property
    def learning_rate(self):
        """The learning rate of the next step, a float (a schedule's value at ``iterations``)."""
        if isinstance(self._learning_rate, schedules_module.LearningRateSchedule):
            return float(self._learning_rate(self.iterations))
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, dict):
            value = schedules_module.deserialize(value)
        if isinstance(value, schedules_module.LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, schedules_module.LearningRateSchedule):
            raise TypeError(f"{type(self).__name__}: this optimizer was created with a LearningRateSchedule as "
                            f"its `learning_rate`, so its learning rate is not settable (as in Keras); create it "
                            f"with a float `learning_rate` to change the rate by hand or with callbacks")
        self._learning_rate = _check_positive(value, "learning_rate", type(self).__name__)

    @property
    def schedule(self):
        """The LearningRateSchedule in use, or None for a constant rate."""
        lr = self._learning_rate
        return lr if isinstance(lr, schedules_module.LearningRateSchedule) else None

    # --- weight decay -------------------------------------------------------------------------------

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Parameters that weight decay leaves alone (Keras's method).

        Parameters
        ----------
        var_list : list of ndarray, optional
            Parameter arrays themselves (``layer.params['bias']``); each is matched by identity and
            replaced by its exact name at the next step, so the choice is saved with the model.
        var_names : list of str, optional
            A parameter is excluded if one of these strings appears in its
            ``"layer_name/param_name"``: ``['bias', 'gamma', 'beta']`` spares the biases and the
            batch-norm scales and offsets. (Keras's documentation says the same; its code also
            treats them as regular expressions. tinycnn matches plain text only, because the
            strings are saved in model files, and a file must not be able to make training hang on
            a pathological regular expression.)
        """
        owner = type(self).__name__
        names = [] if var_names is None else var_names
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{owner}.exclude_from_weight_decay: invalid value for argument `var_names`: "
                             f"expected a list of str, received {var_names!r}")
        arrays = [] if var_list is None else var_list
        if not isinstance(arrays, (list, tuple)) or not all(isinstance(a, np.ndarray) for a in arrays):
            raise ValueError(f"{owner}.exclude_from_weight_decay: invalid value for argument `var_list`: expected "
                             f"a list of parameter arrays (layer.params[...]), received {var_list!r}")
        self._decay_excluded_names = list(names)
        self._decay_excluded_arrays = list(arrays)
        self._decay_cache = {}

    def _use_weight_decay(self, key, value):
        use = self._decay_cache.get(key)
        if use is None:
            # Matched against "/layer/param", so that "/dense/bias" (an excluded array's name)
            # names that parameter only, not the bias of a layer called "my_dense".
            path = "/" + key
            if any(value is a for a in self._decay_excluded_arrays):
                self._decay_excluded_names.append(path)
            use = not any(name in path for name in self._decay_excluded_names)
            self._decay_cache[key] = use
        return use

    # --- the step -----------------------------------------------------------------------------------

    @property
    def slot_names(self):
        """Names of the per-parameter state arrays, in the order of ``self.slots[key]``."""
        return tuple(self.rule_slots) + (("average",) if self.use_ema else ())

    def _slots_for(self, key, value):
        slots = self.slots.get(key)
        if slots is None or (slots and slots[0].size != value.size):
            slots = [np.zeros(value.size, dtype=value.dtype) for _ in self.rule_slots]
            if self.use_ema:
                slots.append(value.reshape(-1).copy())
            self.slots[key] = slots
        return slots

    def _clip(self, grads):
        """Keras's gradient clipping on the flat gradients; copies only what it changes."""
        if self.clipnorm is not None:
            c = self.clipnorm
            out = []
            for g in grads:
                norm = math.sqrt(float(np.dot(g, g)))
                out.append(g * (c / max(norm, c)) if not norm <= c else g)
            return out
        if self.global_clipnorm is not None:
            c = self.global_clipnorm
            norm = math.sqrt(sum(float(np.dot(g, g)) for g in grads))
            if norm <= c:
                return grads
            scale = c / norm if math.isfinite(norm) else math.nan  # Keras: an infinite norm gives NaN
            return [g * scale for g in grads]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def apply(self, params):
        """One update step for every ``(key, value, gradient)``; increments ``iterations``."""
        params = list(params)
        if self._swapped is not None:
            self.swap_average_weights(params)
        lr = self.learning_rate
        grads = self._clip([grad.reshape(-1) for _, _, grad in params])
        momentum = self.ema_momentum if self.iterations > 0 else 0.0
        overwrite = self.use_ema and self.ema_overwrite_frequency is not None \
            and (self.iterations + 1) % self.ema_overwrite_frequency == 0
        for (key, value, _), g in zip(params, grads):
            p = value.reshape(-1)
            slots = self._slots_for(key, value)
            if self.weight_decay and self._use_weight_decay(key, value):
                K.decay_weights(p, self.weight_decay * lr)
            self._update(p, g, slots, lr)
            if self.use_ema:
                K.moving_average_update(slots[-1], p, momentum)
                if overwrite:
                    p[...] = slots[-1]
        self.iterations += 1

    def _update(self, p, g, slots, lr):
        """The update rule on one flat parameter ``p`` with its flat gradient ``g``; ``slots`` are
        its state arrays in ``rule_slots`` order; ``self.iterations`` steps were made before."""
        raise NotImplementedError

    def finalize_variable_values(self, params):
        """Called by ``fit`` when training ends, with the same ``params`` as :meth:`apply` (Keras's
        name). With ``use_ema`` the weights are overwritten by their moving average, as Keras does:
        the model evaluated and saved after ``fit`` is the averaged one. Otherwise nothing happens."""
        if not self.use_ema:
            return
        if self._swapped is not None:
            self.swap_average_weights(params)
        for value, average in self._averages(params):
            value[...] = average

    def _averages(self, params):
        """``(flat weights, flat average)`` for each parameter that has an average."""
        pairs = []
        for key, value, _ in params:
            slots = self.slots.get(key)
            if slots is not None and slots[-1].size == value.size:
                pairs.append((value.reshape(-1), slots[-1]))
        return pairs

    def swap_average_weights(self, params):
        """Exchange the weights and their moving averages, in place; a second call swaps back.

        For evaluating (or saving) the averaged model in the middle of training
        (``callbacks.SwapEMAWeights``). While swapped, :attr:`average_swapped` is True, :meth:`apply`
        first swaps back (training always steps the raw weights), and :meth:`get_state` reports the
        averages, which then sit in the model.
        """
        if not self.use_ema:
            raise ValueError(f"{type(self).__name__}: swapping in the moving average of the weights needs "
                             f"use_ema=True")
        params = list(params)
        for value, average in self._averages(params):
            raw = value.copy()
            value[...] = average
            average[...] = raw
        self._swapped = None if self._swapped is not None else {key: value for key, value, _ in params}

    @property
    def average_swapped(self):
        """True while :meth:`swap_average_weights` has put the averages into the model."""
        return self._swapped is not None

    # --- configuration and state --------------------------------------------------------------------

    def get_config(self):
        """Constructor arguments as plain JSON data (a schedule as ``{"class_name", "config"}``)."""
        schedule = self.schedule
        config = {"name": self.name,
                  "learning_rate": self._learning_rate if schedule is None else schedules_module.serialize(schedule),
                  "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                  "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue, "use_ema": self.use_ema,
                  "ema_momentum": self.ema_momentum, "ema_overwrite_frequency": self.ema_overwrite_frequency}
        if self._decay_excluded_names or self._decay_excluded_arrays:
            config["exclude_from_weight_decay"] = list(self._decay_excluded_names)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_state(self):
        """Plain arrays for saving: ``{"iterations": ..., "key/slot": array}``."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for key, arrays in self.slots.items():
            for slot, arr in zip(self.slot_names, arrays):
                state[f"{key}/{slot}"] = arr
            if self._swapped is not None and key in self._swapped:
                state[f"{key}/average"] = self._swapped[key].reshape(-1)
        return state

    def set_state(self, state):
        self.iterations = int(state.get("iterations", 0))
        self._swapped = None
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
