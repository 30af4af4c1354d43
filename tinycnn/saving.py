"""Saving and loading whole models as plain data: one ``.npz`` file, no pickle.

The file is an ordinary NumPy ``.npz`` archive (a zip of ``.npy`` arrays) holding

* ``__config__``: the architecture and compile settings as UTF-8 JSON (stored as a uint8 array);
* ``layers/<i>/<weight>``: every layer's weights, Keras's names and layouts
  (batch-norm moving statistics included);
* ``optimizer/<layer>/<param>/<slot>`` and ``optimizer/iterations``: the optimizer state, so that
  training continues exactly where it stopped.

Loading uses ``allow_pickle=False`` and builds layers only from tinycnn's own classes
(``layers.LAYER_CLASSES``); anything else in the file is refused with an error naming the file.
Saving writes a temporary file in the same folder and renames it over the target, so an interrupted
save never leaves a half-written model where a good one stood.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .layers import LAYER_CLASSES

FORMAT = "tinycnn-model"
VERSION = 1


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
    """
    model._require_built("save")
    try:
        text = json.dumps(_model_config(model))
    except TypeError as e:
        raise TypeError(f"save: the model's configuration or `metadata` is not plain JSON data ({e}); use "
                        f"str, int, float, bool, list and dict values") from None
    arrays = {"__config__": np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
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
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ModelFileError(ValueError):
    """A model file that cannot be loaded: truncated, foreign, or inconsistent."""


def load_model(filepath, compile=True):
    """Load a model written by :func:`save_model`.

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
        The file is not a tinycnn model, is truncated, names a class tinycnn does not allow, or its
        arrays do not match its architecture. The message names the file and the problem.
    """
    from .model import Sequential

    filepath = os.fspath(filepath)

    def fail(problem):
        return ModelFileError(f"{filepath}: {problem}")

    if not os.path.exists(filepath):
        raise FileNotFoundError(f"{filepath}: no such model file")
    try:
        archive = np.load(filepath, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise fail(f"not a tinycnn model file (cannot be read as an .npz archive: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail("not a tinycnn model file (a single array, not an .npz archive)")
    with archive:
        try:
            if "__config__" not in archive.files:
                raise fail("not a tinycnn model file (no __config__ entry)")
            config = json.loads(bytes(archive["__config__"].astype(np.uint8)).decode("utf-8"))
            if not isinstance(config, dict) or config.get("format") != FORMAT:
                raise fail("not a tinycnn model file (unknown format)")
            if config.get("version") != VERSION:
                raise fail(f"model format version {config.get('version')!r} is not supported (expected {VERSION})")
            layers = [_layer_from_spec(spec, i, fail) for i, spec in enumerate(config.get("layers") or [])]
            if not layers:
                raise fail("the model has no layers")
            model = Sequential(layers, name=config.get("name"))
            metadata = config.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise fail("the model's metadata is not a JSON object")
            model.metadata = metadata
            try:
                model.build(tuple(config["input_shape"]))
            except (KeyError, TypeError, ValueError) as e:
                raise fail(f"the architecture is inconsistent: {e}") from None
            for i, layer in enumerate(model.layers):
                names = [n for n in layer.weight_names if layer._has_weight(n)]
                missing = [n for n in names if f"layers/{i}/{n}" not in archive.files]
                if missing:
                    raise fail(f"weights {missing} of layer '{layer.name}' are missing")
                try:
                    layer.set_weights([archive[f"layers/{i}/{n}"] for n in names])
                except (TypeError, ValueError) as e:
                    raise fail(str(e)) from None
            for key, bn_state in (config.get("batchnorm") or {}).items():
                layer = model.layers[int(key)] if key.isdigit() and int(key) < len(model.layers) else None
                if layer is None or not hasattr(layer, "recalibrated") or not isinstance(bn_state, dict):
                    raise fail(f"batch-norm state for layer {key!r} does not match the architecture")
                layer.updates = int(bn_state.get("updates", 0))
                layer.recalibrated = bool(bn_state.get("recalibrated", False))
            if compile and config.get("compile"):
                _compile_from_config(model, config["compile"], archive, fail)
        except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(f"the file is truncated or corrupt ({type(e).__name__}: {e})") from None
        except ValueError as e:
            if isinstance(e, ModelFileError):
                raise
            raise fail(f"the file is truncated or corrupt ({e})") from None
    return model


def _layer_from_spec(spec, i, fail):
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise fail(f"layer {i} has a malformed description")
    name = spec.get("class_name")
    if name not in LAYER_CLASSES:
        raise fail(f"layer {i} asks for class {name!r}, which is not a tinycnn layer; refusing to load "
                   f"(allowed: {sorted(LAYER_CLASSES)})")
    try:
        return LAYER_CLASSES[name].from_config(spec["config"])
    except (TypeError, ValueError) as e:
        raise fail(f"layer {i} ({name}) has an invalid configuration: {e}") from None


def _compile_from_config(model, compile_config, archive, fail):
    try:
        opt_spec, loss_spec = compile_config["optimizer"], compile_config["loss"]
        opt_cls = optimizers_module.OPTIMIZER_CLASSES[opt_spec["class_name"]]
        loss_cls = losses_module.LOSS_CLASSES[loss_spec["class_name"]]
        optimizer = opt_cls(**opt_spec["config"])
        loss = loss_cls(**loss_spec["config"])
        metrics = [metrics_module.get(m, loss.target_kind) for m in compile_config.get("metrics", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise fail(f"the compile settings are invalid or name a class tinycnn does not have: {e}") from None
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    state = {key[len("optimizer/"):]: archive[key] for key in archive.files if key.startswith("optimizer/")}
    params = {key: value for key, value, _ in model._trainable()}
    for key, arr in state.items():
        if key == "iterations":
            continue
        owner = key.rsplit("/", 1)[0]
        if owner not in params or arr.shape != (params[owner].size,):
            raise fail(f"optimizer state '{key}' does not match the model's parameters")
    try:
        optimizer.set_state(state)
    except ValueError as e:
        raise fail(str(e)) from None
