# %% [markdown]
# # Lesson 10: reading a benchmark
#
# "The step takes 165 ms" means little until you know how much work the step is and how fast the
# machine can do that work. This lesson counts the work of the reference model in FLOPs, measures
# the machine's ceiling for it (a plain matrix product in BLAS), and times the layers, so you can
# read `bench/bench_layers.py`'s columns (`GFLOP/s`, `%peak`, `share`) and judge a figure yourself.
#
# **FLOPs of a convolution.** Each output value is a sum of $KH \cdot KW \cdot C$ products: one
# multiply and one add each. For a batch of $N$ images:
# $$\text{FLOP}_\text{forward} = 2\,N \cdot OH \cdot OW \cdot KH \cdot KW \cdot C \cdot F$$
# which is exactly the FLOPs of im2col's product `(N*OH*OW, KH*KW*C) @ (KH*KW*C, F)` (lesson 3).
# Backward does two products of the same size ($dW$ and $dX$), so a training step costs about 3x
# the forward pass. Dense: $2 N \cdot n_\text{in} \cdot n_\text{out}$. Pooling, batch norm and
# ReLU do a few operations per value: few FLOPs, but they read and write memory.
#
# This lesson times things; the times are printed and plotted, never asserted (they change with
# the machine and with whatever else runs on it).

# %%
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from _course import pick, plt, save
from tinycnn.layers import Conv2D, Dense
from tinycnn.models import reference_model

size, batch, repeats = pick(64, 32), pick(16, 4), pick(9, 5)
model = reference_model(input_shape=(size, size, 3))
model.build()


def forward_flops(layer, n=1):
    """Matrix-product FLOPs of one forward pass of `layer` over n images (0 for other layers)."""
    if isinstance(layer, Conv2D):
        oh, ow, f = layer.output_shape
        kh, kw = layer.kernel_size
        return 2 * n * oh * ow * kh * kw * layer.input_shape[-1] * f
    if isinstance(layer, Dense):
        return 2 * n * layer.input_shape[-1] * layer.units
    return 0


flops = {layer.name: forward_flops(layer) for layer in model.layers}
total = sum(flops.values())
print(f"forward FLOPs per {size}x{size}x3 image:")
for layer in model.layers:
    if flops[layer.name]:
        print(f"  {layer.name:10s} {str(layer.output_shape):16s} {flops[layer.name] / 1e6:8.1f} MFLOP "
              f"({flops[layer.name] / total:5.1%})" + (f"  [{layer.algorithm}]" if isinstance(layer, Conv2D) else ""))
print(f"  total {total / 1e9:.3f} GFLOP; a training step about 3x that")

# %% [markdown]
# ## The ceiling: what BLAS does with a product of the same shape
# A layer cannot be faster than the matrix products inside it. So we time bare `np.matmul`s: a
# large square one (the machine's float32 ceiling) and, for each convolution, one of the shape of
# its im2col product, `(N*OH*OW, KH*KW*C) @ (KH*KW*C, F)`. We time them on one core (BLAS limited
# to one thread, which also keeps its idle threads from spinning against other programs) and
# multiply by the number of threads, since `Conv2D` splits the batch into one slice per thread,
# each with a single-threaded BLAS. Thin products (the first layer: `K = 27`) run far below the
# ceiling: there is too little work per byte moved.

# %%
def best_and_median(f):
    f()  # warm-up: buffers, caches, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), times


def gemm_rate(m, k, n):
    """Best GFLOP/s of an (m, k) @ (k, n) float32 product on one BLAS thread, times the threads."""
    a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):
        return 2 * m * k * n / best_and_median(lambda: a @ b)[0] / 1e9 * threads


rng = np.random.default_rng(0)
threads = numba.get_num_threads()
square = pick(1024, 512)
ceiling = gemm_rate(square, square, square)
print(f"float32 GEMM ceiling ({square}^3 product, best of {repeats}, {threads} x one core): {ceiling:.0f} GFLOP/s")

rows = []  # (name, FLOPs, same-shape GEMM GFLOP/s, layer GFLOP/s, median ms, all repeat times)
h = rng.random((batch, size, size, 3), dtype=np.float32)
for layer in model.layers:
    best, median, times = best_and_median(lambda: layer(h))  # one layer, inference mode
    work = forward_flops(layer, batch)
    gemm = float("nan")
    if isinstance(layer, Conv2D):
        oh, ow, f = layer.output_shape
        gemm = gemm_rate(batch * oh * ow, int(np.prod(layer.kernel_size)) * layer.input_shape[-1], f)
    rows.append((layer.name, work, gemm, work / best / 1e9 if work else float("nan"), median * 1e3, times))
    h = layer(h)

print(f"\nbatch {batch}, inference, per layer (best of {repeats} for GFLOP/s, median for ms):")
print(f"{'layer':22s} {'ms':>7s} {'share':>6s} {'GFLOP/s':>8s} {'its GEMM':>9s} {'% of ceiling':>12s}")
layer_total = sum(r[4] for r in rows)
for name, work, gemm, rate, ms, _ in rows:
    numbers = f"{rate:8.1f} {gemm:9.1f} {100 * rate / ceiling:11.0f}%" if gemm == gemm else ""
    print(f"{name:22s} {ms:7.2f} {ms / layer_total:6.1%} {numbers}")

# %% [markdown]
# ## Reading the table
# * **share**: where the time goes. The convolutions hold nearly all the FLOPs and most of the
#   time; the layers without FLOPs (batch norm, pooling, dropout) are pure memory traffic.
# * **GFLOP/s** divides the layer's FLOPs by its time, which also covers im2col (or Winograd's
#   transforms), bias, ReLU and Python's overhead per call.
# * **its GEMM**: a bare product of the layer's im2col shape. An im2col layer close to it loses
#   little outside the product; the first layer's thin product is slow for BLAS too.
# * **% of ceiling**: against the large square product.
# * **Winograd layers can beat their GEMM**: they do 2.25x fewer multiplications than the FLOPs
#   counted for a direct convolution (lesson 4), so their *effective* rate may pass it.
# * One run on a shared machine is noisy. Look at the spread of the repeats (below), compare
#   alternatives side by side in the same run, and trust ratios more than absolute figures. A
#   figure that looks absurd (a layer far above the ceiling) means the machine was busy while
#   the ceiling was timed: run again.
#   `python bench/bench_layers.py --image-size 32 --batch-size 8` does all of this for a whole
#   training step, backward included.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
names = [r[0] for r in rows]
ax1.barh(names, [r[4] for r in rows], color=["tab:blue" if r[1] else "tab:gray" for r in rows])
ax1.invert_yaxis()
ax1.set_xlabel("median ms per forward call")
ax1.set_title(f"where the time goes (batch {batch}; gray: no FLOPs)")
timed = [r for r in rows if r[1]]
for row, r in enumerate(timed):
    ax2.plot(np.array(r[5]) * 1e3, np.full(len(r[5]), row), "o", alpha=0.6)
ax2.set_yticks(range(len(timed)), [r[0] for r in timed])
ax2.set_xscale("log")
ax2.invert_yaxis()
ax2.set_xlabel(f"ms, each of {repeats} repeats")
ax2.set_title("every repeat: the spread of one measurement")
save(fig, "10_where_the_time_goes.png")

# %% [markdown]
# ## The claims, checked
# The count from the shapes agrees with the reference model's documented "about 0.46 GFLOP per
# 64x64x3 image forward" (FLOPs scale with the pixel count, so a 32x32 image has a quarter);
# the convolutions hold over 99% of the FLOPs; and with the first layer computing no input gradient,
# a training step costs just under 3x the forward pass.

# %%
assert abs(total * (64 / size) ** 2 / 0.46e9 - 1) < 0.03, total
conv_share = sum(forward_flops(layer) for layer in model.layers if isinstance(layer, Conv2D)) / total
step = 3 * total - forward_flops(model.layers[0])  # dW and dX for every layer, but no dX for the first
print(f"convolutions: {conv_share:.2%} of the FLOPs; training step / forward = {step / total:.3f}")
assert conv_share > 0.99 and 2.9 < step / total < 3
print("lesson 10: claims hold")
