"""A Winograd Conv2D followed by 2x2 max pooling runs as one pass inside Sequential
(Conv2D.forward_pooled / backward_pooled). It must give exactly what the two layers give one after
the other, and be used only where it applies. Its own gradients are checked by finite differences
in test_routes.py (inside a model, through the plan) and test_properties.py (at layer level)."""
import numpy as np
import pytest

import tinycnn
from tinycnn import Sequential
from tinycnn.kernels import pooling as P
from tinycnn.kernels import winograd as W
from tinycnn.layers import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                            MaxPooling2D)


def _model(dtype, activation="relu", use_bias=True, pool=None, size=8):
    return Sequential([
        Conv2D(4, 3, padding="same", activation=activation, use_bias=use_bias, dtype=dtype,
               input_shape=(size, size, 2)),
        pool or MaxPooling2D((2, 2), dtype=dtype),
        BatchNormalization(dtype=dtype),
        Conv2D(6, 3, padding="same", activation="relu", dtype=dtype),
        MaxPooling2D((2, 2), dtype=dtype),
        Flatten(dtype=dtype),
        Dropout(0.3, dtype=dtype),
        Dense(3, activation="softmax", dtype=dtype),
    ])


def _train(fuse, dtype, **kwargs):
    tinycnn.set_seed(0)
    model = _model(dtype, **kwargs)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fuse_layers = fuse
    gen = np.random.default_rng(1)
    x = gen.standard_normal((6, kwargs.get("size", 8), kwargs.get("size", 8), 2)).astype(dtype)
    y = np.eye(3, dtype=dtype)[gen.integers(0, 3, 6)]
    losses = [model.train_on_batch(x, y) for _ in range(3)]
    return model, losses, model.get_weights(), model.predict(x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation, use_bias", [("relu", True), ("relu", False), (None, True)])
def test_fused_conv_pool_trains_bit_for_bit_like_the_two_layers(winograd_everywhere, dtype, activation, use_bias):
    fused, losses_f, weights_f, pred_f = _train(True, dtype, activation=activation, use_bias=use_bias)
    plain, losses_p, weights_p, pred_p = _train(False, dtype, activation=activation, use_bias=use_bias)
    assert fused._fused_at == (0, 3) and plain._fused_at == ()
    assert losses_f == losses_p
    for a, b in zip(weights_f, weights_p):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pred_f, pred_p)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), (0, 3)),
    (dict(size=10), (0,)),                     # the second convolution's output is 5x5: windows are not tiles
    (dict(size=7), ()),
    (dict(pool=MaxPooling2D((3, 3), strides=2)), ()),    # and 3x3 after it: odd again
    (dict(pool=MaxPooling2D((2, 2), strides=1)), ()),    # 7x7 after it
    (dict(pool=AveragePooling2D((2, 2))), (3,)),
    (dict(activation="tanh"), (3,)),                                   # epilogue not fused: plain path
])
def test_fusion_applies_only_where_it_is_exact(winograd_everywhere, kwargs, expected):
    model = _model("float32", **kwargs)
    model.build()
    assert model._fusion_plan() == expected


def test_no_fusion_for_im2col_layers_or_a_pooling_head():
    model = _model("float32")                     # 2 and 4 input channels: im2col by default
    model.build()
    assert model._fusion_plan() == ()
    head = Sequential([Conv2D(16, 3, padding="same", input_shape=(4, 4, 16)), MaxPooling2D((2, 2))])
    head.build()
    assert head.layers[0].algorithm == "winograd" and head._fusion_plan() == ()


def test_output_transform_pool_is_output_transform_then_max_pool():
    gen = np.random.default_rng(0)
    th, tw, f = 3, 4, 5
    m = gen.standard_normal((16, 2 * th * tw, f)).astype(np.float32)
    m[:, 0] = 0                                   # a tile of equal outputs: the tie goes to the first
    bias = gen.standard_normal(f).astype(np.float32)
    y = np.empty((2, 2 * th, 2 * tw, f), dtype=np.float32)
    none = np.empty(0, np.float32)  # no affine map after the epilogue
    W.output_transform(m, th, tw, bias, True, y, none, none)
    pooled = np.empty((2, th, tw, f), dtype=np.float32)
    argmax = np.empty(pooled.shape, dtype=np.int32)
    P.maxpool_forward(y, 2, 2, 2, 2, 0, 0, pooled, argmax)
    p = np.empty_like(pooled)
    win = np.empty(argmax.shape, dtype=np.uint8)  # as the layer keeps them
    W.output_transform_pool(m, th, tw, bias, True, p, win, none, none)
    np.testing.assert_array_equal(p, pooled)
    # the flat index of the winner in y, from its position in the tile
    rows = 2 * np.arange(th)[None, :, None, None] + win // 2
    cols = 2 * np.arange(tw)[None, None, :, None] + win % 2
    np.testing.assert_array_equal(rows * (2 * tw) + cols, argmax)
    assert (win[0, 0, 0] == 0).all()                # the tied tile (image 0, first tile)

    dp = gen.standard_normal(p.shape).astype(np.float32)
    dy = np.empty_like(y)
    P.maxpool_backward(dp, argmax, 2, 2, 2, 2, 0, 0, dy)
    dm_ref = np.empty_like(m)
    db_ref = np.empty((2 * th, f))
    W.output_transform_backward(dy, y, True, th, tw, dm_ref, db_ref)
    dm = np.empty_like(m)
    db = np.full((2 * th, f), np.nan)
    W.output_transform_pool_backward(dp, p, win, True, th, tw, dm, db)
    np.testing.assert_array_equal(dm, dm_ref)
    np.testing.assert_array_equal(db, db_ref)


# --- a batch normalization folded into the convolution before it, in inference (tinycnn/graph.py) ---

def _folding_model():
    """Conv (relu) -> BN: folded; Winograd conv + pool -> BN: folded; a sigmoid conv -> BN: not
    (its activation runs after the output pass); a conv read by BN and by the Add: not."""
    tinycnn.set_seed(0)
    inputs = tinycnn.Input((12, 12, 3))
    h = BatchNormalization()(Conv2D(16, 3, padding="same", activation="relu")(inputs))
    h = BatchNormalization()(MaxPooling2D()(Conv2D(16, 3, padding="same", activation="relu")(h)))
    h = BatchNormalization()(Conv2D(16, 3, padding="same", activation="sigmoid")(h))
    c = Conv2D(16, 3, padding="same", activation="relu")(h)
    h = tinycnn.layers.Add()([BatchNormalization()(c), c])
    outputs = Dense(2, activation="softmax")(Flatten()(h))
    model = tinycnn.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast_inference"])
def test_inference_folds_batch_norm_into_the_convolution_bit_for_bit(winograd_everywhere, monkeypatch, fast):
    model = _folding_model()
    gen = np.random.default_rng(2)
    x = gen.random((5, 12, 12, 3), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[gen.integers(0, 2, 5)]
    for _ in range(3):  # moving statistics and weights away from their initial values
        model.train_on_batch(x, y)
    model.fast_inference = fast
    from tinycnn.layers import conv
    if fast:  # F(4x4) on these small images too
        monkeypatch.setattr(conv, "WINOGRAD4_MIN_INFERENCE_TILES", 0)
        monkeypatch.setattr(conv, "WINOGRAD4_MIN_IMAGE_TILES", 0)
    plan = model.plan
    steps = [type(s.owner).__name__ + ("+pool" if s.pool is not None else "") for s in plan.steps]
    assert {steps[k]: steps[j] for k, j in plan.folds.items()} == {"Conv2D": "BatchNormalization",
                                                                   "Conv2D+pool": "BatchNormalization"}
    assert len(plan.folds) == 2
    calls = []
    original = BatchNormalization.forward
    monkeypatch.setattr(BatchNormalization, "forward", lambda self, *a, **k: calls.append(self) or original(self, *a, **k))
    for n in (5, 1):  # then one image, told to run im2col: its pooling and the BN step run after it
        if n == 1:
            monkeypatch.setattr(conv, "WINOGRAD_MIN_INFERENCE_TILES", 10**6)
            monkeypatch.setattr(conv, "WINOGRAD4_MIN_INFERENCE_TILES", 10**6)
        unfolded = plan.forward([x[:n]], False).copy()
        calls.clear()
        np.testing.assert_array_equal(model.predict(x[:n]), unfolded)
        assert len(calls) == (2 if n == 5 else 3)
        ran = {type(layer._ran).__name__ for layer in model.layers if isinstance(layer, Conv2D)}
        assert ("Winograd4x4" in ran) == (fast and n == 5)
    np.testing.assert_array_equal(model(x), model.plan.forward([x], False))
    with pytest.raises(RuntimeError, match="folded batch normalizations"):
        plan.forward([x], False, fold=True)
        plan.backward(np.ones((5, 2), np.float32))


def test_folding_leaves_training_and_evaluation_alone(winograd_everywhere):
    gen = np.random.default_rng(3)
    x = gen.random((6, 12, 12, 3), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[gen.integers(0, 2, 6)]
    plain, predicting = _folding_model(), _folding_model()
    for _ in range(2):
        plain.train_on_batch(x, y)
        predicting.train_on_batch(x, y)
        predicting.predict(x)
    for a, b in zip(plain.get_weights(), predicting.get_weights()):
        np.testing.assert_array_equal(a, b)
    unfolded = predicting.plan.forward([x], False).copy()
    loss = predicting.evaluate(x, y, verbose=0)
    reference = predicting.loss.value_and_grad(y, unfolded.reshape(6, -1), None)[0]
    assert loss == pytest.approx(float(reference), rel=1e-6)
