"""Property-based tests (hypothesis): over random shapes, kernel sizes, strides, paddings and pool
sizes, the layers (running the fast Numba kernels) agree with the textbook loops in
``tinycnn/kernels/reference.py``, and every gradient agrees with central finite differences. The
Winograd route is reached as a network reaches it, by the layer's own choice (16 to 20 input
channels), with each activation, and with the 2x2 max pooling computed inside the convolution
(the plan's rewrite). And model files with random damage (to the JSON config, or to any bytes)
either load or give a ``ModelFileError``, never another exception, within a memory bound.

The hand-picked cases in test_kernels.py and test_layers.py show the common shapes; these look for
the corners nobody picked: a kernel larger than the image with 'same' padding, a stride larger than
the kernel, a pool of 1, a batch of one, a single channel, Winograd's edge tiles.

Runs are repeatable: ``derandomize=True`` draws the same examples on every run and machine for a
given hypothesis version (pinned in pyproject.toml for that reason), and no example database is
written; each parametrized case (an activation) draws its own examples. Everything is float64 (so
finite differences are meaningful, and Numba compiles one signature) and small: the whole file
takes about 20 s once the kernels are compiled.
"""
import tracemalloc

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import GRAD_TOL  # noqa: E402
import tinycnn  # noqa: E402
from test_hostile_files import config_of, entries, good_model, set_config, write_zip  # noqa: E402
from tinycnn import losses  # noqa: E402
from tinycnn.gradcheck import check_layers  # noqa: E402
from tinycnn.kernels import reference as R  # noqa: E402
from tinycnn.layers import AveragePooling2D, BatchNormalization, Conv2D, MaxPooling2D  # noqa: E402
from tinycnn.kernels.winograd import tile_grid  # noqa: E402
from tinycnn.layers.conv import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_TILES  # noqa: E402
from tinycnn.saving import ModelFileError  # noqa: E402

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True, database=None)
CLOSE = dict(rtol=1e-10, atol=1e-10)
#: Finite-difference tolerance here: 10x the hand-picked cases' GRAD_TOL. Over thousands of random
#: draws a few (small batch-norm batches, a nearly constant channel) reach 1-2e-6 from rounding
#: noise alone; a wrong derivative gives errors of order 1e-2 to 1.
PROPERTY_GRAD_TOL = 10 * GRAD_TOL
#: Entries of the input and of each weight compared by finite differences in the 16+-channel
#: tests (``check_layers(entries_per_array=...)``); the reference loops check every entry exactly.
SAMPLED_ENTRIES = 60

seeds = st.integers(0, 2**32 - 1)


@st.composite
def geometry(draw, max_window=4):
    """A batch shape and a window (kernel or pool) with strides and padding that fit it."""
    padding = draw(st.sampled_from(["valid", "same"]))
    kh, kw = draw(st.integers(1, max_window)), draw(st.integers(1, max_window))
    low_h, low_w = (kh, kw) if padding == "valid" else (1, 1)
    h, w = draw(st.integers(low_h, 7)), draw(st.integers(low_w, 7))
    return dict(n=draw(st.integers(1, 2)), h=h, w=w, c=draw(st.integers(1, 3)), window=(kh, kw),
                strides=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=padding)


def _randomise(layer, gen):
    layer.set_weights([gen.standard_normal(w.shape) for w in layer.get_weights()])


@PROPERTY
@given(g=geometry(), filters=st.integers(1, 3), use_bias=st.booleans(), seed=seeds)
def test_conv2d_matches_the_reference_and_finite_differences(g, filters, use_bias, seed):
    gen = np.random.default_rng(seed)
    layer = Conv2D(filters, g["window"], strides=g["strides"], padding=g["padding"], use_bias=use_bias,
                   dtype="float64")
    layer.build((g["h"], g["w"], g["c"]))
    _randomise(layer, gen)
    x = gen.standard_normal((g["n"], g["h"], g["w"], g["c"]))
    kernel, bias = layer.params["kernel"], layer.params.get("bias")

    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, R.conv2d_forward(x, kernel, bias, g["strides"], g["padding"]), **CLOSE)
    dy = gen.standard_normal(y.shape)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = R.conv2d_backward(x, kernel, dy, g["strides"], g["padding"])
    np.testing.assert_allclose(dx, dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)

    check_layers([layer], x=x, seed=seed).assert_close(PROPERTY_GRAD_TOL)


#: The activations a convolution takes, as the textbook forward ``y = f(z)`` and backward ``dz``.
ACTIVATIONS = {
    "linear": (lambda z: z, lambda dy, y: dy),
    "relu": (R.relu, R.relu_backward),
    "tanh": (np.tanh, lambda dy, y: dy * (1 - y * y)),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda dy, y: dy * y * (1 - y)),
    "softmax": (R.softmax, R.softmax_backward),
}

#: Input channels that take the Winograd route by the layer's own choice (16 is its threshold).
winograd_channels = st.integers(WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_CHANNELS + 4)


def _winograd_layer(filters, activation, use_bias, padding, input_shape, gen):
    """A float64 3x3 Conv2D that picked Winograd itself (16+ input channels and 4+ output tiles;
    below 4 tiles it picks im2col, and Winograd is set, so that the smallest edge cases still test
    its kernels), with random weights of variance 1 / fan-in: pre-activations of order 1, where tanh
    and sigmoid are not saturated (a saturated tanh's slope, ~1e-10, is below what finite
    differences can measure)."""
    layer = Conv2D(filters, 3, padding=padding, activation=activation, use_bias=use_bias, dtype="float64")
    layer.build(input_shape)
    th, tw = tile_grid(*layer.output_shape[:2])
    assert layer.algorithm == ("winograd" if th * tw >= WINOGRAD_MIN_TILES else "im2col")
    layer.algorithm = "winograd"
    layer.set_weights([gen.standard_normal(w.shape) / np.sqrt(9 * input_shape[2]) for w in layer.get_weights()])
    return layer


def _expected_conv(layer, x, dy):
    """Textbook ``y = f(conv(x) + b)`` and, from ``dy``, ``(dx, dW, db)``."""
    f, f_backward = ACTIVATIONS[layer.activation.name]
    kernel, bias = layer.params["kernel"], layer.params.get("bias")
    y = f(R.conv2d_forward(x, kernel, bias, layer.strides, layer.padding))
    return y, R.conv2d_backward(x, kernel, f_backward(dy, y), layer.strides, layer.padding)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@settings(PROPERTY, max_examples=12)
@given(n=st.integers(1, 2), h=st.integers(1, 5), w=st.integers(1, 5), c=winograd_channels,
       filters=st.integers(1, 3), padding=st.sampled_from(["valid", "same"]), use_bias=st.booleans(), seed=seeds)
def test_conv2d_winograd_matches_the_reference_and_finite_differences(activation, n, h, w, c, filters, padding,
                                                                      use_bias, seed):
    """Winograd with each activation (bias and ReLU inside the output transform, the others after
    it; 12 examples each), odd and even sides (edge tiles half outside the output), 'valid' and
    'same'."""
    if padding == "valid":
        h, w = h + 2, w + 2  # so that the 3x3 kernel fits
    gen = np.random.default_rng(seed)
    layer = _winograd_layer(filters, activation, use_bias, padding, (h, w, c), gen)
    x = gen.standard_normal((n, h, w, c))
    dy = gen.standard_normal((n,) + layer.output_shape)
    y_ref, (dx_ref, dw_ref, db_ref) = _expected_conv(layer, x, dy)

    np.testing.assert_allclose(layer.forward(x, training=True), y_ref, **CLOSE)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)

    check_layers([layer], x=x, seed=seed, entries_per_array=SAMPLED_ENTRIES).assert_close(PROPERTY_GRAD_TOL)


class _PooledInside:
    """A Winograd Conv2D with the 2x2 max pooling after it computed inside it (``forward_pooled``,
    the plan's rewrite), as one layer that ``check_layers`` can differentiate."""

    def __init__(self, conv, pool):
        self.conv, self.name, self.dtype, self.built = conv, conv.name, conv.dtype, True
        self.params, self.grads, self.output_shape = conv.params, conv.grads, pool.output_shape

    @property
    def input_grad_needed(self):
        return self.conv.input_grad_needed

    @input_grad_needed.setter
    def input_grad_needed(self, value):
        self.conv.input_grad_needed = value

    def forward(self, x, training=False):
        return self.conv.forward_pooled(x, training=training)

    def backward(self, grad_out):
        return self.conv.backward_pooled(grad_out)


@pytest.mark.parametrize("activation", ["relu", "linear"])
@settings(PROPERTY, max_examples=25)
@given(n=st.integers(1, 2), h=st.integers(1, 3), w=st.integers(1, 3), c=winograd_channels,
       filters=st.integers(1, 3), padding=st.sampled_from(["valid", "same"]), use_bias=st.booleans(), seed=seeds)
def test_winograd_with_max_pooling_inside_matches_the_reference_and_finite_differences(
        activation, n, h, w, c, filters, padding, use_bias, seed):
    """The fused route (the plan's rewrite), 25 examples per epilogue: even output sides 2-6, so
    that every 2x2 window is one output tile."""
    h, w = 2 * h + (2 if padding == "valid" else 0), 2 * w + (2 if padding == "valid" else 0)
    gen = np.random.default_rng(seed)
    layer = _winograd_layer(filters, activation, use_bias, padding, (h, w, c), gen)
    pool = MaxPooling2D(2, dtype="float64")
    pool.build(layer.output_shape)
    assert layer.fuses_with(pool)
    x = gen.standard_normal((n, h, w, c))
    dp = gen.standard_normal((n,) + pool.output_shape)
    y_ref, _ = _expected_conv(layer, x, np.zeros((n,) + layer.output_shape))
    dy = R.maxpool_backward(y_ref, dp)
    _, (dx_ref, dw_ref, db_ref) = _expected_conv(layer, x, dy)

    np.testing.assert_allclose(layer.forward_pooled(x, training=True), R.maxpool_forward(y_ref, (2, 2)), **CLOSE)
    np.testing.assert_allclose(layer.backward_pooled(dp), dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)

    check_layers([_PooledInside(layer, pool)], x=x, seed=seed,
                 entries_per_array=SAMPLED_ENTRIES).assert_close(PROPERTY_GRAD_TOL)


@PROPERTY
@given(g=geometry(), default_strides=st.booleans(), seed=seeds)
def test_pooling_matches_the_reference_and_finite_differences(g, default_strides, seed):
    gen = np.random.default_rng(seed)
    strides = None if default_strides else g["strides"]  # None: strides = pool size, Keras's default
    x = gen.standard_normal((g["n"], g["h"], g["w"], g["c"]))
    for cls, forward, backward in [(MaxPooling2D, R.maxpool_forward, R.maxpool_backward),
                                   (AveragePooling2D, R.avgpool_forward, R.avgpool_backward)]:
        layer = cls(pool_size=g["window"], strides=strides, padding=g["padding"], dtype="float64")
        layer.build(x.shape[1:])
        y = layer.forward(x, training=True)
        ref_strides = g["window"] if strides is None else strides
        expected = forward(x, g["window"], ref_strides, g["padding"])
        if cls is MaxPooling2D:
            np.testing.assert_array_equal(y, expected)  # a max is exact
        else:
            np.testing.assert_allclose(y, expected, **CLOSE)
        dy = gen.standard_normal(y.shape)
        np.testing.assert_allclose(layer.backward(dy), backward(x, dy, g["window"], ref_strides, g["padding"]),
                                   **CLOSE)
        # Random normal inputs have no ties within the finite-difference step, so max pooling is smooth here.
        check_layers([layer], x=x, seed=seed).assert_close(PROPERTY_GRAD_TOL)


@PROPERTY
@given(shape=st.sampled_from([(1, 3), (2, 1), (5, 4), (1, 2, 2, 3), (2, 3, 1, 2), (3, 2, 4, 1)]),
       training=st.booleans(), constant_channel=st.booleans(), seed=seeds)
def test_batchnorm_matches_the_reference_and_finite_differences(shape, training, constant_channel, seed):
    gen = np.random.default_rng(seed)
    x = gen.standard_normal(shape) * 3 + 1
    if constant_channel:
        x[..., 0] = 2.5  # variance 0 in that channel
    layer = BatchNormalization(dtype="float64")
    layer.build(shape[1:])
    c = shape[-1]
    # |gamma| >= 0.5 as in the layer harness: a tiny gamma shrinks the input gradient to the level of
    # the finite differences' rounding noise, and the check would measure noise.
    gamma, beta = gen.uniform(0.5, 1.5, c) * gen.choice([-1, 1], c), gen.standard_normal(c)
    mean, var = gen.standard_normal(c), gen.uniform(0.0, 2.0, c)
    layer.set_weights([gamma, beta, mean, var])
    y = layer.forward(x, training=training)
    dy = gen.standard_normal(shape)
    dx = layer.backward(dy)
    if training:
        np.testing.assert_allclose(y, R.batchnorm_forward(x, gamma, beta, 1e-3)[0], **CLOSE)
        np.testing.assert_allclose(dx, R.batchnorm_backward(x, dy, gamma, 1e-3)[0], rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_allclose(y, R.batchnorm_inference(x, gamma, beta, mean, var, 1e-3), **CLOSE)
    assert np.isfinite(dx).all()
    if training and x.size == c:
        # A batch of one value per channel: the output is beta whatever x and gamma are, so their
        # gradients are exactly 0. (Finite differences would only measure rounding noise, amplified
        # by 1/sqrt(epsilon).)
        assert not dx.any() and not layer.grads["gamma"].any()
        return
    layer.set_weights([gamma, beta, mean, var])  # forward in training mode moved the moving statistics
    check_layers([layer], x=x, training=training, seed=seed).assert_close(PROPERTY_GRAD_TOL)


@PROPERTY
@given(n=st.integers(1, 4), k=st.integers(2, 5), scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]),
       smoothing=st.sampled_from([0.0, 0.1]), seed=seeds)
def test_cross_entropy_from_logits_of_any_size_is_finite_and_exact(n, k, scale, smoothing, seed):
    gen = np.random.default_rng(seed)
    z = gen.standard_normal((n, k)) * scale
    z[0, 1:] = z[0, 0]  # one row of all-equal logits
    y = np.eye(k)[gen.integers(0, k, n)]
    loss = losses.CategoricalCrossentropy(label_smoothing=smoothing)
    value, per_sample, grad = loss.value_and_grad(y, z, logits=True)
    t = y * (1 - smoothing) + smoothing / k
    expected, _ = R.cross_entropy_from_logits(z, t)
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(per_sample, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, (R.softmax(z) - t) / n, rtol=1e-12, atol=1e-15)  # p - y, exactly
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-12)


# --- model files: any damage loads or gives a ModelFileError ----------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["subprocess.Popen", "Dense", "Conv2D", "float64", "same", "relu", -1, 0, 10**9,
                       [10**6, 10**6], [3, 3], {"class_name": "Dense", "config": {"units": 10**9}}]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)


def _paths(value, prefix=()):
    """Every place in a JSON value: tuples of keys and indices."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_any_change_to_the_config_loads_or_gives_a_model_file_error(tmp_path_factory, data):
    """Replace or delete one value anywhere in a good config with anything JSON can hold: the file
    either loads or is refused with a ModelFileError; never another exception, never a big allocation."""
    folder = tmp_path_factory.mktemp("fuzz")
    files = _fuzz_files(folder)
    config = config_of(files)
    path = data.draw(st.sampled_from(list(_paths(config))[1:]))
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JSON)
    set_config(files, config)
    _load_or_refuse(write_zip(folder / "fuzz.npz", files))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_any_damage_to_the_bytes_loads_or_gives_a_model_file_error(tmp_path_factory, data):
    """Overwrite a few bytes anywhere (zip headers, .npy headers, data), maybe cut the end off."""
    folder = tmp_path_factory.mktemp("flip")
    _fuzz_files(folder)
    damaged = bytearray(_fuzz_cache["bytes"])
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        damaged = damaged[:data.draw(st.integers(0, len(damaged)))]
    target = folder / "damaged.npz"
    target.write_bytes(bytes(damaged))
    _load_or_refuse(target)


#: Largest peak of Python's allocations (``tracemalloc``, which NumPy reports its arrays to) while
#: one damaged file loads or is refused; the same bound as tests/test_file_fuzz.py's. The good
#: model's file is 9 KB.
MAX_LOAD_BYTES = 100 * 2**20


def _load_or_refuse(target):
    """``load_model(target)`` loads or raises a ModelFileError naming the file, within MAX_LOAD_BYTES."""
    tracemalloc.start()
    try:
        tinycnn.load_model(target)
    except ModelFileError as e:
        assert str(e).startswith(f"{target}: ")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MAX_LOAD_BYTES, f"{peak:,} bytes allocated"


_fuzz_cache = {}


def _fuzz_files(folder):
    if "files" not in _fuzz_cache:
        good_model().save(folder / "good.npz")
        _fuzz_cache["files"] = entries(folder / "good.npz")
        _fuzz_cache["bytes"] = (folder / "good.npz").read_bytes()
    return dict(_fuzz_cache["files"])
