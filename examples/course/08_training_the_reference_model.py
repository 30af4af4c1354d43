# %% [markdown]
# # Lesson 8: training the reference model, and looking inside
#
# Everything so far was one layer at a time. Now the whole reference network of README (four 3x3
# convolutions with 32, 64, 128 and 256 filters, batch norm, max pooling, dropout, a softmax
# head) learns to tell synthetic lesion images `(64, 64, 3)` from healthy ones. We watch the
# learning curves, then look at what it learnt: the 32 filters of the first layer, and the feature
# maps of one image at each depth.
#
# Shapes through the network for one 64x64 image: `(64, 64, 3)` -> conv `(64, 64, 32)` ->
# conv + pool `(32, 32, 64)` -> conv + pool `(16, 16, 128)` -> conv + pool `(8, 8, 256)` ->
# flatten `16384` -> dense `2`.

# %%
import numpy as np

import tinycnn
from _course import OUT, QUICK, pick, plt, save
from tinycnn.callbacks import RecalibrateBatchNorm
from tinycnn.data import make_lesion_images
from tinycnn.layers import Conv2D
from tinycnn.models import reference_model
from tinycnn.plotting import plot_history

tinycnn.set_seed(0)
size, n_train, n_test, epochs = pick(64, 32), pick(512, 192), pick(200, 64), pick(6, 2)
images, labels = make_lesion_images(n=n_train + n_test, image_size=size, seed=0)
x_train, y_train = images[:n_train], tinycnn.to_categorical(labels[:n_train], 2)
x_test, y_test = images[n_train:], tinycnn.to_categorical(labels[n_train:], 2)
model = reference_model(input_shape=images.shape[1:])
model.summary()
initial_kernel = model.layers[0].get_weights()[0]  # to compare with the trained filters below

# %% [markdown]
# ## Training
# `fit` runs epochs of mini-batches (forward, loss, backward, Adam step). The
# `RecalibrateBatchNorm` callback recomputes the batch-norm statistics before every validation
# pass, so the validation scores show what the network has learnt (lesson 6).

# %%
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_data=(x_test, y_test),
                    callbacks=[RecalibrateBatchNorm(x_train)], verbose=pick(1, 0))
plot_history(history, OUT / "08_curves.png", title="reference model, synthetic lesions")
print(f"picture: {OUT / '08_curves.png'}")
test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy {test_accuracy:.3f}, test loss {test_loss:.3f}")
model.save(OUT / "08_model.npz")  # lesson 9 explains this model

# %% [markdown]
# ## The first layer's 32 filters
# `model.layers[0].get_weights()[0]` is the kernel, `(3, 3, 3, 32)` in Keras's layout: 32 filters
# of 3x3 pixels by 3 colour channels. We draw each filter's sum over the colours (its response to
# a grey patch; red: positive, blue: negative), at initialisation and after training, on the same
# scale. Don't expect the striped edge detectors of famous pictures: those are 11x11 filters
# trained for days on millions of photographs. 3x3 filters after a few epochs stay close to their
# random start, and move by a fraction of their size. (tinycnn has no `visualize` module yet;
# matplotlib draws the grids.)

# %%
kernel = model.layers[0].get_weights()[0]
change = np.linalg.norm(kernel - initial_kernel) / np.linalg.norm(initial_kernel)
print(f"first-layer kernel {kernel.shape}; moved by {change:.0%} of its size during training")
fig, panels = plt.subplots(4, 17, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1] * 8 + [0.4] + [1] * 8})
for f in range(32):
    row, col = divmod(f, 8)
    before, after = initial_kernel[:, :, :, f].sum(axis=2), kernel[:, :, :, f].sum(axis=2)
    scale = max(np.abs(before).max(), np.abs(after).max())
    panels[row, col].imshow(before, cmap="RdBu_r", vmin=-scale, vmax=scale)
    panels[row, col + 9].imshow(after, cmap="RdBu_r", vmin=-scale, vmax=scale)
for ax in panels.flat:
    ax.axis("off")
panels[0, 3].set_title("at initialisation", fontsize=9, loc="left")
panels[0, 12].set_title("after training", fontsize=9, loc="left")
fig.suptitle("the 32 filters of the first Conv2D (sum over R, G, B)", fontsize=10, y=1.06)
save(fig, "08_filters.png")

# %% [markdown]
# ## Feature maps at each depth
# Call the layers one after another on one lesion image (`layer(x)` runs one layer in inference
# mode) and keep each convolution's output. Early maps still look like the image (edges,
# colours); deeper ones are coarser (pooling halves the size each time) and respond to larger
# structures: the lesion, or its absence.

# %%
k = int(np.flatnonzero(labels[n_train:])[0])
h = x_test[k:k + 1]
maps = []
for layer in model.layers:
    h = layer(h)
    if isinstance(layer, Conv2D):
        maps.append((layer.name, h[0]))
print("feature maps:", [(name, m.shape) for name, m in maps])

fig, axes = plt.subplots(len(maps), 7, figsize=(10, 1.5 * len(maps) + 0.4))
for row, (name, m) in enumerate(maps):
    axes[row, 0].imshow(x_test[k])
    axes[row, 0].set_ylabel(f"{name}\n{m.shape[0]}x{m.shape[1]}x{m.shape[2]}", fontsize=8)
    strongest = np.argsort(m.mean(axis=(0, 1)))[::-1][:6]  # the 6 most active channels
    for col, ch in enumerate(strongest, start=1):
        axes[row, col].imshow(m[:, :, ch], cmap="viridis")
    for ax in axes[row]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_title("image", fontsize=9)
fig.suptitle("one lesion image: its 6 most active channels after each Conv2D")
save(fig, "08_feature_maps.png")

# %% [markdown]
# ## The claims, checked
# The layers called one by one give what `predict` gives (which fuses each Winograd convolution
# with the pooling after it: the same numbers); the training loss fell and the first filters
# moved, but by less than their own size; and in the full lesson the network classifies clearly
# better than chance on images it never saw.

# %%
assert np.allclose(h, model.predict(x_test[k:k + 1]), rtol=0, atol=1e-5)
assert history.history["loss"][-1] < history.history["loss"][0] and 0 < change < 1
if not QUICK:
    assert test_accuracy > 0.75, test_accuracy
print("lesson 8: claims hold")
