"""Sequential end to end: the reference program, the whole training step's gradients, Keras's API
shapes, saving and continuing, repeatability."""
import io
from contextlib import redirect_stdout

import numpy as np
import pytest

import tinycnn
from conftest import GRAD_TOL, record_error
from tinycnn import losses, optimizers
from tinycnn.callbacks import Callback, History
from tinycnn.gradcheck import check_model
from tinycnn.kernels import reference as R
from tinycnn.layers import (BatchNormalization, Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D, Input,
                            MaxPooling2D, Softmax)
from tinycnn.models import Sequential, load_model


def reference_model(input_shape=(64, 64, 3)):
    """The reference application from the engine issue, unchanged but for its imports."""
    return Sequential([
        Conv2D(filters=32, kernel_size=(3, 3), padding='same', activation='relu', input_shape=input_shape),
        BatchNormalization(),
        Conv2D(filters=64, kernel_size=(3, 3), padding='same', activation='relu'),
        MaxPooling2D(pool_size=(2, 2)),
        BatchNormalization(),
        Conv2D(filters=128, kernel_size=(3, 3), padding='same', activation='relu'),
        MaxPooling2D(pool_size=(2, 2)),
        BatchNormalization(),
        Conv2D(filters=256, kernel_size=(3, 3), padding='same', activation='relu'),
        MaxPooling2D(pool_size=(2, 2)),
        Flatten(),
        Dropout(rate=0.5),
        Dense(units=2, activation='softmax')
    ])


def random_data(n, shape=(64, 64, 3), classes=2, seed=0):
    gen = np.random.default_rng(seed)
    x = gen.random((n,) + shape, dtype=np.float32)
    return x, np.eye(classes, dtype=np.float32)[gen.integers(0, classes, n)]


def test_reference_program_runs_and_prints_keras_style_output():
    X_train, y_train = random_data(24)
    X_val, y_val = random_data(8, seed=1)
    X_test, y_test = random_data(8, seed=2)
    model = reference_model()
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    out = io.StringIO()
    with redirect_stdout(out):
        history = model.fit(X_train, y_train, epochs=2, batch_size=8, validation_data=(X_val, y_val))
        score = model.evaluate(X_test, y_test)
        print('Test accuracy:', score[1])
    text = out.getvalue()
    assert "Epoch 1/2" in text and "Epoch 2/2" in text and "val_accuracy" in text
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in history.history.values())
    assert history.epoch == [0, 1]
    assert isinstance(score, list) and len(score) == 2 and 0 <= score[1] <= 1
    assert np.isfinite(score[0])
    assert model.history is history


def test_reference_model_summary_and_keras_weight_layouts():
    model = reference_model()
    out = io.StringIO()
    with redirect_stdout(out):
        model.summary()
    text = out.getvalue()
    # Parameter counts Keras prints for the same model.
    for fragment in ["conv2d", "(None, 64, 64, 32)", "896", "18,496", "73,856", "295,168", "32,770",
                     "Total params: 422,082", "Trainable params: 421,634", "Non-trainable params: 448"]:
        assert fragment in text, fragment
    shapes = [w.shape for w in model.get_weights()]
    assert shapes[:6] == [(3, 3, 3, 32), (32,), (32,), (32,), (32,), (32,)]  # conv, then BN gamma/beta/mean/var
    assert shapes[-2:] == [(16384, 2), (2,)]
    assert model.count_params() == 422082


def small_model(dtype="float32", head="softmax", classes=3, dropout=0.25):
    layers = [Conv2D(4, 3, padding="same", activation="relu", input_shape=(6, 5, 2), dtype=dtype),
              BatchNormalization(dtype=dtype),
              MaxPooling2D(2, padding="same", dtype=dtype),
              Conv2D(3, 2, strides=2, padding="valid", dtype=dtype),
              Flatten(dtype=dtype),
              Dropout(dropout, seed=3, dtype=dtype)]
    if head == "softmax_layer":
        layers += [Dense(classes, dtype=dtype), Softmax(dtype=dtype)]
    else:
        layers += [Dense(classes, activation=head, dtype=dtype)]
    return Sequential(layers)


TRAINING_STEPS = [
    ("cross-entropy", "softmax", lambda: losses.CategoricalCrossentropy()),
    ("label smoothing", "softmax", lambda: losses.CategoricalCrossentropy(label_smoothing=0.2)),
    ("focal", "softmax", lambda: losses.CategoricalFocalCrossentropy(alpha=[0.2, 0.3, 0.5], gamma=2.0)),
    ("focal + smoothing", "softmax_layer", lambda: losses.CategoricalFocalCrossentropy(label_smoothing=0.1)),
    ("from logits", None, lambda: losses.CategoricalCrossentropy(from_logits=True)),
    ("sparse", "softmax", lambda: losses.SparseCategoricalCrossentropy()),
    ("binary sigmoid", "sigmoid", lambda: losses.BinaryCrossentropy()),
]


@pytest.mark.parametrize("name, head, make_loss", TRAINING_STEPS, ids=[t[0] for t in TRAINING_STEPS])
def test_whole_training_step_gradients(name, head, make_loss):
    """Every parameter gradient of fit's step, loss included (batch norm in training mode, dropout with
    a fixed mask, class weights as sample weights), against finite differences."""
    loss = make_loss()
    classes = 1 if head == "sigmoid" else 3
    model = small_model("float64", head=head, classes=classes)
    model.compile(optimizer="adam", loss=loss)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((4, 6, 5, 2))
    labels = np.array([0, 1, 2, 1]) if classes == 3 else np.array([0, 1, 1, 0])
    y = labels if loss.target_kind == "sparse" else (
        labels[:, None].astype(float) if classes == 1 else np.eye(3)[labels])
    report = check_model(model, x, y, sample_weight=np.array([1.0, 2.0, 0.5, 1.0]))
    record_error(f"model step: {name}", report)
    report.assert_close(GRAD_TOL)


def test_softmax_head_uses_logits_and_matches_unfused_gradient():
    """The fused path (softmax folded into the loss) gives the same gradients as a linear head with
    from_logits=True: the same mathematics, computed without log(0)."""
    x = np.random.default_rng(0).standard_normal((4, 6, 5, 2))
    y = np.eye(3)[[0, 1, 2, 1]]
    grads, fused = [], []
    for head, loss in [("softmax", losses.CategoricalCrossentropy()),
                       (None, losses.CategoricalCrossentropy(from_logits=True))]:
        tinycnn.set_seed(5)
        model = small_model("float64", head=head, dropout=0.0)
        model.compile(loss=loss)
        model.compute_gradients(x, y)
        grads.append([g.copy() for layer in model.layers for g in layer.grads.values()])
        fused.append(model._reads_logits)
    assert fused == [True, False]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_predict_is_independent_of_batch_composition():
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    x, y = random_data(10, (6, 5, 2), 3)
    model.fit(x, y, epochs=1, verbose=0)
    full = model.predict(x, batch_size=10)
    single = np.concatenate([model.predict(x[i:i + 1]) for i in range(10)])
    np.testing.assert_allclose(full, single, rtol=1e-6, atol=1e-7)
    assert full.shape == (10, 3)
    np.testing.assert_allclose(full.sum(axis=1), 1, rtol=1e-6)


def test_fit_options_validation_split_class_weight_and_callbacks():
    events = []

    class Recorder(Callback):
        def on_epoch_end(self, epoch, logs=None):
            events.append((epoch, sorted(logs)))
            if epoch == 1:
                self.model.stop_training = True

    model = small_model()
    model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9, nesterov=True), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = random_data(20, (6, 5, 2), 3)
    history = model.fit(x, y, batch_size=6, epochs=5, validation_split=0.25, class_weight={0: 2.0, 2: 0.5},
                        callbacks=[Recorder()], verbose=0)
    assert [e for e, _ in events] == [0, 1]  # stopped after the second epoch
    assert events[0][1] == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(history.history["loss"]) == 2
    h2 = model.fit(x, y, epochs=1, class_weight="balanced", verbose=0)
    assert isinstance(h2, History)


def test_verbose_2_prints_one_line_per_epoch():
    model = small_model()
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    x, y = random_data(8, (6, 5, 2), 3)
    out = io.StringIO()
    with redirect_stdout(out):
        model.fit(x, y, epochs=2, verbose=2)
        model.fit(x, y, epochs=1, verbose=0)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 4 and lines[0] == "Epoch 1/2" and "loss:" in lines[1] and "accuracy:" in lines[1]


def test_keras_3_input_and_add():
    model = Sequential([Input(shape=(4, 4, 1))])
    model.add(Conv2D(2, 3))
    model.add(GlobalAveragePooling2D())
    model.add(Dense(2, activation="softmax"))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).random((5, 4, 4, 1))
    loss, acc = model.evaluate(x, np.array([0, 1, 1, 0, 1]), verbose=0)
    assert np.isfinite(loss)
    result = model.train_on_batch(x, np.array([0, 1, 1, 0, 1]))
    assert len(result) == 2


def test_model_built_from_first_batch_when_no_input_shape():
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(2, activation="softmax")])
    model.compile(loss="categorical_crossentropy")
    assert not model.built
    model.fit(*random_data(4, (5, 5, 1)), verbose=0)
    assert model.input_shape == (None, 5, 5, 1)


def test_set_weights_round_trip_and_keras_order():
    model = small_model()
    model.build()
    weights = model.get_weights()
    names = [n for layer in model.layers for n in layer.weight_names if layer._has_weight(n)]
    assert names == ["kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance", "kernel", "bias",
                     "kernel", "bias"]
    new = [w + 1 for w in weights]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)


def test_save_load_predicts_exactly_and_continues_training_exactly(tmp_path):
    x, y = random_data(12, (6, 5, 2), 3)
    model = small_model()
    model.compile(optimizer="adam", loss=losses.CategoricalFocalCrossentropy(alpha=[0.3, 0.3, 0.4]),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.optimizer.iterations == model.optimizer.iterations
    assert isinstance(loaded.loss, losses.CategoricalFocalCrossentropy)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    # The dropout masks come from each layer's own generator: give both the same one.
    for a, b in zip(model.layers, loaded.layers):
        if hasattr(a, "generator"):
            a.generator, b.generator = np.random.default_rng(9), np.random.default_rng(9)
    for m in (model, loaded):
        m.train_on_batch(x[:4], y[:4])
        m.train_on_batch(x[4:8], y[4:8])
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".tmp-*")), "atomic save left a temporary file behind"


def test_set_seed_makes_training_repeatable():
    def run():
        tinycnn.set_seed(42)
        model = small_model()
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        x, y = random_data(16, (6, 5, 2), 3)
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        return model.get_weights(), history.history

    (w1, h1), (w2, h2) = run(), run()
    assert h1 == h2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_batchnorm_moving_statistics_follow_keras_update():
    layer = BatchNormalization(momentum=0.9, dtype="float64")
    x = np.random.default_rng(0).standard_normal((8, 3, 3, 2)) * 2 + 1
    layer(x, training=True)
    _, mean, var = R.batchnorm_forward(x, 1.0, 0.0, 1e-3)
    np.testing.assert_allclose(layer.state["moving_mean"], 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.state["moving_variance"], 0.9 + 0.1 * var, rtol=1e-12)


def test_recalibrate_batchnorm_gives_exact_population_statistics():
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    x, y = random_data(30, (6, 5, 2), 3)
    model.fit(x, y, epochs=1, verbose=0)
    model.recalibrate_batchnorm(x, batch_size=7)
    bn = model.layers[1]
    h = model.layers[0].forward(x.astype(np.float32), training=False).reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(bn.state["moving_mean"], h.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.state["moving_variance"], h.var(axis=0), rtol=1e-4, atol=1e-6)


def test_adam_follows_keras_update_rule_for_a_model_parameter():
    model = Sequential([Dense(2, input_shape=(3,), dtype="float64")])
    model.compile(optimizer=optimizers.Adam(learning_rate=0.01), loss=losses.CategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.eye(2)[[0, 1, 1, 0]]
    p = model.layers[0].params["kernel"].copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, 4):
        model.compute_gradients(x, y)
        g = model.layers[0].grads["kernel"].copy()
        model.optimizer.apply(model._trainable())
        p, m, v = R.adam_step(p, g, m, v, t, lr=0.01)
        np.testing.assert_allclose(model.layers[0].params["kernel"], p, rtol=1e-12)


class ListSource:
    """A minimal batch source (the protocol of tinycnn/batching.py), reading from arrays."""

    def __init__(self, x, labels, num_classes):
        self.x, self.labels, self.num_classes = x, labels, num_classes
        self.element_shape = x.shape[1:]
        self.batches_served = 0

    def __len__(self):
        return len(self.x)

    def iter_batches(self, batch_size, shuffle=False, seed=None):
        order = np.random.default_rng(seed).permutation(len(self.x)) if shuffle else np.arange(len(self.x))
        for lo in range(0, len(self.x), batch_size):
            self.batches_served += 1
            idx = order[lo:lo + batch_size]
            yield self.x[idx], self.labels[idx]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_fit_evaluate_predict_accept_a_batch_source(loss):
    """A source streaming batches trains exactly like the same data given as arrays."""
    gen = np.random.default_rng(0)
    x = gen.random((13, 6, 5, 2), dtype=np.float32)
    labels = gen.integers(0, 3, 13)
    y = labels if loss.startswith("sparse") else np.eye(3, dtype=np.float32)[labels]
    results = []
    for use_source in (False, True):
        tinycnn.set_seed(3)
        model = small_model(dropout=0.0)
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        if use_source:
            source = ListSource(x, labels, 3)
            history = model.fit(source, epochs=2, batch_size=4, shuffle=False, class_weight="balanced",
                                validation_data=ListSource(x[:5], labels[:5], 3), verbose=0)
            assert source.batches_served == 2 * 4  # two epochs of 4 batches, read lazily
        else:
            history = model.fit(x, y, epochs=2, batch_size=4, shuffle=False, class_weight="balanced",
                                validation_data=(x[:5], y[:5]), verbose=0)
        model.recalibrate_batchnorm(ListSource(x, labels, 3) if use_source else x, batch_size=13)
        results.append((history.history, model.predict(ListSource(x, labels, 3) if use_source else x),
                        model.evaluate(ListSource(x, labels, 3) if use_source else x,
                                       None if use_source else y, verbose=0)))
    (h1, p1, e1), (h2, p2, e2) = results
    assert h1 == h2
    np.testing.assert_array_equal(p1, p2)
    assert e1 == e2


def test_batch_source_errors():
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    gen = np.random.default_rng(0)
    bad_shape = ListSource(gen.random((4, 5, 5, 2), dtype=np.float32), np.zeros(4, int), 3)
    with pytest.raises(ValueError, match=r"must have shape \(None, 6, 5, 2\), but the batch source yields \(None, 5, 5, 2\)"):
        model.fit(bad_shape, verbose=0)
    good = ListSource(gen.random((4, 6, 5, 2), dtype=np.float32), np.array([0, 1, 7, 0]), 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*label 7"):
        model.fit(good, verbose=0)
    with pytest.raises(ValueError, match="`y` and `sample_weight` must be None"):
        model.fit(good, np.zeros(4), verbose=0)
    with pytest.raises(ValueError, match="validation_split` needs arrays"):
        model.fit(good, validation_split=0.5, verbose=0)


def test_warns_once_when_batchnorm_statistics_are_unsettled(tmp_path):
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    x, y = random_data(8, (6, 5, 2), 3)
    model.fit(x, y, epochs=1, verbose=0)
    with pytest.warns(RuntimeWarning, match=r"batch_normalization.*1 training updates.*recalibrate_batchnorm"):
        model.predict(x)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x)  # once per model
        model.recalibrate_batchnorm(x)
        model.save(tmp_path / "m.npz")
        tinycnn.load_model(tmp_path / "m.npz").predict(x)  # recalibration is remembered across save/load


def test_metric_results_are_computed_per_epoch_unless_a_callback_reads_them():
    from tinycnn.metrics import CategoricalAccuracy

    class Counting(CategoricalAccuracy):
        calls = 0

        def result(self):
            Counting.calls += 1
            return super().result()

    class ReadsBatches(Callback):
        def on_train_batch_end(self, batch, logs=None):
            assert "counting" in logs

    x, y = random_data(12, (6, 5, 2), 3)
    model = small_model()
    model.compile(loss="categorical_crossentropy", metrics=[Counting(name="counting")])
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert Counting.calls == 2  # once per epoch, not once per batch
    Counting.calls = 0
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[ReadsBatches()])
    assert Counting.calls == 2 * 3 + 2


def test_recalibrate_callback_runs_before_each_validation():
    from tinycnn.callbacks import RecalibrateBatchNorm
    seen = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.layers[1].recalibrated)

    x, y = random_data(16, (6, 5, 2), 3)
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unsettled statistics" warning: they were recalibrated
        model.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y), verbose=0,
                  callbacks=[RecalibrateBatchNorm(x, max_samples=10), Spy()])
    assert seen == [True, True]
    # The statistics are exactly those of the first 10 samples, as the network computes them.
    h = model.layers[0].forward(x[:10].astype(np.float32), training=False).reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(model.layers[1].state["moving_mean"], h.mean(axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`max_samples`"):
        RecalibrateBatchNorm(x, max_samples=0)


def test_no_batchnorm_warning_for_untrained_or_given_statistics():
    import warnings
    x, y = random_data(8, (6, 5, 2), 3)
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x)  # untrained: nothing has moved the statistics yet
        model.fit(x, y, epochs=1, verbose=0)
        model.set_weights(model.get_weights())  # statistics given from elsewhere (e.g. Keras)
        model.predict(x)
        model.fit(x, y, epochs=1, verbose=0)    # fine-tuned from there: still no 0/1 left in them
        model.predict(x)


def test_class_weight_weighs_training_samples_only():
    """As Keras: with validation_split, the held-out samples are not class-weighted."""
    x, y = random_data(20, (6, 5, 2), 3)
    histories = []
    for class_weight in (None, {0: 5.0, 1: 0.1, 2: 0.1}):
        tinycnn.set_seed(2)
        model = small_model(dropout=0.0)
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        histories.append(model.fit(x, y, epochs=1, batch_size=20, shuffle=False, validation_split=0.25,
                                   class_weight=class_weight, verbose=0).history)
    assert histories[0]["loss"] != histories[1]["loss"]  # training loss is weighted
    # The validation loss differs only through the (differently) updated weights, not by a factor of
    # the class weights: with plain SGD at 0.01 one step barely moves it.
    assert histories[1]["val_loss"][0] == pytest.approx(histories[0]["val_loss"][0], rel=0.05)


def test_fit_and_evaluate_match_a_folder_to_the_models_class_names(tmp_path):
    # A folder's labels follow its sorted subfolders; the model's follow the order it was trained in.
    from PIL import Image

    from tinycnn.data import image_folder

    def folder(root, classes):
        for name, value in classes.items():
            (root / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((4, 4), value, np.uint8)).save(root / name / f"{i}.png")
        return image_folder(str(root), image_size=(4, 4), color_mode="grayscale")

    model = Sequential([Conv2D(1, 1, input_shape=(4, 4, 1)), GlobalAveragePooling2D(), Dense(2, activation="softmax")])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(folder(tmp_path / "train", {"Parasitized": 255, "Uninfected": 0}), epochs=1, verbose=0)
    assert model.metadata["class_names"] == ["Parasitized", "Uninfected"]        # learnt from the first folder
    model.set_weights([np.ones((1, 1, 1, 1)), np.zeros(1), np.array([[10.0, -10.0]]), np.array([-5.0, 5.0])])
    swapped = folder(tmp_path / "renamed", {"healthy": 0, "parasitized": 255})  # sorts the other way round
    with pytest.raises(ValueError, match=r"do not match the model's classes \['Parasitized', 'Uninfected'\]"):
        model.evaluate(swapped, verbose=0)
    mapped = swapped.with_class_names(model.metadata["class_names"], {"healthy": "Uninfected"})
    assert model.evaluate(mapped, verbose=0, return_dict=True)["accuracy"] == 1.0
    same_names = folder(tmp_path / "lower", {"uninfected": 0, "parasitized": 255})  # matched, case aside
    assert model.evaluate(same_names, verbose=0, return_dict=True)["accuracy"] == 1.0


def test_public_calls_return_copies_that_the_next_call_leaves_alone():
    """Layers reuse their output buffers from one call to the next (``Layer._buffer``); what
    ``predict``, ``model(x)`` and ``layer(x)`` return is the caller's own (README, "How it works")."""
    model = small_model()
    model.compile(loss="categorical_crossentropy")
    x1, _ = random_data(4, (6, 5, 2), 3, seed=1)
    x2, _ = random_data(4, (6, 5, 2), 3, seed=2)
    conv = model.layers[0]
    for name, call in [("predict", model.predict), ("model(x)", model), ("layer(x)", conv),
                       ("layer(x, training=True)", lambda x: conv(x, training=True))]:
        first = call(x1)
        kept = np.array(first, copy=True)
        second = call(x2)
        assert not np.array_equal(np.asarray(second), kept), name  # the second call computed something else
        assert np.array_equal(np.asarray(first), kept), f"{name}: the next call overwrote the first result"


def test_defaults_are_keras():
    """README's list of Keras defaults: padding 'valid', glorot-uniform kernels, zero biases, batch
    norm momentum 0.99 and epsilon 1e-3, Adam 1e-3 / 0.9 / 0.999 / 1e-7, compile's 'rmsprop'."""
    conv, dense, bn = Conv2D(8, 3), Dense(5), BatchNormalization()
    assert conv.get_config()["padding"] == "valid"
    assert (bn.get_config()["momentum"], bn.get_config()["epsilon"]) == (0.99, 1e-3)
    adam = optimizers.get("adam").get_config()
    assert (adam["learning_rate"], adam["beta_1"], adam["beta_2"], adam["epsilon"]) == (1e-3, 0.9, 0.999, 1e-7)
    conv.build((6, 6, 4))
    dense.build((20,))
    for layer, fan_in, fan_out in [(conv, 3 * 3 * 4, 3 * 3 * 8), (dense, 20, 5)]:
        config = layer.get_config()
        assert (config["kernel_initializer"], config["bias_initializer"]) == ("glorot_uniform", "zeros")
        kernel = layer.params["kernel"]
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit  # uniform on [-limit, limit]
        np.testing.assert_array_equal(layer.params["bias"], 0)
    model = Sequential([Dense(2, input_shape=(3,))])
    model.compile(loss="categorical_crossentropy")
    assert isinstance(model.optimizer, optimizers.RMSprop)
