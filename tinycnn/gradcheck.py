"""Gradient checks by central finite differences, in float64.

If ``f`` is a scalar function of an array ``a``, then for every element

    df/da_i  ~=  (f(a + eps e_i) - f(a - eps e_i)) / (2 eps)

with an error of order ``eps^2``. Comparing that with what ``backward`` returns catches almost any
mistake in a derivative. Learners can use it on their own layers:

>>> from tinycnn.gradcheck import check_layers
>>> from tinycnn.layers import Conv2D, BatchNormalization
>>> report = check_layers([Conv2D(4, 3, padding='same'), BatchNormalization()], input_shape=(5, 5, 3))
>>> report.max_error() < 1e-6
True

Layers are checked *inside a stack*: the scalar is ``sum(R * stack(x))`` for a fixed random ``R``, so
each layer's backward receives a non-trivial gradient and an input gradient that nobody uses cannot
pass unnoticed. Layers given in float32 are cloned to float64 (with the same weights) first.
Stochastic layers (Dropout) are replayed with the same random state on every evaluation, so their
mask is fixed.

The error reported for an array is ``max|analytic - numeric| / scale`` with
``scale = max(max|analytic|, max|numeric|, 1e-3 * G)`` and ``G`` the largest gradient entry of the
whole check: a relative error that stays meaningful when some entries are near zero, and that does
not turn rounding noise into a failure for a gradient that is exactly zero (a bias in front of a
batch normalization, for instance).
"""
import numpy as np

from . import rng

DEFAULT_EPS = 1e-6


def numerical_gradient(f, a, eps=DEFAULT_EPS, entries=None):
    """Central-difference gradient of the scalar ``f()`` with respect to ``a``, perturbed in place.

    Parameters
    ----------
    f : callable () -> float
        Reads ``a`` (and anything else) and returns a scalar.
    a : ndarray, float64
        Perturbed element by element and restored.
    entries : array of int, optional
        Flat indices to differentiate (the others stay 0); all of them by default.
    """
    grad = np.zeros(a.shape, dtype=np.float64)
    flat = a.reshape(-1)
    g = grad.reshape(-1)
    for i in (range(flat.size) if entries is None else entries):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return grad


def relative_error(analytic, numeric, floor=0.0):
    """``max|a - n| / max(max|a|, max|n|, floor)`` (0 when all of them are zero)."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), floor)
    if scale == 0:
        return 0.0
    return float(np.abs(analytic - numeric).max() / scale)


def _report(pairs):
    """Errors for ``{name: (analytic, numeric)}``, each floored at 1e-3 of the largest entry."""
    top = max((max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0)) for a, n in pairs.values()),
              default=0.0)
    return GradcheckReport({name: relative_error(a, n, 1e-3 * top) for name, (a, n) in pairs.items()})


class GradcheckReport:
    """Relative errors by name (``'input'``, ``'conv2d/kernel'``, ...)."""

    def __init__(self, errors):
        self.errors = dict(errors)

    def max_error(self):
        return max(self.errors.values(), default=0.0)

    def assert_close(self, tol=1e-6):
        bad = {k: v for k, v in self.errors.items() if not v <= tol}
        if bad:
            raise AssertionError(f"gradient check failed (tolerance {tol:g}): {bad}")
        return self

    def __repr__(self):
        rows = ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())
        return f"GradcheckReport({rows})"


def as_float64(layer):
    """A float64 twin of ``layer`` (same configuration; same weights if it was built)."""
    if layer.dtype == np.float64:
        return layer
    config = dict(layer.get_config(), dtype="float64")
    twin = type(layer).from_config(config)
    if layer.built:
        twin.build(layer.input_shape)
        twin.set_weights(layer.get_weights())
    for attr in ("generator",):
        if hasattr(layer, attr):
            setattr(twin, attr, getattr(layer, attr))
    return twin


def _random_state_keeper(layers):
    """Snapshot every layer generator's state; the returned function restores it."""
    gens = [layer.generator for layer in layers if isinstance(getattr(layer, "generator", None),
                                                               np.random.Generator)]
    states = [g.bit_generator.state for g in gens]

    def restore():
        for g, s in zip(gens, states):
            g.bit_generator.state = s
    return restore


def _compare(analytic, value, objective, eps, sample, pick):
    """``(analytic, numeric)`` gradients of ``objective`` with respect to ``value``: every entry, or
    ``sample`` of them drawn by ``pick`` (then both as flat arrays of those entries)."""
    if sample is None or value.size <= sample:
        return analytic, numerical_gradient(objective, value, eps)
    entries = np.sort(pick.choice(value.size, sample, replace=False))
    numeric = numerical_gradient(objective, value, eps, entries)
    return analytic.reshape(-1)[entries], numeric.reshape(-1)[entries]


def check_layers(layers, input_shape=None, x=None, batch_size=2, training=True, eps=DEFAULT_EPS, seed=0,
                 check_input=True, entries_per_array=None):
    """Check every gradient of a stack of layers against finite differences.

    Parameters
    ----------
    layers : Layer or list of Layer
    input_shape : tuple, optional
        Per-sample input shape; needed unless ``x`` is given.
    x : ndarray (N, ...), optional
        The input batch; random normal of ``batch_size`` samples by default.
    training : bool
        Mode of the forward pass (batch statistics for BatchNormalization, masks for Dropout).
    eps : float
        Finite-difference step.
    check_input : bool
        Also check the gradient with respect to ``x``.
    entries_per_array : int, optional
        Compare only this many entries of the input and of each weight array, drawn at random
        (seeded), as :func:`check_model`'s ``entries_per_weight``.

    Returns
    -------
    GradcheckReport
    """
    if not isinstance(layers, (list, tuple)):
        layers = [layers]
    layers = [as_float64(layer) for layer in layers]
    gen = rng.generator(seed)
    if x is None:
        if input_shape is None:
            raise ValueError("check_layers: give `input_shape` or `x`")
        x = gen.standard_normal((batch_size,) + tuple(input_shape))
    x = np.array(x, dtype=np.float64)
    shape = x.shape[1:]
    for layer in layers:
        if not layer.built:
            layer.build(shape)
        layer.input_grad_needed = True
        shape = layer.output_shape
    restore = _random_state_keeper(layers)

    def forward():
        restore()
        out = x
        for layer in layers:
            out = layer.forward(out, training=training)
        return out

    projection = gen.standard_normal((x.shape[0],) + tuple(shape))

    def objective():
        return float(np.sum(forward() * projection))

    forward()
    grad = projection.copy()
    for layer in reversed(layers):
        grad = layer.backward(grad)
    pick = rng.generator(seed)
    pairs = {}
    if check_input:
        pairs["input"] = _compare(grad, x, objective, eps, entries_per_array, pick)
    analytic = {(layer.name, k): layer.grads[k].copy() for layer in layers for k in layer.params}
    for layer in layers:
        for key, value in layer.params.items():
            pairs[f"{layer.name}/{key}"] = _compare(analytic[(layer.name, key)], value, objective, eps,
                                                    entries_per_array, pick)
    return _report(pairs)


def check_loss(loss, y_pred, y_true, logits=None, sample_weight=None, eps=DEFAULT_EPS):
    """Check ``loss.value_and_grad`` with respect to ``y_pred`` (probabilities or logits)."""
    y_pred = np.array(y_pred, dtype=np.float64)

    def objective():
        return loss.value_and_grad(y_true, y_pred, sample_weight, logits=logits)[0]

    _, _, grad = loss.value_and_grad(y_true, y_pred, sample_weight, logits=logits)
    return _report({"y_pred": (grad, numerical_gradient(objective, y_pred, eps))})


def check_model(model, x, y, sample_weight=None, training=True, eps=DEFAULT_EPS, entries_per_weight=None):
    """Check every parameter gradient of a compiled float64 model, loss (and weight penalties)
    included. ``x`` is an array, or a list of arrays for a model with several inputs.

    ``entries_per_weight=k`` compares only ``k`` entries of each weight array, drawn at random
    (seeded; every array still takes part): a deep network then needs two forward passes per
    sampled entry instead of per parameter (CS231n's sparse gradient check).

    This checks the whole training step as ``fit`` runs it: the softmax folded into the loss, label
    smoothing, focal loss, sample weights. Build the model's layers with ``dtype='float64'``.
    """
    if model.dtype != np.float64:
        raise ValueError("check_model: build the model's layers with dtype='float64' for a gradient check")
    xs = [np.array(a, dtype=np.float64) for a in model._check_inputs(x, "check_model")]
    y = model._check_y(y, xs[0].shape[0], "check_model")
    restore = _random_state_keeper(model.layers)

    def objective():
        restore()
        out = model._forward(xs, training)
        return model.compute_loss(xs, y, out, sample_weight, training)[0]

    restore()
    model.compute_gradients(xs, y, sample_weight, training=training)
    analytic = {(layer.name, k): layer.grads[k].copy() for layer in model.layers for k in layer.params}
    pick = rng.generator(0)
    pairs = {f"{layer.name}/{key}": _compare(analytic[(layer.name, key)], value, objective, eps,
                                             entries_per_weight, pick)
             for layer in model.layers for key, value in layer.params.items()}
    return _report(pairs)
