"""The implementations behind Conv2D (tinycnn/layers/conv.py: Im2col, Pointwise, Winograd), one by
one: each against the textbook loops of kernels/reference.py in every mode a model uses them (plain,
with the bias + ReLU epilogue, with 2x2 max pooling inside, backward from the logits), over one
image per chunk and with the batch split over threads; against each other; the seam a profiler
uses; and the slot-ordered sum their weight gradients (and Dense's) go through."""
import numpy as np
import pytest

from tinycnn import _threads
from tinycnn.kernels import reference as R
from tinycnn.layers import Conv2D, MaxPooling2D
from tinycnn.layers import conv
from tinycnn.layers.conv import Im2col, Pointwise, Winograd

CLOSE = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request, monkeypatch):
    """Run whole batches with the parallel kernels, or split them in two slices (serial kernels)."""
    if request.param > 1 and not _threads._blas_controllers():
        pytest.fail("threadpoolctl cannot see NumPy's BLAS here: the split path would never run")
    monkeypatch.setattr(_threads, "thread_count", lambda: request.param)
    return request.param


@pytest.fixture(params=[False, True], ids=["whole batch", "smallest chunks"])
def small_chunks(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(conv, "COLUMN_CHUNK_BYTES", 1)
        monkeypatch.setattr(conv, "WINOGRAD_CHUNK_BYTES", 1)
    return request.param


def _layer(implementation, kernel_size, strides=1, padding="same", activation=None, use_bias=True,
           input_shape=(6, 5, 4), seed=0):
    """A built float64 Conv2D with random weights, running ``implementation`` (a class)."""
    layer = Conv2D(3, kernel_size, strides=strides, padding=padding, activation=activation, use_bias=use_bias,
                   dtype="float64")
    layer.build(input_shape)
    gen = np.random.default_rng(seed)
    layer.set_weights([gen.standard_normal(w.shape) for w in layer.get_weights()])
    layer.implementation = implementation(layer)
    layer.input_grad_needed = True
    return layer


def _expected(layer, x, dy):
    """y, dx, dW, db from the reference loops: y = act(conv(x) + b), dz = act'(dy)."""
    w, b = layer.params["kernel"], layer.params.get("bias")
    z = R.conv2d_forward(x, w, b, layer.strides, layer.padding)
    act = layer.activation.name
    if act == "relu":
        y, dz = R.relu(z), R.relu_backward(dy, R.relu(z))
    elif act == "sigmoid":
        y = 1 / (1 + np.exp(-z))
        dz = dy * y * (1 - y)
    else:
        y, dz = z, dy
    dx, dw, db = R.conv2d_backward(x, w, dz, layer.strides, layer.padding)
    return y, dx, dw, db


CASES = [  # implementation, kernel_size, strides, padding
    (Im2col, 3, 1, "same"), (Im2col, 3, 2, "valid"), (Im2col, (2, 3), 1, "same"), (Im2col, 1, 1, "valid"),
    (Pointwise, 1, 1, "valid"), (Winograd, 3, 1, "same"), (Winograd, 3, 1, "valid")]


@pytest.mark.parametrize("implementation, kernel_size, strides, padding", CASES)
@pytest.mark.parametrize("activation, use_bias", [("relu", True), (None, False), ("sigmoid", True)])
def test_each_implementation_matches_the_reference(threads, small_chunks, implementation, kernel_size, strides,
                                                   padding, activation, use_bias):
    layer = _layer(implementation, kernel_size, strides, padding, activation, use_bias)
    gen = np.random.default_rng(1)
    x = gen.standard_normal((3,) + layer.input_shape)
    dy = gen.standard_normal((3,) + layer.output_shape)
    y_ref, dx_ref, dw_ref, db_ref = _expected(layer, x, dy)
    np.testing.assert_allclose(layer.forward(x), y_ref, **CLOSE)
    np.testing.assert_allclose(layer.forward(x, training=True), y_ref, **CLOSE)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)


@pytest.mark.parametrize("implementation, kernel_size, strides, padding", CASES)
def test_backward_from_the_logits_matches_the_reference(threads, small_chunks, implementation, kernel_size, strides,
                                                        padding):
    # A softmax head: the loss hands dL/dz, and the implementation runs without an epilogue.
    layer = _layer(implementation, kernel_size, strides, padding, activation="softmax")
    gen = np.random.default_rng(2)
    x = gen.standard_normal((3,) + layer.input_shape)
    dz = gen.standard_normal((3,) + layer.output_shape)
    layer.forward(x, training=True)
    np.testing.assert_allclose(layer.logits.reshape(dz.shape),
                               R.conv2d_forward(x, layer.params["kernel"], layer.params["bias"], layer.strides,
                                                layer.padding), **CLOSE)
    dx_ref, dw_ref, db_ref = R.conv2d_backward(x, layer.params["kernel"], dz, layer.strides, layer.padding)
    np.testing.assert_allclose(layer.backward_from_logits(dz), dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)


@pytest.mark.parametrize("activation, use_bias", [("relu", True), ("relu", False), (None, True)])
def test_winograd_with_pooling_inside_matches_the_reference(threads, small_chunks, activation, use_bias):
    layer = _layer(Winograd, 3, activation=activation, use_bias=use_bias, input_shape=(6, 4, 4))
    pool = MaxPooling2D((2, 2))
    pool.build(layer.output_shape)
    assert layer.fuses_with(pool)
    gen = np.random.default_rng(3)
    x = gen.standard_normal((3,) + layer.input_shape)
    dp = gen.standard_normal((3,) + pool.output_shape)
    y_ref = R.conv2d_forward(x, layer.params["kernel"], layer.params.get("bias"), padding="same")
    y_ref = R.relu(y_ref) if activation == "relu" else y_ref
    np.testing.assert_allclose(layer.forward_pooled(x, training=True), R.maxpool_forward(y_ref), **CLOSE)
    dy = R.maxpool_backward(y_ref, dp)
    dz = R.relu_backward(dy, y_ref) if activation == "relu" else dy
    dx_ref, dw_ref, db_ref = R.conv2d_backward(x, layer.params["kernel"], dz, padding="same")
    np.testing.assert_allclose(layer.backward_pooled(dp), dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    if use_bias:
        np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)


@pytest.mark.parametrize("keep_columns", [True, False])
def test_pointwise_is_im2col_without_the_copy_bit_for_bit(threads, monkeypatch, keep_columns):
    if not keep_columns:
        monkeypatch.setattr(conv, "KEEP_COLUMNS_BYTES", 0)
    gen = np.random.default_rng(4)
    x = gen.standard_normal((3, 6, 5, 4))
    dy = gen.standard_normal((3, 6, 5, 3))
    results = []
    for implementation in (Im2col, Pointwise):
        layer = _layer(implementation, 1, activation="relu", padding="valid")
        y = layer.forward(x, training=True).copy()
        assert (layer._kept_cols is not None) == (keep_columns and implementation is Im2col)
        results.append([y, layer.backward(dy).copy(), layer.grads["kernel"].copy(), layer.grads["bias"].copy()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_build_picks_the_implementation_and_algorithm_switches_it():
    picks = {(3, 1, 16): Winograd, (3, 1, 3): Im2col, (3, 2, 16): Im2col, (1, 1, 16): Pointwise,
             (1, 2, 16): Im2col, (5, 1, 16): Im2col}
    for (kernel_size, strides, channels), implementation in picks.items():
        layer = Conv2D(4, kernel_size, strides=strides, padding="same")
        assert layer.algorithm is None and layer.implementation is None
        layer.build((8, 8, channels))
        assert type(layer.implementation) is implementation and layer.implementation.layer is layer
        assert layer.algorithm == implementation.algorithm
    layer = Conv2D(4, 3, padding="same")
    layer.build((8, 8, 16))
    layer.algorithm = "im2col"
    assert type(layer.implementation) is Im2col
    layer.algorithm = "winograd"
    assert type(layer.implementation) is Winograd
    layer.algorithm = "im2col"
    layer.algorithm = None  # back to the automatic choice
    assert type(layer.implementation) is Winograd
    # Too few output tiles for Winograd: a 3x3 output has 2x2 tiles, a 2x2 output one
    for side, implementation in ((3, Winograd), (2, Im2col)):
        layer = Conv2D(4, 3, padding="same")
        layer.build((side, side, 16))
        assert type(layer.implementation) is implementation


def _spy_on_implementations(monkeypatch):
    """``[(implementation class, training)]`` of every forward pass an implementation runs."""
    ran = []
    for cls in (Im2col, Winograd):
        def forward(self, x, y, training=False, epilogue=None, _original=cls.forward):
            ran.append((type(self), training))
            return _original(self, x, y, training, epilogue)
        monkeypatch.setattr(cls, "forward", forward)
    return ran


def test_a_small_inference_batch_runs_im2col_in_a_winograd_layer(monkeypatch):
    """Inference on fewer than WINOGRAD_MIN_INFERENCE_TILES output tiles (a 12x12 image: 36 tiles)
    runs im2col; a larger batch and every training call run the layer's Winograd. The two agree to
    rounding, and a backward pass after the small inference call (Grad-CAM does that) differentiates
    what ran."""
    ran = _spy_on_implementations(monkeypatch)
    layer = _layer(Winograd, 3, activation="relu", input_shape=(12, 12, 4))
    assert layer.algorithm == "winograd"
    gen = np.random.default_rng(5)
    x = gen.standard_normal((5, 12, 12, 4))
    dy = gen.standard_normal((1,) + layer.output_shape)
    y_ref, dx_ref, dw_ref, db_ref = _expected(layer, x[:1], dy)
    one = layer.forward(x[:1]).copy()
    assert ran == [(Im2col, False)]
    np.testing.assert_allclose(one, y_ref, **CLOSE)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["kernel"], dw_ref, **CLOSE)
    np.testing.assert_allclose(layer.grads["bias"], db_ref, **CLOSE)
    np.testing.assert_allclose(layer.forward(x)[:1], one, **CLOSE)  # 5 images: 180 tiles, Winograd
    layer.forward(x[:1], training=True)
    assert ran[1:] == [(Winograd, False), (Winograd, True)]


def test_a_fused_step_runs_the_two_layers_for_a_small_inference_batch(monkeypatch):
    """The plan's Winograd + max-pool step: a small inference batch runs the convolution (im2col)
    and the pooling one after the other, a large one and training compute the pooling inside; the
    outputs agree to rounding, and Grad-CAM's backward through the step works either way."""
    import tinycnn
    from tinycnn.explain import grad_cam
    ran = _spy_on_implementations(monkeypatch)
    inputs = tinycnn.Input((12, 12, 16))
    h = Conv2D(16, 3, padding="same", activation="relu", name="observed")(inputs)
    h = Conv2D(16, 3, padding="same", activation="relu")(h)
    h = MaxPooling2D()(h)
    outputs = tinycnn.layers.Dense(2, activation="softmax")(tinycnn.layers.Flatten()(h))
    model = tinycnn.Model(inputs, outputs)
    assert [step.pool is not None for step in model.plan.steps] == [False, True, False, False]
    x = np.random.default_rng(6).random((5, 12, 12, 16), dtype=np.float32)
    small = model.predict(x[:1])
    assert ran == [(Im2col, False), (Im2col, False)]  # 36 tiles each
    del ran[:]
    np.testing.assert_allclose(model.predict(x)[:1], small, rtol=1e-5, atol=1e-6)
    assert (Winograd, False) in ran and (Im2col, False) not in ran
    small_batch = grad_cam(model, x[0], layer="observed")          # im2col forward and backward
    monkeypatch.setattr(conv, "WINOGRAD_MIN_INFERENCE_TILES", 0)
    winograd = grad_cam(model, x[0], layer="observed")              # Winograd, pooling inside
    assert small_batch.heatmap.shape == (12, 12) and small_batch.heatmap.max() > 0
    np.testing.assert_allclose(small_batch.heatmap, winograd.heatmap, rtol=1e-4, atol=1e-5)
def test_algorithm_refuses_what_cannot_run():
    with pytest.raises(ValueError, match=r"conv.*once the layer is built"):
        Conv2D(4, 3).algorithm = "im2col"
    layer = Conv2D(4, 5, name="big")
    layer.build((8, 8, 16))
    with pytest.raises(ValueError, match=r"'big'.*`algorithm`.*'winograd' for a 3x3 kernel.*kernel_size \(5, 5\)"):
        layer.algorithm = "winograd"
    with pytest.raises(ValueError, match=r"`algorithm`.*received 'fft'"):
        layer.algorithm = "fft"
    assert type(layer.implementation) is Im2col


def test_a_twin_runs_its_own_implementation():
    # A layer called twice in one network: the twin shares the weights, not the scratch buffers or
    # the input kept for backward.
    layer = _layer(Winograd, 3, activation="relu", input_shape=(4, 4, 3))
    twin = layer.twin()
    assert type(twin.implementation) is Winograd and twin.implementation.layer is twin
    gen = np.random.default_rng(5)
    x1, x2 = gen.standard_normal((2, 2, 4, 4, 3))
    dy1, dy2 = gen.standard_normal((2, 2, 4, 4, 3))
    y1 = layer.forward(x1, training=True)
    twin.forward(x2, training=True)
    dx2 = twin.backward(dy2).copy()
    dx1 = layer.backward(dy1)
    np.testing.assert_allclose(y1, _expected(layer, x1, dy1)[0], **CLOSE)
    np.testing.assert_allclose(dx1, _expected(layer, x1, dy1)[1], **CLOSE)
    np.testing.assert_allclose(dx2, _expected(layer, x2, dy2)[1], **CLOSE)


@pytest.mark.parametrize("implementation, kernel_size, roles", [
    (Im2col, 3, {"im2col", "forward_product", "weight_product", "input_product", "col2im"}),
    (Pointwise, 1, {"forward_product", "weight_product", "input_product"}),
    (Winograd, 3, {"kernel_transform", "input_transform", "forward_product", "output_transform", "output_adjoint",
                   "weight_product", "input_product", "input_adjoint", "kernel_adjoint"})])
def test_a_profiler_can_wrap_the_kernels_without_changing_results(threads, implementation, kernel_size, roles):
    # bench/bench_layers.py times the pieces of a convolution by shadowing `kernels` on the instance.
    gen = np.random.default_rng(6)
    x = gen.standard_normal((3, 6, 5, 4))
    dy = gen.standard_normal((3, 6, 5, 3))
    results, called = [], set()
    for wrap in (False, True):
        layer = _layer(implementation, kernel_size, activation="relu")
        if wrap:
            def wrapped(role, fn):
                def call(*args, **kwargs):
                    called.add(role)
                    return fn(*args, **kwargs)
                return call
            ks = implementation.kernels
            layer.implementation.kernels = type(ks)(**{r: wrapped(r, f) for r, f in vars(ks).items()})
        results.append([layer.forward(x, training=True).copy(), layer.backward(dy).copy(),
                        layer.grads["kernel"].copy(), layer.grads["bias"].copy()])
    assert called == roles
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("out", [False, True], ids=["into slot 0's part", "into out"])
def test_split_batch_sum_adds_the_parts_in_slot_order(monkeypatch, out):
    if not _threads._blas_controllers():
        pytest.fail("threadpoolctl cannot see NumPy's BLAS here: the split path would never run")
    monkeypatch.setattr(_threads, "thread_count", lambda: 3)
    # float32 parts whose sum depends on the order: (1e8 - 1e8) + 1 = 1, 1e8 + (-1e8 + 1) = 0
    values = np.array([1e8, -1e8, 1], dtype=np.float32)
    slots = {}

    def work(lo, hi, slot, serial):
        assert serial and hi - lo == 1
        slots[slot] = lo
        return values[lo:hi].copy()

    target = np.full(1, np.nan, dtype=np.float32) if out else None
    total = _threads.split_batch_sum(3, work, out=target)
    assert slots == {0: 0, 1: 1, 2: 2}
    assert total[0] == 1.0
    if out:
        assert total is target
