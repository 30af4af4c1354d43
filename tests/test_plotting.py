"""Training curves: a real PNG when matplotlib is there, and a clear ImportError when it is not.

matplotlib is an optional extra, not a test requirement: only the PNG test is skipped without it.
"""
import struct
import sys

import numpy as np
import pytest

import tinycnn
from tinycnn.callbacks import ReduceLROnPlateau
from tinycnn.layers import Dense
from tinycnn.models import Sequential
from tinycnn.plotting import plot_history


def png_size(path):
    """(width, height) read from a PNG's header; fails if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def trained_history():
    tinycnn.set_seed(0)
    gen = np.random.default_rng(0)
    x = gen.standard_normal((32, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    model = Sequential([Dense(2, activation="softmax", input_shape=(4,))])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", "auc"])
    return model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                     callbacks=[ReduceLROnPlateau(patience=1)])


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    history = trained_history()
    path = tmp_path / "curves.png"
    assert plot_history(history, path, title="tiny model") == str(path)
    width, height = png_size(path)
    assert width > 800 and height > 500  # loss, accuracy, auc and learning rate panels: two rows of three
    dict_path = tmp_path / "from_dict.png"
    plot_history({"loss": [1.0, 0.5], "val_loss": [1.2, float("nan")]}, dict_path)
    assert png_size(dict_path)[0] > 0


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib...` raise ImportError, installed or not.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    path = tmp_path / "curves.png"
    with pytest.raises(ImportError) as info:
        plot_history({"loss": [1.0, 0.5]}, path)
    message = str(info.value)
    assert 'pip install "tinycnn[plot]"' in message and "pip install matplotlib" in message
    assert message.startswith("plot_history needs matplotlib")
    assert not path.exists()


def test_bad_history_is_explained_before_matplotlib_is_needed(tmp_path):
    with pytest.raises(ValueError, match="holds no epochs; train first"):
        plot_history({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="holds no epochs"):
        plot_history({"loss": []}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="must be the History returned by fit"):
        plot_history([1.0, 0.5], tmp_path / "x.png")
