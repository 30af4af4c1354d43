"""Shared test helpers: the one harness every layer goes through.

``run_layer_test`` builds the layer inside a small stack, checks its output shape, its forward pass
against the reference twin (``tinycnn/kernels/reference.py``), every gradient against central finite
differences in float64, and a save/load round trip. The worst gradient error per layer class is
printed at the end of the run (``pytest -s`` not needed).
"""
import os
from collections import defaultdict

import numpy as np
import pytest

import tinycnn
from tinycnn.gradcheck import check_layers
from tinycnn.layers import Conv2D, Dense
from tinycnn.models import Sequential

#: Gradient-check tolerance (relative error, float64, eps = 1e-6). Observed errors are ~1e-9.
GRAD_TOL = 1e-6

_worst = defaultdict(float)


def record_error(label, report):
    _worst[label] = max(_worst[label], report.max_error())


def pytest_terminal_summary(terminalreporter):
    if _worst:
        terminalreporter.section("gradient check: worst relative error per layer / loss")
        for label in sorted(_worst):
            terminalreporter.write_line(f"{label:<40s} {_worst[label]:.2e}   (tolerance {GRAD_TOL:g})")


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Let every 3x3 stride-1 convolution take the Winograd path, however few its channels."""
    from tinycnn.layers import conv
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)


def _pre_layer(input_shape):
    """A small trainable layer in front of the one under test: its own weight gradient depends on
    the tested layer's input gradient, so a wrong or unused backward cannot pass."""
    if len(input_shape) == 3:
        return Conv2D(input_shape[-1], 1, dtype="float64", name="pre_conv")
    return Dense(input_shape[-1], dtype="float64", name="pre_dense")


def run_layer_test(make_layer, input_shape, expected_output_shape, reference=None, batch_size=2,
                   training=True, x=None, seed=0, tol=GRAD_TOL):
    """Check one layer end to end.

    Parameters
    ----------
    make_layer : callable(dtype) -> Layer
    input_shape : per-sample input shape
    expected_output_shape : per-sample output shape
    reference : callable(x, layer) -> ndarray, optional
        The textbook forward pass, given the built float64 layer (for its weights).
    x : input batch (float64), optional; random normal by default.
    """
    gen = np.random.default_rng(seed)
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
    y = layer(x, training=training)
    assert y.shape == (x.shape[0],) + tuple(expected_output_shape)
    assert y.dtype == np.float64
    if reference is not None:
        np.testing.assert_allclose(y, reference(x, layer), rtol=1e-10, atol=1e-10)

    # float32 forward agrees with float64 (the kernels are dtype-generic). Random layers draw
    # different streams per dtype, so they are compared in inference mode.
    layer32 = make_layer("float32")
    layer32.build(tuple(input_shape))
    layer32.set_weights(layer.get_weights())
    mode = training and not hasattr(layer, "generator")
    y64 = layer(x, training=mode)
    y32 = layer32(x.astype(np.float32), training=mode)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)

    # Every gradient, inside a stack.
    pre = _pre_layer(input_shape)
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
