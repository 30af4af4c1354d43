"""Weight initializers, with Keras's names and formulas.

For a kernel of shape ``(KH, KW, C_in, C_out)`` (or ``(n_in, n_out)`` for Dense) the fans are
``fan_in = KH*KW*C_in`` and ``fan_out = KH*KW*C_out``.

    glorot_uniform   U(-l, l),  l = sqrt(6 / (fan_in + fan_out))        (Keras's default kernel)
    glorot_normal    truncated N(0, s), s = sqrt(2 / (fan_in + fan_out))
    he_uniform       U(-l, l),  l = sqrt(6 / fan_in)
    he_normal        truncated N(0, s), s = sqrt(2 / fan_in)
    zeros, ones      constants                                          (zeros: Keras's default bias)

"Truncated" means redrawn beyond two standard deviations, with the scale divided by .8796 so the
variance stays ``s^2``, as Keras does.
"""
import numpy as np


def _fans(shape):
    if len(shape) < 2:
        return shape[0] if shape else 1, shape[0] if shape else 1
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, std):
    std = std / 0.87962566103423978
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * std


def glorot_uniform(shape, rng):
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape, rng):
    fan_in, fan_out = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2.0 / (fan_in + fan_out)))


def he_uniform(shape, rng):
    fan_in, _ = _fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def he_normal(shape, rng):
    fan_in, _ = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2.0 / fan_in))


def zeros(shape, rng):
    return np.zeros(shape)


def ones(shape, rng):
    return np.ones(shape)


_REGISTRY = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_uniform, he_normal, zeros, ones)}


def get(name, argument="kernel_initializer"):
    """Look up an initializer by name, or accept a callable ``f(shape, rng) -> ndarray``."""
    if callable(name):
        return name
    if isinstance(name, str) and name.lower() in _REGISTRY:
        return _REGISTRY[name.lower()]
    raise ValueError(f"Invalid value for argument `{argument}`: expected one of "
                     f"{sorted(_REGISTRY)} or a callable f(shape, rng), received {name!r}")


def name_of(init):
    """The registry name of an initializer, for saving configs (callables cannot be saved)."""
    for key, fn in _REGISTRY.items():
        if fn is init:
            return key
    return None
