"""Pooling kernels, NHWC, each beside its gradient.

Max pooling keeps, for every output, the flat index ``h * W + w`` of the input that won, so that the
backward pass sends each output's gradient to that input only: ``dx[winner] += dy``. Ties go to the first element in row-major window
order. Windows that reach into ``'same'`` padding ignore the padded positions (TensorFlow's rule):
for max pooling they never win, for average pooling they are not counted in the divisor.

Every kernel is spread over threads by images (``_util.by_rows``): within one image, overlapping
windows (stride smaller than the pool) may send gradient to the same input, so that part stays
sequential and race-free.
"""
import numpy as np
from numba import njit

from ._util import by_rows


@by_rows(0, 7, 8)
@njit(nogil=True, cache=True)
def maxpool_forward(x, ph, pw, sh, sw, pt, pl, y, argmax):
    """
    x : ndarray (N, H, W, C)
    ph, pw, sh, sw : pool size and strides; pt, pl : leading padding
    y : ndarray (N, OH, OW, C), written; argmax : ndarray (N, OH, OW, C) int32, written
    """
    n_img, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for t in range(n_img * oh):
        n = t // oh
        i = t % oh
        for j in range(ow):
            first = True
            for a in range(ph):
                hi = i * sh - pt + a
                if hi < 0 or hi >= h:
                    continue
                for b in range(pw):
                    wi = j * sw - pl + b
                    if wi < 0 or wi >= w:
                        continue
                    idx = hi * w + wi
                    if first:
                        for ch in range(c):
                            y[n, i, j, ch] = x[n, hi, wi, ch]
                            argmax[n, i, j, ch] = idx
                        first = False
                    else:
                        # unconditional stores of selected values: this loop vectorises, one with
                        # conditional stores does not
                        for ch in range(c):
                            v = x[n, hi, wi, ch]
                            best = y[n, i, j, ch]
                            y[n, i, j, ch] = v if v > best else best
                            argmax[n, i, j, ch] = idx if v > best else argmax[n, i, j, ch]


@by_rows(0, 1, 8)
@njit(nogil=True, cache=True)
def maxpool_backward(dy, argmax, ph, pw, sh, sw, pt, pl, dx):
    """Each window's gradient goes to the input that won it.

    dy, argmax : (N, OH, OW, C); dx : (N, H, W, C), overwritten.
    Walks each window (as the forward did) and adds ``dy`` where ``argmax`` names that position:
    a compare-and-select over the channels, which vectorises, where scattering to ``argmax``
    would need an integer division per element and could not.
    """
    n_img, oh, ow, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    for n in range(n_img):
        dx[n] = 0
        for i in range(oh):
            for j in range(ow):
                for a in range(ph):
                    hi = i * sh - pt + a
                    if hi < 0 or hi >= h:
                        continue
                    for b in range(pw):
                        wi = j * sw - pl + b
                        if wi < 0 or wi >= w:
                            continue
                        idx = hi * w + wi
                        for ch in range(c):
                            g = dy[n, i, j, ch] if argmax[n, i, j, ch] == idx else np.float32(0)
                            dx[n, hi, wi, ch] += g


@by_rows(0, 7)
@njit(nogil=True, cache=True)
def avgpool_forward(x, ph, pw, sh, sw, pt, pl, y):
    """Mean over the window's positions that lie inside the image."""
    n_img, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for t in range(n_img * oh):
        n = t // oh
        i = t % oh
        for j in range(ow):
            for ch in range(c):
                y[n, i, j, ch] = 0
            count = 0
            for a in range(ph):
                hi = i * sh - pt + a
                if hi < 0 or hi >= h:
                    continue
                for b in range(pw):
                    wi = j * sw - pl + b
                    if wi < 0 or wi >= w:
                        continue
                    count += 1
                    for ch in range(c):
                        y[n, i, j, ch] += x[n, hi, wi, ch]
            inv = 1.0 / count
            for ch in range(c):
                y[n, i, j, ch] *= inv


@by_rows(0, 7)
@njit(nogil=True, cache=True)
def avgpool_backward(dy, ph, pw, sh, sw, pt, pl, dx):
    """Each window hands ``dy / count`` to every in-image position it covered."""
    n_img, h, w, c = dx.shape
    oh, ow = dy.shape[1], dy.shape[2]
    for n in range(n_img):
        dx[n] = 0
        for i in range(oh):
            h0 = max(i * sh - pt, 0)
            h1 = min(i * sh - pt + ph, h)
            for j in range(ow):
                w0 = max(j * sw - pl, 0)
                w1 = min(j * sw - pl + pw, w)
                inv = 1.0 / ((h1 - h0) * (w1 - w0))
                for hi in range(h0, h1):
                    for wi in range(w0, w1):
                        for ch in range(c):
                            dx[n, hi, wi, ch] += dy[n, i, j, ch] * inv


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def global_avgpool_forward(x, y):
    """x : (N, H, W, C) -> y : (N, C), the mean over H and W."""
    n_img, h, w, c = x.shape
    inv = 1.0 / (h * w)
    for n in range(n_img):
        for ch in range(c):
            y[n, ch] = 0
        for hi in range(h):
            for wi in range(w):
                for ch in range(c):
                    y[n, ch] += x[n, hi, wi, ch]
        for ch in range(c):
            y[n, ch] *= inv


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def global_avgpool_backward(dy, dx):
    """dy : (N, C) -> dx : (N, H, W, C) = dy / (H*W) at every position."""
    n_img, h, w, c = dx.shape
    inv = 1.0 / (h * w)
    for n in range(n_img):
        for hi in range(h):
            for wi in range(w):
                for ch in range(c):
                    dx[n, hi, wi, ch] = dy[n, ch] * inv


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def global_maxpool_forward(x, y, argmax):
    """x : (N, H, W, C) -> y : (N, C), the maximum over H and W; ``argmax[n, c]`` is the winner's
    flat position ``h * W + w`` (the first one on ties), for the backward pass."""
    n_img, h, w, c = x.shape
    for n in range(n_img):
        for ch in range(c):
            y[n, ch] = x[n, 0, 0, ch]
            argmax[n, ch] = 0
        for hi in range(h):
            for wi in range(w):
                for ch in range(c):
                    v = x[n, hi, wi, ch]
                    better = v > y[n, ch]
                    y[n, ch] = v if better else y[n, ch]
                    argmax[n, ch] = hi * w + wi if better else argmax[n, ch]


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def global_maxpool_backward(dy, argmax, dx):
    """dy : (N, C) -> dx : (N, H, W, C): each window's gradient goes to its winner, zeros elsewhere."""
    n_img, h, w, c = dx.shape
    for n in range(n_img):
        for hi in range(h):
            for wi in range(w):
                for ch in range(c):
                    dx[n, hi, wi, ch] = dy[n, ch] if argmax[n, ch] == hi * w + wi else 0
