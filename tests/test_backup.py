"""BackupAndRestore: a run that is killed and started again ends bit-identical to one that never was.

The real thing first: a training script in a subprocess is killed with SIGKILL at several points
(in the middle of an epoch, between epochs, in the middle of writing a backup, and at a moment
chosen by the clock), started again each time, and its final weights, history, CSV log and best
checkpoint are compared bit for bit with those of a run that was never interrupted. Then, in this
process (a crash simulated by an exception, so that many points are cheap): every kind of crash
point, damaged backups, a full disk, a backup of another model, and the arguments.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tinycnn
from tinycnn import archive
from tinycnn import layers as L
from tinycnn.callbacks import (BackupAndRestore, Callback, CSVLogger, EarlyStopping, ModelCheckpoint,
                               ReduceLROnPlateau, SwapEMAWeights)

# --- the training run, shared by the script and the in-process tests -------------------------------

TRAINING = '''
import numpy as np
import tinycnn
from tinycnn import layers as L
from tinycnn.callbacks import BackupAndRestore, CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau


def build(seed=0, metrics=("accuracy", "auc")):
    """Every kind of state: augmentation and dropout generators, batch norm, Adam's moments, and
    metrics that add up (accuracy) or keep every score (AUC)."""
    tinycnn.set_seed(seed)
    model = tinycnn.Sequential([
        L.RandomFlip("horizontal", input_shape=(8, 8, 1)), L.Conv2D(4, 3, padding="same"),
        L.BatchNormalization(), L.ReLU(), L.Dropout(0.3), L.GlobalAveragePooling2D(),
        L.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=list(metrics))
    return model


def data():
    gen = np.random.default_rng(1)
    x = gen.random((40, 8, 8, 1)).astype(np.float32)
    labels = (x[:, :, :4].mean(axis=(1, 2, 3)) > x[:, :, 4:].mean(axis=(1, 2, 3))).astype(int)
    return x, np.eye(2, dtype=np.float32)[labels]


def callbacks(folder, **backup):
    """Callbacks with state: a patience counter, a best score, a learning rate, a log file."""
    return [EarlyStopping(patience=3, restore_best_weights=True), ReduceLROnPlateau(patience=1, factor=0.5),
            ModelCheckpoint(f"{folder}/best.npz", save_best_only=True), CSVLogger(f"{folder}/log.csv"),
            BackupAndRestore(f"{folder}/backup", **backup)]


def train(folder, epochs=5, extra=(), metrics=("accuracy", "auc"), **backup):
    """32 training samples in batches of 8: 4 batches an epoch."""
    model = build(metrics=metrics)
    x, y = data()
    history = model.fit(x, y, epochs=epochs, batch_size=8, validation_split=0.2, verbose=0,
                        callbacks=list(extra) + callbacks(folder, **backup))
    return model, history
'''

SCRIPT = '''
import json, os, signal, sys
import numpy as np
import tinycnn
from tinycnn.callbacks import Callback
from training import train

folder, kill = sys.argv[1], sys.argv[2]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class Killer(Callback):
    """kill=batch:E:B dies after batch B of epoch E (before that batch's backup), kill=epoch:E as
    epoch E begins (its predecessor's backup is written); kill=save:N halfway through writing the
    N-th archive (backups and checkpoints)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if kill == f"epoch:{epoch}":
            die()

    def on_train_batch_end(self, batch, logs=None):
        if kill == f"batch:{self.epoch}:{batch}":
            die()


if kill.startswith("save:"):
    import io
    real_savez, calls = np.savez, [0]

    def savez_then_die(file, **arrays):
        calls[0] += 1
        if calls[0] != int(kill[5:]):
            return real_savez(file, **arrays)
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        file.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        file.flush()
        die()
    np.savez = savez_then_die

model, history = train(folder, save_freq=2, extra=[Killer()], metrics=["accuracy"])  # AUC imports scikit-learn: slow
np.savez(os.path.join(folder, "weights.npz"), *model.get_weights())
with open(os.path.join(folder, "history.json"), "w") as f:
    json.dump(history.history, f)
'''


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """The training module, importable here and by the scripts."""
    folder = tmp_path_factory.mktemp("code")
    (folder / "training.py").write_text(TRAINING)
    (folder / "script.py").write_text(SCRIPT)
    sys.path.insert(0, str(folder))
    import training as module
    yield folder, module
    sys.path.remove(str(folder))
    sys.modules.pop("training", None)


def run_script(code, folder, kill="none", wait=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(code / "script.py"), str(folder), kill]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def results(folder):
    """Everything a run leaves: final weights, history, CSV log and the best checkpoint's weights."""
    with np.load(folder / "weights.npz") as f:
        weights = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    return {"weights": weights, "history": json.loads((folder / "history.json").read_text()),
            "log": (folder / "log.csv").read_text(),
            "best": tinycnn.load_model(str(folder / "best.npz")).get_weights()}


def assert_identical(a, b):
    assert a["history"] == b["history"]
    assert a["log"] == b["log"]
    for key in ("weights", "best"):
        assert len(a[key]) == len(b[key])
        for wa, wb in zip(a[key], b[key]):
            assert wa.dtype == wb.dtype
            np.testing.assert_array_equal(wa, wb)


def resumed_at(run):
    return [line for line in run.stderr.splitlines() if line.startswith("BackupAndRestore: resuming")]


# --- killed for real ------------------------------------------------------------------------------

def test_sigkill_at_several_points_then_rerun_ends_bit_identical(training, tmp_path):
    """One run killed four times, at four kinds of points, and run once more to its end."""
    code, module = training
    (tmp_path / "reference").mkdir()
    model, history = module.train(tmp_path / "reference", save_freq=2, metrics=["accuracy"])
    expected = outcome(model, history, tmp_path / "reference")
    assert len(expected["history"]["loss"]) == 5
    assert not (tmp_path / "reference" / "backup").exists()  # delete_checkpoint: removed as fit ends

    folder = tmp_path / "killed"
    folder.mkdir()
    backup = folder / "backup"
    # Epochs 0-4 of 4 batches, a backup every 2 batches and at every epoch's end (0-based numbers
    # here, 1-based in the messages). In the middle of epoch 1, after its batch 2: the newest backup
    # is the one after its batch 1.
    run = run_script(code, folder, "batch:1:2")
    assert run.returncode == -signal.SIGKILL
    assert sorted(os.listdir(backup)) == ["backup.npz", "backup.previous.npz"]
    # Resumed there, killed between epochs 2 and 3.
    run = run_script(code, folder, "epoch:3")
    assert run.returncode == -signal.SIGKILL
    assert resumed_at(run) == [f"BackupAndRestore: resuming from {backup}/backup.npz at epoch 2, after batch 2"]
    # Resumed at epoch 3, killed halfway through writing the run's 2nd archive: the backup after
    # epoch 3's batch 3. The newest backup (after batch 1) had been moved aside before, and is kept.
    run = run_script(code, folder, "save:2")
    assert run.returncode == -signal.SIGKILL
    assert resumed_at(run) == [f"BackupAndRestore: resuming from {backup}/backup.npz at the start of epoch 4"]
    left = sorted(os.listdir(backup))
    assert "backup.npz" not in left and "backup.previous.npz" in left
    assert any(name.startswith(".tmp-") for name in left)  # the half-written file
    # Resumed from the previous backup, killed from outside at a moment the clock picks once the
    # run has written a backup (if it has not finished by then).
    process = run_script(code, folder, wait=False)
    while not (backup / "backup.npz").exists() and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert f"resuming from {backup}/backup.previous.npz at epoch 4, after batch 2" in stderr
    # The last run goes to the end.
    run = run_script(code, folder)
    assert run.returncode == 0, run.stderr
    assert not backup.exists()
    assert_identical(results(folder), expected)


# --- crashes simulated in this process --------------------------------------------------------------

class Crash(Exception):
    pass


class CrashAt(Callback):
    """Raises Crash after batch ``batch`` of epoch ``epoch``, or (batch None) as ``epoch`` begins."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.at == (epoch, None):
            raise Crash

    def on_train_batch_end(self, batch, logs=None):
        if self.at == (self.epoch, batch):
            raise Crash


def outcome(model, history, folder):
    return {"weights": model.get_weights(), "history": history.history, "log": (folder / "log.csv").read_text(),
            "best": tinycnn.load_model(str(folder / "best.npz")).get_weights()}


def crash_and_resume(module, folder, crashes, **backup):
    folder.mkdir()
    for crash in crashes:
        with pytest.raises(Crash):
            module.train(folder, extra=[CrashAt(*crash)], **backup)
    return outcome(*module.train(folder, **backup), folder)


def test_backup_does_not_change_training(training, tmp_path):
    """With the callback, a run is bit-identical to one without it."""
    _, module = training
    with_backup = outcome(*module.train(tmp_path, save_freq=1), tmp_path)
    model = module.build()
    x, y = module.data()
    history = model.fit(x, y, epochs=5, batch_size=8, validation_split=0.2, verbose=0,
                        callbacks=module.callbacks(tmp_path)[:-1])
    assert_identical(outcome(model, history, tmp_path), with_backup)


@pytest.mark.parametrize("save_freq", ["epoch", 2, 3])
def test_every_crash_point_resumes_bit_identical(training, tmp_path, save_freq, capsys):
    """Crashes after the first batch, after an epoch's last batch (before its end is backed up), as
    an epoch begins, and in the middle of epochs; (epoch, batch) 0-based, 4 batches an epoch."""
    _, module = training
    (tmp_path / "reference").mkdir()
    expected = outcome(*module.train(tmp_path / "reference"), tmp_path / "reference")
    crashes = [(0, 0), (0, 3), (1, None), (1, 1), (2, 2), (4, 3)]
    assert_identical(crash_and_resume(module, tmp_path / "run", crashes, save_freq=save_freq), expected)
    # Every run after the 3rd crash resumes (earlier ones too when backups are made every few batches).
    assert capsys.readouterr().err.count("BackupAndRestore: resuming from") >= 4


class ArraySource:
    """A batch source (see tinycnn/batching.py) over arrays, as image_folder is one over a folder."""
    element_shape, num_classes = (8, 8, 1), 2

    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.x)

    def iter_batches(self, batch_size, shuffle, seed):
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for lo in range(0, len(self), batch_size):
            yield self.x[order[lo:lo + batch_size]], self.labels[order[lo:lo + batch_size]]


def test_a_batch_source_resumes_in_the_middle_of_an_epoch(training, tmp_path, capsys):
    """A source shuffles with a seed fit draws each epoch: the resumed epoch draws it again."""
    _, module = training
    x, y = module.data()
    source = ArraySource(x, y.argmax(axis=1))

    def train(crash=None):
        model = module.build(metrics=["accuracy"])
        crashes = [CrashAt(*crash)] if crash else []
        history = model.fit(source, epochs=3, batch_size=8, verbose=0,
                            callbacks=crashes + [BackupAndRestore(tmp_path / "backup", save_freq=1)])
        return model.get_weights(), history.history

    expected = train()
    with pytest.raises(Crash):
        train(crash=(1, 2))
    weights, history = train()
    assert f"resuming from {tmp_path}/backup/backup.npz at epoch 2, after batch 2" in capsys.readouterr().err
    assert history == expected[1]
    for a, b in zip(weights, expected[0]):
        np.testing.assert_array_equal(a, b)


def test_resume_after_early_stopping_decided_to_stop(training, tmp_path):
    """A backup made at the end of the epoch in which early stopping stopped training resumes into
    stopping at once (and restoring the best weights), not into another epoch."""
    _, module = training
    (tmp_path / "reference").mkdir()
    expected = outcome(*module.train(tmp_path / "reference", epochs=30), tmp_path / "reference")
    stopped = len(expected["history"]["loss"])
    assert stopped < 30
    folder = tmp_path / "run"
    folder.mkdir()

    class CrashAtEnd(Callback):
        def on_train_end(self, logs=None):
            raise Crash

    with pytest.raises(Crash):
        module.train(folder, epochs=30, extra=[CrashAtEnd()], delete_checkpoint=False)
    assert_identical(outcome(*module.train(folder, epochs=30), folder), expected)


def messages(caught):
    return [str(w.message) for w in caught if str(w.message).startswith("BackupAndRestore")]


def test_damaged_backups_fall_back_to_the_previous_one_or_start_over(training, tmp_path):
    _, module = training
    (tmp_path / "reference").mkdir()
    expected = outcome(*module.train(tmp_path / "reference"), tmp_path / "reference")
    folder = tmp_path / "run"
    folder.mkdir()
    backup = folder / "backup"

    def truncate(path):
        data = path.read_bytes()
        path.write_bytes(data[:len(data) * 2 // 3])

    with pytest.raises(Crash):
        module.train(folder, extra=[CrashAt(2, 1)])
    truncate(backup / "backup.npz")
    with pytest.warns(RuntimeWarning) as caught:
        with pytest.raises(Crash):
            module.train(folder, extra=[CrashAt(3, 0)])  # resumes from the end of epoch 0
    assert messages(caught) == [
        f"BackupAndRestore: the backup cannot be used (moved to backup.damaged.npz): {backup}/backup.npz: the file "
        f"starts like an .npz (zip) archive but its zip directory is missing or damaged: the file is truncated or "
        f"corrupt (File is not a zip file)"]
    assert sorted(os.listdir(backup)) == ["backup.damaged.npz", "backup.npz", "backup.previous.npz"]
    truncate(backup / "backup.npz")
    truncate(backup / "backup.previous.npz")
    with pytest.warns(RuntimeWarning) as caught:
        assert_identical(outcome(*module.train(folder), folder), expected)
    found = messages(caught)
    assert len(found) == 3
    assert found[0].startswith(f"BackupAndRestore: the backup cannot be used (moved to backup.damaged.npz): "
                               f"{backup}/backup.npz: ")
    assert found[1].startswith(f"BackupAndRestore: the backup cannot be used (moved to backup.damaged.npz): "
                               f"{backup}/backup.previous.npz: ")
    assert found[2] == (f"BackupAndRestore: no usable backup in {str(backup)!r}; training starts over from its "
                        f"first epoch")
    assert not backup.exists()


def test_disk_full_while_saving_keeps_the_previous_backup(training, tmp_path, monkeypatch):
    _, module = training
    (tmp_path / "reference").mkdir()
    expected = outcome(*module.train(tmp_path / "reference"), tmp_path / "reference")
    folder = tmp_path / "run"
    folder.mkdir()
    real_write, real_savez, backups = archive.write, np.savez, []

    def savez_disk_full(file, **arrays):
        file.write(b"PK\x03\x04 the start of an archive")
        raise OSError(28, "No space left on device")

    def write(filepath, config, arrays, where="save"):
        backups.append(where == "BackupAndRestore")
        if sum(backups) == 2:  # the backup at the end of epoch 1
            monkeypatch.setattr(np, "savez", savez_disk_full)
        try:
            return real_write(filepath, config, arrays, where)
        finally:
            monkeypatch.setattr(np, "savez", real_savez)

    monkeypatch.setattr(archive, "write", write)
    with pytest.raises(OSError, match="No space left"):
        module.train(folder)
    monkeypatch.setattr(archive, "write", real_write)
    assert sorted(os.listdir(folder / "backup")) == ["backup.previous.npz"]  # no temporary file left either
    assert_identical(outcome(*module.train(folder), folder), expected)


def test_optimizer_averages_swapped_into_the_model_are_restored(tmp_path):
    """SwapEMAWeights(swap_on_epoch=True) leaves the averages in the model at the epoch's end,
    when the backup is made; the raw weights are saved and the swap is made again on resuming."""
    x = np.random.default_rng(0).random((24, 5)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0.5).astype(int)]

    def train(crash=None):
        tinycnn.set_seed(0)
        model = tinycnn.Sequential([L.Dense(3, activation="relu", input_shape=(5,)), L.Dense(2, activation="softmax")])
        model.compile(optimizer=tinycnn.optimizers.Adam(use_ema=True), loss="categorical_crossentropy")
        extra = [] if crash is None else [CrashAt(crash)]
        model.fit(x, y, epochs=4, batch_size=8, verbose=0,
                  callbacks=extra + [SwapEMAWeights(swap_on_epoch=True), BackupAndRestore(tmp_path / "b")])
        return model.get_weights()

    expected = train()
    with pytest.raises(Crash):
        train(crash=2)
    for a, b in zip(train(), expected):
        np.testing.assert_array_equal(a, b)


def test_backup_of_another_model_is_refused_and_kept(training, tmp_path):
    _, module = training
    with pytest.raises(Crash):
        module.train(tmp_path, extra=[CrashAt(1)])
    model = tinycnn.Sequential([L.Flatten(input_shape=(8, 8, 1)), L.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = module.data()
    with pytest.raises(ValueError, match="was made while training another model"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[BackupAndRestore(tmp_path / "backup")])
    assert (tmp_path / "backup" / "backup.npz").exists()


def test_delete_checkpoint_removes_only_the_backup_files(training, tmp_path):
    _, module = training
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "notes.txt").write_text("mine")
    module.train(tmp_path, epochs=1)
    assert os.listdir(tmp_path / "backup") == ["notes.txt"]
    module.train(tmp_path, epochs=2, delete_checkpoint=False)
    assert sorted(os.listdir(tmp_path / "backup")) == ["backup.npz", "backup.previous.npz", "notes.txt"]


def test_the_backup_is_plain_data(training, tmp_path):
    """JSON and number arrays only: it reads back with allow_pickle=False."""
    _, module = training
    with pytest.raises(Crash):
        module.train(tmp_path, extra=[CrashAt(1, 2)], save_freq=1)
    with np.load(tmp_path / "backup" / "backup.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert all(a.dtype.kind in "biuf" for a in arrays.values())
    config = json.loads(arrays["__config__"].tobytes())
    assert (config["epoch"], config["batch"]) == (1, 2)  # made after batch 1 (0-based), before the crash
    assert config["format"] == archive.FORMAT


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="BackupAndRestore: invalid value for argument `save_freq`"):
        BackupAndRestore(tmp_path, save_freq="batch")
    with pytest.raises(ValueError, match="`save_freq`"):
        BackupAndRestore(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="`delete_checkpoint`"):
        BackupAndRestore(tmp_path, delete_checkpoint="yes")
    with pytest.raises(ValueError, match="`backup_dir`"):
        BackupAndRestore("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        BackupAndRestore(tmp_path / "file")


def test_callback_state_round_trip():
    """Each ready-made callback's state names what it learns; set_state puts it back."""
    stopper = EarlyStopping(restore_best_weights=True)
    stopper.on_train_begin()
    stopper.best, stopper.wait, stopper.best_weights = 0.25, 2, [np.ones(3)]
    fresh = EarlyStopping(restore_best_weights=True)
    fresh.on_train_begin()
    fresh.set_state(stopper.get_state())
    assert (fresh.best, fresh.wait, fresh.best_weights) == (0.25, 2, stopper.best_weights)
    assert set(ReduceLROnPlateau().state_attributes) >= {"best", "wait", "cooldown_counter"}
    assert "best" in ModelCheckpoint("m.npz").state_attributes
    assert Callback().get_state() == {}
    assert set(CSVLogger("log.csv").state_attributes) == {"keys", "_warned"}


def test_state_that_is_not_plain_data_is_refused(tmp_path):
    class Odd(Callback):
        state_attributes = ("thing",)

        def on_train_begin(self, logs=None):
            self.thing = object()

    model = tinycnn.Sequential([L.Dense(2, activation="softmax", input_shape=(3,))])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x, y = np.zeros((4, 3), np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    with pytest.raises(TypeError, match="callback Odd#0: its state is not plain data: 'thing' holds a object"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Odd(), BackupAndRestore(tmp_path)])
