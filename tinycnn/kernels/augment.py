"""Augmentation kernels: flips, affine resampling (rotation, translation) and contrast, each beside its
adjoint.

Every augmentation here is a *linear* map of the image once its random parameters are drawn (plus a
constant for ``fill_value``), so its backward pass is the transpose of that map:

* **Flip.** ``y[n, i, j] = x[n, i', j']`` with ``i' = H-1-i`` if flipped vertically (else ``i``) and
  ``j' = W-1-j`` if flipped horizontally. A flip is its own inverse and its own transpose, so
  :func:`flip` serves forward and backward.

* **Affine resampling.** Output pixel ``(i, j)`` (row, column) reads the input at the point

      xs = a0 * j + a1 * i + a2,      ys = b0 * j + b1 * i + b2,

  Keras's ``transforms`` layout (output -> input, first six entries of its 8-vector). Bilinear
  interpolation blends the four pixels around ``(ys, xs)``:

      y0 = floor(ys), x0 = floor(xs), fy = ys - y0, fx = xs - x0
      y[i, j] = (1-fy)(1-fx) v(y0, x0) + (1-fy) fx v(y0, x0+1) + fy (1-fx) v(y0+1, x0) + fy fx v(y0+1, x0+1)

  (``'nearest'`` interpolation takes the single pixel ``floor(ys + 1/2), floor(xs + 1/2)``).
  ``v(r, c)`` is the input pixel, or, outside the image, whatever the fill mode says: ``'constant'``
  reads ``fill_value``; ``'nearest'`` the closest edge pixel (``aaaa|abcd|dddd``); ``'reflect'`` the
  mirror image about the edge (``dcba|abcd|dcba``); ``'wrap'`` the periodic copy (``abcd|abcd|abcd``).
  The weights never depend on ``x``, so ``y = A x + c`` and the backward pass is ``dx = A.T dy``:
  each output gradient is *scattered* back to the (up to) four pixels it was read from, with the
  same weights (:func:`affine_sample_backward`). A constant fill contributes nothing to ``dx``.

* **Contrast.** Per image ``n`` and channel ``c``, with ``m`` the mean over the ``H*W`` pixels and
  ``f`` the image's factor: ``y = (x - m) f + m = f x + (1 - f) m``. The mean depends on every pixel,
  so ``dx = f dy + (1 - f) mean(dy)`` (:func:`contrast_backward`).

The kernels are spread over threads by images (``_util.by_rows``): a slice of images reads and
writes its own images only, so the scatter of the backward pass never touches memory another thread
writes.
"""
import math

import numpy as np
from numba import njit

from ._util import by_rows

#: Fill-mode codes taken by the kernels (the layers turn Keras's names into these).
FILL_CONSTANT = 0
FILL_NEAREST = 1
FILL_REFLECT = 2
FILL_WRAP = 3
FILL_MODES = {"constant": FILL_CONSTANT, "nearest": FILL_NEAREST, "reflect": FILL_REFLECT, "wrap": FILL_WRAP}


# --- flip -----------------------------------------------------------------------------------------

@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def flip(x, flips, y):
    """Flip each image up-down and/or left-right. Its own adjoint: backward is the same call on ``dy``.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    flips : ndarray (N, 2) uint8
        ``flips[n, 0]``: flip image ``n`` vertically (rows); ``flips[n, 1]``: horizontally (columns).
    y : ndarray (N, H, W, C), written (must not be ``x``).
    """
    n_img, h, w, c = x.shape
    for n in range(n_img):
        flip_v = flips[n, 0] != 0
        flip_h = flips[n, 1] != 0
        for i in range(h):
            si = h - 1 - i if flip_v else i
            for j in range(w):
                sj = w - 1 - j if flip_h else j
                for ch in range(c):
                    y[n, i, j, ch] = x[n, si, sj, ch]


# --- affine resampling ----------------------------------------------------------------------------

@njit(cache=True)
def fill_index(k, length, fill_mode):
    """Where integer position ``k`` reads from along an axis of ``length`` pixels.

    Returns an index in ``[0, length)``, or -1 for "outside: use ``fill_value``" (constant mode).
    """
    if k >= 0 and k < length:
        return k
    if fill_mode == FILL_CONSTANT:
        return -1
    if fill_mode == FILL_NEAREST:
        return 0 if k < 0 else length - 1
    if fill_mode == FILL_REFLECT:
        period = 2 * length
        p = k % period            # Python semantics in Numba: 0 <= p < period, also for k < 0
        return p if p < length else period - 1 - p
    return k % length             # FILL_WRAP


@njit(cache=True)
def _taps(ys, xs, h, w, fill_mode, bilinear, rows, cols, weights):
    """The (up to) four input pixels that output point ``(ys, xs)`` blends, and their weights.

    Writes ``rows[t], cols[t]`` (index, or -1 for the fill value) and ``weights[t]`` for
    ``t = 0..3`` (top-left, top-right, bottom-left, bottom-right); nearest interpolation uses
    ``t = 0`` only and gives the others weight 0.
    """
    if bilinear:
        y0 = math.floor(ys)
        x0 = math.floor(xs)
        fy = ys - y0
        fx = xs - x0
        r0 = fill_index(int(y0), h, fill_mode)
        r1 = fill_index(int(y0) + 1, h, fill_mode)
        c0 = fill_index(int(x0), w, fill_mode)
        c1 = fill_index(int(x0) + 1, w, fill_mode)
        rows[0], cols[0], weights[0] = r0, c0, (1.0 - fy) * (1.0 - fx)
        rows[1], cols[1], weights[1] = r0, c1, (1.0 - fy) * fx
        rows[2], cols[2], weights[2] = r1, c0, fy * (1.0 - fx)
        rows[3], cols[3], weights[3] = r1, c1, fy * fx
    else:
        rows[0] = fill_index(int(math.floor(ys + 0.5)), h, fill_mode)
        cols[0] = fill_index(int(math.floor(xs + 0.5)), w, fill_mode)
        weights[0] = 1.0
        for t in range(1, 4):
            rows[t], cols[t], weights[t] = -1, -1, 0.0


@by_rows(0, 1, 5)
@njit(nogil=True, cache=True)
def affine_sample(x, transforms, fill_mode, fill_value, bilinear, y):
    """Resample every image at the points its transform maps the output grid to.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    transforms : ndarray (N, 6) float64
        ``[a0, a1, a2, b0, b1, b2]`` per image: output ``(i, j)`` reads input
        ``(ys, xs) = (b0 j + b1 i + b2, a0 j + a1 i + a2)``.
    fill_mode : int
        One of ``FILL_CONSTANT``, ``FILL_NEAREST``, ``FILL_REFLECT``, ``FILL_WRAP``.
    fill_value : float
        What ``'constant'`` mode reads outside the image.
    bilinear : bool
        Bilinear (True) or nearest-neighbour (False) interpolation.
    y : ndarray (N, H, W, C), written (must not be ``x``).
    """
    n_img, h, w, c = x.shape
    for n in range(n_img):
        rows = np.empty(4, np.int64)
        cols = np.empty(4, np.int64)
        weights = np.empty(4)
        a0, a1, a2 = transforms[n, 0], transforms[n, 1], transforms[n, 2]
        b0, b1, b2 = transforms[n, 3], transforms[n, 4], transforms[n, 5]
        for i in range(h):
            for j in range(w):
                _taps(b0 * j + b1 * i + b2, a0 * j + a1 * i + a2, h, w, fill_mode, bilinear, rows, cols, weights)
                for ch in range(c):
                    total = 0.0
                    for t in range(4):
                        if weights[t] == 0.0:
                            continue
                        if rows[t] < 0 or cols[t] < 0:
                            total += weights[t] * fill_value
                        else:
                            total += weights[t] * x[n, rows[t], cols[t], ch]
                    y[n, i, j, ch] = total


@by_rows(0, 1, 4)
@njit(nogil=True, cache=True)
def affine_sample_backward(dy, transforms, fill_mode, bilinear, dx):
    """Adjoint of :func:`affine_sample`: scatter each output gradient to the pixels it read.

    Parameters
    ----------
    dy : ndarray (N, H, W, C)
    transforms, fill_mode, bilinear
        As given to the forward pass.
    dx : ndarray (N, H, W, C), overwritten.

    Notes
    -----
    ``dx[n, r, c] = sum over outputs (i, j) and taps t reading (r, c) of weight_t * dy[n, i, j]``.
    The scatter stays inside image ``n``, which only iteration ``n`` touches.
    """
    n_img, h, w, c = dy.shape
    for n in range(n_img):
        rows = np.empty(4, np.int64)
        cols = np.empty(4, np.int64)
        weights = np.empty(4)
        a0, a1, a2 = transforms[n, 0], transforms[n, 1], transforms[n, 2]
        b0, b1, b2 = transforms[n, 3], transforms[n, 4], transforms[n, 5]
        for i in range(h):
            for j in range(w):
                for ch in range(c):
                    dx[n, i, j, ch] = 0
        for i in range(h):
            for j in range(w):
                _taps(b0 * j + b1 * i + b2, a0 * j + a1 * i + a2, h, w, fill_mode, bilinear, rows, cols, weights)
                for t in range(4):
                    if weights[t] == 0.0 or rows[t] < 0 or cols[t] < 0:
                        continue
                    for ch in range(c):
                        dx[n, rows[t], cols[t], ch] += weights[t] * dy[n, i, j, ch]


# --- contrast -------------------------------------------------------------------------------------

@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def contrast_forward(x, factors, y):
    """``y = (x - m) * f + m`` with ``m`` each image's per-channel mean and ``f`` its factor.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    factors : ndarray (N,) float64
    y : ndarray (N, H, W, C), written (may be ``x``).
    """
    n_img, h, w, c = x.shape
    for n in range(n_img):
        mean = np.zeros(c)
        for i in range(h):
            for j in range(w):
                for ch in range(c):
                    mean[ch] += x[n, i, j, ch]
        mean /= h * w
        f = factors[n]
        for i in range(h):
            for j in range(w):
                for ch in range(c):
                    y[n, i, j, ch] = f * x[n, i, j, ch] + (1.0 - f) * mean[ch]


def contrast_backward(dy, factors, dx):
    """Gradient of :func:`contrast_forward`: ``dx = f dy + (1 - f) mean(dy)`` per image and channel.

    The second term is the path through the mean: every pixel moved ``m`` by ``1/(H*W)``, and ``m``
    reached every output with weight ``1 - f``.

    The map ``x -> f x + (1 - f) mean(x)`` is symmetric (the averaging matrix is), so it is its own
    transpose and the backward pass is the forward pass applied to ``dy``.

    dy, dx : ndarray (N, H, W, C) (``dx`` written, may be ``dy``); factors : ndarray (N,)
    """
    contrast_forward(dy, factors, dx)
