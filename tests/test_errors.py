"""Bad input gets a clear ValueError/TypeError naming the layer or argument, what was expected and
what came: never a Numba typing error or a silent broadcast."""
import numpy as np
import pytest

import tinycnn
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from tinycnn.models import Sequential


def model(compiled=True, input_shape=(8, 8, 3)):
    m = Sequential([Conv2D(4, 3, activation="relu", input_shape=input_shape, name="conv"), Flatten(),
                    Dense(2, activation="softmax", name="head")])
    if compiled:
        m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return m


X = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
Y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]


@pytest.mark.parametrize("x, message", [
    (np.zeros((4, 8, 8)), r"layer 'conv' \(Conv2D\) must have shape \(None, 8, 8, 3\), received `x` with shape \(4, 8, 8\)"),
    (np.zeros((4, 8, 8, 1)), r"must have shape \(None, 8, 8, 3\).*\(4, 8, 8, 1\)"),
    (np.zeros((4, 9, 8, 3)), r"must have shape \(None, 8, 8, 3\).*\(4, 9, 8, 3\)"),
    (np.zeros((4, 3, 8, 8)), r"\(4, 3, 8, 8\); these look like channels-first \(NCHW\) images.*x.transpose\(0, 2, 3, 1\)"),
    (np.zeros((0, 8, 8, 3)), r"no samples"),
])
def test_wrong_input_shape(x, message):
    with pytest.raises(ValueError, match=message):
        model().fit(x, Y[: len(x)], verbose=0)


def test_non_numeric_input():
    with pytest.raises(TypeError, match=r"`x` must be a real numeric array, received dtype <U1"):
        model().predict(np.full((2, 8, 8, 3), "a"))
    with pytest.raises(TypeError, match="dtype object"):
        model().predict(np.empty((2, 8, 8, 3), dtype=object))


def test_nan_input_names_the_sample():
    x = X.copy()
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf, first in sample 2"):
        model().fit(x, Y, verbose=0)


def test_label_length_mismatch():
    with pytest.raises(ValueError, match=r"`x` has 4 samples but `y` has 3"):
        model().fit(X, Y[:3], verbose=0)


def test_label_width_mismatch():
    with pytest.raises(ValueError, match=r"one-hot targets of shape \(N, 2\).*received shape \(4, 3\)"):
        model().fit(X, np.eye(3)[[0, 1, 2, 0]], verbose=0)


def test_integer_labels_with_categorical_loss_get_a_hint():
    with pytest.raises(ValueError, match="to_categorical.*sparse_categorical_crossentropy"):
        model().fit(X, np.array([0, 1, 0, 1]), verbose=0)


def test_sparse_labels_out_of_range_and_non_integer():
    m = model(compiled=False)
    m.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\).*sample 1 has label 5"):
        m.fit(X, np.array([0, 5, 0, 1]), verbose=0)
    with pytest.raises(TypeError, match="integer class labels"):
        m.fit(X, np.array([0, 0.5, 0, 1]), verbose=0)
    with pytest.raises(TypeError, match="expects integer class labels, received dtype <U1"):
        m.fit(X, np.array(["a", "b", "a", "b"]), verbose=0)


@pytest.mark.parametrize("call", ["fit", "evaluate", "train_on_batch"])
def test_training_or_evaluating_before_compile_is_a_value_error_as_in_keras(call):
    with pytest.raises(ValueError, match=rf"must be compiled first.*before {call}\(\)"):
        getattr(model(compiled=False), call)(X, Y)


def test_predict_on_zero_samples_gives_an_empty_array_and_evaluate_refuses():
    m = model()
    out = m.predict(X[:0])
    assert out.shape == (0,) + m.output_shape[1:] and out.dtype == m.dtype
    with pytest.raises(ValueError, match=r"evaluate: `x` holds no samples"):
        m.evaluate(X[:0], Y[:0], verbose=0)


def test_predict_before_the_input_shape_is_known():
    m = Sequential([Conv2D(2, 3), Flatten(), Dense(2)])
    with pytest.raises(ValueError, match="not built yet"):
        m.summary()
    with pytest.raises(ValueError, match="does not know its input shape"):
        m.build()


@pytest.mark.parametrize("make, message", [
    (lambda: Dropout(1.5), r"Layer 'dropout.*' \(Dropout\): invalid value for argument `rate`: expected a float in \[0, 1\), received 1.5"),
    (lambda: Dropout(1.0), r"`rate`"),
    (lambda: Conv2D(0, 3), r"`filters`: expected a positive int, received 0"),
    (lambda: Conv2D(4, (3, 0)), r"`kernel_size`"),
    (lambda: Conv2D(4, 3, padding="full"), r"`padding`: expected 'valid' or 'same', received 'full'"),
    (lambda: Conv2D(4, 3, activation="gelu"), r"`activation`.*received 'gelu'"),
    (lambda: Dense(-2), r"`units`"),
    (lambda: MaxPooling2D(pool_size=0), r"`pool_size`"),
    (lambda: BatchNormalization(momentum=2), r"`momentum`"),
    (lambda: Conv2D(4, 3, kernel_initializer="fancy"), r"`kernel_initializer`"),
    (lambda: Conv2D(4, 3, dtype="float16"), r"`dtype`"),
    (lambda: Dense(2, units_typo=3), r"unexpected keyword argument"),
    (lambda: tinycnn.optimizers.Adam(learning_rate=0), r"`learning_rate`: expected a float > 0, received 0"),
    (lambda: tinycnn.optimizers.Adam(learning_rate=-1e-3), r"`learning_rate`"),
])
def test_invalid_hyperparameters_fail_at_construction(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_pool_larger_than_input():
    m = Sequential([MaxPooling2D(pool_size=5, input_shape=(4, 4, 1), name="pool")])
    with pytest.raises(ValueError, match=r"Layer 'pool' \(MaxPooling2D\): pool_size \(5, 5\) is larger than the input \(4, 4\)"):
        m.build()


def test_kernel_larger_than_input_and_wrong_rank():
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3\) is larger than the input \(2, 2\)"):
        Sequential([Conv2D(2, 3, input_shape=(2, 2, 1))]).build()
    with pytest.raises(ValueError, match=r"\(Conv2D\): expected input of rank 4 .*received input with shape \(None, 8, 8\)"):
        Sequential([Conv2D(2, 3, input_shape=(8, 8))]).build()


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adadelta", loss="categorical_crossentropy"), r"`optimizer`.*'adadelta'"),  # rmsprop exists now
    (dict(loss="hinge"), r"`loss`.*'hinge'"),
    (dict(loss="categorical_crossentropy", metrics=["f1"]), r"`metrics`.*'f1'"),
    (dict(), r"`loss` is required"),
])
def test_unknown_names_in_compile(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(compiled=False).compile(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), r"`batch_size`: expected a positive int, received 0"),
    (dict(epochs=-1), r"`epochs`"),
    (dict(validation_split=1.5), r"`validation_split`"),
    (dict(class_weight={7: 1.0}), r"`class_weight` key 7"),
    (dict(validation_data=(X, )), r"`validation_data` must be a tuple"),
])
def test_invalid_fit_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model().fit(X, Y, verbose=0, **kwargs)


def test_set_weights_with_wrong_shapes():
    m = model()
    weights = m.get_weights()
    weights[0] = np.zeros((3, 3, 3, 5))
    with pytest.raises(ValueError, match=r"Layer 'conv' \(Conv2D\): weight 'kernel' must have shape \(3, 3, 3, 4\), received \(3, 3, 3, 5\)"):
        m.set_weights(weights)
    with pytest.raises(ValueError, match="has 4 weight arrays, received 1"):
        m.set_weights(weights[:1])


def test_layer_called_directly_checks_its_input():
    layer = Conv2D(2, 3, name="c")
    layer(np.zeros((1, 5, 5, 2)))
    with pytest.raises(ValueError, match=r"Layer 'c' \(Conv2D\): expected input with shape \(None, 5, 5, 2\), received \(1, 5, 5, 3\)"):
        layer(np.zeros((1, 5, 5, 3)))


def test_adding_a_class_instead_of_an_instance():
    with pytest.raises(TypeError, match="forget the parentheses"):
        Sequential([Flatten])


def test_load_refuses_foreign_and_truncated_files(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz: not a tinycnn model file"):
        tinycnn.load_model(foreign)
    m = model()
    good = tmp_path / "good.npz"
    m.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        tinycnn.load_model(truncated)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.npz: not a tinycnn model file"):
        tinycnn.load_model(text)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        tinycnn.load_model(tmp_path / "missing.npz")


def test_load_refuses_classes_outside_the_allow_list(tmp_path):
    import json
    m = model()
    path = tmp_path / "m.npz"
    m.save(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(bytes(arrays["__config__"]))
    config["model"]["layers"][0]["class_name"] = "os.system"
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    evil = tmp_path / "evil.npz"
    np.savez(evil, **arrays)
    with pytest.raises(ValueError, match=r"evil.npz: layer 0 asks for class 'os.system', which is not a tinycnn layer"):
        tinycnn.load_model(evil)


@pytest.mark.parametrize("make, message", [
    (lambda: tinycnn.optimizers.SGD(nesterov="yes"), r"SGD: invalid value for argument `nesterov`: expected a bool"),
    (lambda: BatchNormalization(center="no"), r"`center`: expected a bool, received 'no'"),
    (lambda: tinycnn.losses.CategoricalFocalCrossentropy(gamma=float("inf")), r"`gamma`"),
    (lambda: Dense(2, dtype=[None]), r"`dtype`"),
])
def test_flags_and_numbers_are_checked_not_coerced(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()
