"""Networks with branches: Keras's functional API, the execution plan, merge layers, residual
networks, and the model file format that carries a graph.

Every new case goes through the finite-difference checks of ``check_model`` (float64): a residual
block with and without a projection, a fork whose branches meet again, Concatenate, a layer used
twice, two inputs, and a small ResNet-18."""
import ast
import importlib.util
import os

import numpy as np
import pytest

import tinycnn
from conftest import GRAD_TOL, record_error
from tinycnn import Input, Model, Sequential
from tinycnn.gradcheck import check_model
from tinycnn.kernels import pooling as P
from tinycnn.kernels import reference as R
from tinycnn.layers import (Activation, Add, Average, BatchNormalization, Concatenate, Conv2D, Dense, Dropout, Flatten,
                            GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D, Multiply, Subtract)
from tinycnn.models import resnet, resnet18

F64 = dict(dtype="float64")


def _data(shape, n=4, classes=3, seed=0, dtype=np.float64):
    gen = np.random.default_rng(seed)
    shapes = shape if isinstance(shape, list) else [shape]
    xs = [gen.standard_normal((n,) + s).astype(dtype) for s in shapes]
    y = np.eye(classes)[gen.integers(0, classes, n)]
    return (xs if isinstance(shape, list) else xs[0]), y


def _check(name, model, shape, classes=3, training=True, entries_per_weight=None):
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = _data(shape, classes=classes)
    report = check_model(model, x, y, sample_weight=np.array([1.0, 2.0, 0.5, 1.0]), training=training,
                         entries_per_weight=entries_per_weight)
    record_error(f"graph: {name}", report)
    report.assert_close(GRAD_TOL)
    return report


def _head(x, classes=3):
    return Dense(classes, activation="softmax", **F64)(GlobalAveragePooling2D(**F64)(x))


def _residual(projection):
    image = Input(shape=(6, 6, 3), dtype="float64")
    x = Conv2D(4, 3, padding="same", activation="relu", **F64)(image)
    y = Conv2D(6 if projection else 4, 3, padding="same", activation="relu", **F64)(x)
    y = BatchNormalization(**F64)(y)
    shortcut = Conv2D(6, 1, **F64)(x) if projection else x
    return Model(image, _head(Activation("relu", **F64)(Add(**F64)([y, shortcut]))))


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_residual_block_gradients(projection):
    _check(f"residual block ({'1x1 projection' if projection else 'identity'})", _residual(projection), (6, 6, 3))


def test_fork_whose_branches_meet_again_gradients():
    # one value read by three steps; the branches take different routes and are summed and averaged
    image = Input(shape=(5, 5, 2), dtype="float64")
    trunk = Conv2D(3, 3, padding="same", **F64)(image)
    a = Conv2D(3, 1, activation="tanh", **F64)(trunk)
    b = MaxPooling2D(1, **F64)(Conv2D(3, 3, padding="same", activation="sigmoid", **F64)(trunk))
    joined = Average(**F64)([a, b, trunk])
    diff = Subtract(**F64)([joined, Multiply(**F64)([a, b])])
    _check("fork and join (Average/Subtract/Multiply)", Model(image, _head(diff)), (5, 5, 2))


def test_concatenate_of_two_branches_gradients():
    image = Input(shape=(5, 4, 2), dtype="float64")
    a = Conv2D(3, 3, padding="same", activation="relu", **F64)(image)
    b = Conv2D(2, 1, **F64)(image)
    x = Concatenate(**F64)([a, b])
    pooled = Concatenate(axis=1, **F64)([GlobalMaxPooling2D(**F64)(x), GlobalAveragePooling2D(**F64)(x)])
    _check("Concatenate (channels, features)", Model(image, Dense(3, activation="softmax", **F64)(pooled)), (5, 4, 2))


def test_a_layer_used_twice_shares_weights_and_sums_gradients():
    image = Input(shape=(5, 5, 3), dtype="float64")
    shared = Conv2D(3, 3, padding="same", activation="tanh", **F64, name="shared")
    x = shared(shared(image))                    # the same weights at two depths
    model = Model(image, _head(x))
    assert [layer.name for layer in model.layers].count("shared") == 1
    assert model.count_params() == 3 * 3 * 3 * 3 + 3 + 3 * 3 + 3
    assert len(model.plan.twins) == 1
    _check("shared layer (called twice)", model, (5, 5, 3))
    with pytest.raises(ValueError, match=r"'shared' \(Conv2D\) has been called 2 times"):
        _ = shared.output


def test_two_inputs_image_and_clinical_features_gradients():
    image = Input(shape=(6, 6, 1), dtype="float64", name="image")
    clinical = Input(shape=(3,), dtype="float64", name="clinical")
    x = GlobalAveragePooling2D(**F64)(Conv2D(4, 3, activation="relu", **F64)(image))
    joined = Concatenate(**F64)([x, Dense(2, activation="relu", **F64)(clinical)])
    model = Model([image, clinical], Dense(3, activation="softmax", **F64)(joined))
    _check("two inputs (image + features)", model, [(6, 6, 1), (3,)])


def test_small_resnet18_gradients():
    model = _as_float64(resnet18((16, 16, 2), num_classes=3, width=2))
    assert sum(isinstance(layer, Add) for layer in model.layers) == 8
    # all 62 weight arrays, 4 entries each (every entry of all ~12,000 would take minutes)
    report = _check("ResNet-18 (16x16, width 2)", model, (16, 16, 2), entries_per_weight=4)
    assert len(report.errors) == 62


def _as_float64(model):
    """The same architecture in float64, from its configuration."""
    config = model.get_config()
    for spec in config["layers"]:
        spec["config"]["dtype"] = "float64"
    return tinycnn.model.model_from_config(config)


def test_functional_and_sequential_train_bit_for_bit_alike():
    def layers():
        return [Conv2D(16, 3, padding="same", activation="relu"), BatchNormalization(), MaxPooling2D(2),
                Conv2D(16, 3, padding="same", activation="relu"), MaxPooling2D(2), Flatten(), Dropout(0.3),
                Dense(3, activation="softmax")]

    def trained(functional):
        tinycnn.set_seed(3)
        stack = layers()
        if functional:
            x = image = Input(shape=(8, 8, 3))
            for layer in stack:
                x = layer(x)
            model = Model(image, x)
        else:
            model = Sequential([Input(shape=(8, 8, 3))] + stack)
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        x, y = _data((8, 8, 3), n=12, seed=4, dtype=np.float32)
        history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
        return model, history.history, model.predict(x)

    (fm, fh, fp), (sm, sh, sp) = trained(True), trained(False)
    assert fm._fused_at == sm._fused_at and len(fm._fused_at) == 1   # the Winograd one pools inside
    assert fh == sh
    np.testing.assert_array_equal(fp, sp)
    for a, b in zip(fm.get_weights(), sm.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_feature_extractor_shares_the_trained_weights():
    model = tinycnn.models.reference_model((16, 16, 3), 2)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = _data((16, 16, 3), n=6, classes=2, dtype=np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    flatten = next(layer for layer in model.layers if isinstance(layer, Flatten))
    extractor = Model(model.inputs, model.get_layer(flatten.name).output)
    features = extractor.predict(x)
    assert features.shape == (6, flatten.output_shape[0])
    assert extractor.get_layer(index=1) is model.get_layer(index=0)      # the same layer objects, shared
    # the same numbers as the classifier's own forward pass up to that layer
    head = model.get_layer(index=-1)
    logits = features @ head.params["kernel"] + head.params["bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), model.predict(x), rtol=1e-5, atol=1e-6)


def test_functional_model_saves_and_loads_and_continues_training_exactly(tmp_path):
    def build():
        tinycnn.set_seed(7)
        image = Input(shape=(6, 6, 2))
        clinical = Input(shape=(2,))
        x = Conv2D(4, 3, padding="same", activation="relu")(image)
        x = Activation("relu")(Add()([x, Conv2D(4, 1)(x)]))
        x = Concatenate()([GlobalMaxPooling2D()(x), Dense(3)(clinical)])
        model = Model([image, clinical], Dense(2, activation="softmax")(x), name="two_inputs")
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    x, y = _data([(6, 6, 2), (2,)], n=8, classes=2, dtype=np.float32)
    model = build()
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    model.metadata = {"class_names": ["benign", "malignant"]}
    model.save(tmp_path / "m.npz")
    loaded = tinycnn.load_model(tmp_path / "m.npz")
    assert type(loaded) is Model and loaded.name == "two_inputs" and loaded.metadata == model.metadata
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    a = [model.train_on_batch(x, y) for _ in range(2)]
    b = [loaded.train_on_batch(x, y) for _ in range(2)]
    assert a == b
    for u, v in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_a_file_written_by_tinycnn_0_1_still_loads(monkeypatch):
    from tinycnn.layers import conv
    here = os.path.join(os.path.dirname(__file__), "data")
    model = tinycnn.load_model(os.path.join(here, "model-0.1.npz"))
    expected = np.load(os.path.join(here, "model-0.1-expected.npz"))
    assert type(model) is Sequential and model.metadata["class_names"] == ["benign", "malignant"]
    assert model.optimizer.iterations == 4                  # 2 epochs x 2 batches, restored
    # 0.1 ran every Winograd layer as Winograd; so does this, for the bit-for-bit comparison. Since,
    # a small inference batch runs im2col instead (conv.WINOGRAD_MIN_INFERENCE_TILES), equal to rounding.
    default = model.predict(expected["x"])
    monkeypatch.setattr(conv, "WINOGRAD_MIN_INFERENCE_TILES", 0)
    np.testing.assert_array_equal(model.predict(expected["x"]), expected["predict"])
    np.testing.assert_allclose(default, expected["predict"], rtol=1e-5, atol=1e-6)
    model.fit(expected["x"], expected["y"], epochs=1, verbose=0)   # and it trains on


def test_new_files_say_their_format_version(tmp_path):
    model = Sequential([Dense(2, input_shape=(3,))])
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as archive:
        import json
        config = json.loads(archive["__config__"].tobytes())
    assert config["format"] == "tinycnn-model" and config["version"] == 2
    assert config["model"]["class_name"] == "Sequential"


def test_summary_shows_connections_and_the_plan():
    lines = []
    _residual(True).summary(print_fn=lines.append, show_plan=True)
    text = "\n".join(lines)
    assert "Connected to" in text and "Execution plan:" in text
    add_line = next(line for line in text.splitlines() if "(Add)" in line)
    assert "batch_normalization" in add_line and "conv2d" in add_line
    plain = []
    Sequential([Dense(2, input_shape=(3,))]).summary(print_fn=plain.append)
    assert "Connected to" not in plain[0] and "Execution plan" not in plain[0]


def test_plan_fuses_only_where_the_pooling_is_the_single_reader(winograd_everywhere):
    image = Input(shape=(8, 8, 2))
    x = Conv2D(4, 3, padding="same", activation="relu", name="fused")(image)
    x = MaxPooling2D(2)(x)
    y = Conv2D(4, 3, padding="same", activation="relu", name="forked")(x)
    z = Add()([MaxPooling2D(2, name="pool_a")(y), MaxPooling2D(2, name="pool_b")(y)])  # y is read twice
    model = Model(image, Dense(2, activation="softmax")(Flatten()(z)))
    fused = [step.owner.name for step in model.plan.steps if step.pool is not None]
    assert fused == ["fused"]
    model.fuse_layers = False
    assert not any(step.pool is not None for step in model.plan.steps)


@pytest.mark.parametrize("make, message", [
    (lambda i, j: Model(i, [Dense(2)(Flatten()(i)), Dense(3)(Flatten()(i))]), "several outputs are not supported"),
    (lambda i, j: Model(i, Dense(2)(Concatenate()([Flatten()(i), j]))), "depends on the input 'other'"),
    (lambda i, j: Model(Flatten()(i), Dense(2)(Flatten()(i))), "must come from tinycnn.Input"),
    (lambda i, j: Add()([Flatten()(i), j]), r"all inputs must have the same shape"),
    (lambda i, j: Add()(j), "takes a list of inputs"),
    (lambda i, j: Dense(2)([j, j]), "takes one input"),
    (lambda i, j: Concatenate(axis=0), "the batch axis 0 cannot be joined"),
    (lambda i, j: Model(i, Dense(2)(Flatten()(i)))(i), "cannot be called on symbolic tensors"),
    (lambda i, j: Sequential([Add()]), "use the functional API"),
])
def test_graph_mistakes_are_explained(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make(Input(shape=(4, 4, 2)), Input(shape=(5,), name="other"))


def test_several_inputs_are_checked_one_by_one():
    image, clinical = Input(shape=(4, 4, 1)), Input(shape=(2,), name="clinical")
    model = Model([image, clinical], Dense(2, activation="softmax")(Concatenate()([Flatten()(image), clinical])))
    model.compile(loss="categorical_crossentropy")
    x = [np.zeros((3, 4, 4, 1)), np.zeros((3, 2))]
    assert model.predict(x).shape == (3, 2)
    with pytest.raises(ValueError, match=r"has 2 inputs .* pass `x` as a list of 2 arrays"):
        model.predict(x[0])
    with pytest.raises(ValueError, match=r"input to layer 'clinical' \(InputLayer\) must have shape \(None, 2\)"):
        model.predict([x[0], np.zeros((3, 5))])
    with pytest.raises(ValueError, match="different numbers of samples"):
        model.predict([x[0], np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"`x\[1\]` contains NaN"):
        model.fit([x[0], np.full((3, 2), np.nan)], np.eye(2)[[0, 1, 0]], verbose=0)


def test_grad_cam_on_a_residual_network():
    from tinycnn.explain import grad_cam
    model = resnet((16, 16, 3), 2, blocks=(1, 1), width=4)
    image = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)
    cam = grad_cam(model, image)
    assert cam.heatmap.shape == (16, 16) and cam.layer == "stage2_block1_out"   # the last block's output
    assert np.isfinite(cam.heatmap).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_max_pooling_kernels_match_reference(dtype):
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 6)).astype(dtype)
    x[0, 1, 2, 3] = x[0, 3, 4, 3] = 9.0                  # a tie: the first position wins
    y, arg = np.empty((3, 6), dtype=dtype), np.empty((3, 6), dtype=np.int64)
    P.global_maxpool_forward(x, y, arg)
    np.testing.assert_array_equal(y, R.global_maxpool_forward(x))
    dy = np.random.default_rng(1).standard_normal((3, 6)).astype(dtype)
    dx = np.empty_like(x)
    P.global_maxpool_backward(dy, arg, dx)
    np.testing.assert_array_equal(dx, R.global_maxpool_backward(x, dy))
    assert dx[0, 1, 2, 3] == dy[0, 3] and dx[0, 3, 4, 3] == 0


def test_global_max_pooling_in_the_layer_harness(check_layer):
    check_layer(lambda dt: GlobalMaxPooling2D(dtype=dt), (3, 5, 4), (4,), lambda x, l: R.global_maxpool_forward(x))


def test_resnet18_shapes_and_stems():
    small = resnet18((28, 28, 1), 2)
    assert small.get_layer("stem_conv").kernel_size == (3, 3) and "stem_pool" not in [l.name for l in small.layers]
    assert small.output_shape == (None, 2)
    assert sum(isinstance(layer, Conv2D) for layer in small.layers) == 17 + 3   # 17 + three projections
    large = resnet18((64, 64, 3), 5)
    assert large.get_layer("stem_conv").kernel_size == (7, 7) and large.get_layer("stem_pool").output_shape == (16, 16, 64)
    assert large.count_params() == small.count_params() - 64 * 9 * 1 + 64 * 49 * 3 + 513 * 3
    # torchvision's ResNet-18 has 11,689,512 parameters (1000 classes); batch norm's moving statistics
    # are buffers there, and non-trainable weights here
    imagenet = resnet18((224, 224, 3), 1000)
    assert sum(v.size for _, v, _ in imagenet._trainable()) == 11_689_512


# --- imports point down only -----------------------------------------------------------------------

_FLOORS = {  # DESIGN.md's house: a module may import only from its own floor or below
    "kernels": 1, "_threads": 1, "rng": 1, "utils": 1, "archive": 1,
    "layers": 2, "activations": 2, "initializers": 2, "regularizers": 2, "losses": 2, "optimizers": 2,
    "metrics": 2, "gradcheck": 3,
    "batching": 3, "graph": 3, "onnx_export": 3,
    "model": 4, "callbacks": 4, "data": 4,
    "saving": 5, "models": 5, "explain": 5, "report": 5, "plotting": 5, "sklearn": 5, "dask": 5,
    "onnx_import": 5,
    "cli": 6, "__main__": 6,
}


def _package_imports():
    """``{module: {tinycnn modules it imports}}`` read from the source, imports inside functions included."""
    root = os.path.dirname(tinycnn.__file__)
    graph = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = ["tinycnn"] + os.path.relpath(path, root)[:-3].split(os.sep)
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            package = module if is_package else module.rsplit(".", 1)[0]
            found = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom):
                    target = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                        if node.level else node.module or ""
                    if target == "tinycnn":              # from . import losses, metrics (at the root)
                        found.update(f"tinycnn.{alias.name}" for alias in node.names)
                    elif target.startswith("tinycnn."):
                        found.add(target)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names if alias.name.startswith("tinycnn."))
            graph[module] = found
    return graph


def _floor(module):
    return _FLOORS[module.split(".")[1]]


def test_imports_point_down_only_and_have_no_cycle():
    graph = _package_imports()
    assert "tinycnn.model" in graph["tinycnn.saving"]             # the walk sees imports
    modules = [m for m in graph if m != "tinycnn"]                   # the package root gathers everything
    missing = sorted({m.split(".")[1] for m in modules} - set(_FLOORS))
    assert missing == [], f"give these modules a floor in _FLOORS: {missing}"
    upward = sorted(f"{m} -> {t}" for m in modules for t in graph[m] if _floor(t) > _floor(m))
    assert upward == []
    # no cycle between top-level modules (a package counts as one module)
    top = {}
    for m in modules:
        here = m.split(".")[1]
        top.setdefault(here, set()).update(t.split(".")[1] for t in graph[m] if t.split(".")[1] != here)
    state = {}

    def visit(m, path):
        state[m] = 1
        for t in top.get(m, ()):
            assert state.get(t) != 1, f"import cycle: {' -> '.join(path + [t])}"
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in top:
        if m not in state:
            visit(m, [m])


def test_recalibration_goes_on_from_the_previous_layer_and_equals_starting_over(monkeypatch):
    import tinycnn.model as model_module
    x = np.random.default_rng(5).random((20, 12, 12, 3), dtype=np.float32)
    stats = []
    for budget in (model_module.RECALIBRATION_KEEP_BYTES, 0):   # keep the values / recompute each time
        monkeypatch.setattr(model_module, "RECALIBRATION_KEEP_BYTES", budget)
        tinycnn.set_seed(0)
        model = resnet((12, 12, 3), 2, blocks=(1, 1), width=4)
        model.recalibrate_batchnorm(x, batch_size=6)
        stats.append([w.copy() for layer in model.layers if isinstance(layer, BatchNormalization)
                      for w in layer.get_weights()[2:]])
    assert len(stats[0]) == 2 * 6          # stem, two blocks of two, one projection
    for a, b in zip(*stats):
        np.testing.assert_array_equal(a, b)
