"""tinycnn.load_onnx: every operator it reads, in graphs built here with onnx.helper, predicts what ONNX
Runtime computes from the same file (within 1e-5 of the output's scale, at batch 1 and 7); networks
exported by PyTorch predict what PyTorch computes; imported models train; and tinycnn's own export,
imported back, predicts bit for bit what the original model does.

Damaged and hostile files are in test_hostile_onnx.py.
"""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinycnn
from tinycnn import Input, Model
from tinycnn.archive import ModelFileError
from tinycnn.layers import (Activation, Add, Average, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, Dense,
                            Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, InputLayer, MaxPooling2D,
                            Multiply, ReLU, Subtract)
from tinycnn.models import reference_model


class Graph:
    """A small ONNX graph under construction: random float32 weights; nodes named as PyTorch names
    them, ``/`` + their output (not a layer name: tinycnn names the layers), unless ``name`` is given."""

    def __init__(self, inputs=(("x", (2, 6, 6)),), seed=0):
        self.rng = np.random.default_rng(seed)
        self.inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape])
                       for name, shape in inputs]
        self.nodes, self.initializers, self.count = [], [], 0

    def weight(self, shape, positive=False):
        values = self.rng.random(shape) + 0.5 if positive else 0.5 * self.rng.standard_normal(shape)
        name = f"w{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    def constant(self, array):
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, name=None, **attributes):
        self.count += 1
        out = f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name or f"/{out}", **attributes))
        return out

    def conv(self, x, c_in, filters, kernel=3, pads=(1, 1, 1, 1), strides=(1, 1), bias=True, name=None,
             **attributes):
        inputs = [x, self.weight((filters, c_in, kernel, kernel))] + ([self.weight((filters,))] if bias else [])
        return self.node("Conv", inputs, name=name, kernel_shape=[kernel, kernel], pads=list(pads),
                         strides=list(strides), **attributes)

    def proto(self, output, opset=17, check=True, producer="tests"):
        graph = helper.make_graph(self.nodes, "g", self.inputs,
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
        if check:  # the output's shape from ONNX's shape inference, then ONNX's own checks
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
            onnx.checker.check_model(model, full_check=True)
        return model

    def save(self, path, output, **kwargs):
        onnx.save(self.proto(output, **kwargs), path)
        return path


def run_onnxruntime(path, feeds):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def images(n, shape, seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(np.float32)


def assert_close(got, expected):
    """Within 1e-5 relative to the output's scale (float32 sums in another order differ by ~1e-7)."""
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def check_against_onnxruntime(path, nchw=(2, 6, 6)):
    """Import ``path`` (one NCHW image input) and compare predict with ONNX Runtime at batch 1 and 7."""
    model = tinycnn.load_onnx(path)
    c, h, w = nchw
    assert model.input_shape == (None, h, w, c)
    for n in (1, 7):
        x = images(n, (h, w, c), seed=n)
        expected = run_onnxruntime(path, {"x": x.transpose(0, 3, 1, 2)})
        got = model.predict(x)
        assert_close(got, expected if got.ndim == 2 else expected.transpose(0, 2, 3, 1))
    return model


def kinds(model):
    return [type(layer).__name__ for layer in model.layers[1:]]


# --- one graph per operator (NCHW input, as PyTorch writes it) ---------------------------------------------

def conv_relu(g):
    return g.node("Relu", [g.conv("x", 2, 3)])


def conv_strided_valid_sigmoid(g):
    return g.node("Sigmoid", [g.conv("x", 2, 3, pads=(0, 0, 0, 0), strides=(2, 2), bias=False)])


def conv_same_upper_tanh(g):
    conv = g.node("Conv", ["x", g.weight((4, 2, 3, 3)), g.weight((4,))], kernel_shape=[3, 3], strides=[2, 2],
                  auto_pad="SAME_UPPER")
    return g.node("Tanh", [conv])


def conv_even_kernel_same(g):
    # TensorFlow's 'same' for a 2x2 kernel: the one padded row and column at the bottom and right
    return g.conv("x", 2, 3, kernel=2, pads=(0, 0, 1, 1))


def conv_softmax_over_channels(g):
    return g.node("Softmax", [g.conv("x", 2, 3)], axis=1)


def conv_computed_bias(g):
    conv = g.conv("x", 2, 3, bias=False)
    return g.node("Add", [conv, g.constant(g.rng.standard_normal((3, 1, 1)).astype(np.float32))])


def conv_padding_no_window_reaches(g):
    # ONNX output floor((6 + 1 - 2) / 2) + 1 = 3: the padded row and column are never read ('valid')
    return g.conv("x", 2, 3, kernel=2, strides=(2, 2), pads=(0, 0, 1, 1))


def dropout_with_ratio_and_training_mode_inputs(g):
    ratio, training = g.constant(np.float32(0.5)), g.constant(np.array(False))
    return g.node("Dropout", [g.conv("x", 2, 3), ratio, training])


def max_pool(g):
    return g.node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])


def max_pool_same_odd(g):
    return g.node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])


def average_pool_same(g):
    return g.node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)


def batch_norm(g):
    return g.node("BatchNormalization", ["x", g.weight((2,)), g.weight((2,)), g.weight((2,)),
                                         g.weight((2,), positive=True)], epsilon=1e-5)


def global_average_flatten_gemm_softmax(g):
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("x", 2, 4)])], axis=1)
    return g.node("Softmax", [g.node("Gemm", [pooled, g.weight((3, 4)), g.weight((3,))], transB=1)])


def global_max_reshape_matmul_add(g):
    pooled = g.node("Reshape", [g.node("GlobalMaxPool", ["x"]), g.constant(np.array([0, -1], dtype=np.int64))])
    return g.node("Add", [g.node("MatMul", [pooled, g.weight((2, 3))]), g.weight((3,))])


def flatten_nchw_gemm(g):
    """Flatten of NCHW (features C, H, W) into a Dense: its rows must follow tinycnn's H, W, C order."""
    flat = g.node("Flatten", [g.conv("x", 2, 3, pads=(0, 0, 0, 0), strides=(2, 2))])  # (N, 3 * 2 * 2)
    return g.node("Gemm", [flat, g.weight((12, 5)), g.weight((5,))])


def reshape_nchw_batchnorm_gemm(g):
    flat = g.node("Reshape", [g.conv("x", 2, 3, pads=(0, 0, 0, 0), strides=(2, 2)),
                              g.constant(np.array([-1, 12], dtype=np.int64))])
    normed = g.node("BatchNormalization", [flat, g.weight((12,)), g.weight((12,)), g.weight((12,)),
                                           g.weight((12,), positive=True)])
    return g.node("Gemm", [g.node("Relu", [normed]), g.weight((5, 12)), g.weight((5,))], transB=1)


def merges(g):
    a, b, c = g.conv("x", 2, 3), g.conv("x", 2, 3), g.conv("x", 2, 3)
    total = g.node("Sum", [g.node("Add", [a, b]), g.node("Sub", [a, c]), g.node("Mul", [b, c])])
    return g.node("Concat", [g.node("Mean", [total, a, c]), total], axis=1)


def concat_along_height(g):
    return g.node("Concat", [g.conv("x", 2, 3), g.conv("x", 2, 3, kernel=1, pads=(0, 0, 0, 0))], axis=2)


def dropout_identity_constant(g):
    kernel = g.node("Constant", [], value=numpy_helper.from_array(
        g.rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "k"))
    conv = g.node("Conv", [g.node("Identity", ["x"]), kernel], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return g.node("Relu", [g.node("Dropout", [conv])])


def shared_conv_output(g):
    """A Conv whose output feeds a Relu and a merge: the Relu stays a layer of its own."""
    conv = g.conv("x", 2, 3)
    return g.node("Add", [g.node("Relu", [conv]), conv])


GRAPHS = {
    conv_relu: ["Conv2D"], conv_strided_valid_sigmoid: ["Conv2D"], conv_same_upper_tanh: ["Conv2D"],
    conv_even_kernel_same: ["Conv2D"], conv_padding_no_window_reaches: ["Conv2D"],
    conv_softmax_over_channels: ["Conv2D"], conv_computed_bias: ["Conv2D"],
    dropout_with_ratio_and_training_mode_inputs: ["Conv2D"],
    max_pool: ["MaxPooling2D"], max_pool_same_odd: ["MaxPooling2D"], average_pool_same: ["AveragePooling2D"],
    batch_norm: ["BatchNormalization"],
    global_average_flatten_gemm_softmax: ["Conv2D", "GlobalAveragePooling2D", "Dense"],
    global_max_reshape_matmul_add: ["GlobalMaxPooling2D", "Dense"],
    flatten_nchw_gemm: ["Conv2D", "Flatten", "Dense"],
    reshape_nchw_batchnorm_gemm: ["Conv2D", "Flatten", "BatchNormalization", "Activation", "Dense"],
    merges: ["Conv2D", "Conv2D", "Add", "Conv2D", "Subtract", "Multiply", "Add", "Average", "Concatenate"],
    concat_along_height: ["Conv2D", "Conv2D", "Concatenate"],
    dropout_identity_constant: ["Conv2D"],
    shared_conv_output: ["Conv2D", "Activation", "Add"],
}


@pytest.mark.parametrize("build", GRAPHS, ids=lambda f: f.__name__)
def test_each_operator_predicts_what_onnxruntime_computes(build, tmp_path):
    g = Graph()
    path = g.save(tmp_path / "m.onnx", build(g))
    model = check_against_onnxruntime(path)
    assert kinds(model) == GRAPHS[build]


def test_what_each_operator_becomes(tmp_path):
    """Settings, not only numbers: activations folded into the layer, pads as 'same'/'valid'."""
    g = Graph()
    model = tinycnn.load_onnx(g.save(tmp_path / "a.onnx", conv_relu(g)))
    conv = model.layers[1]
    assert (conv.activation.name, conv.padding, conv.kernel_size) == ("relu", "same", (3, 3))
    assert model.layers[0].name == "x" and conv.name.startswith("conv2d")  # '/conv1' is no layer name
    g = Graph()
    model = tinycnn.load_onnx(g.save(tmp_path / "b.onnx", conv_strided_valid_sigmoid(g)))
    conv = model.layers[1]
    assert (conv.activation.name, conv.padding, conv.strides, conv.use_bias) == ("sigmoid", "valid", (2, 2), False)
    g = Graph()
    model = tinycnn.load_onnx(g.save(tmp_path / "c.onnx", batch_norm(g)))
    # the file's float32 epsilon and ONNX's default momentum, as the decimals they stand for
    assert model.layers[1].epsilon == 1e-5 and model.layers[1].momentum == 0.9
    g = Graph()
    model = tinycnn.load_onnx(g.save(tmp_path / "d.onnx", global_average_flatten_gemm_softmax(g)))
    assert model.layers[-1].activation.name == "softmax"  # so the loss reads the logits when it trains


def test_layer_names_from_the_file_and_two_named_layers_stay_two(tmp_path):
    """A file from tinycnn that names a Conv and the Relu after it (its export of a Conv2D followed by a
    ReLU layer) has two layers; with a nameless Relu, or from another producer (PyTorch's dynamo exporter
    names its nodes node_conv2d, node_relu), it is one Conv2D(activation='relu')."""
    g = Graph()
    out = g.node("Relu", [g.conv("x", 2, 3, name="features")], name="activation")
    model = tinycnn.load_onnx(g.save(tmp_path / "two.onnx", out, producer="tinycnn"))
    assert [(type(layer).__name__, layer.name) for layer in model.layers] == [
        ("InputLayer", "x"), ("Conv2D", "features"), ("Activation", "activation")]
    model = tinycnn.load_onnx(g.save(tmp_path / "other.onnx", out, producer="pytorch"))
    assert [(layer.name, layer.activation.name) for layer in model.layers[1:]] == [("features", "relu")]
    g = Graph()
    out = g.node("Relu", [g.conv("x", 2, 3, name="features")])
    model = tinycnn.load_onnx(g.save(tmp_path / "one.onnx", out, producer="tinycnn"))
    assert [(layer.name, layer.activation.name) for layer in model.layers[1:]] == [("features", "relu")]
    g = Graph()  # names that clash with tinycnn's automatic ones: the file's names are kept, others avoid them
    out = g.node("Relu", [g.node("Relu", [g.conv("x", 2, 3, name="conv2d")], name="x")])
    names = [layer.name for layer in tinycnn.load_onnx(g.save(tmp_path / "clash.onnx", out, producer="tinycnn")).layers]
    assert len(set(names)) == 4 and "conv2d" in names and "x" in names


def test_nhwc_input_through_a_transpose_and_back_to_nhwc_before_flatten(tmp_path):
    """tinycnn's own layout in a file: Transposes between NHWC and NCHW vanish, nothing is reordered."""
    g = Graph(inputs=[("x", (6, 6, 2))])
    nchw = g.node("Transpose", ["x"], perm=[0, 3, 1, 2])
    conv = g.node("Relu", [g.conv(nchw, 2, 3, strides=(2, 2), pads=(0, 0, 1, 1))])
    flat = g.node("Flatten", [g.node("Transpose", [conv], perm=[0, 2, 3, 1])])
    path = g.save(tmp_path / "nhwc.onnx", g.node("Gemm", [flat, g.weight((27, 2)), g.weight((2,))]))
    model = tinycnn.load_onnx(path)
    assert kinds(model) == ["Conv2D", "Flatten", "Dense"]
    for n in (1, 7):
        x = images(n, (6, 6, 2))
        assert_close(model.predict(x), run_onnxruntime(path, {"x": x}))


def test_a_dense_on_an_image_keeps_the_nhwc_layout(tmp_path):
    g = Graph()
    nhwc = g.node("Transpose", [g.conv("x", 2, 3)], perm=[0, 2, 3, 1])
    dense = g.node("Add", [g.node("MatMul", [nhwc, g.weight((3, 4))]), g.weight((4,))])
    path = g.save(tmp_path / "m.onnx", g.node("Softmax", [dense], axis=-1))
    model = tinycnn.load_onnx(path)
    assert kinds(model) == ["Conv2D", "Dense"] and model.layers[-1].activation.name == "softmax"
    x = images(7, (6, 6, 2))
    assert_close(model.predict(x), run_onnxruntime(path, {"x": x.transpose(0, 3, 1, 2)}))


def test_two_inputs_an_image_and_a_vector(tmp_path):
    g = Graph(inputs=[("image", (2, 6, 6)), ("clinical", (3,))])
    pooled = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("image", 2, 4)])])
    joined = g.node("Concat", [pooled, g.node("Relu", [g.node("Gemm", ["clinical", g.weight((3, 2))])])], axis=1)
    path = g.save(tmp_path / "two.onnx", g.node("Gemm", [joined, g.weight((6, 2)), g.weight((2,))]))
    model = tinycnn.load_onnx(path)
    assert [t.name for t in model.inputs] == ["image", "clinical"]
    for n in (1, 7):
        x, v = images(n, (6, 6, 2)), images(n, (3,), seed=5)
        assert_close(model.predict([x, v]), run_onnxruntime(path, {"image": x.transpose(0, 3, 1, 2), "clinical": v}))


@pytest.mark.parametrize("op, opset, keepdims", [("ReduceMean", 13, 1), ("ReduceMean", 18, 1), ("ReduceMax", 18, 0),
                                                 ("ReduceMax", 13, 0)])
def test_a_mean_or_max_over_height_and_width_is_a_global_pooling(op, opset, keepdims, tmp_path):
    """PyTorch's dynamo exporter writes AdaptiveAvgPool2d(1) as ReduceMean (axes an attribute up to opset
    17, an input from 18), then a Reshape."""
    g = Graph()
    axes = {"axes": [-1, -2]} if opset < 18 else {}
    inputs = [g.conv("x", 2, 4)] + ([g.constant(np.array([2, 3], dtype=np.int64))] if opset >= 18 else [])
    reduced = g.node(op, inputs, keepdims=keepdims, **axes)
    if keepdims:
        reduced = g.node("Reshape", [reduced, g.constant(np.array([-1, 4], dtype=np.int64))],
                         **({"allowzero": 1} if opset >= 14 else {}))
    model = check_against_onnxruntime(g.save(tmp_path / "m.onnx", g.node("Gemm", [reduced, g.weight((4, 2))]),
                                             opset=opset))
    pooling = "GlobalAveragePooling2D" if op == "ReduceMean" else "GlobalMaxPooling2D"
    assert kinds(model) == ["Conv2D", pooling, "Dense"]


@pytest.mark.parametrize("opset", [13, 21])
def test_opsets_13_to_21(opset, tmp_path):
    g = Graph()
    check_against_onnxruntime(g.save(tmp_path / "m.onnx", flatten_nchw_gemm(g), opset=opset))


# --- what is not supported: one error naming the node, its operator, what, and what is ---------------------

def refusal(path):
    with pytest.raises(ModelFileError) as info:
        tinycnn.load_onnx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


@pytest.mark.parametrize("build, expected", [
    (lambda g: g.node("LeakyRelu", [g.conv("x", 2, 3)]),
     "node '/leakyrelu2' (LeakyRelu): operator not supported; tinycnn imports the operators Add, AveragePool,"),
    (lambda g: g.conv("x", 2, 2, group=2),
     "node '/conv1' (Conv): group=2 (a grouped or depthwise convolution) is not supported; tinycnn imports"),
    (lambda g: g.conv("x", 2, 3, dilations=[2, 2], pads=(2, 2, 2, 2)), "node '/conv1' (Conv): dilations=[2, 2]"),
    (lambda g: g.conv("x", 2, 3, strides=(2, 2)),  # PyTorch's padding=1 at stride 2 on an even size
     "node '/conv1' (Conv): the padding [1, 1, 1, 1] (top, left, bottom, right) on a 6x6 input with kernel [3, 3] "
     "and strides [2, 2]: tinycnn pads 'valid' (none) or 'same'"),
    (lambda g: g.node("Gemm", [g.node("Flatten", ["x"]), g.weight((72, 2))], alpha=2.0),
     "node '/gemm2' (Gemm): alpha=2.0, beta=1.0, transA=0 (tinycnn's Dense is A @ B + C) is not supported"),
    (lambda g: g.node("Softmax", ["x"], axis=2),
     "node '/softmax1' (Softmax): Softmax over axis 2 of a tensor in layout NCHW"),
    (lambda g: g.node("Add", [g.conv("x", 2, 3), g.conv("x", 2, 3, pads=(0, 0, 0, 0))]),
     "node '/add3' (Add): inputs of different shapes or layouts"),
    (lambda g: g.node("Mul", ["x", g.constant(np.float32(2.0))]), "node '/mul1' (Mul): Mul by a constant"),
    (lambda g: g.node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2]),
     "node '/maxpool1' (MaxPool): dilations=[2, 2] is not supported"),
    (lambda g: g.node("Transpose", ["x"], perm=[0, 1, 3, 2]), "node '/transpose1' (Transpose): Transpose with perm"),
    (lambda g: g.node("Flatten", ["x"], axis=2), "node '/flatten1' (Flatten): Flatten with axis=2"),
    (lambda g: g.node("Relu", [g.conv("x", 2, 3, pads=(0, 0, 0, 0), dilations=[1, 1], kernel=2)]), None),
])
def test_unsupported_operators_and_attributes_get_one_clear_error(build, expected, tmp_path):
    g = Graph()
    path = g.save(tmp_path / "m.onnx", build(g), check=False)
    if expected is None:  # the control: the same kind of graph with supported settings loads
        tinycnn.load_onnx(path)
        return
    message = refusal(path)
    assert expected in message
    assert "tinycnn imports the operators Add, AveragePool, BatchNormalization, Concat, Constant, Conv" in message


def test_a_mean_over_other_axes_is_refused(tmp_path):
    g = Graph()
    path = g.save(tmp_path / "m.onnx", g.node("ReduceMean", [g.conv("x", 2, 4)], axes=[1, 2]), opset=13)
    assert "(ReduceMean): ReduceMean over axes [1, 2] (keepdims=1) of a tensor in layout NCHW" in refusal(path)


def test_all_unsupported_operators_are_named_at_once(tmp_path):
    g = Graph()
    out = g.node("Elu", [g.node("Pad", ["x", g.constant(np.zeros(8, dtype=np.int64))])])
    message = refusal(g.save(tmp_path / "m.onnx", out, check=False))
    assert "node '/pad1' (Pad), '/elu2' (Elu): operator not supported" in message


# --- networks exported by PyTorch ------------------------------------------------------------------------

def torch_nets():
    torch = pytest.importorskip("torch", reason="PyTorch is optional (the bench extra); these tests compare with it")
    nn = torch.nn

    class Plain(nn.Module):
        """Conv/BN/ReLU (PyTorch folds this BN into the Conv), MaxPool, a BN that stays, Flatten, Linear."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3), nn.ReLU())
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                      nn.Dropout(0.3), nn.Linear(8, 3))

        def forward(self, x):
            return self.head(self.features(x))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, x):
            x = self.stem(x)
            return self.head(torch.relu(x + self.block(x)))

    return torch, [Plain, Residual]


def randomize_batchnorm(torch, net, seed):
    """Moving statistics away from 0 and 1, so that a lost or misplaced batch norm shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)


def export_torch(torch, net, path, shape=(1, 8, 8), dynamo=False):
    """``torch.onnx.export`` with a free batch size: the TorchScript exporter, or the dynamo one (PyTorch's
    default since 2.9, which needs the onnxscript package)."""
    net.eval()
    example = (torch.zeros((2,) + shape),)
    if dynamo:
        torch.onnx.export(net, example, str(path), dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    else:
        torch.onnx.export(net, example, str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter (dynamo=False) is legacy
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecations, inside the dynamo exporter
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("which", [0, 1], ids=["plain", "residual"])
def test_pytorch_networks_predict_what_pytorch_computes(which, dynamo, tmp_path):
    torch, nets = torch_nets()
    if dynamo:
        pytest.importorskip("onnxscript", reason="PyTorch's dynamo exporter needs onnxscript")
    torch.manual_seed(0)
    net = nets[which]()
    randomize_batchnorm(torch, net, which)
    model = tinycnn.load_onnx(export_torch(torch, net, tmp_path / "net.onnx", dynamo=dynamo))
    for n in (1, 7):
        x = images(n, (8, 8, 1))
        with torch.no_grad():
            expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        assert_close(model.predict(x), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_imported_pytorch_network_trains(tmp_path):
    torch, nets = torch_nets()
    torch.manual_seed(0)
    model = tinycnn.load_onnx(export_torch(torch, nets[0](), tmp_path / "net.onnx"))
    before = [w.copy() for w in model.get_weights()]
    model.compile(optimizer="adam", loss=tinycnn.losses.CategoricalCrossentropy(from_logits=True))  # PyTorch's logits
    x = images(16, (8, 8, 1))
    y = tinycnn.to_categorical(np.arange(16) % 3, 3)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    trainable = [n for layer in model.layers for n in layer.weight_names if n in layer.params]
    assert sum(changed) >= len(trainable)  # every trainable weight moved (and the BN moving statistics)


def test_an_imported_model_trains_and_its_softmax_head_hands_the_loss_its_logits(tmp_path):
    g = Graph()
    model = tinycnn.load_onnx(g.save(tmp_path / "m.onnx", global_average_flatten_gemm_softmax(g)))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    assert model._reads_logits  # the Softmax node folded into the Dense: exact gradients from logits
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(images(16, (6, 6, 2)), tinycnn.to_categorical(np.arange(16) % 3, 3), batch_size=8,
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# --- round trip with tinycnn's exporter ---------------------------------------------------------------------

def residual_net():
    tinycnn.set_seed(3)
    image = Input(shape=(8, 8, 3), name="image")
    x = Conv2D(16, 3, padding="same", activation="relu", name="stem")(image)
    y = Conv2D(16, 3, padding="same", name="conv_a")(x)
    y = BatchNormalization(name="bn")(y)
    x = ReLU(name="join_relu")(Add(name="skip")([x, y]))
    x = AveragePooling2D(3, strides=2, padding="same", name="avg")(x)
    x = Conv2D(8, 1, activation="tanh", name="pointwise")(x)
    a = GlobalAveragePooling2D(name="gap")(x)
    b = GlobalMaxPooling2D(name="gmp")(x)
    x = Concatenate(name="concat")([a, b])
    return Model(image, Dense(3, activation="softmax", name="head")(Dropout(0.2)(x)), name="residual")


def two_input_net():
    tinycnn.set_seed(4)
    image, clinical = Input(shape=(8, 8, 2), name="image"), Input(shape=(4,), name="clinical")
    x = Conv2D(4, 3, strides=2, activation="sigmoid", name="conv")(image)
    x = MaxPooling2D(2, padding="same", name="pool")(x)
    x = Dense(5, name="per_pixel")(x)  # a Dense on an image: MatMul + Add on NHWC
    x = Flatten(name="flat")(Activation("softmax", name="pixel_softmax")(x))
    x = Dense(4, activation="relu", name="image_features")(x)
    c = BatchNormalization(name="clinical_bn")(clinical)
    merged = [Subtract(name="sub")([x, c]), Multiply(name="mul")([x, c]), Average(name="avg")([x, c, x])]
    return Model([image, clinical], Dense(2, activation="softmax", name="head")(Concatenate(name="cat")(merged)))


def nudged_batchnorm(model):
    for layer in model.layers:
        if isinstance(layer, BatchNormalization):
            c = layer.input_shape[-1]
            gen = np.random.default_rng(c)
            layer.set_weights([gen.random(c) + 0.5, gen.standard_normal(c) * 0.1, gen.standard_normal(c) * 0.2,
                               gen.random(c) + 0.5])
    return model


def reference():
    tinycnn.set_seed(5)
    model = reference_model((12, 12, 3), 3)
    model.build()
    return model


@pytest.mark.parametrize("channels_first", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("make", [reference, residual_net, two_input_net])
def test_round_trip_predicts_bit_for_bit(make, channels_first, tmp_path):
    original = nudged_batchnorm(make())
    original.metadata["class_names"] = ["benign", "malignant", "normal"]
    path = tmp_path / "m.onnx"
    original.export(path, channels_first=channels_first)
    model = tinycnn.load_onnx(path)
    rng = np.random.default_rng(0)
    for n in (1, 7):
        xs = [rng.standard_normal((n,) + t.sample_shape).astype(np.float32) for t in original.inputs]
        xs = xs if len(xs) > 1 else xs[0]
        assert np.array_equal(model.predict(xs), original.predict(xs))
    assert model.metadata["class_names"] == ["benign", "malignant", "normal"]
    kept = [layer for layer in original.layers if not isinstance(layer, (Dropout, InputLayer))]
    assert sorted(layer.name for layer in model.layers) == sorted([t.name for t in original.inputs] +
                                                                  [layer.name for layer in kept])
    momentum_written = any(a.name == "momentum" for n in onnx.load(path).graph.node for a in n.attribute)
    for layer in kept:  # the same layers, settings included
        config, imported = layer.get_config(), model.get_layer(layer.name).get_config()
        config.pop("input_shape", None)
        if isinstance(layer, BatchNormalization) and not momentum_written:
            # a training setting the exporter leaves out: ONNX's default 0.9 comes back
            assert imported.pop("momentum") == 0.9 and config.pop("momentum") == 0.99
        if isinstance(layer, ReLU):  # a ReLU layer is a Relu node, read back as Activation('relu')
            assert imported.pop("activation") == "relu"
        assert imported == config, layer.name


# --- the package without onnx ----------------------------------------------------------------------------------

def test_import_tinycnn_does_not_import_onnx():
    code = "import sys, tinycnn; assert 'onnx' not in sys.modules and callable(tinycnn.load_onnx); print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    assert "load_onnx" in tinycnn.__all__
