# %% [markdown]
# # Lesson 6: batch normalisation, training vs inference
#
# `BatchNormalization` standardises each channel, then lets the network rescale it. For an input
# `(N, H, W, C)`, statistics are taken per channel over the $M = N \cdot H \cdot W$ values:
# $$\mu = \tfrac1M \textstyle\sum x, \quad \sigma^2 = \tfrac1M \sum (x - \mu)^2, \quad
#   y = \gamma \,\frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta$$
# That is **training mode**. At inference there may be one image, so the layer uses running
# averages instead, updated at every training step with momentum $m$ (Keras: 0.99):
# $$\text{moving\_mean} \leftarrow m\,\text{moving\_mean} + (1 - m)\,\mu \qquad
#   \text{moving\_variance} \leftarrow m\,\text{moving\_variance} + (1 - m)\,\sigma^2$$
# They start at 0 and 1. This lesson checks both modes against `kernels/reference.py`, shows how
# slowly the averages forget their start, and what that does to a model trained on a small data
# set, and how `model.recalibrate_batchnorm` repairs it.

# %%
import warnings

import numpy as np

import tinycnn
from _course import QUICK, pick, plt, save
from tinycnn.data import make_lesion_images
from tinycnn.kernels import reference
from tinycnn.layers import BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D, MaxPooling2D

rng = np.random.default_rng(0)
x = 5 + 2 * rng.standard_normal((8, 4, 4, 3))     # mean about 5, variance about 4
bn = BatchNormalization(dtype="float64")
y_train = bn(x, training=True)                      # one training step: batch statistics
gamma, beta, moving_mean, moving_var = bn.get_weights()
y_ref, mu, var = reference.batchnorm_forward(x, gamma, beta, bn.epsilon)
print(f"training mode: per-channel mean of y {y_train.mean(axis=(0, 1, 2)).round(6)}, "
      f"variance {y_train.var(axis=(0, 1, 2)).round(3)}")
assert np.allclose(y_train, y_ref, rtol=0, atol=1e-12)
y_infer = bn(x)                                     # inference: the moving averages
print(f"after one step: moving_mean {moving_mean.round(3)} (batch mean {mu.round(3)}); inference output "
      f"mean {y_infer.mean(axis=(0, 1, 2)).round(2)}: far from 0")
assert np.allclose(y_infer, reference.batchnorm_inference(x, gamma, beta, moving_mean, moving_var, bn.epsilon))
assert np.allclose(moving_mean, 0.01 * mu) and np.allclose(moving_var, 0.99 + 0.01 * var)

# %% [markdown]
# ## How slowly the averages forget
# Feed the same batch $t$ times: the moving mean is then exactly $\mu\,(1 - m^t)$, so a share $m^t$
# of the initial 0 remains. With $m = 0.99$, half of it is still there after 69 steps and 5% after
# 299. A few epochs of a few hundred images at batch size 32 are a few dozen steps.

# %%
size, n, epochs = pick(32, 16), pick(384, 128), pick(6, 2)  # the model trained below
model_steps = epochs * -(-n // 32)                              # steps at batch size 32
steps = 300
history = {}
for momentum in (0.9, 0.99):
    layer = BatchNormalization(momentum=momentum, dtype="float64")
    means = []
    for _ in range(steps):
        layer(x, training=True)
        means.append(layer.get_weights()[2].copy())
    history[momentum] = np.array(means)
    t = np.arange(1, steps + 1)[:, None]
    assert np.allclose(history[momentum], mu * (1 - momentum ** t), rtol=1e-9)

fig, ax = plt.subplots(figsize=(6.5, 3.8))
for momentum, means in history.items():
    ax.plot(np.arange(1, steps + 1), means[:, 0], label=f"momentum {momentum}")
ax.axhline(mu[0], color="k", lw=0.8, ls="--", label="batch mean")
ax.axvline(model_steps, color="gray", lw=0.8, ls=":")
ax.text(model_steps + 3, 0.5, f"the model below:\n{epochs} epochs of {n} images,\nbatch 32 ({model_steps} steps)",
        fontsize=8)
ax.set_xlabel("training steps")
ax.set_ylabel("moving_mean, channel 0")
ax.set_title("moving statistics start at 0 and forget it slowly")
ax.legend(loc="lower right")
save(fig, "06_moving_mean.png")

# %% [markdown]
# ## The pitfall on a small data set
# A small CNN with two batch-norm layers, trained a few epochs on a few hundred synthetic lesion
# images, trains well in training mode (batch statistics) and then scores near chance in
# inference mode (moving averages still mostly 0 and 1). `model.recalibrate_batchnorm(x_train)`
# replaces the moving averages by the exact statistics of the training set, layer after layer,
# without changing a single trained weight. (tinycnn warns about this once; we silence it here.)

# %%
tinycnn.set_seed(0)
images, labels = make_lesion_images(n=n + 200, image_size=size, seed=0)
x_train, y_train = images[:n], tinycnn.to_categorical(labels[:n], 2)
x_test, y_test = images[n:], tinycnn.to_categorical(labels[n:], 2)
model = tinycnn.Sequential([
    Conv2D(16, 3, padding="same", activation="relu", input_shape=images.shape[1:]), BatchNormalization(),
    MaxPooling2D(), Conv2D(32, 3, padding="same", activation="relu"), BatchNormalization(),
    MaxPooling2D(), Conv2D(32, 3, padding="same", activation="relu"), GlobalAveragePooling2D(),
    Dense(2, activation="softmax")])
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
print(f"{n} images, {epochs} epochs, {model_steps} steps: training accuracy "
      f"{history.history['accuracy'][-1]:.3f} (training mode)")

p_training_mode = model(x_train, training=True)   # BN uses the statistics of these very images
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    p_before = model.predict(x_train)
    accuracy_before = model.evaluate(x_test, y_test, verbose=0)[1]
model.recalibrate_batchnorm(x_train)
p_after = model.predict(x_train)
accuracy_after = model.evaluate(x_test, y_test, verbose=0)[1]
gap_before = np.abs(p_before - p_training_mode).max()
gap_after = np.abs(p_after - p_training_mode).max()
print(f"test accuracy in inference mode: {accuracy_before:.3f} before recalibration, {accuracy_after:.3f} after")
print(f"max |inference - training mode| on the training set: {gap_before:.3f} before, {gap_after:.1e} after")

fig, ax = plt.subplots(figsize=(4.5, 3.5))
ax.bar(["before", "after"], [accuracy_before, accuracy_after], color=["tab:red", "tab:green"])
ax.axhline(max(labels[n:].mean(), 1 - labels[n:].mean()), color="k", ls="--", lw=0.8, label="majority class")
ax.set_ylim(0, 1)
ax.set_ylabel("test accuracy (inference mode)")
ax.set_title("recalibrate_batchnorm")
ax.legend(loc="lower right")
save(fig, "06_recalibration.png")

# %% [markdown]
# ## The claims, checked
# Both modes match the reference formulas and the moving averages follow $\mu(1 - m^t)$ exactly
# (above). After recalibration, inference on the training set gives what training mode gives on
# it as one batch (to float32 rounding), where before it was far off. With the full lesson's data
# (not in quick mode, too small to learn anything) test accuracy rises clearly too.

# %%
assert gap_after < 1e-3 < 0.05 < gap_before
if not QUICK:
    assert accuracy_after > accuracy_before + 0.1
print("lesson 6: claims hold")
