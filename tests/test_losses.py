"""Losses: values against hand formulas, gradients by finite differences, extreme numbers."""
import numpy as np
import pytest

from conftest import GRAD_TOL, record_error
from tinycnn import losses
from tinycnn.gradcheck import check_loss
from tinycnn.kernels import reference as R

GEN = np.random.default_rng(0)
Z = GEN.standard_normal((5, 3)) * 2
Y = np.eye(3)[[0, 1, 2, 1, 0]]
P = R.softmax(Z * 0.5)  # moderate probabilities: finite differences of log p stay accurate


def test_cross_entropy_value_matches_formula():
    loss = losses.CategoricalCrossentropy()
    expected = -np.mean(np.sum(Y * np.log(P), axis=1))
    assert loss(Y, P) == pytest.approx(expected, rel=1e-12)
    assert losses.CategoricalCrossentropy(from_logits=True)(Y, Z) == pytest.approx(
        -np.mean(np.sum(Y * R.log_softmax(Z), axis=1)), rel=1e-12)


def test_label_smoothing_value():
    ls = 0.2
    smoothed = Y * (1 - ls) + ls / 3
    expected = -np.mean(np.sum(smoothed * R.log_softmax(Z), axis=1))
    assert losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ls)(Y, Z) == pytest.approx(expected)


def test_sparse_equals_categorical():
    labels = np.argmax(Y, axis=1)
    assert losses.SparseCategoricalCrossentropy()(labels, P) == pytest.approx(losses.CategoricalCrossentropy()(Y, P))
    assert losses.SparseCategoricalCrossentropy()(labels[:, None], P) == pytest.approx(
        losses.CategoricalCrossentropy()(Y, P))


def test_focal_with_gamma_0_alpha_1_is_cross_entropy():
    focal = losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=0.0, from_logits=True)
    ce = losses.CategoricalCrossentropy(from_logits=True)
    v1, _, g1 = focal.value_and_grad(Y, Z)
    v2, _, g2 = ce.value_and_grad(Y, Z)
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-15)


def test_focal_value_matches_keras_formula():
    # Keras: sum_k -alpha * y_k * (1 - p_k)^gamma * log(p_k), mean over the batch.
    focal = losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0)
    expected = np.mean(np.sum(-0.25 * Y * (1 - P) ** 2 * np.log(P), axis=1))
    assert focal(Y, P) == pytest.approx(expected, rel=1e-10)


def test_perfect_prediction_gives_zero_focal_loss():
    focal = losses.CategoricalFocalCrossentropy(from_logits=True)
    z = np.array([[50.0, -50.0], [-50.0, 50.0]])
    value, per_sample, grad = focal.value_and_grad(np.array([[1.0, 0], [0, 1.0]]), z)
    assert 0.0 <= value < 1e-100
    assert np.abs(grad).max() < 1e-100


ALL_LOSSES = [
    ("cce", losses.CategoricalCrossentropy()),
    ("cce_smooth", losses.CategoricalCrossentropy(label_smoothing=0.1)),
    ("focal", losses.CategoricalFocalCrossentropy()),
    ("focal_per_class_alpha", losses.CategoricalFocalCrossentropy(alpha=[0.2, 0.3, 0.5], gamma=1.5)),
    ("focal_gamma_half_smooth", losses.CategoricalFocalCrossentropy(gamma=0.5, label_smoothing=0.1)),
    ("bce", losses.BinaryCrossentropy()),
    ("bce_smooth", losses.BinaryCrossentropy(label_smoothing=0.2)),
]


@pytest.mark.parametrize("name, loss", ALL_LOSSES, ids=[n for n, _ in ALL_LOSSES])
@pytest.mark.parametrize("from_logits", [True, False])
def test_loss_gradients(name, loss, from_logits):
    binary = isinstance(loss, losses.BinaryCrossentropy)
    y = (GEN.random((5, 3)) > 0.5).astype(float) if binary else Y
    if from_logits:
        pred = Z
    else:
        pred = 1 / (1 + np.exp(-Z * 0.5)) if binary else P
    weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0])
    report = check_loss(loss, pred, y, logits=from_logits, sample_weight=weights)
    record_error(f"loss {name} ({'logits' if from_logits else 'probs'})", report)
    report.assert_close(GRAD_TOL)


@pytest.mark.parametrize("loss", [losses.CategoricalCrossentropy(label_smoothing=0.1),
                                  losses.CategoricalFocalCrossentropy(gamma=2.0),
                                  losses.CategoricalFocalCrossentropy(gamma=0.5)])
def test_extreme_logits_give_finite_loss_and_exact_gradient(loss):
    z = np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0], [3e4, 3e4]])
    y = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    value, per_sample, grad = loss.value_and_grad(y, z, logits=True)
    assert np.isfinite(value) and np.all(np.isfinite(per_sample)) and np.all(np.isfinite(grad))
    if isinstance(loss, losses.CategoricalCrossentropy):
        t = y * 0.9 + 0.05
        p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
        np.testing.assert_allclose(grad, (p - t) / 4, rtol=1e-12, atol=1e-300)
        assert per_sample[0] == pytest.approx(0.95 * 2e4, rel=1e-12)  # -log p of the wrong class
    else:
        # Confident and wrong: (1-p)^gamma = 1, so the loss is alpha * 2e4 and the gradient alpha*(p - y)/N.
        assert per_sample[0] == pytest.approx(0.25 * 2e4, rel=1e-12)
        np.testing.assert_allclose(grad[0], 0.25 * np.array([1.0, -1.0]) / 4, rtol=1e-12)
        # Confident and right: exactly zero.
        assert per_sample[1] == 0 and np.all(grad[1] == 0)


def test_probabilities_of_exactly_zero_and_one_are_clipped_like_keras():
    loss = losses.CategoricalCrossentropy()
    value = loss(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert value == pytest.approx(-np.log(1e-7), rel=1e-6)
    assert loss(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])) == pytest.approx(-np.log(1 - 1e-7))


def test_binary_crossentropy_extreme_logits():
    loss = losses.BinaryCrossentropy(from_logits=True)
    value, per_sample, grad = loss.value_and_grad(np.array([[1.0], [0.0]]), np.array([[-1e4], [-1e4]]))
    assert per_sample.tolist() == [1e4, 0.0]
    np.testing.assert_allclose(grad[:, 0], [-0.5, 0.0])


def test_loss_lookup_by_keras_names():
    assert isinstance(losses.get("categorical_crossentropy"), losses.CategoricalCrossentropy)
    assert isinstance(losses.get("categorical_focal_crossentropy"), losses.CategoricalFocalCrossentropy)
    assert isinstance(losses.get("sparse_categorical_crossentropy"), losses.SparseCategoricalCrossentropy)
    assert isinstance(losses.get("binary_crossentropy"), losses.BinaryCrossentropy)
    with pytest.raises(ValueError, match="Invalid value for argument `loss`.*'mse'"):
        losses.get("mse")


@pytest.mark.parametrize("kwargs, argument", [
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(gamma=-1.0), "gamma"),
    (dict(alpha=[0.5, -0.1]), "alpha"),
])
def test_invalid_loss_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        losses.CategoricalFocalCrossentropy(**kwargs)
