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
    save_grad_cam(image, heatmap, "where.png")        # the image beside the overlay
"""
import numpy as np
from PIL import Image

from ._threads import compute_lock
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


def _target_layer(model, layer):
    if layer is None:
        convs = [i for i, lay in enumerate(model.layers) if isinstance(lay, Conv2D)]
        if not convs:
            raise ValueError(f"grad_cam: model '{model.name}' has no Conv2D layer to explain")
        return convs[-1]
    for i, lay in enumerate(model.layers):
        if lay.name == layer or lay is layer:
            if len(lay.output_shape) != 3:
                raise ValueError(f"grad_cam: {lay.describe()} outputs {(None,) + lay.output_shape}; "
                                 f"choose a layer with image-shaped output (height, width, channels)")
            return i
    raise ValueError(f"grad_cam: the model has no layer named {layer!r}; its layers are "
                     f"{[lay.name for lay in model.layers]}")


def grad_cam(model, image, class_index=None, layer=None):
    """Grad-CAM heatmap of ``image`` for ``class_index`` (default: the predicted class).

    Parameters
    ----------
    model : Sequential
    image : ndarray (H, W, C) or (1, H, W, C)
        Scaled as the model's training data was.
    class_index : int, optional
    layer : str, optional
        Name of the layer whose feature maps are weighed; default the last Conv2D.

    Returns
    -------
    GradCAM
        ``.heatmap`` is an ndarray (H, W) float32 in [0, 1] (all zeros when no feature map speaks
        for the class); the object also converts with ``np.asarray``.
    """
    model._require_built("grad_cam")
    x = np.asarray(image)
    if x.ndim == len(model.layers[0].input_shape):
        x = x[None]
    x = model._check_x(x, "grad_cam", "image")
    if x.shape[0] != 1:
        raise ValueError(f"grad_cam: expected one image, received a batch of {x.shape[0]}")
    x = np.ascontiguousarray(x, dtype=model.dtype)
    target = _target_layer(model, layer)
    with compute_lock():  # one batch through the layers at a time (see tinycnn/_threads.py)
        return _grad_cam(model, x, class_index, target)


def _grad_cam(model, x, class_index, target):
    head = model.layers[-1]
    n_out = head.output_shape[-1]
    activations = None
    out = x
    for i, lay in enumerate(model.layers):
        out = lay.forward(out, training=False)
        if i == target:
            activations = out.copy()
    probabilities = out.reshape(-1).astype(np.float64)
    if class_index is None:
        class_index = int(np.argmax(probabilities))
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) \
            or not 0 <= class_index < n_out:
        raise ValueError(f"grad_cam: invalid value for argument `class_index`: expected an int in [0, {n_out}), "
                         f"received {class_index!r}")

    # Backward from the class logit down to the target layer's output, in inference mode.
    seed = np.zeros((1, n_out), dtype=model.dtype)
    seed[0, class_index] = 1
    later = model.layers[target + 1:]
    saved = [lay.input_grad_needed for lay in later]
    try:
        for lay in later:
            lay.input_grad_needed = True
        act = getattr(head, "activation", None)
        grad = head.backward_from_logits(seed) if act is not None and act.name in ("softmax", "sigmoid") \
            else head.backward(seed)
        for lay in reversed(later[:-1]):
            grad = lay.backward(grad)
    finally:
        for lay, flag in zip(later, saved):
            lay.input_grad_needed = flag
    grads = np.asarray(grad, dtype=np.float64).reshape(activations.shape)[0]
    feature_maps = activations[0].astype(np.float64)

    alpha = grads.mean(axis=(0, 1))
    cam = np.maximum((feature_maps * alpha).sum(axis=2), 0.0)
    if cam.max() > 0:
        cam /= cam.max()
    h, w = model.layers[0].input_shape[:2]
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    heatmap = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return GradCAM(heatmap, class_index, probabilities, model.layers[target].name)


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


def save_grad_cam(image, heatmap, path, alpha=0.45, scale=4):
    """Write a PNG: the image on the left, the heatmap blended over it on the right.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
        RGB when C is 3, otherwise shown as grayscale (the channel mean).
    heatmap : ndarray (H, W) in [0, 1], or a GradCAM
    path : str
    alpha : float in [0, 1]
        Opacity of the heatmap.
    scale : int
        Each pixel is drawn as ``scale x scale`` (small medical images are hard to see at 1:1).
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    base = _as_rgb_uint8(image)
    if heat.shape != base.shape[:2]:
        raise ValueError(f"save_grad_cam: heatmap shape {heat.shape} does not match the image's {base.shape[:2]}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"save_grad_cam: invalid value for argument `alpha`: expected a float in [0, 1], "
                         f"received {alpha!r}")
    overlay = (1 - alpha) * base + alpha * _colormap(np.clip(heat, 0, 1))
    gap = np.full((base.shape[0], max(1, base.shape[1] // 16), 3), 255, dtype=np.uint8)
    picture = np.concatenate([base, gap, overlay.round().astype(np.uint8)], axis=1)
    out = Image.fromarray(picture, mode="RGB")
    if scale > 1:
        out = out.resize((picture.shape[1] * scale, picture.shape[0] * scale), Image.NEAREST)
    out.save(path, format="PNG")
    return path
