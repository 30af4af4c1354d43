"""3x3 convolution with Winograd's F(4x4, 3x3), for inference: 4x fewer multiplications.

The larger sibling of ``kernels/winograd.py`` (read that first). Each 4x4 block of outputs comes
from a 6x6 input tile; done directly that costs 4*4*9 = 144 multiplications per channel pair,
Winograd's algorithm needs 36 (F(2x2, 3x3): 36 for 2x2 outputs, 16 needed)::

    y_tile (4x4) = A^T [ (G g G^T)  *  (B^T d B) ] A

with the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, 2016)::

          [4  0 -5  0  1  0]          [ 1/4    0     0  ]
          [0 -4 -4  1  1  0]          [-1/6  -1/6  -1/6 ]           [1  1  1  1  1  0]
    B^T = [0  4 -4 -1  1  0]      G = [-1/6   1/6  -1/6 ]     A^T = [0  1 -1  2 -2  0]
          [0 -2 -1  2  1  0]          [ 1/24  1/12  1/6 ]           [0  1  1  4  4  0]
          [0  2 -1 -2  1  0]          [ 1/24 -1/12  1/6 ]           [0  1 -1  8 -8  1]
          [0  4  0 -5  0  1]          [  0     0     1  ]

As there, the element-wise product summed over input channels becomes matrix products, 36 of them
(one per position of the 6x6 transformed tile): V (36, tiles, C) @ U (36, C, F) = M (36, tiles, F).

Why inference only: the price of fewer multiplications is rounding. The transforms multiply by up
to 8 and 25 (B^T's 4s and 5s, twice) and divide by 6 and 24, so float32 results carry an error
around 1e-6 to 1e-5 of the output scale, against about 1e-7 for F(2x2) and im2col (``tests/
test_conv_impl.py`` measures it). Enough for predictions; training keeps the exact paths, and
``model.fast_inference`` (off by default) decides whether ``predict`` uses this one.

Tiles step by 4 and are 6 wide (they overlap by 2); pixels outside the image are the padding.
The transforms are memory-bound like F(2x2)'s, but move 44% less data per output: V and M hold
36 values per 16 outputs instead of 16 per 4.
"""
import numpy as np
from numba import njit

from .winograd import affine_rows, copy_tile

# Constants are float32, so that float32 data are not promoted to float64.
_F = np.float32
_SIXTH = 1.0 / 6.0  # G's entries are multiples of 1/6 (1/24 = 1/4 of it): multiplied, not divided


def tile_grid(out_h, out_w):
    """Number of 4x4 output tiles along each axis: ``(ceil(OH/4), ceil(OW/4))``."""
    return (out_h + 3) // 4, (out_w + 3) // 4


@njit(nogil=True, cache=True)
def kernel_transform(w, u):
    """``U = G g G^T`` for every (input channel, filter) pair (in float64, then stored).

    w : ndarray (3, 3, C, F) (Keras layout); u : ndarray (36, C, F), written (plane ``6*xi + nu``).
    Loops over filters innermost, contiguous on both sides, as in ``winograd.kernel_transform``.
    """
    _, _, c, f = w.shape
    t = np.empty((6, 3, f))
    for ch in range(c):
        for b in range(3):  # t = G g  (6 x 3)
            for k in range(f):
                g0 = np.float64(w[0, b, ch, k])
                g1 = np.float64(w[1, b, ch, k])
                g2 = np.float64(w[2, b, ch, k])
                t[0, b, k] = 0.25 * g0
                t[1, b, k] = _SIXTH * -(g0 + g1 + g2)
                t[2, b, k] = _SIXTH * -(g0 - g1 + g2)
                t[3, b, k] = 0.25 * _SIXTH * g0 + 0.5 * _SIXTH * g1 + _SIXTH * g2
                t[4, b, k] = 0.25 * _SIXTH * g0 - 0.5 * _SIXTH * g1 + _SIXTH * g2
                t[5, b, k] = g2
        for xi in range(6):  # U = t G^T  (6 x 6)
            for k in range(f):
                g0 = t[xi, 0, k]
                g1 = t[xi, 1, k]
                g2 = t[xi, 2, k]
                u[6 * xi, ch, k] = 0.25 * g0
                u[6 * xi + 1, ch, k] = _SIXTH * -(g0 + g1 + g2)
                u[6 * xi + 2, ch, k] = _SIXTH * -(g0 - g1 + g2)
                u[6 * xi + 3, ch, k] = 0.25 * _SIXTH * g0 + 0.5 * _SIXTH * g1 + _SIXTH * g2
                u[6 * xi + 4, ch, k] = 0.25 * _SIXTH * g0 - 0.5 * _SIXTH * g1 + _SIXTH * g2
                u[6 * xi + 5, ch, k] = g2


@njit(inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """``B^T @ (d0 .. d5)``: B^T's six rows, written out (its zeros skipped)."""
    return (_F(4) * d0 - _F(5) * d2 + d4,
            d3 + d4 - _F(4) * (d1 + d2),
            d4 - d3 + _F(4) * (d1 - d2),
            d4 - d2 + _F(2) * (d3 - d1),
            d4 - d2 + _F(2) * (d1 - d3),
            _F(4) * d1 - _F(5) * d3 + d5)


@njit(inline="always")
def _input_tile(src, h0, w0, v, row, tmp):
    """``B^T d B`` of the 6x6 tile of ``src`` (H, W, C) at ``(h0, w0)``, all channels, into ``v[:, row]``.

    Two passes through ``tmp`` (6, 6, C): column ``q`` of ``B^T d`` (``_bt`` of the tile's column
    q), then row ``xi`` of ``(B^T d) B`` (``_bt`` of row xi of tmp, since ``B = (B^T)^T``). Each
    loop over the channels has six loads and six stores: few enough memory streams for LLVM to
    vectorise it (one loop over the whole tile is not vectorised).
    """
    for q in range(6):
        for ch in range(src.shape[2]):
            r = _bt(src[h0, w0 + q, ch], src[h0 + 1, w0 + q, ch], src[h0 + 2, w0 + q, ch],
                    src[h0 + 3, w0 + q, ch], src[h0 + 4, w0 + q, ch], src[h0 + 5, w0 + q, ch])
            tmp[0, q, ch] = r[0]
            tmp[1, q, ch] = r[1]
            tmp[2, q, ch] = r[2]
            tmp[3, q, ch] = r[3]
            tmp[4, q, ch] = r[4]
            tmp[5, q, ch] = r[5]
    for xi in range(6):
        k = 6 * xi
        for ch in range(src.shape[2]):
            r = _bt(tmp[xi, 0, ch], tmp[xi, 1, ch], tmp[xi, 2, ch], tmp[xi, 3, ch], tmp[xi, 4, ch], tmp[xi, 5, ch])
            v[k, row, ch] = r[0]
            v[k + 1, row, ch] = r[1]
            v[k + 2, row, ch] = r[2]
            v[k + 3, row, ch] = r[3]
            v[k + 4, row, ch] = r[4]
            v[k + 5, row, ch] = r[5]


@njit(nogil=True, cache=True)
def input_transform(x, ph, pw, th, tw, v):
    """``V = B^T d B`` for every 6x6 input tile ``d`` and channel.

    x : ndarray (N, H, W, C); ph, pw : leading zero padding (tile (ti, tj) starts at input pixel
    ``(4*ti - ph, 4*tj - pw)``); th, tw : tiles per image (:func:`tile_grid`);
    v : ndarray (36, R, C) with R >= N*th*tw, written; row ``(n*th + ti)*tw + tj``.
    Tiles that reach outside the image are first copied into a zero-filled 6x6 patch.
    """
    n_img, h, w, c = x.shape
    patch = np.empty((6, 6, c), dtype=x.dtype)
    tmp = np.empty((6, 6, c), dtype=x.dtype)
    for t in range(n_img * th):
        n = t // th
        h0 = 4 * (t % th) - ph
        image = x[n]
        for tj in range(tw):
            w0 = 4 * tj - pw
            src, hs, ws = image, h0, w0
            if not (h0 >= 0 and h0 + 6 <= h and w0 >= 0 and w0 + 6 <= w):
                copy_tile(x, n, h0, w0, patch)
                src, hs, ws = patch, 0, 0
            _input_tile(src, hs, ws, v, t * tw + tj, tmp)  # one call site: the tile's code is compiled once


@njit(inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """``A^T @ (m0 .. m5)``: A^T's four rows, written out."""
    return (m0 + m1 + m2 + m3 + m4,
            m1 - m2 + _F(2) * (m3 - m4),
            m1 + m2 + _F(4) * (m3 + m4),
            m1 - m2 + _F(8) * (m3 - m4) + m5)


@njit(inline="always")
def _output_tile(m, row, bias, relu, dst, tmp):
    """``A^T M A`` of one tile plus bias (then ReLU if ``relu``), all filters, into ``dst`` (4, 4, F).

    Two passes, as :func:`_input_tile`: column ``nu`` of ``A^T M`` into ``tmp`` (4, 6, F), then row
    ``i`` of ``(A^T M) A``.
    """
    zero = _F(0)
    f = dst.shape[2]
    for nu in range(6):
        for k in range(f):
            r = _at(m[nu, row, k], m[6 + nu, row, k], m[12 + nu, row, k], m[18 + nu, row, k],
                    m[24 + nu, row, k], m[30 + nu, row, k])
            tmp[0, nu, k] = r[0]
            tmp[1, nu, k] = r[1]
            tmp[2, nu, k] = r[2]
            tmp[3, nu, k] = r[3]
    for i in range(4):
        for k in range(f):
            r = _at(tmp[i, 0, k], tmp[i, 1, k], tmp[i, 2, k], tmp[i, 3, k], tmp[i, 4, k], tmp[i, 5, k])
            b = bias[k]
            y0 = r[0] + b
            y1 = r[1] + b
            y2 = r[2] + b
            y3 = r[3] + b
            if relu:
                y0 = max(y0, zero)
                y1 = max(y1, zero)
                y2 = max(y2, zero)
                y3 = max(y3, zero)
            dst[i, 0, k] = y0
            dst[i, 1, k] = y1
            dst[i, 2, k] = y2
            dst[i, 3, k] = y3


@njit(nogil=True, cache=True)
def output_transform(m, th, tw, bias, relu, y, scale, shift):
    """``y = A^T M A + bias`` (then ReLU if ``relu``) for every tile and filter; outputs past the
    edge are dropped.

    m : ndarray (36, R, F); bias : ndarray (F,) (zeros for none); y : ndarray (N, OH, OW, F), written;
    scale, shift : (F,) or empty, as in ``winograd.output_transform``.
    """
    n_img, oh, ow, f = y.shape
    patch = np.empty((4, 4, f), dtype=y.dtype)
    tmp = np.empty((4, 6, f), dtype=y.dtype)
    for t in range(n_img * th):
        n = t // th
        oi = 4 * (t % th)
        for tj in range(tw):
            oj = 4 * tj
            _output_tile(m, t * tw + tj, bias, relu, patch, tmp)
            for i in range(min(4, oh - oi)):
                for j in range(min(4, ow - oj)):
                    for k in range(f):
                        y[n, oi + i, oj + j, k] = patch[i, j, k]
        affine_rows(y, n, oi, oi + 4, scale, shift)


@njit(nogil=True, cache=True)
def output_transform_pool(m, th, tw, bias, relu, p, scale, shift):
    """:func:`output_transform` followed by 2x2/stride-2 max pooling: each 4x4 tile holds four whole
    pooling windows (the layer's output has even sides). p : ndarray (N, OH/2, OW/2, F), written.
    Inference only, so no record of the winners is kept."""
    n_img, ph, pw, f = p.shape
    patch = np.empty((4, 4, f), dtype=p.dtype)
    tmp = np.empty((4, 6, f), dtype=p.dtype)
    for t in range(n_img * th):
        n = t // th
        pi = 2 * (t % th)
        for tj in range(tw):
            pj = 2 * tj
            _output_tile(m, t * tw + tj, bias, relu, patch, tmp)
            for i in range(min(2, ph - pi)):
                for j in range(min(2, pw - pj)):
                    for k in range(f):
                        p[n, pi + i, pj + j, k] = max(max(patch[2 * i, 2 * j, k], patch[2 * i, 2 * j + 1, k]),
                                                      max(patch[2 * i + 1, 2 * j, k], patch[2 * i + 1, 2 * j + 1, k]))
        affine_rows(p, n, pi, pi + 2, scale, shift)
