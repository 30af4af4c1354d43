"""tinycnn.sklearn: CNNClassifier as a scikit-learn estimator, and the cross-validation report.

Two kinds of tests: scikit-learn's own estimator checks (on its generic 2-D data, with a builder
that starts with Dense), and image tests on tiny 8x8 pictures with a tiny convolutional builder.
"""
import json
import pickle
import pickletools

import joblib
import numba
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score, cross_validate
from sklearn.pipeline import FunctionTransformer, Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_info

from tinycnn.callbacks import EarlyStopping
from tinycnn.data import make_lesion_images
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
from tinycnn.sklearn import CNNClassifier, cross_validate_report


class Dense1:
    """Builder of a multinomial logistic regression, what scikit-learn's checks (2-D X) can exercise.
    A class only so that the checks' test ids show its name instead of a function's address."""

    def __call__(self, input_shape, num_classes):
        return Sequential([Dense(num_classes, activation="softmax", input_shape=input_shape)])

    def __repr__(self):
        return "Dense1()"


def tiny_cnn(input_shape, num_classes, filters=4):
    return Sequential([Conv2D(filters, 3, padding="same", activation="relu", input_shape=input_shape),
                       MaxPooling2D(2), Flatten(), Dense(num_classes, activation="softmax")])


# --- scikit-learn's estimator checks -------------------------------------------------------------

#: Checks CNNClassifier cannot pass, and why (scikit-learn's expected-failure list, run strictly:
#: a listed check that starts passing fails the suite, so the list stays true).
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": (
        "mini-batch training: a sample of weight 2 is one term in one batch, a repeated sample two terms in "
        "(usually) two batches, and removing zero-weight samples changes how the shuffled data is cut into "
        "batches; the two fits agree in expectation, not to 1e-7"),
}


@parametrize_with_checks(
    [CNNClassifier(Dense1(), epochs=20, batch_size=16, optimizer__learning_rate=0.05, random_state=0)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS, xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# --- images --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    """64 tiny 8x8 RGB images, two classes named by strings."""
    x, y = make_lesion_images(64, image_size=8, seed=0)
    return x, np.array(["benign", "lesion"])[y]


def small(**params):
    params = {"epochs": 2, "batch_size": 16, "random_state": 0, "optimizer__learning_rate": 0.01, **params}
    return CNNClassifier(tiny_cnn, **params)


def test_fit_predict_with_string_labels(images):
    x, y = images
    clf = small().fit(x, y)
    assert list(clf.classes_) == ["benign", "lesion"]
    probs = clf.predict_proba(x)
    assert probs.shape == (64, 2) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert list(clf.predict(x)) == list(clf.classes_[np.argmax(probs, axis=1)])
    assert clf.score(x, y) == np.mean(clf.predict(x) == y)
    assert clf.input_shape_ == (8, 8, 3) and clf.n_features_in_ == 8
    assert len(clf.history_["loss"]) == 2
    assert clf.model_.layers[0].filters == 4


def test_builder_receives_input_shape_classes_and_seed(images):
    x, y = images
    calls = []

    def builder(input_shape, num_classes, seed):
        calls.append((input_shape, num_classes, seed))
        return tiny_cnn(input_shape, num_classes)

    CNNClassifier(builder, epochs=1, random_state=7).fit(x, y)
    assert calls == [((8, 8, 3), 2, 7)]


def test_routed_parameters_reach_builder_optimizer_and_loss(images):
    x, y = images
    clf = small(model__filters=3, optimizer="sgd", optimizer__momentum=0.5, loss__label_smoothing=0.1).fit(x, y)
    assert clf.model_.layers[0].filters == 3
    config = clf.model_.optimizer.get_config()
    assert type(clf.model_.optimizer).__name__ == "SGD"
    assert (config["learning_rate"], config["momentum"], config["nesterov"]) == (0.01, 0.5, False)
    assert clf.model_.loss.label_smoothing == 0.1
    params = clf.get_params()
    assert params["model__filters"] == 3 and params["optimizer__momentum"] == 0.5
    copy = clone(clf).set_params(model__filters=2)
    assert copy.get_params()["model__filters"] == 2 and clf.get_params()["model__filters"] == 3
    assert "model__filters=3" in repr(clf)


def test_same_random_state_repeats_the_fit_and_restores_global_generators(images):
    x, y = images
    state = np.random.get_state()
    first = small().fit(x, y).predict_proba(x)
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # NumPy's global generator untouched
    np.testing.assert_array_equal(first, small().fit(x, y).predict_proba(x))
    assert not np.array_equal(first, small(random_state=1).fit(x, y).predict_proba(x))


def test_fit_resets_unless_warm_start(images):
    x, y = images
    clf = small().fit(x, y)
    network = clf.model_
    assert clf.fit(x, y).model_ is not network and len(clf.history_["loss"]) == 2
    clf.set_params(warm_start=True)
    network = clf.model_
    before = network.get_weights()[0].copy()
    clf.fit(x, y)
    assert clf.model_ is network and len(clf.history_["loss"]) == 4
    assert not np.array_equal(before, network.get_weights()[0])


def test_partial_fit_one_epoch_at_a_time_with_classes_given_first(images):
    x, y = images
    clf = small()
    first = y == "benign"
    clf.partial_fit(x[first], y[first], classes=["benign", "lesion"])
    assert list(clf.classes_) == ["benign", "lesion"] and len(clf.history_["loss"]) == 1
    network = clf.model_
    clf.partial_fit(x, y)
    assert clf.model_ is network and len(clf.history_["loss"]) == 2
    with pytest.raises(ValueError, match=r"labels \['other'\] not among the classes"):
        clf.partial_fit(x[:2], np.array(["other", "benign"]))
    with pytest.raises(ValueError, match=r"per-sample shape \(8, 8, 3\)"):
        clf.partial_fit(np.zeros((4, 8, 9, 3), np.float32), y[:4])


def test_class_weight_is_keyed_by_label(images):
    x, y = images
    lesion_only = small(epochs=3, class_weight={"benign": 0.0, "lesion": 1.0}).fit(x, y)
    assert set(lesion_only.predict(x)) == {"lesion"}
    with pytest.raises(ValueError, match=r"labels \['tumour'\] that are not classes"):
        small(class_weight={"tumour": 2.0}).fit(x, y)
    small(class_weight="balanced").fit(x, y)


def test_binary_crossentropy_with_one_sigmoid_unit(images):
    x, y = images

    def sigmoid_head(input_shape, num_classes):
        assert num_classes == 1
        return Sequential([Flatten(input_shape=input_shape), Dense(num_classes, activation="sigmoid")])

    clf = CNNClassifier(sigmoid_head, loss="binary_crossentropy", epochs=1, random_state=0).fit(x, y)
    probs = clf.predict_proba(x)
    assert probs.shape == (64, 2)
    np.testing.assert_allclose(probs[:, 0], 1 - probs[:, 1])


def test_a_sequential_instance_is_copied_never_trained(images):
    x, y = images
    template = Sequential([Conv2D(2, 3, input_shape=(8, 8, 3)), Flatten(), Dense(2, activation="softmax")])
    clf = CNNClassifier(template, epochs=1, random_state=0).fit(x, y)
    assert clf.model_ is not clf.model and clf.model_.layers[0] is not template.layers[0]
    assert not template.built
    restored = pickle.loads(pickle.dumps(clf))
    assert isinstance(restored.model, Sequential) and restored.model.layers[0].filters == 2
    np.testing.assert_array_equal(restored.predict_proba(x), clf.predict_proba(x))


def test_pickle_goes_through_the_archive_not_layer_objects(images):
    x, y = images
    clf = small().fit(x, y)
    data = pickle.dumps(clf)
    names = {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    assert "model_" in names
    assert not any(name.startswith("tinycnn.layers") or name in ("tinycnn.model", "Sequential") for name in names)
    restored = pickle.loads(data)
    np.testing.assert_array_equal(restored.predict_proba(x), clf.predict_proba(x))
    assert restored.model_.optimizer.iterations == clf.model_.optimizer.iterations  # can train on exactly
    restored.set_params(warm_start=True).fit(x, y)


def test_joblib_dump_and_load(images, tmp_path):
    x, y = images
    clf = small().fit(x, y)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict(x), clf.predict(x))


def test_callbacks_are_copied_per_fit(images):
    x, y = images
    stop = EarlyStopping(monitor="loss", patience=0)
    clf = small(epochs=3, callbacks=[stop]).fit(x, y)
    assert getattr(stop, "model", None) is None  # the estimator's parameter never saw the network
    assert clf.get_params()["callbacks"] == [stop]


def test_errors_name_the_call_and_the_argument(images):
    x, y = images
    with pytest.raises(ValueError, match="only one class"):
        small().fit(x, np.full(len(x), "lesion"))
    with pytest.raises(ValueError, match=r"model__depth is not an argument of the builder 'tiny_cnn'"):
        small(model__depth=3).fit(x, y)
    with pytest.raises(ValueError, match=r"optimizer__momentum is not an argument of Adam"):
        small(optimizer__momentum=0.9).fit(x, y)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
        CNNClassifier(tiny_cnn, epoch=3).fit(x, y)
    with pytest.raises(ValueError, match=r"outputs shape \(None, 3\).*need \(None, 2\)"):
        CNNClassifier(lambda input_shape: tiny_cnn(input_shape, 3)).fit(x, y)
    with pytest.raises(TypeError, match="must return a tinycnn model"):
        CNNClassifier(lambda: "not a model").fit(x, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        small().fit(x, np.linspace(0, 1, len(x)))
    clf = small().fit(x, y)
    with pytest.raises(ValueError, match=r"per-sample shape \(8, 8, 3\)"):
        clf.predict(np.zeros((2, 8, 4, 3), np.float32))


def test_grid_search_over_routed_parameters(images):
    x, y = images
    search = GridSearchCV(small(epochs=1), {"model__filters": [2, 4], "optimizer__learning_rate": [0.01, 0.003]},
                          cv=2, scoring="roc_auc")
    search.fit(x, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.model_.layers[0].filters == search.best_params_["model__filters"]


def test_pipeline_cross_validation_and_calibration(images):
    x, y = images
    pipe = Pipeline([("scale", FunctionTransformer(lambda a: a * 2.0 - 1.0)), ("cnn", small())])
    scores = cross_val_score(pipe, x, y, cv=2, scoring="roc_auc")
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    results = cross_validate(small(), x, y, cv=2, scoring=["roc_auc", "accuracy"], n_jobs=2)
    assert results["test_roc_auc"].shape == (2,)
    calibrated = CalibratedClassifierCV(small(), cv=2).fit(x, y)
    probs = calibrated.predict_proba(x)
    assert probs.shape == (64, 2) and list(calibrated.classes_) == ["benign", "lesion"]


def test_parallel_folds_in_processes_equal_the_sequential_ones(images):
    """joblib ships the estimator to loky worker processes by pickling it (through the archive)."""
    x, y = images
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    one = cross_val_score(small(), x, y, cv=cv, scoring="roc_auc")
    two = cross_val_score(small(), x, y, cv=cv, scoring="roc_auc", n_jobs=2)
    assert one.shape == (2,)
    np.testing.assert_array_equal(one, two)


# --- cross_validate_report -----------------------------------------------------------------------

def test_cross_validate_report(images, capsys):
    x, y = images
    x_test, labels_test = make_lesion_images(16, image_size=8, seed=5)
    y_test = np.array(["benign", "lesion"])[labels_test]
    report = cross_validate_report(small(), x, y, folds=3, seed=0, X_test=x_test, y_test=y_test,
                                   positive_class="lesion", threads=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fold ")]
    assert len(lines) == 3
    assert [row["fold"] for row in report.folds] == [1, 2, 3]
    assert sum(row["n_held_out"] for row in report.folds) == 64
    assert len({row["seed"] for row in report.folds}) == 3
    aucs = [row["roc_auc"] for row in report.folds]
    assert report.summary["roc_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert report.summary["roc_auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert report.positive_class == "lesion" and report.test.class_names == ["benign", "lesion"]
    assert report.test_probabilities.shape == (16, 2)
    assert all(0 <= row["test_roc_auc"] <= 1 and row["threads"] == 1 for row in report.folds)
    json.dumps(report.to_dict())
    assert "± " in str(report)
    again = cross_validate_report(small(), x, y, folds=3, seed=0, threads=1, verbose=0)
    assert [row["roc_auc"] for row in again.folds] == aucs and again.test is None


def test_cross_validate_report_threads_limit_numba_and_blas(images):
    """``threads=1`` is what a Dask worker runs with: one Numba thread and one BLAS thread (with one
    Numba thread the layers call a threaded BLAS, whose thread count changes its sums)."""
    x, y = images
    seen = []

    def recording_cnn(input_shape, num_classes):
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        seen.append((numba.get_num_threads(), blas))
        return tiny_cnn(input_shape, num_classes)

    before = numba.get_num_threads()
    cross_validate_report(CNNClassifier(recording_cnn, epochs=1), x, y, folds=2, threads=1, verbose=0)
    assert len(seen) == 2 and all(threads == 1 and set(blas) <= {1} for threads, blas in seen)
    assert numba.get_num_threads() == before


def test_cross_validate_report_errors(images):
    x, y = images
    with pytest.raises(ValueError, match="`folds`"):
        cross_validate_report(small(), x, y, folds=1)
    with pytest.raises(ValueError, match="`positive_class` 'tumour'"):
        cross_validate_report(small(), x, y, positive_class="tumour")
    with pytest.raises(ValueError, match="both `X_test` and `y_test`"):
        cross_validate_report(small(), x, y, X_test=x)
    with pytest.raises(ValueError, match="y_test holds labels"):
        cross_validate_report(small(), x, y, folds=2, X_test=x[:2], y_test=["benign", "unknown"], verbose=0)


def residual(input_shape, num_classes):
    from tinycnn.models import resnet
    return resnet(input_shape, num_classes, blocks=(1,), width=4)


def test_a_functional_network_as_builder_or_instance(images):
    # a residual network from the functional API, through the builder and as an instance to copy
    import pickle
    x, y = images
    for model in (residual, residual((8, 8, 3), 2)):
        clf = CNNClassifier(model, epochs=1, batch_size=16, random_state=0).fit(x, y)
        assert clf.predict_proba(x).shape == (64, 2) and set(clf.predict(x)) <= {"benign", "lesion"}
        again = pickle.loads(pickle.dumps(clf))
        np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
