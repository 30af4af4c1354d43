"""Saving and loading whole models as plain data: one ``.npz`` file, no pickle.

``model.save(path)`` writes (through ``tinycnn/archive.py``, atomically):

* ``__config__``: the architecture (``model.get_config()``), compile settings, metadata and
  batch-norm bookkeeping as UTF-8 JSON, with the format version (2; tinycnn 0.1 wrote 1, which
  loads too);
* ``layers/<i>/<weight>``: every layer's weights, Keras's names and layouts (batch-norm moving
  statistics included), ``i`` the layer's position in ``model.layers``;
* ``optimizer/<layer>/<param>/<slot>`` and ``optimizer/iterations``: the optimizer state, so that
  training continues exactly where it stopped.

Loading treats the file as untrusted input
------------------------------------------
A model file may come from anywhere, so :func:`load_model` reads it as data and checks every claim
the file makes *before* acting on it. ``archive.ArchiveReader`` checks the container (zip
directory, sizes, ``.npy`` headers, no pickled objects, no zip bombs); this module checks the
description against what it asks for:

1. **No code.** Layers, optimizers and losses are built only from tinycnn's own classes, looked up
   by name in allow-lists (``layers.LAYER_CLASSES``, ...).
2. **No allocation on the file's word.** The weight shapes the architecture needs come from a dry
   run of the model's construction in which each layer's ``add_weight`` records shapes instead of
   creating arrays; every weight's header must announce exactly that shape, and the bytes it holds,
   before anything is built.
3. **No work on the file's word.** Building takes time in proportion to the description's size, so
   that size is bounded before anything is built: at most :data:`MAX_LAYERS` layers,
   :data:`MAX_NODES` layer calls and as many connections between them, lists of at most
   :data:`MAX_LIST_ITEMS` items in a layer's settings (shapes, kernel sizes, strides), at most
   :data:`MAX_METRICS` metrics.

Anything wrong raises :class:`ModelFileError` (a ``ValueError``) whose message starts with the file
name and says what is wrong.
"""
from . import losses as losses_module
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from .archive import MAX_COMPRESSION_RATIO, MAX_CONFIG_BYTES, MAX_HEADER_BYTES, ArchiveReader, ModelFileError
from .layers import LAYER_CLASSES
from .model import model_from_config

# The archive's limits are re-exported here, where 0.1 defined them.
__all__ = ["save_model", "load_model", "ModelFileError", "MAX_CONFIG_BYTES", "MAX_HEADER_BYTES",
           "MAX_COMPRESSION_RATIO"]

#: Format versions :func:`load_model` reads.
VERSIONS = (1, 2)
#: Most layers a model file may describe (ResNet-18 has 69).
MAX_LAYERS = 2_000
#: Most layer calls (nodes of a functional graph), and most connections between them.
MAX_NODES = 5_000
#: Longest list in a layer's settings: no tinycnn layer takes more than a shape of 8 dimensions.
MAX_LIST_ITEMS = 8
#: Most metrics in the compile settings (names are unique, and tinycnn has fewer).
MAX_METRICS = 32
#: What building layers from a hostile description may raise (caught and reported as ModelFileError).
_BAD_DESCRIPTION = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)


def save_model(model, filepath):
    """Write ``model`` to ``filepath`` atomically: the same as ``model.save(filepath)``.

    Parameters
    ----------
    model : Model or Sequential
        Must be built (its input shape known).
    filepath : str or os.PathLike
        Any name; ``.npz`` is a good extension since that is what the file is.
    """
    model.save(filepath)


def load_model(filepath, compile=True):
    """Load a model written by ``model.save``, treating the file as untrusted data.

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
    with ArchiveReader(filepath) as archive:
        return _load(archive, compile)


def _load(archive, compile):
    """The steps of :func:`load_model` once the archive has opened and its description was read."""
    fail = archive.fail
    config = archive.config
    description = _description(config, fail)
    metadata = config.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise fail("the model's metadata is not a JSON object")

    # A dry run of the construction: the weight shapes the architecture needs, nothing allocated.
    layers = _layers(description, fail)
    planned = [{} for _ in layers]
    for layer, shapes in zip(layers, planned):
        def record(name, weight_shape, initializer, trainable=True, shapes=shapes):
            shapes[name] = tuple(int(d) for d in weight_shape)
        layer.add_weight = record  # an instance attribute: hides the method for this dry run
    _construct(description, layers, fail)

    expected = {"__config__"}
    headers = {}
    for i, (layer, shapes) in enumerate(zip(layers, planned)):
        for name, shape in shapes.items():
            key = f"layers/{i}/{name}"
            if key not in archive.names:
                raise fail(f"weight '{name}' of layer {i} ('{layer.name}', {type(layer).__name__}) is missing")
            headers[key] = archive.header(key, "biuf", shape)
            expected.add(key)
    for key in archive.names:
        if key not in expected and not key.startswith("optimizer/"):
            raise fail(f"unexpected entry '{key}': the architecture has no such weight")

    model = _construct(description, _layers(description, fail), fail)
    model.metadata = metadata or {}
    for i, (layer, shapes) in enumerate(zip(model.layers, planned)):
        names = [n for n in layer.weight_names if layer._has_weight(n)]
        if sorted(names) != sorted(shapes):
            raise fail(f"layer {i} ('{layer.name}') built weights {names}, not {sorted(shapes)}")
        values = [archive.read(f"layers/{i}/{n}", headers[f"layers/{i}/{n}"]) for n in names]
        try:
            layer.set_weights(values)
        except (TypeError, ValueError) as e:
            raise fail(str(e)) from None
    _restore_batchnorm(model, config.get("batchnorm") or {}, fail)
    if compile and config.get("compile"):
        _compile_from_config(model, config["compile"], archive)
    return model


# --- the architecture ------------------------------------------------------------------------------

def _description(config, fail):
    """The model's description (``model.get_config()``) from a file of either format version."""
    version = config.get("version")
    if version not in VERSIONS:
        raise fail(f"model format version {version!r} is not supported (this tinycnn reads {list(VERSIONS)})")
    if version == 1:  # tinycnn 0.1: a Sequential's layers and input shape at the top level
        description = {"class_name": "Sequential", "name": config.get("name"), "layers": config.get("layers"),
                       "input_shape": config.get("input_shape")}
    else:
        description = config.get("model")
        if not isinstance(description, dict):
            raise fail("the model's description is missing or not a JSON object")
    name = description.get("name")
    if name is not None and not isinstance(name, str):
        raise fail(f"the model's name must be a string, found {name!r}")
    specs = description.get("layers")
    if not isinstance(specs, list) or not specs:
        raise fail("the model has no layers")
    if len(specs) > MAX_LAYERS:
        raise fail(f"the model describes {len(specs):,} layers; a tinycnn model file holds at most {MAX_LAYERS:,}")
    nodes = description.get("nodes")
    if isinstance(nodes, list):
        links = sum(len(n["inputs"]) for n in nodes if isinstance(n, dict) and isinstance(n.get("inputs"), list))
        links += len(description["inputs"]) if isinstance(description.get("inputs"), list) else 0
        if len(nodes) > MAX_NODES or links > MAX_NODES:
            raise fail(f"the model's graph has {len(nodes):,} layer calls and {links:,} connections; a tinycnn "
                       f"model file holds at most {MAX_NODES:,} of each")
    if description.get("class_name") == "Sequential":
        input_shape = description.get("input_shape")
        if not isinstance(input_shape, list) or not 1 <= len(input_shape) <= MAX_LIST_ITEMS or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d < 2**31 for d in input_shape):
            raise fail(f"the input shape must be a list of 1 to {MAX_LIST_ITEMS} positive ints, found "
                       f"{input_shape!r}")
    return description


def _layers(description, fail):
    """New, unbuilt layers (tinycnn classes only) from the description's layer list."""
    return [_layer_from_spec(spec, i, fail) for i, spec in enumerate(description["layers"])]


def _layer_from_spec(spec, i, fail):
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise fail(f"layer {i} has a malformed description")
    name = spec.get("class_name")
    if not isinstance(name, str) or name not in LAYER_CLASSES:
        raise fail(f"layer {i} asks for class {name!r}, which is not a tinycnn layer; refusing to load "
                   f"(allowed: {sorted(LAYER_CLASSES)})")
    for key, value in spec["config"].items():
        if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
            raise fail(f"layer {i} ({name}) has a list of {len(value):,} items in its setting {key!r}; tinycnn "
                       f"layers take at most {MAX_LIST_ITEMS}")
    try:
        return LAYER_CLASSES[name].from_config(spec["config"])
    except _BAD_DESCRIPTION as e:
        raise fail(f"layer {i} ({name}) has an invalid configuration: {e}") from None


def _construct(description, layers, fail):
    """The model from its description and ``layers``; an inconsistent description is reported."""
    try:
        return model_from_config(description, layers)
    except _BAD_DESCRIPTION as e:
        raise fail(f"the architecture is inconsistent: {e}") from None


def _restore_batchnorm(model, batchnorm, fail):
    if not isinstance(batchnorm, dict):
        raise fail("the batch-norm state is not a JSON object")
    for key, bn_state in batchnorm.items():
        index = int(key) if key.isascii() and key.isdigit() and len(key) < 6 else -1
        layer = model.layers[index] if 0 <= index < len(model.layers) else None
        if layer is None or not hasattr(layer, "recalibrated") or not isinstance(bn_state, dict):
            raise fail(f"batch-norm state for layer {key!r} does not match the architecture")
        updates, recalibrated = bn_state.get("updates", 0), bn_state.get("recalibrated", False)
        # A count of training steps: within int64 (a larger one overflowed momentum ** updates in predict).
        if isinstance(updates, bool) or not isinstance(updates, int) or not 0 <= updates < 2**63 \
                or not isinstance(recalibrated, bool):
            raise fail(f"batch-norm state for layer {key!r} must be {{'updates': int in [0, 2**63), 'recalibrated': "
                       f"bool}}, found {bn_state!r}")
        layer.updates, layer.recalibrated = updates, recalibrated


def _compile_from_config(model, compile_config, archive):
    fail = archive.fail
    if not isinstance(compile_config, dict) or not isinstance(compile_config.get("metrics", []), list):
        raise fail("the compile settings must be a JSON object whose 'metrics' is a list of names")
    names = compile_config.get("metrics", [])
    if len(names) > MAX_METRICS:
        raise fail(f"the compile settings name {len(names):,} metrics; tinycnn model files hold at most "
                   f"{MAX_METRICS}")
    try:
        opt_spec, loss_spec = compile_config["optimizer"], compile_config["loss"]
        opt_cls = optimizers_module.OPTIMIZER_CLASSES[opt_spec["class_name"]]
        loss_cls = losses_module.LOSS_CLASSES[loss_spec["class_name"]]
        optimizer = opt_cls(**opt_spec["config"])
        loss = loss_cls(**loss_spec["config"])
        metrics = [metrics_module.get(m, loss.target_kind) for m in names]
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    except _BAD_DESCRIPTION as e:
        raise fail(f"the compile settings are invalid or name a class tinycnn does not have: {e!r}") from None
    params = {key: value for key, value, _ in model._trainable()}
    state = {}
    for entry in archive.names:
        if not entry.startswith("optimizer/"):
            continue
        key = entry[len("optimizer/"):]
        if key == "iterations":
            state[key] = int(archive.read(entry, archive.header(entry, "iu", ())))
            if state[key] < 0:
                raise fail(f"optimizer state '{key}' is negative")
            continue
        owner, _, slot = key.rpartition("/")
        if owner not in params or slot not in optimizer.slot_names:
            raise fail(f"optimizer state '{key}' does not match the model's parameters")
        value = archive.read(entry, archive.header(entry, "f", (params[owner].size,)))
        state[key] = value.astype(params[owner].dtype, copy=False)
    try:
        optimizer.set_state(state)
    except ValueError as e:
        raise fail(str(e)) from None
