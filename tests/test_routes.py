"""Every route a convolution can take, checked by finite differences, with the route asserted.

A Conv2D runs one of three implementations (``tinycnn/layers/conv.py``): Im2col (its columns kept
from forward for backward, or rebuilt), Pointwise (1x1) or Winograd (bias and ReLU inside the
output transform, any other activation after it). The plan (``tinycnn/graph.py``) may compute a
following 2x2 max pooling inside a Winograd convolution (``forward_pooled``), and every
implementation may split the batch over threads (``tinycnn/_threads.py``), or, for a lone image, run
it whole (its products on BLAS's threads). Each route is a different piece of code, so each gets its own gradient check:

* ``test_every_route_matches_finite_differences`` (1 and 2 threads, a batch of 4) and
  ``test_one_image_on_two_threads_matches_finite_differences``: ``check_model``
  (float64, central differences, the loss included) on a small network whose convolution takes the
  route. A 1x1 convolution in front has a weight gradient that depends on the tested layer's input
  gradient, so a wrong input adjoint fails too. The route is asserted inside the test, from the
  implementation's class, the kernels it called (shadowed on the instance, the profiler's seam,
  with whether each call ran in a slice of a split) and the plan's steps.
* ``test_float32_gradients_agree_with_float64``: at layer level, every output and gradient of a
  float32 layer against the same layer in float64 (the reference), with a tolerance per route.
  The worst errors are printed at the end of the run; README's accuracy table quotes them.
"""
from types import SimpleNamespace
from typing import NamedTuple, Optional

import numba
import numpy as np
import pytest

from conftest import GRAD_TOL, record_error, record_float32_error, training_step
from tinycnn import _threads
from tinycnn.gradcheck import check_model, relative_error
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.layers import conv
from tinycnn.layers.conv import Im2col, Pointwise, Winograd
from tinycnn.models import Sequential

WINOGRAD_ACTIVATIONS = ["linear", "relu", "tanh", "sigmoid", "softmax"]


class Route(NamedTuple):
    """How to make a Conv2D take one route, and what must then run."""
    conv: dict                   # Conv2D arguments
    algorithm: Optional[str]     # forced after build, or None: the automatic choice
    implementation: type         # the class that must run
    pooled: bool = False         # the plan computes the 2x2 max pooling after it inside it
    keep: Optional[bool] = None  # Im2col: columns kept from forward (True) or rebuilt (False)
    channels: int = 16           # input channels: 16 is Winograd's threshold (WINOGRAD_MIN_CHANNELS)


_3x3 = dict(kernel_size=3, padding="same")
ROUTES = {
    "im2col, kept columns": Route(dict(_3x3, activation="relu"), "im2col", Im2col, keep=True),
    "im2col, rebuilt columns": Route(dict(_3x3, activation="relu"), "im2col", Im2col, keep=False),
    "im2col, stride 2": Route(dict(_3x3, strides=2, activation="relu"), None, Im2col, keep=True),
    "pointwise": Route(dict(kernel_size=1, activation="relu"), None, Pointwise),
    **{f"winograd, {a}": Route(dict(_3x3, activation=a), None, Winograd) for a in WINOGRAD_ACTIVATIONS},
    "winograd forced, few channels": Route(_3x3, "winograd", Winograd, channels=4),
    "winograd + max pool, relu": Route(dict(_3x3, activation="relu"), None, Winograd, pooled=True),
    "winograd + max pool, linear, no bias": Route(dict(_3x3, use_bias=False), None, Winograd, pooled=True),
}


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request, monkeypatch):
    """Set tinycnn's thread count (``_threads.thread_count`` is Numba's, ``numba.set_num_threads``).
    On a machine with fewer cores than asked, Numba refuses more threads than it started with; the
    splits then still run (their slices are Python threads) by overriding ``thread_count`` itself,
    where _threads.py reads it."""
    n = request.param
    if n <= numba.config.NUMBA_NUM_THREADS:
        before = numba.get_num_threads()
        numba.set_num_threads(n)
        request.addfinalizer(lambda: numba.set_num_threads(before))
    else:
        monkeypatch.setattr(_threads, "thread_count", lambda: n)
    assert _threads.thread_count() == n
    return n


def record_kernel_calls(layer):
    """Shadow the implementation's kernels on the instance (as ``bench/bench_layers.py`` does) so
    that every call is recorded as ``(role, split)``, ``split`` True when the call ran in one slice of
    a batch split over threads (``_threads.split_batch``); returns the set that fills up."""
    calls = set()
    implementation = layer.implementation

    def recorded(role, fn):
        def call(*args, **kwargs):
            calls.add((role, getattr(_threads._inside, "active", False)))
            return fn(*args, **kwargs)
        return call

    implementation.kernels = SimpleNamespace(**{role: recorded(role, fn) for role, fn in
                                                vars(type(implementation).kernels).items()})
    return calls


def _build_route(route, dtype, monkeypatch, filters=8, size=(6, 5), widen=1):
    """The Conv2D of ``route``, built on (H, W, ``widen`` x the route's channels) and running the
    route's implementation."""
    r = ROUTES[route]
    if r.keep is False:  # columns rebuilt in backward, as for a layer whose columns are large
        monkeypatch.setattr(conv, "KEEP_COLUMNS_BYTES", 0)
    layer = Conv2D(filters, dtype=dtype, name="tested", **r.conv)
    layer.build(size + (widen * r.channels,))
    if r.algorithm is not None:
        layer.algorithm = r.algorithm
    assert type(layer.implementation) is r.implementation
    return layer


def _randomise(layer, gen):
    """Weights of both signs everywhere: kernels of variance 1 / fan-in (so that pre-activations
    are of order 1: a saturated tanh or softmax has slopes below what finite differences measure),
    biases in [-0.5, 0.5]. Returns them."""
    weights = [gen.uniform(-1, 1, w.shape) * (np.sqrt(3 / np.prod(w.shape[:-1])) if w.ndim > 1 else 0.5)
               for w in layer.get_weights()]
    layer.set_weights(weights)
    return weights


def _finite_differences(route, monkeypatch, batch, size):
    """``check_model`` on front 1x1 conv -> the route's Conv2D (-> 2x2 max pool) -> Dense softmax,
    for a batch of ``batch`` images of ``size``, with the route asserted; returns the
    ``(role, split)`` kernel calls the tested layer made."""
    r = ROUTES[route]
    tested = _build_route(route, "float64", monkeypatch, size=size)
    front = Conv2D(tested.input_shape[2], 1, dtype="float64", name="front", input_shape=size + (3,))
    layers = [front, tested] + ([MaxPooling2D(2, dtype="float64")] if r.pooled else [])
    model = Sequential(layers + [Flatten(dtype="float64"), Dense(3, activation="softmax", dtype="float64")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    assert type(tested.implementation) is r.implementation  # the model kept the route set above
    calls = record_kernel_calls(tested)
    gen = np.random.default_rng(0)
    for layer in model.layers:
        _randomise(layer, gen)
    x = gen.standard_normal((batch,) + size + (3,))
    y = np.eye(3)[gen.integers(0, 3, batch)]

    report = check_model(model, x, y, entries_per_weight=40)
    record_error(f"route: {route}" + (", one image" if batch == 1 else ""), report)
    report.assert_close(GRAD_TOL)

    fused = [step for step in model.plan.steps if step.pool is not None]
    assert [step.layer for step in fused] == ([tested] if r.pooled else []), model.plan.describe()
    if r.implementation is Im2col:
        model.plan.forward([x], training=True)
        assert (tested._kept_cols is not None) == r.keep
    if r.implementation is Winograd:
        inside = tested.activation.name in ("relu", "linear")  # else the layer applies it after the transform
        assert (tested._implementation_epilogue() is not None) == inside
    return calls


def _transforms(route):
    """Winograd's output transform and its adjoint on this route (with or without the pooling)."""
    if ROUTES[route].pooled:
        return "output_transform_pool", "output_pool_adjoint"
    return "output_transform", "output_adjoint"


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_matches_finite_differences(threads, monkeypatch, route):
    r = ROUTES[route]
    # Even output sides where the pooling is to be computed inside the convolution, odd ones
    # elsewhere, so that Winograd's edge tiles (half outside the output) take part.
    calls = _finite_differences(route, monkeypatch, batch=4, size=(6, 6) if r.pooled else (6, 5))

    # 2 threads: the batch split, whose slices run the chunk loops' kernels (Winograd's kernel transform
    # and its adjoint act on the weights, outside the split, the same either way)
    per_slice = {s for role, s in calls if role not in ("kernel_transform", "kernel_adjoint")}
    assert per_slice == {threads > 1}, calls
    roles = {role for role, _ in calls}
    if r.implementation is Winograd:
        assert {"input_transform", *_transforms(route), "input_adjoint", "kernel_adjoint"} <= roles
        assert not {"output_transform", "output_transform_pool"} - {_transforms(route)[0]} & roles
    elif r.implementation is Im2col:
        assert {"im2col", "col2im"} <= roles
    else:
        assert "im2col" not in roles and {"forward_product", "input_product"} <= roles


@pytest.mark.parametrize("threads", [2], indirect=True, ids=["2 threads"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_one_image_on_two_threads_matches_finite_differences(threads, monkeypatch, route):
    """A batch of one image on 2 threads has no batch to split: forward and backward run the
    whole batch in the calling thread (its products on BLAS's threads), no slice of a split."""
    r = ROUTES[route]
    calls = _finite_differences(route, monkeypatch, batch=1, size=(8, 8) if r.pooled else (8, 7))
    forward, adjoint = _transforms(route) if r.implementation is Winograd else ("forward_product", "input_product")
    assert {(forward, False), (adjoint, False)} <= calls and not {split for _, split in calls} - {False}, calls


# --- float32 against float64, layer by layer --------------------------------------------------------

#: Largest relative error (``max|float32 - float64| / max|float64|``) allowed for each of the output,
#: the input gradient and every weight gradient, per route. The layer reads 32 channels of 10x10
#: images (8 for "winograd forced, few channels"), writes 32, batch of 4: a mid-size layer of the
#: reference model.
#: Measured errors are below 8e-7 on every route (printed at the end of the run); Winograd's
#: transforms add a few roundings per value, so its routes get twice the margin of one product.
IM2COL_TOL, WINOGRAD_TOL = 2e-6, 4e-6
FLOAT32_TOL_BY_ROUTE = {route: WINOGRAD_TOL if r.implementation is Winograd else IM2COL_TOL
                        for route, r in ROUTES.items()}


@pytest.mark.parametrize("route", list(ROUTES))
def test_float32_gradients_agree_with_float64(threads, monkeypatch, route):
    r = ROUTES[route]
    gen = np.random.default_rng(1)
    results = {}
    for dtype in ("float64", "float32"):
        layer = _build_route(route, dtype, monkeypatch, filters=32, size=(10, 10), widen=2)
        if r.pooled:
            pool = MaxPooling2D(2, dtype=dtype)
            pool.build(layer.output_shape)
            assert layer.fuses_with(pool)
        if dtype == "float64":  # the same weights and data for both
            weights = _randomise(layer, gen)
            x = gen.standard_normal((4,) + layer.input_shape)
            dy = gen.standard_normal((4,) + (pool.output_shape if r.pooled else layer.output_shape))
        layer.set_weights(weights)
        results[dtype] = training_step(layer, x.astype(dtype), dy.astype(dtype), pooled=r.pooled)
    errors = {name: relative_error(results["float32"][name], reference)
              for name, reference in results["float64"].items()}
    assert {"output", "input gradient", "kernel gradient"} <= set(errors)
    for name, error in errors.items():
        record_float32_error(route, name, error)
    bad = {name: e for name, e in errors.items() if not e <= FLOAT32_TOL_BY_ROUTE[route]}
    assert not bad, f"{route}: float32 against float64 beyond {FLOAT32_TOL_BY_ROUTE[route]:g}: {bad}"
