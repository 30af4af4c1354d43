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
from numba import njit, prange

from ._util import N_CHUNKS


@njit(parallel=True, cache=True)
def moments(x2d):
    """Per-channel mean and (biased) variance, accumulated in float64.

    Sums are taken of ``x - x[0]`` (a shift by the first row) so that a large mean does not
    cancel the variance away. Fixed row blocks keep the result independent of the thread count.

    x2d : ndarray (M, C) -> (mean, var), each ndarray (C,) float64
    """
    m, c = x2d.shape
    nb = min(N_CHUNKS, m)
    s1 = np.zeros((nb, c))
    s2 = np.zeros((nb, c))
    for blk in prange(nb):
        for r in range(blk * m // nb, (blk + 1) * m // nb):
            for k in range(c):
                d = np.float64(x2d[r, k]) - x2d[0, k]
                s1[blk, k] += d
                s2[blk, k] += d * d
    mean = np.zeros(c)
    var = np.zeros(c)
    for k in range(c):
        a = 0.0
        b = 0.0
        for blk in range(nb):
            a += s1[blk, k]
            b += s2[blk, k]
        a /= m
        mean[k] = x2d[0, k] + a
        var[k] = max(b / m - a * a, 0.0)
    return mean, var


@njit(parallel=True, cache=True)
def channel_affine(x2d, scale, shift, y2d):
    """``y = x * scale + shift`` per channel. x2d, y2d : (M, C); scale, shift : (C,)"""
    m, c = x2d.shape
    for r in prange(m):
        for k in range(c):
            y2d[r, k] = x2d[r, k] * scale[k] + shift[k]


@njit(parallel=True, cache=True)
def backward_sums(dy2d, x2d, mean):
    """Per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` in float64, deterministic.

    dy2d, x2d : (M, C); mean : (C,) -> (sum_dy, sum_dy_xc), each (C,) float64
    """
    m, c = dy2d.shape
    nb = min(N_CHUNKS, m)
    s1 = np.zeros((nb, c))
    s2 = np.zeros((nb, c))
    for blk in prange(nb):
        for r in range(blk * m // nb, (blk + 1) * m // nb):
            for k in range(c):
                g = np.float64(dy2d[r, k])
                s1[blk, k] += g
                s2[blk, k] += g * (x2d[r, k] - mean[k])
    sum_dy = np.zeros(c)
    sum_dy_xc = np.zeros(c)
    for blk in range(nb):
        for k in range(c):
            sum_dy[k] += s1[blk, k]
            sum_dy_xc[k] += s2[blk, k]
    return sum_dy, sum_dy_xc


@njit(parallel=True, cache=True)
def backward_apply(dy2d, x2d, mean, a, b, cc, dx2d):
    """``dx = a * dy + b * (x - mean) + c`` per channel.

    dy2d, x2d, dx2d : (M, C); mean, a, b, cc : (C,)
    """
    m, c = dy2d.shape
    for r in prange(m):
        for k in range(c):
            dx2d[r, k] = a[k] * dy2d[r, k] + b[k] * (x2d[r, k] - mean[k]) + cc[k]
