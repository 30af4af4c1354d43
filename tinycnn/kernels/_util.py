"""Helpers shared by the kernels: deterministic parallel column sums."""
import numpy as np
from numba import njit, prange

# Parallel reductions split their rows into this many fixed blocks, sum each block in its own row
# of a scratch array, then add the blocks in order. The result is the same for any thread count.
N_CHUNKS = 16


@njit(parallel=True, cache=True)
def column_sums(x2d):
    """``x2d.sum(axis=0)`` accumulated in float64, deterministic for any thread count.

    x2d : ndarray (M, F) -> ndarray (F,) float64
    """
    m, f = x2d.shape
    nb = min(N_CHUNKS, m) if m > 0 else 1
    part = np.zeros((nb, f))
    for blk in prange(nb):
        for r in range(blk * m // nb, (blk + 1) * m // nb):
            for k in range(f):
                part[blk, k] += x2d[r, k]
    out = np.zeros(f)
    for blk in range(nb):
        for k in range(f):
            out[k] += part[blk, k]
    return out
