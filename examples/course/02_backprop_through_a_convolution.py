# %% [markdown]
# # Lesson 2: backpropagation through one convolution
#
# Training needs the gradient of the loss $L$ with respect to every weight. A layer gets
# $\partial L/\partial y$ from the layer above (call it `dy`, the same shape as its output) and must
# return $\partial L/\partial x$ (for the layer below) and $\partial L/\partial w$, $\partial L/\partial b$
# (for the optimizer). We derive them on paper, write them in NumPy, check them by finite
# differences by hand, then with `tinycnn.gradcheck`, and finally break a check on purpose.
#
# Forward ('valid' padding, stride 1), `x (N, H, W, C)`, `w (3, 3, C, F)`, `y (N, H-2, W-2, F)`:
# $$y[n,i,j,f] = b[f] + \sum_{a,c,ch} x[n,i+a,j+c,ch]\,w[a,c,ch,f]$$
#
# Each weight $w[a,c,ch,f]$ multiplies one input pixel in *every* output position, so by the chain
# rule its gradient sums over those positions; each input pixel feeds up to 9 outputs per filter:
# $$\frac{\partial L}{\partial w[a,c,ch,f]} = \sum_{n,i,j} dy[n,i,j,f]\; x[n,i+a,j+c,ch] \qquad
#   \frac{\partial L}{\partial b[f]} = \sum_{n,i,j} dy[n,i,j,f]$$
# $$\frac{\partial L}{\partial x[n,p,q,ch]} = \sum_{a,c,f} dy[n,\,p-a,\,q-c,\,f]\; w[a,c,ch,f]
#   \quad (dy = 0 \text{ outside its bounds})$$
#
# The last one is again a convolution: of `dy`, zero-padded by 2 on every side, with the kernel
# rotated by 180 degrees and its two channel axes swapped. *The backward pass of a convolution is
# a convolution.*

# %%
import numpy as np

import tinycnn
from _course import plt, save
from tinycnn.gradcheck import check_layers
from tinycnn.kernels import reference
from tinycnn.layers import Conv2D, MaxPooling2D

tinycnn.set_seed(0)  # the layers' initial weights
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 6, 6, 3))
w = rng.standard_normal((3, 3, 3, 4))
b = rng.standard_normal(4)
y = reference.conv2d_forward(x, w, b)
dy = rng.standard_normal(y.shape)  # any upstream gradient: L = sum(dy * y) has exactly this dL/dy
print(f"x {x.shape}, w {w.shape} -> y {y.shape}, dy {dy.shape}")

# %% [markdown]
# ## The three gradients in NumPy

# %%
def conv_backward(x, w, dy):
    """dx, dw, db of a 'valid', stride-1 convolution, from the three formulas above."""
    kh, kw = w.shape[:2]
    oh, ow = dy.shape[1:3]
    dw = np.zeros_like(w)
    for a in range(kh):
        for c in range(kw):
            # sum over n, i, j of x[n, i+a, j+c, ch] * dy[n, i, j, f]: a (C, F) matrix product
            dw[a, c] = np.einsum("nijc,nijf->cf", x[:, a:a + oh, c:c + ow], dy)
    db = dy.sum(axis=(0, 1, 2))
    dy_padded = np.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    w_rotated = w[::-1, ::-1].transpose(0, 1, 3, 2)          # (3, 3, F, C)
    dx = reference.conv2d_forward(dy_padded, w_rotated, None)  # a 'valid' convolution again
    return dx, dw, db


dx, dw, db = conv_backward(x, w, dy)
dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, w, dy)
for name, ours, ref in (("dx", dx, dx_ref), ("dw", dw, dw_ref), ("db", db, db_ref)):
    print(f"{name} {ours.shape}: max |ours - reference.conv2d_backward| = {np.abs(ours - ref).max():.1e}")
    assert np.allclose(ours, ref, rtol=0, atol=1e-12)

# %% [markdown]
# ## Finite differences, by hand
# $L = \sum dy \odot y$ is linear in $w$, and the finite difference of a linear function is exact:
# too easy. Put a curve on top, $L(w) = \sum r \odot \tanh(y(w))$. The chain rule hands the
# convolution $dy = r \odot (1 - \tanh^2 y)$, and `conv_backward` does the rest. Then nudge one
# weight by $\pm\varepsilon$:
# $$\frac{\partial L}{\partial w_k} \approx \frac{L(w + \varepsilon e_k) - L(w - \varepsilon e_k)}{2\varepsilon}$$
# The central difference is off by $O(\varepsilon^2)$ (Taylor's third-order terms); rounding adds
# about $10^{-16} |L| / \varepsilon$ in float64. We compare with the relative error
# $|a - n| / \max(|a|, |n|)$.

# %%
r = rng.standard_normal(y.shape)


def loss(w_, dtype=np.float64):
    x_, w_, b_, r_ = (v.astype(dtype) for v in (x, w_, b, r))
    return float(np.sum(r_ * np.tanh(reference.conv2d_forward(x_, w_, b_))))


_, dw_tanh, _ = conv_backward(x, w, r * (1 - np.tanh(y) ** 2))


def central_difference(f, w_, index, eps):
    up, down = w_.copy(), w_.copy()
    up[index] += eps
    down[index] -= eps
    return (f(up) - f(down)) / (2 * eps)


for index in [(0, 0, 0, 0), (1, 2, 1, 3), (2, 1, 2, 1)]:
    numeric = central_difference(loss, w, index, 1e-6)
    rel = abs(dw_tanh[index] - numeric) / max(abs(dw_tanh[index]), abs(numeric))
    print(f"dL/dw{index}: analytic {dw_tanh[index]: .8f}, numeric {numeric: .8f}, relative error {rel:.1e}")
    assert rel < 1e-7

# %% [markdown]
# ## How big should the step be?
# Too large and the $\varepsilon^2$ truncation error dominates; too small and the two nearly equal
# values of $L$ cancel to rounding noise. In float64 the sweet spot is around $10^{-5}$; float32
# resolves only about $10^{-7}$ instead of $10^{-16}$, so its best error is orders of magnitude
# worse: gradient checks run in float64.

# %%
index = (1, 2, 1, 3)
steps = np.logspace(-1, -12, 23)
errors = {}
for dtype in (np.float64, np.float32):
    label = np.dtype(dtype).name
    errors[label] = [abs(central_difference(lambda v: loss(v, dtype), w, index, eps) - dw_tanh[index])
                     / abs(dw_tanh[index]) for eps in steps]
    best = int(np.argmin(errors[label]))
    print(f"{label}: best step {steps[best]:.0e}, relative error {errors[label][best]:.1e}")

fig, ax = plt.subplots(figsize=(6, 4))
for label, errs in errors.items():
    ax.loglog(steps, np.maximum(errs, 1e-17), "o-", label=label)
ax.set_xlabel(r"step $\varepsilon$")
ax.set_ylabel("relative error of the central difference")
ax.set_title(r"rounding error (small $\varepsilon$) vs truncation error (large)")
ax.legend()
save(fig, "02_step_size.png")
assert min(errors["float64"]) < 1e-8 < min(errors["float32"])

# %% [markdown]
# ## `tinycnn.gradcheck` does this for every entry
# `check_layers(layers, x=...)` runs the layers (cast to float64), takes the scalar
# $\sum R \odot \text{stack}(x)$ for a fixed random $R$, and compares every gradient `backward`
# returns with central differences. The same check guards every layer in the test suite.

# %%
report = check_layers([Conv2D(4, 3, activation="relu")], x=x)
print(report)
report.assert_close(1e-6)

# %% [markdown]
# ## A check that fails although the code is right: kinks
# ReLU has no derivative at 0 and max pooling none where two inputs tie for the maximum.
# A finite difference steps *across* such a point and averages the two slopes; `backward` picks
# one side. Images with flat black backgrounds hit both: a zero-bias convolution gives exactly 0 on
# black, and equal values tie in every pooling window there. The code is right; the input is the
# problem. A little noise (1e-3) moves every value away from the kinks. (The bias fails too:
# moving it by $\pm\varepsilon$ carries all the zeros of the background across the kink at once.)

# %%
flat = np.zeros((2, 10, 10, 1))
flat[:, 3:7, 3:7] = 1.0                      # a white square on black, like a digit
jittered = flat + 1e-3 * rng.standard_normal(flat.shape)
conv, pool = Conv2D(4, 3, activation="relu"), MaxPooling2D()
conv.build(flat.shape[1:])                   # glorot-uniform kernel, zero bias
linear = Conv2D(4, 3)                        # the same convolution without the ReLU: its input
linear.build(flat.shape[1:])
linear.set_weights(conv.get_weights())
print(f"pre-activations within 1e-6 of ReLU's kink: {np.mean(np.abs(linear(flat)) < 1e-6):.0%}")
report_flat = check_layers([conv, pool], x=flat)
report_jittered = check_layers([conv, pool], x=jittered)
print("black background:", report_flat)
print("plus 1e-3 noise :", report_jittered)

# %% [markdown]
# ## The claims, checked
# Our three formulas equal `reference.conv2d_backward` and finite differences; `check_layers`
# confirms `Conv2D`'s backward to 1e-6; on a black background the check fails only because of the
# kinks, and passes once noise moves the input off them.

# %%
assert report_flat.errors["input"] > 1e-3 and report_flat.errors[f"{conv.name}/bias"] > 1e-3
report_jittered.assert_close(1e-6)
print("lesson 2: claims hold")
