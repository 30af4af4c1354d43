"""tinycnn.dask: prediction over dask arrays, and folds and grid searches on a LocalCluster of two
worker processes (loopback, one thread each) giving exactly the numbers of the local run."""
import joblib
import numba
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_limits

import dask.array as da
import tinycnn.dask as tdask
from tinycnn.data import make_lesion_images
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
from tinycnn.sklearn import CNNClassifier, cross_validate_report


def tiny_cnn(input_shape, num_classes, filters=4):
    return Sequential([Conv2D(filters, 3, padding="same", activation="relu", input_shape=input_shape),
                       MaxPooling2D(2), Flatten(), Dense(num_classes, activation="softmax")])


def small(**params):
    return CNNClassifier(tiny_cnn, **{"epochs": 2, "batch_size": 16, "optimizer__learning_rate": 0.01, **params})


@pytest.fixture(scope="module")
def data():
    x, y = make_lesion_images(48, image_size=8, seed=0)
    return x, y


@pytest.fixture(scope="module")
def network(data):
    x, y = data
    return small(random_state=0).fit(x, y).model_


@pytest.fixture(scope="module")
def cluster():
    with tdask.scheduler("local:2") as client:
        yield client


def one_thread(function, *args, **kwargs):
    """Run here with one Numba and one BLAS thread, as each worker does: equal thread counts give
    equal bits."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)
    finally:
        numba.set_num_threads(before)


def test_predict_over_blocks(data, network):
    x, _ = data
    images = da.from_array(x, chunks=(20, 8, 4, 3))  # split along the width too: merged back
    out = tdask.predict(network, images, batch_size=8)
    assert out.shape == (48, 2) and out.chunks == ((20, 20, 8), (2,)) and out.dtype == np.float32
    # Other batch cuts than model.predict's give BLAS other product shapes: equal up to float32 rounding.
    np.testing.assert_allclose(out.compute(), network.predict(x), rtol=1e-5, atol=1e-6)


def test_predict_errors(data, network):
    x, _ = data
    with pytest.raises(TypeError, match="must be a dask.array"):
        tdask.predict(network, x)
    with pytest.raises(ValueError, match=r"takes images of shape \(None, 8, 8, 3\)"):
        tdask.predict(network, da.zeros((4, 8, 8, 1), chunks=2))
    with pytest.raises(TypeError, match="must be a tinycnn model"):
        tdask.predict("model.npz", da.from_array(x))


def test_scheduler_address_errors():
    for address in ("local:0", "local:two", "localhost:8786"):
        with pytest.raises(ValueError, match="scheduler"):
            with tdask.scheduler(address):
                pass


def test_workers_run_one_thread_and_joblib_uses_them(cluster):
    assert set(cluster.run(numba.get_num_threads).values()) == {1}
    assert type(joblib.parallel.get_active_backend()[0]).__name__ == "DaskDistributedBackend"


def test_predict_on_the_cluster_equals_local(cluster, data, network):
    x, _ = data
    out = tdask.predict(network, da.from_array(x, chunks=(16, 8, 8, 3)))
    local = one_thread(out.compute, scheduler="sync")
    np.testing.assert_array_equal(cluster.compute(out).result(), local)


def test_cross_validation_on_the_cluster_equals_local(cluster, data):
    x, y = data
    x_test, y_test = make_lesion_images(16, image_size=8, seed=3)
    kwargs = dict(folds=3, seed=0, X_test=x_test, y_test=y_test, threads=1, verbose=0)
    remote = cross_validate_report(small(), x, y, n_jobs=-1, **kwargs)
    with joblib.parallel_config(backend="sequential"):  # leave the cluster: this process, folds in turn
        local = cross_validate_report(small(), x, y, **kwargs)
    assert [row["roc_auc"] for row in remote.folds] == [row["roc_auc"] for row in local.folds]
    np.testing.assert_array_equal(remote.test_probabilities, local.test_probabilities)


def test_grid_search_on_the_cluster_equals_local(cluster, data):
    x, y = data
    grid = {"model__filters": [2, 4], "optimizer__learning_rate": [0.01, 0.003]}
    remote = GridSearchCV(small(random_state=0), grid, cv=2, scoring="roc_auc", n_jobs=-1).fit(x, y)
    with joblib.parallel_config(backend="sequential"):
        local = one_thread(GridSearchCV(small(random_state=0), grid, cv=2, scoring="roc_auc").fit, x, y)
    np.testing.assert_array_equal(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_
