"""Model files from anywhere: every broken or hostile file gets a ModelFileError (a ValueError) that
names the file and the problem, nothing in it is unpickled, nothing is allocated on its word, and a
save that fails half-way leaves the earlier file as it was.

Each test builds its hostile file by hand (``zipfile`` and ``.npy`` bytes) from a good one. Random
damage to the config and to the bytes is tried in test_file_fuzz.py and test_properties.py (they
need hypothesis); each problem the fuzzing found has its test here.
"""
import io
import json
import os
import stat
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import tinycnn
from tinycnn import Input, Model
from tinycnn.layers import Activation, Add, BatchNormalization, Conv2D, Dense, Flatten
from tinycnn.models import Sequential
from tinycnn.saving import MAX_CONFIG_BYTES, MAX_LAYERS, MAX_METRICS, MAX_NODES, ModelFileError

X = np.random.default_rng(0).random((4, 6, 6, 1), dtype=np.float32)
Y = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]


def good_model():
    tinycnn.set_seed(0)
    m = Sequential([Conv2D(2, 3, input_shape=(6, 6, 1), name="conv"), BatchNormalization(name="bn"), Flatten(),
                    Dense(2, activation="softmax", name="head")])
    m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    m.train_on_batch(X, Y)  # so that the file holds optimizer state too
    return m


@pytest.fixture
def good(tmp_path):
    """(model, path of its saved file)."""
    m = good_model()
    path = tmp_path / "good.npz"
    m.save(path)
    return m, path


def entries(path):
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_raw(shape, descr="<f4", data=b"", version=1, header=None):
    """``.npy`` bytes with a header saying whatever we like, followed by ``data``."""
    text = header if header is not None else repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    text = text.encode("latin1") + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(2 if version == 1 else 4, "little") + text + data


def config_of(files):
    return json.loads(np.load(io.BytesIO(files["__config__.npy"])).tobytes())


def set_config(files, config):
    files["__config__.npy"] = npy(np.frombuffer(json.dumps(config).encode(), dtype=np.uint8))


def write_zip(path, files, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def refused(path, message):
    """Loading ``path`` raises ModelFileError whose message starts with the path and contains ``message``."""
    with pytest.raises(ModelFileError) as info:
        tinycnn.load_model(path)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert message in text, text
    return text


# --- not a model at all -------------------------------------------------------------------------------

def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    refused(path, "not a tinycnn model file: the file is empty (0 bytes)")


def test_truncated_at_many_points(good, tmp_path):
    _, path = good
    data = path.read_bytes()
    cuts = sorted({2, 4, 30, 100, len(data) // 4, len(data) // 2, len(data) - 200, len(data) - 22, len(data) - 1})
    for cut in cuts:
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(data[:cut])
        expected = ("not a tinycnn model file (not an .npz archive" if cut < 4 else
                    "the file starts like an .npz (zip) archive but its zip directory is missing or damaged: the file "
                    "is truncated or corrupt")
        refused(truncated, expected)


def test_damaged_bytes_inside_an_entry(good, tmp_path):
    # The zip directory is intact but the weights' bytes changed: the CRC check catches it.
    _, path = good
    data = bytearray(path.read_bytes())
    start = data.index(b"layers/0/kernel.npy") + 200
    data[start:start + 8] = b"\xff" * 8
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    refused(damaged, "the file is truncated or corrupt (BadZipFile: Bad CRC-32")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    refused(path, "not a tinycnn model file (not an .npz archive: File is not a zip file)")


def test_a_plain_zip_with_a_text_file(tmp_path):
    path = write_zip(tmp_path / "notes.npz", {"notes.txt": b"hello"})
    refused(path, "not a tinycnn model file (entry 'notes.txt' is not a NumPy array (.npy))")


def test_an_npz_with_other_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros((2, 3)), labels=np.arange(2))
    refused(path, "not a tinycnn model file (no __config__ entry; the archive holds: images, labels)")


def test_a_single_npy_array(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    refused(path, "not a tinycnn model file: it is a single .npy array, not an .npz archive")


def test_a_folder(tmp_path):
    refused(tmp_path, "is a folder, not a model file")


# --- code in the file -----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["layer", "optimizer", "loss"])
def test_config_naming_subprocess_popen(good, tmp_path, where):
    _, path = good
    files = entries(path)
    config = config_of(files)
    if where == "layer":
        config["model"]["layers"][0]["class_name"] = "subprocess.Popen"
        message = "layer 0 asks for class 'subprocess.Popen', which is not a tinycnn layer; refusing to load"
    else:
        config["compile"][where]["class_name"] = "subprocess.Popen"
        message = "the compile settings are invalid or name a class tinycnn does not have: KeyError('subprocess.Popen')"
    set_config(files, config)
    refused(write_zip(tmp_path / "popen.npz", files), message)


class _LeavesAMark:
    """Unpickling this creates a file: proof that something was unpickled."""

    marker = None

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("entry", ["layers/0/kernel.npy", "__config__.npy", "optimizer/iterations.npy"])
def test_pickled_objects_are_refused_and_never_unpickled(good, tmp_path, entry):
    _, path = good
    files = entries(path)
    _LeavesAMark.marker = tmp_path / "unpickled"
    evil = np.empty(1, dtype=object)
    evil[0] = _LeavesAMark()
    files[entry] = npy(evil, allow_pickle=True)
    hostile = write_zip(tmp_path / "pickle.npz", files)
    refused(hostile, f"entry '{entry[:-4]}' holds Python objects (a pickled object array); a tinycnn model file "
                     f"holds plain numbers only, and unpickling can run arbitrary code: refusing to load it")
    assert not _LeavesAMark.marker.exists()
    # The pickle is real: NumPy with allow_pickle=True would have run it.
    np.load(io.BytesIO(files[entry]), allow_pickle=True)
    assert _LeavesAMark.marker.exists()


# --- arrays that lie ---------------------------------------------------------------------------------

def test_a_weight_with_the_wrong_shape(good, tmp_path):
    _, path = good
    files = entries(path)
    files["layers/0/kernel.npy"] = npy(np.zeros((3, 3, 1, 3), dtype=np.float32))
    refused(write_zip(tmp_path / "shape.npz", files),
            "entry 'layers/0/kernel' has shape (3, 3, 1, 3) in the file but the architecture needs (3, 3, 1, 2)")


def test_a_missing_weight_and_an_extra_entry(good, tmp_path):
    _, path = good
    files = entries(path)
    del files["layers/1/moving_variance.npy"]
    refused(write_zip(tmp_path / "missing.npz", files),
            "weight 'moving_variance' of layer 1 ('bn', BatchNormalization) is missing")
    files = entries(path)
    files["layers/9/kernel.npy"] = npy(np.zeros(3))
    refused(write_zip(tmp_path / "extra.npz", files), "unexpected entry 'layers/9/kernel': the architecture has no "
                                                      "such weight")


def test_optimizer_state_that_does_not_match(good, tmp_path):
    _, path = good
    files = entries(path)
    files["optimizer/conv/kernel/m.npy"] = npy(np.zeros(7, dtype=np.float32))
    refused(write_zip(tmp_path / "slots.npz", files),
            "entry 'optimizer/conv/kernel/m' has shape (7,) in the file but the architecture needs (18,)")
    files = entries(path)
    files["optimizer/conv/kernel/z.npy"] = npy(np.zeros(18, dtype=np.float32))
    refused(write_zip(tmp_path / "slot_name.npz", files),
            "optimizer state 'conv/kernel/z' does not match the model's parameters")


def test_a_header_claiming_a_huge_shape(good, tmp_path):
    _, path = good
    files = entries(path)
    files["layers/0/kernel.npy"] = npy_raw((10**6, 10**6), data=b"\0" * 72)
    refused(write_zip(tmp_path / "huge.npz", files),
            "entry 'layers/0/kernel' has shape (1000000, 1000000) in the file but the architecture needs (3, 3, 1, 2)")


def test_an_architecture_and_header_agreeing_on_a_huge_weight_allocate_nothing(tmp_path):
    """The config asks for a 10^12-element Dense kernel and the header agrees, but the entry holds
    8 bytes: refused from the sizes alone, before anything is built."""
    m = Sequential([Dense(2, input_shape=(3,), name="d")])
    m.build()
    m.save(tmp_path / "small.npz")
    files = entries(tmp_path / "small.npz")
    config = config_of(files)
    config["model"]["input_shape"] = [10**6]
    config["model"]["layers"][0]["config"]["units"] = 10**6
    set_config(files, config)
    files["layers/0/kernel.npy"] = npy_raw((10**6, 10**6), data=b"\0" * 8)
    files["layers/0/bias.npy"] = npy(np.zeros(10**6, dtype=np.float32))
    tracemalloc.start()
    try:
        refused(write_zip(tmp_path / "claims.npz", files),
                "entry 'layers/0/kernel': its header announces shape (1000000, 1000000) of float32 "
                "(4,000,000,000,000 bytes) but the entry holds 8 bytes of data: the header is wrong or the entry "
                "truncated")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak:,} bytes allocated"


def test_a_header_whose_data_is_cut_short(good, tmp_path):
    _, path = good
    files = entries(path)
    files["layers/3/kernel.npy"] = files["layers/3/kernel.npy"][:-12]
    refused(write_zip(tmp_path / "short.npz", files),
            "entry 'layers/3/kernel': its header announces shape (32, 2) of float32 (256 bytes) but the entry holds "
            "244 bytes of data")


@pytest.mark.parametrize("version, length", [(1, 60_000), (2, 2**31)])
def test_an_oversized_header(good, tmp_path, version, length):
    _, path = good
    files = entries(path)
    files["layers/0/kernel.npy"] = (b"\x93NUMPY" + bytes([version, 0])
                                    + length.to_bytes(2 if version == 1 else 4, "little") + b"{" + b" " * 100)
    refused(write_zip(tmp_path / "header.npz", files),
            f"entry 'layers/0/kernel' has a .npy header of {length:,} bytes, more than the 10,000 allowed (a genuine "
            f"one has about 128): refusing to read it")


@pytest.mark.parametrize("header, message", [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3, 1, 2), 'evil': __import__('os')}",
     "has a malformed .npy header"),
    ("[1, 2, 3]", "has a malformed .npy header (ValueError: Header is not a dictionary"),
    # Found by fuzzing: NumPy's second try at a header that does not parse raised tokenize's TokenError.
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,(, }",
     "has a malformed .npy header (TokenError: ('EOF in multi-line statement'"),
    ("{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (3, 3, 1, 2)}",
     "has dtype [('a', '<f4'), ('b', '<f4')]; expected plain numbers of kind bool, int or float"),
    ("{'descr': '<c8', 'fortran_order': False, 'shape': (3, 3, 1, 2)}",
     "has dtype complex64; expected plain numbers of kind bool, int or float"),
])
def test_malformed_headers(good, tmp_path, header, message):
    _, path = good
    files = entries(path)
    files["layers/0/kernel.npy"] = npy_raw((), header=header, data=b"\0" * 72)
    refused(write_zip(tmp_path / "malformed.npz", files), f"entry 'layers/0/kernel' {message}")


# --- size bombs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("excess", [1, 100_000])
def test_a_huge_json_config(good, tmp_path, excess):
    _, path = good
    files = entries(path)
    config = config_of(files)
    config["metadata"] = {"padding": ""}
    small = len(json.dumps(config))
    config["metadata"]["padding"] = "x" * (MAX_CONFIG_BYTES + excess - small)
    set_config(files, config)
    size = MAX_CONFIG_BYTES + excess if excess == 1 else len(files["__config__.npy"])  # JSON, or the whole entry
    refused(write_zip(tmp_path / "config.npz", files),
            f"the configuration takes {size:,} bytes; a model's JSON description is at most {MAX_CONFIG_BYTES:,}: "
            f"refusing to read it")


def test_a_deeply_nested_json_config(good, tmp_path):
    _, path = good
    files = entries(path)
    files["__config__.npy"] = npy(np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8))
    refused(write_zip(tmp_path / "nested.npz", files), "the configuration cannot be read as JSON (RecursionError")


def test_a_compressed_bomb_is_refused_before_unpacking(tmp_path):
    """A 64 MB kernel of zeros deflated to ~64 KB, with a config and header that agree on it."""
    m = Sequential([Dense(2, input_shape=(3,), name="d")])
    m.build()
    m.save(tmp_path / "small.npz")
    files = entries(tmp_path / "small.npz")
    config = config_of(files)
    config["model"]["input_shape"] = [4000]
    config["model"]["layers"][0]["config"]["units"] = 4000
    set_config(files, config)
    files["layers/0/bias.npy"] = npy(np.zeros(4000, dtype=np.float32))
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            if name != "layers/0/kernel.npy":
                z.writestr(name, data)
        with z.open("layers/0/kernel.npy", "w", force_zip64=True) as entry:
            entry.write(npy_raw((4000, 4000)))
            left = 4000 * 4000 * 4
            while left:
                entry.write(bytes(min(left, 2**20)))
                left -= min(left, 2**20)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        text = refused(path, "to 1); a tinycnn model stays below 100 to 1, so this looks like a zip bomb: refusing to "
                             "unpack it")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "the archive declares 64,0" in text
    assert peak < 10 * 2**20, f"{peak:,} bytes allocated"


def _declare_size(path, entry, size):
    """Make the zip directory of ``path`` declare that ``entry`` unpacks to ``size`` bytes."""
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    at = struct.unpack_from("<I", data, end + 16)[0]  # the central directory's offset
    while True:
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46:at + 46 + name_length] == entry.encode():
            break
        at += 46 + name_length + extra_length + comment_length
    struct.pack_into("<I", data, at + 24, size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")])
def test_bzip2_and_lzma_entries_are_refused_before_unpacking(good, tmp_path, method, name):
    """Found by fuzzing: zipfile unpacks a whole chunk of bzip2 or LZMA at once, whatever the entry
    declares; a 1.4 KB file whose kernel (declared at its honest 96 bytes) was 200 MB of bzip2'd
    zeros allocated 459 MB before its CRC failed. Only stored and deflated entries are read."""
    _, path = good
    files = entries(path)
    kernel = files.pop("layers/0/kernel.npy")
    hostile = write_zip(tmp_path / "packed.npz", files)
    info = zipfile.ZipInfo("layers/0/kernel.npy")
    info.compress_type = method
    with zipfile.ZipFile(hostile, "a") as z, z.open(info, "w") as entry:
        entry.write(kernel)
        for _ in range(32):
            entry.write(bytes(2**20))
    _declare_size(hostile, "layers/0/kernel.npy", len(kernel))
    assert hostile.stat().st_size < 64 * 2**10
    tracemalloc.start()
    try:
        refused(hostile, f"entry 'layers/0/kernel' is packed with {name} (zip method {method}); tinycnn reads stored "
                         f"and deflated entries only, what NumPy writes (other methods can unpack to far more than "
                         f"the entry declares): refusing to unpack it")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak:,} bytes allocated"


@pytest.mark.parametrize("item", ["{}", "[]", '"ab"'])
def test_a_json_config_at_its_size_limit_stays_small_in_memory(good, tmp_path, item):
    """Found by fuzzing: parsed JSON takes up to 25 times its text (a 64-byte dict for each ``{},``),
    and a 10 MB configuration made 210 MB of objects; the limit is now 1 MB. A JSON of empty
    containers just under the limit loads (its metadata are just odd) within 40 MB."""
    _, path = good
    files = entries(path)
    config = config_of(files)
    config["metadata"] = {"x": []}
    count = (MAX_CONFIG_BYTES - len(json.dumps(config)) - 16) // (len(item) + 2)
    config["metadata"]["x"] = json.loads("[" + ", ".join([item] * count) + "]")
    set_config(files, config)
    assert MAX_CONFIG_BYTES - 64 < len(json.dumps(config)) <= MAX_CONFIG_BYTES
    bomb = write_zip(tmp_path / "containers.npz", files)
    tracemalloc.start()
    try:
        loaded = tinycnn.load_model(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(loaded.metadata["x"]) == count
    assert peak < 40 * 2**20, f"{peak:,} bytes allocated"


def _activations(count):
    return [{"class_name": "Activation", "config": {"name": f"relu_{i}", "activation": "relu"}} for i in range(count)]


def test_too_many_layers_are_refused_before_building(good, tmp_path):
    """Found by fuzzing: building a Sequential takes time quadratic in its layers (each name is
    checked against the others), 16 s for 20,000 layers, well within the JSON limit then."""
    _, path = good
    files = entries(path)
    config = config_of(files)
    config["model"]["layers"][2:2] = _activations(MAX_LAYERS)
    set_config(files, config)
    refused(write_zip(tmp_path / "layers.npz", files),
            f"the model describes {MAX_LAYERS + 4:,} layers; a tinycnn model file holds at most {MAX_LAYERS:,}")


@pytest.mark.parametrize("where", ["nodes", "connections"])
def test_too_big_a_graph_is_refused_before_building(tmp_path, where):
    """Found by fuzzing: an Add of 100,000 inputs (one node) loaded in 2 s; many calls of one layer
    likewise. Calls and connections are at most MAX_NODES."""
    image, extra = Input(shape=(4,), name="image"), Input(shape=(4,), name="extra")
    model = Model([image, extra], Add(name="add")([image, Activation("relu", name="act")(extra)]))
    model.save(tmp_path / "graph.npz")
    files = entries(tmp_path / "graph.npz")
    config = config_of(files)
    nodes = config["model"]["nodes"]  # image, extra, act(extra), add(image, act)
    assert [n["inputs"] for n in nodes] == [[], [], [1], [0, 2]]
    if where == "nodes":  # act applied MAX_NODES times in a chain
        nodes[3:3] = [{"layer": nodes[2]["layer"], "inputs": [2 + i]} for i in range(MAX_NODES)]
        nodes[-1]["inputs"] = [0, len(nodes) - 2]
        config["model"]["output"] = len(nodes) - 1
        calls, links = MAX_NODES + 4, MAX_NODES + 5
    else:
        nodes[3]["inputs"] = [0, 2] * (MAX_NODES // 2)
        calls, links = 4, MAX_NODES + 3
    set_config(files, config)
    refused(write_zip(tmp_path / "big.npz", files),
            f"the model's graph has {calls:,} layer calls and {links:,} connections; a tinycnn model file holds at "
            f"most {MAX_NODES:,} of each")


def test_a_long_list_in_a_layer_setting_is_refused(tmp_path):
    """Found by fuzzing: an input shape of 100,000 dimensions went through the construction (0.4 s)
    before a layer refused it."""
    image, extra = Input(shape=(4,), name="image"), Input(shape=(4,), name="extra")
    Model([image, extra], Add(name="add")([image, extra])).save(tmp_path / "graph.npz")
    files = entries(tmp_path / "graph.npz")
    config = config_of(files)
    config["model"]["layers"][1]["config"]["shape"] = [1] * 100_000
    set_config(files, config)
    refused(write_zip(tmp_path / "shape.npz", files),
            "layer 1 (InputLayer) has a list of 100,000 items in its setting 'shape'; tinycnn layers take at most 8")


def test_too_many_metrics_are_refused(good, tmp_path):
    """Found by fuzzing: 100,000 metric names took 1 s to resolve before being refused as repeated."""
    _, path = good
    files = entries(path)
    config = config_of(files)
    config["compile"]["metrics"] = ["accuracy"] * (MAX_METRICS + 1)
    set_config(files, config)
    refused(write_zip(tmp_path / "metrics.npz", files),
            f"the compile settings name {MAX_METRICS + 1} metrics; tinycnn model files hold at most {MAX_METRICS}")
    config["compile"]["metrics"] = "accuracy"
    set_config(files, config)
    refused(write_zip(tmp_path / "metric.npz", files),
            "the compile settings must be a JSON object whose 'metrics' is a list of names")


def test_a_batchnorm_update_count_beyond_int64(good, tmp_path):
    """Found by fuzzing: 'updates': 10**100 loaded, then predict raised OverflowError computing
    momentum ** updates (how much the initial statistics still weigh)."""
    _, path = good
    files = entries(path)
    config = config_of(files)
    config["batchnorm"]["1"]["updates"] = 10**100
    set_config(files, config)
    refused(write_zip(tmp_path / "updates.npz", files),
            f"batch-norm state for layer '1' must be {{'updates': int in [0, 2**63), 'recalibrated': bool}}, found "
            f"{{'updates': {10**100}, 'recalibrated': False}}")
    config["batchnorm"]["1"]["updates"] = 2**63 - 1
    set_config(files, config)
    loaded = tinycnn.load_model(write_zip(tmp_path / "many.npz", files))
    assert loaded.layers[1].updates == 2**63 - 1 and loaded.predict(X).shape == (4, 2)


@pytest.mark.parametrize("key", ["\u00b2", "1\u2070", "\u0661"])
def test_a_batchnorm_key_of_non_ascii_digits(good, tmp_path, key):
    """Found by fuzzing: '\u00b2'.isdigit() is True but int('\u00b2') raises, so the key escaped as a
    bare ValueError instead of a ModelFileError; and Arabic-Indic one ('\u0661') parsed as layer 1."""
    _, path = good
    files = entries(path)
    config = config_of(files)
    config["batchnorm"] = {key: {"updates": 1, "recalibrated": False}}
    set_config(files, config)
    refused(write_zip(tmp_path / "bn.npz", files),
            f"batch-norm state for layer {key!r} does not match the architecture")


def test_a_local_header_flagging_a_name_that_is_not_utf8(good, tmp_path):
    """Found by fuzzing: a local header with the UTF-8 flag over a name that is not UTF-8 made
    zipfile raise UnicodeDecodeError, which escaped as itself instead of a ModelFileError."""
    _, path = good
    data = bytearray(path.read_bytes())
    assert data[30:44] == b"__config__.npy"  # the first local header's name
    struct.pack_into("<H", data, 6, 0x800)  # general purpose flags: the name is UTF-8
    data[30] = 0x93
    hostile = tmp_path / "name.npz"
    hostile.write_bytes(bytes(data))
    refused(hostile, "the file is truncated or corrupt (UnicodeDecodeError: 'utf-8' codec can't decode byte 0x93")


def test_duplicate_entries(good, tmp_path):
    _, path = good
    hostile = tmp_path / "twice.npz"
    hostile.write_bytes(path.read_bytes())
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(hostile, "a") as z:
        z.writestr("layers/0/kernel.npy", npy(np.ones((3, 3, 1, 2), dtype=np.float32)))
    refused(hostile, "entry 'layers/0/kernel' appears twice in the archive")


# --- files that are odd but honest load exactly ------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*moving statistics:RuntimeWarning")
def test_compressed_big_endian_and_fortran_order_files_load_exactly(good, tmp_path):
    m, path = good
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for key in list(arrays):
        if key.startswith(("layers/", "optimizer/")) and arrays[key].dtype.kind == "f":
            arrays[key] = np.asfortranarray(arrays[key].astype(">f4"))
    other = tmp_path / "other_tool.npz"
    np.savez_compressed(other, **arrays)
    loaded = tinycnn.load_model(other)
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    for a, b in zip(loaded.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.dtype.isnative
    # and it keeps training exactly as the original does
    assert loaded.train_on_batch(X, Y) == m.train_on_batch(X, Y)


# --- saving is atomic ------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["savez", "replace", "interrupt"])
def test_a_crash_while_saving_keeps_the_earlier_file(good, tmp_path, monkeypatch, failure):
    m, path = good
    before = path.read_bytes()
    m.train_on_batch(X, Y)  # the model changed since it was saved

    def half_written(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    def refuse_rename(*args):
        raise PermissionError("rename refused")

    def interrupted(file, *args, **kwargs):
        file.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    if failure == "savez":
        monkeypatch.setattr(np, "savez", half_written)
        expected = OSError
    elif failure == "replace":
        monkeypatch.setattr(os, "replace", refuse_rename)
        expected = PermissionError
    else:
        monkeypatch.setattr(np, "savez", interrupted)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        m.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npz"]  # no temporary file left
    tinycnn.load_model(path)


def test_save_refuses_a_config_that_load_would_refuse(good):
    m, path = good
    before = path.read_bytes()
    m.metadata = {"notes": "x" * MAX_CONFIG_BYTES}
    with pytest.raises(ValueError, match=rf"^save: the model's configuration takes [\d,]+ bytes of "
                                         rf"JSON, more than the {MAX_CONFIG_BYTES:,} that load_model accepts; keep "
                                         rf"large data out of `model.metadata`$"):
        m.save(path)
    assert path.read_bytes() == before


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_files_get_ordinary_permissions(good, tmp_path):
    m, path = good
    umask = os.umask(0o022)
    try:
        os.umask(0o022)
        fresh = tmp_path / "fresh.npz"
        m.save(fresh)
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's private 0o600
        os.chmod(path, 0o640)
        m.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its mode
    finally:
        os.umask(umask)
