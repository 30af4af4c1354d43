"""Fuzzing model files: damaged copies of two good files either load into a model that predicts,
or are refused with a ``ModelFileError`` naming the file; and no case, loaded or refused, takes
more than a second or allocates more than 100 MB.

The two files are small trained models, compiled so that the file holds optimizer state too: a
``Sequential`` (convolution, batch norm, pooling, dense) and a functional ``Model`` with two
inputs and a residual ``Add``. Damage comes in three kinds:

* **bytes**: 1 to 4 of flipping a bit, overwriting a byte, inserting or deleting a few bytes, or
  cutting the file short, at any place or close to a zip or ``.npy`` header (where a change
  matters most: sizes, offsets, names, dtype and shape);
* **config**: 1 to 3 changes to the JSON description (numbers nudged, scaled, made huge, NaN or
  of another type; values replaced by anything JSON holds, nested up to 200 deep, deleted; lists
  repeated), re-packed into a valid zip (stored or deflated) so that the reader gets past the
  container and the description itself is tested;
* **array**: the byte damage inside one weight or optimizer entry, re-packed likewise, so that
  the ``.npy`` header checks meet it rather than the zip's checksums.

Bounds are on ``load_model`` itself: its time (a timer, not hypothesis's deadline, which would
also time the first-call compilation of a kernel that a changed dtype or padding needs; a case
over the bound is timed again, and fails if slow twice, since the shared test machine stalls at
times) and the peak of Python's allocations (``tracemalloc``, which NumPy reports its arrays to)
while loading and predicting. A loaded model predicts two images of zeros when its input is
small; a model that declares a 40,000 x 40,000 input is valid and loads, but its images are the
caller's memory. ``test_the_memory_bound_sees_numpy_arrays`` shows that the memory check can fail.

The examples are derandomized (the same on every run and machine for a given hypothesis
version, no example database): 125 per test and model, 750 cases in all, about 10 s. A longer
search: ``TINYCNN_FUZZ_EXAMPLES=5000 python -m pytest tests/test_file_fuzz.py``. Every bug found
so far has its own test in test_hostile_files.py.
"""
import copy
import json
import math
import os
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tinycnn  # noqa: E402
from test_hostile_files import npy  # noqa: E402
from tinycnn import Input, Model  # noqa: E402
from tinycnn.layers import (Activation, Add, BatchNormalization, Concatenate, Conv2D, Dense, Flatten,  # noqa: E402
                            GlobalAveragePooling2D, MaxPooling2D)
from tinycnn.models import Sequential  # noqa: E402
from tinycnn.saving import ModelFileError  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("TINYCNN_FUZZ_EXAMPLES", 125)), deadline=None, derandomize=True,
                database=None)
#: Bounds on one hostile case (see the module docstring).
MAX_SECONDS = 1.0
MAX_BYTES = 100 * 2**20
#: Largest input (elements per image) a loaded model is asked to predict.
MAX_PREDICT_ELEMENTS = 10**5


def _sequential():
    model = Sequential([Conv2D(2, 3, input_shape=(6, 6, 1), name="conv"), BatchNormalization(name="bn"),
                        MaxPooling2D(2, name="pool"), Flatten(name="flatten"),
                        Dense(2, activation="softmax", name="head")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model, np.zeros((2, 6, 6, 1), dtype=np.float32)


def _functional():
    image, extra = Input(shape=(6, 6, 1), name="image"), Input(shape=(3,), name="extra")
    x = Conv2D(2, 3, padding="same", activation="relu", name="conv")(image)
    x = Activation("relu", name="join")(Add(name="add")([x, Conv2D(2, 3, padding="same", name="residual")(x)]))
    x = Concatenate(name="both")([GlobalAveragePooling2D(name="gap")(x), Dense(2, name="mix")(extra)])
    model = Model([image, extra], Dense(2, activation="softmax", name="head")(x))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    return model, [np.zeros((2, 6, 6, 1), dtype=np.float32), np.zeros((2, 3), dtype=np.float32)]


class _Originals(dict):
    """``{kind: (file bytes, {entry: bytes}, config)}``, short in hypothesis's failure reports."""

    def __repr__(self):
        return f"<the good files: {', '.join(self)}>"


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """A folder, and the :class:`_Originals` of the two trained models."""
    folder = tmp_path_factory.mktemp("file_fuzz")
    out = _Originals()
    for kind, build in (("sequential", _sequential), ("functional", _functional)):
        tinycnn.set_seed(0)
        model, x = build()
        model.train_on_batch(x, np.eye(2, dtype=np.float32)[[0, 1]])
        path = folder / f"{kind}.npz"
        model.save(path)
        with zipfile.ZipFile(path) as z:
            files = {name: z.read(name) for name in z.namelist()}
        with np.load(path) as saved:
            config = json.loads(saved["__config__"].tobytes())
        out[kind] = (path.read_bytes(), files, config)
        _load_or_refuse(path)  # kernels loaded from Numba's cache before anything is timed
    return folder, out


def _load_or_refuse(path):
    """Load ``path``: a model that predicts, or a ModelFileError naming the file; within the bounds."""
    tracemalloc.start()
    try:
        model, seconds = _timed_load(path)
        if model is not None:
            _predicts(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if seconds >= MAX_SECONDS:  # a stall of the shared machine, or slow input: that is slow twice
        seconds = min(seconds, _timed_load(path)[1])
    assert seconds < MAX_SECONDS, f"load_model took {seconds:.2f} s"
    assert peak < MAX_BYTES, f"{peak:,} bytes allocated"
    return model


def _timed_load(path):
    """``(model or None if refused, seconds)``."""
    start = time.perf_counter()
    try:
        model = tinycnn.load_model(path)
    except ModelFileError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        model = None
    return model, time.perf_counter() - start


def _predicts(model):
    shapes = [tensor.sample_shape for tensor in model.inputs]
    if any(math.prod(shape) > MAX_PREDICT_ELEMENTS for shape in shapes):
        return
    x = [np.zeros((2,) + tuple(shape), dtype=np.float32) for shape in shapes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsettled batch-norm statistics, odd settings: not the subject here
        y = model.predict(x if len(x) > 1 else x[0])
    assert y.shape == (2,) + tuple(model.output_shape[1:])


# --- bytes ------------------------------------------------------------------------------------------

_SIGNATURES = (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"\x93NUMPY")


def _landmarks(data):
    """Offsets of every zip record and .npy header in ``data``."""
    found = []
    for signature in _SIGNATURES:
        at = data.find(signature)
        while at >= 0:
            found.append(at)
            at = data.find(signature, at + 1)
    return sorted(found)


@st.composite
def damaged_bytes(draw, data):
    data = bytearray(data)
    landmarks = _landmarks(bytes(data))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            at = draw(st.integers(0, len(data)))
        else:
            at = min(len(data), draw(st.sampled_from(landmarks)) + draw(st.integers(0, 80)))
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if operation == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and at < len(data):
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@FUZZ
@given(data=st.data())
def test_damaged_bytes_load_or_are_refused_within_bounds(good_files, kind, data):
    folder, good = good_files
    damaged = data.draw(damaged_bytes(good[kind][0]))
    path = folder / f"bytes_{kind}.npz"
    path.write_bytes(damaged)
    _load_or_refuse(path)


# --- the JSON description -----------------------------------------------------------------------

_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["Dense", "Conv2D", "InputLayer", "Functional", "Sequential", "subprocess.Popen", "float64",
                       "float16", "int32", "same", "valid", "relu", "softmax", [3, 3], [0, 0], [10**6, 10**6],
                       {"class_name": "Dense", "config": {"units": 10**9}}]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)


def _places(value):
    """Every place in a JSON value, as tuples of keys and indices (a loop: values may nest deeply)."""
    places, todo = [], [((), value)]
    while todo:
        prefix, value = todo.pop()
        places.append(prefix)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        todo.extend((prefix + (key,), child) for key, child in items)
    return places


def _number(draw, old):
    """A number near, far from, or instead of the number ``old``."""
    retyped = float(old) if isinstance(old, float) or abs(old) < 2**1000 else str(old)  # float(10**4000) overflows
    return draw(st.sampled_from([
        old + 1, old - 1, -old, old * 2**draw(st.integers(1, 40)), 0, 1, 2**31, 2**63, 10**100, 10**4000,
        1e308, float("nan"), float("inf"), retyped, str(old), bool(old), [old]]))


@st.composite
def changed_config(draw, config):
    config = copy.deepcopy(config)
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(_places(config)[1:]))
        parent = config
        for key in place[:-1]:
            parent = parent[key]
        key, old = place[-1], parent[place[-1]]
        change = draw(st.sampled_from(["replace", "delete", "number", "nest", "repeat"]))
        if change == "delete" and isinstance(parent, dict):
            del parent[key]
        elif change == "number" and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = _number(draw, old)
        elif change == "nest":
            depth = draw(st.sampled_from([1, 2, 30, 200]))
            wrapped = old
            for _ in range(depth):
                wrapped = [wrapped] if draw(st.booleans()) else {"config": wrapped}
            parent[key] = wrapped
        elif change == "repeat" and isinstance(old, list) and old:
            parent[key] = old * draw(st.sampled_from([2, 3, 1000]))
        else:
            parent[key] = copy.deepcopy(draw(_ANY_JSON))  # later changes must not edit the strategy's own values
    return config


@pytest.mark.parametrize("kind", ["sequential", "functional"])
@FUZZ
@given(data=st.data())
def test_changed_config_loads_or_is_refused_within_bounds(good_files, kind, data):
    folder, good = good_files
    files = dict(good[kind][1])
    config = data.draw(changed_config(good[kind][2]))
    files["__config__.npy"] = npy(np.frombuffer(json.dumps(config).encode(), dtype=np.uint8))
    _load_or_refuse(_repack(folder / f"config_{kind}.npz", files, data))


def _repack(path, files, data):
    """``files`` written to ``path`` as a valid zip, stored or deflated."""
    with zipfile.ZipFile(path, "w", compression=data.draw(st.sampled_from([zipfile.ZIP_STORED,
                                                                           zipfile.ZIP_DEFLATED]))) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return path


# --- one array entry, re-packed ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sequential", "functional"])
@FUZZ
@given(data=st.data())
def test_a_damaged_array_loads_or_is_refused_within_bounds(good_files, kind, data):
    """The same byte damage inside one weight or optimizer entry (its .npy header mostly: dtype,
    byte order, shape, Fortran order, format version), re-packed with correct checksums: the
    header checks, not the CRC, have to catch it."""
    folder, good = good_files
    files = dict(good[kind][1])
    name = data.draw(st.sampled_from(sorted(n for n in files if n != "__config__.npy")))
    files[name] = data.draw(damaged_bytes(files[name]))
    _load_or_refuse(_repack(folder / f"entry_{kind}.npz", files, data))


def test_the_good_files_load_and_predict(good_files):
    """The starting points are valid: both files load, predict, and keep their weights."""
    folder, good = good_files
    for kind in good:
        model = _load_or_refuse(folder / f"{kind}.npz")
        assert model is not None and model.optimizer is not None
        with np.load(folder / f"{kind}.npz") as saved:
            for i, layer in enumerate(model.layers):
                for name, value in zip(layer.weight_names, layer.get_weights()):
                    np.testing.assert_array_equal(value, saved[f"layers/{i}/{name}"])


def test_the_memory_bound_sees_numpy_arrays(good_files, monkeypatch):
    """The bound is not vacuous: a load that allocates an array over ``MAX_BYTES`` (as a trusted
    header announcing a huge shape would make it) fails the check every fuzz case goes through."""
    folder, _ = good_files
    real_load = tinycnn.load_model

    def greedy_load(path):
        np.empty(MAX_BYTES + 1, dtype=np.uint8)  # reserved, never written: costs no real memory or time
        return real_load(path)

    monkeypatch.setattr(tinycnn, "load_model", greedy_load)
    with pytest.raises(AssertionError, match="bytes allocated"):
        _load_or_refuse(folder / "sequential.npz")
