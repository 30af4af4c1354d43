"""ONNX files as tinycnn models: ``tinycnn.load_onnx(path)`` (the other half of ``Model.export``).

The file's graph of standard operators becomes a functional :class:`~tinycnn.Model` of tinycnn
layers, weights included and trainable: a network trained in PyTorch (``torch.onnx.export``) or
exported by tinycnn itself is fine-tuned, evaluated and saved like any tinycnn model.

Layouts
-------
ONNX's ``Conv`` and pooling operators work on NCHW tensors; tinycnn's layers on NHWC ones. The
imported model always takes NHWC images, like every tinycnn model, whatever the file's input
layout: for a file that takes NCHW images (PyTorch's), ``model.predict(x)`` equals the file's
output on ``x.transpose(0, 3, 1, 2)``. To get there the importer keeps, for every tensor of the
ONNX graph, how the tinycnn tensor that will hold it relates to it (its *layout*):

==========  =====================  ==============================================================
layout      ONNX tensor            tinycnn tensor
==========  =====================  ==============================================================
``nchw``    ``(N, C, H, W)``       ``(N, H, W, C)``: the same values, axes moved
``nhwc``    ``(N, H, W, C)``       the same
``pooled``  ``(N, C, 1, 1)``       ``(N, C)`` (a global pooling's result)
``flat``    ``(N, F)``             ``(N, F)``; after a ``Flatten`` of an ``nchw`` tensor the
                                   features are in tinycnn's ``H, W, C`` order where ONNX has
                                   ``C, H, W`` (``_Value.chw``): the next ``Gemm``/``MatMul``
                                   takes its weight rows in that order (a permutation of rows,
                                   so the products are the same numbers, not an approximation)
==========  =====================  ==============================================================

A ``Transpose`` between ``nchw`` and ``nhwc`` therefore changes only the layout and no layer is
made for it; ``Identity``, ``Dropout`` (identity at inference) and a ``Flatten`` of a tensor that
is already flat vanish the same way.

Operators and the layers they become
------------------------------------
* ``Conv`` -> Conv2D (weights ``(F, C, KH, KW)`` -> ``(KH, KW, C, F)``); ``Gemm`` (``transB`` 0
  or 1) and ``MatMul`` (+ ``Add`` of a bias vector) -> Dense;
* ``Relu``/``Sigmoid``/``Tanh``/``Softmax`` -> the ``activation`` of the Conv2D or Dense before
  them when they are its only reader, else an Activation layer. In a file tinycnn wrote (its
  ``producer_name``), names tell the two apart where it holds two layers: a
  Conv2D(activation='relu') is written ``conv2d/conv`` + ``conv2d`` (one layer, named ``conv2d``),
  a Conv2D followed by a ReLU layer ``conv2d`` + ``re_lu`` (two layers, each with its name), so a
  round trip rebuilds the same layers;
* ``BatchNormalization`` (inference form) -> BatchNormalization with the moving statistics;
* ``MaxPool``/``AveragePool``/``GlobalAveragePool``/``GlobalMaxPool`` -> the pooling layers, and
  ``ReduceMean``/``ReduceMax`` over height and width (PyTorch's ``AdaptiveAvgPool2d(1)`` or
  ``x.mean((2, 3))``) -> the global ones;
* ``Flatten`` and ``Reshape`` to ``(N, -1)`` -> Flatten;
* ``Add``/``Sub``/``Mul``/``Sum``/``Mean``/``Concat`` -> the merge layers; ``Sum`` then ``Mul`` by
  ``1/n`` (tinycnn's export of Average) -> Average;
* ``Constant`` and initializers give weights.

ONNX spells out padding (``pads``); tinycnn has ``'valid'`` and ``'same'`` (TensorFlow's rule,
the odd row at the bottom). Explicit pads are accepted when they are exactly what one of the two
gives for the layer's input size (trailing padding that no window reaches aside), else refused: a
PyTorch ``padding=1`` on a 3x3 kernel with stride 1 is ``'same'``; with stride 2 on an even size
it is not, since PyTorch pads both sides (tinycnn has no ZeroPadding2D layer to express it).

The file is untrusted input
---------------------------
As ``tinycnn.load_model`` does for its own files, every claim is checked before it is acted on,
and every refusal is a :class:`~tinycnn.archive.ModelFileError` (a ValueError) whose message starts
with the file name:

* the file's size (at most :data:`MAX_FILE_BYTES`) before it is read; protobuf parsing of the
  bytes only (``ModelProto.ParseFromString``: nothing else is opened or followed);
* the graph: nodes at most :data:`MAX_NODES`, each reading only earlier values (no cycle, no
  dangling input), each value made once, one graph output, names in UTF-8, known operators with
  their numbers of inputs and outputs, known attributes (given once, of the right type);
* every tensor's declared shape and type *before any array is made*: at most :data:`MAX_RANK`
  dimensions, its byte count within :data:`MAX_WEIGHT_BYTES` (all weights together) and equal to
  the data the file really holds, so a 16-byte tensor declaring 2**40 elements costs nothing;
  weights must be finite and have the shapes their operator needs.
* **External data** (``data_location = EXTERNAL``, how ONNX stores models over 2 GiB) is read only
  from a regular file that resolves (symbolic links followed) inside the ONNX file's own folder,
  and only when its offset and length fit that file and the tensor's declared size; any other
  location (absolute, ``..``, a link leading out, missing) is refused.

What cannot be seen: ONNX files carry no checksum, so a file cut between two of its metadata
entries (the last records) reads as a file with fewer of them; a cut anywhere before is refused.
"""
import json
import math
import os
import re

import numpy as np

from .archive import MAX_CONFIG_BYTES, ModelFileError
from .kernels.conv import conv_output_length
from .layers import (Activation, Add, Average, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, Dense,
                     Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, InputLayer, MaxPooling2D, Multiply,
                     Subtract)
from .model import Model
from .onnx_export import require_onnx

#: Largest ONNX file read (protobuf itself stops at 2 GiB; tinycnn's export of ResNet-18 takes 45 MB).
MAX_FILE_BYTES = 2**30
#: Most bytes of weights, over all tensors (in the file or in external data).
MAX_WEIGHT_BYTES = 2**30
#: Most nodes in the graph (tinycnn's export of ResNet-18 has 71).
MAX_NODES = 5_000
#: Most dimensions of a tensor.
MAX_RANK = 8
#: Largest image side or feature count an input may declare.
MAX_DIM = 2**31 - 1
#: Opset versions of the default ONNX domain read: the operators above mean the same in all.
OPSETS = range(13, 22)

_NCHW, _NHWC, _POOLED, _FLAT = "nchw", "nhwc", "pooled", "flat"
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
_FLOAT, _INT64, _BOOL = 1, 7, 9                         # TensorProto element types read
_DTYPES = {_FLOAT: np.dtype("<f4"), _INT64: np.dtype("<i8"), _BOOL: np.dtype("?")}
_EXTERNAL = 1                                           # TensorProto.EXTERNAL
_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax"}
#: Layer names taken from the file when they look like Keras names (no '/', which Keras refuses).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def load_onnx(filepath):
    """A tinycnn functional ``Model`` (weights included, trainable) from the ONNX file ``filepath``.

    Parameters
    ----------
    filepath : str or os.PathLike
        An ``.onnx`` file of the operators listed in the module docstring (opset 13 to 21), with
        float32 weights and fixed image sizes (the batch dimension may be symbolic), one output.

    Returns
    -------
    Model
        It takes NHWC images (a file with NCHW input, as PyTorch writes, gives a model whose
        ``predict(x)`` equals the file's output for ``x.transpose(0, 3, 1, 2)``; an image output
        comes back NHWC too, and a global pooling's ``(N, C, 1, 1)`` output as ``(N, C)``). Layers
        are named after the file's nodes where those names are valid Keras names. The file's
        ``class_names`` metadata (JSON list) goes to ``model.metadata['class_names']``. Not
        compiled: ``compile`` it to train.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError (a ValueError)
        A damaged, hostile or unsupported file: the message names the file and, for an operator or
        attribute tinycnn has no layer for, the node, its operator, what is unsupported and the
        operators that are. Nothing half-built is returned.
    ImportError
        Without the optional ``onnx`` package (``pip install "tinycnn[onnx]"``).
    """
    onnx = require_onnx()
    path = os.fspath(filepath)
    proto = _read_proto(onnx, path)
    return _Importer(onnx, path, proto).model()


def _fail(path, problem):
    return ModelFileError(f"{path}: {problem}")


def _read_proto(onnx, path):
    """The parsed ``ModelProto``, after checking the file's size; no external data is touched."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if os.path.isdir(path):
        raise _fail(path, "is a folder, not an ONNX file")
    size = os.path.getsize(path)
    if size == 0:
        raise _fail(path, "not an ONNX file: the file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise _fail(path, f"the file takes {size:,} bytes; tinycnn reads ONNX files of at most {MAX_FILE_BYTES:,}")
    with open(path, "rb") as f:
        data = f.read(size + 1)  # (read(n) reserves n bytes at once: the size checked, not the limit)
    if len(data) > MAX_FILE_BYTES:
        raise _fail(path, f"the file grew to more than {MAX_FILE_BYTES:,} bytes while it was read")
    if data.startswith(b"PK\x03\x04"):
        raise _fail(path, "not an ONNX file: it is a zip archive (a tinycnn .npz model? read it with "
                          "tinycnn.load_model)")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError (its class differs between protobuf back ends)
        raise _fail(path, f"not an ONNX file, or a truncated or corrupt one: protobuf cannot parse it "
                          f"({type(e).__name__}: {e})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise _fail(path, "not an ONNX model, or a truncated one: it holds no graph of nodes")
    return proto


class _Value:
    """An ONNX tensor as the tinycnn model will hold it (module docstring, "Layouts").

    ``step`` indexes the importer's steps (the layer whose output holds it); ``shape`` is tinycnn's
    per-sample shape; ``chw`` is ``(H, W, C)`` for a flattened ``nchw`` tensor whose ONNX features
    are in ``C, H, W`` order, else None; ``shared`` is True when the tinycnn tensor is seen under
    another ONNX name too (an activation may then not be folded into the layer that makes it).
    """

    def __init__(self, step, layout, shape, chw=None, shared=False):
        self.step, self.layout, self.shape, self.chw, self.shared = step, layout, tuple(shape), chw, shared

    def alias(self, layout=None, shared=False):
        """The same tinycnn tensor seen as another ONNX tensor (in ``layout``)."""
        return _Value(self.step, layout or self.layout, self.shape, self.chw, self.shared or shared)

    def onnx_rank(self):
        return 4 if self.layout in (_NCHW, _NHWC, _POOLED) else 1 + len(self.shape)

    def channel_axis(self):
        """The ONNX axis that tinycnn's last axis holds."""
        return 1 if self.layout in (_NCHW, _POOLED) else self.onnx_rank() - 1


class _Step:
    """One tinycnn layer to make: its class, constructor arguments, weights (tinycnn layouts) and
    the steps whose outputs it reads. ``names`` are the ONNX node names it came from, in order;
    ``op`` the operator of the first."""

    def __init__(self, cls, kwargs, inputs, weights, names, op):
        self.cls, self.kwargs, self.inputs, self.weights, self.names, self.op = cls, kwargs, inputs, weights, names, op


class _Importer:
    """Reads one parsed file: checks the graph, turns its nodes into steps, then builds the model."""

    def __init__(self, onnx, path, proto):
        self.onnx = onnx
        self.path = path
        self.proto = proto
        self.graph = proto.graph
        self.steps = []
        self.values = {}            # ONNX name -> _Value
        self.constants = {}         # ONNX name -> ndarray
        self.weight_bytes = 0
        self.readers = {}           # ONNX name -> number of node inputs reading it
        self.outputs = set()

    def fail(self, problem):
        return _fail(self.path, problem)

    def node_fail(self, node, problem):
        return self.fail(f"node {_label(node)}: {problem}")

    def unsupported(self, node, what):
        return self.node_fail(node, f"{what} is not supported; tinycnn imports the operators "
                                    f"{', '.join(sorted(_OPERATORS))} (see tinycnn/onnx_import.py)")

    # --- the whole file ---------------------------------------------------------------------------------

    def model(self):
        self._check_opset()
        self._check_graph()
        for tensor in self.graph.initializer:
            self.constants[tensor.name] = self._array(tensor, f"initializer '{tensor.name}'")
        if len(self.graph.sparse_initializer):
            raise self.fail("sparse initializers are not supported")
        inputs = self._inputs()
        for node in self.graph.node:
            try:
                _OPERATORS[node.op_type](self, node)
            except ModelFileError:
                raise
            except _MALFORMED as e:  # our checks raise ModelFileError; these come from a node they missed
                raise self.node_fail(node, f"malformed node ({type(e).__name__}: {e})") from None
        output = self._output()
        model = self._build(inputs, output)
        model.metadata = self._metadata()
        return model

    def _check_opset(self):
        versions = [o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")]
        if not versions:
            raise self.fail("the file names no opset of the default ONNX domain (a truncated or foreign file)")
        if versions[0] not in OPSETS:
            raise self.fail(f"opset {versions[0]} is not supported; tinycnn reads opsets {OPSETS[0]} to "
                            f"{OPSETS[-1]} (onnx.version_converter can convert a file)")

    def _check_graph(self):
        """Graph structure and operators, before any tensor is read: size, order, names, operators."""
        nodes = self.graph.node
        if len(nodes) > MAX_NODES:
            raise self.fail(f"the graph has {len(nodes):,} nodes; tinycnn reads at most {MAX_NODES:,}")
        if any(isinstance(text, bytes) for text in _names(self.proto)):  # protobuf's bytes for bad UTF-8
            raise self.fail("a name or text field is not UTF-8 text: the file is corrupt")
        unknown = [n for n in nodes if n.op_type not in _OPERATORS or n.domain not in ("", "ai.onnx")]
        if unknown:
            shown = ", ".join(_label(n) for n in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise self.fail(f"node {shown}{more}: operator not supported; tinycnn imports the operators "
                            f"{', '.join(sorted(_OPERATORS))} (see tinycnn/onnx_import.py)")
        for node in nodes:
            low, high, outputs = _ARITY.get(node.op_type, (1, 1, 1))
            if not low <= len(node.input) <= high or not 1 <= len(node.output) <= outputs or not node.output[0]:
                inputs = f"{low}" if low == high else f"{low} to {high}" if high < MAX_NODES else f"{low} or more"
                made = "1 output" if outputs == 1 else f"1 to {outputs} outputs"
                raise self.node_fail(node, f"has {len(node.input)} input(s) and {len(node.output)} output(s); "
                                           f"{node.op_type} takes {inputs} input(s) and makes {made}")
        known = {t.name for t in self.graph.initializer} | {v.name for v in self.graph.input}
        later = {}
        for k, node in enumerate(nodes):
            for name in node.output:
                later.setdefault(name, k)
        for k, node in enumerate(nodes):
            for name in node.input:
                if not name:
                    continue  # an optional input left out
                self.readers[name] = self.readers.get(name, 0) + 1
                if name in known:
                    continue
                if name in later:
                    raise self.node_fail(node, f"reads '{name}', which node '{nodes[later[name]].name}' makes "
                                               f"later: the graph has a cycle or is not in topological order")
                raise self.node_fail(node, f"reads '{name}', which is neither a graph input, an initializer nor "
                                           f"the output of a node")
            for name in node.output:
                if name in known:
                    raise self.node_fail(node, f"makes '{name}', which already exists (each value is made once)")
                if name:
                    known.add(name)
        if len(self.graph.output) != 1:
            raise self.fail(f"the graph has {len(self.graph.output)} outputs "
                            f"{[o.name for o in self.graph.output]}; a tinycnn model has exactly one")
        self.outputs = {self.graph.output[0].name}
        if self.graph.output[0].name not in known:
            raise self.fail(f"the graph's output '{self.graph.output[0].name}' is made by no node")

    # --- tensors ----------------------------------------------------------------------------------------

    def _array(self, tensor, what):
        """``tensor``'s values as a native array, after its declared shape, type and size were
        checked against the limits and against the bytes the file (or its external data) holds."""
        dims = [int(d) for d in tensor.dims]
        if len(dims) > MAX_RANK or any(d < 0 for d in dims):
            raise self.fail(f"{what} declares the shape {dims}; tinycnn reads tensors of at most {MAX_RANK} "
                            f"non-negative dimensions")
        dtype = _DTYPES.get(tensor.data_type)
        if dtype is None:
            raise self.fail(f"{what} has element type {tensor.data_type}; tinycnn reads float32 weights "
                            f"(type 1), int64 shapes (type 7) and bool flags (type 9)")
        count = math.prod(dims)
        nbytes = count * dtype.itemsize
        if self.weight_bytes + nbytes > MAX_WEIGHT_BYTES:
            raise self.fail(f"{what} declares the shape {dims} ({nbytes:,} bytes); tinycnn reads at most "
                            f"{MAX_WEIGHT_BYTES:,} bytes of weights in all: refusing to read it")
        if tensor.HasField("segment"):
            raise self.fail(f"{what} is a segment of a tensor; segmented tensors are not supported")
        if tensor.data_location == _EXTERNAL:
            array = np.frombuffer(self._external(tensor, nbytes, what), dtype=dtype)
        elif tensor.HasField("raw_data"):
            if len(tensor.raw_data) != nbytes:
                raise self.fail(f"{what} declares the shape {dims} of {dtype.name} ({nbytes:,} bytes) but holds "
                                f"{len(tensor.raw_data):,} bytes of data: the declaration is wrong or the file "
                                f"truncated")
            array = np.frombuffer(tensor.raw_data, dtype=dtype)
        else:
            typed = {"f": tensor.float_data, "i": tensor.int64_data, "b": tensor.int32_data}[dtype.kind]
            if len(typed) != count:
                raise self.fail(f"{what} declares the shape {dims} ({count:,} values) but holds {len(typed):,} "
                                f"values of its type")
            array = np.array(typed, dtype=dtype)
        self.weight_bytes += nbytes
        array = array.reshape(dims).astype(dtype.newbyteorder("="))  # a copy: writable, native byte order
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise self.fail(f"{what} holds NaN or infinite values")
        return array

    def _external(self, tensor, nbytes, what):
        """The bytes of a tensor stored outside the ONNX file (module docstring: where they may be)."""
        info = {entry.key: entry.value for entry in tensor.external_data}
        if not all(isinstance(text, str) for text in (*info, *info.values())):
            raise self.fail(f"{what}: its external-data entries are not UTF-8 text: the file is corrupt")
        location = info.get("location", "")
        folder = os.path.realpath(os.path.dirname(os.path.abspath(self.path)))
        target = os.path.realpath(os.path.join(folder, location))
        if not location or os.path.isabs(location) or os.path.commonpath([folder, target]) != folder \
                or target == folder:
            raise self.fail(f"{what} keeps its data in the external file {location!r}, which is not inside the ONNX "
                            f"file's folder {folder}: refusing to read it (tinycnn reads external data only "
                            f"from files beside the model)")
        if not os.path.isfile(target):
            raise self.fail(f"{what} keeps its data in the external file {location!r}, which does not exist "
                            f"beside the ONNX file (or is not a regular file)")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info.get("length", str(nbytes)))
        except ValueError:
            raise self.fail(f"{what}: external data offset {info.get('offset')!r} or length "
                            f"{info.get('length')!r} is not an integer") from None
        size = os.path.getsize(target)
        if length != nbytes or offset < 0 or offset + nbytes > size:
            raise self.fail(f"{what} declares {nbytes:,} bytes of data at offset {offset:,} (length {length:,}) in "
                            f"{location!r}, which holds {size:,} bytes: the declaration does not fit")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(nbytes)
        if len(data) != nbytes:
            raise self.fail(f"{what}: the external file {location!r} ends before its data")
        return data

    def _constant(self, node, index, what, dims=None, kind="f"):
        """Input ``index`` of ``node`` as a constant array (initializer or Constant node) of dtype
        ``kind``, or None if it is left out; ``dims`` (a tuple, -1 for any) checks its shape."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.constants:
            raise self.unsupported(node, f"a computed {what} (input '{name}'; it must be an initializer or "
                                         f"a Constant)")
        array = self.constants[name]
        if dims is not None and (array.ndim != len(dims) or any(d not in (-1, s) for d, s in zip(dims, array.shape))):
            shown = ", ".join("any" if d == -1 else str(d) for d in dims) + ("," if len(dims) == 1 else "")
            raise self.node_fail(node, f"{what} '{name}' has shape {array.shape}; expected ({shown})")
        if array.dtype.kind != kind:
            expected = {"f": "float32", "i": "int64", "b": "bool"}[kind]
            raise self.node_fail(node, f"{what} '{name}' holds {array.dtype.name} values; expected {expected}")
        return array

    def _value(self, node, index=0, layouts=None):
        """Input ``index`` of ``node`` as a tensor computed from the model's inputs."""
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            raise self.node_fail(node, f"input {index} is missing")
        if name not in self.values:
            raise self.unsupported(node, f"a constant as input {index} ('{name}')")
        value = self.values[name]
        if layouts is not None and value.layout not in layouts:
            raise self.unsupported(node, f"reading '{name}' in layout {_LAYOUT_NAMES[value.layout]} (this operator "
                                         f"needs {' or '.join(_LAYOUT_NAMES[x] for x in layouts)})")
        return value

    def _attributes(self, node, allowed):
        """``{name: value}`` of ``node``'s attributes, all of them among ``allowed``."""
        found = {}
        for attribute in node.attribute:
            if attribute.name not in allowed:
                raise self.unsupported(node, f"the attribute '{attribute.name}'")
            if attribute.name in found:
                raise self.node_fail(node, f"the attribute '{attribute.name}' is given twice")
            found[attribute.name] = self.onnx.helper.get_attribute_value(attribute)
            if isinstance(found[attribute.name], bytes):
                found[attribute.name] = found[attribute.name].decode("utf-8", "replace")
        return found

    def _ints(self, node, attributes, name, n, default, minimum):
        value = attributes.get(name, default)
        if not isinstance(value, list) or len(value) != n or not all(isinstance(v, int) and v >= minimum
                                                                     for v in value):
            raise self.node_fail(node, f"attribute '{name}' must be {n} ints >= {minimum}, found {value!r}")
        return value

    # --- graph inputs and steps -------------------------------------------------------------------------

    def _inputs(self):
        """An Input step per graph input that is not an initializer; images in NHWC unless every
        reader is a Transpose to NCHW (then the file itself takes NHWC images)."""
        steps = []
        for info in self.graph.input:
            if info.name in self.constants:
                continue
            kind = info.type.WhichOneof("value")
            tensor_type = info.type.tensor_type
            if kind != "tensor_type" or tensor_type.elem_type != _FLOAT:
                raise self.fail(f"graph input '{info.name}' is not a float32 tensor; tinycnn models take float32")
            dims = [d.dim_value if d.WhichOneof("value") == "dim_value" else None for d in tensor_type.shape.dim]
            if len(dims) not in (2, 4) or any(d is None or not 1 <= d <= MAX_DIM for d in dims[1:]):
                raise self.fail(f"graph input '{info.name}' has the shape {self._shown(tensor_type.shape)}; tinycnn "
                                f"takes images (batch, 4 axes) or vectors (batch, features) of fixed size (only "
                                f"the batch dimension may be symbolic)")
            readers = [n for n in self.graph.node if info.name in n.input]
            if len(dims) == 2:
                value = _Value(len(self.steps), _FLAT, dims[1:])
            elif readers and all(n.op_type == "Transpose" and list(self._perm(n)) == _TO_NCHW for n in readers):
                value = _Value(len(self.steps), _NHWC, dims[1:])
            else:
                value = _Value(len(self.steps), _NCHW, (dims[2], dims[3], dims[1]))
            self.values[info.name] = value
            steps.append(len(self.steps))
            self.steps.append(_Step(InputLayer, {"shape": value.shape}, [], None, [info.name], "graph input"))
        if not steps:
            raise self.fail("the graph has no input (every input is an initializer)")
        return steps

    @staticmethod
    def _shown(shape):
        return [d.dim_value if d.WhichOneof("value") == "dim_value" else (d.dim_param or "?") for d in shape.dim]

    def _perm(self, node):
        return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])

    def _add(self, node, cls, kwargs, inputs, weights, layout, shape, chw=None):
        """A new step ``cls(**kwargs)(inputs)`` whose output is ``node``'s first output."""
        self.steps.append(_Step(cls, kwargs, [v.step for v in inputs], weights, [node.name], node.op_type))
        self.values[node.output[0]] = _Value(len(self.steps) - 1, layout, shape, chw)

    def _alias(self, node, value, name, layout=None):
        """``node``'s output is ``value`` (its input ``name``) under a new name: a layout change, an
        identity, or the same tensor after a fusion."""
        self.values[node.output[0]] = value.alias(layout, shared=self._seen_elsewhere(name))

    def _seen_elsewhere(self, name):
        return self.readers.get(name, 0) > 1 or name in self.outputs

    def _private(self, name, value, classes):
        """The step that makes ``value`` (the ONNX tensor ``name``) if it is one of ``classes`` and
        the node reading ``name`` is the only reader of that step's output, so that the node can be
        folded into the step."""
        step = self.steps[value.step]
        if step.cls in classes and not value.shared and not self._seen_elsewhere(name):
            return step
        return None

    # --- operators: one method each, (node) -> None, filling self.values or self.constants --------------

    def _padding(self, node, attributes, sizes, kernel, strides):
        """tinycnn's ``'valid'`` or ``'same'`` for ``pads``/``auto_pad``, if one of them places the
        windows exactly where the file does, else an error."""
        auto = attributes.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [[], []]
            for size, k, s in zip(sizes, kernel, strides):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                low = total // 2 if auto == "SAME_UPPER" else total - total // 2
                pads[0].append(low)
                pads[1].append(total - low)
            pads = pads[0] + pads[1]
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto == "NOTSET":
            pads = list(self._ints(node, attributes, "pads", 4, [0, 0, 0, 0], 0))
            for i, (size, k, s) in enumerate(zip(sizes, kernel, strides)):  # trailing padding no window reaches
                out = (size + pads[i] + pads[i + 2] - k) // s + 1
                pads[i + 2] = min(pads[i + 2], max((out - 1) * s + k - size - pads[i], 0))
        else:
            raise self.unsupported(node, f"auto_pad={auto!r}")
        for padding in ("valid", "same"):
            begins, ends, fits = [], [], True
            for size, k, s in zip(sizes, kernel, strides):
                out, begin = conv_output_length(size, k, s, padding)
                fits = fits and out >= 1
                begins.append(begin)
                ends.append(max((out - 1) * s + k - size - begin, 0))
            if fits and pads == begins + ends:
                return padding
        pads = attributes.get("pads", pads)
        raise self.unsupported(node, f"the padding {pads} (top, left, bottom, right) on a {sizes[0]}x{sizes[1]} "
                                     f"input with kernel {list(kernel)} and strides {list(strides)}: tinycnn "
                                     f"pads 'valid' (none) or 'same' (TensorFlow's rule, the odd one at the "
                                     f"bottom/right), and this is neither")

    def _op_conv(self, node):
        a = self._attributes(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
        x = self._value(node, 0, (_NCHW,))
        h, w, c = x.shape
        kernel = self._constant(node, 1, "weight", (-1, c, -1, -1))
        if kernel is None:
            raise self.node_fail(node, "the weight input W is missing")
        filters, kh, kw = kernel.shape[0], kernel.shape[2], kernel.shape[3]
        if a.get("group", 1) != 1:
            raise self.unsupported(node, f"group={a['group']} (a grouped or depthwise convolution)")
        self._ints(node, a, "dilations", 2, [1, 1], 1)
        if a.get("dilations", [1, 1]) != [1, 1]:
            raise self.unsupported(node, f"dilations={a['dilations']}")
        if self._ints(node, a, "kernel_shape", 2, [kh, kw], 1) != [kh, kw]:
            raise self.node_fail(node, f"kernel_shape {a['kernel_shape']} does not match the weight's {[kh, kw]}")
        strides = self._ints(node, a, "strides", 2, [1, 1], 1)
        padding = self._padding(node, a, (h, w), (kh, kw), strides)
        bias = self._constant(node, 2, "bias", (filters,))
        weights = [kernel.transpose(2, 3, 1, 0)] + ([] if bias is None else [bias])
        shape = tuple(conv_output_length(n, k, s, padding)[0] for n, k, s in zip((h, w), (kh, kw), strides))
        self._add(node, Conv2D, {"filters": filters, "kernel_size": (kh, kw), "strides": tuple(strides),
                                 "padding": padding, "use_bias": bias is not None},
                  [x], weights, _NCHW, shape + (filters,))

    def _pool(self, cls, node):
        allowed = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"}
        allowed |= {"storage_order"} if cls is MaxPooling2D else {"count_include_pad"}
        a = self._attributes(node, allowed)
        if len([o for o in node.output if o]) != 1:
            raise self.unsupported(node, "the second output (Indices)")
        x = self._value(node, 0, (_NCHW,))
        h, w, c = x.shape
        kernel = self._ints(node, a, "kernel_shape", 2, None, 1)
        strides = self._ints(node, a, "strides", 2, [1, 1], 1)
        if self._ints(node, a, "dilations", 2, [1, 1], 1) != [1, 1]:
            raise self.unsupported(node, f"dilations={a['dilations']}")
        padding = self._padding(node, a, (h, w), kernel, strides)
        shape = tuple(conv_output_length(n, k, s, padding)[0] for n, k, s in zip((h, w), kernel, strides))
        if a.get("ceil_mode", 0) and a.get("auto_pad", "NOTSET") == "NOTSET":  # (SAME_* sizes ignore ceil_mode)
            pads = a.get("pads", [0, 0, 0, 0])
            for n, k, s, out, low, high in zip((h, w), kernel, strides, shape, pads[:2], pads[2:]):
                ceil_out = -(-(n + low + high - k) // s) + 1
                if (ceil_out - 1) * s >= n + low:  # the last window would start in the padding
                    ceil_out -= 1
                if ceil_out != out:
                    raise self.unsupported(node, "ceil_mode=1 where it adds a window (tinycnn rounds down)")
        if a.get("count_include_pad", 0) and padding == "same" and any(
                max((out - 1) * s + k - n, 0) for n, k, s, out in zip((h, w), kernel, strides, shape)):
            raise self.unsupported(node, "count_include_pad=1 with padding (tinycnn's mean leaves the padding out)")
        self._add(node, cls, {"pool_size": tuple(kernel), "strides": tuple(strides), "padding": padding},
                  [x], None, _NCHW, shape + (c,))

    def _op_maxpool(self, node):
        self._pool(MaxPooling2D, node)

    def _op_averagepool(self, node):
        self._pool(AveragePooling2D, node)

    def _global_pool(self, cls, node):
        self._attributes(node, set())
        x = self._value(node, 0, (_NCHW,))
        self._add(node, cls, {}, [x], None, _POOLED, x.shape[-1:])

    def _op_globalaveragepool(self, node):
        self._global_pool(GlobalAveragePooling2D, node)

    def _op_globalmaxpool(self, node):
        self._global_pool(GlobalMaxPooling2D, node)

    def _reduce(self, cls, node):
        """``ReduceMean``/``ReduceMax`` over the image's height and width: a global pooling."""
        a = self._attributes(node, {"axes", "keepdims", "noop_with_empty_axes"})
        x = self._value(node, 0, (_NCHW, _NHWC))
        axes = a.get("axes")  # an attribute up to opset 17, an input from 18
        if len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self._constant(node, 1, "axes", (-1,), kind="i")]
        spatial = {2, 3} if x.layout == _NCHW else {1, 2}
        keepdims = a.get("keepdims", 1)
        if not isinstance(axes, list) or sorted(int(v) % 4 for v in axes) != sorted(spatial) \
                or (keepdims and x.layout == _NHWC):
            raise self.unsupported(node, f"{node.op_type} over axes {axes} (keepdims={keepdims}) of a tensor in "
                                         f"layout {_LAYOUT_NAMES[x.layout]} (tinycnn reduces over height and width "
                                         f"only: a global pooling)")
        self._add(node, cls, {}, [x], None, _POOLED if keepdims else _FLAT, x.shape[-1:])

    def _op_reducemean(self, node):
        self._reduce(GlobalAveragePooling2D, node)

    def _op_reducemax(self, node):
        self._reduce(GlobalMaxPooling2D, node)

    def _op_batchnormalization(self, node):
        a = self._attributes(node, {"epsilon", "momentum", "training_mode"})
        if a.get("training_mode", 0) or len([o for o in node.output if o]) != 1:
            raise self.unsupported(node, "training mode (training_mode=1 or the running-statistics outputs)")
        x = self._value(node, 0, (_NCHW, _POOLED, _FLAT))
        c = x.shape[-1]
        params = [self._constant(node, i, what, (c,))
                  for i, what in enumerate(("scale", "bias", "mean", "variance"), start=1)]
        if any(p is None for p in params):
            raise self.node_fail(node, "scale, bias, mean and variance must all be given")
        if x.chw is not None:
            params = [_rows_in_hwc_order(p, x.chw) for p in params]
        kwargs = {"epsilon": _decimal(a.get("epsilon", 1e-5)), "momentum": _decimal(a.get("momentum", 0.9))}
        if not kwargs["epsilon"] > 0 or not 0 <= kwargs["momentum"] <= 1:
            raise self.node_fail(node, f"epsilon {kwargs['epsilon']} must be > 0 and momentum "
                                       f"{kwargs['momentum']} in [0, 1]")
        self._add(node, BatchNormalization, kwargs, [x], params, x.layout, x.shape, x.chw)

    def _activation(self, node, activation):
        x = self._value(node)
        if activation == "softmax":
            axis = self._attributes(node, {"axis"}).get("axis", -1)
            rank = x.onnx_rank()
            if not -rank <= axis < rank or axis % rank != x.channel_axis():
                raise self.unsupported(node, f"Softmax over axis {axis} of a tensor in layout "
                                             f"{_LAYOUT_NAMES[x.layout]} (tinycnn's softmax runs over the channels)")
        else:
            self._attributes(node, set())
        step = self._private(node.input[0], x, (Conv2D, Dense))
        two_layers = (step is not None and self.proto.producer_name == "tinycnn" and _NAME.fullmatch(node.name)
                      and any(_NAME.fullmatch(n) for n in step.names))  # (module docstring)
        if step is not None and step.kwargs.get("activation", "linear") == "linear" and not two_layers:
            step.kwargs["activation"] = activation
            step.names.append(node.name)
            self.values[node.output[0]] = x.alias()
        else:
            self._add(node, Activation, {"activation": activation}, [x], None, x.layout, x.shape, x.chw)

    def _dense(self, node, x, kernel, bias):
        """A Dense step for ``x @ kernel + bias`` (kernel ``(n_in, units)`` in the file's row order)."""
        if kernel.shape[0] != x.shape[-1]:
            raise self.node_fail(node, f"the weight has shape {kernel.shape} but its input has {x.shape[-1]} "
                                       f"features")
        if x.chw is not None:
            kernel = _rows_in_hwc_order(kernel, x.chw)
        units = kernel.shape[1]
        if bias is not None and bias.size != units:
            raise self.node_fail(node, f"the bias has shape {bias.shape}; expected ({units},)")
        weights = [kernel] + ([] if bias is None else [bias.reshape(units)])
        self._add(node, Dense, {"units": units, "use_bias": bias is not None}, [x], weights, x.layout,
                  x.shape[:-1] + (units,))

    def _op_gemm(self, node):
        a = self._attributes(node, {"alpha", "beta", "transA", "transB"})
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            raise self.unsupported(node, f"alpha={a.get('alpha', 1.0)}, beta={a.get('beta', 1.0)}, "
                                         f"transA={a.get('transA', 0)} (tinycnn's Dense is A @ B + C)")
        x = self._value(node, 0, (_FLAT,))
        kernel = self._constant(node, 1, "weight", (-1, -1))
        if kernel is None:
            raise self.node_fail(node, "the weight input B is missing")
        if a.get("transB", 0):
            kernel = kernel.T
        bias = self._constant(node, 2, "bias")
        if bias is not None and bias.shape not in ((kernel.shape[1],), (1, kernel.shape[1])):
            raise self.unsupported(node, f"a bias C of shape {bias.shape} (tinycnn's Dense adds one value per "
                                         f"unit, ({kernel.shape[1]},))")
        self._dense(node, x, kernel, bias)

    def _op_matmul(self, node):
        self._attributes(node, set())
        x = self._value(node, 0, (_FLAT, _NHWC))
        kernel = self._constant(node, 1, "weight", (-1, -1))
        if kernel is None:
            raise self.node_fail(node, "the weight input B is missing")
        self._dense(node, x, kernel, None)

    def _merge(self, node, cls):
        self._attributes(node, set())
        xs = [self._value(node, i) for i in range(max(len(node.input), 1))]
        first = xs[0]
        if any((x.layout, x.shape, x.chw) != (first.layout, first.shape, first.chw) for x in xs):
            raise self.unsupported(node, f"inputs of different shapes or layouts "
                                         f"{[(_LAYOUT_NAMES[x.layout], (None,) + x.shape) for x in xs]} "
                                         f"(broadcasting)")
        if len(xs) == 1:
            self._alias(node, first, node.input[0])
        else:
            self._add(node, cls, {}, xs, None, first.layout, first.shape, first.chw)

    def _op_add(self, node):
        if len(node.input) == 2 and any(name in self.constants for name in node.input):
            self._bias(node)
        else:
            self._merge(node, Add)

    def _constant_operand(self, node, owners):
        """For a two-input node with one constant input: ``(k, x, step, constant)``, with ``x`` the
        other input (input ``k``) and ``step`` the layer step of a class in ``owners`` that made it
        and nothing else reads (see :meth:`_private`), or None."""
        self._attributes(node, set())
        k = 0 if node.input[1] in self.constants else 1
        x = self._value(node, k)
        return k, x, self._private(node.input[k], x, owners), self.constants[node.input[1 - k]]

    def _bias(self, node):
        """``Add`` of a constant: the bias of the Dense (from ``MatMul``) or Conv2D before it."""
        k, x, step, bias = self._constant_operand(node, (Dense, Conv2D))
        units = x.shape[-1]
        channel_shape = [1] * x.onnx_rank()
        channel_shape[x.channel_axis()] = units
        fits = (x.chw is None and bias.size == units and bias.dtype.kind == "f"
                and list(bias.shape) == channel_shape[len(channel_shape) - bias.ndim:])
        if step is None or step.kwargs["use_bias"] or step.kwargs.get("activation", "linear") != "linear" or not fits:
            raise self.unsupported(node, "Add of a constant other than the bias of the MatMul or Conv right before "
                                         "it (one value per channel)")
        step.kwargs["use_bias"] = True
        step.weights.append(bias.reshape(units))
        step.names.append(node.name)
        self._alias(node, x, node.input[k])

    def _op_sub(self, node):
        self._merge(node, Subtract)

    def _op_mul(self, node):
        if len(node.input) == 2 and any(name in self.constants for name in node.input):
            self._average(node)
        else:
            self._merge(node, Multiply)

    def _average(self, node):
        """``Mul`` of a ``Sum`` of ``n`` inputs by the constant ``1/n``: tinycnn's export of Average."""
        k, x, step, scale = self._constant_operand(node, (Add,))
        if step is None or step.op != "Sum" or scale.size != 1 or scale.ndim > 1 or scale.dtype.kind != "f" \
                or scale.reshape(()) != np.float32(1.0 / len(step.inputs)):
            raise self.unsupported(node, "Mul by a constant other than 1/n right after a Sum of n inputs (an "
                                         "average)")
        step.cls = Average
        step.names.append(node.name)
        self._alias(node, x, node.input[k])

    def _op_sum(self, node):
        self._merge(node, Add)

    def _op_mean(self, node):
        self._merge(node, Average)

    def _op_concat(self, node):
        axis = self._attributes(node, {"axis"}).get("axis")
        xs = [self._value(node, i) for i in range(max(len(node.input), 1))]
        first = xs[0]
        rank = first.onnx_rank()
        if not isinstance(axis, int) or not -rank <= axis < rank:
            raise self.node_fail(node, f"attribute 'axis' must be an int in [-{rank}, {rank}), found {axis!r}")
        axis %= rank
        # ONNX axis -> tinycnn's (NHWC, counted from 1 after the batch; -1 the channels)
        axes = {_NCHW: {1: -1, 2: 1, 3: 2}, _NHWC: {1: 1, 2: 2, 3: -1}, _POOLED: {1: -1}, _FLAT: {1: -1}}[first.layout]
        if axis not in axes or any(x.layout != first.layout or x.chw is not None for x in xs):
            raise self.unsupported(node, f"Concat over axis {axis} of {[_LAYOUT_NAMES[x.layout] for x in xs]} "
                                         f"tensors (the batch axis, flattened NCHW features or mixed layouts)")
        tiny_axis = axes[axis]
        at = len(first.shape) - 1 if tiny_axis == -1 else tiny_axis - 1
        rest = [x.shape[:at] + x.shape[at + 1:] for x in xs]
        if any(r != rest[0] for r in rest):
            raise self.node_fail(node, f"the inputs' shapes {[(None,) + x.shape for x in xs]} differ on an axis "
                                       f"other than the one joined")
        if len(xs) == 1:
            self._alias(node, first, node.input[0])
            return
        shape = first.shape[:at] + (sum(x.shape[at] for x in xs),) + first.shape[at + 1:]
        self._add(node, Concatenate, {"axis": tiny_axis}, xs, None, first.layout, shape)

    def _flatten_value(self, node, x):
        """``node``'s output: ``x`` flattened to ``(N, features)``."""
        if x.layout == _POOLED:  # (N, C, 1, 1) -> (N, C): tinycnn's global pooling already gave (N, C)
            self.steps[x.step].names.append(node.name)  # tinycnn's export names this node after the layer
        if x.layout in (_FLAT, _POOLED):
            self._alias(node, x, node.input[0], _FLAT)
            return
        h, w, c = x.shape
        chw = (h, w, c) if x.layout == _NCHW and c > 1 and h * w > 1 else None
        self._add(node, Flatten, {}, [x], None, _FLAT, (h * w * c,), chw)

    def _op_flatten(self, node):
        axis = self._attributes(node, {"axis"}).get("axis", 1)
        x = self._value(node)
        if axis not in (1, 1 - x.onnx_rank()):
            raise self.unsupported(node, f"Flatten with axis={axis!r} (tinycnn flattens everything after the batch "
                                         f"axis: axis=1)")
        self._flatten_value(node, x)

    def _op_reshape(self, node):
        allowzero = self._attributes(node, {"allowzero"}).get("allowzero", 0)
        x = self._value(node)
        shape = self._constant(node, 1, "shape", kind="i")
        if shape is None:
            raise self.node_fail(node, "the target shape is missing")
        features = math.prod(x.shape)
        target = [int(v) for v in shape.reshape(-1)] if shape.ndim == 1 else None
        # (N, -1), (0, -1), (-1, features): a fixed batch size in the target is taken for any batch size
        ok = target is not None and len(target) == 2 and (
            (target[1] == -1 and target[0] >= 0 and not (allowzero and target[0] == 0))
            or (target[1] == features and target[0] >= -1 and not (allowzero and target[0] == 0)))
        if not ok:
            raise self.unsupported(node, f"Reshape to {target if target is not None else shape.shape} (tinycnn "
                                         f"reads a Reshape to (batch, -1), a Flatten)")
        self._flatten_value(node, x)

    def _op_transpose(self, node):
        perm = self._attributes(node, {"perm"}).get("perm")
        x = self._value(node)
        if x.layout == _NCHW and perm == _TO_NHWC:
            self._alias(node, x, node.input[0], _NHWC)
        elif x.layout == _NHWC and perm == _TO_NCHW:
            self._alias(node, x, node.input[0], _NCHW)
        elif perm == list(range(x.onnx_rank())):
            self._alias(node, x, node.input[0])
        else:
            raise self.unsupported(node, f"Transpose with perm={perm} of a tensor in layout "
                                         f"{_LAYOUT_NAMES[x.layout]} (tinycnn follows only the changes between NCHW "
                                         f"and NHWC)")

    def _op_identity(self, node):
        self._attributes(node, set())
        if node.input[0] in self.constants:
            self.constants[node.output[0]] = self.constants[node.input[0]]
        else:
            self._alias(node, self._value(node), node.input[0])

    def _op_dropout(self, node):
        self._attributes(node, {"seed"})
        self._constant(node, 1, "ratio", dims=())  # unused at inference, but it must be a scalar
        training = self._constant(node, 2, "training_mode", dims=(), kind="b")
        if training is not None and training.any():
            raise self.unsupported(node, "training_mode=True")
        if len(node.output) > 1 and node.output[1] and (self.readers.get(node.output[1]) or
                                                         node.output[1] in self.outputs):
            raise self.unsupported(node, "reading the mask output")
        self._alias(node, self._value(node), node.input[0])

    def _op_constant(self, node):
        a = self._attributes(node, {"value", "value_float", "value_floats", "value_int", "value_ints"})
        if len(a) != 1:
            raise self.node_fail(node, "a Constant needs exactly one value attribute")
        (key, value), = a.items()
        if key == "value":
            array = self._array(value, f"the value of node '{node.name}' (Constant)")
        else:
            dtype = np.float32 if key.startswith("value_float") else np.int64
            array = np.array(value, dtype=dtype)
        self.constants[node.output[0]] = array

    # --- the model ------------------------------------------------------------------------------------

    def _output(self):
        name = self.graph.output[0].name
        if name not in self.values:
            raise self.fail(f"the graph's output '{name}' is a constant; a tinycnn model computes its output "
                            f"from its inputs")
        value = self.values[name]
        if value.chw is not None:
            raise self.fail(f"the graph's output '{name}' is a flattened NCHW tensor (features in C, H, W order); "
                            f"tinycnn flattens in H, W, C order and has no layer to reorder them")
        return value.step

    def _build(self, inputs, output):
        """The layers of every step, called on each other's symbolic outputs, and the Model."""
        taken = set()
        chosen = []
        for step in self.steps:  # the file's names where valid and unique, first come first served
            name = next((n for n in step.names if _NAME.fullmatch(n) and n not in taken), None)
            taken.add(name)
            chosen.append(name)
        tensors = []
        for step, name in zip(self.steps, chosen):
            try:
                layer = _make(step.cls, name, step.kwargs, taken)
                if step.cls is InputLayer:
                    tensors.append(layer.symbolic_output())
                    continue
                args = [tensors[i] for i in step.inputs]
                tensors.append(layer(args if layer.multi_input else args[0]))
                if step.weights:
                    layer.set_weights(step.weights)
            except (TypeError, ValueError) as e:
                raise self.fail(f"node '{step.names[0]}' ({step.op}): tinycnn cannot make its layer: {e}") from None
        name = self.graph.name if _NAME.fullmatch(self.graph.name or "") else None
        try:
            return Model([tensors[i] for i in inputs] if len(inputs) > 1 else tensors[inputs[0]], tensors[output],
                         name=name)
        except ValueError as e:
            raise self.fail(f"the graph does not make a tinycnn model: {e}") from None

    def _metadata(self):
        """``{'class_names': [...]}`` from the file's ``class_names`` metadata entry, if it has one."""
        metadata = {}
        for prop in self.proto.metadata_props:
            if prop.key != "class_names":
                continue
            if len(prop.value) > MAX_CONFIG_BYTES:
                raise self.fail(f"the metadata entry 'class_names' takes {len(prop.value):,} characters; at most "
                                f"{MAX_CONFIG_BYTES:,} are read")
            try:
                names = json.loads(prop.value)
            except (ValueError, RecursionError):
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise self.fail("the metadata entry 'class_names' is not a JSON list of strings")
            metadata["class_names"] = names
        return metadata


def _names(proto):
    """Every name and text field the importer reads (protobuf gives bytes where one is not UTF-8)."""
    graph = proto.graph
    yield graph.name
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        yield from (a.name for a in node.attribute)
    for tensor in graph.initializer:
        yield tensor.name
        yield from (text for entry in tensor.external_data for text in (entry.key, entry.value))
    yield from (v.name for v in (*graph.input, *graph.output))
    yield from (dim.dim_param for v in graph.input for dim in v.type.tensor_type.shape.dim)
    yield from (text for prop in proto.metadata_props for text in (prop.key, prop.value))
    yield from (o.domain for o in proto.opset_import)


def _label(node):
    """How messages name a node: ``'/conv1/Conv' (Conv)``; an unnamed one by its first output."""
    name = f"'{node.name}'" if node.name else f"making '{node.output[0] if node.output else ''}'"
    return f"{name} ({node.domain + '.' if node.domain else ''}{node.op_type})"


def _make(cls, name, kwargs, taken):
    """``cls(**kwargs)`` named ``name``, or automatically with a name the file does not use."""
    if name is not None:
        return cls(name=name, **kwargs)
    while True:
        layer = cls(**kwargs)
        if layer.name not in taken:
            taken.add(layer.name)
            return layer


def _rows_in_hwc_order(array, chw):
    """``array``'s first axis, ``C*H*W`` rows in ONNX's ``C, H, W`` order, in tinycnn's ``H, W, C``."""
    h, w, c = chw
    rest = array.shape[1:]
    return np.ascontiguousarray(array.reshape((c, h, w) + rest).transpose((1, 2, 0) + tuple(range(3, 3 + len(rest))))
                                .reshape(array.shape))


def _decimal(value):
    """A float32 attribute as the shortest decimal that rounds to it (``1e-3``, not
    ``0.0010000000474974513``): what the exporter was given, so a round trip keeps the layer's
    settings, and its arithmetic, unchanged."""
    return float(str(np.float32(value)))


#: ONNX's number of inputs (fewest, most) and most outputs of each operator read (others: 1, 1, 1).
_ARITY = {"Conv": (2, 3, 1), "MaxPool": (1, 1, 2), "BatchNormalization": (5, 5, 3), "Gemm": (2, 3, 1),
          "MatMul": (2, 2, 1), "Add": (2, 2, 1), "Sub": (2, 2, 1), "Mul": (2, 2, 1), "Sum": (1, MAX_NODES, 1),
          "Mean": (1, MAX_NODES, 1), "Concat": (1, MAX_NODES, 1), "Reshape": (2, 2, 1), "Dropout": (1, 3, 2),
          "Constant": (0, 0, 1), "ReduceMean": (1, 2, 1), "ReduceMax": (1, 2, 1)}
#: What reading a malformed node may raise beyond our own checks (reported as ModelFileError).
_MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError)
_LAYOUT_NAMES = {_NCHW: "NCHW", _NHWC: "NHWC", _POOLED: "(N, C, 1, 1)", _FLAT: "(N, features)"}
#: ONNX operator -> the method that reads it.
_OPERATORS = {
    "Conv": _Importer._op_conv, "MaxPool": _Importer._op_maxpool, "AveragePool": _Importer._op_averagepool,
    "GlobalAveragePool": _Importer._op_globalaveragepool, "GlobalMaxPool": _Importer._op_globalmaxpool,
    "ReduceMean": _Importer._op_reducemean, "ReduceMax": _Importer._op_reducemax,
    "BatchNormalization": _Importer._op_batchnormalization,
    **{op: (lambda self, node, name=name: self._activation(node, name)) for op, name in _ACTIVATIONS.items()},
    "Gemm": _Importer._op_gemm, "MatMul": _Importer._op_matmul, "Add": _Importer._op_add, "Sub": _Importer._op_sub,
    "Mul": _Importer._op_mul, "Sum": _Importer._op_sum, "Mean": _Importer._op_mean, "Concat": _Importer._op_concat,
    "Flatten": _Importer._op_flatten, "Reshape": _Importer._op_reshape, "Transpose": _Importer._op_transpose,
    "Identity": _Importer._op_identity, "Dropout": _Importer._op_dropout, "Constant": _Importer._op_constant,
}
