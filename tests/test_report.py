"""The classification report: numbers against scikit-learn, the binary clinical figures, the
printed table, JSON, a real model, and bad input."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

import tinycnn
from tinycnn.layers import Dense
from tinycnn.models import Sequential
from tinycnn.report import ClassificationReport, classification_report, report_from_predictions


def binary_case(n=200, seed=0):
    gen = np.random.default_rng(seed)
    labels = gen.integers(0, 2, n)
    p1 = np.clip(0.35 * labels + 0.65 * gen.random(n), 0, 1)
    return labels, np.column_stack([1 - p1, p1])


def multiclass_case(n=150, k=4, seed=1):
    gen = np.random.default_rng(seed)
    return gen.integers(0, k, n), gen.dirichlet(np.ones(k), n)


def check_against_sklearn(report, labels, predicted, k):
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=np.arange(k),
                                                                     zero_division=0)
    np.testing.assert_allclose(report.precision, precision)
    np.testing.assert_allclose(report.recall, recall)
    np.testing.assert_allclose(report.f1, f1)
    np.testing.assert_array_equal(report.support, support)
    np.testing.assert_array_equal(report.confusion_matrix, confusion_matrix(labels, predicted, labels=np.arange(k)))
    assert report.accuracy == pytest.approx(np.mean(labels == predicted))


def test_binary_report_matches_sklearn_for_every_form_of_y_and_of_the_head():
    labels, probs = binary_case()
    predicted = (probs[:, 1] > 0.5).astype(int)
    for y in (labels, labels[:, None], labels.astype(np.float32), np.eye(2)[labels]):
        for p in (probs, probs[:, 1], probs[:, 1:]):  # softmax rows, or a sigmoid's output
            report = report_from_predictions(y, p)
            check_against_sklearn(report, labels, predicted, 2)
            assert report.roc_auc == pytest.approx(roc_auc_score(labels, probs[:, 1]))
            assert report.sensitivity == pytest.approx(report.recall[1])
            assert report.specificity == pytest.approx(np.mean(predicted[labels == 0] == 0))
            assert report.positive_class == 1 and report.threshold == 0.5 and report.is_binary


def test_positive_class_and_threshold():
    labels, probs = binary_case(seed=2)
    report = report_from_predictions(labels, probs, positive_class=0)
    assert report.sensitivity == pytest.approx(report.recall[0])
    assert report.specificity == pytest.approx(report.recall[1])
    assert report.roc_auc == pytest.approx(roc_auc_score(labels, probs[:, 1]))  # the same either way round
    strict = report_from_predictions(labels, probs, threshold=0.5)
    lenient = report_from_predictions(labels, probs, threshold=0.3)
    assert lenient.sensitivity >= strict.sensitivity and lenient.specificity <= strict.specificity
    check_against_sklearn(lenient, labels, (probs[:, 1] > 0.3).astype(int), 2)


def test_multiclass_report_matches_sklearn():
    labels, probs = multiclass_case()
    report = report_from_predictions(np.eye(4)[labels], probs, class_names=["a", "b", "c", "d"])
    check_against_sklearn(report, labels, np.argmax(probs, axis=1), 4)
    assert report.roc_auc == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert report.sensitivity is None and report.specificity is None and not report.is_binary
    assert report.macro_avg()["recall"] == pytest.approx(report.recall.mean())
    assert report.weighted_avg()["f1"] == pytest.approx(np.average(report.f1, weights=report.support))


def test_one_class_present_gives_nan_auc_and_undefined_specificity():
    report = report_from_predictions(np.ones(12, int), np.full(12, 0.8))
    assert math.isnan(report.roc_auc) and math.isnan(report.specificity) and report.sensitivity == 1.0
    text = str(report)
    assert "n/a (undefined: only one class present)" in text and "n/a (no class 0 samples)" in text
    data = report.to_dict()
    assert data["roc_auc"] is None and data["specificity"] is None
    json.dumps(data, allow_nan=False)


def test_printed_table_is_aligned_and_readable():
    labels, probs = binary_case(seed=3)
    report = report_from_predictions(labels, probs, class_names=["benign", "malignant"])
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "Classification report: 200 samples, 2 classes"
    header = next(i for i, line in enumerate(lines) if line.startswith("class"))
    table = lines[header:header + 3] + [line for line in lines if line.startswith(("macro avg", "weighted avg"))]
    assert len({len(line) for line in table}) == 1  # every column lines up
    assert lines[header].split() == ["class", "precision", "recall", "f1-score", "support"]
    assert lines[header + 1].split()[0] == "benign" and lines[header + 2].split()[0] == "malignant"
    cm = report.confusion_matrix
    assert "Confusion matrix (rows: true class, columns: predicted class)" in text
    assert any(line.split() == ["malignant", str(cm[1, 0]), str(cm[1, 1])] for line in lines)
    assert f"Sensitivity     {report.sensitivity:.3f}  ({cm[1, 1]} of {cm[1].sum()} malignant samples" in text
    assert f"Specificity     {report.specificity:.3f}  ({cm[0, 0]} of {cm[0].sum()} benign samples" in text
    assert ("Positive class  malignant (called positive when its probability > 0.5; chosen because 'benign' names "
            "a negative finding)") in text
    assert f"ROC AUC         {report.roc_auc:.3f}" in text


def test_to_dict_is_json_ready():
    labels, probs = binary_case(seed=4)
    report = report_from_predictions(labels, probs, class_names=["neg", "pos"])
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["n_samples"] == 200 and data["positive_class"] == "pos"
    assert data["classes"]["pos"]["recall"] == pytest.approx(report.sensitivity)
    assert data["classes"]["neg"]["support"] == int(report.support[0])
    assert data["confusion_matrix"]["counts"] == report.confusion_matrix.tolist()
    assert data["confusion_matrix"]["rows"] == "true class"
    assert set(data["macro_avg"]) == {"precision", "recall", "f1"}
    assert "sensitivity" not in report_from_predictions(*multiclass_case()).to_dict()


def test_classification_report_with_a_model_equals_the_report_of_its_predictions():
    tinycnn.set_seed(0)
    gen = np.random.default_rng(5)
    x = gen.standard_normal((40, 4)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int)
    for units, activation, loss in ((2, "softmax", "sparse_categorical_crossentropy"),
                                    (1, "sigmoid", "binary_crossentropy")):
        model = Sequential([Dense(units, activation=activation, input_shape=(4,))])
        model.compile(optimizer="adam", loss=loss)
        model.fit(x, labels if units == 2 else labels.astype(np.float32), epochs=2, verbose=0)
        report = classification_report(model, x, labels, class_names=["healthy", "lesion"], batch_size=8)
        expected = report_from_predictions(labels, model.predict(x), class_names=["healthy", "lesion"])
        assert isinstance(report, ClassificationReport)
        assert report.to_dict() == expected.to_dict()
        assert report.class_names == ["healthy", "lesion"]


@pytest.mark.parametrize("y, p, kwargs, error, message", [
    (np.array([0, 1, 2]), np.full((3, 2), 0.5), {}, ValueError, r"labels must be class indices in \[0, 2\); "
                                                               r"sample 2 has label 2"),
    (np.array([0.0, 0.5]), np.full((2, 2), 0.5), {}, ValueError, "must hold whole numbers"),
    (np.array([0, 1]), np.full((3, 2), 0.5), {}, ValueError, "`y` has 2 samples but the predictions have 3"),
    (np.zeros((2, 3)), np.full((2, 2), 0.5), {}, ValueError, r"one-hot rows \(N, 2\), received shape \(2, 3\)"),
    (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), {}, ValueError, r"probabilities in \[0, 1\]"),
    (np.array([0, 1]), np.array([[0.9, 0.9], [0.5, 0.5]]), {}, ValueError, "row 0 sums to 1.8"),
    (np.array([0, 1]), np.array([[0.9, 0.1], [0.5, 0.5]]), {"positive_class": 2}, ValueError,
     "`positive_class`: expected 0 or 1"),
    (np.array([0, 1]), np.array([[0.9, 0.1], [0.5, 0.5]]), {"threshold": 1.5}, ValueError, "`threshold`"),
    (np.array([0, 1]), np.array([[0.9, 0.1], [0.5, 0.5]]), {"class_names": ["a"]}, ValueError,
     "`class_names` must name the model's 2 classes"),
    (np.array([0, 1]), np.array([[0.9, 0.1], [0.5, 0.5]]), {"class_names": ["a", "a"]}, ValueError,
     "must be distinct"),
    (np.array([0, 1, 2]), np.full((3, 3), 1 / 3), {"threshold": 0.3}, ValueError, "two-class tasks only"),
    (np.array(["a", "b"]), np.full((2, 2), 0.5), {}, TypeError, "integer labels or one-hot rows"),
])
def test_bad_input_is_explained(y, p, kwargs, error, message):
    with pytest.raises(error, match=message):
        report_from_predictions(y, p, **kwargs)


def test_default_positive_class_is_never_the_healthy_one():
    from tinycnn.report import default_positive_class
    labels, probs = binary_case(seed=5)
    # BreastMNIST's order: malignant is label 0. By label order alone, 'benign' would be "positive".
    report = report_from_predictions(labels, probs, class_names=["malignant", "normal or benign"])
    assert report.positive_class == 0 and report.sensitivity == report.recall[0]
    assert report.to_dict()["positive_class_reason"] == "chosen because 'normal or benign' names a negative finding"
    for names, index in ((["Parasitized", "Uninfected"], 0), (["healthy", "lesion"], 1), (["no lesion", "lesion"], 1),
                         (["cat", "dog"], 1)):
        assert default_positive_class(names)[0] == index, names
    assert "by label order" in default_positive_class(["cat", "dog"])[1]
    given = report_from_predictions(labels, probs, class_names=["malignant", "benign"], positive_class=1)
    assert given.positive_class == 1 and given.positive_reason == "given" and "names a negative" not in str(given)
    with pytest.raises(ValueError, match=r"both classes \['normal', 'benign'\] name a negative finding"):
        report_from_predictions(labels, probs, class_names=["normal", "benign"])
