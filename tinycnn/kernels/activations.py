"""Element-wise and row-wise activations, each beside its derivative, and the dropout mask.

All of them work on a 2-D view ``(M, F)``: rows are samples (or pixels), ``F`` is the last axis.
Backward functions take the layer's *output* ``y`` rather than its input, since every derivative
here is a function of ``y``:

    ReLU     y = max(z, 0)                dz = dy * [y > 0]
    sigmoid  y = 1 / (1 + exp(-z))        dz = dy * y * (1 - y)
    tanh     y = tanh(z)                  dz = dy * (1 - y^2)
    softmax  y_k = exp(z_k) / sum exp     dz = y * (dy - sum_k dy_k y_k)      (per row)
    dropout  y = z * m / (1 - rate)       dz = dy * m / (1 - rate)            (m in {0, 1})
"""
import math

from numba import njit

from ._util import by_rows


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def relu_forward(z2d, y2d):
    m, f = z2d.shape
    for r in range(m):
        for k in range(f):
            v = z2d[r, k]
            y2d[r, k] = v if v > 0 else 0


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def relu_backward(dy2d, y2d, dz2d):
    m, f = dy2d.shape
    for r in range(m):
        for k in range(f):
            dz2d[r, k] = dy2d[r, k] if y2d[r, k] > 0 else 0


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def sigmoid_forward(z2d, y2d):
    m, f = z2d.shape
    for r in range(m):
        for k in range(f):
            v = z2d[r, k]
            # Two branches so that exp never overflows.
            if v >= 0:
                y2d[r, k] = 1.0 / (1.0 + math.exp(-v))
            else:
                e = math.exp(v)
                y2d[r, k] = e / (1.0 + e)


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def sigmoid_backward(dy2d, y2d, dz2d):
    m, f = dy2d.shape
    for r in range(m):
        for k in range(f):
            y = y2d[r, k]
            dz2d[r, k] = dy2d[r, k] * y * (1 - y)


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def tanh_forward(z2d, y2d):
    m, f = z2d.shape
    for r in range(m):
        for k in range(f):
            y2d[r, k] = math.tanh(z2d[r, k])


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def tanh_backward(dy2d, y2d, dz2d):
    m, f = dy2d.shape
    for r in range(m):
        for k in range(f):
            y = y2d[r, k]
            dz2d[r, k] = dy2d[r, k] * (1 - y * y)


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def softmax_forward(z2d, y2d):
    """Row-wise softmax, shifted by the row maximum so that no exponent overflows."""
    m, f = z2d.shape
    for r in range(m):
        top = z2d[r, 0]
        for k in range(1, f):
            if z2d[r, k] > top:
                top = z2d[r, k]
        s = 0.0
        for k in range(f):
            e = math.exp(z2d[r, k] - top)
            y2d[r, k] = e
            s += e
        inv = 1.0 / s
        for k in range(f):
            y2d[r, k] *= inv


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def softmax_backward(dy2d, y2d, dz2d):
    """Vector-Jacobian product of the softmax: ``dz = y * (dy - <dy, y>)`` per row."""
    m, f = dy2d.shape
    for r in range(m):
        dot = 0.0
        for k in range(f):
            dot += dy2d[r, k] * y2d[r, k]
        for k in range(f):
            dz2d[r, k] = y2d[r, k] * (dy2d[r, k] - dot)


@by_rows(0, 1, 3, 4)
@njit(nogil=True, cache=True)
def dropout_forward(x, u, rate, y, mask):
    """Inverted dropout on flat arrays: keep where ``u >= rate``, scale kept values by 1/(1-rate).

    x, u, y : ndarray (M,)   u holds uniform draws in [0, 1)
    mask : ndarray (M,) uint8, written (1 = kept)
    """
    scale = 1.0 / (1.0 - rate)
    for i in range(x.shape[0]):
        if u[i] >= rate:
            mask[i] = 1
            y[i] = x[i] * scale
        else:
            mask[i] = 0
            y[i] = 0


@by_rows(0, 1, 3)
@njit(nogil=True, cache=True)
def dropout_backward(dy, mask, rate, dx):
    scale = 1.0 / (1.0 - rate)
    for i in range(dy.shape[0]):
        dx[i] = dy[i] * scale if mask[i] else 0
