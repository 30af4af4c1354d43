"""``tinycnn.dask.predict`` puts the model into the task graph once, as one archive, and each
thread loads it once, however many blocks it predicts (README, "More than one machine: Dask")."""
import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

from tinycnn import dask as tdask  # noqa: E402
from tinycnn.layers import Conv2D, Dense, GlobalAveragePooling2D  # noqa: E402
from tinycnn.models import Sequential  # noqa: E402


def test_one_archive_in_the_graph_and_one_load_per_thread(monkeypatch):
    model = Sequential([Conv2D(3, 3, input_shape=(6, 6, 1)), GlobalAveragePooling2D(), Dense(2, activation="softmax")])
    model.build()
    x = np.random.default_rng(0).random((24, 6, 6, 1), dtype=np.float32)
    loads = []
    real_load = tdask._model_from_bytes
    monkeypatch.setattr(tdask, "_model_from_bytes", lambda archive: loads.append(len(archive)) or real_load(archive))
    monkeypatch.setattr(tdask, "_loaded", threading.local())  # no model loaded by an earlier test

    out = tdask.predict(model, da.from_array(x, chunks=(4, 6, 6, 1)), batch_size=4)
    graph = dict(out.__dask_graph__())
    # a constant in the graph is the value itself, or wrapped (dask 2025's DataNode keeps it in .value)
    archives = [getattr(node, "value", node) for node in graph.values()]
    archives = [value for value in archives if isinstance(value, bytes)]
    assert len(out.chunks[0]) == 6 and len(archives) == 1
    with dask.config.set(scheduler="synchronous"):  # every block in this one thread
        result = out.compute()
    assert loads == [len(archives[0])]  # six blocks, one load
    np.testing.assert_allclose(result, model.predict(x), rtol=1e-5, atol=1e-6)
