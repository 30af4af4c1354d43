# %% [markdown]
# # Lesson 9: where did the network look? Grad-CAM against the true lesions
#
# A classifier that says "lesion" should say it *because of* the lesion. Grad-CAM (Selvaraju et
# al., 2017) turns the last convolution's feature maps into a heat map of the evidence for a class
# $c$. With $A$ the output of that convolution for the image, `(h, w, K)`, and $s_c$ the class's
# logit (before the softmax):
# $$\alpha_k = \frac{1}{hw}\sum_{i,j} \frac{\partial s_c}{\partial A[i,j,k]} \qquad
#   \text{cam} = \max\Big(0, \sum_k \alpha_k A[:,:,k]\Big)$$
# scaled to [0, 1] and resized to the image (`tinycnn.explain.grad_cam`; the gradient comes from
# the model's own backward pass). Synthetic images have a ground truth real scans lack: the lesion
# mask. So we can *score* the explanation, with the "pointing game": does the hottest point of the
# map fall inside the lesion? By chance that happens as often as the lesion's share of the image.
#
# This lesson explains the model trained in lesson 8 (if its file is missing, lesson 8 runs first).

# %%
import runpy
from pathlib import Path

import numpy as np

from _course import OUT, pick, plt, save
from tinycnn import load_model
from tinycnn.data import make_lesion_images
from tinycnn.explain import grad_cam, save_grad_cam

if not (OUT / "08_model.npz").exists():
    runpy.run_path(str(Path(__file__).resolve().parent / "08_training_the_reference_model.py"))
model = load_model(OUT / "08_model.npz")
size = model.input_shape[1]
# New images (another seed than lesson 8's): the model has never seen them.
images, labels, masks = make_lesion_images(n=pick(160, 32), image_size=size, seed=7, return_masks=True)
lesions = np.flatnonzero(labels)
print(f"model input {model.input_shape}, {len(lesions)} lesion images to explain")

# %% [markdown]
# ## The pointing game

# %%
results = []
for k in lesions:
    cam = grad_cam(model, images[k], class_index=1)      # evidence for "lesion", (H, W) in [0, 1]
    heat = np.asarray(cam.heatmap)
    i, j = np.unravel_index(np.argmax(heat), heat.shape)
    results.append((k, heat, (i, j), bool(masks[k][i, j]), masks[k].mean(),
                    heat[masks[k]].sum() / max(heat.sum(), 1e-12)))
hit_rate = np.mean([r[3] for r in results])
chance = np.mean([r[4] for r in results])
energy = np.mean([r[5] for r in results])
print(f"Grad-CAM layer: {cam.layer}; heat map {heat.shape}, values in [{heat.min():.2f}, {heat.max():.2f}]")
print(f"hottest point inside the lesion: {hit_rate:.0%} of {len(results)} images; by chance: {chance:.1%}")
print(f"share of the heat inside the lesion: {energy:.0%} (the lesion covers {chance:.1%} of the image)")

# %% [markdown]
# ## Pictures
# The heat map over the image, the true lesion outline in white and the hottest point as a cross
# (green: inside the lesion, red: outside). `save_grad_cam` writes the library's own picture
# (image and overlay side by side) for the first image.

# %%
shown = results[:8]
fig, axes = plt.subplots(2, len(shown), figsize=(1.6 * len(shown), 3.6))
for col, (k, heat, (i, j), hit, _, _) in enumerate(shown):
    axes[0, col].imshow(images[k])
    axes[1, col].imshow(images[k])
    axes[1, col].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1, col].contour(masks[k], levels=[0.5], colors="white", linewidths=0.8)
    axes[1, col].plot(j, i, "x", color="lime" if hit else "red", ms=8, mew=2)
    for ax in axes[:, col]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("Grad-CAM")
fig.suptitle(f"Grad-CAM for 'lesion': hottest point inside the lesion in {hit_rate:.0%} of images "
             f"(chance {chance:.1%})", fontsize=10)
save(fig, "09_grad_cam.png")
print("picture:", save_grad_cam(images[shown[0][0]], shown[0][1], OUT / "09_grad_cam_one.png"))

# %% [markdown]
# ## The claims, checked
# The heat maps are image-sized and scaled to [0, 1], and the hottest point lands inside the
# lesion far more often than chance would place it there (at least 5 times as often): the network
# looks at the lesion. (A trained network may still look elsewhere on some images; a score like
# this, not one pretty picture, is how to judge an explanation method.)

# %%
assert heat.shape == images.shape[1:3] and heat.min() >= 0 and heat.max() <= 1
assert hit_rate > 5 * chance, (hit_rate, chance)
print("lesson 9: claims hold")
