"""A synthetic two-class image set, generated in code with a seed: no download, no files.

Each image is a patch of textured, noisy "tissue" (smooth random texture in a stain-like colour).
Class 1 images also carry one lesion-like blob: an ellipse of random size, elongation, rotation,
position, edge softness and contrast (brighter or darker than its surroundings). Every image is
then rescaled to the same mean brightness, so the classes cannot be told apart by overall intensity:
a model has to find a local structure, which is what convolutions are for.

This data is synthetic. It looks nothing like real medical images in detail and says nothing about
clinical performance; it exists so that examples and tests run anywhere.
"""
import numpy as np


def _smooth_noise(gen, n, size, sigma):
    """Texture: white noise blurred by a Gaussian of ``sigma`` pixels (in Fourier space), unit std."""
    noise = gen.standard_normal((n, size, size))
    freq = np.fft.fftfreq(size)
    radius2 = freq[:, None] ** 2 + freq[None, :] ** 2
    spectrum = np.fft.fft2(noise) * np.exp(-2 * np.pi ** 2 * sigma ** 2 * radius2)
    out = np.real(np.fft.ifft2(spectrum))
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-12
    return out


def make_lesion_images(n=512, image_size=64, channels=3, positive_fraction=0.5, seed=0,
                       difficulty=1.0, return_masks=False):
    """Generate ``n`` synthetic images and their labels.

    Parameters
    ----------
    n : int
    image_size : int
        Square images of ``image_size x image_size`` pixels.
    channels : 1 or 3
    positive_fraction : float in (0, 1)
        Share of class-1 (lesion) images.
    seed : int
        The same seed gives the same images.
    difficulty : float > 0
        Scales noise and texture against the lesion contrast (1.0: clearly learnable by the
        reference CNN in a few epochs; larger is harder).
    return_masks : bool
        Also return where the lesions are (for checking explanations such as Grad-CAM).

    Returns
    -------
    x : ndarray (n, image_size, image_size, channels) float32 in [0, 1]
    y : ndarray (n,) int64, 1 where a lesion is present
    masks : ndarray (n, image_size, image_size) bool, only with ``return_masks``
        True inside each lesion (its half-intensity contour); all False for class 0.
    """
    if channels not in (1, 3):
        raise ValueError(f"make_lesion_images: invalid value for argument `channels`: expected 1 or 3, "
                         f"received {channels!r}")
    if not 0 < positive_fraction < 1:
        raise ValueError(f"make_lesion_images: invalid value for argument `positive_fraction`: expected a "
                         f"float in (0, 1), received {positive_fraction!r}")
    gen = np.random.default_rng(seed)
    s = image_size
    y = (gen.random(n) < positive_fraction).astype(np.int64)
    coarse = _smooth_noise(gen, n, s, 0.1 * s)
    fine = _smooth_noise(gen, n, s, 0.025 * s)
    tissue = 0.5 + difficulty * (0.06 * coarse + 0.05 * fine) + difficulty * 0.04 * gen.standard_normal((n, s, s))

    rows, cols = np.mgrid[0:s, 0:s].astype(np.float64)
    masks = np.zeros((n, s, s), dtype=bool)
    for i in np.flatnonzero(y):
        radius = gen.uniform(0.05, 0.16) * s
        aspect = gen.uniform(0.5, 1.0)
        angle = gen.uniform(0, np.pi)
        margin = radius + 2
        cy, cx = gen.uniform(margin, s - margin, size=2)
        dy, dx = rows - cy, cols - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * aspect)
        dist = np.sqrt(u ** 2 + v ** 2)
        softness = gen.uniform(0.03, 0.15)
        blob = 0.5 * (1.0 - np.tanh((dist - 1.0) / (2 * softness)))  # logistic edge, overflow-free
        contrast = gen.uniform(0.18, 0.35) * gen.choice([-1.0, 1.0])
        tissue[i] += contrast * blob * (1 + 0.3 * fine[i])
        masks[i] = dist <= 1.0
    # Same mean brightness for every image: overall intensity carries no label information.
    tissue += 0.5 - tissue.mean(axis=(1, 2), keepdims=True)

    if channels == 1:
        x = tissue[..., None]
    else:
        stain = np.stack([gen.uniform(0.85, 1.0, n), gen.uniform(0.55, 0.75, n), gen.uniform(0.7, 0.9, n)], axis=1)
        x = tissue[..., None] * stain[:, None, None, :] + 0.1
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return (x, y, masks) if return_masks else (x, y)
