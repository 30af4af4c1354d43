"""Callbacks: hooks into ``fit``, Keras's interface. ``History`` and the progress display live here.

A callback overrides any of ``on_train_begin``, ``on_epoch_begin``, ``on_train_batch_end``,
``on_epoch_end`` and ``on_train_end``; ``self.model`` is set before training starts. Setting
``model.stop_training = True`` ends ``fit`` after the current epoch.
"""
import math
import sys
import time


class Callback:
    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class History(Callback):
    """Records every epoch's logs: ``history.history['loss']``, ``['val_accuracy']``, ...; ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and says so."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training", file=sys.stderr)
            self.model.stop_training = True


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


def _format_time(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


class ProgressBar(Callback):
    """Keras-style progress display.

    ``verbose=1``: a live bar per epoch (redrawn in place on a terminal) with ETA, time per step and
    the running loss and metrics; ``verbose=2``: one line per epoch, for log files.
    """

    def __init__(self, verbose=1, steps=None, epochs=1, stream=None, width=20):
        super().__init__()
        self.verbose = verbose
        self.steps = steps
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.width = width
        encoding = getattr(self.stream, "encoding", None) or ""
        self._fill, self._empty = ("━", "─") if encoding.lower().replace("-", "") == "utf8" else ("=", ".")
        self._live = self.verbose == 1 and getattr(self.stream, "isatty", lambda: False)()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self.verbose:
            self.stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")
            self.stream.flush()

    def _bar(self, done):
        filled = int(round(self.width * done / max(1, self.steps)))
        return self._fill * filled + self._empty * (self.width - filled)

    def on_train_batch_end(self, batch, logs=None):
        if not self._live:
            return
        done = batch + 1
        elapsed = time.perf_counter() - self._start
        eta = elapsed / done * (self.steps - done)
        line = (f"\r{done}/{self.steps} {self._bar(done)} {_format_time(eta)} "
                f"{1000 * elapsed / done:.0f}ms/step - {_format_logs(logs or {})}")
        self.stream.write(line + "\x1b[K")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        if not self.verbose:
            return
        elapsed = time.perf_counter() - self._start
        per_step = 1000 * elapsed / max(1, self.steps)
        prefix = "\r" if self._live else ""
        bar = f"{self.steps}/{self.steps} {self._bar(self.steps)} " if self.verbose == 1 else ""
        self.stream.write(f"{prefix}{bar}{_format_time(elapsed)} {per_step:.0f}ms/step - "
                          f"{_format_logs(logs or {})}" + ("\x1b[K" if self._live else "") + "\n")
        self.stream.flush()
