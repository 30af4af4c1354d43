# %% [markdown]
# # Lesson 4: Winograd F(2x2, 3x3) on one tile
#
# A 3x3 convolution computes each 2x2 block of outputs from the 4x4 block of inputs under it (a
# *tile*). Directly that is $2 \cdot 2 \cdot 9 = 36$ multiplications per tile and channel pair.
# Winograd's minimal filtering algorithm (Lavin & Gray, 2016) needs 16. We build it up in 1-D,
# then in 2-D with the matrices of `tinycnn/kernels/reference.py`, check it against the direct
# convolution and `Conv2D`, and find where its extra rounding error comes from.
#
# ## 1-D first: F(2, 3)
# Two outputs of a 3-tap filter `g` over four inputs `d`:
# $y_0 = d_0 g_0 + d_1 g_1 + d_2 g_2$, $y_1 = d_1 g_0 + d_2 g_1 + d_3 g_2$: 6 multiplications. Instead:
#
# $$m_1 = (d_0 - d_2)\,g_0 \quad m_2 = (d_1 + d_2)\,\tfrac{g_0 + g_1 + g_2}{2} \quad
#   m_3 = (d_2 - d_1)\,\tfrac{g_0 - g_1 + g_2}{2} \quad m_4 = (d_1 - d_3)\,g_2$$
# $$y_0 = m_1 + m_2 + m_3 \qquad y_1 = m_2 - m_3 - m_4$$
#
# 4 multiplications: the sums of `g` are computed once per filter and reused for every tile.

# %%
import numpy as np

from _course import pick, plt, save
from tinycnn.kernels import reference
from tinycnn.layers import Conv2D

rng = np.random.default_rng(0)
d, g = rng.standard_normal(4), rng.standard_normal(3)
direct = np.array([d[0] * g[0] + d[1] * g[1] + d[2] * g[2], d[1] * g[0] + d[2] * g[1] + d[3] * g[2]])
m1, m2 = (d[0] - d[2]) * g[0], (d[1] + d[2]) * (g[0] + g[1] + g[2]) / 2
m3, m4 = (d[2] - d[1]) * (g[0] - g[1] + g[2]) / 2, (d[1] - d[3]) * g[2]
winograd = np.array([m1 + m2 + m3, m2 - m3 - m4])
print("direct:", direct, " Winograd:", winograd)
assert np.allclose(direct, winograd, rtol=1e-14, atol=0)

# %% [markdown]
# In matrix form, with $B^T$ (4x4), $G$ (4x3) and $A^T$ (2x4) the constant matrices of
# `reference.py`: $\;y = A^T\,[\,(G g) \odot (B^T d)\,]$, where $\odot$ is the element-wise product:
# the only 4 multiplications that involve data.

# %%
BT, G, AT = reference.WINOGRAD_BT, reference.WINOGRAD_G, reference.WINOGRAD_AT
print("B^T =\n", BT, "\nG =\n", G, "\nA^T =\n", AT)
assert np.allclose(AT @ ((G @ g) * (BT @ d)), direct, rtol=1e-14, atol=0)

# %% [markdown]
# ## 2-D: nest the 1-D algorithm along rows and columns
# For a 4x4 input tile `d` and a 3x3 kernel `g`:
# $$Y_{2\times 2} = A^T \big[\, \underbrace{(G\, g\, G^T)}_{U,\ 4\times4,\ \text{once per filter}} \odot
#   \underbrace{(B^T d\, B)}_{V,\ 4\times4,\ \text{additions only}} \big]\, A$$
# The element-wise product $U \odot V$ is the only place data is multiplied: 16 multiplications
# instead of 36, 2.25x fewer. With `C` input channels, $M = \sum_c U_c \odot V_c$ before the
# output transform, and for a whole batch the 16 positions of that sum become 16 matrix products,
# `(tiles, C) @ (C, F)`: that is `kernels/winograd.py`.

# %%
d = rng.standard_normal((4, 4))
g = rng.standard_normal((3, 3))
U = G @ g @ G.T                     # kernel transform
V = BT @ d @ BT.T                   # input transform
M = U * V                           # the 16 multiplications
Y = AT @ M @ AT.T                   # output transform
Y_direct = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(2)] for i in range(2)])
print(f"tile: U {U.shape} * V {V.shape} = M {M.shape} -> Y {Y.shape}; "
      f"multiplications: Winograd {M.size}, direct {Y_direct.size * g.size}")
print("max |Winograd - direct| on one tile:", f"{np.abs(Y - Y_direct).max():.1e}")
assert np.allclose(Y, Y_direct, rtol=0, atol=1e-13) and Y_direct.size * g.size / M.size == 2.25

# %% [markdown]
# ## A whole image
# `reference.winograd_conv3x3` walks the image tile by tile (tiles step by 2, so input tiles
# overlap by 2 pixels); `Conv2D` uses Winograd for 3x3 stride-1 layers with 16 or more input
# channels (`layer.algorithm` says which; setting it to `'im2col'` switches back).

# %%
x = rng.standard_normal((2, 9, 10, 16))
w = rng.standard_normal((3, 3, 16, 8))
y_direct = reference.conv2d_forward(x, w, None, padding="same")
y_tiles = reference.winograd_conv3x3(x, w, padding="same")
layer = Conv2D(8, 3, padding="same", use_bias=False, dtype="float64")
layer.build(x.shape[1:])
layer.set_weights([w])
print(f"Conv2D on {x.shape} uses {layer.algorithm!r}")
y_layer = layer(x)
for name, y_ in (("reference.winograd_conv3x3", y_tiles), ("Conv2D", y_layer)):
    print(f"max |{name} - direct| = {np.abs(y_ - y_direct).max():.1e}")
    assert np.allclose(y_, y_direct, rtol=0, atol=1e-12)
assert layer.algorithm == "winograd"

# %% [markdown]
# ## Where the rounding error comes from
# In exact arithmetic Winograd equals the direct sum. In float32 every addition rounds, and the
# transforms add up numbers *larger* than the result: $V$ entries are sums of up to 4 inputs,
# $U$ entries sums of up to 9 weights, and the output transform adds 9 products with signs that
# largely cancel. Rounding errors are relative to the size of what is added, so larger
# intermediates mean larger errors in the (smaller) result. Bigger tiles make it worse: F(4x4, 3x3)
# needs only 36 multiplications for 16 outputs (4x fewer), but its matrices hold 4, 5, 8 and 1/6,
# 1/24 (not even exact in binary). We measure the float32 error of the direct sum, of F(2x2, 3x3)
# and of F(4x4, 3x3) on random tiles, against float64, summed over `C` channels as in a layer.

# %%
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=float)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=float)


def tile_direct(d, g, m):
    """(C, m+2, m+2) inputs, (C, 3, 3) kernels -> (m, m) outputs summed over channels."""
    return np.array([[(d[:, i:i + 3, j:j + 3] * g).sum() for j in range(m)] for i in range(m)])


def tile_winograd(d, g, bt, gm, at):
    u = gm @ g @ gm.T                 # (C, t, t) with t = m + 2: matmul broadcasts over channels
    v = bt @ d @ bt.T
    return at @ (u * v).sum(axis=0) @ at.T


channels, trials = 32, pick(400, 60)
errors = {"direct": [], "F(2x2, 3x3)": [], "F(4x4, 3x3)": []}
for _ in range(trials):
    d6, g3 = rng.standard_normal((channels, 6, 6)), rng.standard_normal((channels, 3, 3))
    exact = tile_direct(d6, g3, 4)    # float64, the truth for a 4x4 block of outputs
    f32 = [a.astype(np.float32) for a in (d6, g3, BT, G, AT, BT4, G4, AT4)]
    d32, g32, bt, gm, at, bt4, gm4, at4 = f32
    small = np.block([[tile_winograd(d32[:, i:i + 4, j:j + 4], g32, bt, gm, at) for j in (0, 2)]
                      for i in (0, 2)])  # four 2x2 tiles make the 4x4 block
    scale = np.abs(exact).max()
    errors["direct"].append(np.abs(tile_direct(d32, g32, 4) - exact).max() / scale)
    errors["F(2x2, 3x3)"].append(np.abs(small - exact).max() / scale)
    errors["F(4x4, 3x3)"].append(np.abs(tile_winograd(d32, g32, bt4, gm4, at4) - exact).max() / scale)
    assert np.allclose(tile_winograd(d6, g3, BT4, G4, AT4), exact, rtol=0, atol=1e-11 * scale)

rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()}
for k, v in rms.items():
    print(f"{k:12s}: float32 error / max|y|, root mean square over {trials} blocks: {v:.1e} "
          f"({v / rms['direct']:.1f}x direct)")

fig, ax = plt.subplots(figsize=(6.5, 4))
bins = np.logspace(-9, -4, 40)
for k, v in errors.items():
    ax.hist(v, bins=bins, histtype="step", lw=1.6, label=k)
ax.set_xscale("log")
ax.set_xlabel("max float32 error / max |y| on a 4x4 block of outputs (C = 32)")
ax.set_ylabel("blocks")
ax.set_title("rounding error grows with the tile size")
ax.legend()
save(fig, "04_rounding.png")

# %% [markdown]
# ## The claims, checked
# F(2x2, 3x3) gives the convolution with 16 multiplications per tile instead of 36 (exactly, in
# float64: by hand, in `reference.py` and in `Conv2D`), its float32 error stays within a small
# factor of the direct sum's, and the larger F(4x4, 3x3) pays for its savings with clearly more
# error. That is why `Conv2D` uses F(2x2, 3x3).

# %%
assert rms["F(2x2, 3x3)"] < 4 * rms["direct"]
assert rms["F(4x4, 3x3)"] > 2 * rms["F(2x2, 3x3)"]
print("lesson 4: claims hold")
