"""Grad-CAM: where in the image did the model look?

Grad-CAM (Selvaraju et al., 2017) weighs the feature maps of the last convolution by how much the
class score depends on them:

    A      = output of the chosen convolution for the image        (h, w, K)
    alpha_k = mean over (i, j) of d score_c / d A[i, j, k]          one weight per feature map
    cam    = max(0, sum_k alpha_k A[:, :, k])                      (h, w), then scaled to [0, 1]

``score_c`` is the class's logit (before the softmax), as in the paper. The map is upsampled to the
image size with bilinear interpolation. Everything runs through the model's own ``backward``
passes in inference mode, so it explains exactly the network that ``predict`` runs.

    heatmap = grad_cam(model, image)                  # (H, W) in [0, 1]
    save_grad_cam(image, heatmap, "where.png")        # the image beside the overlay, captioned
    save_grad_cam_grid(images, heatmaps, "grid.png", class_names=names, titles=files)  # several at once
"""
import os
from contextlib import contextmanager

import numpy as np
from PIL import Image

from ._threads import compute_lock
from .graph import Plan
from .layers import Conv2D


class GradCAM:
    """The result of :func:`grad_cam`: ``heatmap`` (H, W) in [0, 1], the explained ``class_index``,
    the model's ``probabilities`` for the image and the name of the convolution ``layer`` used."""

    def __init__(self, heatmap, class_index, probabilities, layer):
        self.heatmap, self.class_index, self.probabilities, self.layer = heatmap, class_index, probabilities, layer

    def __array__(self, dtype=None, copy=None):
        return self.heatmap if dtype is None else self.heatmap.astype(dtype)

    def __repr__(self):
        return (f"GradCAM(class_index={self.class_index}, p={self.probabilities[self.class_index]:.3f}, "
                f"layer='{self.layer}', heatmap shape {self.heatmap.shape})")


def _on_every_path(model, node):
    """True if every path from the inputs to the output passes through ``node``."""
    stack, seen = [model.outputs[0].node], set()
    while stack:
        current = stack.pop()
        if current is node or id(current) in seen:
            continue
        if current.is_input:
            return False
        seen.add(id(current))
        stack.extend(t.node for t in current.inputs)
    return True


def _target_node(model, layer):
    """The call (node) of the layer whose feature maps Grad-CAM weighs.

    By default the last Conv2D, when all of the network's information passes through it (a plain
    stack); otherwise, as in a residual network whose last convolution has a shortcut beside it,
    the last image-shaped output that every path passes through (the last block's output)."""
    if layer is None:
        convs = [node for node in model._nodes if isinstance(node.layer, Conv2D)]
        if not convs:
            raise ValueError(f"grad_cam: model '{model.name}' has no Conv2D layer to explain")
        if _on_every_path(model, convs[-1]):
            return convs[-1]
        maps = [node for node in model._nodes[model._nodes.index(convs[-1]):]
                if len(node.output.sample_shape) == 3 and _on_every_path(model, node)]
        return maps[-1] if maps else convs[-1]
    for node in reversed(model._nodes):
        lay = node.layer
        if lay.name == layer or lay is layer:
            if len(lay.output_shape) != 3:
                raise ValueError(f"grad_cam: {lay.describe()} outputs {(None,) + lay.output_shape}; "
                                 f"choose a layer with image-shaped output (height, width, channels)")
            return node
    raise ValueError(f"grad_cam: the model has no layer named {layer!r}; its layers are "
                     f"{[lay.name for lay in model.layers]}")


def grad_cam(model, image, class_index=None, layer=None):
    """Grad-CAM heatmap of ``image`` for ``class_index`` (default: the predicted class).

    Parameters
    ----------
    model : Model or Sequential
    image : ndarray (H, W, C) or (1, H, W, C)
        Scaled as the model's training data was. For a model with several inputs, a list with one
        sample for each.
    class_index : int, optional
    layer : str, optional
        Name of the layer whose feature maps are weighed; default the last Conv2D.

    Returns
    -------
    GradCAM
        ``.heatmap`` is an ndarray (H, W) float32 in [0, 1] (all zeros when no feature map speaks
        for the class); the object also converts with ``np.asarray``.

    Notes
    -----
    The forward and backward passes run through an execution plan of the model made for this call,
    with the target layer's output kept as a value (it is never computed inside a fused step); the
    gradient of the class's logit arrives at that value from every branch that reads it.
    """
    model._require_built("grad_cam")
    images = image if isinstance(image, (list, tuple)) else [image]
    images = [np.asarray(a) for a in images]
    images = [a[None] if a.ndim == len(t.sample_shape) else a for a, t in zip(images, model.inputs)]
    xs = model._check_inputs(images if len(images) > 1 else images[0], "grad_cam", "image")
    if xs[0].shape[0] != 1:
        raise ValueError(f"grad_cam: expected one image, received a batch of {xs[0].shape[0]}")
    xs = [np.ascontiguousarray(a, dtype=model.dtype) for a in xs]
    target = _target_node(model, layer)
    with compute_lock():  # one batch through the layers at a time (see tinycnn/_threads.py)
        with _exact_layers(model):
            return _grad_cam(model, xs, class_index, target)


@contextmanager
def _exact_layers(model):
    """The model's layers with ``fast_inference`` off meanwhile: Grad-CAM differentiates its forward
    pass, and F(4x4) Winograd (``Model.fast_inference``) has no backward."""
    fast = [layer for layer in model.layers if getattr(layer, "fast_inference", False)]
    for layer in fast:
        layer.fast_inference = False
    try:
        yield
    finally:
        for layer in fast:
            layer.fast_inference = True


def _grad_cam(model, xs, class_index, target):
    plan = Plan(model.inputs, model.outputs[0], fuse=model.fuse_layers, observe=[target])
    slot = plan.slot_of[id(target)]
    values = plan.run(xs, training=False)
    activations = values[slot].copy()
    probabilities = values[plan.output].reshape(-1).astype(np.float64)
    n_out = probabilities.shape[0]
    if class_index is None:
        class_index = int(np.argmax(probabilities))
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) \
            or not 0 <= class_index < n_out:
        raise ValueError(f"grad_cam: invalid value for argument `class_index`: expected an int in [0, {n_out}), "
                         f"received {class_index!r}")

    # Backward from the class logit down to the target layer's output, in inference mode.
    seed = np.zeros((1, n_out), dtype=model.dtype)
    seed[0, class_index] = 1
    act = getattr(plan.head.owner, "activation", None)
    from_logits = act is not None and act.name in ("softmax", "sigmoid")
    grad = plan.backward(seed if from_logits else seed.reshape(values[plan.output].shape), from_logits=from_logits,
                         keep=(slot,))[slot]
    grads = np.asarray(grad, dtype=np.float64).reshape(activations.shape)[0]
    feature_maps = activations[0].astype(np.float64)

    alpha = grads.mean(axis=(0, 1))
    cam = np.maximum((feature_maps * alpha).sum(axis=2), 0.0)
    if cam.max() > 0:
        cam /= cam.max()
    h, w = model.inputs[0].sample_shape[:2]
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    heatmap = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return GradCAM(heatmap, class_index, probabilities, target.layer.name)


def _colormap(values):
    """Blue -> cyan -> yellow -> red ramp ('jet'-like) for values in [0, 1]: (H, W) -> (H, W, 3) uint8."""
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colors = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float64)
    rgb = np.stack([np.interp(values, anchors, colors[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def _as_rgb_uint8(image):
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 4:
        img = img[0]
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"save_grad_cam: expected an image (H, W) or (H, W, C), received shape {img.shape}")
    if img.shape[-1] != 3:
        img = np.repeat(img.mean(axis=-1, keepdims=True), 3, axis=-1)  # shown as grayscale
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)  # shown with its own contrast
    return (img * 255).round().astype(np.uint8)


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def _text_width(draw, text, font):
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit(draw, text, font, width):
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "...", font) > width:
        text = text[:-1]
    return text + "..."


def _image_format(path, where):
    """Pillow's format name for ``path``'s suffix ('.png' -> 'PNG'), or a ValueError listing them."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    formats = Image.registered_extensions()
    if suffix not in formats or formats[suffix] not in Image.SAVE:
        raise ValueError(f"{where}: cannot tell which picture format to write from the name '{path}'; end it with "
                         f".png, .jpg, .tif, .bmp or .webp (or another suffix Pillow writes)")
    return formats[suffix]


def _caption(cam, class_names, title):
    """Text lines over a panel: its title, the explained class and probability, the prediction if it differs."""
    probabilities = getattr(cam, "probabilities", None)
    lines = [] if title is None else [str(title)]
    if probabilities is None:
        return lines
    names = class_names or [f"class {k}" for k in range(len(probabilities))]
    explained, predicted = cam.class_index, int(np.argmax(probabilities))
    lines.append(f"{names[explained]}: p = {probabilities[explained]:.3f}")
    if predicted != explained:
        lines.append(f"(predicted {names[predicted]}: p = {probabilities[predicted]:.3f})")
    return lines


def _panel(image, heatmap, alpha, scale, where):
    """The image beside the heatmap blended over it, enlarged ``scale`` times: (h, w, 3) uint8."""
    heat = np.asarray(heatmap, dtype=np.float64)
    base = _as_rgb_uint8(image)
    if heat.shape != base.shape[:2]:
        raise ValueError(f"{where}: heatmap shape {heat.shape} does not match the image's {base.shape[:2]}")
    overlay = (1 - alpha) * base + alpha * _colormap(np.clip(heat, 0, 1))
    gap = np.full((base.shape[0], max(1, base.shape[1] // 16), 3), 255, dtype=np.uint8)
    picture = np.concatenate([base, gap, overlay.round().astype(np.uint8)], axis=1)
    return np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)


def _colour_bar(width, font, line):
    """A horizontal key of the heatmap's colours, 0 (left) to 1 (right), with its meaning: (h, width, 3)."""
    from PIL import ImageDraw
    ramp = _colormap(np.linspace(0.0, 1.0, max(2, width - 16)))[None].repeat(12, axis=0)
    bar = Image.new("RGB", (width, 4 + 12 + 2 + line + 4), "white")
    bar.paste(Image.fromarray(ramp), (8, 4))
    draw = ImageDraw.Draw(bar)
    low, high = "0: no evidence", "1: strongest evidence for the class"
    draw.text((8, 18), low, fill="black", font=font)
    draw.text((max(8, width - 8 - _text_width(draw, high, font)), 18), high, fill="black", font=font)
    return bar


def save_grad_cam_grid(images, cams, path, class_names=None, titles=None, columns=None, alpha=0.45, scale=4):
    """Write one picture of several Grad-CAM explanations: each image beside its heatmap, captioned
    with the explained class and its probability, in a grid with a colour key at the bottom.

    Parameters
    ----------
    images : sequence of ndarray (H, W) or (H, W, C)
        RGB when C is 3, otherwise shown as grayscale (the channel mean); each with its own contrast.
    cams : sequence of GradCAM (or of heatmaps (H, W) in [0, 1], then without class captions)
    path : str or os.PathLike
        The format follows the suffix (.png, .jpg, .tif, ...); an unknown suffix is refused.
    class_names : list of str, optional
        Names of the model's classes, for the captions (default 'class 0', 'class 1', ...).
    titles : sequence of str, optional
        A first caption line per image, e.g. its file name.
    columns : int, optional
        Panels per row; default up to 4.
    alpha : float in [0, 1]
        Opacity of the heatmap.
    scale : int
        Each pixel is drawn as ``scale x scale`` (small medical images are hard to see at 1:1).

    Returns
    -------
    str
        ``path``.
    """
    from PIL import ImageDraw
    where = "save_grad_cam_grid"
    images, cams = list(images), list(cams)
    if not images or len(images) != len(cams):
        raise ValueError(f"{where}: expected as many heatmaps as images (at least one), received {len(images)} "
                         f"images and {len(cams)} heatmaps")
    titles = [None] * len(images) if titles is None else list(titles)
    if len(titles) != len(images):
        raise ValueError(f"{where}: expected one title per image ({len(images)}), received {len(titles)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 <= alpha <= 1:
        raise ValueError(f"{where}: invalid value for argument `alpha`: expected a float in [0, 1], received {alpha!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"{where}: invalid value for argument `scale`: expected an int >= 1, received {scale!r}")
    columns = min(4, len(images)) if columns is None else columns
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"{where}: invalid value for argument `columns`: expected an int >= 1, received {columns!r}")
    fmt = _image_format(path, where)

    panels = [_panel(image, cam, alpha, scale, where) for image, cam in zip(images, cams)]
    captions = [_caption(cam, class_names, title) for cam, title in zip(cams, titles)]
    font_size = 12
    font = _font(font_size)
    line = font_size + 4
    cell_h = max(p.shape[0] for p in panels) + line * max(len(c) for c in captions) + 6
    cell_w = max(max(p.shape[1] for p in panels), 150) + 12
    rows = -(-len(panels) // columns)
    width = max(cell_w * min(columns, len(panels)), 300)
    bar = _colour_bar(width, font, line)
    canvas = Image.new("RGB", (width, rows * cell_h + bar.height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        x0, y0 = (i % columns) * cell_w + 6, (i // columns) * cell_h + 3
        for j, text in enumerate(caption):
            draw.text((x0, y0 + j * line), _fit(draw, text, font, cell_w - 12), fill="black", font=font)
        canvas.paste(Image.fromarray(panel), (x0, y0 + line * len(caption)))
    canvas.paste(bar, (0, rows * cell_h))
    canvas.save(path, format=fmt)
    return path


def save_grad_cam(image, heatmap, path, alpha=0.45, scale=4, class_names=None, title=None):
    """Write one picture: the image beside the heatmap blended over it, captioned with the
    explained class and its probability (when ``heatmap`` is the GradCAM that :func:`grad_cam`
    returns), above a colour key. One panel of :func:`save_grad_cam_grid`; see it for the arguments.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
    heatmap : GradCAM, or ndarray (H, W) in [0, 1]
    path : str or os.PathLike
        The format follows the suffix (.png, .jpg, ...).
    alpha, scale, class_names
        As for :func:`save_grad_cam_grid`.
    title : str, optional
        A first caption line, e.g. the file name.

    Returns
    -------
    str
        ``path``.
    """
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    return save_grad_cam_grid([image], [heatmap], path, class_names=class_names,
                              titles=None if title is None else [title], alpha=alpha, scale=scale)
