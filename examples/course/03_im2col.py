# %% [markdown]
# # Lesson 3: im2col, a convolution as one matrix product
#
# Lesson 1's loops do the right thing slowly: Python runs one multiply-add at a time. Matrix
# products, on the other hand, run in BLAS at close to the processor's peak. *im2col* ("image to
# columns") turns a convolution into one: copy every receptive field (the `KH x KW x C` pixels under
# the kernel at one output position) into one row of a matrix, and the whole convolution becomes
#
# $$\underbrace{Y}_{(N \cdot OH \cdot OW) \times F} \;=\; \underbrace{\text{cols}}_{(N \cdot OH \cdot OW) \times (KH \cdot KW \cdot C)} \;\cdot\; \underbrace{W}_{(KH \cdot KW \cdot C) \times F}$$
#
# with `W` the Keras kernel `(KH, KW, C, F)` simply reshaped, and `Y` already the NHWC output,
# reshaped. The price is memory: each pixel is copied up to `KH*KW` times. `tinycnn/kernels/conv.py`
# is this lesson in Numba; read its docstring next.

# %%
import time

import numpy as np

from _course import pick, plt, save
from tinycnn.kernels import conv as conv_kernels
from tinycnn.kernels import reference
from tinycnn.layers import Conv2D


def im2col(x, kh, kw):
    """'valid', stride 1: (N, H, W, C) -> (N*OH*OW, KH*KW*C), one receptive field per row."""
    n, h, w, c = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            cols[:, :, :, a, b, :] = x[:, a:a + oh, b:b + ow, :]  # shift the image, copy it
    return cols.reshape(n * oh * ow, kh * kw * c)


# %% [markdown]
# ## Look at the matrix
# A 5x5 one-channel image holding the numbers 1..25 and a 3x3 kernel: 9 output positions, so
# `cols` is 9 x 9. Row `(i, j)` holds the 3x3 patch whose top-left corner is pixel `(i, j)`.

# %%
x = np.arange(1.0, 26.0).reshape(1, 5, 5, 1)
cols = im2col(x, 3, 3)
print("x =\n", x[0, :, :, 0].astype(int), "\ncols =\n", cols.astype(int))
copies = np.bincount(cols.astype(int).ravel(), minlength=26)[1:].reshape(5, 5)
print("how often each pixel was copied:\n", copies)

fig, axes = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw={"width_ratios": [5, 9]})
for ax, m, title in ((axes[0], x[0, :, :, 0], "image x (5 x 5)"),
                     (axes[1], cols, "cols = im2col(x): one 3x3 patch per row")):
    ax.imshow(m, cmap="viridis")
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, int(v), ha="center", va="center", color="w", fontsize=8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
axes[1].set_xlabel("kernel position (a, b)")
axes[1].set_ylabel("output position (i, j)")
save(fig, "03_cols.png")

# The centre pixel is under all 9 kernel positions; corners under 1.
assert copies[2, 2] == 9 and copies[0, 0] == 1 and copies.sum() == cols.size

# %% [markdown]
# ## The same numbers as the convolution
# `kernels/conv.py`'s `im2col` fills the same matrix (it also handles padding and strides, and
# runs in parallel); the product with the reshaped kernel is the convolution.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 7, 6, 3))
w = rng.standard_normal((3, 3, 3, 4))
cols = im2col(x, 3, 3)
oh, ow = 5, 4
cols_numba = np.empty_like(cols)
conv_kernels.im2col(x, 3, 3, 1, 1, 0, 0, oh, ow, cols_numba)
y = (cols @ w.reshape(-1, 4)).reshape(2, oh, ow, 4)
print(f"cols {cols.shape} @ W {w.reshape(-1, 4).shape} -> {cols.shape[0]} x 4 -> y {y.shape}")
print(f"max |cols@W - reference.conv2d_forward| = {np.abs(y - reference.conv2d_forward(x, w, None)).max():.1e}")
assert np.array_equal(cols, cols_numba)
assert np.allclose(y, reference.conv2d_forward(x, w, None), rtol=0, atol=1e-12)

# %% [markdown]
# ## How the time grows with the image
# For one image `(S, S, 16)` and 16 filters, 'same' padding, we time three ways:
# the reference loops, `Conv2D` with `algorithm='im2col'` (Numba copies + one BLAS product), and
# `Conv2D` with `algorithm='winograd'` (lesson 4). All three do work proportional to $S^2$, so on a
# log-log plot they end up parallel to the dashed line of slope 2; what differs is the constant.
# The fast layers also pay a fixed cost per call (threads, buffers, Python: a fraction of a
# millisecond) that hides the $S^2$ growth until images are large. The loops stop at small sizes,
# they are far too slow. Timings on a shared machine are noisy: we take the best of a few repeats
# and assert nothing about them.

# %%
def best_time(f, repeats):
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


sizes = pick([8, 16, 32, 64, 128, 256], [8, 16])
times = {"reference loops": [], "im2col": [], "winograd": []}  # seconds, one entry per size
for s in sizes:
    x = rng.random((1, s, s, 16)).astype(np.float32)
    layer = Conv2D(16, 3, padding="same", use_bias=False)
    layer.build(x.shape[1:])
    kernel = layer.get_weights()[0]
    outputs = {}
    for algorithm in ("im2col", "winograd"):
        layer.algorithm = algorithm  # a built 3x3 layer may be switched between the two
        outputs[algorithm] = layer(x)
        times[algorithm].append(best_time(lambda: layer(x), pick(5, 2)))
    if s <= 32:  # the loops: slow, so small images only; float64, as the truth
        expect = reference.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64), None, padding="same")
        times["reference loops"].append(best_time(
            lambda: reference.conv2d_forward(x, kernel, None, padding="same"), 1))
        for out in outputs.values():
            assert np.allclose(out, expect, rtol=0, atol=1e-4 * np.abs(expect).max())
    assert np.allclose(outputs["winograd"], outputs["im2col"], rtol=0, atol=1e-4 * np.abs(outputs["im2col"]).max())
    measured = {k: v[-1] for k, v in times.items() if len(v) == len(times["im2col"])}
    print(f"S = {s:3d}: " + ", ".join(f"{k} {t * 1e3:8.3f} ms" for k, t in measured.items()))

fig, ax = plt.subplots(figsize=(6, 4))
for label, t in times.items():
    ax.loglog(sizes[:len(t)], np.array(t) * 1e3, "o-", label={"im2col": "im2col + GEMM"}.get(label, label))
ax.loglog(sizes, times["im2col"][-1] * 1e3 * (np.array(sizes) / sizes[-1]) ** 2, "k--", lw=0.8,
          label=r"$\propto S^2$")
ax.set_xlabel("image side S (one image, 16 -> 16 channels, 3x3)")
ax.set_ylabel("time per forward pass (ms, best of a few)")
ax.set_title("the same convolution three ways")
ax.legend()
save(fig, "03_timing.png")

# %% [markdown]
# ## The claims, checked
# `im2col` + one product equals the convolution (checked against the reference to 1e-12 in
# float64, and both `Conv2D` algorithms against the loops at every size), and it copies each
# pixel up to `KH*KW` = 9 times: with 'same' padding, `cols` has exactly 9 times as many entries
# as the image has pixels x channels.

# %%
s, c = 10, 3
x = rng.random((1, s, s, c))
padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # 'same' for a 3x3 kernel: one zero on each side
assert im2col(padded, 3, 3).size == 9 * x.size
print("lesson 3: claims hold")
