"""F(4x4, 3x3) Winograd for inference (``model.fast_inference``): kernels, layer, model.

The kernels (``tinycnn/kernels/winograd4.py``) against the textbook convolution loops in float64; the
layer's route (chunks of tile rows, the batch split over threads, bias and ReLU and 2x2 max pooling
inside the output transform) against the same loops; its float32 error, which is larger than the
exact paths' and is reported with theirs at the end of the run; and at model level: off by default,
predictions close to the exact ones, training and Grad-CAM untouched by it.

Everything runs in float32, the only precision fast inference is for: a float64 run would compile
every F(4x4) kernel a second time (4.7 s of the suite). The tolerance, 2e-5 of the output scale, is
ten times the rounding measured, and a wrong coefficient or index gives errors of order one.
"""
import numpy as np
import pytest

import tinycnn
from conftest import record_float32_error
from test_conv_impl import small_chunks, threads  # noqa: F401  (fixtures: 1 and 2 threads; smallest chunks)
from tinycnn.explain import grad_cam
from tinycnn.gradcheck import relative_error
from tinycnn.kernels import conv as K
from tinycnn.kernels import reference as R
from tinycnn.kernels import winograd4 as W4
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, conv
from tinycnn.layers.conv import Winograd, Winograd4x4

#: The issue's bound for a path less exact than im2col: 1e-4 of the output scale. Measured: 1e-6 to
#: 3e-6 (printed at the end of the run, beside the exact routes' ~1e-7).
FAST_TOL = 1e-4
#: What the tests below allow against the float64 loops: ten times the measured rounding.
KERNEL_TOL = 2e-5
NO_AFFINE = np.empty(0, np.float32)  # no batch normalization folded into the output pass


def _reference(x, w, b, padding, relu):
    y = R.conv2d_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (1, 1), padding)
    return np.maximum(y, 0) if relu else y


def _pool(y):
    n, h, w, f = y.shape
    return y.reshape(n, h // 2, 2, w // 2, 2, f).max(axis=(2, 4))


@pytest.mark.parametrize("n, h, w, c, f, padding", [
    (2, 9, 7, 3, 4, "same"),      # partial tiles at the bottom and the right
    (1, 8, 8, 5, 2, "valid"),     # 6x6 output: the second tile row and column half outside
    (2, 13, 10, 4, 3, "valid"),
    (3, 16, 16, 8, 6, "same"),    # whole tiles, padding on every side
    (1, 6, 6, 2, 1, "valid"),     # one tile, no padding at all
])
def test_f4x4_kernels_match_the_direct_convolution(n, h, w, c, f, padding):
    dtype = np.float32
    gen = np.random.default_rng(0)
    x = gen.standard_normal((n, h, w, c)).astype(dtype)
    wt = gen.standard_normal((3, 3, c, f)).astype(dtype)
    b = gen.standard_normal(f).astype(dtype)
    oh, ph = K.conv_output_length(h, 3, 1, padding)
    ow, pw = K.conv_output_length(w, 3, 1, padding)
    th, tw = W4.tile_grid(oh, ow)
    u = np.empty((36, c, f), dtype)
    W4.kernel_transform(wt, u)
    v = np.full((36, n * th * tw, c), np.nan, dtype)  # every entry must be written
    W4.input_transform(x, ph, pw, th, tw, v)
    m = v @ u
    for relu in (False, True):
        y = np.full((n, oh, ow, f), np.nan, dtype)
        W4.output_transform(m, th, tw, b, relu, y, NO_AFFINE, NO_AFFINE)
        expected = _reference(x, wt, b, padding, relu)
        assert relative_error(y, expected) <= KERNEL_TOL
        if oh % 2 == 0 and ow % 2 == 0:
            p = np.full((n, oh // 2, ow // 2, f), np.nan, dtype)
            W4.output_transform_pool(m, th, tw, b, relu, p, NO_AFFINE, NO_AFFINE)
            np.testing.assert_array_equal(p, _pool(y))  # the same tile values, pooled in registers


def _f4_on_any_batch(monkeypatch):
    """Let F(4x4) run whatever the number of tiles (the layers here are small)."""
    monkeypatch.setattr(conv, "WINOGRAD4_MIN_INFERENCE_TILES", 0)
    monkeypatch.setattr(conv, "WINOGRAD4_MIN_IMAGE_TILES", 0)


def _fast_layer(dtype, activation, use_bias=True, input_shape=(18, 14, 16), filters=8, seed=0):
    layer = Conv2D(filters, 3, padding="same", activation=activation, use_bias=use_bias, dtype=dtype)
    layer.build(input_shape)
    assert layer.algorithm == "winograd"
    gen = np.random.default_rng(seed)
    layer.set_weights([gen.standard_normal(w.shape) for w in layer.get_weights()])
    layer.fast_inference = True
    return layer


@pytest.mark.parametrize("activation, use_bias, pooled", [
    ("relu", True, False), ("linear", False, False), ("sigmoid", True, False),  # sigmoid: after the output pass
    ("relu", True, True), ("linear", False, True)])                             # max pooling inside
def test_the_layer_runs_f4x4_in_inference_and_matches_the_reference(threads, small_chunks, monkeypatch,
                                                                    activation, use_bias, pooled):
    _f4_on_any_batch(monkeypatch)
    layer = _fast_layer("float32", activation, use_bias)
    x = np.random.default_rng(1).standard_normal((3,) + layer.input_shape).astype(np.float32)
    w, b = layer.params["kernel"], layer.params.get("bias", np.zeros(layer.filters))
    z = R.conv2d_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (1, 1), "same")
    expected = {"relu": np.maximum(z, 0), "linear": z, "sigmoid": 1 / (1 + np.exp(-z))}[activation]
    if pooled:
        assert layer.fuses_with(MaxPooling2D(2)) and layer.pools_inside(3, training=False)
        y = layer.forward_pooled(x)
        expected = _pool(expected)
    else:
        y = layer.forward(x)
    assert isinstance(layer._ran, Winograd4x4)
    assert relative_error(y, expected) <= KERNEL_TOL


@pytest.mark.parametrize("pooled", [False, True], ids=["output", "max pooling inside"])
def test_float32_error_of_f4x4_stays_within_the_documented_bound(monkeypatch, pooled):
    """A mid-size layer (32 channels in and out, 10x10), as for the exact routes in
    tests/test_routes.py: float32 F(4x4) against the convolution in float64; the error is recorded
    for the table at the end of the run."""
    _f4_on_any_batch(monkeypatch)
    layer = _fast_layer("float32", "relu", input_shape=(10, 10, 32), filters=32, seed=3)
    x = np.random.default_rng(4).standard_normal((4, 10, 10, 32)).astype(np.float32)
    y = layer.forward_pooled(x) if pooled else layer.forward(x)
    assert isinstance(layer._ran, Winograd4x4)
    w, b = (p.astype(np.float64) for p in layer.get_weights())
    exact = np.maximum(R.conv2d_forward(x.astype(np.float64), w, b, (1, 1), "same"), 0)
    error = relative_error(y, _pool(exact) if pooled else exact)
    record_float32_error("winograd F(4x4), fast inference" + (" + max pool" if pooled else ""), "output", error)
    assert error <= FAST_TOL


def _model():
    tinycnn.set_seed(0)
    inputs = tinycnn.Input((16, 16, 16))
    h = Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = MaxPooling2D()(Conv2D(16, 3, padding="same", activation="relu", name="observed")(h))
    outputs = Dense(3, activation="softmax")(Flatten()(h))
    model = tinycnn.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def test_model_fast_inference_is_off_by_default_and_close_to_exact(monkeypatch):
    _f4_on_any_batch(monkeypatch)
    model = _model()
    assert model.fast_inference is False
    x = np.random.default_rng(5).random((4, 16, 16, 16), dtype=np.float32)
    exact = model.predict(x)
    assert all(type(layer._ran) is Winograd for layer in model.layers if isinstance(layer, Conv2D))
    model.fast_inference = True
    fast = model.predict(x)
    assert all(isinstance(layer._ran, Winograd4x4) for layer in model.layers if isinstance(layer, Conv2D))
    assert relative_error(fast, exact) <= FAST_TOL and not np.array_equal(fast, exact)
    model.fast_inference = False
    np.testing.assert_array_equal(model.predict(x), exact)
    with pytest.raises(TypeError, match=r"fast_inference: expected True or False, received 'yes'"):
        model.fast_inference = "yes"


def test_training_and_grad_cam_are_untouched_by_fast_inference(monkeypatch):
    """Two copies trained alike, one predicting with F(4x4) between its steps, end bit for bit equal;
    Grad-CAM gives the exact heatmap with the setting on, and leaves it on."""
    _f4_on_any_batch(monkeypatch)
    gen = np.random.default_rng(6)
    x = gen.random((8, 16, 16, 16), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[gen.integers(0, 3, 8)]
    plain, fast = _model(), _model()
    fast.fast_inference = True
    for _ in range(2):
        plain.train_on_batch(x, y)
        fast.train_on_batch(x, y)
        fast.predict(x)
    for a, b in zip(plain.get_weights(), fast.get_weights()):
        np.testing.assert_array_equal(a, b)
    on = grad_cam(fast, x[0], layer="observed").heatmap
    assert fast.fast_inference and all(layer.fast_inference for layer in fast.layers if isinstance(layer, Conv2D))
    np.testing.assert_array_equal(on, grad_cam(plain, x[0], layer="observed").heatmap)


def test_backward_after_a_fast_forward_pass_says_what_to_do(monkeypatch):
    _f4_on_any_batch(monkeypatch)
    layer = _fast_layer("float32", "relu")
    layer.forward(np.zeros((1,) + layer.input_shape, np.float32))
    with pytest.raises(RuntimeError, match=r"F\(4x4\) Winograd for fast inference.*fast_inference off"):
        layer.backward(np.zeros((1,) + layer.output_shape))
