"""One source of randomness for the whole package.

``set_seed(n)`` makes a run repeatable: weight initialisation, shuffling, dropout masks and
augmentation all draw from generators spawned, in a fixed order, from one seeded root. Without a
seed the root is seeded from the operating system, as NumPy does.
"""
import random

import numpy as np

_root = np.random.default_rng()


def set_seed(seed):
    """Seed tinycnn (and, as Keras's ``set_random_seed`` does, Python's and NumPy's global RNGs).

    Parameters
    ----------
    seed : int
        A non-negative integer.
    """
    global _root
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Invalid value for argument `seed`: expected a non-negative int, received {seed!r}")
    _root = np.random.default_rng(int(seed))
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)


def generator(seed=None):
    """A new independent ``numpy.random.Generator``: from ``seed`` if given, else from the root."""
    if seed is not None:
        return np.random.default_rng(seed)
    return np.random.default_rng(_root.integers(0, 2**63))


def get_state():
    """The root generator's state: a dict of ints and strings (JSON-able), for
    ``callbacks.BackupAndRestore``. :func:`set_state` puts it back, so that the generators spawned
    afterwards are the same as in the run that saved it."""
    return _root.bit_generator.state


def set_state(state):
    """Put back a state from :func:`get_state` (a ValueError if it is not one)."""
    global _root
    root = np.random.default_rng()
    try:
        root.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"tinycnn.rng.set_state: not a state from tinycnn.rng.get_state() ({e})") from None
    _root = root
