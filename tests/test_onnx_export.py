"""ONNX export (tinycnn/onnx_export.py): for every layer type, the reference model, a residual
network, a two-input model and a shared layer, the written file passes ``onnx.checker`` with
``full_check`` and ONNX Runtime computes what ``predict`` does (float32, rtol 1e-5) at batch 1 and
batch 7 from one file; names, layout and metadata; clear errors; ``tinycnn export``."""
import json
import os
import sys

import numpy as np
import pytest

from tinycnn import Input, Model
from tinycnn.cli import main
from tinycnn.layers import (Activation, Add, Average, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, Dense,
                            Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, Layer, MaxPooling2D, Multiply,
                            RandomContrast, RandomFlip, RandomRotation, RandomTranslation, ReLU, Softmax, Subtract)
from tinycnn.models import Sequential, reference_model, resnet

onnx = pytest.importorskip("onnx", reason='ONNX export needs the onnx package (pip install "tinycnn[onnx]")')
ort = pytest.importorskip("onnxruntime", reason='the export is checked by running it in onnxruntime '
                                                '(pip install "tinycnn[onnx]")')

RTOL, ATOL = 1e-5, 1e-6


def _randomize(model, seed=0):
    """``model``, built, with random weights everywhere (biases and batch-norm statistics too, so
    that none hides a mistake)."""
    model.build()
    gen = np.random.default_rng(seed)
    for layer in model.layers:
        names = [n for n in layer.weight_names if layer._has_weight(n)]
        layer.set_weights([gen.uniform(0.5, 1.5, w.shape) if n == "moving_variance" else
                           0.5 * gen.standard_normal(w.shape) for n, w in zip(names, layer.get_weights())])
    return model


def _batches(model, seed=0):
    """Per input, a batch of 7 random samples."""
    gen = np.random.default_rng(seed)
    return [gen.standard_normal((7,) + t.sample_shape).astype(np.float32) for t in model.inputs]


def _nchw(a):
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _export_and_compare(model, path, channels_first=False, opset=None):
    """Export ``model`` to ``path``, check the file, and compare ONNX Runtime with ``predict`` at batch
    sizes 1 and 7 on one session (the batch dimension is free). Returns the loaded ModelProto."""
    model.export(path, channels_first=channels_first, opset=opset)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    xs = _batches(model)
    for n in (1, 7):
        batch = [x[:n] for x in xs]
        expected = model.predict(batch if len(batch) > 1 else batch[0])
        feeds = {t.name: _nchw(x) if channels_first else x for t, x in zip(model.inputs, batch)}
        got = session.run(None, feeds)[0]
        if channels_first:
            expected = _nchw(expected)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    return proto


def _ops(proto):
    return [node.op_type for node in proto.graph.node]


# --- every layer type ------------------------------------------------------------------------------

def _image(shape=(7, 7, 2), name="image"):
    return Input(shape=shape, name=name)


def _layer_case(name):
    """A small model around the layer type(s) of case ``name``: (model, operators the file must hold)."""
    x = _image()
    if name == "conv_same_stride1":
        return Model(x, Conv2D(3, 3, padding="same", activation="relu")(x)), {"Conv", "Relu"}
    if name == "conv_same_stride2_odd":           # 7 -> 4: total padding 2 (3x3) and 1 (3x2), split top/left first
        return Model(x, Conv2D(3, (3, 2), strides=2, padding="same", activation="tanh")(x)), {"Conv", "Tanh"}
    if name == "conv_same_stride2_even":          # 8 -> 4: total padding 1, all of it at the bottom/right
        x = _image((8, 8, 2))
        return Model(x, Conv2D(2, 3, strides=2, padding="same", activation="sigmoid")(x)), {"Conv", "Sigmoid"}
    if name == "conv_valid_strides":              # the last row/column that no window covers is dropped
        y = Conv2D(3, (3, 2), strides=(2, 3), use_bias=False)(x)
        return Model(x, y), {"Conv"}
    if name == "conv_softmax":                    # softmax over the channels: axis 1 in NCHW
        return Model(x, Conv2D(4, 1, activation="softmax")(x)), {"Conv", "Softmax"}
    if name == "conv_winograd_pooled":            # 16 channels: Winograd, the 2x2 pooling computed inside it
        x = _image((6, 6, 16))
        y = MaxPooling2D(2)(Conv2D(16, 3, padding="same", activation="relu")(x))
        return Model(x, Flatten()(y)), {"Conv", "Relu", "MaxPool", "Flatten"}
    if name == "dense":
        v = Input(shape=(5,), name="vector")
        y = Dense(4, activation="relu")(v)
        y = Dense(4, activation="sigmoid")(y)
        y = Dense(4, activation="tanh", use_bias=False)(y)
        y = Dense(3)(y)
        return Model(v, Dense(3, activation="softmax")(y)), {"Gemm", "Relu", "Sigmoid", "Tanh", "Softmax"}
    if name == "dense_on_image":                  # Dense acts on the last axis: MatMul + Add in NHWC
        y = Dense(3, activation="softmax")(x)
        return Model(x, Dense(2, use_bias=False)(Conv2D(2, 1)(y))), {"MatMul", "Add", "Softmax"}
    if name == "batchnorm":
        y = BatchNormalization(center=False)(Conv2D(3, 3)(x))
        y = BatchNormalization(scale=False, epsilon=0.01)(GlobalAveragePooling2D()(y))  # on (N, C)
        return Model(x, y), {"BatchNormalization", "GlobalAveragePool"}
    if name == "pooling":
        a = MaxPooling2D(2)(x)                                       # 7 -> 3, valid
        b = MaxPooling2D(3, strides=2, padding="same")(x)            # 7 -> 4, padded
        c = AveragePooling2D(2, padding="same")(x)                   # 7 -> 4: the last windows are partial
        d = AveragePooling2D((3, 2), strides=(1, 2))(x)              # 7x7 -> 5x3
        flat = [Flatten()(t) for t in (a, b, c, d)]
        return Model(x, Concatenate()(flat)), {"MaxPool", "AveragePool", "Flatten", "Concat"}
    if name == "global_pooling":
        y = Concatenate()([GlobalAveragePooling2D()(x), GlobalMaxPooling2D()(x)])
        return Model(x, y), {"GlobalAveragePool", "GlobalMaxPool"}
    if name == "activation_layers":
        y = Activation("sigmoid")(Activation("relu")(Conv2D(3, 1)(x)))
        y = Softmax()(Activation("tanh")(Activation("linear")(y)))
        v = Activation("softmax")(ReLU()(Flatten()(y)))
        return Model(x, v), {"Relu", "Sigmoid", "Tanh", "Softmax"}
    if name == "identity_layers":                 # identity at inference: they vanish
        y = RandomContrast(0.5)(RandomTranslation(0.2, 0.2)(RandomRotation(0.1)(RandomFlip()(x))))
        y = Dropout(0.5)(Conv2D(2, 3)(Dropout(0.3)(y)))
        return Model(x, y), {"Conv"}
    if name == "merges_images":
        a, b, c = (Conv2D(2, 1)(x) for _ in range(3))
        y = Add()([a, b, c])
        y = Subtract()([y, a])
        y = Multiply()([y, b, c])
        y = Average()([y, a, b])
        y = Concatenate(axis=1)([y, a, Average()([a, c])])        # along H: (21, 7, 2)
        y = Concatenate(axis=-2)([y, y])                            # along W: (21, 14, 2)
        return Model(x, Concatenate()([y, y])), {"Add", "Sub", "Mul", "Sum", "Concat"}
    if name == "merges_vectors":
        v = Input(shape=(4,), name="vector")
        a, b = Dense(3)(v), Dense(3)(v)
        y = Concatenate()([Add()([a, b]), Subtract()([a, b]), Multiply()([a, b]), Average()([a, b])])
        return Model(v, y), {"Add", "Sub", "Mul", "Sum", "Concat"}
    raise AssertionError(name)


LAYER_CASES = ["conv_same_stride1", "conv_same_stride2_odd", "conv_same_stride2_even", "conv_valid_strides",
               "conv_softmax", "conv_winograd_pooled", "dense", "dense_on_image", "batchnorm", "pooling",
               "global_pooling", "activation_layers", "identity_layers", "merges_images", "merges_vectors"]


@pytest.mark.parametrize("case", LAYER_CASES)
def test_every_layer_type_matches_onnxruntime(case, tmp_path):
    model, ops = _layer_case(case)
    proto = _export_and_compare(_randomize(model), tmp_path / "model.onnx")
    assert ops <= set(_ops(proto)), _ops(proto)
    assert proto.graph.output[0].name == model.outputs[0].name


def test_every_layer_class_is_in_a_case():
    from tinycnn.layers import LAYER_CLASSES
    covered = {type(layer) for case in LAYER_CASES for layer in _layer_case(case)[0].layers}
    assert set(LAYER_CLASSES.values()) <= covered


def test_identity_layers_leave_no_node_and_conv_pads_follow_tinycnn(tmp_path):
    proto = _export_and_compare(_randomize(_layer_case("identity_layers")[0]), tmp_path / "m.onnx")
    assert _ops(proto) == ["Transpose", "Conv", "Transpose"]  # NHWC in, NHWC image out
    proto = _export_and_compare(_randomize(_layer_case("conv_same_stride2_odd")[0]), tmp_path / "m.onnx")
    conv = next(node for node in proto.graph.node if node.op_type == "Conv")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attributes["pads"] == [1, 0, 1, 1] and attributes["strides"] == [2, 2]
    assert attributes["kernel_shape"] == [3, 2]


# --- whole networks --------------------------------------------------------------------------------

def test_reference_model_layout_names_and_metadata(tmp_path):
    model = _randomize(reference_model((16, 16, 3), num_classes=3, augment=True, seed=0))
    model.metadata["class_names"] = ["benign", "malignant", "normal"]
    proto = _export_and_compare(model, tmp_path / "reference.onnx")
    nodes = proto.graph.node
    first = nodes[0]
    assert first.op_type == "Transpose" and list(first.input) == [model.inputs[0].name]
    assert onnx.helper.get_attribute_value(first.attribute[0]) == [0, 3, 1, 2]
    flatten = next(i for i, node in enumerate(nodes) if node.op_type == "Flatten")
    assert nodes[flatten - 1].op_type == "Transpose"             # back to NHWC: Dense's weights unchanged
    assert onnx.helper.get_attribute_value(nodes[flatten - 1].attribute[0]) == [0, 2, 3, 1]
    assert _ops(proto).count("Conv") == 4 and _ops(proto).count("BatchNormalization") == 3
    assert "Dropout" not in _ops(proto) and "RandomFlip" not in str(proto.graph.node)
    graph_input = proto.graph.input[0]
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", 16, 16, 3]
    assert proto.graph.output[0].name == model.layers[-1].name
    names = [node.name for node in nodes]
    assert len(set(names)) == len(names) and all(names)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == ["benign", "malignant", "normal"]
    assert json.loads(props["input_names"]) == [model.inputs[0].name]
    assert props["output_name"] == model.layers[-1].name
    assert props["producer"] == "tinycnn" and props["layout"] == "NHWC" and props["tinycnn_version"]
    assert proto.producer_name == "tinycnn" and proto.opset_import[0].version == 17


def test_reference_model_channels_first(tmp_path):
    model = _randomize(reference_model((16, 16, 3)))
    proto = _export_and_compare(model, tmp_path / "nchw.onnx", channels_first=True)
    assert "Transpose" not in _ops(proto)[:_ops(proto).index("Flatten") - 1]
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch", 3, 16, 16]
    assert {p.key: p.value for p in proto.metadata_props}["layout"] == "NCHW"
    assert "class_names" not in {p.key for p in proto.metadata_props}  # none known, none written


@pytest.mark.parametrize("channels_first", [False, True])
def test_image_output_comes_in_the_input_layout(channels_first, tmp_path):
    x = _image()
    y = Conv2D(3, 3, padding="same")(Conv2D(2, 3, strides=2, padding="same", activation="relu")(x))
    proto = _export_and_compare(_randomize(Model(x, y)), tmp_path / "m.onnx", channels_first=channels_first)
    shape = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert shape == (["batch", 3, 4, 4] if channels_first else ["batch", 4, 4, 3])


def test_residual_network(tmp_path):
    # the paper's stem (7x7 stride-2 convolution, 3x3 stride-2 'same' max pooling), a projection shortcut,
    # odd sides after the stride-2 stage
    model = _randomize(resnet((20, 20, 3), 3, blocks=(1, 1), width=4, small_input=False))
    proto = _export_and_compare(model, tmp_path / "resnet.onnx")
    assert _ops(proto).count("Add") == 2 and "GlobalAveragePool" in _ops(proto)
    assert [v.name for v in proto.graph.input] == ["image"] and proto.graph.output[0].name == "classifier"


def test_two_inputs_image_and_vector(tmp_path):
    image, clinical = Input(shape=(8, 8, 2), name="image"), Input(shape=(3,), name="clinical")
    features = GlobalAveragePooling2D()(Conv2D(4, 3, activation="relu")(image))
    joined = Concatenate()([features, Dense(2, activation="relu")(clinical)])
    model = _randomize(Model([image, clinical], Dense(2, activation="softmax", name="probabilities")(joined)))
    for channels_first in (False, True):
        proto = _export_and_compare(model, tmp_path / "two.onnx", channels_first=channels_first)
        assert [v.name for v in proto.graph.input] == ["image", "clinical"]
        assert json.loads({p.key: p.value for p in proto.metadata_props}["input_names"]) == ["image", "clinical"]


def test_shared_layers(tmp_path):
    x = _image((6, 6, 3))
    shared = Conv2D(3, 3, padding="same", activation="relu", name="shared")
    y = Add()([shared(x), shared(shared(x))])        # three calls of one layer
    v = Input(shape=(4,), name="vector")
    dense = Dense(4, activation="tanh", name="dense_shared")
    joined = Concatenate()([GlobalMaxPooling2D()(y), dense(dense(v))])
    model = _randomize(Model([x, v], Dense(2, name="out")(joined)))
    proto = _export_and_compare(model, tmp_path / "shared.onnx")
    weights = [t.name for t in proto.graph.initializer]
    assert weights.count("shared/kernel") == 1 and len(weights) == len(set(weights)) == 6
    assert _ops(proto).count("Conv") == 3 and _ops(proto).count("Gemm") == 3


def test_the_output_layer_called_twice_or_vanishing_keeps_its_name(tmp_path):
    v = Input(shape=(3,), name="vector")
    dense = Dense(3, activation="relu", name="twice")
    proto = _export_and_compare(_randomize(Model(v, dense(dense(v)))), tmp_path / "twice.onnx")
    assert proto.graph.output[0].name == "twice"
    proto = _export_and_compare(_randomize(Model(v, Dropout(0.5, name="drop")(Dense(2)(v)))), tmp_path / "drop.onnx")
    assert proto.graph.output[0].name == "drop" and _ops(proto) == ["Gemm"]
    proto = _export_and_compare(Model(v, Dropout(0.5, name="nothing")(v)), tmp_path / "identity.onnx")
    assert _ops(proto) == ["Identity"] and proto.graph.output[0].name == "nothing"


@pytest.mark.parametrize("opset", [18, 21])
def test_later_opsets(opset, tmp_path):
    model, _ = _layer_case("pooling")
    proto = _export_and_compare(_randomize(model), tmp_path / "m.onnx", opset=opset)
    assert proto.opset_import[0].version == opset


# --- errors ----------------------------------------------------------------------------------------

class Doubling(Layer):
    """A user's own layer: tinycnn cannot know its ONNX form."""

    def forward(self, x, training=False):
        return 2 * x


def test_unexportable_layers_and_options_are_refused_clearly(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous file")
    model = Sequential([Dense(3, input_shape=(4,)), Doubling(name="twice")])
    with pytest.raises(ValueError, match=r"Layer 'twice' \(Doubling\) has no ONNX form; tinycnn exports .*Conv2D"):
        model.export(path)
    sequence = Input(shape=(5, 4), name="sequence")
    with pytest.raises(ValueError, match=r"'bn' \(BatchNormalization\) normalizes input of shape \(None, 5, 4\); "
                                         r"tinycnn exports batch normalization of images"):
        Model(sequence, BatchNormalization(name="bn")(sequence)).export(path)
    assert path.read_bytes() == b"the previous file" and os.listdir(tmp_path) == ["model.onnx"]

    small = Sequential([Dense(2, input_shape=(3,))])
    for opset in (16, 22, "17", True):
        with pytest.raises(ValueError, match="argument `opset`: expected an int from 17 to 21"):
            small.export(path, opset=opset)
    with pytest.raises(TypeError, match="`channels_first` must be a bool"):
        small.export(path, channels_first="yes")
    with pytest.raises(ValueError, match="only float32 models"):
        Sequential([Dense(2, input_shape=(3,), dtype="float64")]).export(path)
    with pytest.raises(ValueError, match="not built"):
        Sequential([Dense(2)]).export(path)
    with pytest.raises(ValueError, match="format must be 'onnx'"):
        small.export(path, format="tf_saved_model")
    # a folder that does not exist: named, not mkstemp's temporary file (model.save says the same)
    missing = tmp_path / "no such folder" / "model.onnx"
    for write in (small.export, small.save):
        with pytest.raises(FileNotFoundError, match=r"cannot write .*model.onnx: the folder .*no such folder does not"):
            write(missing)


def test_without_onnx_the_message_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` now raises ImportError
    model = Sequential([Dense(2, input_shape=(3,))])
    with pytest.raises(ImportError, match=r'pip install "tinycnn\[onnx\]"'):
        model.export(tmp_path / "model.onnx")
    assert not os.listdir(tmp_path)


# --- the command line ------------------------------------------------------------------------------

def test_cli_export(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0 and "--channels-first" in capsys.readouterr().out
    model = _randomize(Sequential([Conv2D(3, 3, padding="same", activation="relu", input_shape=(6, 6, 1)),
                                   MaxPooling2D(2), Flatten(), Dense(2, activation="softmax")]))
    model.metadata["class_names"] = ["healthy", "lesion"]
    saved = tmp_path / "model.npz"
    model.save(saved)
    assert main(["export", str(saved)]) == 0                     # default: beside the model, .onnx
    text = capsys.readouterr().out
    assert str(tmp_path / "model.onnx") in text and "['batch', 6, 6, 1] (NHWC)" in text and "opset 17" in text
    x = _batches(model)[0]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], model.predict(x),
                               rtol=RTOL, atol=ATOL)
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["class_names"]) == ["healthy", "lesion"]

    out = tmp_path / "nchw.onnx"
    assert main(["export", str(saved), "--out", str(out), "--channels-first", "--opset", "21"]) == 0
    assert "['batch', 1, 6, 6] (NCHW)" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: _nchw(x)})[0], model.predict(x),
                               rtol=RTOL, atol=ATOL)

    assert main(["export", str(saved), "--opset", "12"]) == 2
    assert "tinycnn export: error:" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_cli_export_without_onnx(tmp_path, capsys, monkeypatch):
    saved = tmp_path / "model.npz"
    Sequential([Dense(2, input_shape=(3,))]).save(saved)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(saved)]) == 2
    assert 'pip install "tinycnn[onnx]"' in capsys.readouterr().err
