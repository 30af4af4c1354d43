"""Regularizers: Keras's formulas, their gradients by central differences through the whole loss,
configuration and saving, errors."""
import numpy as np
import pytest

import tinycnn
from tinycnn import regularizers
from tinycnn.gradcheck import numerical_gradient
from tinycnn.layers import Conv2D, Dense, Flatten
from tinycnn.models import Sequential, load_model
from tinycnn.regularizers import L1, L1L2, L2

W = np.array([[1.0, -2.0], [0.0, 3.0]])


@pytest.mark.parametrize("regularizer, penalty, gradient", [
    (L1(0.1), 0.1 * 6, 0.1 * np.array([[1.0, -1.0], [0.0, 1.0]])),
    (L2(0.1), 0.1 * 14, 0.2 * W),                                   # no one-half: d/dw (l2 w^2) = 2 l2 w
    (L1L2(l1=0.1, l2=0.01), 0.1 * 6 + 0.01 * 14, 0.1 * np.sign(W) + 0.02 * W),
    (L1L2(), 0.0, np.zeros((2, 2))),
])
def test_penalty_and_gradient_formulas(regularizer, penalty, gradient):
    assert regularizer(W) == pytest.approx(penalty, rel=1e-14)
    grad = np.full_like(W, 0.5)
    regularizer.add_gradient(W, grad)
    np.testing.assert_allclose(grad, 0.5 + gradient, rtol=1e-14)


def test_strings_give_keras_defaults():
    assert regularizers.get("l2").get_config() == {"l2": 0.01}
    assert regularizers.get("L1").get_config() == {"l1": 0.01}
    assert regularizers.get("l1_l2").get_config() == {"l1": 0.0, "l2": 0.0}
    assert regularizers.get(None) is None
    reg = L2(0.003)
    assert regularizers.get(reg) is reg
    rebuilt = regularizers.get(regularizers.serialize(L1L2(0.1, 0.2)))
    assert isinstance(rebuilt, L1L2) and rebuilt.get_config() == {"l1": 0.1, "l2": 0.2}


def regularized_model(dtype="float64"):
    tinycnn.set_seed(0)
    return Sequential([
        Conv2D(2, 3, activation="relu", input_shape=(5, 5, 1), dtype=dtype, name="conv",
               kernel_regularizer=L1L2(0.01, 0.02), bias_regularizer="l2"),
        Flatten(dtype=dtype),
        Dense(2, activation="softmax", dtype=dtype, name="head", kernel_regularizer=L1(0.03)),
    ])


def test_gradients_of_the_whole_loss_by_finite_differences():
    m = regularized_model()
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    gen = np.random.default_rng(0)
    x = gen.standard_normal((4, 5, 5, 1))
    y = np.eye(2)[[0, 1, 1, 0]]
    for layer in m.layers:           # non-zero biases, so the bias penalty has a gradient to check
        for value in layer.params.values():
            value[...] = gen.standard_normal(value.shape)

    def loss():
        return m._loss(m._forward(x, True), y, None)[0] + m._regularization(gradients=False)

    value, _ = m.compute_gradients(x, y)
    assert value == pytest.approx(loss(), rel=1e-12)
    for layer in (m.layers[0], m.layers[2]):
        for name, param in layer.params.items():
            analytic = layer.grads[name].copy()
            numeric = numerical_gradient(loss, param)
            error = np.abs(analytic - numeric).max() / np.abs(numeric).max()
            assert error < 1e-6, (layer.name, name, error)


def test_penalty_is_in_the_reported_loss_and_in_losses():
    x = np.random.default_rng(1).standard_normal((6, 5, 5, 1)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 1, 0]]
    with_reg = regularized_model("float32")
    with_reg.compile(optimizer="sgd", loss="categorical_crossentropy")
    tinycnn.set_seed(0)
    plain = Sequential([Conv2D(2, 3, activation="relu", input_shape=(5, 5, 1), name="conv"), Flatten(),
                        Dense(2, activation="softmax", name="head")])
    plain.compile(optimizer="sgd", loss="categorical_crossentropy")
    plain.set_weights(with_reg.get_weights())
    conv, head = with_reg.layers[0], with_reg.layers[2]
    expected = (0.01 * np.abs(conv.params["kernel"]).sum() + 0.02 * (conv.params["kernel"] ** 2).sum()
                + 0.01 * (conv.params["bias"] ** 2).sum() + 0.03 * np.abs(head.params["kernel"]).sum())
    assert sum(conv.losses + head.losses) == pytest.approx(expected, rel=1e-5)
    assert len(conv.losses) == 2 and len(head.losses) == 1
    assert with_reg.evaluate(x, y, verbose=0) == pytest.approx(plain.evaluate(x, y, verbose=0) + expected, rel=1e-5)


def test_config_and_saved_model_keep_the_regularizers(tmp_path):
    m = regularized_model("float32")
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    config = m.layers[0].get_config()
    assert config["kernel_regularizer"] == {"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.02}}
    assert config["bias_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    assert m.layers[2].get_config()["bias_regularizer"] is None
    m.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    for a, b in zip(m.layers, loaded.layers):
        assert a.get_config() == b.get_config()
    x = np.random.default_rng(2).standard_normal((4, 5, 5, 1)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]
    assert loaded.evaluate(x, y, verbose=0) == m.evaluate(x, y, verbose=0)


@pytest.mark.parametrize("make, message", [
    (lambda: L2(-0.1), "L2: invalid value for argument `l2`: expected a float >= 0, received -0.1"),
    (lambda: L1(float("nan")), "L1: invalid value for argument `l1`"),
    (lambda: Dense(2, kernel_regularizer="l3", name="d"),
     "Layer 'd' (Dense): invalid value for argument `kernel_regularizer`: expected None, 'l1', 'l2', 'l1l2'"),
    (lambda: Conv2D(2, 3, bias_regularizer=0.01, name="c"),
     "Layer 'c' (Conv2D): invalid value for argument `bias_regularizer`"),
    (lambda: Dense(2, kernel_regularizer={"class_name": "L2", "config": {"l3": 1}}, name="d2"),
     "Layer 'd2' (Dense): invalid value for argument `kernel_regularizer`"),
])
def test_bad_regularizers_name_the_layer_and_argument(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value), str(info.value)
