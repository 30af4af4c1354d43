# %% [markdown]
# # Lesson 1: a convolution by hand
#
# A convolution layer slides a small kernel over the image and, at every position, multiplies the
# pixels under it by the kernel's weights and adds them up. That is all. In this lesson we write
# it as loops, check `Conv2D` and `kernels/reference.py` give the same numbers, and use a
# hand-made edge filter on a synthetic lesion.
#
# Shapes follow Keras: images are NHWC `(N, H, W, C)`, kernels `(KH, KW, C_in, F)`.
#
# $$y[n,i,j,f] = b[f] + \sum_{a=0}^{KH-1}\sum_{c=0}^{KW-1}\sum_{ch} x[n,\,i+a,\,j+c,\,ch]\; w[a,c,ch,f]$$
#
# (Strictly this is a *cross-correlation*: the kernel is not flipped. Every deep-learning library
# calls it a convolution.)

# %%
import numpy as np

from _course import pick, plt, save
from tinycnn.data import make_lesion_images
from tinycnn.kernels import reference
from tinycnn.layers import Conv2D

# %% [markdown]
# ## One channel, one filter
# A 4x4 image and a 3x3 kernel. With `padding='valid'` the kernel must fit inside the image, so
# the output is `(4 - 3 + 1) x (4 - 3 + 1) = 2 x 2`.

# %%
def conv_loops(x, w):
    """One image (H, W), one kernel (KH, KW), 'valid' padding: the formula above, literally."""
    kh, kw = w.shape
    out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (x[i:i + kh, j:j + kw] * w).sum()
    return out


x = np.arange(16.0).reshape(4, 4)
w = np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])  # the discrete Laplacian
y = conv_loops(x, w)
print("x =\n", x, "\nw =\n", w, "\ny = conv(x, w) =\n", y)
# x grows by 1 per column and 4 per row: a plane, whose Laplacian (curvature) is zero everywhere.
assert np.array_equal(y, np.zeros((2, 2)))

# %% [markdown]
# ## Many channels, many filters: `Conv2D` gives the same numbers
# Now `x` is a batch `(N, H, W, C)` and the kernel `(3, 3, C, F)`: each filter sums over all input
# channels. We give a `Conv2D` layer our own weights with `set_weights([kernel, bias])` (Keras's
# order and layout), and compare with our loops and with `kernels/reference.py`.

# %%
rng = np.random.default_rng(0)
n, h, wd, c, f = 2, 6, 7, 3, 4
x = rng.standard_normal((n, h, wd, c))
kernel = rng.standard_normal((3, 3, c, f))
bias = rng.standard_normal(f)

y_loops = np.zeros((n, h - 2, wd - 2, f))
for img in range(n):
    for filt in range(f):
        for ch in range(c):
            y_loops[img, :, :, filt] += conv_loops(x[img, :, :, ch], kernel[:, :, ch, filt])
        y_loops[img, :, :, filt] += bias[filt]

layer = Conv2D(filters=f, kernel_size=3, dtype="float64")  # float64 to compare to ~1e-15
layer.build((h, wd, c))
layer.set_weights([kernel, bias])
y_layer = layer(x)
y_ref = reference.conv2d_forward(x, kernel, bias)
print(f"x {x.shape} * kernel {kernel.shape} -> y {y_layer.shape}; "
      f"max |Conv2D - loops| = {np.abs(y_layer - y_loops).max():.1e}, "
      f"max |reference - loops| = {np.abs(y_ref - y_loops).max():.1e}")
assert y_layer.shape == (n, h - 2, wd - 2, f)
assert np.allclose(y_layer, y_loops, rtol=0, atol=1e-12) and np.allclose(y_ref, y_loops, rtol=0, atol=1e-12)

# %% [markdown]
# ## Padding and strides
# `padding='same'` adds zeros around the image so that, with stride 1, the output keeps the input's
# size; with stride `s` the kernel jumps `s` pixels. Keras's rule (TensorFlow's):
#
# | padding | output length |
# |---|---|
# | `'valid'` | $\lfloor (H - K)/s \rfloor + 1$ |
# | `'same'` | $\lceil H / s \rceil$ |

# %%
for padding in ("valid", "same"):
    for stride in (1, 2):
        out = Conv2D(f, 3, strides=stride, padding=padding)(x.astype(np.float32))
        expect = (h - 3) // stride + 1 if padding == "valid" else -(-h // stride)
        print(f"padding={padding!r:8} strides={stride}: {x.shape} -> {out.shape}")
        assert out.shape[1] == expect

# %% [markdown]
# ## An edge filter on a synthetic lesion
# The Sobel kernels estimate how fast brightness changes across columns ($G_x$) and rows ($G_y$);
# $\sqrt{G_x^2 + G_y^2}$ is large where the image has an edge. `make_lesion_images` gives images
# with a blob (the "lesion") whose outline we know (`return_masks=True`); we ask for clean images
# (`difficulty=0.5`, half the usual noise). We put both Sobel kernels into one `Conv2D` with two
# filters, `(3, 3, 1, 2)`, and measure the edge strength on the lesion's outline against the rest.
# We use `padding='valid'`: zero padding would put a false edge all around the border (the image
# is about 0.5 there, the padding 0), so the output is 2 pixels smaller and we crop the masks alike.

# %%
size = pick(64, 32)
images, labels, masks = make_lesion_images(n=16, image_size=size, channels=1, seed=3, difficulty=0.5,
                                           return_masks=True)
sobel_x = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
edges = Conv2D(2, 3, padding="valid", use_bias=False)
edges.build(images.shape[1:])
edges.set_weights([np.stack([sobel_x, sobel_x.T], axis=-1)[:, :, None, :]])  # G_x and G_y
g = edges(images)                                                               # (N, H, W, 2)
strength = np.hypot(g[..., 0], g[..., 1])                                   # (N, H-2, W-2)
masks = masks[:, 1:-1, 1:-1]                                                    # the same pixels


def outline(mask):
    """Mask pixels with a neighbour outside the mask, grown by one pixel each way: a 3-pixel ring."""
    inner = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    ring = mask & ~inner
    for axis in (0, 1):
        ring = ring | np.roll(ring, 1, axis) | np.roll(ring, -1, axis)
    return ring


ratios = [strength[k][outline(masks[k])].mean() / strength[k][~outline(masks[k])].mean()
          for k in np.flatnonzero(labels)]
print("edge strength on the outline / elsewhere, per lesion image:", np.round(ratios, 2))
print(f"mean ratio {np.mean(ratios):.2f}; the texture has edges too, so the ratio is far from infinite")

k = int(np.flatnonzero(labels)[int(np.argmax(ratios))])
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
axes[0].imshow(images[k, 1:-1, 1:-1, 0], cmap="gray")
axes[0].set_title("image")
axes[1].imshow(strength[k], cmap="magma")
axes[1].set_title(r"$\sqrt{G_x^2 + G_y^2}$ (Conv2D, Sobel kernels)")
axes[2].imshow(strength[k], cmap="magma")
axes[2].contour(masks[k], levels=[0.5], colors="cyan", linewidths=1)
axes[2].set_title("with the true lesion outline")
for a in axes:
    a.axis("off")
save(fig, "01_edges.png")

# %% [markdown]
# ## The claim, checked
# The hand-written loops, `kernels/reference.py` and `Conv2D` compute the same convolution (checked
# above to 1e-12), and a Sobel filter responds more strongly on a lesion's outline than elsewhere.
# A fixed filter also fires on texture: a network *learns* better ones (lesson 8).

# %%
assert np.mean(ratios) > 2, ratios
print("lesson 1: claims hold")
