# %% [markdown]
# # Lesson 5: pooling and its gradient
#
# Max pooling keeps the largest value of each window; with `pool_size=(2, 2)` (stride 2 by
# default, as Keras) an `(N, H, W, C)` input becomes `(N, H/2, W/2, C)`, each channel on its own:
# $$y[n,i,j,c] = \max_{0 \le a,b < 2} x[n,\,2i+a,\,2j+b,\,c]$$
# The max is locally just "pick one input", so its derivative is 1 for the winner and 0 for the
# others: **the whole gradient of a window goes to its argmax**. Average pooling, for contrast,
# spreads it evenly:
# $$\frac{\partial L}{\partial x[2i+a,2j+b]} = \begin{cases} dy[i,j] & \text{if } (a,b) = \arg\max \\ 0 & \text{otherwise}\end{cases}
#   \qquad\text{vs}\qquad \frac{\partial L}{\partial x[2i+a,2j+b]} = \tfrac14\, dy[i,j]$$

# %%
import numpy as np

from _course import plt, save
from tinycnn.gradcheck import check_layers, numerical_gradient
from tinycnn.kernels import reference
from tinycnn.layers import AveragePooling2D, MaxPooling2D

x = np.array([[1.0, 3, 2, 0], [4, 2, 1, 1], [0, 1, 5, 6], [2, 3, 7, 1]]).reshape(1, 4, 4, 1)
pool = MaxPooling2D(pool_size=(2, 2), dtype="float64")
y = pool(x)
print("x =\n", x[0, :, :, 0], "\nMaxPooling2D(x) =\n", y[0, :, :, 0])
assert np.array_equal(y[0, :, :, 0], [[4, 2], [3, 7]])

# %% [markdown]
# ## Where the gradient goes
# `reference.maxpool_backward(x, dy)` sends each `dy[i, j]` to its window's winner. We check it
# against finite differences of the *layer*: $L(x) = \sum dy \odot \text{MaxPooling2D}(x)$,
# differentiated numerically by `tinycnn.gradcheck.numerical_gradient`.

# %%
dy = np.array([[10.0, 20], [30, 40]]).reshape(1, 2, 2, 1)
dx = reference.maxpool_backward(x, dy)
numeric = numerical_gradient(lambda: float(np.sum(dy * pool(x))), x)
print("dy =\n", dy[0, :, :, 0], "\ndx (reference.maxpool_backward) =\n", dx[0, :, :, 0])
assert np.allclose(dx, numeric, rtol=0, atol=1e-6)  # rounding: ~1e-16 * L / eps
assert np.count_nonzero(dx) == dy.size and dx.sum() == dy.sum()  # one winner per window, nothing lost

dx_avg = reference.avgpool_backward(x, dy)
avg = AveragePooling2D(dtype="float64")
numeric_avg = numerical_gradient(lambda: float(np.sum(dy * avg(x))), x)
print("dx for AveragePooling2D =\n", dx_avg[0, :, :, 0])
assert np.allclose(dx_avg, numeric_avg, rtol=0, atol=1e-6) and np.allclose(dx_avg, np.kron(dy, np.ones((1, 2, 2, 1))) / 4)

# %% [markdown]
# ## A picture
# On a random 12x12 image with `dy = 1` everywhere: max pooling's gradient is a sparse pattern, one
# pixel per 2x2 window; average pooling's is a flat 1/4. During training only the winners learn
# from a max-pooling layer's gradient.

# %%
rng = np.random.default_rng(0)
img = rng.random((1, 12, 12, 1))
ones = np.ones((1, 6, 6, 1))
fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
panels = ((img, "x (12 x 12)", "gray"), (reference.maxpool_backward(img, ones), "dx, max pooling", "Blues"),
          (reference.avgpool_backward(img, ones), "dx, average pooling", "Blues"))
for ax, (m, title, cmap) in zip(axes, panels):
    ax.imshow(m[0, :, :, 0], cmap=cmap, vmin=0, vmax=1)
    for k in range(0, 13, 2):  # the pooling windows
        ax.axhline(k - 0.5, color="orange", lw=0.6)
        ax.axvline(k - 0.5, color="orange", lw=0.6)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
save(fig, "05_pooling_gradient.png")

# %% [markdown]
# ## Ties
# If two inputs of a window are equal, the max has no derivative there: nudging either one up
# raises the max, nudging it down does not. The kernel gives the whole gradient to the *first*
# winner; a central difference sees half the slope for each, $(\varepsilon - 0)/(2\varepsilon) = 1/2$.
# Both are valid subgradients, but they disagree, which is what broke the gradient check of a
# black image in lesson 2.

# %%
tied = np.array([[5.0, 5], [1, 0]]).reshape(1, 2, 2, 1)
one = np.ones((1, 1, 1, 1))
kernel_says = reference.maxpool_backward(tied, one)[0, :, :, 0]
small_pool = MaxPooling2D(dtype="float64")
differences_say = numerical_gradient(lambda: float(np.sum(small_pool(tied))), tied)[0, :, :, 0]
print("tie: backward gives\n", kernel_says, "\nfinite differences give\n", differences_say)
assert np.array_equal(kernel_says, [[1, 0], [0, 0]]) and np.allclose(differences_say, [[0.5, 0.5], [0, 0]])

# %% [markdown]
# ## The claims, checked
# The gradient of max pooling goes entirely to each window's winner (and of average pooling, a
# quarter to each input), as finite differences of the layers confirm; `check_layers` agrees for
# the layers' own `backward`, with overlapping windows too (3x3 windows, stride 2: a pixel can win
# two windows and then collects both gradients).

# %%
for layer in (MaxPooling2D(), AveragePooling2D(), MaxPooling2D(pool_size=3, strides=2, padding="same")):
    report = check_layers([layer], x=rng.standard_normal((2, 7, 7, 3)))
    print(f"{layer.name} pool_size={layer.pool_size} strides={layer.strides}:", report)
    report.assert_close(1e-6)
print("lesson 5: claims hold")
