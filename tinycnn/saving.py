"""Saving and loading whole models as plain data: one ``.npz`` file, no pickle.

The file is an ordinary NumPy ``.npz`` archive (a zip of ``.npy`` arrays) holding

* ``__config__``: the architecture and compile settings as UTF-8 JSON (stored as a uint8 array);
* ``layers/<i>/<weight>``: every layer's weights, Keras's names and layouts
  (batch-norm moving statistics included);
* ``optimizer/<layer>/<param>/<slot>`` and ``optimizer/iterations``: the optimizer state, so that
  training continues exactly where it stopped.

Saving writes a temporary file in the same folder and renames it over the target, so an interrupted
save never leaves a half-written model where a good one stood.

Loading treats the file as untrusted input
------------------------------------------
A model file may come from anywhere, so :func:`load_model` reads it as data and checks every claim
the file makes *before* acting on it:

1. **No code.** Arrays are plain numbers; an array of Python objects (which NumPy would unpickle,
   and unpickling can run any code) is refused. Layers, optimizers and losses are built only from
   tinycnn's own classes, looked up by name in allow-lists (``layers.LAYER_CLASSES``, ...).
2. **No allocation on the file's word.** A ``.npy`` entry starts with a header announcing its shape
   and dtype; a hostile file can announce 10^12 elements. The header is read and checked first:
   its length (at most :data:`MAX_HEADER_BYTES`), its dtype (plain numbers), its shape against the
   shape the architecture needs, and its byte count against the entry's real size. The weight
   shapes the architecture needs come from a dry run of each layer's ``build`` that records shapes
   instead of creating arrays. Only when all of that agrees is anything allocated.
3. **No zip bombs.** A zip entry declares its unpacked size; the total may not exceed
   :data:`MAX_COMPRESSION_RATIO` times the packed size (tinycnn writes uncompressed entries, and
   trained weights hardly compress). The JSON configuration is capped at :data:`MAX_CONFIG_BYTES`.

Anything wrong raises :class:`ModelFileError` (a ``ValueError``) whose message starts with the file
name and says what is wrong.
"""
import io
import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .layers import LAYER_CLASSES

FORMAT = "tinycnn-model"
VERSION = 1

#: Largest architecture description (JSON) a model file may carry.
MAX_CONFIG_BYTES = 10 * 2**20
#: Largest ``.npy`` header read; NumPy's own default limit. Real headers are about 128 bytes.
MAX_HEADER_BYTES = 10_000
#: Largest ratio of declared unpacked size to packed size over the whole archive.
MAX_COMPRESSION_RATIO = 100
#: ... plus this many bytes, so that a small file of zeros (an untrained bias) is not refused.
_RATIO_SLACK = 2**20
_NPY_MAGIC = b"\x93NUMPY"
#: What building layers from a hostile description may raise (caught and reported as ModelFileError).
_BAD_DESCRIPTION = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError)


def _model_config(model):
    config = {
        "format": FORMAT,
        "version": VERSION,
        "name": model.name,
        "metadata": model.metadata,
        "input_shape": list(model.layers[0].input_shape),
        "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in model.layers],
        "compile": None,
        # How settled each batch-norm layer's moving statistics are (for the inference warning).
        "batchnorm": {str(i): {"updates": layer.updates, "recalibrated": layer.recalibrated}
                      for i, layer in enumerate(model.layers) if hasattr(layer, "recalibrated")},
    }
    if model.compiled:
        config["compile"] = {
            "optimizer": {"class_name": type(model.optimizer).__name__, "config": model.optimizer.get_config()},
            "loss": {"class_name": type(model.loss).__name__, "config": model.loss.get_config()},
            "metrics": [m.name for m in model.metrics],
        }
    return config


def save_model(model, filepath):
    """Write ``model`` to ``filepath`` atomically (temporary file + rename).

    Parameters
    ----------
    model : Sequential
        Must be built (its input shape known).
    filepath : str or os.PathLike
        Any name; ``.npz`` is a good extension since that is what the file is.

    Notes
    -----
    The new file replaces an existing one in a single rename, so a reader (or a crash) sees either
    the old model or the new one, never half of each. It keeps the old file's permissions, or gets
    the usual ones for a new file (``0o666`` less the umask).
    """
    model._require_built("save")
    try:
        text = json.dumps(_model_config(model))
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: the model's configuration or `metadata` is not plain JSON data ({e}); use "
                        f"str, int, float, bool, list and dict values") from None
    config = text.encode("utf-8")
    if len(config) > MAX_CONFIG_BYTES:
        raise ValueError(f"save: the model's configuration takes {len(config):,} bytes of JSON, more than the "
                         f"{MAX_CONFIG_BYTES:,} that load_model accepts; keep large data out of `model.metadata`")
    arrays = {"__config__": np.frombuffer(config, dtype=np.uint8)}
    for i, layer in enumerate(model.layers):
        for name in layer.weight_names:
            if layer._has_weight(name):
                arrays[f"layers/{i}/{name}"] = layer._weight(name)
    if model.compiled:
        for key, value in model.optimizer.get_state().items():
            arrays[f"optimizer/{key}"] = value
    filepath = os.fspath(filepath)
    folder = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(filepath))  # mkstemp makes files private (0o600)
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _file_mode(filepath):
    """Permissions for the saved file: those of the file it replaces, else 0o666 less the umask."""
    try:
        return os.stat(filepath).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX). Where folders cannot be opened (Windows), do nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelFileError(ValueError):
    """A model file that cannot be loaded: truncated, foreign, hostile or inconsistent."""


def load_model(filepath, compile=True):
    """Load a model written by :func:`save_model`, treating the file as untrusted data.

    Parameters
    ----------
    filepath : str or os.PathLike
    compile : bool, default True
        Restore the optimizer (with its state), loss and metrics, so ``fit`` continues exactly.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError (a ValueError)
        The file is not a tinycnn model, is truncated, holds pickled objects, names a class tinycnn
        does not allow, announces arrays that do not match its architecture or its own size, or
        unpacks to far more than it holds. The message names the file and the problem. See the
        module docstring for what is checked, and in which order.
    """
    filepath = os.fspath(filepath)

    def fail(problem):
        return ModelFileError(f"{filepath}: {problem}")

    if not os.path.exists(filepath):
        raise FileNotFoundError(f"{filepath}: no such model file")
    if os.path.isdir(filepath):
        raise fail("is a folder, not a model file")
    size = os.path.getsize(filepath)
    if size == 0:
        raise fail("not a tinycnn model file: the file is empty (0 bytes)")
    with open(filepath, "rb") as f:
        start = f.read(len(_NPY_MAGIC))
    if start == _NPY_MAGIC:
        raise fail("not a tinycnn model file: it is a single .npy array, not an .npz archive")
    try:
        archive = zipfile.ZipFile(filepath)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        if start.startswith(b"PK\x03\x04"):
            raise fail(f"the file starts like an .npz (zip) archive but its zip directory is missing or damaged: "
                       f"the file is truncated or corrupt ({e})") from None
        raise fail(f"not a tinycnn model file (not an .npz archive: {e})") from None
    with archive:
        try:
            return _load(archive, size, compile, fail)
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError) as e:
            raise fail(f"the file is truncated or corrupt ({type(e).__name__}: {e})") from None


def _load(archive, size, compile, fail):
    """The steps of :func:`load_model` once the file has opened as a zip archive."""
    from .model import Sequential  # model.py imports this module

    entries = _check_entries(archive, size, fail)
    if "__config__" not in entries:
        held = ", ".join(sorted(entries)[:10]) or "nothing"
        raise fail(f"not a tinycnn model file (no __config__ entry; the archive holds: {held})")
    config = _read_config(archive, entries["__config__"], fail)
    layers, input_shape = _architecture(config, fail)
    try:
        model = Sequential(layers, name=config.get("name"))
    except _BAD_DESCRIPTION as e:
        raise fail(f"the architecture is inconsistent: {e}") from None
    model.metadata = config.get("metadata") or {}

    # Every weight the architecture needs, checked against the file's headers before anything is built.
    planned = _plan_weights(layers, input_shape, fail)
    expected = {"__config__"}
    headers = {}
    for i, (layer, shapes) in enumerate(zip(layers, planned)):
        for name, shape in shapes.items():
            key = f"layers/{i}/{name}"
            if key not in entries:
                raise fail(f"weight '{name}' of layer {i} ('{layer.name}', {type(layer).__name__}) is missing")
            headers[key] = _array_header(archive, entries[key], key, fail, "biuf", shape)
            expected.add(key)
    for key in entries:
        if key not in expected and not key.startswith("optimizer/"):
            raise fail(f"unexpected entry '{key}': the architecture has no such weight")

    try:
        model.build(input_shape)
    except _BAD_DESCRIPTION as e:
        raise fail(f"the architecture is inconsistent: {e}") from None
    for i, (layer, shapes) in enumerate(zip(model.layers, planned)):
        names = [n for n in layer.weight_names if layer._has_weight(n)]
        if sorted(names) != sorted(shapes):
            raise fail(f"layer {i} ('{layer.name}') built weights {names}, not {sorted(shapes)}")
        values = [_read_array(archive, entries[f"layers/{i}/{n}"], headers[f"layers/{i}/{n}"], fail) for n in names]
        try:
            layer.set_weights(values)
        except (TypeError, ValueError) as e:
            raise fail(str(e)) from None

    batchnorm = config.get("batchnorm") or {}
    if not isinstance(batchnorm, dict):
        raise fail("the batch-norm state is not a JSON object")
    for key, bn_state in batchnorm.items():
        index = int(key) if key.isdigit() and len(key) < 6 else -1
        layer = model.layers[index] if 0 <= index < len(model.layers) else None
        if layer is None or not hasattr(layer, "recalibrated") or not isinstance(bn_state, dict):
            raise fail(f"batch-norm state for layer {key!r} does not match the architecture")
        updates, recalibrated = bn_state.get("updates", 0), bn_state.get("recalibrated", False)
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0 \
                or not isinstance(recalibrated, bool):
            raise fail(f"batch-norm state for layer {key!r} must be {{'updates': int >= 0, 'recalibrated': bool}}, "
                       f"found {bn_state!r}")
        layer.updates, layer.recalibrated = updates, recalibrated
    if compile and config.get("compile"):
        _compile_from_config(model, config["compile"], archive, entries, fail)
    return model


# --- the archive and its entries ------------------------------------------------------------------

def _check_entries(archive, size, fail):
    """``{name: ZipInfo}`` for the ``.npy`` entries (name without ``.npy``), after checking the zip
    directory against the file: known entry types, sizes within the file, no zip bomb."""
    entries = {}
    declared = packed = 0
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise fail(f"not a tinycnn model file (entry {name!r} is not a NumPy array (.npy))")
        key = name[:-len(".npy")]
        if key in entries:
            raise fail(f"entry '{key}' appears twice in the archive")
        if info.flag_bits & 0x1:
            raise fail(f"entry '{key}' is encrypted; tinycnn model files are not")
        if info.header_offset + info.compress_size > size:
            raise fail(f"entry '{key}' reaches past the end of the file ({size:,} bytes): the file is truncated")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise fail(f"entry '{key}' is stored uncompressed but declares {info.file_size:,} bytes in "
                       f"{info.compress_size:,}: the zip directory is corrupt")
        declared += info.file_size
        packed += info.compress_size
        entries[key] = info
    if declared > MAX_COMPRESSION_RATIO * packed + _RATIO_SLACK:
        raise fail(f"the archive declares {declared:,} bytes of data packed into {packed:,} (a ratio of "
                   f"{declared / max(packed, 1):,.0f} to 1); a tinycnn model stays below {MAX_COMPRESSION_RATIO} "
                   f"to 1, so this looks like a zip bomb: refusing to unpack it")
    return entries


def _array_header(archive, info, what, fail, kinds, shape=None):
    """Read and check the ``.npy`` header of one entry without touching its data.

    Checks, in order: the signature and format version, the header's length (before reading it),
    the dtype (plain numbers of ``kinds``; object arrays are refused), the shape against ``shape``
    (the architecture's), and the data size the header announces against what the entry holds.

    Returns
    -------
    (shape, dtype, fortran_order, offset) with ``offset`` the size of the header in bytes.
    """
    with archive.open(info) as stream:
        prefix = stream.read(len(_NPY_MAGIC) + 2)
        if len(prefix) < len(_NPY_MAGIC) + 2 or not prefix.startswith(_NPY_MAGIC):
            raise fail(f"entry '{what}' is not a NumPy array (no .npy signature)")
        major, minor = prefix[-2], prefix[-1]
        if major not in (1, 2):
            raise fail(f"entry '{what}' uses .npy format version {major}.{minor}; tinycnn reads versions 1.0 "
                       f"and 2.0, which is what NumPy writes for numbers")
        length_field = stream.read(2 if major == 1 else 4)
        header_length = int.from_bytes(length_field, "little")
        if header_length > MAX_HEADER_BYTES:
            raise fail(f"entry '{what}' has a .npy header of {header_length:,} bytes, more than the "
                       f"{MAX_HEADER_BYTES:,} allowed (a genuine one has about 128): refusing to read it")
        header = stream.read(header_length)
    if len(length_field) + len(header) != (2 if major == 1 else 4) + header_length:
        raise fail(f"entry '{what}' ends inside its .npy header: the file is truncated or corrupt")
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    try:
        found, fortran, dtype = read_header(io.BytesIO(length_field + header), max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
        raise fail(f"entry '{what}' has a malformed .npy header ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise fail(f"entry '{what}' holds Python objects (a pickled object array); a tinycnn model file holds "
                   f"plain numbers only, and unpickling can run arbitrary code: refusing to load it")
    if dtype.kind not in kinds or dtype.names is not None or dtype.subdtype is not None:
        raise fail(f"entry '{what}' has dtype {dtype}; expected plain numbers of kind {_KIND_NAMES[kinds]}")
    if any(d < 0 for d in found):
        raise fail(f"entry '{what}' announces a negative shape {found}")
    if shape is not None and tuple(found) != tuple(shape):
        raise fail(f"entry '{what}' has shape {tuple(found)} in the file but the architecture needs "
                   f"{tuple(shape)}")
    data_bytes = math.prod(found) * dtype.itemsize
    offset = len(prefix) + len(length_field) + header_length
    held = info.file_size - offset
    if data_bytes != held:
        raise fail(f"entry '{what}': its header announces shape {tuple(found)} of {dtype} ({data_bytes:,} bytes) "
                   f"but the entry holds {held:,} bytes of data: the header is wrong or the entry truncated")
    return tuple(found), dtype, fortran, offset


_KIND_NAMES = {"biuf": "bool, int or float", "u": "uint8", "iu": "int", "f": "float"}


def _read_array(archive, info, header, fail):
    """The data of one entry whose header :func:`_array_header` accepted, as a writable native array."""
    shape, dtype, fortran, offset = header
    nbytes = math.prod(shape) * dtype.itemsize
    with archive.open(info) as stream:
        stream.read(offset)
        data = stream.read(nbytes)
        stream.read()  # reading to the end makes zipfile check the entry's CRC
    if len(data) != nbytes:
        raise fail(f"entry '{info.filename[:-4]}' ends after {len(data):,} of its {nbytes:,} bytes of data: "
                   f"the file is truncated")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), order="C")  # a copy: writable, native byte order


def _read_config(archive, info, fail):
    """The JSON architecture description, size-checked before it is read."""
    def too_large(size):
        return fail(f"the configuration takes {size:,} bytes; a model's JSON description is at most "
                    f"{MAX_CONFIG_BYTES:,}: refusing to read it")

    if info.file_size > MAX_CONFIG_BYTES + MAX_HEADER_BYTES:
        raise too_large(info.file_size)
    header = _array_header(archive, info, "__config__", fail, "u")
    if header[1].itemsize != 1 or len(header[0]) != 1:
        raise fail(f"the configuration entry must be a 1-d uint8 array (UTF-8 JSON text), found shape "
                   f"{header[0]} of {header[1]}")
    if header[0][0] > MAX_CONFIG_BYTES:
        raise too_large(header[0][0])
    text = _read_array(archive, info, header, fail).tobytes()
    try:
        config = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise fail(f"the configuration is not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise fail(f"the configuration is not valid JSON ({e})") from None
    except (RecursionError, ValueError) as e:  # nesting bombs; integers of thousands of digits
        raise fail(f"the configuration cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise fail("not a tinycnn model file (unknown format)")
    if config.get("version") != VERSION:
        raise fail(f"model format version {config.get('version')!r} is not supported (expected {VERSION})")
    return config


# --- the architecture ------------------------------------------------------------------------------

def _architecture(config, fail):
    """The layers (tinycnn classes only) and the input shape described by ``config``."""
    name, metadata = config.get("name"), config.get("metadata")
    if name is not None and not isinstance(name, str):
        raise fail(f"the model's name must be a string, found {name!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise fail("the model's metadata is not a JSON object")
    specs = config.get("layers")
    if not isinstance(specs, list) or not specs:
        raise fail("the model has no layers")
    input_shape = config.get("input_shape")
    if not isinstance(input_shape, list) or not 1 <= len(input_shape) <= 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d < 2**31 for d in input_shape):
        raise fail(f"the input shape must be a list of 1 to 8 positive ints, found {input_shape!r}")
    return [_layer_from_spec(spec, i, fail) for i, spec in enumerate(specs)], tuple(input_shape)


def _layer_from_spec(spec, i, fail):
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise fail(f"layer {i} has a malformed description")
    name = spec.get("class_name")
    if not isinstance(name, str) or name not in LAYER_CLASSES:
        raise fail(f"layer {i} asks for class {name!r}, which is not a tinycnn layer; refusing to load "
                   f"(allowed: {sorted(LAYER_CLASSES)})")
    try:
        return LAYER_CLASSES[name].from_config(spec["config"])
    except _BAD_DESCRIPTION as e:
        raise fail(f"layer {i} ({name}) has an invalid configuration: {e}") from None


def _plan_weights(layers, input_shape, fail):
    """For each layer, ``{weight name: shape}`` that building it on ``input_shape`` will create.

    A dry run: each layer's own ``build`` runs with ``add_weight`` replaced by a recorder, so the
    shapes come from the layer's code (no second copy of the rules here) and no array is created.
    The layer is then returned to its unbuilt state.
    """
    planned = []
    shape = input_shape
    for i, layer in enumerate(layers):
        shapes = {}

        def record(name, weight_shape, initializer, trainable=True):
            shapes[name] = tuple(int(d) for d in weight_shape)

        layer.add_weight = record  # an instance attribute: hides the method for this one build
        try:
            layer.build(shape)
            shape = layer.output_shape
        except _BAD_DESCRIPTION as e:
            raise fail(f"the architecture is inconsistent at layer {i} ('{layer.name}'): {e}") from None
        finally:
            del layer.add_weight
            layer.built, layer.input_shape, layer.output_shape = False, None, None
        planned.append(shapes)
    return planned


def _compile_from_config(model, compile_config, archive, entries, fail):
    try:
        opt_spec, loss_spec = compile_config["optimizer"], compile_config["loss"]
        opt_cls = optimizers_module.OPTIMIZER_CLASSES[opt_spec["class_name"]]
        loss_cls = losses_module.LOSS_CLASSES[loss_spec["class_name"]]
        optimizer = opt_cls(**opt_spec["config"])
        loss = loss_cls(**loss_spec["config"])
        metrics = [metrics_module.get(m, loss.target_kind) for m in compile_config.get("metrics", [])]
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    except _BAD_DESCRIPTION as e:
        raise fail(f"the compile settings are invalid or name a class tinycnn does not have: {e!r}") from None
    params = {key: value for key, value, _ in model._trainable()}
    state = {}
    for entry, info in entries.items():
        if not entry.startswith("optimizer/"):
            continue
        key = entry[len("optimizer/"):]
        if key == "iterations":
            header = _array_header(archive, info, entry, fail, "iu", ())
            state[key] = int(_read_array(archive, info, header, fail))
            if state[key] < 0:
                raise fail(f"optimizer state '{key}' is negative")
            continue
        owner, _, slot = key.rpartition("/")
        if owner not in params or slot not in optimizer.slot_names:
            raise fail(f"optimizer state '{key}' does not match the model's parameters")
        header = _array_header(archive, info, entry, fail, "f", (params[owner].size,))
        state[key] = _read_array(archive, info, header, fail).astype(params[owner].dtype, copy=False)
    try:
        optimizer.set_state(state)
    except ValueError as e:
        raise fail(str(e)) from None
