"""Grad-CAM: exact on a model whose answer is known by hand, and the picture it writes."""
import numpy as np
import pytest
from PIL import Image

from tinycnn.explain import grad_cam, save_grad_cam
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Dropout, GlobalAveragePooling2D
from tinycnn.models import Sequential


def linear_probe_model():
    """conv (1x1, linear) -> global average pooling -> dense softmax: the class-c logit is
    sum_k W[k, c] * mean(A_k) + b_c, so Grad-CAM's weights are W[k, c] / (h*w)."""
    model = Sequential([Conv2D(3, 1, input_shape=(4, 5, 2), name="features"), GlobalAveragePooling2D(),
                        Dropout(0.5), Dense(2, activation="softmax")])
    model.build()
    gen = np.random.default_rng(0)
    model.set_weights([gen.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def test_grad_cam_matches_the_hand_formula():
    model = linear_probe_model()
    image = np.random.default_rng(1).random((4, 5, 2), dtype=np.float32)
    kernel, bias, dense_w, _ = model.get_weights()
    features = image.reshape(-1, 2) @ kernel.reshape(2, 3) + bias  # (h*w, K), linear conv
    for c in (0, 1):
        cam = np.maximum(features @ (dense_w[:, c] / 20.0), 0).reshape(4, 5)
        expected = cam / cam.max() if cam.max() > 0 else cam
        result = grad_cam(model, image, class_index=c)
        assert result.layer == "features" and result.class_index == c
        np.testing.assert_allclose(result.heatmap, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, model.predict(image[None])[0], rtol=1e-5)


def test_grad_cam_defaults_and_errors(tmp_path):
    model = linear_probe_model()
    image = np.random.default_rng(1).random((1, 4, 5, 2), dtype=np.float32)
    result = grad_cam(model, image)
    assert result.class_index == int(np.argmax(model.predict(image)[0]))
    assert np.asarray(result).shape == (4, 5) and 0 <= result.heatmap.min() and result.heatmap.max() <= 1
    with pytest.raises(ValueError, match=r"`class_index`: expected an int in \[0, 2\), received 5"):
        grad_cam(model, image, class_index=5)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        grad_cam(model, image, layer="nope")
    with pytest.raises(ValueError, match="one image, received a batch of 2"):
        grad_cam(model, np.concatenate([image, image]))
    with pytest.raises(ValueError, match=r"must have shape \(None, 4, 5, 2\)"):
        grad_cam(model, np.zeros((4, 5, 3)))
    path = save_grad_cam(image[0], result, tmp_path / "cam.png", scale=3)
    picture = Image.open(path)
    assert picture.mode == "RGB" and picture.format == "PNG"


def find_block(canvas, block):
    """Top-left (row, column) of ``block`` inside ``canvas``, or None."""
    h, w = block.shape[:2]
    for r in range(canvas.shape[0] - h + 1):
        for c in range(canvas.shape[1] - w + 1):
            if np.array_equal(canvas[r:r + h, c:c + w], block):
                return r, c
    return None


def test_grad_cam_pictures_carry_the_image_the_overlay_and_the_colour_key(tmp_path):
    from tinycnn.explain import save_grad_cam_grid
    model = linear_probe_model()
    images = [np.random.default_rng(k).random((4, 5, 2), dtype=np.float32) for k in range(3)]
    cams = [grad_cam(model, image) for image in images]
    save_grad_cam(images[0], cams[0], tmp_path / "one.png", scale=2, class_names=["benign", "malignant"])
    canvas = np.asarray(Image.open(tmp_path / "one.png"))
    gray = np.round((images[0].mean(axis=-1) - images[0].mean(axis=-1).min())
                    / np.ptp(images[0].mean(axis=-1)) * 255).astype(np.uint8)
    shown = np.repeat(np.repeat(np.dstack([gray] * 3), 2, axis=0), 2, axis=1)
    assert find_block(canvas, shown) is not None  # the image itself, at its own contrast, 2x
    key = canvas[-30:].reshape(-1, 3)
    assert any((px == [220, 0, 0]).all() for px in key) and any((px == [0, 0, 160]).all() for px in key)
    save_grad_cam_grid(images, cams, tmp_path / "grid.jpg", titles=["a", "b", "c"], columns=2)
    grid = Image.open(tmp_path / "grid.jpg")
    assert grid.format == "JPEG" and grid.height > canvas.shape[0]  # two rows of panels
    with pytest.raises(ValueError, match="as many heatmaps as images"):
        save_grad_cam_grid(images, cams[:2], tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"cannot tell which picture format to write from the name '.*g\.pgn'"):
        save_grad_cam_grid(images, cams, tmp_path / "g.pgn")
    with pytest.raises(ValueError, match="heatmap shape"):
        save_grad_cam(images[0], np.zeros((3, 3)), tmp_path / "g.png")


def test_grad_cam_runs_in_inference_mode_through_batchnorm():
    model = Sequential([Conv2D(3, 3, padding="same", activation="relu", input_shape=(6, 6, 1)),
                        BatchNormalization(), Conv2D(2, 1), GlobalAveragePooling2D(), Dense(2, activation="softmax")])
    model.build()
    image = np.random.default_rng(0).random((6, 6, 1), dtype=np.float32)
    before = [w.copy() for w in model.get_weights()]
    first = grad_cam(model, image, layer=model.layers[0].name).heatmap
    second = grad_cam(model, image, layer=model.layers[0].name).heatmap
    np.testing.assert_array_equal(first, second)  # no state changed: moving statistics untouched
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
