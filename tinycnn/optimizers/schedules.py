"""Learning-rate schedules, Keras's ``keras.optimizers.schedules``: names, arguments, formulas.

A schedule is passed wherever a learning rate is (``SGD(learning_rate=CosineDecay(0.1, 1000))``).
The optimizer calls it with its step counter before every update: ``lr = schedule(step)``, where
``step`` is the number of updates already made (0 for the first batch of training), as Keras does.
Steps are batches, not epochs: ``decay_steps = epochs * ceil(n_samples / batch_size)`` decays over
the whole run.

A schedule is plain data: ``get_config()`` returns its constructor arguments, and
:func:`serialize` / :func:`deserialize` turn it into ``{"class_name": ..., "config": ...}`` and
back, which is how a saved model keeps its optimizer's schedule. Only the classes listed in
:data:`SCHEDULE_CLASSES` can be rebuilt from a file.
"""
import math

import numpy as np


def _number(value, argument, owner, minimum=None, strict=False, integer=False):
    """``value`` as a float (or int), or a ValueError naming the schedule, the argument and the rule."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        what = "an int" if integer else "a number"
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected {what}{bound}, "
                         f"received {value!r}")
    return int(value) if integer or isinstance(value, (int, np.integer)) else float(value)


def _name(name, owner):
    if not isinstance(name, str):
        raise ValueError(f"{owner}: invalid value for argument `name`: expected a str, received {name!r}")
    return name


def _check_bool(value, argument, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: invalid value for argument `{argument}`: expected True or False, "
                         f"received {value!r}")
    return bool(value)


class LearningRateSchedule:
    """Base class: ``schedule(step) -> float`` and ``get_config()`` (the constructor arguments)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _DecayOverSteps(LearningRateSchedule):
    """The arguments Keras's ``ExponentialDecay`` and ``InverseTimeDecay`` share; a subclass gives
    the formula of ``p = step / decay_steps`` (rounded down with ``staircase=True``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name=None):
        owner = type(self).__name__
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner, 0)
        self.decay_steps = _number(decay_steps, "decay_steps", owner, 0, strict=True)
        self.decay_rate = _number(decay_rate, "decay_rate", owner, 0)
        self.staircase = _check_bool(staircase, "staircase", owner)
        self.name = _name(owner if name is None else name, owner)

    def __call__(self, step):
        p = step / self.decay_steps
        return self._rate(math.floor(p) if self.staircase else p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class ExponentialDecay(_DecayOverSteps):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase=True`` the
    exponent is rounded down, so the rate drops by ``decay_rate`` every ``decay_steps`` steps.

    Parameters
    ----------
    initial_learning_rate : float >= 0
    decay_steps : number > 0
    decay_rate : float >= 0
    staircase : bool, default False
    name : str, default 'ExponentialDecay'
    """

    def _rate(self, p):
        return self.initial_learning_rate * self.decay_rate ** p


class InverseTimeDecay(_DecayOverSteps):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)``; with ``staircase=True``
    ``step / decay_steps`` is rounded down.

    Parameters
    ----------
    initial_learning_rate : float >= 0
    decay_steps : number > 0
    decay_rate : float >= 0
    staircase : bool, default False
    name : str, default 'InverseTimeDecay'
    """

    def _rate(self, p):
        return self.initial_learning_rate / (1 + self.decay_rate * p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """A constant rate between boundaries: ``values[0]`` while ``step <= boundaries[0]``,
    ``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last.

    Parameters
    ----------
    boundaries : list of numbers >= 0, increasing
    values : list of float >= 0, one more than ``boundaries``
    name : str, default 'PiecewiseConstant'
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        owner = "PiecewiseConstantDecay"
        if not isinstance(boundaries, (list, tuple)) or not boundaries:
            raise ValueError(f"{owner}: invalid value for argument `boundaries`: expected a non-empty list of "
                             f"steps, received {boundaries!r}")
        if not isinstance(values, (list, tuple)) or len(values) != len(boundaries) + 1:
            raise ValueError(f"{owner}: invalid value for argument `values`: expected a list of "
                             f"len(boundaries) + 1 = {len(boundaries) + 1} learning rates, received {values!r}")
        self.boundaries = [_number(b, "boundaries", owner, 0) for b in boundaries]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{owner}: invalid value for argument `boundaries`: expected increasing steps, "
                             f"received {boundaries!r}")
        self.values = [_number(v, "values", owner, 0) for v in values]
        self.name = _name(name, owner)

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay, optionally after a linear warm-up (SGDR without restarts).

    Without warm-up (``warmup_target=None``), with ``s = min(step, decay_steps)``::

        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)

    With warm-up, the rate first climbs linearly from ``initial_learning_rate`` (often 0) to
    ``warmup_target`` over ``warmup_steps`` steps, then decays from ``warmup_target`` as above over
    the next ``decay_steps`` steps (``s = min(step - warmup_steps, decay_steps)``)::

        lr = initial_learning_rate + (warmup_target - initial_learning_rate) * step / warmup_steps

    Parameters
    ----------
    initial_learning_rate : float >= 0
    decay_steps : number > 0
        Length of the decay (not counting the warm-up).
    alpha : float >= 0, default 0
        The floor, as a fraction of the rate decayed from.
    name : str, default 'CosineDecay'
    warmup_target : float >= 0 or None, default None
    warmup_steps : int >= 0, default 0
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner, 0)
        self.decay_steps = _number(decay_steps, "decay_steps", owner, 0, strict=True)
        self.alpha = _number(alpha, "alpha", owner, 0)
        self.name = _name(name, owner)
        self.warmup_target = None if warmup_target is None else _number(warmup_target, "warmup_target", owner, 0)
        self.warmup_steps = _number(warmup_steps, "warmup_steps", owner, 0, integer=True)

    def _decay(self, step, decay_from):
        cosine = 0.5 * (1 + math.cos(math.pi * step / self.decay_steps))
        return decay_from * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * step / self.warmup_steps + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Period ``i`` (from 0) lasts ``first_decay_steps * t_mul**i`` steps and starts at
    ``initial_learning_rate * m_mul**i``; within a period, at fraction ``f`` of it::

        lr = initial_learning_rate * ((1 - alpha) * m_mul**i * 0.5 * (1 + cos(pi * f)) + alpha)

    Parameters
    ----------
    initial_learning_rate : float >= 0
    first_decay_steps : number > 0
    t_mul : float > 0, default 2.0
        Each period is ``t_mul`` times longer than the one before.
    m_mul : float >= 0, default 1.0
        Each restart begins at ``m_mul`` times the previous peak.
    alpha : float >= 0, default 0
    name : str, default 'SGDRDecay'
    """

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0, name="SGDRDecay"):
        owner = "CosineDecayRestarts"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner, 0)
        self.first_decay_steps = _number(first_decay_steps, "first_decay_steps", owner, 0, strict=True)
        self.t_mul = _number(t_mul, "t_mul", owner, 0, strict=True)
        self.m_mul = _number(m_mul, "m_mul", owner, 0)
        self.alpha = _number(alpha, "alpha", owner, 0)
        self.name = _name(name, owner)

    def __call__(self, step):
        fraction = step / self.first_decay_steps
        if self.t_mul == 1.0:
            restart = math.floor(fraction)
            fraction -= restart
        else:
            # Periods 1, t, t^2, ... end at (1 - t^(i+1)) / (1 - t): invert that for i.
            restart = math.floor(math.log(1 - fraction * (1 - self.t_mul)) / math.log(self.t_mul))
            done = (1 - self.t_mul ** restart) / (1 - self.t_mul)
            fraction = (fraction - done) / self.t_mul ** restart
        cosine = 0.5 * self.m_mul ** restart * (1 + math.cos(math.pi * fraction))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "first_decay_steps": self.first_decay_steps,
                "t_mul": self.t_mul, "m_mul": self.m_mul, "alpha": self.alpha, "name": self.name}


#: The schedules a saved model may name.
SCHEDULE_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay,
                                                  CosineDecay, CosineDecayRestarts)}


def serialize(schedule):
    """``{"class_name": "CosineDecay", "config": {...}}``: plain JSON data, Keras's layout."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    """The schedule described by :func:`serialize`'s dict; only tinycnn's own classes are built."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) \
            or config.get("class_name") not in SCHEDULE_CLASSES:
        raise ValueError(f"Invalid learning-rate schedule: expected {{'class_name': one of "
                         f"{sorted(SCHEDULE_CLASSES)}, 'config': {{...}}}}, received {config!r}")
    try:
        return SCHEDULE_CLASSES[config["class_name"]].from_config(config["config"])
    except TypeError as err:
        raise ValueError(f"Invalid learning-rate schedule {config['class_name']}: {err}") from None
