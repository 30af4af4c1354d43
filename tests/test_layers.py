"""Every layer through the one harness (see conftest.run_layer_test): shape, forward against the
reference twin, float32 output and gradients against float64's (random layers in training mode, with
the same draws), all gradients by finite differences inside a stack, and a save/load round trip."""
import numpy as np
import pytest

from tinycnn.kernels import reference as R
from tinycnn.layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                            GlobalAveragePooling2D, InputLayer, MaxPooling2D, ReLU, Softmax)


def _conv_ref(x, layer):
    w = layer.params["kernel"]
    b = layer.params.get("bias")
    y = R.conv2d_forward(x, w, b, layer.strides, layer.padding)
    return R.relu(y) if layer.activation.name == "relu" else y


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel_size, input_shape", [((3, 3), (7, 6, 2)), ((2, 3), (5, 5, 3)), ((1, 1), (4, 5, 2))])
def test_conv2d(check_layer, strides, padding, kernel_size, input_shape):
    kh, kw = kernel_size
    oh, _ = R.conv_output_length(input_shape[0], kh, strides, padding)
    ow, _ = R.conv_output_length(input_shape[1], kw, strides, padding)
    check_layer(lambda dt: Conv2D(3, kernel_size, strides=strides, padding=padding, dtype=dt),
                input_shape, (oh, ow, 3), _conv_ref)


def test_conv2d_relu_no_bias(check_layer):
    check_layer(lambda dt: Conv2D(4, 3, padding="same", activation="relu", use_bias=False, dtype=dt),
                (5, 5, 2), (5, 5, 4), _conv_ref)


@pytest.mark.parametrize("keep_columns", [True, False])
def test_conv2d_large_batch_spans_several_chunks(monkeypatch, check_layer, keep_columns):
    from tinycnn.layers import conv
    monkeypatch.setattr(conv, "COLUMN_CHUNK_BYTES", 2000)  # forces one image per chunk
    if not keep_columns:  # columns rebuilt in the backward pass, as for layers with large columns
        monkeypatch.setattr(conv, "KEEP_COLUMNS_BYTES", 0)
    check_layer(lambda dt: Conv2D(3, 3, padding="same", activation="relu", dtype=dt), (6, 5, 2), (6, 5, 3),
                _conv_ref, batch_size=5)


@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "valid")])
def test_conv2d_rebuilt_columns_give_the_kept_columns_gradients(monkeypatch, strides, padding):
    from tinycnn.layers import conv
    gen = np.random.default_rng(0)
    x = gen.standard_normal((4, 7, 6, 3))
    dy = None
    results = []
    for keep in (32 * 2**20, 0):
        monkeypatch.setattr(conv, "KEEP_COLUMNS_BYTES", keep)
        layer = Conv2D(5, 3, strides=strides, padding=padding, dtype="float64")
        layer.build(x.shape[1:])
        layer.set_weights([np.linspace(-1, 1, w.size).reshape(w.shape) for w in layer.get_weights()])
        y = layer.forward(x, training=True)
        assert (layer._kept_cols is not None) == bool(keep)
        dy = gen.standard_normal(y.shape) if dy is None else dy
        results.append([y.copy(), layer.backward(dy).copy(), layer.grads["kernel"].copy()])
        assert layer._kept_cols is None  # released by the backward pass
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("padding, input_shape", [
    ("same", (7, 6, 2)), ("valid", (7, 6, 2)), ("same", (6, 6, 3)), ("valid", (6, 6, 3)),
    ("same", (3, 5, 2)), ("valid", (3, 5, 2)), ("same", (1, 2, 2))])
def test_conv2d_winograd(winograd_everywhere, check_layer, padding, input_shape):
    oh, _ = R.conv_output_length(input_shape[0], 3, 1, padding)
    ow, _ = R.conv_output_length(input_shape[1], 3, 1, padding)

    def make(dt):
        layer = Conv2D(3, 3, padding=padding, dtype=dt)
        layer.build(input_shape)
        assert layer.algorithm == "winograd"
        return layer
    check_layer(make, input_shape, (oh, ow, 3), _conv_ref)


def test_conv2d_winograd_relu_no_bias_over_several_chunks(winograd_everywhere, monkeypatch, check_layer):
    from tinycnn.layers import conv
    monkeypatch.setattr(conv, "WINOGRAD_CHUNK_BYTES", 1)  # one image per chunk
    check_layer(lambda dt: Conv2D(4, 3, padding="same", activation="relu", use_bias=False, dtype=dt),
                (5, 6, 2), (5, 6, 4), _conv_ref, batch_size=5)


@pytest.mark.parametrize("kernel_size, strides, channels, expected", [
    (3, 1, 16, "winograd"),
    (3, 1, 128, "winograd"),
    (3, 1, 3, "im2col"),       # an RGB input: Winograd's products would be too thin
    (3, 2, 32, "im2col"),      # strided
    ((3, 2), 1, 32, "im2col"),
    (5, 1, 32, "im2col"),
    (1, 1, 32, "im2col"),      # pointwise: no im2col copy either
])
def test_conv2d_picks_its_algorithm(kernel_size, strides, channels, expected):
    layer = Conv2D(8, kernel_size, strides=strides, padding="same")
    layer.build((8, 8, channels))
    assert layer.algorithm == expected


@pytest.mark.parametrize("dtype, close", [("float64", dict(rtol=1e-10, atol=1e-10)),
                                          ("float32", dict(rtol=2e-4, atol=2e-4))])
def test_conv2d_winograd_and_im2col_agree(dtype, close):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((3, 10, 9, 16)).astype(dtype)
    outputs = []
    for algorithm in ("winograd", "im2col"):
        layer = Conv2D(8, 3, padding="same", activation="relu", dtype=dtype)
        layer.build(x.shape[1:])
        layer.algorithm = algorithm
        layer.set_weights([gen.standard_normal(w.shape) for w in layer.get_weights()] if not outputs
                          else outputs[0][-1])
        layer.input_grad_needed = True
        y = layer.forward(x, training=True).copy()
        dx = layer.backward(np.linspace(-1, 1, y.size).reshape(y.shape).astype(dtype)).copy()
        outputs.append((y, dx, layer.grads["kernel"].copy(), layer.grads["bias"].copy(), layer.get_weights()))
    for a, b in zip(outputs[0][:4], outputs[1][:4]):
        np.testing.assert_allclose(a, b, **close)


def _dense_ref(x, layer):
    z = x @ layer.params["kernel"] + layer.params["bias"]
    return {"linear": lambda v: v, "relu": R.relu, "softmax": R.softmax, "tanh": np.tanh,
            "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[layer.activation.name](z)


@pytest.mark.parametrize("activation", [None, "relu", "softmax", "tanh", "sigmoid"])
def test_dense(check_layer, activation):
    check_layer(lambda dt: Dense(3, activation=activation, dtype=dt), (5,), (3,), _dense_ref, batch_size=4)


def test_dense_on_last_axis_of_images(check_layer):
    check_layer(lambda dt: Dense(3, dtype=dt), (2, 3, 4), (2, 3, 3), _dense_ref)


@pytest.mark.parametrize("pool, strides, padding, input_shape", [
    ((2, 2), None, "valid", (6, 6, 2)),
    ((2, 2), None, "valid", (7, 5, 2)),      # odd sizes: the last row/column is dropped
    ((3, 3), 2, "same", (7, 6, 2)),          # overlapping windows reaching into padding
    ((2, 3), (1, 2), "valid", (5, 7, 3)),
])
def test_max_pooling(check_layer, pool, strides, padding, input_shape):
    st = (strides, strides) if isinstance(strides, int) else (strides or pool)
    oh, _ = R.conv_output_length(input_shape[0], pool[0], st[0], padding)
    ow, _ = R.conv_output_length(input_shape[1], pool[1], st[1], padding)
    # Distinct values 0.1 apart. Given x, the harness's 1x1 layer in front starts as the identity,
    # so these are the pooling layer's inputs, and a finite-difference step (1e-6 on x, or on that
    # layer's weights, which moves an input by at most 1e-6 * max|x| < 3e-5) never changes a max.
    gen = np.random.default_rng(3)
    n = 2 * int(np.prod(input_shape))
    x = (gen.permutation(n).reshape((2,) + input_shape) * 0.1).astype(np.float64)
    check_layer(lambda dt: MaxPooling2D(pool, strides=strides, padding=padding, dtype=dt), input_shape,
                (oh, ow, input_shape[2]), lambda x_, l: R.maxpool_forward(x_, l.pool_size, l.strides, padding), x=x)


@pytest.mark.parametrize("pool, strides, padding, input_shape", [
    ((2, 2), None, "valid", (6, 5, 2)),
    ((3, 3), 2, "same", (7, 6, 2)),
])
def test_average_pooling(check_layer, pool, strides, padding, input_shape):
    st = (strides, strides) if isinstance(strides, int) else (strides or pool)
    oh, _ = R.conv_output_length(input_shape[0], pool[0], st[0], padding)
    ow, _ = R.conv_output_length(input_shape[1], pool[1], st[1], padding)
    check_layer(lambda dt: AveragePooling2D(pool, strides=strides, padding=padding, dtype=dt), input_shape,
                (oh, ow, input_shape[2]), lambda x_, l: R.avgpool_forward(x_, l.pool_size, l.strides, padding))


def test_global_average_pooling(check_layer):
    check_layer(lambda dt: GlobalAveragePooling2D(dtype=dt), (3, 5, 4), (4,), lambda x, l: R.global_avgpool_forward(x))


def _bn_ref_train(x, layer):
    return R.batchnorm_forward(x, layer.params["gamma"], layer.params["beta"], layer.epsilon)[0]


def _bn_ref_infer(x, layer):
    s = layer.state
    return R.batchnorm_inference(x, layer.params["gamma"], layer.params["beta"], s["moving_mean"],
                                 s["moving_variance"], layer.epsilon)


def test_batchnorm_training_mode(check_layer):
    check_layer(lambda dt: BatchNormalization(dtype=dt), (4, 3, 5), (4, 3, 5), _bn_ref_train, batch_size=3)


def test_batchnorm_inference_mode(check_layer):
    check_layer(lambda dt: BatchNormalization(dtype=dt), (4, 3, 5), (4, 3, 5), _bn_ref_infer, training=False)


def test_batchnorm_after_dense(check_layer):
    check_layer(lambda dt: BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dt), (6,), (6,), _bn_ref_train,
                batch_size=5)


def test_batchnorm_without_center_and_scale(check_layer):
    check_layer(lambda dt: BatchNormalization(center=False, scale=False, dtype=dt), (3, 3, 2), (3, 3, 2),
                lambda x, l: R.batchnorm_forward(x, 1.0, 0.0, l.epsilon)[0])


def test_relu_layer(check_layer):
    check_layer(lambda dt: ReLU(dtype=dt), (3, 4, 2), (3, 4, 2), lambda x, l: R.relu(x))


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "softmax", "linear"])
def test_activation_layer(check_layer, name):
    ref = {"relu": R.relu, "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "softmax": R.softmax,
           "linear": lambda v: v}[name]
    check_layer(lambda dt: Activation(name, dtype=dt), (3, 4), (3, 4), lambda x, l: ref(x))


def test_softmax_layer(check_layer):
    check_layer(lambda dt: Softmax(dtype=dt), (2, 5), (2, 5), lambda x, l: R.softmax(x))


def test_input_layer(check_layer):
    # The identity on data; through the harness for its shape, dtype and save/load round trip.
    check_layer(lambda dt: InputLayer(shape=(3, 4), dtype=dt), (3, 4), (3, 4), lambda x, l: x)


def test_flatten(check_layer):
    check_layer(lambda dt: Flatten(dtype=dt), (3, 2, 4), (24,), lambda x, l: x.reshape(x.shape[0], -1))


def _dropout_ref(x, layer):
    # The harness put the generator back in the state the forward pass started from: replay its draws.
    u = layer.generator.random(x.size, dtype=layer.dtype)
    return R.dropout(x.reshape(-1), u, layer.rate)[0].reshape(x.shape)


def test_dropout_training_fixed_mask(check_layer):
    # The gradient check replays the layer's generator before each evaluation, so the mask is fixed.
    check_layer(lambda dt: Dropout(0.4, seed=7, dtype=dt), (4, 3, 2), (4, 3, 2), _dropout_ref, batch_size=3)


def test_dropout_is_inverted_and_matches_reference():
    gen = np.random.default_rng(0)
    x = gen.standard_normal((50, 40))
    layer = Dropout(0.3, seed=11, dtype="float64")
    state = layer.generator.bit_generator.state
    y = layer(x, training=True)
    replay = np.random.default_rng(0)
    replay.bit_generator.state = state
    ref, keep = R.dropout(x.reshape(-1), replay.random(x.size), 0.3)
    np.testing.assert_allclose(y.reshape(-1), ref, rtol=1e-15)
    assert 0.6 < keep.mean() < 0.8
    np.testing.assert_array_equal(layer(x, training=False), x)  # identity at inference


def test_dropout_rate_zero_is_identity_in_training():
    x = np.random.default_rng(0).standard_normal((4, 5))
    np.testing.assert_array_equal(Dropout(0.0, dtype="float64")(x, training=True), x)
