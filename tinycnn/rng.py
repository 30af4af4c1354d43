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
