"""Shared test helpers: the one harness every layer goes through.

``run_layer_test`` builds the layer inside a small stack, checks its output shape, its forward pass
against the reference twin (``tinycnn/kernels/reference.py``), its float32 output and gradients
against float64's, every gradient against central finite differences in float64, and a save/load
round trip. The worst gradient error and the worst float32 error per layer class are printed at the
end of the run (``pytest -s`` not needed).
"""
import os
from collections import defaultdict

import numpy as np
import pytest

import tinycnn
from tinycnn.gradcheck import check_layers, relative_error
from tinycnn.layers import Conv2D, Dense
from tinycnn.models import Sequential

#: Gradient-check tolerance (relative error, float64, eps = 1e-6). Observed errors are ~1e-9.
GRAD_TOL = 1e-6
#: float32 against float64 in the harness: ``max|float32 - float64| / max|float64|`` for the output
#: and every gradient of a layer. Observed errors are below 1e-6 (small layers: few terms per sum).
FLOAT32_TOL = 1e-5

_worst = defaultdict(float)
_float32 = defaultdict(lambda: defaultdict(float))


def record_error(label, report):
    _worst[label] = max(_worst[label], report.max_error())


def record_float32_error(label, name, error):
    """Keep the worst float32-against-float64 error of array ``name`` (the output, the input
    gradient, a weight gradient) for ``label`` (a layer class, or a route of tests/test_routes.py)."""
    _float32[label][name] = max(_float32[label][name], error)


def pytest_terminal_summary(terminalreporter):
    if _worst:
        terminalreporter.section("gradient check: worst relative error per layer / loss")
        for label in sorted(_worst):
            terminalreporter.write_line(f"{label:<48s} {_worst[label]:.2e}   (tolerance {GRAD_TOL:g})")
    if _float32:
        terminalreporter.section("float32 against float64: worst relative error per layer / route")
        for label, errors in _float32.items():
            terminalreporter.write_line(f"{label:<48s} " + "  ".join(f"{k} {v:.1e}" for k, v in errors.items()))


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Let every 3x3 stride-1 convolution take the Winograd path, however few its channels and
    output tiles, in inference calls on few images too."""
    from tinycnn.layers import conv
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_INFERENCE_TILES", 0)


def _pre_layer(input_shape, identity):
    """A small trainable layer in front of the one under test: its own weight gradient depends on
    the tested layer's input gradient, so a wrong or unused backward cannot pass. With random
    weights it mixes the channels; with ``identity`` (for a test that builds its own input:
    distinct maxima, ...) it starts as the identity, so the tested layer gets exactly that input."""
    c = input_shape[-1]
    if len(input_shape) == 3:
        pre = Conv2D(c, 1, dtype="float64", name="pre_conv")
    else:
        pre = Dense(c, dtype="float64", name="pre_dense")
    pre.build(tuple(input_shape))
    if identity:
        pre.set_weights([np.eye(c).reshape(pre.params["kernel"].shape), np.zeros(c)])
    return pre


class _Float32Draws:
    """A random generator that gives a layer of either dtype the uniform draws a float32 layer gets.

    ``Dropout`` draws ``generator.random(n, dtype=self.dtype)``, and NumPy makes a float32 draw from
    32 random bits and a float64 one from 64: from one seed the two dtypes would drop different
    values. Given to both twins of the float32 comparison (from one generator state), it makes
    them drop the same ones, exactly (a float32 draw is exact in float64). Calls without a dtype
    (the augmentation layers' ``random(n)``, ``uniform``) are the generator's own.
    """

    def __init__(self, state):
        self._gen = np.random.default_rng()
        self._gen.bit_generator.state = state

    def random(self, size=None, dtype=None):
        if dtype is None:
            return self._gen.random(size)
        return self._gen.random(size, dtype=np.float32).astype(dtype)

    def __getattr__(self, name):
        return getattr(self._gen, name)


def training_step(layer, x, dy, training=True, pooled=False):
    """Output, input gradient and every weight gradient of one step (copies). ``pooled``: a Conv2D
    with the 2x2 max pooling after it computed inside it (``forward_pooled``/``backward_pooled``)."""
    layer.input_grad_needed = True
    if pooled:
        y, dx = layer.forward_pooled(x, training=training).copy(), layer.backward_pooled(dy).copy()
    else:
        y, dx = layer.forward(x, training=training).copy(), layer.backward(dy).copy()
    return {"output": y, "input gradient": dx, **{f"{k} gradient": g.copy() for k, g in layer.grads.items()}}


def run_layer_test(make_layer, input_shape, expected_output_shape, reference=None, batch_size=2,
                   training=True, x=None, seed=0, tol=GRAD_TOL):
    """Check one layer end to end.

    Parameters
    ----------
    make_layer : callable(dtype) -> Layer
    input_shape : per-sample input shape
    expected_output_shape : per-sample output shape
    reference : callable(x, layer) -> ndarray, optional
        The textbook forward pass, given the built float64 layer (for its weights) after its
        forward pass; a random layer's generator is back in the state that forward pass started
        from, so the reference can replay the draws.
    x : input batch (float64), optional; random normal by default. A given ``x`` reaches the
        layer unchanged in the gradient check too (the layer in front starts as the identity).
    """
    gen = np.random.default_rng(seed)
    given_x = x is not None
    if x is None:
        x = gen.standard_normal((batch_size,) + tuple(input_shape))
    layer = make_layer("float64")
    layer.build(tuple(input_shape))
    label = type(layer).__name__
    if getattr(layer, "algorithm", None) == "winograd":
        label += " (Winograd)"
    assert layer.output_shape == tuple(expected_output_shape)
    # Randomise the weights so that gamma=1/bias=0 initial values cannot hide a mistake.
    layer.set_weights([w + gen.uniform(0.5, 1.0, w.shape) * gen.choice([-1, 1], w.shape)
                       if name not in ("moving_variance",) else w + gen.uniform(0.5, 1.0, w.shape)
                       for name, w in zip([n for n in layer.weight_names if layer._has_weight(n)],
                                          layer.get_weights())])
    generator = getattr(layer, "generator", None)  # Dropout and the augmentation layers
    state = generator.bit_generator.state if generator is not None else None
    y = layer(x, training=training)
    assert y.shape == (x.shape[0],) + tuple(expected_output_shape)
    assert y.dtype == np.float64
    if reference is not None:
        if generator is not None:
            generator.bit_generator.state = state
        np.testing.assert_allclose(y, reference(x, layer), rtol=1e-10, atol=1e-10)

    # float32 against float64 (the reference): output, input gradient and every weight gradient of
    # one step in the mode under test, from the same weights. Random layers draw from the same
    # state in both dtypes (see _Float32Draws), so dropout and augmentation are compared in
    # training mode too, where they do something.
    layer32 = make_layer("float32")
    layer32.build(tuple(input_shape))
    layer32.set_weights(layer.get_weights())
    dy = gen.standard_normal(y.shape)
    steps = {}
    for twin, dtype in ((layer, np.float64), (layer32, np.float32)):
        if generator is not None:
            twin.generator = _Float32Draws(state)
        steps[dtype] = training_step(twin, x.astype(dtype), dy.astype(dtype), training)
    if generator is not None:
        layer.generator = generator
    assert steps[np.float32]["output"].dtype == np.float32
    assert steps[np.float32].keys() == steps[np.float64].keys()
    for name, exact in steps[np.float64].items():
        error = relative_error(steps[np.float32][name], exact)
        record_float32_error(label, name, error)
        assert error <= FLOAT32_TOL, f"float32 {name} differs from float64's by {error:.1e} (relative)"

    # Every gradient, inside a stack.
    pre = _pre_layer(input_shape, identity=given_x)
    report = check_layers([pre, layer], x=x, training=training)
    record_error(label, report)
    report.assert_close(tol)

    # Save/load round trip inside a model: same predictions, same weights.
    model = Sequential([make_layer("float32")])
    model.build(tuple(input_shape))
    model.layers[0].set_weights(layer.get_weights())
    return report, model


def roundtrip(model, tmp_path, x):
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = tinycnn.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    return loaded


@pytest.fixture
def check_layer(tmp_path):
    """The harness as a fixture: ``check_layer(make_layer, input_shape, output_shape, reference)``."""

    def run(*args, **kwargs):
        report, model = run_layer_test(*args, **kwargs)
        input_shape = args[1] if len(args) > 1 else kwargs["input_shape"]
        x = np.random.default_rng(1).standard_normal((3,) + tuple(input_shape)).astype(np.float32)
        roundtrip(model, tmp_path, x)
        return report

    return run


@pytest.fixture(autouse=True)
def _seeded():
    tinycnn.set_seed(1234)
    yield


def pytest_report_header(config):
    import numba
    return (f"numba {numba.__version__}, numpy {np.__version__}, "
            f"NUMBA_DISABLE_JIT={os.environ.get('NUMBA_DISABLE_JIT', '0')}")
