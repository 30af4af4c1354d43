"""Callbacks: EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, LearningRateScheduler, SwapEMAWeights,
CSVLogger, TerminateOnNaN.

Each is driven once through a real tiny model and ``fit``, and its rules are pinned down with
made-up logs handed straight to ``on_epoch_end``.
"""
import csv
import math
import os
import warnings

import numpy as np
import pytest

import tinycnn
from tinycnn import callbacks, metrics, optimizers
from tinycnn.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                               ReduceLROnPlateau, SwapEMAWeights, TerminateOnNaN)
from tinycnn.optimizers import schedules
from tinycnn.layers import Dense
from tinycnn.models import Sequential, load_model


# --- a real tiny model whose validation loss gets worse as it learns ------------------------------------

def tiny_model(learning_rate=0.05, seed=0):
    tinycnn.set_seed(seed)
    model = Sequential([Dense(2, activation='softmax', input_shape=(4,))])
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    model.optimizer.learning_rate = learning_rate
    return model


def diverging_data(n=48, seed=0):
    """Training data with a clear rule, and validation data with the labels flipped: the better the
    model learns, the worse its validation loss, so the best epoch is an early one."""
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, 4)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int)
    y = np.eye(2, dtype=np.float32)[labels]
    return x, y, (x, y[:, ::-1].copy())


class WeightRecorder(Callback):
    """Keeps a copy of the weights at every epoch end."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


class FakeOptimizer:
    def __init__(self, learning_rate=0.01):
        self.learning_rate = learning_rate


class FakeModel:
    """Just what the callbacks touch: stop_training, weights, metrics, optimizer, save."""

    def __init__(self, metric_list=()):
        self.stop_training = False
        self.metrics = list(metric_list)
        self.optimizer = FakeOptimizer()
        self.version = 0
        self.saved = []

    def get_weights(self):
        return [np.array([self.version], dtype=float)]

    def set_weights(self, weights):
        self.version = int(weights[0][0])

    def save(self, path):
        self.saved.append(path)
        with open(path, "w") as f:
            f.write(str(self.version))


def drive(callback, values, key="val_loss", model=None, extra=None):
    """Run ``callback`` over made-up epochs whose ``key`` takes ``values``; returns (model, logs list).
    The fake model's weights are the epoch number, so restored weights name their epoch."""
    model = model or FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    all_logs = []
    for epoch, value in enumerate(values):
        model.version = epoch
        logs = {"loss": 1.0, key: value, **(extra or {})}
        callback.on_epoch_end(epoch, logs)
        all_logs.append(logs)
        if model.stop_training:
            break
    callback.on_train_end()
    return model, all_logs


# --- EarlyStopping -------------------------------------------------------------------------------------

def test_early_stopping_stops_after_patience_and_restores_best_weights():
    x, y, val = diverging_data()
    model = tiny_model()
    recorder = WeightRecorder()
    stopper = EarlyStopping(monitor='val_loss', patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=20, batch_size=16, validation_data=val, verbose=0,
                        callbacks=[recorder, stopper])
    val_loss = history.history['val_loss']
    best = int(np.argmin(val_loss))
    assert len(val_loss) == best + 2 + 1 < 20  # stopped `patience` epochs after the best
    assert stopper.stopped_epoch == len(val_loss) - 1 and stopper.best_epoch == best
    assert stopper.best == val_loss[best]
    assert_same_weights(model.get_weights(), recorder.weights[best])
    assert not np.array_equal(model.get_weights()[0], recorder.weights[-1][0])


def test_early_stopping_restores_best_weights_when_epochs_run_out():
    x, y, val = diverging_data(seed=1)
    model = tiny_model()
    recorder = WeightRecorder()
    history = model.fit(x, y, epochs=4, batch_size=16, validation_data=val, verbose=0,
                        callbacks=[recorder, EarlyStopping(patience=50, restore_best_weights=True)])
    assert len(history.epoch) == 4
    assert_same_weights(model.get_weights(), recorder.weights[int(np.argmin(history.history['val_loss']))])


def test_early_stopping_rules_on_fake_logs():
    # patience counts epochs without improvement; min_delta must be beaten, not matched
    model, logs = drive(EarlyStopping(patience=2, min_delta=0.1), [1.0, 0.95, 0.91, 0.5])
    assert len(logs) == 3 and model.stop_training
    model, logs = drive(EarlyStopping(patience=2), [1.0, 0.95, 0.91, 0.9, 0.95, 0.96])
    assert len(logs) == 6 and model.stop_training
    # patience=0 stops at the first epoch that does not improve (never at epoch 0)
    model, logs = drive(EarlyStopping(), [1.0, 0.9, 0.9])
    assert len(logs) == 3 and model.stop_training
    # start_from_epoch: the warm-up epochs are not watched
    model, logs = drive(EarlyStopping(patience=1, start_from_epoch=3), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert len(logs) == 5
    # baseline: improving on the best is not enough, it must beat the baseline
    model, logs = drive(EarlyStopping(patience=2, baseline=0.5), [1.0, 0.9, 0.8, 0.7])
    assert len(logs) == 2 and model.stop_training
    model, logs = drive(EarlyStopping(patience=2, baseline=0.5), [1.0, 0.4, 0.45, 0.42, 0.41])
    assert len(logs) == 4


def test_early_stopping_auto_mode_maximises_accuracy_auc_precision_recall():
    for key in ("val_accuracy", "val_auc", "precision", "val_recall", "acc"):
        model, logs = drive(EarlyStopping(monitor=key, patience=1, restore_best_weights=True),
                            [0.5, 0.7, 0.6, 0.65], key=key)
        assert len(logs) == 3 and model.version == 1, key
    model, logs = drive(EarlyStopping(monitor="val_dice", mode="max", patience=1), [0.5, 0.7, 0.6], key="val_dice")
    assert len(logs) == 3
    # a metric's own direction wins over its name
    lower_is_better = metrics.CategoricalAccuracy(name="error_rate_acc")
    lower_is_better.direction = "down"
    model, logs = drive(EarlyStopping(monitor="val_error_rate_acc", patience=1), [0.5, 0.4, 0.45],
                        key="val_error_rate_acc", model=FakeModel([lower_is_better]))
    assert len(logs) == 3 and model.stop_training
    assert callbacks.resolve_mode("auto", "val_loss") == "min"
    assert callbacks.resolve_mode("auto", "val_mean_squared_error") == "min"


def test_early_stopping_restores_best_and_reports_when_verbose(capsys):
    model, logs = drive(EarlyStopping(patience=2, restore_best_weights=True, verbose=1), [1.0, 0.5, 0.7, 0.8, 0.1])
    assert len(logs) == 4 and model.version == 1
    out = capsys.readouterr().out
    assert "Epoch 4: early stopping" in out and "best epoch: 2." in out


def test_early_stopping_missing_monitor_warns_once_and_does_not_stop():
    stopper = EarlyStopping(monitor="val_loss", patience=0)
    model = FakeModel()
    stopper.set_model(model)
    stopper.on_train_begin()
    with pytest.warns(UserWarning, match=r"`val_loss` which is not available\. Available metrics are: loss, "
                                         r"accuracy \(no validation metrics: pass `validation_data=`") as record:
        for epoch in range(4):
            stopper.on_epoch_end(epoch, {"loss": 1.0 + epoch, "accuracy": 0.5})
    assert len(record) == 1 and not model.stop_training


def test_early_stopping_missing_monitor_in_a_real_fit_warns_once():
    x, y, _ = diverging_data()
    with pytest.warns(UserWarning, match="val_loss") as record:
        history = tiny_model().fit(x, y, epochs=3, verbose=0, callbacks=[EarlyStopping(restore_best_weights=True)])
    assert len(history.epoch) == 3
    assert len([w for w in record if "val_loss" in str(w.message)]) == 1


def test_early_stopping_can_be_reused():
    stopper = EarlyStopping(patience=1)
    drive(stopper, [1.0, 2.0])
    model, logs = drive(stopper, [5.0, 4.0, 3.0])
    assert len(logs) == 3 and not model.stop_training and stopper.best == 3.0


# --- ModelCheckpoint -----------------------------------------------------------------------------------

def test_model_checkpoint_formats_names_and_saves_every_epoch(tmp_path):
    x, y, val = diverging_data()
    model = tiny_model()
    pattern = str(tmp_path / "ckpt" / "model-{epoch:02d}-{val_loss:.3f}.npz")  # the folder is created
    history = model.fit(x, y, epochs=3, batch_size=16, validation_data=val, verbose=0,
                        callbacks=[ModelCheckpoint(pattern)])
    expected = sorted(f"model-{e + 1:02d}-{v:.3f}.npz" for e, v in enumerate(history.history['val_loss']))
    assert sorted(os.listdir(tmp_path / "ckpt")) == expected
    last = load_model(tmp_path / "ckpt" / expected[-1])
    assert_same_weights(last.get_weights(), model.get_weights())


def test_model_checkpoint_save_best_only_saves_on_improvement(tmp_path):
    x, y, val = diverging_data()
    model = tiny_model()
    recorder = WeightRecorder()
    path = tmp_path / "best.npz"
    history = model.fit(x, y, epochs=4, batch_size=16, validation_data=val, verbose=0,
                        callbacks=[recorder, ModelCheckpoint(path, save_best_only=True)])
    best = int(np.argmin(history.history['val_loss']))
    assert_same_weights(load_model(path).get_weights(), recorder.weights[best])

    checkpoint = ModelCheckpoint(str(tmp_path / "e{epoch}.txt"), monitor="val_loss", save_best_only=True)
    fake, _ = drive(checkpoint, [1.0, 0.8, 0.9, 0.8, 0.7])
    assert fake.saved == [str(tmp_path / f"e{e}.txt") for e in (1, 2, 5)]
    # the best value survives into the next fit: a worse model does not overwrite a better one
    fake, _ = drive(checkpoint, [0.75, 0.6])
    assert fake.saved == [str(tmp_path / "e2.txt")]


def test_model_checkpoint_modes_and_threshold(tmp_path):
    fake, _ = drive(ModelCheckpoint(str(tmp_path / "a{epoch}"), monitor="val_auc", save_best_only=True),
                    [0.6, 0.7, 0.65, 0.8], key="val_auc")
    assert [os.path.basename(p) for p in fake.saved] == ["a1", "a2", "a4"]
    fake, _ = drive(ModelCheckpoint(str(tmp_path / "b{epoch}"), save_best_only=True, mode="max"), [0.6, 0.5, 0.9])
    assert [os.path.basename(p) for p in fake.saved] == ["b1", "b3"]
    fake, _ = drive(ModelCheckpoint(str(tmp_path / "c{epoch}"), save_best_only=True, initial_value_threshold=0.7),
                    [0.9, 0.8, 0.6])
    assert [os.path.basename(p) for p in fake.saved] == ["c3"]


def test_model_checkpoint_verbose_lines(tmp_path, capsys):
    drive(ModelCheckpoint(str(tmp_path / "m.txt"), save_best_only=True, verbose=1), [1.0, 2.0])
    out = capsys.readouterr().out
    assert "Epoch 1: val_loss improved from inf to 1.00000, saving model to" in out
    assert "Epoch 2: val_loss did not improve from 1.00000" in out


def test_model_checkpoint_missing_key_and_missing_monitor(tmp_path):
    checkpoint = ModelCheckpoint(str(tmp_path / "m-{val_auc:.2f}.npz"))
    checkpoint.set_model(FakeModel())
    with pytest.raises(KeyError, match=r"names 'val_auc', which is not in the logs; available: epoch, loss"):
        checkpoint.on_epoch_end(0, {"loss": 0.3})
    best_only = ModelCheckpoint(str(tmp_path / "m.npz"), save_best_only=True)
    fake = FakeModel()
    best_only.set_model(fake)
    best_only.on_train_begin()
    with pytest.warns(UserWarning, match="Saving the best model is conditioned on metric `val_loss`") as record:
        best_only.on_epoch_end(0, {"loss": 0.3})
        best_only.on_epoch_end(1, {"loss": 0.2})
    assert len(record) == 1 and fake.saved == []


def test_model_checkpoint_refuses_a_folder_as_path(tmp_path):
    checkpoint = ModelCheckpoint(str(tmp_path))
    checkpoint.set_model(FakeModel())
    with pytest.raises(IsADirectoryError, match="is an existing folder"):
        checkpoint.on_epoch_end(0, {"val_loss": 0.3})


# --- ReduceLROnPlateau ---------------------------------------------------------------------------------

def test_reduce_lr_on_plateau_lowers_the_rate_and_history_records_it():
    x, y, val = diverging_data()
    model = tiny_model(learning_rate=0.05)
    history = model.fit(x, y, epochs=4, batch_size=16, validation_data=val, verbose=0,
                        callbacks=[ReduceLROnPlateau(factor=0.5, patience=1, min_delta=0.0)])
    rates = history.history['learning_rate']
    assert len(rates) == 4 and rates[0] == pytest.approx(0.05)
    assert model.optimizer.learning_rate < 0.05
    assert all(b <= a for a, b in zip(rates, rates[1:])) and rates[-1] < rates[0]


def test_reduce_lr_rules_on_fake_logs(capsys):
    model, logs = drive(ReduceLROnPlateau(factor=0.5, patience=2, verbose=1), [1.0, 1.0, 1.0, 1.0, 1.0])
    assert [round(entry["learning_rate"], 6) for entry in logs] == [0.01, 0.01, 0.01, 0.005, 0.005]
    assert model.optimizer.learning_rate == pytest.approx(0.0025)
    assert "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.005." in capsys.readouterr().out
    # min_lr is a floor; cooldown pauses the count after a reduction
    model, logs = drive(ReduceLROnPlateau(factor=0.1, patience=1, min_lr=0.004), [1.0] * 4)
    assert model.optimizer.learning_rate == pytest.approx(0.004)
    model, logs = drive(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2), [1.0] * 6)
    assert [entry["learning_rate"] for entry in logs] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    # 'auto' maximises an AUC; improvements by less than min_delta do not count
    model, _ = drive(ReduceLROnPlateau(monitor="val_auc", patience=1), [0.6, 0.7, 0.8], key="val_auc")
    assert model.optimizer.learning_rate == 0.01
    model, _ = drive(ReduceLROnPlateau(patience=1, min_delta=0.1), [1.0, 0.95])
    assert model.optimizer.learning_rate == pytest.approx(0.001)


def test_reduce_lr_missing_monitor_warns_once_and_still_logs_the_rate():
    callback = ReduceLROnPlateau(patience=0)
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    with pytest.warns(UserWarning, match="Learning rate reduction is conditioned on metric `val_loss`") as record:
        logs = [{"loss": 1.0} for _ in range(3)]
        for epoch, entry in enumerate(logs):
            callback.on_epoch_end(epoch, entry)
    assert len(record) == 1 and logs[-1]["learning_rate"] == 0.01 and model.optimizer.learning_rate == 0.01


# --- CSVLogger ------------------------------------------------------------------------------------------

def read_rows(path, separator=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=separator))


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    x, y, val = diverging_data()
    path = tmp_path / "log.csv"
    model = tiny_model()
    history = model.fit(x, y, epochs=3, batch_size=16, validation_data=val, verbose=0,
                        callbacks=[ReduceLROnPlateau(patience=1), CSVLogger(path)])
    rows = read_rows(path)
    assert rows[0] == ["epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]
    for key in rows[0][1:]:
        column = [float(row[rows[0].index(key)]) for row in rows[1:]]
        assert column == history.history[key]  # written exactly (repr of the float)

    # a second fit starts the file anew; append=True adds rows under the same header
    model.fit(x, y, epochs=1, validation_data=val, verbose=0, callbacks=[CSVLogger(path)])
    assert len(read_rows(path)) == 2
    model.fit(x, y, epochs=2, validation_data=val, verbose=0, callbacks=[CSVLogger(path, append=True)])
    rows = read_rows(path)
    assert len(rows) == 4 and rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [row[0] for row in rows[1:]] == ["0", "0", "1"]


def test_csv_logger_separator_missing_values_and_header_of_an_existing_file(tmp_path):
    path = tmp_path / "log.tsv"
    logger = CSVLogger(str(path), separator="\t")
    logger.set_model(FakeModel())
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.25})
    logger.on_epoch_end(1, {"loss": 0.4})
    assert read_rows(path, "\t") == [["epoch", "loss", "val_loss"], ["0", "0.5", "0.25"], ["1", "0.4", "NA"]]

    appender = CSVLogger(str(path), separator="\t", append=True)
    appender.on_train_begin()
    with pytest.warns(UserWarning, match=r"the logs have \['auc'\], which the existing header"):
        appender.on_epoch_end(0, {"loss": 0.3, "auc": 0.9, "val_loss": 0.2})
    assert read_rows(path, "\t")[-1] == ["0", "0.3", "0.2"]


# --- TerminateOnNaN and argument checks -----------------------------------------------------------------

def test_terminate_on_nan_still_stops(capsys):
    callback = TerminateOnNaN()
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_batch_end(0, {"loss": 0.5})
    assert not model.stop_training
    callback.on_train_batch_end(1, {"loss": math.nan})
    assert model.stop_training and "invalid loss nan" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda: EarlyStopping(mode="up"), "EarlyStopping: invalid value for argument `mode`: expected 'auto', 'min' "
                                       "or 'max', received 'up'"),
    (lambda: EarlyStopping(patience=-1), "EarlyStopping: invalid value for argument `patience`: expected an int "
                                         ">= 0, received -1"),
    (lambda: EarlyStopping(patience=2.5), "`patience`: expected an int >= 0, received 2.5"),
    (lambda: EarlyStopping(min_delta=-0.1), "`min_delta`: expected a float >= 0.0, received -0.1"),
    (lambda: EarlyStopping(monitor=""), "`monitor`: expected the name of a logged quantity"),
    (lambda: EarlyStopping(restore_best_weights="yes"), "`restore_best_weights`: expected True or False"),
    (lambda: EarlyStopping(start_from_epoch=-2), "`start_from_epoch`: expected an int >= 0"),
    (lambda: ModelCheckpoint(None), "ModelCheckpoint: invalid value for argument `filepath`: expected a file path"),
    (lambda: ModelCheckpoint("m-{epoch.npz"), "ModelCheckpoint: invalid value for argument `filepath`"),
    (lambda: ModelCheckpoint("m-{}.npz"), "placeholders must be named, like '{epoch:02d}'"),
    (lambda: ModelCheckpoint("m.npz", mode="best"), "ModelCheckpoint: invalid value for argument `mode`"),
    (lambda: ModelCheckpoint("m.npz", save_weights_only=True), "`save_weights_only`: expected False"),
    (lambda: ModelCheckpoint("m.npz", save_freq=100), "`save_freq`: expected 'epoch'"),
    (lambda: ReduceLROnPlateau(factor=1.0), "ReduceLROnPlateau: invalid value for argument `factor`: expected a "
                                            "float in (0, 1)"),
    (lambda: ReduceLROnPlateau(factor=0), "`factor`: expected a float in (0, 1)"),
    (lambda: ReduceLROnPlateau(min_lr=-1e-5), "`min_lr`: expected a float >= 0.0"),
    (lambda: ReduceLROnPlateau(cooldown=None), "`cooldown`: expected an int >= 0, received None"),
    (lambda: CSVLogger("log.csv", separator=", "), "CSVLogger: invalid value for argument `separator`: expected "
                                                   "one character"),
    (lambda: CSVLogger("log.csv", append=1), "CSVLogger: invalid value for argument `append`: expected True or "
                                             "False, received 1"),
])
def test_arguments_are_validated_with_clear_messages(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_keras_defaults():
    stopper = EarlyStopping()
    assert (stopper.monitor, stopper.min_delta, stopper.patience, stopper.mode, stopper.restore_best_weights,
            stopper.start_from_epoch, stopper.baseline, stopper.verbose) == ("val_loss", 0, 0, "auto", False, 0,
                                                                             None, 0)
    reduce = ReduceLROnPlateau()
    assert (reduce.monitor, reduce.factor, reduce.patience, reduce.mode, reduce.min_delta, reduce.cooldown,
            reduce.min_lr) == ("val_loss", 0.1, 10, "auto", 1e-4, 0, 0.0)
    checkpoint = ModelCheckpoint("m.npz")
    assert (checkpoint.monitor, checkpoint.save_best_only, checkpoint.mode) == ("val_loss", False, "auto")
    logger = CSVLogger("log.csv")
    assert (logger.sep, logger.append) == (",", False)


def test_no_warning_when_everything_is_logged(tmp_path):
    x, y, val = diverging_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_model().fit(x, y, epochs=2, validation_data=val, verbose=0,
                         callbacks=[EarlyStopping(), ModelCheckpoint(str(tmp_path / "m.npz"), save_best_only=True),
                                    ReduceLROnPlateau(), CSVLogger(str(tmp_path / "log.csv"))])


# --- LearningRateScheduler ------------------------------------------------------------------------------

def test_learning_rate_scheduler_sets_each_epoch_and_history_records_it(capsys):
    x, y, val = diverging_data()
    model = tiny_model()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                        callbacks=[LearningRateScheduler(lambda epoch, lr: lr * 0.5, verbose=1)])
    assert history.history["learning_rate"] == pytest.approx([0.025, 0.0125, 0.00625])
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.0125." in capsys.readouterr().out
    # The one-argument form, and a schedule object evaluated per epoch
    model = tiny_model()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                        callbacks=[LearningRateScheduler(schedules.ExponentialDecay(0.1, 1, 0.1))])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.01, 0.001])
    assert model.optimizer.learning_rate == pytest.approx(0.001)


def test_learning_rate_scheduler_moves_the_weights_as_the_rate_says():
    """Two epochs at rates 0.05 then 0.01 equal one fit at 0.05 followed by one at 0.01."""
    x, y, _ = diverging_data()
    scheduled = tiny_model(learning_rate=0.05)
    scheduled.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
                  callbacks=[LearningRateScheduler(lambda epoch: [0.05, 0.01][epoch])])
    by_hand = tiny_model(learning_rate=0.05)
    by_hand.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    by_hand.optimizer.learning_rate = 0.01
    by_hand.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    assert_same_weights(scheduled.get_weights(), by_hand.get_weights())


def test_learning_rate_scheduler_errors():
    x, y, _ = diverging_data()
    with pytest.raises(ValueError, match="LearningRateScheduler: the schedule returned 0 for epoch 1; expected a "
                                         "float > 0"):
        tiny_model().fit(x, y, epochs=3, verbose=0, callbacks=[LearningRateScheduler(lambda e: [0.1, 0][e])])
    with pytest.raises(ValueError, match="LearningRateScheduler: invalid value for argument `schedule`"):
        LearningRateScheduler(0.1)
    model = tiny_model()
    model.compile(optimizer=optimizers.SGD(schedules.CosineDecay(0.1, 100)), loss="categorical_crossentropy")
    with pytest.raises(TypeError, match="not settable"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda e: 0.1)])


def test_progress_line_shows_small_values_as_keras():
    assert callbacks._format_logs({"loss": 0.51234, "learning_rate": 1e-4, "zero": 0.0}) == \
        "loss: 0.5123 - learning_rate: 1.0000e-04 - zero: 0.0000e+00"


# --- SwapEMAWeights -------------------------------------------------------------------------------------

def ema_model(seed=0):
    tinycnn.set_seed(seed)
    model = Sequential([Dense(2, activation='softmax', input_shape=(4,))])
    model.compile(optimizer=optimizers.SGD(0.2, momentum=0.9, use_ema=True, ema_momentum=0.8),
                  loss='categorical_crossentropy')
    return model


class EpochEndWeights(Callback):
    """The weights the model holds at each epoch end (as a callback placed here sees them)."""

    def __init__(self):
        super().__init__()
        self.at_epoch_end = []

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append(self.model.get_weights())


def test_swap_ema_weights_validates_the_average_and_trains_the_raw_weights():
    x, y, val = diverging_data()
    plain = ema_model()
    plain_history = plain.fit(x, y, epochs=3, batch_size=16, validation_data=val, verbose=0, shuffle=False)
    swapped = ema_model()
    seen = EpochEndWeights()
    averages = {}

    class KeepAverages(Callback):
        def on_test_begin(self, logs=None):
            averages.update({k: slots[-1].copy() for k, slots in self.model.optimizer.slots.items()})

    history = swapped.fit(x, y, epochs=3, batch_size=16, validation_data=val, verbose=0, shuffle=False,
                          callbacks=[KeepAverages(), SwapEMAWeights(), seen])
    # Training is untouched by the swaps; fit ends with the averages in the model either way.
    assert history.history["loss"] == plain_history.history["loss"]
    assert_same_weights(swapped.get_weights(), plain.get_weights())
    # Each validation pass saw the averaged model.
    assert history.history["val_loss"] != plain_history.history["val_loss"]
    twin = ema_model()
    layer = twin.layers[0]
    for key, average in averages.items():
        name = key.split("/")[1]
        layer.params[name][...] = average.reshape(layer.params[name].shape)
    assert twin.evaluate(*val, verbose=0) == pytest.approx(history.history["val_loss"][-1], rel=1e-6)
    # Callbacks after it see the raw weights at epoch end (swap_on_epoch=False).
    assert not np.allclose(seen.at_epoch_end[-1][0], twin.get_weights()[0])


def test_swap_ema_weights_on_epoch_checkpoints_the_average(tmp_path):
    x, y, val = diverging_data()
    model = ema_model()
    seen = EpochEndWeights()
    model.fit(x, y, epochs=2, batch_size=16, validation_data=val, verbose=0, shuffle=False,
              callbacks=[SwapEMAWeights(swap_on_epoch=True), seen,
                         ModelCheckpoint(str(tmp_path / "m-{epoch}.npz"))])
    # The model after fit holds the averages, as the last checkpoint does.
    assert_same_weights(seen.at_epoch_end[-1], model.get_weights())
    assert_same_weights(load_model(str(tmp_path / "m-2.npz")).get_weights(), model.get_weights())
    # The checkpoint of epoch 1 holds the averages of that epoch.
    saved = load_model(str(tmp_path / "m-1.npz"))
    assert_same_weights(saved.get_weights(), seen.at_epoch_end[0])
    assert not model.optimizer.average_swapped


def test_swap_ema_weights_needs_an_averaging_optimizer():
    x, y, _ = diverging_data()
    with pytest.raises(ValueError, match="SwapEMAWeights: the model's optimizer must keep a moving average"):
        tiny_model().fit(x, y, epochs=1, verbose=0, callbacks=[SwapEMAWeights()])
