"""Convolution as a matrix product: im2col, col2im and the bias/ReLU epilogue.

A 2-D convolution in NHWC layout,

    y[n, i, j, f] = b[f] + sum_{a, b', c} x[n, i*sh - ph + a, j*sw - pw + b', c] * w[a, b', c, f],

becomes one matrix product once every receptive field is copied into one row of a "column" matrix:

    cols[(n, i, j), (a, b', c)] = x[n, i*sh - ph + a, j*sw - pw + b', c]      (zero outside the image)
    y2d = cols @ w.reshape(KH*KW*C, F)                                         (N*OH*OW, F)

The row order (n, i, j) is exactly NHWC, so ``y2d`` *is* the output tensor, reshaped: no transposes.
The column order (a, b', c) is the Keras kernel layout ``(KH, KW, C, F)`` flattened, so the kernel
needs no transposes either.

Backward, with ``dy2d`` the output gradient as an (N*OH*OW, F) matrix:

    dW    = cols.T @ dy2d             (KH*KW*C, F)
    db    = dy2d.sum(axis=0)          (F,)
    dcols = dy2d @ W2d.T              (N*OH*OW, KH*KW*C)
    dx    = col2im(dcols)             each input pixel sums the column entries it was copied to

The two products run in BLAS (called from the layer); the copies run here.
"""
import numpy as np
from numba import njit

from ._util import block_rows, by_rows, n_blocks, sum_blocks


def conv_output_length(size, kernel, stride, padding):
    """Output length and leading padding along one spatial axis, TensorFlow/Keras conventions.

    Notes
    -----
    ``'valid'``: ``out = floor((size - kernel) / stride) + 1`` and no padding.
    ``'same'``:  ``out = ceil(size / stride)``; the total padding
    ``max((out - 1) * stride + kernel - size, 0)`` is split with the smaller half first (top/left),
    the larger half last (bottom/right), as TensorFlow does, so weights trade 1:1 with Keras.
    """
    if padding == "valid":
        out = (size - kernel) // stride + 1
        return out, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2


@njit(inline="always")
def _im2col_row(x, kh, kw, sh, sw, ph, pw, oh, ow, cols, t):
    """:func:`im2col` for output row ``t % oh`` of image ``t // oh``.

    Each pixel's channels are copied by an element loop, which Numba turns into a vectorised copy
    for 16+ channels. One and three channels (grey scans, RGB: the first layer) are written out
    one by one: a loop of three runs at half that speed behind its vector set-up. A slice copy
    (``dst[a:b] = src``) would be as fast but compiles Numba's shape-mismatch error formatting
    with it, a second of a first run's compile time.
    """
    _, h, w, c = x.shape
    n = t // oh
    i = t % oh
    for j in range(ow):
        dst = cols[t * ow + j]
        col = 0
        for a in range(kh):
            hi = i * sh - ph + a
            for b in range(kw):
                wi = j * sw - pw + b
                inside = hi >= 0 and hi < h and wi >= 0 and wi < w
                if c == 1:
                    if inside:
                        dst[col] = x[n, hi, wi, 0]
                    else:
                        dst[col] = 0
                elif c == 3:
                    if inside:
                        dst[col] = x[n, hi, wi, 0]
                        dst[col + 1] = x[n, hi, wi, 1]
                        dst[col + 2] = x[n, hi, wi, 2]
                    else:
                        dst[col] = 0
                        dst[col + 1] = 0
                        dst[col + 2] = 0
                elif inside:
                    src = x[n, hi, wi]
                    for ch in range(c):
                        dst[col + ch] = src[ch]
                else:
                    for ch in range(c):
                        dst[col + ch] = 0
                col += c


@njit(nogil=True, cache=True)
def im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """Copy every receptive field of ``x`` into one row of ``cols``.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    kh, kw, sh, sw, ph, pw : int
        Kernel size, strides and leading padding.
    oh, ow : int
        Output height and width.
    cols : ndarray (N*OH*OW, KH*KW*C), written.
    """
    for t in range(x.shape[0] * oh):
        _im2col_row(x, kh, kw, sh, sw, ph, pw, oh, ow, cols, t)


@njit(inline="always")
def _col2im_row(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx, t):
    """:func:`col2im` for input row ``t % H`` of image ``t // H``."""
    _, h, w, c = dx.shape
    n = t // h
    hi = t % h
    for wi in range(w):
        for ch in range(c):
            dx[n, hi, wi, ch] = 0
        for a in range(kh):
            num_h = hi + ph - a
            if num_h < 0 or num_h % sh != 0:
                continue
            i = num_h // sh
            if i >= oh:
                continue
            for b in range(kw):
                num_w = wi + pw - b
                if num_w < 0 or num_w % sw != 0:
                    continue
                j = num_w // sw
                if j >= ow:
                    continue
                row = (n * oh + i) * ow + j
                col = (a * kw + b) * c
                for ch in range(c):
                    dx[n, hi, wi, ch] += dcols[row, col + ch]


@njit(nogil=True, cache=True)
def col2im(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    """Adjoint of :func:`im2col`: each input pixel sums the column entries it was copied to.

    Written as a *gather* over input pixels rather than a scatter over columns: each input row is
    written by one iteration, so a slice of rows per thread never collides with another, and the
    summation order is fixed (deterministic).

    Parameters
    ----------
    dcols : ndarray (N*OH*OW, KH*KW*C)
    dx : ndarray (N, H, W, C), overwritten.
    """
    for t in range(dx.shape[0] * dx.shape[1]):
        _col2im_row(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx, t)


@by_rows(0)
@njit(nogil=True, cache=True)
def bias_act_forward(y2d, bias, relu, scale, shift):
    """In place: ``y2d += bias``, then ``max(y2d, 0)`` if ``relu``. The convolution/Dense epilogue.
    Then ``y2d * scale + shift`` per column if ``scale`` is not empty: an inference-time batch
    normalization after the layer, folded into this pass (``tinycnn/graph.py``).

    y2d : ndarray (M, F); bias : ndarray (F,), or size 0 for no bias; relu : bool;
    scale, shift : ndarray (F,), or size 0
    """
    m, f = y2d.shape
    has_bias = bias.shape[0] > 0
    affine = scale.shape[0] > 0
    for r in range(m):
        for k in range(f):
            v = y2d[r, k]
            if has_bias:
                v += bias[k]
            if relu and v < 0:
                v = np.float32(0)  # float32, so that float32 data are not promoted to float64
            if affine:
                v = v * scale[k] + shift[k]
            y2d[r, k] = v


@njit(nogil=True, cache=True)
def _bias_act_backward_blocks(dy2d, y2d, relu, dz2d, part, b0, b1):
    """Blocks ``b0..b1-1`` of :func:`bias_act_backward`: their rows of ``dz`` and column sums."""
    m, f = dy2d.shape
    for blk in range(b0, b1):
        r0, r1 = block_rows(blk, m, part.shape[0])
        for r in range(r0, r1):
            for k in range(f):
                g = dy2d[r, k]
                if relu and not (y2d[r, k] > 0):
                    g = 0
                dz2d[r, k] = g
                part[blk, k] += g


def bias_act_backward(dy2d, y2d, relu, dz2d):
    """Gradient through the epilogue: ``dz = dy * (y > 0)`` (or ``dy``), and the bias gradient.

    Parameters
    ----------
    dy2d, y2d : ndarray (M, F)
        Output gradient and the layer's output (after ReLU; ``y > 0`` exactly where ``z > 0``).
    relu : bool
    dz2d : ndarray (M, F), written (may be ``dy2d`` itself).

    Returns
    -------
    db : ndarray (F,) float64
        ``dz.sum(axis=0)``, summed in a fixed number of row blocks and then in block order, so the
        result does not depend on the thread count.
    """
    m, f = dy2d.shape
    return sum_blocks(_bias_act_backward_blocks, m, 2 * dy2d.size, (dy2d, y2d, relu, dz2d),
                      [np.zeros((n_blocks(m), f))])[0]
