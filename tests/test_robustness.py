"""Trustworthy under bad input and extreme numbers.

* Bad input at the entry points (fit / evaluate / predict / train_on_batch): each case gets one
  ValueError or TypeError that names the argument, what is allowed and what came. The cases that
  tests/test_errors.py already covers (wrong rank, channels, size, empty batch, x/y length, one-hot
  width, out-of-range sparse labels, strings) are not repeated here.
* Unscaled uint8/uint16 images: a warning, once per model.
* Big-endian and strided arrays train and predict exactly as their native contiguous copies.
* Extreme numbers: logits of +-1e4 through a whole model, probabilities of exactly 0 and 1, batch
  norm on a batch of one or a constant channel, a run that diverges.
* Repeatability: ``predict`` does not depend on the batch a sample sits in (two training runs in
  fresh processes agreeing bit for bit: tests/test_reproducibility.py).
"""
import math
import warnings

import numpy as np
import pytest

import tinycnn
from conftest import GRAD_TOL
from tinycnn import losses, optimizers
from tinycnn.callbacks import Callback, EarlyStopping, ModelCheckpoint, TerminateOnNaN
from tinycnn.gradcheck import check_layers
from tinycnn.layers import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D,
                            Softmax)
from tinycnn.metrics import AUC
from tinycnn.models import Sequential

X = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
Y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]


def model(loss="categorical_crossentropy", units=2, activation="softmax", metrics=("accuracy",)):
    m = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3), name="conv"), Flatten(),
                    Dense(units, activation=activation, name="head")])
    m.compile(optimizer="adam", loss=loss, metrics=list(metrics))
    return m


# --- bad input: one clear error per case -------------------------------------------------------------

def _nan_at(a, index):
    a = np.array(a, dtype=np.float64)
    a[index] = np.nan
    return a


BAD_FIT_INPUT = [
    # (id, fit keyword arguments, loss, error type, exact message)
    ("complex x", dict(x=X.astype(np.complex64)), "categorical_crossentropy", TypeError,
     "fit: `x` must be a real numeric array, received complex dtype complex64; tinycnn computes with real numbers "
     "only: pass x.real, or np.abs(x) for magnitudes"),
    ("object x", dict(x=X.astype(object)), "categorical_crossentropy", TypeError,
     "fit: `x` must be a real numeric array, received dtype object (an object array: if it holds numbers, convert "
     "it with np.asarray(x, dtype=np.float32))"),
    ("ragged x", dict(x=[X[0], X[1, :4]]), "categorical_crossentropy", ValueError,
     "fit: `x` cannot be read as one array: its samples have different shapes or lengths"),
    ("float64 x beyond float32", dict(x=np.where(np.arange(4)[:, None, None, None] == 2, 1e39, X.astype(np.float64))),
     "categorical_crossentropy", ValueError,
     "fit: `x` holds values beyond the float32 range (|value| > 3.4e+38), first in sample 2; they would become "
     "Inf in the model's float32"),
    ("Inf in x", dict(x=np.where(np.arange(4)[:, None, None, None] == 3, np.inf, X)), "categorical_crossentropy",
     ValueError, "fit: `x` contains NaN or Inf, first in sample 3"),
    ("NaN in y", dict(y=_nan_at(Y, (1, 0))), "categorical_crossentropy", ValueError,
     "fit: `y` contains NaN or Inf, first in sample 1"),
    ("complex y", dict(y=Y.astype(complex)), "categorical_crossentropy", TypeError,
     "fit: loss 'categorical_crossentropy' expects numeric targets, received dtype complex128 (complex numbers "
     "are not targets: pass y.real)"),
    ("object y", dict(y=Y.astype(object)), "categorical_crossentropy", TypeError,
     "fit: loss 'categorical_crossentropy' expects numeric targets, received dtype object"),
    ("y as a scalar", dict(y=1), "categorical_crossentropy", ValueError,
     "fit: `x` has 4 samples but `y` has none (a scalar); they must match"),
    ("one-hot scaled by 255", dict(y=Y * 255), "categorical_crossentropy", ValueError,
     "fit: loss 'categorical_crossentropy' expects targets in [0, 1] (one-hot rows or probabilities); sample 0 of "
     "`y` is [255.   0.]"),
    ("negative targets", dict(y=Y - 0.5), "categorical_crossentropy", ValueError,
     "fit: loss 'categorical_crossentropy' expects targets in [0, 1] (one-hot rows or probabilities); sample 0 of "
     "`y` is [ 0.5 -0.5]"),
    ("rows not summing to 1", dict(y=np.array([[1, 0], [0, 1], [0, 0], [1, 0]])), "categorical_crossentropy",
     ValueError, "fit: loss 'categorical_crossentropy' expects each row of `y` to sum to 1 (one-hot or soft "
     "labels); sample 2 is [0 0], which sums to 0"),
    ("float labels for the sparse loss", dict(y=np.array([0, 1, 1.5, 0])), "sparse_categorical_crossentropy",
     TypeError, "fit: loss 'sparse_categorical_crossentropy' expects integer class labels, received non-integer "
     "values of dtype float64 (sample 2 has label 1.5)"),
    ("NaN label for the sparse loss", dict(y=np.array([0, 1, np.nan, 0])), "sparse_categorical_crossentropy",
     ValueError, "fit: `y` contains NaN or Inf, first in sample 2"),
    ("negative label", dict(y=np.array([0, -1, 1, 0])), "sparse_categorical_crossentropy", ValueError,
     "fit: labels must be in [0, 2) for a model with 2 outputs; sample 1 has label -1"),
    ("complex labels", dict(y=np.array([0, 1, 1, 0]) + 0j), "sparse_categorical_crossentropy", TypeError,
     "fit: loss 'sparse_categorical_crossentropy' expects integer class labels, received dtype complex128"),
    ("string sample weights", dict(sample_weight=np.array(["1", "1", "2", "1"])), "categorical_crossentropy",
     TypeError, "fit: `sample_weight` must be a real numeric array, received dtype <U1"),
    ("complex sample weights", dict(sample_weight=np.ones(4) + 1j), "categorical_crossentropy", TypeError,
     "fit: `sample_weight` must be a real numeric array, received complex dtype complex128"),
    ("NaN sample weight", dict(sample_weight=np.array([1, 1, 1, np.nan])), "categorical_crossentropy", ValueError,
     "fit: `sample_weight` contains NaN or Inf, first in sample 3"),
    ("negative sample weight", dict(sample_weight=np.array([1, -2.0, 1, 1])), "categorical_crossentropy",
     ValueError, "fit: `sample_weight` must be >= 0, sample 1 has weight -2.0"),
    ("sample weights of the wrong length", dict(sample_weight=np.ones(5)), "categorical_crossentropy", ValueError,
     "fit: `sample_weight` must hold one weight per sample, shape (4,), received shape (5,)"),
    ("infinite class weight", dict(class_weight={0: math.inf}), "categorical_crossentropy", ValueError,
     "fit: `class_weight` value for class 0 must be a finite float >= 0, received inf"),
    ("NaN target in validation data", dict(validation_data=(X, _nan_at(Y, (2, 1)))), "categorical_crossentropy",
     ValueError, "fit (validation_data): `y` contains NaN or Inf, first in sample 2"),
]


@pytest.mark.parametrize("kwargs, loss, error, message", [case[1:] for case in BAD_FIT_INPUT],
                         ids=[case[0] for case in BAD_FIT_INPUT])
def test_bad_fit_input_gets_one_clear_error(kwargs, loss, error, message):
    m = model(loss=loss)
    kwargs = {"x": X, "y": Y if loss == "categorical_crossentropy" else np.array([0, 1, 0, 1]), **kwargs}
    with pytest.raises(error) as info:
        m.fit(**kwargs, verbose=0)
    assert str(info.value).startswith(message), str(info.value)


def test_a_single_output_with_categorical_loss_gets_a_hint():
    m = model(units=1)
    with pytest.raises(ValueError, match=r"sample 0 is \[0\.\], which sums to 0 \(a single output cannot hold one-hot "
                                         r"rows: use activation='sigmoid' and loss='binary_crossentropy'\)"):
        m.fit(X, np.array([[0.0], [1.0], [0.0], [1.0]]), verbose=0)


def test_binary_targets_outside_0_1():
    m = model(loss="binary_crossentropy", units=1, activation="sigmoid")
    with pytest.raises(ValueError, match=r"^fit: loss 'binary_crossentropy' expects targets in \[0, 1\] .*sample 1 "
                                         r"of `y` is \[2\]$"):
        m.fit(X, np.array([0, 2, 1, 0]), verbose=0)
    m.fit(X, np.array([0, 1, 1, 0]), verbose=0)  # (N,) 0/1 targets for one output are fine


@pytest.mark.parametrize("entry", ["evaluate", "predict", "train_on_batch", "call"])
def test_every_entry_point_validates_the_same_way(entry):
    m = model()
    bad = X.astype(np.complex128)
    calls = {"evaluate": lambda: m.evaluate(bad, Y, verbose=0), "predict": lambda: m.predict(bad),
             "train_on_batch": lambda: m.train_on_batch(bad, Y), "call": lambda: m(bad)}
    where = "Sequential.__call__" if entry == "call" else entry
    with pytest.raises(TypeError, match=rf"^{where}: `x` must be a real numeric array, received complex dtype "
                                        rf"complex128"):
        calls[entry]()


def test_evaluate_and_train_on_batch_check_targets_and_weights():
    m = model()
    with pytest.raises(ValueError, match=r"^evaluate: `y` contains NaN or Inf, first in sample 3$"):
        m.evaluate(X, _nan_at(Y, (3, 1)), verbose=0)
    with pytest.raises(ValueError, match=r"^train_on_batch: `sample_weight` contains NaN or Inf, first in sample 2$"):
        m.train_on_batch(X, Y, sample_weight=[1, 1, np.inf, 1])


@pytest.mark.parametrize("make, message", [
    (lambda m: m.predict(X, batch_size=0), "predict: invalid value for argument `batch_size`: expected a positive "
                                           "int, received 0"),
    (lambda m: m.predict(X, batch_size=2.0), "predict: invalid value for argument `batch_size`: expected a positive "
                                             "int, received 2.0"),
    (lambda m: m.evaluate(X, Y, batch_size=-1, verbose=0), "evaluate: invalid value for argument `batch_size`: "
                                                           "expected a positive int, received -1"),
    (lambda m: m.fit(X, Y, batch_size=True, verbose=0), "fit: invalid value for argument `batch_size`: expected a "
                                                        "positive int, received True"),
    (lambda m: m.recalibrate_batchnorm(X, batch_size=0), "recalibrate_batchnorm: invalid value for argument "
                                                         "`batch_size`"),
    (lambda m: m.fit(X, Y, epochs=1.5, verbose=0), "fit: invalid value for argument `epochs`: expected an int >= 0, "
                                                   "received 1.5"),
    (lambda m: m.fit(X, Y, validation_split=math.nan, verbose=0), "fit: invalid value for argument "
                                                                  "`validation_split`: expected a float in [0, 1), "
                                                                  "received nan"),
])
def test_invalid_call_arguments(make, message):
    with pytest.raises(ValueError) as info:
        make(model())
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.SGD(learning_rate=0), "SGD: invalid value for argument `learning_rate`: expected a float > 0, "
                                              "received 0"),
    (lambda: optimizers.SGD(learning_rate=-0.1), "SGD: invalid value for argument `learning_rate`"),
    (lambda: optimizers.Adam(learning_rate=math.nan), "Adam: invalid value for argument `learning_rate`: expected a "
                                                      "float > 0, received nan"),
    (lambda: optimizers.Adam(learning_rate=math.inf), "Adam: invalid value for argument `learning_rate`"),
    (lambda: optimizers.Adam(learning_rate="0.001"), "Adam: invalid value for argument `learning_rate`: expected a "
                                                     "float > 0, received '0.001'"),
    (lambda: optimizers.SGD(momentum=1.5), "SGD: invalid value for argument `momentum`: expected a float in [0, 1], "
                                           "received 1.5"),
    (lambda: Dense(2, activation="swish"), "invalid value for argument `activation`: expected None or one of "
                                           "['linear', 'relu', 'sigmoid', 'softmax', 'tanh'], received 'swish'"),
    (lambda: MaxPooling2D(padding="full"), "invalid value for argument `padding`: expected 'valid' or 'same', "
                                           "received 'full'"),
    (lambda: Conv2D(4, 3, strides=0), "invalid value for argument `strides`: expected an int >= 1 or a tuple of 2 "
                                      "such ints, received (0, 0)"),
    (lambda: BatchNormalization(epsilon=0), "invalid value for argument `epsilon`: expected a float > 0, received 0"),
    (lambda: Dropout(math.nan), "invalid value for argument `rate`: expected a float in [0, 1), received nan"),
    (lambda: Sequential([Dense(2, input_shape=(3,))]).compile(optimizer="adadelta", loss="categorical_crossentropy"),
     "Invalid value for argument `optimizer`: expected one of ['adam', 'adamw', 'rmsprop', 'sgd'], a config dict "
     "{'class_name': ..., 'config': {...}} or a tinycnn.optimizers.Optimizer instance, received 'adadelta'"),
    (lambda: Sequential([AveragePooling2D(3, strides=1, input_shape=(2, 5, 1), name="avg")]).build(),
     "Layer 'avg' (AveragePooling2D): pool_size (3, 3) is larger than the input (2, 5) with padding='valid'"),
])
def test_invalid_hyperparameters_name_the_argument(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value), str(info.value)


# --- unscaled images ------------------------------------------------------------------------------

def test_unscaled_uint8_images_warn_once_per_model():
    pixels = (X * 255).astype(np.uint8)
    m = model()
    with pytest.warns(UserWarning) as record:
        m.fit(pixels, Y, verbose=0)
        m.evaluate(pixels, Y, verbose=0)
        m.predict(pixels)
    unscaled = [w for w in record if "unscaled pixels" in str(w.message)]
    assert len(unscaled) == 1
    assert str(unscaled[0].message) == (
        "fit: `x` holds uint8 values (unscaled pixels, 0..255), but the network works best on floats in [0, 1]: "
        "divide by 255 first (x.astype('float32') / 255), or read images with tinycnn.data (load_npz, "
        "image_folder), which scale them. (Shown once per model.)")
    assert unscaled[0].filename == __file__  # points at the caller's line, not into tinycnn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.predict(pixels)  # silent from now on
        model().predict(X)  # and floats never warn
    with pytest.warns(UserWarning, match=r"predict: `x` holds uint16 values \(unscaled pixels, 0..65535\).*divide by "
                                         r"65535"):
        model().predict((X * 65535).astype(np.uint16))


# --- memory layout ----------------------------------------------------------------------------------

def _train(x, y):
    tinycnn.set_seed(11)
    m = Sequential([Conv2D(3, 3, padding="same", activation="relu", input_shape=(8, 8, 3)), BatchNormalization(),
                    MaxPooling2D(), Flatten(), Dropout(0.2), Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = m.fit(x, y, batch_size=2, epochs=2, verbose=0, validation_split=0.25)
    return m.get_weights(), history.history, m.predict(x)


@pytest.mark.filterwarnings("ignore:.*moving statistics:RuntimeWarning")
def test_big_endian_and_strided_arrays_give_exactly_the_native_results():
    gen = np.random.default_rng(3)
    x = gen.random((8, 8, 8, 3), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[gen.integers(0, 2, 8)]
    wide = np.zeros((8, 8, 16, 3), dtype=np.float32)
    wide[:, :, ::2] = x
    variants = {
        "big-endian": (x.astype(">f4"), y.astype(">f4")),
        "strided view": (wide[:, :, ::2], np.repeat(y, 2, axis=1)[:, ::2]),
        "Fortran order": (np.asfortranarray(x), np.asfortranarray(y)),
    }
    assert not variants["strided view"][0].flags.c_contiguous and variants["big-endian"][0].dtype.byteorder == ">"
    weights, history, predictions = _train(x, y)
    for name, (xv, yv) in variants.items():
        w, h, p = _train(xv, yv)
        assert h == history, name
        for a, b in zip(w, weights):
            np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(p, predictions, err_msg=name)


def test_big_endian_labels_and_weights():
    m = model(loss="sparse_categorical_crossentropy")
    labels = np.array([0, 1, 1, 0], dtype=">i8")
    value = m.evaluate(X, labels, sample_weight=np.ones(4, dtype=">f8"), verbose=0)
    assert value == m.evaluate(X, labels.astype(np.int64), verbose=0)


# --- extreme numbers --------------------------------------------------------------------------------

def _head_model(activation="softmax", units=2, dtype="float64", loss="categorical_crossentropy"):
    m = Sequential([Dense(units, activation=activation, input_shape=(2,), dtype=dtype)])
    m.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss=loss, metrics=["accuracy", "auc"])
    return m


def test_logits_of_1e4_through_a_whole_model_give_finite_loss_and_the_exact_gradient():
    # Huge weights drive the logits to +-1e4: softmax is exactly (1, 0) and (0, 1).
    m = _head_model()
    m.set_weights([np.array([[1e4, -1e4], [-1e4, 1e4]]), np.zeros(2)])
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0, 1.0], [0.0, 1.0]])  # sample 0 confidently wrong, sample 1 confidently right
    np.testing.assert_array_equal(m.predict(x), [[1.0, 0.0], [0.0, 1.0]])
    value, _ = m.compute_gradients(x, y)
    assert value == 1e4  # (2e4 + 0) / 2: -log p of the wrong class is the logit gap, not log(1e-7)
    g = (np.array([[1.0, 0.0], [0.0, 1.0]]) - y) / 2  # dL/dz = (p - y) / N, exactly
    head = m.layers[0]
    np.testing.assert_array_equal(head.grads["kernel"], x.T @ g)
    np.testing.assert_array_equal(head.grads["bias"], g.sum(axis=0))
    assert m.evaluate(x, y, verbose=0, return_dict=True)["loss"] == 1e4
    m.train_on_batch(x, y)
    assert all(np.isfinite(w).all() for w in m.get_weights())


def test_all_equal_logits_give_log_2_and_gradient_p_minus_y():
    m = _head_model()
    m.set_weights([np.zeros((2, 2)), np.zeros(2)])
    x = np.array([[3.0, -1.0], [0.5, 2.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    value, out = m.compute_gradients(x, y)
    assert out.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert value == pytest.approx(math.log(2), rel=1e-15)
    np.testing.assert_array_equal(m.layers[0].grads["bias"], [0.0, 0.0])
    np.testing.assert_array_equal(m.layers[0].grads["kernel"], x.T @ ((0.5 - y) / 2))


def test_a_separate_softmax_layer_also_hands_the_loss_its_logits():
    m = Sequential([Dense(2, input_shape=(2,), dtype="float64"), Softmax(dtype="float64")])
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    m.set_weights([np.array([[1e4, -1e4], [-1e4, 1e4]]), np.zeros(2)])
    value, out = m.compute_gradients(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 1.0]]))
    assert out.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert value == 1e4  # from the logits, not -log(1e-7)
    np.testing.assert_array_equal(m.layers[0].grads["bias"], [0.5, -0.5])


@pytest.mark.parametrize("loss, y", [
    (losses.CategoricalCrossentropy(), [[0.0, 1.0], [0.0, 1.0]]),
    (losses.CategoricalFocalCrossentropy(), [[0.0, 1.0], [0.0, 1.0]]),
    (losses.BinaryCrossentropy(), [[0.0, 1.0], [0.0, 1.0]]),
])
def test_probabilities_of_exactly_0_and_1_give_finite_loss_and_gradient(loss, y):
    # Handed probabilities (no logits to fall back on), the losses clip them to [1e-7, 1 - 1e-7]
    # as Keras does: a confidently wrong sample costs -log(1e-7), never log(0).
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    value, per_sample, grad = loss.value_and_grad(np.array(y), p)
    assert np.isfinite(value) and np.isfinite(per_sample).all() and np.isfinite(grad).all()
    assert per_sample[0] > per_sample[1] >= 0
    if isinstance(loss, losses.BinaryCrossentropy):
        assert per_sample[0] == pytest.approx(-math.log(1e-7), rel=1e-6)
    elif isinstance(loss, losses.CategoricalFocalCrossentropy):
        assert per_sample[0] == pytest.approx(-0.25 * (1 - 1e-7) ** 2 * math.log(1e-7), rel=1e-6)
    else:
        assert per_sample[0] == pytest.approx(-math.log(1e-7), rel=1e-6)


@pytest.mark.parametrize("loss", ["binary_crossentropy", "categorical_focal_crossentropy"])
def test_other_heads_at_extreme_logits(loss):
    binary = loss == "binary_crossentropy"
    m = _head_model("sigmoid" if binary else "softmax", 1 if binary else 2, loss=loss)
    m.set_weights([np.array([[1e4], [-1e4]]) if binary else np.array([[1e4, -1e4], [-1e4, 1e4]]),
                   np.zeros(1 if binary else 2)])
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0], [0.0]]) if binary else np.array([[0.0, 1.0], [0.0, 1.0]])
    value, _ = m.compute_gradients(x, y)
    # Sample 0 confidently wrong: 1e4 (binary), alpha * 2e4 (focal, (1 - p)^gamma = 1); sample 1 right: 0.
    assert value == (1e4 / 2 if binary else 0.25 * 2e4 / 2)
    g = np.array([[0.5], [0.0]]) if binary else 0.25 * np.array([[1.0, -1.0], [0.0, 0.0]]) / 2
    np.testing.assert_array_equal(m.layers[0].grads["kernel"], x.T @ g)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", ["batch of one", "constant channel"])
def test_batchnorm_on_a_batch_of_one_or_a_constant_channel(case, training):
    layer = BatchNormalization(dtype="float64", momentum=0.5)
    if case == "batch of one":  # after a Dense layer: one value per channel, variance 0
        x = np.array([[3.0, -2.0, 7.5]])
    else:  # channel 1 constant over the whole batch, the others not
        x = np.random.default_rng(0).standard_normal((3, 4, 4, 3))
        x[..., 1] = 5.0
    layer.build(x.shape[1:])
    layer.set_weights([np.array([2.0, 3.0, 0.5]), np.array([0.1, -0.2, 0.3]),
                       np.array([5.0, 5.0, 5.0]), np.array([0.0, 0.0, 0.0])])  # moving variance 0 too
    y = layer.forward(x, training=training)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    dx = layer.backward(dy)
    for a in (y, dx, layer.grads["gamma"], layer.grads["beta"], *layer.get_weights()):
        assert np.isfinite(a).all()
    if training:
        # A zero-variance channel normalises to 0: its output is beta and, since d var/dx = 0 there,
        # dx = gamma / sqrt(epsilon) * (dy - mean(dy)) (zero for a batch of one).
        flat_y, flat_dx, flat_dy = y.reshape(-1, 3), dx.reshape(-1, 3), dy.reshape(-1, 3)
        zero_var = [0, 1, 2] if case == "batch of one" else [1]
        for k in zero_var:
            np.testing.assert_allclose(flat_y[:, k], [0.1, -0.2, 0.3][k], rtol=0, atol=1e-12)
            expected = [2.0, 3.0, 0.5][k] / math.sqrt(1e-3) * (flat_dy[:, k] - flat_dy[:, k].mean())
            np.testing.assert_allclose(flat_dx[:, k], expected, rtol=1e-12, atol=1e-12)
            assert layer.grads["gamma"][k] == 0.0
    if case == "constant channel":
        check_layers([layer], x=x, training=training).assert_close(GRAD_TOL)


def test_training_with_batches_of_one_and_a_constant_channel_stays_finite():
    m = Sequential([Conv2D(2, 3, padding="same", input_shape=(5, 5, 2)), BatchNormalization(), Flatten(),
                    Dense(4), BatchNormalization(), Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).random((5, 5, 5, 2), dtype=np.float32)
    x[..., 0] = 0.25  # a constant input channel
    y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 1]]
    history = m.fit(x, y, batch_size=1, epochs=2, verbose=0)
    history2 = m.fit(x, y, batch_size=4, epochs=1, verbose=0)  # the last batch holds one sample
    assert np.isfinite(history.history["loss"]).all() and np.isfinite(history2.history["loss"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsettled batch-norm statistics, by design here
        assert np.isfinite(m.predict(x[:1])).all()
    assert all(np.isfinite(w).all() for w in m.get_weights())


# --- a run that diverges --------------------------------------------------------------------------

def _diverging_model(learning_rate):
    """A deep linear stack under plain SGD with a huge step: the weights grow geometrically until
    float32 overflows (a softmax head alone would not: its loss is computed from logits)."""
    tinycnn.set_seed(0)
    m = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(16), Dense(16), Dense(16), Dense(3, activation="softmax")])
    m.compile(optimizer=optimizers.SGD(learning_rate=learning_rate), loss="categorical_crossentropy",
              metrics=["accuracy", "auc", "precision", "recall"])
    gen = np.random.default_rng(0)
    x = gen.random((32, 4, 4, 1), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[gen.integers(0, 3, 32)]
    return m, x, y


class _BatchLosses(Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


def test_terminate_on_nan_stops_at_the_first_non_finite_loss(capsys):
    m, x, y = _diverging_model(1e3)
    seen = _BatchLosses()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = m.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[seen, TerminateOnNaN()])
    first_bad = next(i for i, v in enumerate(seen.losses) if not math.isfinite(v))
    assert first_bad > 0 and len(seen.losses) == first_bad + 1  # nothing ran after it
    assert f"Batch {first_bad}: invalid loss nan, terminating training" in capsys.readouterr().err
    assert len(history.history["loss"]) == 1 and math.isnan(history.history["loss"][0])


def test_divergence_without_the_callback_warns_once_shows_in_history_and_crashes_nothing(tmp_path, capsys):
    m, x, y = _diverging_model(3.0)
    checkpoint = ModelCheckpoint(str(tmp_path / "last.npz"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = m.fit(x, y, batch_size=8, epochs=4, verbose=1, validation_data=(x, y),
                        callbacks=[checkpoint, EarlyStopping(monitor="val_loss", patience=10)])
    ours = [w for w in record if str(w.message).startswith("fit: the loss became")]
    assert len(ours) == 1
    losses = history.history["loss"]
    first_nan = next(i for i, v in enumerate(losses) if not math.isfinite(v))
    assert first_nan >= 1 and all(math.isfinite(v) for v in losses[:first_nan])  # visible: finite, then NaN
    assert f"at epoch {first_nan + 1}, batch" in str(ours[0].message)
    assert all(math.isnan(v) for v in losses[first_nan:]) and len(losses) == 4
    assert math.isnan(history.history["auc"][-1]) and math.isnan(history.history["val_auc"][-1])
    assert "loss: nan" in capsys.readouterr().out
    assert not np.isfinite(tinycnn.load_model(tmp_path / "last.npz").get_weights()[0]).all()  # saved as it is


def test_auc_of_nan_predictions_is_nan_without_raising():
    metric = AUC()
    metric.update(np.eye(2)[[0, 1, 0, 1]], np.array([[0.2, 0.8], [np.nan, np.nan], [0.9, 0.1], [0.3, 0.7]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(metric.result())
    metric.reset()
    metric.update(np.eye(2)[[0, 1]], np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert metric.result() == 1.0


# --- repeatability ----------------------------------------------------------------------------------

def test_predict_gives_a_sample_the_same_output_whatever_batch_it_is_in():
    """Sample 5 alone, first, last, in the middle of batches of several sizes and companions.

    Every layer treats samples independently at inference, and tinycnn's own kernels never mix
    samples in a reduction, so the only possible source of a difference is BLAS choosing another
    blocking for another matrix height. With OpenBLAS the outputs are bit-identical (observed), but
    BLAS does not promise it, so the test allows float32 rounding noise.
    """
    tinycnn.set_seed(5)
    m = Sequential([Conv2D(8, 3, padding="same", activation="relu", input_shape=(10, 10, 3)), BatchNormalization(),
                    MaxPooling2D(), Conv2D(16, 3, activation="relu"), Flatten(), Dropout(0.5), Dense(40),
                    Dense(3, activation="softmax")])
    m.compile(loss="categorical_crossentropy")
    gen = np.random.default_rng(1)
    x = gen.random((40, 10, 10, 3), dtype=np.float32)
    m.fit(x, np.eye(3)[gen.integers(0, 3, 40)], epochs=1, verbose=0)
    m.recalibrate_batchnorm(x)
    alone = m.predict(x[5:6])[0]
    outputs = [m.predict(x[5:6], batch_size=1)[0]]
    for size in (2, 7, 16, 33):
        others = gen.choice(np.delete(np.arange(40), 5), size - 1, replace=False)
        for position in (0, size // 2, size - 1):
            batch = np.insert(x[others], position, x[5], axis=0)
            outputs.append(m.predict(batch, batch_size=size)[position])
            outputs.append(m.predict(batch, batch_size=3)[position])
    for out in outputs:
        np.testing.assert_allclose(out, alone, rtol=1e-6, atol=1e-7)
