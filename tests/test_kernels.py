"""The fast Numba kernels against their textbook twins in kernels/reference.py, on random inputs,
in float32 and float64."""
import numpy as np
import pytest

from tinycnn.kernels import activations as A
from tinycnn.kernels import conv as C
from tinycnn.kernels import losses as L
from tinycnn.kernels import normalization as N
from tinycnn.kernels import optimizers as O
from tinycnn.kernels import pooling as P
from tinycnn.kernels import reference as R
from tinycnn.kernels import winograd as W

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def no_affine(dtype):
    """The empty (scale, shift) that the output passes take for: no folded batch normalization."""
    return np.empty(0, dtype), np.empty(0, dtype)


def conv_geometry(h, w, kh, kw, sh, sw, padding):
    oh, ph = C.conv_output_length(h, kh, sh, padding)
    ow, pw = C.conv_output_length(w, kw, sw, padding)
    return oh, ow, ph, pw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h, w, c, kh, kw, sh, sw, padding", [
    (5, 6, 3, 3, 3, 1, 1, "same"),
    (7, 7, 2, 3, 3, 2, 2, "same"),
    (7, 6, 2, 3, 2, 2, 1, "valid"),
    (4, 4, 5, 1, 1, 1, 1, "valid"),
    (6, 5, 1, 5, 5, 3, 2, "same"),
    (5, 6, 16, 3, 3, 1, 1, "same"),    # 16+ channels take im2col's slice-copy path
    (6, 5, 32, 3, 2, 2, 1, "valid"),
])
def test_conv_by_im2col_matches_direct_loops(dtype, h, w, c, kh, kw, sh, sw, padding):
    x = rand((2, h, w, c), dtype)
    wt = rand((kh, kw, c, 4), dtype, 1)
    dy_seed = 2
    oh, ow, ph, pw = conv_geometry(h, w, kh, kw, sh, sw, padding)
    cols = np.empty((2 * oh * ow, kh * kw * c), dtype=dtype)
    C.im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, cols)
    y = (cols @ wt.reshape(-1, 4)).reshape(2, oh, ow, 4)
    np.testing.assert_allclose(y, R.conv2d_forward(x, wt, None, (sh, sw), padding), **tol(dtype))

    dy = rand(y.shape, dtype, dy_seed)
    dx_ref, dw_ref, _ = R.conv2d_backward(x, wt, dy, (sh, sw), padding)
    dx = np.empty_like(x)
    C.col2im(dy.reshape(-1, 4) @ wt.reshape(-1, 4).T, kh, kw, sh, sw, ph, pw, oh, ow, dx)
    np.testing.assert_allclose(dx, dx_ref, **tol(dtype))
    np.testing.assert_allclose((cols.T @ dy.reshape(-1, 4)).reshape(wt.shape), dw_ref, **tol(dtype))


def winograd_conv(x, wt, dy, padding):
    """Forward and backward of a 3x3 stride-1 convolution through the Winograd kernels, as the
    layer runs them (one chunk): returns y, dx, dw."""
    n, h, w, c = x.shape
    f = wt.shape[3]
    oh, ow, ph, pw = conv_geometry(h, w, 3, 3, 1, 1, padding)
    th, tw = W.tile_grid(oh, ow)
    u = np.empty((16, c, f), dtype=x.dtype)
    v = np.empty((16, n * th * tw, c), dtype=x.dtype)
    W.kernel_transform(wt, u)
    W.input_transform(x, ph, pw, th, tw, v)
    y = np.empty((n, oh, ow, f), dtype=x.dtype)
    W.output_transform(v @ u, th, tw, np.zeros(f, dtype=x.dtype), False, y, *no_affine(x.dtype))
    dm = np.empty((16, n * th * tw, f), dtype=x.dtype)
    W.output_transform_backward(dy, y, False, th, tw, dm, np.empty((n * th, f)))
    dw = np.empty_like(wt)
    W.kernel_transform_backward(v.transpose(0, 2, 1) @ dm, dw)
    dx = np.empty_like(x)
    W.input_transform_backward(dm @ u.transpose(0, 2, 1), ph, pw, th, tw, dx)
    return y, dx, dw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, h, w, c, f, padding", [
    (2, 6, 6, 3, 4, "same"),
    (2, 7, 5, 2, 3, "same"),      # odd sizes: half tiles at the bottom and right
    (1, 5, 8, 3, 2, "valid"),
    (2, 7, 7, 4, 5, "valid"),
    (1, 3, 3, 2, 2, "valid"),     # a single output pixel
    (3, 1, 1, 2, 3, "same"),      # a single input pixel: the whole tile but one is padding
    (2, 2, 9, 3, 2, "same"),
    (2, 10, 8, 16, 8, "same"),    # interior tiles, read in place
])
def test_winograd_matches_direct_loops(dtype, n, h, w, c, f, padding):
    x = rand((n, h, w, c), dtype)
    wt = rand((3, 3, c, f), dtype, 1)
    y_ref = R.conv2d_forward(x, wt, None, (1, 1), padding)
    dy = rand(y_ref.shape, dtype, 2)
    dx_ref, dw_ref, _ = R.conv2d_backward(x, wt, dy, (1, 1), padding)
    y, dx, dw = winograd_conv(x, wt, dy, padding)
    # Winograd adds and subtracts transformed values before the products, so float32 rounding
    # is a few times larger than for the direct sum.
    close = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else tol(dtype)
    np.testing.assert_allclose(y, y_ref, **close)
    np.testing.assert_allclose(dx, dx_ref, **close)
    np.testing.assert_allclose(dw, dw_ref, **close)


@pytest.mark.parametrize("h, w, padding", [(6, 6, "same"), (7, 5, "same"), (6, 9, "valid")])
def test_winograd_reference_twin_matches_direct_loops(h, w, padding):
    x = rand((2, h, w, 3), np.float64)
    wt = rand((3, 3, 3, 4), np.float64, 1)
    np.testing.assert_allclose(R.winograd_conv3x3(x, wt, padding), R.conv2d_forward(x, wt, None, (1, 1), padding),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_output_transform_fuses_bias_relu_and_the_bias_gradient(dtype):
    # y = relu(A^T M A + b); backward from dy: dM from dz = dy * (y > 0), and sum(dz) by tile row.
    oh, ow, f = 7, 5, 6                         # odd: edge tiles take the patch path
    th, tw = W.tile_grid(oh, ow)
    m = rand((16, 3 * th * tw, f), dtype, 1)
    bias = rand((f,), dtype, 2)
    plain = np.empty((3, oh, ow, f), dtype=dtype)
    W.output_transform(m, th, tw, np.zeros(f, dtype=dtype), False, plain, *no_affine(dtype))
    fused = np.empty_like(plain)
    W.output_transform(m, th, tw, bias, True, fused, *no_affine(dtype))
    expected = R.relu(plain + bias)
    np.testing.assert_allclose(fused, expected, **tol(dtype))
    assert (fused == 0).mean() > 0.2            # the ReLU really cut something

    dy = rand(plain.shape, dtype, 3)
    dz = R.relu_backward(dy, expected)
    dm_ref = np.empty_like(m)
    W.output_transform_backward(dz, dz, False, th, tw, dm_ref, np.empty((3 * th, f)))
    dm = np.empty_like(m)
    db_rows = np.full((3 * th, f), np.nan)      # must be overwritten, not added to
    W.output_transform_backward(dy, fused, True, th, tw, dm, db_rows)
    np.testing.assert_allclose(dm, dm_ref, **tol(dtype))
    np.testing.assert_allclose(db_rows.sum(axis=0), dz.sum(axis=(0, 1, 2)), **tol(dtype))


def test_winograd_transforms_are_adjoints():
    # <T(a), b> == <a, T*(b)> for each transform and its backward: the gradient is exact.
    x = rand((2, 7, 5, 3), np.float64)
    oh, ow, ph, pw = conv_geometry(7, 5, 3, 3, 1, 1, "same")
    th, tw = W.tile_grid(oh, ow)
    v = np.empty((16, 2 * th * tw, 3))
    W.input_transform(x, ph, pw, th, tw, v)
    dv = rand(v.shape, np.float64, 3)
    dx = np.empty_like(x)
    W.input_transform_backward(dv, ph, pw, th, tw, dx)
    assert np.isclose(np.sum(v * dv), np.sum(x * dx), rtol=1e-12)

    m = rand((16, 2 * th * tw, 4), np.float64, 4)
    y = np.empty((2, oh, ow, 4))
    W.output_transform(m, th, tw, np.zeros(4), False, y, *no_affine(np.float64))
    dy = rand(y.shape, np.float64, 5)
    dm = np.empty_like(m)
    W.output_transform_backward(dy, y, False, th, tw, dm, np.empty((2 * th, 4)))
    assert np.isclose(np.sum(y * dy), np.sum(m * dm), rtol=1e-12)

    wt = rand((3, 3, 3, 4), np.float64, 6)
    u = np.empty((16, 3, 4))
    W.kernel_transform(wt, u)
    du = rand(u.shape, np.float64, 7)
    dw = np.empty_like(wt)
    W.kernel_transform_backward(du, dw)
    assert np.isclose(np.sum(u * du), np.sum(wt * dw), rtol=1e-12)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> == <x, col2im(c)> for any x and c: the defining property of the backward pass.
    x = rand((3, 7, 5, 2), np.float64)
    oh, ow, ph, pw = conv_geometry(7, 5, 3, 3, 2, 2, "same")
    cols = np.empty((3 * oh * ow, 18))
    C.im2col(x, 3, 3, 2, 2, ph, pw, oh, ow, cols)
    c = rand(cols.shape, np.float64, 5)
    back = np.empty_like(x)
    C.col2im(c, 3, 3, 2, 2, ph, pw, oh, ow, back)
    assert np.isclose(np.sum(cols * c), np.sum(x * back), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [True, False])
def test_bias_activation_epilogue(dtype, relu):
    z = rand((40, 6), dtype)
    b = rand((6,), dtype, 1)
    y = z.copy()
    C.bias_act_forward(y, b, relu, *no_affine(y.dtype))
    expected = z + b
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(y, expected, **tol(dtype))
    dy = rand(y.shape, dtype, 2)
    dz = np.empty_like(dy)
    db = C.bias_act_backward(dy, y, relu, dz)
    expected_dz = R.relu_backward(dy, y) if relu else dy
    np.testing.assert_allclose(dz, expected_dz, **tol(dtype))
    np.testing.assert_allclose(db, expected_dz.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, strides, padding, shape", [
    ((2, 2), (2, 2), "valid", (2, 6, 7, 3)),
    ((3, 3), (2, 2), "same", (2, 7, 6, 2)),
    ((3, 2), (1, 1), "valid", (1, 5, 5, 4)),
])
def test_pooling_matches_reference(dtype, pool, strides, padding, shape):
    x = rand(shape, dtype)
    oh, ow, pt, pl = conv_geometry(shape[1], shape[2], pool[0], pool[1], strides[0], strides[1], padding)
    y = np.empty((shape[0], oh, ow, shape[3]), dtype=dtype)
    arg = np.empty(y.shape, dtype=np.int32)
    P.maxpool_forward(x, *pool, *strides, pt, pl, y, arg)
    np.testing.assert_array_equal(y, R.maxpool_forward(x, pool, strides, padding))
    dy = rand(y.shape, dtype, 1)
    dx = np.empty_like(x)
    P.maxpool_backward(dy, arg, *pool, *strides, pt, pl, dx)
    np.testing.assert_allclose(dx, R.maxpool_backward(x, dy, pool, strides, padding), **tol(dtype))

    P.avgpool_forward(x, *pool, *strides, pt, pl, y)
    np.testing.assert_allclose(y, R.avgpool_forward(x, pool, strides, padding), **tol(dtype))
    P.avgpool_backward(dy, *pool, *strides, pt, pl, dx)
    np.testing.assert_allclose(dx, R.avgpool_backward(x, dy, pool, strides, padding), **tol(dtype))


def test_maxpool_ties_go_to_the_first_element():
    x = np.ones((1, 2, 2, 1))
    y = np.empty((1, 1, 1, 1))
    arg = np.empty((1, 1, 1, 1), dtype=np.int32)
    P.maxpool_forward(x, 2, 2, 2, 2, 0, 0, y, arg)
    dx = np.empty_like(x)
    P.maxpool_backward(np.ones_like(y), arg, 2, 2, 2, 2, 0, 0, dx)
    assert dx.reshape(-1).tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_average_pooling(dtype):
    x = rand((3, 4, 5, 6), dtype)
    y = np.empty((3, 6), dtype=dtype)
    P.global_avgpool_forward(x, y)
    np.testing.assert_allclose(y, R.global_avgpool_forward(x), **tol(dtype))
    dx = np.empty_like(x)
    P.global_avgpool_backward(y, dx)
    np.testing.assert_allclose(dx, R.global_avgpool_backward(x, y), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_kernels_match_reference(dtype):
    x = rand((4, 5, 3, 6), dtype) * 3 + 2
    gamma = rand((6,), np.float64, 1)
    beta = rand((6,), np.float64, 2)
    eps = 1e-3
    x2d = x.reshape(-1, 6)
    mean, var = N.moments(x2d)
    y_ref, mean_ref, var_ref = R.batchnorm_forward(x.astype(np.float64), gamma, beta, eps)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, var_ref, rtol=1e-6, atol=1e-6)
    inv = 1 / np.sqrt(var + eps)
    y = np.empty_like(x2d)
    N.channel_affine(x2d, (gamma * inv).astype(dtype), (beta - mean * gamma * inv).astype(dtype), y)
    np.testing.assert_allclose(y.reshape(x.shape), y_ref, **tol(dtype))

    dy = rand(x.shape, dtype, 3)
    dx_ref, dgamma_ref, dbeta_ref = R.batchnorm_backward(x.astype(np.float64), dy.astype(np.float64), gamma, eps)
    sum_dy, sum_dy_xc = N.backward_sums(dy.reshape(-1, 6), x2d, mean.astype(dtype))
    np.testing.assert_allclose(sum_dy, dbeta_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sum_dy_xc * inv, dgamma_ref, rtol=1e-5, atol=1e-5)


def test_moments_survive_a_large_mean_in_float32():
    # Naive E[x^2] - E[x]^2 in float32 loses everything here; the shifted sums do not.
    gen = np.random.default_rng(0)
    x = (1e4 + gen.standard_normal((4096, 3))).astype(np.float32)
    mean, var = N.moments(x)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["relu", "softmax", "sigmoid", "tanh"])
def test_activation_kernels(dtype, name):
    z = rand((7, 5), dtype) * 3
    forward, backward = {"relu": (A.relu_forward, A.relu_backward), "softmax": (A.softmax_forward, A.softmax_backward),
                         "sigmoid": (A.sigmoid_forward, A.sigmoid_backward),
                         "tanh": (A.tanh_forward, A.tanh_backward)}[name]
    y = np.empty_like(z)
    forward(z, y)
    z64 = z.astype(np.float64)
    expected = {"relu": R.relu, "softmax": R.softmax, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
                "tanh": np.tanh}[name](z64)
    np.testing.assert_allclose(y, expected, **tol(dtype))
    dy = rand(z.shape, dtype, 1)
    dz = np.empty_like(dy)
    backward(dy, y, dz)
    y64 = y.astype(np.float64)
    dy64 = dy.astype(np.float64)
    expected_dz = {"relu": lambda: R.relu_backward(dy64, y64), "softmax": lambda: R.softmax_backward(dy64, y64),
                   "sigmoid": lambda: dy64 * y64 * (1 - y64), "tanh": lambda: dy64 * (1 - y64 ** 2)}[name]()
    np.testing.assert_allclose(dz, expected_dz, **tol(dtype))


def test_sigmoid_and_softmax_do_not_overflow():
    z = np.array([[1e4, -1e4, 0.0]])
    y = np.empty_like(z)
    A.sigmoid_forward(z, y)
    np.testing.assert_array_equal(y, [[1.0, 0.0, 0.5]])
    A.softmax_forward(z, y)
    np.testing.assert_array_equal(y, [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_kernel(dtype):
    x = rand((1000,), dtype)
    u = np.random.default_rng(1).random(1000).astype(dtype)
    y = np.empty_like(x)
    mask = np.empty(1000, dtype=np.uint8)
    A.dropout_forward(x, u, 0.25, y, mask)
    ref, keep = R.dropout(x, u, 0.25)
    np.testing.assert_allclose(y, ref, **tol(dtype))
    np.testing.assert_array_equal(mask.astype(bool), keep)
    dx = np.empty_like(x)
    A.dropout_backward(x, mask, 0.25, dx)
    np.testing.assert_allclose(dx, ref, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_kernels_match_reference(dtype):
    gen = np.random.default_rng(0)
    z = (gen.standard_normal((6, 4)) * 2).astype(dtype)
    y = np.eye(4, dtype=dtype)[gen.integers(0, 4, 6)] * 0.9 + 0.025
    w = np.ones(6)
    loss = np.empty(6)
    grad = np.empty_like(z)
    L.softmax_cross_entropy(z, y, w, loss, grad)
    ref_loss, ref_grad = R.cross_entropy_from_logits(z.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(loss, ref_loss, **tol(dtype))
    np.testing.assert_allclose(grad, ref_grad, **tol(dtype))
    alpha = np.array([0.1, 0.2, 0.3, 0.4])
    L.softmax_focal(z, y, alpha, 2.0, w, loss, grad)
    ref_loss, ref_grad = R.focal_from_logits(z.astype(np.float64), y.astype(np.float64), alpha, 2.0)
    np.testing.assert_allclose(loss, ref_loss, **tol(dtype))
    np.testing.assert_allclose(grad, ref_grad, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_kernel_matches_reference(dtype):
    gen = np.random.default_rng(0)
    p = gen.standard_normal(50).astype(dtype)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    p_ref, m_ref, v_ref = p.astype(np.float64), np.zeros(50), np.zeros(50)
    for t in range(1, 6):
        g = gen.standard_normal(50).astype(dtype)
        lr_t = 1e-2 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        O.adam_update(p, g, m, v, lr_t, 0.9, 0.999, 1e-7)
        p_ref, m_ref, v_ref = R.adam_step(p_ref, g.astype(np.float64), m_ref, v_ref, t, lr=1e-2)
    np.testing.assert_allclose(p, p_ref, **tol(dtype))


# --- how the kernels are spread over threads (kernels/_util.py, _threads.in_slices) ---------------

@pytest.fixture
def two_threads(monkeypatch):
    """Split in two whatever the machine's core count (threads also run on one core)."""
    from tinycnn import _threads
    monkeypatch.setattr(_threads, "thread_count", lambda: 2)


def test_in_slices_covers_the_rows_once_in_order_and_runs_nested_calls_inline(two_threads):
    import threading
    from tinycnn import _threads
    seen, lock = [], threading.Lock()

    def work(lo, hi):
        inner = []
        _threads.in_slices(10, lambda a, b: inner.append((a, b, threading.get_ident())), 10**9)
        with lock:
            seen.append((lo, hi, threading.get_ident(), inner))

    _threads.in_slices(1000, work, 10**9)
    seen.sort()
    assert [(lo, hi) for lo, hi, _, _ in seen] == [(0, 500), (500, 1000)]
    assert seen[0][2] != seen[1][2]                    # two threads ran
    for _, _, thread, inner in seen:                   # a split inside a slice runs whole, in that thread
        assert inner == [(0, 10, thread)]
    small = []
    _threads.in_slices(1000, lambda lo, hi: small.append((lo, hi)), 2 * _threads.SLICE_GRAIN - 1)
    assert small == [(0, 1000)]                        # too little work to be worth a second thread


def test_in_slices_raises_a_slice_error_here(two_threads):
    from tinycnn import _threads

    def work(lo, hi):
        if lo > 0:
            raise ValueError("second slice failed")

    with pytest.raises(ValueError, match="second slice failed"):
        _threads.in_slices(10, work, 10**9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_wise_kernels_give_the_same_bits_split_or_whole(dtype, monkeypatch):
    """by_rows hands each thread a slice of rows; every row is computed as in one call, so the
    split changes no bit (forward, backward and an optimizer update)."""
    from tinycnn import _threads
    z = rand((300, 700), dtype)                        # 210,000 elements: split in two
    dy = rand(z.shape, dtype, seed=1)
    results = []
    for threads in (1, 2):
        monkeypatch.setattr(_threads, "thread_count", lambda threads=threads: threads)
        y, dz = np.empty_like(z), np.empty_like(z)
        A.sigmoid_forward(z, y)
        A.softmax_backward(dy, y, dz)
        p, m, v = z.ravel().copy(), np.zeros(z.size, dtype), np.zeros(z.size, dtype)
        O.adam_update(p, dy.ravel(), m, v, 1e-3, 0.9, 0.999, 1e-7)
        results.append((y, dz, p, m, v))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
