"""3x3 convolution with Winograd's minimal filtering F(2x2, 3x3): 2.25x fewer multiplications.

A 3x3 stride-1 convolution computes each 2x2 block of outputs from a 4x4 block ("tile") of inputs.
Done directly that costs 2*2*9 = 36 multiplications per channel pair; Winograd's algorithm
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) needs 16:

    y_tile (2x2) = A^T [ (G g G^T)  *  (B^T d B) ] A          (* = element-wise)

with d the 4x4 input tile, g the 3x3 kernel and the small constant matrices

          [1  0 -1  0]           [1    0    0 ]
    B^T = [0  1  1  0]      G =  [1/2  1/2  1/2]      A^T = [1  1  1  0]
          [0 -1  1  0]           [1/2 -1/2  1/2]            [0  1 -1 -1]
          [0  1  0 -1]           [0    0    1 ]

Summed over input channels, the element-wise product becomes 16 independent matrix products, one per
position (xi, nu) of the 4x4 transformed tile:

    V[k] = B^T d B   for every tile and input channel     (16, tiles, C)   "input transform"
    U[k] = G g G^T   for every channel pair               (16, C, F)       "kernel transform"
    M[k] = V[k] @ U[k]                                    (16, tiles, F)   16 BLAS products
    y    = A^T M A   for every tile and filter                             "output transform"

The layout puts the tile index in the rows and channels in the columns, so each product is an
ordinary row-major GEMM and every transform reads and writes whole channel rows.

Backward is the exact adjoint of each step (so the gradient is the gradient of this algorithm, which
equals the convolution's up to rounding):

    dM[k] = A dY A^T            (output transform, transposed)
    dU[k] = V[k]^T @ dM[k]   ->  dW = G^T dU G
    dV[k] = dM[k] @ U[k]^T   ->  dx = B dV B^T, summed where neighbouring tiles overlap

Tiles step by 2 and are 4 wide, so input tiles overlap by 2 pixels; outputs do not overlap. Pixels
of a tile outside the image are the zero padding ('same') or simply unused ('valid', odd sizes).
"""
import numpy as np
from numba import njit


def tile_grid(out_h, out_w):
    """Number of 2x2 output tiles along each axis: ``(ceil(OH/2), ceil(OW/2))``."""
    return (out_h + 1) // 2, (out_w + 1) // 2


@njit(nogil=True, cache=True)
def kernel_transform(w, u):
    """``U = G g G^T`` for every (input channel, filter) pair.

    w : ndarray (3, 3, C, F) (Keras layout); u : ndarray (16, C, F), written.
    The loops over filters are innermost: contiguous on both sides, so they vectorise. Serial: it
    takes under a millisecond for the largest layer, and a parallel version took seconds to compile.
    """
    _, _, c, f = w.shape
    for ch in range(c):
        t = np.empty((4, 3, f), dtype=w.dtype)
        for b in range(3):  # rows: t = G g  (4 x 3)
            for k in range(f):
                g0 = w[0, b, ch, k]
                g1 = w[1, b, ch, k]
                g2 = w[2, b, ch, k]
                t[0, b, k] = g0
                t[1, b, k] = 0.5 * (g0 + g1 + g2)
                t[2, b, k] = 0.5 * (g0 - g1 + g2)
                t[3, b, k] = g2
        for xi in range(4):  # columns: U = t G^T  (4 x 4)
            for k in range(f):
                g0 = t[xi, 0, k]
                g1 = t[xi, 1, k]
                g2 = t[xi, 2, k]
                u[xi * 4 + 0, ch, k] = g0
                u[xi * 4 + 1, ch, k] = 0.5 * (g0 + g1 + g2)
                u[xi * 4 + 2, ch, k] = 0.5 * (g0 - g1 + g2)
                u[xi * 4 + 3, ch, k] = g2


@njit(nogil=True, cache=True)
def kernel_transform_backward(du, dw):
    """Adjoint of :func:`kernel_transform`: ``dW = G^T dU G`` (serial, as the forward).

    du : ndarray (16, C, F); dw : ndarray (3, 3, C, F), written.
    """
    _, c, f = du.shape
    for ch in range(c):
        t = np.empty((4, 3, f), dtype=dw.dtype)
        for xi in range(4):  # columns: t = dU G
            for k in range(f):
                d0 = du[xi * 4 + 0, ch, k]
                d1 = du[xi * 4 + 1, ch, k]
                d2 = du[xi * 4 + 2, ch, k]
                d3 = du[xi * 4 + 3, ch, k]
                t[xi, 0, k] = d0 + 0.5 * (d1 + d2)
                t[xi, 1, k] = 0.5 * (d1 - d2)
                t[xi, 2, k] = 0.5 * (d1 + d2) + d3
        for b in range(3):  # rows: dW = G^T t
            for k in range(f):
                d0 = t[0, b, k]
                d1 = t[1, b, k]
                d2 = t[2, b, k]
                d3 = t[3, b, k]
                dw[0, b, ch, k] = d0 + 0.5 * (d1 + d2)
                dw[1, b, ch, k] = 0.5 * (d1 - d2)
                dw[2, b, ch, k] = 0.5 * (d1 + d2) + d3


@njit(inline="always")
def _input_tile_row(src, h0, w0, pa, pb, sign, v, k0, row):
    """One row ``xi`` of ``V = B^T d B`` for the 4x4 tile of ``src`` (H, W, C) at ``(h0, w0)``.

    Row ``xi`` of ``B^T d`` is ``d[pa] + sign * d[pb]`` (see ``B^T``); multiplying it by ``B`` gives
    ``V[xi, 0..3]``, written to ``v[k0 .. k0+3, row]``. One row at a time keeps the loop over channels
    small enough (8 loads, 4 stores) for LLVM to vectorise it; the whole 4x4 tile in one loop is not.
    """
    for ch in range(src.shape[2]):
        r0 = src[h0 + pa, w0, ch] + sign * src[h0 + pb, w0, ch]
        r1 = src[h0 + pa, w0 + 1, ch] + sign * src[h0 + pb, w0 + 1, ch]
        r2 = src[h0 + pa, w0 + 2, ch] + sign * src[h0 + pb, w0 + 2, ch]
        r3 = src[h0 + pa, w0 + 3, ch] + sign * src[h0 + pb, w0 + 3, ch]
        v[k0, row, ch] = r0 - r2
        v[k0 + 1, row, ch] = r1 + r2
        v[k0 + 2, row, ch] = r2 - r1
        v[k0 + 3, row, ch] = r1 - r3


@njit(inline="always")
def _input_tile(src, h0, w0, v, row):
    """``B^T d B`` of the 4x4 tile of ``src`` (H, W, C) at ``(h0, w0)``, all channels, into ``v[:, row]``.

    The rows of ``B^T`` are (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1).
    """
    plus = np.float32(1)  # float32, so that float32 data are not promoted to float64
    minus = np.float32(-1)
    for xi in range(4):  # a loop, not four calls: the row's code is compiled once
        _input_tile_row(src, h0, w0, (0, 1, 2, 1)[xi], (2, 2, 1, 3)[xi], (minus, plus, minus, minus)[xi], v,
                        4 * xi, row)


@njit(inline="always")
def copy_tile(x, n, h0, w0, patch):
    """``patch`` (S, S, C) = the S x S tile of image ``n`` of ``x`` at ``(h0, w0)``, zeros where it
    reaches outside the image: how an input tile at the edge meets its padding (here and in
    ``winograd4.py``)."""
    _, h, w, c = x.shape
    for p in range(patch.shape[0]):
        for q in range(patch.shape[1]):
            hi = h0 + p
            wi = w0 + q
            inside = hi >= 0 and hi < h and wi >= 0 and wi < w
            for ch in range(c):
                patch[p, q, ch] = x[n, hi, wi, ch] if inside else 0


@njit(inline="always")
def _input_transform_row(x, ph, pw, th, tw, v, t, patch):
    """Input transform of tile row ``t`` (image ``t // th``, tile row ``t % th``).

    Tiles inside the image are read in place; tiles that reach into the padding are first copied
    into the zero-filled 4x4 ``patch`` (4, 4, C).
    """
    _, h, w, _ = x.shape
    n = t // th
    h0 = 2 * (t % th) - ph
    image = x[n]
    for tj in range(tw):
        w0 = 2 * tj - pw
        src, hs, ws = image, h0, w0
        if not (h0 >= 0 and h0 + 4 <= h and w0 >= 0 and w0 + 4 <= w):
            copy_tile(x, n, h0, w0, patch)
            src, hs, ws = patch, 0, 0
        # one call site, so the transform is compiled (inlined) once
        _input_tile(src, hs, ws, v, t * tw + tj)


@njit(nogil=True, cache=True)
def input_transform(x, ph, pw, th, tw, v):
    """``V = B^T d B`` for every input tile ``d`` and channel.

    Parameters
    ----------
    x : ndarray (N, H, W, C)
    ph, pw : int
        Leading zero padding; tile (ti, tj) starts at input pixel ``(2*ti - ph, 2*tj - pw)``.
    th, tw : int
        Tiles per image along each axis (:func:`tile_grid`).
    v : ndarray (16, R, C) with R >= N*th*tw, written; row ``(n*th + ti)*tw + tj``.
    """
    patch = np.empty((4, 4, x.shape[3]), dtype=x.dtype)
    for t in range(x.shape[0] * th):
        _input_transform_row(x, ph, pw, th, tw, v, t, patch)


@njit(inline="always")
def _input_tile_backward(dv, row, dst, h0, w0):
    """Adjoint of :func:`_input_tile`: adds ``dd = B dV B^T`` (all channels) to the 4x4 tile of
    ``dst`` (H, W, C) at ``(h0, w0)``.

    Row p of ``B dV`` combines the rows xi of ``dV`` with column p of ``B^T``: p=0: +dV0;
    p=1: dV1 - dV2 + dV3; p=2: -dV0 + dV1 + dV2; p=3: -dV3. Each such row ``w`` then becomes the
    four pixels ``w B^T`` = (w0, w1 - w2 + w3, -w0 + w1 + w2, -w3). One loop per tile row keeps
    each loop small enough to vectorise.
    """
    c = dst.shape[2]
    for ch in range(c):  # p = 0
        w0_ = dv[0, row, ch]
        w1 = dv[1, row, ch]
        w2 = dv[2, row, ch]
        w3 = dv[3, row, ch]
        dst[h0, w0, ch] += w0_
        dst[h0, w0 + 1, ch] += w1 - w2 + w3
        dst[h0, w0 + 2, ch] += w1 + w2 - w0_
        dst[h0, w0 + 3, ch] -= w3
    for ch in range(c):  # p = 1
        w0_ = dv[4, row, ch] - dv[8, row, ch] + dv[12, row, ch]
        w1 = dv[5, row, ch] - dv[9, row, ch] + dv[13, row, ch]
        w2 = dv[6, row, ch] - dv[10, row, ch] + dv[14, row, ch]
        w3 = dv[7, row, ch] - dv[11, row, ch] + dv[15, row, ch]
        dst[h0 + 1, w0, ch] += w0_
        dst[h0 + 1, w0 + 1, ch] += w1 - w2 + w3
        dst[h0 + 1, w0 + 2, ch] += w1 + w2 - w0_
        dst[h0 + 1, w0 + 3, ch] -= w3
    for ch in range(c):  # p = 2
        w0_ = dv[4, row, ch] + dv[8, row, ch] - dv[0, row, ch]
        w1 = dv[5, row, ch] + dv[9, row, ch] - dv[1, row, ch]
        w2 = dv[6, row, ch] + dv[10, row, ch] - dv[2, row, ch]
        w3 = dv[7, row, ch] + dv[11, row, ch] - dv[3, row, ch]
        dst[h0 + 2, w0, ch] += w0_
        dst[h0 + 2, w0 + 1, ch] += w1 - w2 + w3
        dst[h0 + 2, w0 + 2, ch] += w1 + w2 - w0_
        dst[h0 + 2, w0 + 3, ch] -= w3
    for ch in range(c):  # p = 3
        w0_ = dv[12, row, ch]
        w1 = dv[13, row, ch]
        w2 = dv[14, row, ch]
        w3 = dv[15, row, ch]
        dst[h0 + 3, w0, ch] -= w0_
        dst[h0 + 3, w0 + 1, ch] -= w1 - w2 + w3
        dst[h0 + 3, w0 + 2, ch] -= w1 + w2 - w0_
        dst[h0 + 3, w0 + 3, ch] += w3


@njit(inline="always")
def _input_transform_backward_row(dv, ph, pw, th, tw, dx, s, parity, patch):
    """Input-transform adjoint of the ``s``-th tile row of the given ``parity`` (0: even rows)."""
    _, h, w, c = dx.shape
    half = (th + 1) // 2
    n = s // half
    ti = 2 * (s % half) + parity
    if ti >= th:
        return
    h0 = 2 * ti - ph
    image = dx[n]
    for tj in range(tw):
        w0 = 2 * tj - pw
        interior = h0 >= 0 and h0 + 4 <= h and w0 >= 0 and w0 + 4 <= w
        dst, hs, ws = image, h0, w0
        if not interior:
            patch[...] = 0
            dst, hs, ws = patch, 0, 0
        _input_tile_backward(dv, (n * th + ti) * tw + tj, dst, hs, ws)  # one call site: inlined once
        if not interior:
            for p in range(max(0, -h0), min(4, h - h0)):
                for q in range(max(0, -w0), min(4, w - w0)):
                    for ch in range(c):
                        dx[n, h0 + p, w0 + q, ch] += patch[p, q, ch]


@njit(nogil=True, cache=True)
def input_transform_backward(dv, ph, pw, th, tw, dx):
    """Adjoint of :func:`input_transform`: ``dd = B dV B^T`` per tile, summed into ``dx``.

    Neighbouring tiles overlap by two rows/columns. The even tile rows are added first, then the odd
    ones (rows of one parity never overlap each other), along a row in order, so every pixel sums its
    contributions in one fixed order. Tiles that reach into the padding are added to a zeroed 4x4
    patch first, and only its inside part is kept.

    dv : ndarray (16, R, C) with R >= N*th*tw; dx : ndarray (N, H, W, C), overwritten.
    """
    n_img, h, w, c = dx.shape
    dx[...] = 0
    patch = np.empty((4, 4, c), dtype=dx.dtype)
    half = (th + 1) // 2
    for parity in range(2):
        for s in range(n_img * half):
            _input_transform_backward_row(dv, ph, pw, th, tw, dx, s, parity, patch)


@njit(inline="always")
def _finish(v, b, relu):
    """The layer's epilogue, fused into the output transform: ``v + b``, then ReLU if asked."""
    v = v + b
    if relu and v < 0:
        return np.float32(0)  # float32, so that float32 data are not promoted to float64
    return v


@njit(inline="always")
def _output_tile(m, row, bias, relu, dst, oi, oj):
    """``A^T M A`` of one tile, all filters, plus bias and ReLU, into the 2x2 block of ``dst``
    (OH, OW, F) at ``(oi, oj)``.

    Row 0 of ``A^T M`` is M0 + M1 + M2, row 1 is M1 - M2 - M3 (M_xi = row xi of the 4x4 tile);
    each row ``s`` then gives the two outputs ``(s0 + s1 + s2, s1 - s2 - s3)``.
    """
    f = dst.shape[2]
    for k in range(f):
        s0 = m[0, row, k] + m[4, row, k] + m[8, row, k]
        s1 = m[1, row, k] + m[5, row, k] + m[9, row, k]
        s2 = m[2, row, k] + m[6, row, k] + m[10, row, k]
        s3 = m[3, row, k] + m[7, row, k] + m[11, row, k]
        dst[oi, oj, k] = _finish(s0 + s1 + s2, bias[k], relu)
        dst[oi, oj + 1, k] = _finish(s1 - s2 - s3, bias[k], relu)
    for k in range(f):
        s0 = m[4, row, k] - m[8, row, k] - m[12, row, k]
        s1 = m[5, row, k] - m[9, row, k] - m[13, row, k]
        s2 = m[6, row, k] - m[10, row, k] - m[14, row, k]
        s3 = m[7, row, k] - m[11, row, k] - m[15, row, k]
        dst[oi + 1, oj, k] = _finish(s0 + s1 + s2, bias[k], relu)
        dst[oi + 1, oj + 1, k] = _finish(s1 - s2 - s3, bias[k], relu)


@njit(inline="always")
def _output_transform_row(m, th, tw, bias, relu, y, t, patch):
    """Output transform of tile row ``t``; edge tiles go through the 2x2 ``patch`` (2, 2, F)."""
    _, oh, ow, f = y.shape
    n = t // th
    oi = 2 * (t % th)
    image = y[n]
    for tj in range(tw):
        oj = 2 * tj
        interior = oi + 2 <= oh and oj + 2 <= ow
        dst, i0, j0 = (image, oi, oj) if interior else (patch, 0, 0)
        _output_tile(m, t * tw + tj, bias, relu, dst, i0, j0)  # one call site: inlined once
        if not interior:
            for i in range(min(2, oh - oi)):
                for j in range(min(2, ow - oj)):
                    for k in range(f):
                        y[n, oi + i, oj + j, k] = patch[i, j, k]


@njit(nogil=True, cache=True)
def affine_rows(y, n, r0, r1, scale, shift):
    """``y[n, r0:r1] = y[n, r0:r1] * scale + shift`` per channel, when ``scale`` is not empty: an
    inference-time batch normalization after the layer, folded into its output pass while the rows
    are still in cache (``tinycnn/graph.py``). The same float32 arithmetic as the layer's own. A
    function of its own, not inlined, so that the four output passes share one compiled copy."""
    if scale.shape[0] == 0:
        return
    for r in range(r0, min(r1, y.shape[1])):
        for j in range(y.shape[2]):
            for k in range(y.shape[3]):
                y[n, r, j, k] = y[n, r, j, k] * scale[k] + shift[k]


@njit(nogil=True, cache=True)
def output_transform(m, th, tw, bias, relu, y, scale, shift):
    """``y = A^T M A + bias`` (then ReLU if ``relu``) for every tile and filter; outputs past an odd
    edge are dropped.

    m : ndarray (16, R, F) with R >= N*th*tw; bias : ndarray (F,) (zeros for none); relu : bool;
    y : ndarray (N, OH, OW, F), written; scale, shift : ndarray (F,), or empty: :func:`affine_rows`.
    """
    patch = np.empty((2, 2, y.shape[3]), dtype=y.dtype)
    for t in range(y.shape[0] * th):
        _output_transform_row(m, th, tw, bias, relu, y, t, patch)
        affine_rows(y, t // th, 2 * (t % th), 2 * (t % th) + 2, scale, shift)


@njit(inline="always")
def _output_tile_backward(src, ysrc, relu, oi, oj, dm, row, db):
    """Adjoint of :func:`_output_tile`: ``dM = A dZ A^T`` from the 2x2 block at ``(oi, oj)``, with
    ``dZ = src`` or, behind a ReLU, ``src * (ysrc > 0)``; also adds the block's sum to ``db`` (the
    bias gradient).

    Each output row ``g`` of dZ gives ``e = g A^T = (g0, g0 + g1, g0 - g1, -g1)``; the rows of
    ``dM`` are then e_0, e_0 + e_1, e_0 - e_1 and -e_1.
    """
    f = src.shape[2]
    zero = np.float32(0)  # float32, so that float32 data are not promoted to float64
    for k in range(f):  # rows xi = 0, 1 of dM
        g0 = src[oi, oj, k]
        g1 = src[oi, oj + 1, k]
        h0 = src[oi + 1, oj, k]
        h1 = src[oi + 1, oj + 1, k]
        if relu:
            g0 = g0 if ysrc[oi, oj, k] > 0 else zero
            g1 = g1 if ysrc[oi, oj + 1, k] > 0 else zero
            h0 = h0 if ysrc[oi + 1, oj, k] > 0 else zero
            h1 = h1 if ysrc[oi + 1, oj + 1, k] > 0 else zero
        dm[0, row, k] = g0
        dm[1, row, k] = g0 + g1
        dm[2, row, k] = g0 - g1
        dm[3, row, k] = -g1
        dm[4, row, k] = g0 + h0
        dm[5, row, k] = (g0 + g1) + (h0 + h1)
        dm[6, row, k] = (g0 - g1) + (h0 - h1)
        dm[7, row, k] = -g1 - h1
        db[k] += (g0 + g1) + (h0 + h1)
    for k in range(f):  # rows xi = 2, 3
        g0 = src[oi, oj, k]
        g1 = src[oi, oj + 1, k]
        h0 = src[oi + 1, oj, k]
        h1 = src[oi + 1, oj + 1, k]
        if relu:
            g0 = g0 if ysrc[oi, oj, k] > 0 else zero
            g1 = g1 if ysrc[oi, oj + 1, k] > 0 else zero
            h0 = h0 if ysrc[oi + 1, oj, k] > 0 else zero
            h1 = h1 if ysrc[oi + 1, oj + 1, k] > 0 else zero
        dm[8, row, k] = g0 - h0
        dm[9, row, k] = (g0 + g1) - (h0 + h1)
        dm[10, row, k] = (g0 - g1) - (h0 - h1)
        dm[11, row, k] = h1 - g1
        dm[12, row, k] = -h0
        dm[13, row, k] = -(h0 + h1)
        dm[14, row, k] = h1 - h0
        dm[15, row, k] = h1


@njit(inline="always")
def _output_transform_backward_row(dy, y, relu, th, tw, dm, db_rows, t, patch):
    """Output-transform adjoint of tile row ``t``, from ``dZ = dY * (y > 0)`` (ReLU) or ``dY``.

    Tiles inside the image read ``dY`` (and ``y``) in place; edge tiles first gather the masked,
    zero-padded 2x2 block into ``patch``. The row's bias-gradient sum is accumulated in the data's
    own dtype, then stored in ``db_rows[t]``.
    """
    _, oh, ow, f = dy.shape
    n = t // th
    oi = 2 * (t % th)
    db = np.zeros(f, dtype=dy.dtype)
    grad, out = dy[n], y[n]
    for tj in range(tw):
        oj = 2 * tj
        src, ysrc, mask, i0, j0 = grad, out, relu, oi, oj
        if not (oi + 2 <= oh and oj + 2 <= ow):
            for i in range(2):
                for j in range(2):
                    if oi + i < oh and oj + j < ow:
                        for k in range(f):
                            g = dy[n, oi + i, oj + j, k]
                            patch[i, j, k] = g if not relu or y[n, oi + i, oj + j, k] > 0 else np.float32(0)
                    else:
                        patch[i, j, :] = 0
            src, ysrc, mask, i0, j0 = patch, patch, False, 0, 0
        _output_tile_backward(src, ysrc, mask, i0, j0, dm, t * tw + tj, db)  # one call site: inlined once
    for k in range(f):
        db_rows[t, k] = db[k]


@njit(nogil=True, cache=True)
def output_transform_backward(dy, y, relu, th, tw, dm, db_rows):
    """Adjoint of :func:`output_transform`: ``dM = A dZ A^T`` per tile (dZ zero past an odd edge),
    with ``dZ = dY * (y > 0)`` if ``relu`` else ``dY``; and the bias gradient, by tile row.

    dy, y : ndarray (N, OH, OW, F) (``y``: the layer's output, read only if ``relu``);
    dm : ndarray (16, R, F) with R >= N*th*tw, written;
    db_rows : ndarray (N*th, F) float64, written: row t holds the sum of dZ over tile row t, so that
    ``db_rows.sum(axis=0)`` is the bias gradient whatever the thread count or batch split.
    """
    patch = np.empty((2, 2, dy.shape[3]), dtype=dy.dtype)
    for t in range(dy.shape[0] * th):
        _output_transform_backward_row(dy, y, relu, th, tw, dm, db_rows, t, patch)


# --- 2x2 max pooling fused into the output transform ------------------------------------------------
#
# When a Winograd layer is followed by 2x2 max pooling with stride 2 and its output has even sides,
# each 2x2 output tile *is* one pooling window. The output transform can then pool the tile while it
# is still in registers, and write only the pooled value and which of the four won (0..3, row-major;
# ties go to the first, as in kernels/pooling.py): the full-size output is never stored, nor read
# back by the pooling layer. Backward, the pooled gradient goes to the winner (masked by the ReLU:
# the winner's output is the pooled value) and the tile's adjoint runs as before.


@njit(inline="always")
def _output_transform_pool_row(m, th, tw, bias, relu, p, argmax, t, patch):
    """Output transform of tile row ``t`` (pooled row ``t % th``), pooled 2x2 into ``p``/``argmax``."""
    f = p.shape[3]
    n = t // th
    i = t % th
    for tj in range(tw):
        _output_tile(m, t * tw + tj, bias, relu, patch, 0, 0)
        for k in range(f):
            best = patch[0, 0, k]
            win = 0
            v = patch[0, 1, k]
            win = 1 if v > best else win
            best = v if v > best else best
            v = patch[1, 0, k]
            win = 2 if v > best else win
            best = v if v > best else best
            v = patch[1, 1, k]
            win = 3 if v > best else win
            best = v if v > best else best
            p[n, i, tj, k] = best
            argmax[n, i, tj, k] = win


@njit(nogil=True, cache=True)
def output_transform_pool(m, th, tw, bias, relu, p, argmax, scale, shift):
    """:func:`output_transform` followed by 2x2/stride-2 max pooling, in one pass (and the affine
    map of :func:`affine_rows` on the pooled values, if given).

    m : ndarray (16, R, F); p : ndarray (N, th, tw, F) written with the pooled outputs;
    argmax : ndarray (N, th, tw, F) of small ints (the layer uses uint8), written with the winner's
    position in its tile (0..3).
    """
    patch = np.empty((2, 2, p.shape[3]), dtype=p.dtype)
    for t in range(p.shape[0] * th):
        _output_transform_pool_row(m, th, tw, bias, relu, p, argmax, t, patch)
        affine_rows(p, t // th, t % th, t % th + 1, scale, shift)


@njit(inline="always")
def _output_transform_pool_backward_row(dp, p, argmax, relu, th, tw, dm, db_rows, t, patch):
    """Adjoint of :func:`_output_transform_pool_row` for tile row ``t``."""
    f = dp.shape[3]
    n = t // th
    i = t % th
    db = np.zeros(f, dtype=dp.dtype)
    zero = np.float32(0)  # float32, so that float32 data are not promoted to float64
    for tj in range(tw):
        for k in range(f):
            g = dp[n, i, tj, k]
            if relu and not p[n, i, tj, k] > 0:
                g = zero
            win = argmax[n, i, tj, k]
            patch[0, 0, k] = g if win == 0 else zero
            patch[0, 1, k] = g if win == 1 else zero
            patch[1, 0, k] = g if win == 2 else zero
            patch[1, 1, k] = g if win == 3 else zero
        _output_tile_backward(patch, patch, False, 0, 0, dm, t * tw + tj, db)
    for k in range(f):
        db_rows[t, k] = db[k]


@njit(nogil=True, cache=True)
def output_transform_pool_backward(dp, p, argmax, relu, th, tw, dm, db_rows):
    """Adjoint of :func:`output_transform_pool`: each pooled gradient goes to its tile's winner
    (zero if ``relu`` and the pooled output is not positive), then ``dM = A dZ A^T`` per tile.

    dp, p : ndarray (N, th, tw, F) (pooled gradient and pooled output); argmax : as there;
    dm : ndarray (16, R, F), written; db_rows : ndarray (N*th, F) float64, written (as in
    :func:`output_transform_backward`).
    """
    patch = np.empty((2, 2, dp.shape[3]), dtype=dp.dtype)
    for t in range(dp.shape[0] * th):
        _output_transform_pool_backward_row(dp, p, argmax, relu, th, tw, dm, db_rows, t, patch)
