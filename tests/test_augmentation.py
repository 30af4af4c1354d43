"""The augmentation layers: through the one harness (shape, forward against the reference twin, exact
gradients with the random state replayed, save/load), their kernels against the textbook loops,
known geometry, seeding, identity at inference, and every bad argument's message."""
import numpy as np
import pytest

import tinycnn
from tinycnn.kernels import augment as A
from tinycnn.kernels import reference as R
from tinycnn.layers import Conv2D, Dense, Flatten, RandomContrast, RandomFlip, RandomRotation, RandomTranslation
from tinycnn.models import Sequential

DTYPES = [np.float32, np.float64]
FILL_MODES = ["constant", "nearest", "reflect", "wrap"]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- the harness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["horizontal_and_vertical", "horizontal", "vertical"])
def test_random_flip(check_layer, mode):
    check_layer(lambda dt: RandomFlip(mode, seed=1, dtype=dt), (5, 6, 2), (5, 6, 2),
                lambda x, layer: R.flip_images(x, layer.flips), batch_size=4)


@pytest.mark.parametrize("fill_mode, interpolation", [("constant", "bilinear"), ("nearest", "bilinear"),
                                                      ("reflect", "bilinear"), ("wrap", "bilinear"),
                                                      ("constant", "nearest")])
def test_random_rotation(check_layer, fill_mode, interpolation):
    check_layer(lambda dt: RandomRotation(0.2, fill_mode=fill_mode, interpolation=interpolation, fill_value=0.5,
                                          seed=2, dtype=dt), (5, 6, 2), (5, 6, 2),
                lambda x, l: R.rotate_images(x, l.angles, l.fill_mode, l.fill_value, l.interpolation), batch_size=3)


@pytest.mark.parametrize("fill_mode", ["constant", "reflect"])
def test_random_translation(check_layer, fill_mode):
    check_layer(lambda dt: RandomTranslation(0.4, (-0.3, 0.5), fill_mode=fill_mode, fill_value=-1.0, seed=3,
                                             dtype=dt), (5, 6, 2), (5, 6, 2),
                lambda x, l: R.translate_images(x, l.shifts, l.fill_mode, l.fill_value, l.interpolation),
                batch_size=3)


def test_random_contrast(check_layer):
    check_layer(lambda dt: RandomContrast((0.5, 0.8), seed=4, dtype=dt), (5, 6, 2), (5, 6, 2),
                lambda x, l: R.adjust_contrast(x, l.factors), batch_size=3)


# --- kernels against the reference loops ----------------------------------------------------------

def test_fill_index_matches_reference():
    for length in (1, 2, 5):
        for mode, code in A.FILL_MODES.items():
            for k in range(-13, 14):
                expected = R.fill_index(k, length, mode)
                assert A.fill_index(k, length, code) == (-1 if expected is None else expected), (mode, length, k)
    # The patterns the docstrings promise, on a 4-pixel axis a b c d.
    assert [R.fill_index(k, 4, "reflect") for k in range(-4, 8)] == [3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]
    assert [R.fill_index(k, 4, "wrap") for k in range(-4, 8)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    assert [R.fill_index(k, 4, "nearest") for k in (-2, -1, 4, 5)] == [0, 0, 3, 3]


def _random_transforms(n, h, w, seed):
    gen = np.random.default_rng(seed)
    rot = tinycnn.layers.augmentation.rotation_transforms(gen.uniform(-3, 3, n), h, w)
    return rot + np.concatenate([np.zeros((n, 2)), gen.uniform(-3, 3, (n, 1)), np.zeros((n, 2)),
                                 gen.uniform(-3, 3, (n, 1))], axis=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill_mode", FILL_MODES)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_affine_kernels_match_reference(dtype, fill_mode, interpolation):
    x = rand((3, 6, 5, 2), dtype)
    dy = rand(x.shape, dtype, seed=1)
    transforms = _random_transforms(3, 6, 5, seed=2)
    y = np.empty_like(x)
    A.affine_sample(x, transforms, A.FILL_MODES[fill_mode], 0.7, interpolation == "bilinear", y)
    np.testing.assert_allclose(y, R.affine_transform(x, transforms, fill_mode, 0.7, interpolation), **tol(dtype))
    dx = np.full_like(x, np.nan)  # the kernel must overwrite every element
    A.affine_sample_backward(dy, transforms, A.FILL_MODES[fill_mode], interpolation == "bilinear", dx)
    np.testing.assert_allclose(dx, R.affine_transform_backward(dy, transforms, fill_mode, interpolation),
                               **tol(dtype))


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_affine_backward_is_the_adjoint(fill_mode):
    # With zero fill the map is linear, y = A x; then <A x, d> == <x, A.T d> for every x and d.
    x, d = rand((2, 7, 5, 3)), rand((2, 7, 5, 3), seed=1)
    transforms = _random_transforms(2, 7, 5, seed=3)
    y, dx = np.empty_like(x), np.empty_like(x)
    A.affine_sample(x, transforms, A.FILL_MODES[fill_mode], 0.0, True, y)
    A.affine_sample_backward(d, transforms, A.FILL_MODES[fill_mode], True, dx)
    assert np.isclose(np.sum(y * d), np.sum(x * dx), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_and_contrast_kernels_match_reference(dtype):
    x = rand((4, 5, 3, 2), dtype)
    flips = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.uint8)
    y = np.empty_like(x)
    A.flip(x, flips, y)
    np.testing.assert_array_equal(y, R.flip_images(x, flips))
    factors = np.array([0.3, 1.0, 1.7, 0.0])
    A.contrast_forward(x, factors, y)
    np.testing.assert_allclose(y, R.adjust_contrast(x, factors), **tol(dtype))
    A.contrast_backward(x, factors, y)
    np.testing.assert_allclose(y, R.adjust_contrast_backward(x, factors), **tol(dtype))


# --- what the layers do ---------------------------------------------------------------------------

def test_quarter_turn_is_rot90_and_whole_pixel_shift_is_a_roll():
    x = rand((2, 5, 5, 3))
    quarter = RandomRotation((0.25, 0.25), fill_mode="constant", dtype="float64")(x, training=True)
    np.testing.assert_allclose(quarter, np.rot90(x, 1, axes=(1, 2)), atol=1e-12)  # counter-clockwise
    x = rand((2, 8, 4, 1))
    moved = RandomTranslation((0.25, 0.25), (-0.5, -0.5), fill_mode="constant", dtype="float64")(x, training=True)
    expected = np.zeros_like(x)
    expected[:, 2:, :2] = x[:, :-2, 2:]  # 2 rows down, 2 columns left, zeros where nothing came from
    np.testing.assert_allclose(moved, expected, atol=1e-12)


def test_flip_modes_and_frequency():
    x = rand((400, 3, 4, 1))
    layer = RandomFlip("horizontal", seed=0, dtype="float64")
    y = layer(x, training=True)
    assert not layer.flips[:, 0].any() and 150 < layer.flips[:, 1].sum() < 250
    np.testing.assert_array_equal(y[layer.flips[:, 1] == 1], x[layer.flips[:, 1] == 1][:, :, ::-1])
    both = RandomFlip(seed=0)
    both(x, training=True)
    assert 150 < both.flips[:, 0].sum() < 250 and 150 < both.flips[:, 1].sum() < 250


def test_contrast_keeps_each_channel_mean_and_draws_in_range():
    x = rand((50, 4, 5, 3)) + 3.0
    layer = RandomContrast((0.2, 0.5), seed=0, dtype="float64")
    y = layer(x, training=True)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-12)
    assert layer.factors.min() >= 0.8 and layer.factors.max() <= 1.5 and np.ptp(layer.factors) > 0.3


def test_draws_stay_inside_the_factor_range():
    x = np.zeros((200, 10, 20, 1))
    rot = RandomRotation((-0.1, 0.05), seed=0)
    rot(x, training=True)
    assert -0.1 * 2 * np.pi <= rot.angles.min() and rot.angles.max() <= 0.05 * 2 * np.pi
    tr = RandomTranslation(0.2, (0.1, 0.3), seed=0)
    tr(x, training=True)
    assert np.abs(tr.shifts[:, 0]).max() <= 0.2 * 10 and tr.shifts[:, 0].min() < 0 < tr.shifts[:, 0].max()
    assert 0.1 * 20 <= tr.shifts[:, 1].min() and tr.shifts[:, 1].max() <= 0.3 * 20


LAYERS = [lambda **k: RandomFlip(**k), lambda **k: RandomRotation(0.3, **k),
          lambda **k: RandomTranslation(0.2, 0.2, **k), lambda **k: RandomContrast(0.4, **k)]


@pytest.mark.parametrize("make", LAYERS)
def test_identity_at_inference(make):
    x = rand((3, 5, 4, 2))
    layer = make(seed=0, dtype="float64")
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(layer.backward(x), x)


@pytest.mark.parametrize("make", LAYERS)
def test_seeded_repeatability(make):
    x = rand((6, 5, 4, 2))
    a, b = make(seed=5), make(seed=5)
    first = a(x, training=True)
    np.testing.assert_array_equal(first, b(x, training=True))
    assert not np.array_equal(first, a(x, training=True))  # a new draw at every step
    # Without a seed, tinycnn.set_seed makes the run repeatable.
    tinycnn.set_seed(3)
    c = make()(x, training=True)
    tinycnn.set_seed(3)
    np.testing.assert_array_equal(c, make()(x, training=True))
    # The draws do not depend on the dtype: float32 and float64 layers augment alike.
    np.testing.assert_allclose(make(seed=5, dtype="float64")(x, training=True), first, rtol=1e-5, atol=1e-5)


def test_in_a_model_as_first_layer_and_saved(tmp_path):
    model = Sequential([RandomFlip(seed=0, input_shape=(6, 6, 1)), RandomRotation(0.1, seed=1),
                        RandomTranslation(0.1, 0.1, seed=2), RandomContrast(0.2, seed=3),
                        Conv2D(2, 3), Flatten(), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = rand((4, 6, 6, 1), np.float32)
    loss = model.train_on_batch(x, np.array([0, 1, 0, 1]))
    assert np.isfinite(np.asarray(loss, dtype=float)).all()
    model.save(tmp_path / "m.npz")
    loaded = tinycnn.load_model(tmp_path / "m.npz")
    assert [layer.get_config() for layer in loaded.layers[:4]] == [layer.get_config() for layer in model.layers[:4]]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


# --- bad arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("make, argument, message", [
    (lambda: RandomFlip("diagonal"), "mode",
     "expected one of ['horizontal_and_vertical', 'horizontal', 'vertical'], received 'diagonal'"),
    (lambda: RandomFlip(seed=-1), "seed", "expected None or a non-negative int, received -1"),
    (lambda: RandomFlip(seed=1.5), "seed", "received 1.5"),
    (lambda: RandomRotation("a lot"), "factor", "expected a float or a tuple (lower, upper)"),
    (lambda: RandomRotation((0.3, 0.1)), "factor", "with lower <= upper, received (0.3, 0.1)"),
    (lambda: RandomRotation((0.1, 0.2, 0.3)), "factor", "received (0.1, 0.2, 0.3)"),
    (lambda: RandomRotation(float("nan")), "factor", "received nan"),
    (lambda: RandomRotation(0.1, fill_mode="mirror"), "fill_mode",
     "expected one of ['reflect', 'wrap', 'constant', 'nearest'], received 'mirror'"),
    (lambda: RandomRotation(0.1, interpolation="bicubic"), "interpolation",
     "expected one of ['bilinear', 'nearest'], received 'bicubic'"),
    (lambda: RandomRotation(0.1, fill_value="black"), "fill_value", "expected a finite float, received 'black'"),
    (lambda: RandomTranslation(1.5, 0.1), "height_factor", "expected a float in [-1, 1] or a tuple"),
    (lambda: RandomTranslation(0.1, (0.5, -0.5)), "width_factor", "received (0.5, -0.5)"),
    (lambda: RandomTranslation(0.1, True), "width_factor", "received True"),
    (lambda: RandomContrast(-0.1), "factor", "expected a float in [0, 1] or a tuple (lower, upper)"),
    (lambda: RandomContrast((1.5, 0.2)), "factor", "received (1.5, 0.2)"),
    (lambda: RandomContrast((0.2, -0.2)), "factor", "received (0.2, -0.2)"),
])
def test_bad_arguments_name_layer_argument_and_value(make, argument, message):
    with pytest.raises(ValueError) as info:
        make()
    text = str(info.value)
    assert text.startswith("Layer 'random_") and f"invalid value for argument `{argument}`: " in text
    assert message in text


def test_error_message_names_the_layer():
    with pytest.raises(ValueError, match=r"^Layer 'flipper' \(RandomFlip\): invalid value for argument `mode`"):
        RandomFlip("diagonal", name="flipper")


def test_input_must_be_images():
    with pytest.raises(ValueError, match=r"\(RandomContrast\): expected input of rank 4 \(batch, height, width, "
                                         r"channels\), received input with shape \(None, 5, 6\)"):
        RandomContrast(0.2)(np.zeros((2, 5, 6)), training=True)
