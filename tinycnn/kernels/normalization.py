"""Batch normalization kernels on a ``(M, C)`` view: rows are every (n, h, w), columns channels.

Forward (training), per channel, with ``M`` rows:

    mean = sum(x) / M,   var = sum((x - mean)^2) / M,   inv = 1 / sqrt(var + eps)
    y = gamma * (x - mean) * inv + beta  =  x * scale + shift,
        scale = gamma * inv,  shift = beta - mean * scale

At inference the same affine map is used with the moving mean and variance. So the forward pass is
:func:`moments` (one read of ``x``) plus :func:`channel_affine` (one read, one write).

Backward (training), with ``xhat = (x - mean) * inv``:

    dbeta  = sum(dy)
    dgamma = sum(dy * xhat)
    dx     = gamma * inv / M * (M * dy - dbeta - xhat * dgamma)
           = a * dy + b * (x - mean) + c   with per-channel a, b, c (see the layer)

so the backward pass is :func:`backward_sums` (one read of ``dy`` and ``x``) plus
:func:`backward_apply` (one more read and a write).
"""
import numpy as np
from numba import njit

from ._util import block_rows, by_rows, n_blocks, sum_blocks


@njit(nogil=True, cache=True)
def _moment_blocks(x2d, s1, s2, b0, b1):
    """Blocks ``b0..b1-1`` of :func:`moments`' sums: ``s1[blk] = sum(x - x[0])``, ``s2[blk] =
    sum((x - x[0])^2)`` over the block's rows."""
    m, c = x2d.shape
    for blk in range(b0, b1):
        r0, r1 = block_rows(blk, m, s1.shape[0])
        for r in range(r0, r1):
            for k in range(c):
                d = np.float64(x2d[r, k]) - x2d[0, k]
                s1[blk, k] += d
                s2[blk, k] += d * d


def moments(x2d):
    """Per-channel mean and (biased) variance, accumulated in float64.

    Sums are taken of ``x - x[0]`` (a shift by the first row) so that a large mean does not
    cancel the variance away. Fixed row blocks keep the result independent of the thread count.

    x2d : ndarray (M, C) -> (mean, var), each ndarray (C,) float64
    """
    m, c = x2d.shape
    nb = n_blocks(m)
    a, b = sum_blocks(_moment_blocks, m, x2d.size, (x2d,), [np.zeros((nb, c)), np.zeros((nb, c))])
    a /= m
    mean = x2d[0] + a
    var = np.maximum(b / m - a * a, 0.0)
    return mean, var


@by_rows(0, 3)
@njit(nogil=True, cache=True)
def channel_affine(x2d, scale, shift, y2d):
    """``y = x * scale + shift`` per channel. x2d, y2d : (M, C); scale, shift : (C,)"""
    m, c = x2d.shape
    for r in range(m):
        for k in range(c):
            y2d[r, k] = x2d[r, k] * scale[k] + shift[k]


@njit(nogil=True, cache=True)
def _backward_sum_blocks(dy2d, x2d, mean, s1, s2, b0, b1):
    """Blocks ``b0..b1-1`` of :func:`backward_sums`."""
    m, c = dy2d.shape
    for blk in range(b0, b1):
        r0, r1 = block_rows(blk, m, s1.shape[0])
        for r in range(r0, r1):
            for k in range(c):
                g = np.float64(dy2d[r, k])
                s1[blk, k] += g
                s2[blk, k] += g * (x2d[r, k] - mean[k])


def backward_sums(dy2d, x2d, mean):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64, deterministic.

    dy2d, x2d : (M, C); mean : (C,) -> (sum_dy, sum_dy_xc), each (C,) float64
    """
    m, c = dy2d.shape
    nb = n_blocks(m)
    return tuple(sum_blocks(_backward_sum_blocks, m, 2 * dy2d.size, (dy2d, x2d, mean),
                            [np.zeros((nb, c)), np.zeros((nb, c))]))


@by_rows(0, 1, 6)
@njit(nogil=True, cache=True)
def backward_apply(dy2d, x2d, mean, a, b, cc, dx2d):
    """``dx = a * dy + b * (x - mean) + c`` per channel.

    dy2d, x2d, dx2d : (M, C); mean, a, b, cc : (C,)
    """
    m, c = dy2d.shape
    for r in range(m):
        for k in range(c):
            dx2d[r, k] = a[k] * dy2d[r, k] + b[k] * (x2d[r, k] - mean[k]) + cc[k]
