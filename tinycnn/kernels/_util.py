"""Helpers shared by the kernels: how they are spread over threads, deterministic column sums.

Kernels are serial Numba functions that release the GIL; ``_threads.in_slices`` runs one slice of
their rows per thread (see its docstring for why not Numba's ``parallel=True``). A kernel whose
rows are independent is wrapped with :func:`by_rows`; a sum over rows is cut into ``N_CHUNKS``
fixed blocks whose partial sums are added in block order (:func:`sum_blocks`), so the result is
the same for any thread count.
"""
import functools

import numpy as np
from numba import njit

from .._threads import in_slices

# Sums over rows split them into this many fixed blocks, sum each block in its own row of a
# scratch array, then add the blocks in order. The result is the same for any thread count.
N_CHUNKS = 16


def by_rows(*sliced):
    """Decorator: run a row-wise kernel over slices of rows, one per thread.

    ``sliced`` are the positions of the arguments that share the first axis (the rows); the
    others (per-channel vectors, scalars) go to every slice whole. A slice of a C-contiguous array
    along its first axis is C-contiguous too, so every slice runs the one compiled specialisation.
    The compiled kernel stays reachable as ``.kernel``.
    """
    def wrap(kernel):
        @functools.wraps(kernel.py_func)
        def run(*args):
            rows = args[sliced[0]]

            def work(lo, hi):
                kernel(*[a[lo:hi] if i in sliced else a for i, a in enumerate(args)])

            in_slices(rows.shape[0], work, rows.size)

        run.kernel = kernel
        return run
    return wrap


def n_blocks(m):
    """How many fixed blocks a sum over ``m`` rows is cut into."""
    return min(N_CHUNKS, m) if m > 0 else 1


@njit(inline="always")
def block_rows(blk, m, nb):
    """Rows ``[r0, r1)`` of block ``blk`` of ``nb`` over ``m`` rows."""
    return blk * m // nb, (blk + 1) * m // nb


def sum_blocks(blocks_kernel, m, elements, args, parts):
    """Fill the partial sums ``parts`` (each (nb, F) float64, zeroed) with
    ``blocks_kernel(*args, *parts, b0, b1)`` over the blocks, a slice of blocks per thread, then
    add each one's blocks in order: returns the (F,) totals."""
    in_slices(parts[0].shape[0], lambda b0, b1: blocks_kernel(*args, *parts, b0, b1), elements)
    totals = []
    for part in parts:
        total = np.zeros(part.shape[1])
        for row in part:  # block order: the same sum for every thread count
            total += row
        totals.append(total)
    return totals


@njit(nogil=True, cache=True)
def _column_sum_blocks(x2d, part, b0, b1):
    m, f = x2d.shape
    for blk in range(b0, b1):
        r0, r1 = block_rows(blk, m, part.shape[0])
        for r in range(r0, r1):
            for k in range(f):
                part[blk, k] += x2d[r, k]


def column_sums(x2d):
    """``x2d.sum(axis=0)`` accumulated in float64, deterministic for any thread count.

    x2d : ndarray (M, F) -> ndarray (F,) float64
    """
    m, f = x2d.shape
    return sum_blocks(_column_sum_blocks, m, x2d.size, (x2d,), [np.zeros((n_blocks(m), f))])[0]
