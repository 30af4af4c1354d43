"""A tinycnn model as an ONNX file: the inference graph in standard operators, for ONNX Runtime and
every other engine that reads ONNX (``Model.export``, ``tinycnn export``).

The walk is the model graph's (``graph.topological_nodes``), not the plan's: the plan's fusions are
tinycnn's own business, and ONNX engines make their own. Each layer call becomes a few standard
operators of opset :data:`OPSET` (17; 18 to 21 on request), with the weights as initializers:

============================  ===================================================================
tinycnn layer                 ONNX operators
============================  ===================================================================
Conv2D                        ``Conv`` (kernel ``(KH, KW, C, F)`` -> ``(F, C, KH, KW)``, explicit
                              pads), then the activation
Dense                         ``Gemm`` on ``(N, n_in)``; ``MatMul`` + ``Add`` on longer shapes
                              (Dense acts on the last axis); then the activation
BatchNormalization            ``BatchNormalization`` (inference form: moving mean and variance)
MaxPooling2D                  ``MaxPool`` (explicit pads)
AveragePooling2D              ``AveragePool`` (explicit pads, ``count_include_pad=0``: padded
                              positions are not counted in the mean, as in tinycnn)
GlobalAverage/MaxPooling2D    ``GlobalAveragePool`` / ``GlobalMaxPool`` + ``Flatten``
Flatten                       ``Transpose`` back to NHWC, then ``Flatten``: the values come out in
                              tinycnn's order, so the next Dense layer's weights fit unchanged
Activation, ReLU, Softmax     ``Relu``, ``Sigmoid``, ``Tanh``, ``Softmax`` (over the channels)
Add, Subtract, Multiply       ``Add``, ``Sub``, ``Mul`` (a chain for more than two inputs)
Average                       ``Sum``, then ``Mul`` by ``1/n``
Concatenate                   ``Concat`` (the axis moved with the layout)
Dropout, Random*, Input       nothing: the identity at inference
============================  ===================================================================

Layout. tinycnn computes images as NHWC; ONNX's ``Conv`` and pooling want NCHW. The file takes
NHWC images like ``predict`` (its first operator a ``Transpose`` to NCHW), or NCHW images with
``channels_first=True``; inside, images stay NCHW. Each value of the graph is kept in the layouts
asked of it, and a ``Transpose`` is added where an operator needs the other one (``Flatten``, a
``Dense`` on an image), once per value. A model whose output is an image returns it in the
input's layout.

Names. The graph's inputs carry the names of the model's Input layers, its output the name of the
output layer; every other value and node is named after the layer that makes it
(``conv2d/conv``, ``dense``, ``conv2d/nchw``; a shared layer's second call ``conv2d/call2``). The
batch dimension is symbolic (``batch``). The file's metadata holds ``producer``,
``tinycnn_version``, ``layout`` (``NHWC`` or ``NCHW``), ``input_names`` and ``class_names``
(JSON lists) and ``output_name``.

The file is checked with ``onnx.checker.check_model(..., full_check=True)`` (which also infers
and checks every shape) before it is written, atomically. ONNX Runtime's output equals
``predict``'s within float32 rounding (tests/test_onnx_export.py).
"""
import importlib.metadata
import json

import numpy as np

from .archive import write_atomically
from .graph import topological_nodes
from .kernels.conv import conv_output_length
from .layers import (Activation, Add, Average, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, Dense,
                     Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D, Multiply,
                     RandomContrast, RandomFlip, RandomRotation, RandomTranslation, ReLU, Softmax, Subtract)

__all__ = ["OPSET", "OPSETS", "require_onnx", "export_onnx", "to_onnx"]

#: The opset files are written for by default; ``opset=`` may ask for any of OPSETS.
OPSET = 17
OPSETS = range(17, 22)
#: protobuf cannot serialise a message of 2 GiB or more (ONNX's external-data files are not written).
MAX_MODEL_BYTES = 2**31 - 2**20

_ACTIVATION_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax"}
# Layout of a value: tinycnn's own (NHWC for images; the only one for other ranks), or NCHW.
_NHWC, _NCHW = "NHWC", "NCHW"
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def require_onnx():
    """The ``onnx`` module, or an ImportError that says how to install it (it is an optional extra)."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError('ONNX export and import need the optional `onnx` package: pip install "tinycnn[onnx]" '
                          '(or pip install onnx onnxruntime)') from e
    return onnx


def export_onnx(model, filepath, channels_first=False, opset=None):
    """Write ``model``'s inference graph to the ONNX file ``filepath`` (see the module docstring).

    Parameters
    ----------
    model : tinycnn Model or Sequential, built, float32
    filepath : str or path-like
        Written atomically: a reader sees the old file or the new one, never a part.
    channels_first : bool, default False
        Image inputs (and image outputs) in NCHW, as PyTorch-born pipelines feed them, instead of
        tinycnn's NHWC.
    opset : int, optional
        ONNX opset version, 17 (default, :data:`OPSET`) to 21.

    Raises
    ------
    ValueError
        For a layer or an option with no ONNX form (naming the layer and what can be exported),
        an unbuilt or float64 model, or an opset out of range.
    ImportError
        Without the ``onnx`` package.
    """
    proto = to_onnx(model, channels_first=channels_first, opset=opset)
    data = proto.SerializeToString()
    write_atomically(filepath, lambda f: f.write(data), suffix=".onnx")


def to_onnx(model, channels_first=False, opset=None):
    """``model``'s inference graph as a checked ``onnx.ModelProto`` (what :func:`export_onnx` writes)."""
    where = "ONNX export"
    if not isinstance(channels_first, (bool, np.bool_)):
        raise TypeError(f"{where}: argument `channels_first` must be a bool, received {channels_first!r}")
    if opset is None:
        opset = OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset not in OPSETS:
        raise ValueError(f"{where}: invalid value for argument `opset`: expected an int from {OPSETS[0]} to "
                         f"{OPSETS[-1]}, received {opset!r}")
    if not getattr(model, "built", False):
        raise ValueError(f"{where}: the model is not built yet (its input shape is unknown); build it or call "
                         f"predict once first")
    if model.inputs[0].dtype != np.float32:
        raise ValueError(f"{where}: the model computes in {model.inputs[0].dtype.name}; only float32 models are "
                         f"exported (float64 is tinycnn's precision for gradient checks, not for deployment)")
    onnx = require_onnx()
    graph = _GraphWriter(model, bool(channels_first)).write(onnx)
    layout = _NCHW if channels_first else _NHWC
    proto = onnx.helper.make_model(graph, producer_name="tinycnn", producer_version=_version(),
                                   opset_imports=[onnx.helper.make_opsetid("", int(opset))])
    # the oldest IR version that carries this opset: the file opens in older runtimes too
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    metadata = {"producer": "tinycnn", "tinycnn_version": _version(), "layout": layout,
                "input_names": json.dumps([t.name for t in model.inputs]), "output_name": model.outputs[0].name}
    class_names = getattr(model, "metadata", {}).get("class_names")
    if class_names:
        metadata["class_names"] = json.dumps(list(class_names))
    onnx.helper.set_model_props(proto, metadata)
    size = proto.ByteSize()
    if size >= MAX_MODEL_BYTES:
        raise ValueError(f"{where}: the model takes {size:,} bytes as ONNX, more than the 2 GiB one ONNX file can "
                         f"hold without external data (which tinycnn does not write)")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _version():
    try:
        return importlib.metadata.version("tinycnn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _GraphWriter:
    """Collects the nodes and initializers of one model's graph (see the module docstring).

    ``values[id(node)]`` is ``{layout: ONNX name}`` for the output of a model-graph node: where
    its value can be read, in each layout asked of it so far. Nodes are kept as plain records
    ``(op, inputs, outputs, attributes)`` until :meth:`write`, so that names can still change.
    """

    def __init__(self, model, channels_first):
        self.model = model
        self.channels_first = channels_first
        self.records = []
        self.weights = {}                          # initializer name -> array
        self.weight_names = {}                     # (id(layer), key) -> initializer name
        self.values = {}
        self.taken = {layer.name for layer in model.layers} | {t.name for t in model.inputs}

    # --- names, nodes and weights ---------------------------------------------------------------------

    def fresh(self, name):
        """``name``, or ``name_1``, ``name_2``, ... : a name no value, node or layer has yet."""
        candidate, k = name, 0
        while candidate in self.taken:
            k += 1
            candidate = f"{name}_{k}"
        self.taken.add(candidate)
        return candidate

    def node(self, op, inputs, output, **attributes):
        self.records.append((op, list(inputs), [output], attributes))
        return output

    def weight(self, layer, key, array):
        """The initializer ``layer/key`` (made once, so a shared layer's calls share it)."""
        name = self.weight_names.get((id(layer), key))
        if name is None:
            name = self.weight_names[id(layer), key] = self.fresh(f"{layer.name}/{key}")
            self.weights[name] = np.ascontiguousarray(array, dtype=np.float32)
        return name

    def read(self, tensor, layout=_NHWC):
        """The ONNX name of the symbolic ``tensor``'s value in ``layout`` (a Transpose added once if
        only the other layout exists yet). Only images (rank 4 with the batch) have two layouts."""
        held = self.values[id(tensor.node)]
        if len(tensor.sample_shape) != 3:
            return held[_NHWC]
        if layout not in held:
            source = next(iter(held.values()))
            held[layout] = self.node("Transpose", [source], self.fresh(f"{source}/{layout.lower()}"),
                                     perm=_TO_NCHW if layout == _NCHW else _TO_NHWC)
        return held[layout]

    def image_layout(self, tensor):
        """The layout an operator that accepts both reads ``tensor`` in: the one it already has."""
        return next(iter(self.values[id(tensor.node)]))

    # --- the graph ------------------------------------------------------------------------------------

    def write(self, onnx):
        model = self.model
        helper, TensorProto = onnx.helper, onnx.TensorProto
        image_layout = _NCHW if self.channels_first else _NHWC
        graph_inputs = []
        for t in model.inputs:
            shape = list(t.sample_shape)
            if len(shape) == 3:
                self.values[id(t.node)] = {image_layout: t.name}
                if self.channels_first:
                    shape = [shape[2], shape[0], shape[1]]
            else:
                self.values[id(t.node)] = {_NHWC: t.name}
            graph_inputs.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["batch"] + shape))

        out = model.outputs[0]
        calls = {}
        for node in topological_nodes(model.inputs, [out], "ONNX export"):
            if node.is_input:
                continue
            layer = node.layer
            calls[id(layer)] = k = calls.get(id(layer), 0) + 1
            if node is out.node:
                name = layer.name
            elif k > 1 or layer is out.node.layer:  # the output layer's name is kept for the output
                name = self.fresh(f"{layer.name}/call{k}")
            else:
                name = layer.name
            convert = _CONVERTERS.get(type(layer))
            if convert is None:
                raise ValueError(f"ONNX export: {layer.describe()} has no ONNX form; tinycnn exports "
                                 f"{', '.join(sorted(cls.__name__ for cls in _CONVERTERS))} (and Input)")
            # (a layer that vanishes shares its input's entry: a Transpose made for one serves both)
            self.values[id(node)] = convert(self, layer, node, name)

        shape = list(out.sample_shape)
        if len(shape) == 3 and self.channels_first:
            shape = [shape[2], shape[0], shape[1]]
        result = self.read(out, image_layout)
        renames = self._name_output(result, out.name, {t.name for t in model.inputs},
                                    _NHWC if image_layout == _NCHW else _NCHW)
        graph_output = helper.make_tensor_value_info(out.name, TensorProto.FLOAT, ["batch"] + shape)

        def named(name):
            return renames.get(name, name)

        nodes = [helper.make_node(op, [named(i) for i in inputs], [named(o) for o in outputs], name=named(outputs[0]),
                                  **attributes)
                 for op, inputs, outputs, attributes in self.records]
        initializers = [onnx.numpy_helper.from_array(array, name) for name, array in self.weights.items()]
        return helper.make_graph(nodes, model.name, graph_inputs, [graph_output], initializer=initializers,
                                 doc_string=f"tinycnn model '{model.name}'")

    def _name_output(self, result, name, input_names, other_layout):
        """Renames ``{old: new}`` that give the graph's output (now the value ``result``) the output
        layer's ``name``: ``result`` is a Transpose of the layer's value (which then is renamed
        after its layout, ``other_layout``) or another layer's value (the output layer vanished,
        e.g. Dropout)."""
        if result == name:
            return {}
        if result in input_names:  # the output is an input, through layers that vanish
            self.node("Identity", [result], name)
            return {}
        renames = {result: name}
        if any(name in outputs for _, _, outputs, _ in self.records):
            renames[name] = self.fresh(f"{name}/{other_layout.lower()}")
        return renames


# --- one function per layer class: (writer, layer, node, output name) -> {layout: ONNX name} --------------

def _activation(w, activation, x, out, layout, rank):
    """The ``activation`` node ``x -> out`` (softmax over the channels: axis 1 in NCHW, else the last)."""
    op = _ACTIVATION_OPS[activation]
    if op == "Softmax":
        return w.node(op, [x], out, axis=1 if layout == _NCHW and rank == 4 else -1)
    return w.node(op, [x], out)


def _core_name(w, layer, out, what):
    """Where the linear part of an activated layer writes: ``out`` itself without an activation."""
    return out if layer.activation.name == "linear" else w.fresh(f"{out}/{what}")


def _finish(w, layer, z, out, layout, rank):
    if layer.activation.name != "linear":
        _activation(w, layer.activation.name, z, out, layout, rank)
    return {layout: out}


def _pads(sizes, kernel, strides, padding):
    """ONNX ``pads`` ``[top, left, bottom, right]`` that place the windows where tinycnn does.

    tinycnn's rule (``conv_output_length``) gives the output length and the leading padding
    ('same': the smaller half of the total first, as TensorFlow; 'valid': none); the trailing
    padding is then how far the last window reaches past the image.
    """
    begins, ends = [], []
    for size, k, s in zip(sizes, kernel, strides):
        out, begin = conv_output_length(size, k, s, padding)
        begins.append(begin)
        ends.append(max((out - 1) * s + k - size - begin, 0))
    return begins + ends


def _conv2d(w, layer, node, out):
    x = w.read(node.inputs[0], _NCHW)
    inputs = [x, w.weight(layer, "kernel", layer.params["kernel"].transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(w.weight(layer, "bias", layer.params["bias"]))
    z = _core_name(w, layer, out, "conv")
    w.node("Conv", inputs, z, kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
           pads=_pads(layer.input_shape[:2], layer.kernel_size, layer.strides, layer.padding))
    return _finish(w, layer, z, out, _NCHW, 4)


def _dense(w, layer, node, out):
    rank = len(node.inputs[0].sample_shape) + 1
    x = w.read(node.inputs[0], _NHWC)
    kernel = w.weight(layer, "kernel", layer.params["kernel"])
    bias = [w.weight(layer, "bias", layer.params["bias"])] if layer.use_bias else []
    z = _core_name(w, layer, out, "gemm" if rank == 2 else "linear")
    if rank == 2:
        w.node("Gemm", [x, kernel] + bias, z)
    elif bias:
        w.node("Add", [w.node("MatMul", [x, kernel], w.fresh(f"{out}/product")), bias[0]], z)
    else:
        w.node("MatMul", [x, kernel], z)
    return _finish(w, layer, z, out, _NHWC, rank)


def _batch_normalization(w, layer, node, out):
    rank = len(node.inputs[0].sample_shape) + 1
    if rank not in (2, 4):
        raise ValueError(f"ONNX export: {layer.describe()} normalizes input of shape {node.inputs[0].shape}; "
                         f"tinycnn exports batch normalization of images (N, H, W, C) and of vectors (N, C)")
    x = w.read(node.inputs[0], _NCHW if rank == 4 else _NHWC)
    c = layer.input_shape[-1]
    gamma = layer.params["gamma"] if layer.scale else np.ones(c)
    beta = layer.params["beta"] if layer.center else np.zeros(c)
    inputs = [x, w.weight(layer, "gamma", gamma), w.weight(layer, "beta", beta),
              w.weight(layer, "moving_mean", layer.state["moving_mean"]),
              w.weight(layer, "moving_variance", layer.state["moving_variance"])]
    layout = _NCHW if rank == 4 else _NHWC
    return {layout: w.node("BatchNormalization", inputs, out, epsilon=layer.epsilon, momentum=layer.momentum)}


def _pooling(op):
    def convert(w, layer, node, out):
        x = w.read(node.inputs[0], _NCHW)
        pads = _pads(layer.input_shape[:2], layer.pool_size, layer.strides, layer.padding)
        extra = {"count_include_pad": 0} if op == "AveragePool" else {}  # tinycnn's mean skips the padding
        return {_NCHW: w.node(op, [x], out, kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                              pads=pads, **extra)}
    return convert


def _global_pooling(op):
    def convert(w, layer, node, out):
        pooled = w.node(op, [w.read(node.inputs[0], _NCHW)], w.fresh(f"{out}/{op[6:].lower()}"))  # (N, C, 1, 1)
        return {_NHWC: w.node("Flatten", [pooled], out, axis=1)}
    return convert


def _flatten(w, layer, node, out):
    return {_NHWC: w.node("Flatten", [w.read(node.inputs[0], _NHWC)], out, axis=1)}


def _identity(w, layer, node, out):
    return w.values[id(node.inputs[0].node)]


def _activation_layer(w, layer, node, out):
    if layer.activation.name == "linear":
        return _identity(w, layer, node, out)
    t = node.inputs[0]
    rank = len(t.sample_shape) + 1
    layout = w.image_layout(t) if rank == 4 else _NHWC
    return {layout: _activation(w, layer.activation.name, w.read(t, layout), out, layout, rank)}


def _merge_inputs(w, node):
    """The inputs' names in one layout (NCHW for images) and that layout."""
    layout = _NCHW if len(node.inputs[0].sample_shape) == 3 else _NHWC
    return [w.read(t, layout) for t in node.inputs], layout


def _chain(op):
    """``Add``/``Mul`` of two inputs; a chain ``((x1 op x2) op x3) ...`` (tinycnn's order) for more."""
    def convert(w, layer, node, out):
        xs, layout = _merge_inputs(w, node)
        y = xs[0]
        for i, x in enumerate(xs[1:], start=2):
            y = w.node(op, [y, x], out if i == len(xs) else w.fresh(f"{out}/{op.lower()}{i}"))
        return {layout: y}
    return convert


def _subtract(w, layer, node, out):
    xs, layout = _merge_inputs(w, node)
    return {layout: w.node("Sub", xs, out)}


def _average(w, layer, node, out):
    xs, layout = _merge_inputs(w, node)
    total = w.node("Sum", xs, w.fresh(f"{out}/sum"))
    scale = w.weight(layer, "reciprocal", np.array(1.0 / len(xs), dtype=np.float32))  # as tinycnn: sum * (1/n)
    return {layout: w.node("Mul", [total, scale], out)}


def _concatenate(w, layer, node, out):
    xs, layout = _merge_inputs(w, node)
    rank = len(node.inputs[0].sample_shape) + 1
    axis = layer.axis + rank if layer.axis < 0 else layer.axis  # in the batch shape, NHWC
    if layout == _NCHW:
        axis = _TO_NCHW.index(axis)
    return {layout: w.node("Concat", xs, out, axis=axis)}


_CONVERTERS = {
    Conv2D: _conv2d, Dense: _dense, BatchNormalization: _batch_normalization,
    MaxPooling2D: _pooling("MaxPool"), AveragePooling2D: _pooling("AveragePool"),
    GlobalAveragePooling2D: _global_pooling("GlobalAveragePool"), GlobalMaxPooling2D: _global_pooling("GlobalMaxPool"),
    Flatten: _flatten, Activation: _activation_layer, ReLU: _activation_layer, Softmax: _activation_layer,
    Add: _chain("Add"), Multiply: _chain("Mul"), Subtract: _subtract, Average: _average, Concatenate: _concatenate,
    Dropout: _identity, RandomFlip: _identity, RandomRotation: _identity, RandomTranslation: _identity,
    RandomContrast: _identity,
}
