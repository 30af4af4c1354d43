"""Metrics: AUC, precision and recall against scikit-learn, accumulation over batches, sample
weights, undefined cases, name resolution for every kind of target, and a real model."""
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from tinycnn import metrics
from tinycnn.layers import Dense
from tinycnn.models import Sequential

GEN = np.random.default_rng(0)


def softmax_rows(n, k, gen=GEN):
    z = gen.standard_normal((n, k)) * 2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def labels_and_probs(n, k, seed):
    gen = np.random.default_rng(seed)
    labels = gen.integers(0, k, n)
    return labels, softmax_rows(n, k, gen)


def measure(metric, y_true, y_pred, sample_weight=None, batches=1):
    """Feed the data in ``batches`` pieces through one reused output buffer, as ``fit`` does."""
    metric.reset()
    buffer = np.empty_like(y_pred)
    for part in np.array_split(np.arange(len(y_pred)), batches):
        out = buffer[:len(part)]
        out[...] = y_pred[part]
        metric.update(y_true[part], out, None if sample_weight is None else sample_weight[part])
    return metric.result()


# --- AUC --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_auc_binary_softmax_and_sigmoid_match_sklearn(seed):
    labels, probs = labels_and_probs(300, 2, seed)
    expected = roc_auc_score(labels, probs[:, 1])
    assert measure(metrics.AUC(), np.eye(2)[labels], probs) == pytest.approx(expected, abs=1e-12)
    assert measure(metrics.AUC(), labels, probs) == pytest.approx(expected, abs=1e-12)
    sigmoid = probs[:, 1:]
    assert measure(metrics.AUC(target_kind="binary"), labels[:, None].astype(float), sigmoid) == \
        pytest.approx(expected, abs=1e-12)


def test_auc_multiclass_is_sklearn_ovr_macro():
    labels, probs = labels_and_probs(400, 4, 2)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert measure(metrics.AUC(), np.eye(4)[labels], probs) == pytest.approx(expected, abs=1e-12)
    assert measure(metrics.AUC(), labels, probs, batches=7) == pytest.approx(expected, abs=1e-12)


def test_auc_with_sample_weights_matches_sklearn():
    labels, probs = labels_and_probs(250, 2, 3)
    w = GEN.uniform(0, 3, 250)
    expected = roc_auc_score(labels, probs[:, 1], sample_weight=w)
    assert measure(metrics.AUC(), labels, probs, w, batches=5) == pytest.approx(expected, abs=1e-12)
    labels, probs = labels_and_probs(250, 3, 4)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro", sample_weight=w)
    assert measure(metrics.AUC(), labels, probs, w, batches=5) == pytest.approx(expected, abs=1e-12)


def test_auc_multilabel_sigmoid_outputs_are_scored_per_output():
    gen = np.random.default_rng(5)
    y = gen.integers(0, 2, (200, 3)).astype(float)
    p = gen.random((200, 3))
    expected = roc_auc_score(y, p, average="macro")
    assert measure(metrics.AUC(target_kind="binary"), y, p, batches=3) == pytest.approx(expected, abs=1e-12)


def test_auc_accumulated_equals_one_shot_through_a_reused_buffer():
    labels, probs = labels_and_probs(333, 2, 6)
    one_shot = measure(metrics.AUC(), labels, probs, batches=1)
    assert measure(metrics.AUC(), labels, probs, batches=10) == one_shot


def test_auc_one_class_is_nan_without_error_or_warning():
    auc = metrics.AUC()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(measure(auc, np.ones(20, int), softmax_rows(20, 2)))
        assert math.isnan(metrics.AUC().result())  # nothing seen yet
    labels, probs = labels_and_probs(100, 3, 7)
    labels[labels == 2] = 0  # class 2 never occurs: left out of the mean
    present = [roc_auc_score(labels == k, probs[:, k]) for k in (0, 1)]
    assert measure(metrics.AUC(), labels, probs) == pytest.approx(np.mean(present))


def test_auc_reset_forgets():
    auc = metrics.AUC()
    labels, probs = labels_and_probs(50, 2, 8)
    measure(auc, labels, probs)
    auc.reset()
    auc.update(labels[:10], probs[:10])
    assert auc.result() == pytest.approx(roc_auc_score(labels[:10], probs[:10, 1]))


# --- precision and recall ------------------------------------------------------------------------

@pytest.mark.parametrize("cls, sk", [(metrics.Precision, precision_score), (metrics.Recall, recall_score)])
def test_binary_precision_recall_match_sklearn(cls, sk):
    labels, probs = labels_and_probs(300, 2, 9)
    predicted = (probs[:, 1] > 0.5).astype(int)
    assert (predicted == np.argmax(probs, axis=1)).all()  # threshold 0.5 on class 1 is the arg-max
    w = GEN.uniform(0, 2, 300)
    assert measure(cls(), np.eye(2)[labels], probs, batches=4) == pytest.approx(sk(labels, predicted))
    assert measure(cls(), labels, probs, w, batches=4) == pytest.approx(sk(labels, predicted, sample_weight=w))
    sigmoid_out = probs[:, 1:]
    assert measure(cls(target_kind="binary"), labels.astype(float), sigmoid_out) == pytest.approx(sk(labels, predicted))
    low = (probs[:, 1] > 0.3).astype(int)
    assert measure(cls(thresholds=0.3), labels, probs) == pytest.approx(sk(labels, low))


@pytest.mark.parametrize("cls, sk", [(metrics.Precision, precision_score), (metrics.Recall, recall_score)])
def test_multiclass_precision_recall_are_sklearn_macro(cls, sk):
    labels, probs = labels_and_probs(400, 5, 10)
    predicted = np.argmax(probs, axis=1)
    w = GEN.uniform(0, 2, 400)
    assert measure(cls(), labels, probs, batches=6) == pytest.approx(
        sk(labels, predicted, average="macro", zero_division=0))
    assert measure(cls(), np.eye(5)[labels], probs, w, batches=6) == pytest.approx(
        sk(labels, predicted, average="macro", sample_weight=w, zero_division=0))


@pytest.mark.parametrize("cls, sk", [(metrics.Precision, precision_score), (metrics.Recall, recall_score)])
def test_multiclass_absent_class_is_left_out_as_sklearn_does(cls, sk):
    labels, probs = labels_and_probs(60, 4, 11)
    probs[:, 3] = 0.0  # class 3 is never predicted ...
    probs /= probs.sum(axis=1, keepdims=True)
    labels[labels == 3] = 1  # ... and never true
    predicted = np.argmax(probs, axis=1)
    assert measure(cls(), labels, probs) == pytest.approx(sk(labels, predicted, average="macro", zero_division=0))


def test_precision_recall_with_nothing_predicted_positive_is_zero():
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0, 1] * 5)
    assert measure(metrics.Precision(), labels, probs) == 0.0
    assert measure(metrics.Recall(), labels, probs) == 0.0
    assert metrics.Precision().result() == 0.0


def test_metric_arguments_are_validated():
    with pytest.raises(ValueError, match=r"Precision: invalid value for argument `thresholds`: expected one float "
                                         r"in \[0, 1\], received 1.5"):
        metrics.Precision(thresholds=1.5)
    with pytest.raises(ValueError, match="Recall: invalid value for argument `thresholds`"):
        metrics.Recall(thresholds=[0.3, 0.5])
    with pytest.raises(ValueError, match=r"AUC: invalid value for argument `target_kind`"):
        metrics.AUC(target_kind="onehot")
    assert metrics.Precision(thresholds=None).thresholds == 0.5
    with pytest.raises(ValueError, match="`y_true` has 3 samples but `y_pred` has 2"):
        metrics.AUC().update(np.array([0, 1, 1]), softmax_rows(2, 2))


# --- names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["categorical", "sparse", "binary"])
def test_get_resolves_names_for_every_target_kind(kind):
    for name, cls in [("auc", metrics.AUC), ("AUC", metrics.AUC), ("precision", metrics.Precision),
                      ("Precision", metrics.Precision), ("RECALL", metrics.Recall)]:
        metric = metrics.get(name, kind)
        assert isinstance(metric, cls) and metric.target_kind == kind
        assert metric.name == name.lower()
    accuracy = {"categorical": metrics.CategoricalAccuracy, "sparse": metrics.SparseCategoricalAccuracy,
                "binary": metrics.BinaryAccuracy}[kind]
    for name in ("accuracy", "acc", "Accuracy"):
        assert type(metrics.get(name, kind)) is accuracy and metrics.get(name, kind).name == "accuracy"


def test_get_fills_in_target_kind_of_an_instance_and_keeps_an_explicit_one():
    auc = metrics.AUC(name="my_auc")
    assert metrics.get(auc, "binary") is auc and auc.target_kind == "binary"
    recall = metrics.Recall(target_kind="sparse")
    assert metrics.get(recall, "binary").target_kind == "sparse"


def test_get_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"expected one of \['accuracy', .*'auc', 'precision', 'recall'\].*"
                                         r"received 'f2'"):
        metrics.get("f2", "categorical")


# --- through a real model ----------------------------------------------------------------------

def small_data(n, seed, classes=2):
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, 4)).astype(np.float32)
    labels = (x[:, 0] + 0.5 * gen.standard_normal(n) > 0).astype(int) if classes == 2 else gen.integers(0, classes, n)
    return x, labels


@pytest.mark.parametrize("loss, units, activation, target", [
    ("categorical_crossentropy", 2, "softmax", lambda y: np.eye(2, dtype=np.float32)[y]),
    ("sparse_categorical_crossentropy", 2, "softmax", lambda y: y),
    ("binary_crossentropy", 1, "sigmoid", lambda y: y.astype(np.float32)),
])
def test_model_logs_auc_precision_recall_that_match_sklearn(loss, units, activation, target):
    x, labels = small_data(64, 12)
    model = Sequential([Dense(units, activation=activation, input_shape=(4,))])
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy", "AUC", "precision", "recall"])
    history = model.fit(x, target(labels), epochs=1, batch_size=16, verbose=0, validation_data=(x, target(labels)))
    assert {"auc", "precision", "recall", "val_auc", "val_precision", "val_recall"} <= set(history.history)
    result = model.evaluate(x, target(labels), batch_size=16, verbose=0, return_dict=True)
    p1 = model.predict(x)[:, -1]
    predicted = (p1 > 0.5).astype(int)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, p1), abs=1e-6)
    assert result["precision"] == pytest.approx(precision_score(labels, predicted, zero_division=0))
    assert result["recall"] == pytest.approx(recall_score(labels, predicted))
    assert history.history["val_auc"][0] == pytest.approx(result["auc"], abs=1e-6)


def test_model_multiclass_metrics_match_sklearn_macro():
    x, labels = small_data(60, 13, classes=3)
    model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["auc", "precision", "recall"])
    result = model.evaluate(x, labels, batch_size=8, verbose=0, return_dict=True)
    probs = model.predict(x).astype(np.float64)
    predicted = np.argmax(probs, axis=1)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probs / probs.sum(1, keepdims=True),
                                                        multi_class="ovr"), abs=1e-6)
    assert result["precision"] == pytest.approx(precision_score(labels, predicted, average="macro", zero_division=0))
    assert result["recall"] == pytest.approx(recall_score(labels, predicted, average="macro", zero_division=0))


def test_metric_names_survive_save_and_load(tmp_path):
    from tinycnn.models import load_model
    x, labels = small_data(16, 14)
    model = Sequential([Dense(1, activation="sigmoid", input_shape=(4,))])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy", "auc", "precision", "recall"])
    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert [m.name for m in loaded.metrics] == ["accuracy", "auc", "precision", "recall"]
    assert all(m.target_kind == "binary" for m in loaded.metrics[1:])
    assert loaded.evaluate(x, labels, verbose=0) == pytest.approx(model.evaluate(x, labels, verbose=0))
