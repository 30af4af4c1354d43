"""CNNClassifier recomputes the batch-norm statistics from the training images after each fit
(README, "Cross-validation, scikit-learn and Dask"; ``recalibrate_batchnorm=True``, not in Keras),
and leaves them as training left them when asked not to."""
import numpy as np
import pytest

from tinycnn.layers import BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D
from tinycnn.models import Sequential
from tinycnn.sklearn import CNNClassifier


def _network(input_shape, num_classes):
    return Sequential([Conv2D(4, 3, padding="same", activation="relu", input_shape=input_shape),
                       BatchNormalization(), GlobalAveragePooling2D(), Dense(num_classes, activation="softmax")])


@pytest.mark.parametrize("recalibrate", [True, False])
def test_fit_leaves_batchnorm_statistics_of_the_training_images(recalibrate):
    gen = np.random.default_rng(0)
    X = gen.random((20, 6, 6, 1), dtype=np.float32)
    y = np.array(["benign", "malignant"])[np.arange(20) % 2]
    clf = CNNClassifier(model=_network, epochs=1, batch_size=8, random_state=0,
                        recalibrate_batchnorm=recalibrate).fit(X, y)
    bn = clf.model_.layers[1]
    after_fit = [bn.state["moving_mean"].copy(), bn.state["moving_variance"].copy()]
    clf.model_.recalibrate_batchnorm(X, batch_size=8)  # the population statistics of X, computed here
    population = [bn.state["moving_mean"], bn.state["moving_variance"]]
    same = all(np.array_equal(a, b) for a, b in zip(after_fit, population))
    assert same is recalibrate
