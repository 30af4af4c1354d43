# %% [markdown]
# # Lesson 7: losses for imbalanced data
#
# In screening, most images are healthy. Train on a 1:9 set with plain cross-entropy and the
# network can score 90% accuracy by never saying "lesion". This lesson compares, for a two-class
# softmax output with $p$ the probability given to the true class:
#
# | loss | per sample | idea |
# |---|---|---|
# | cross-entropy | $-\log p$ | the baseline |
# | label smoothing $s$ | $-(1 - \tfrac{s}{2})\log p - \tfrac{s}{2}\log(1 - p)$ | targets $1 - s/2$ and $s/2$: never fully confident |
# | focal, $\gamma$, $\alpha$ | $-\alpha_y\,(1 - p)^\gamma \log p$ | easy examples ($p \to 1$) weigh almost nothing; $\alpha$ per class rebalances |
#
# We check the formulas against `tinycnn.losses`, then train the same small CNN with each on
# synthetic lesions (10% positive) and compare sensitivity (lesions found), specificity (healthy
# images cleared) and calibration (does "p = 0.8" come true 80% of the time?).

# %%
import numpy as np

import tinycnn
from _course import QUICK, pick, plt, save
from tinycnn.data import make_lesion_images
from tinycnn.gradcheck import check_loss
from tinycnn.layers import BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D, MaxPooling2D
from tinycnn.losses import CategoricalCrossentropy, CategoricalFocalCrossentropy
from tinycnn.report import report_from_predictions

p = np.linspace(0.01, 0.99, 99)
y_true = np.tile([0.0, 1.0], (p.size, 1))             # the true class is class 1
y_pred = np.stack([1 - p, p], axis=1)                 # probabilities, (99, 2)
losses = {
    "cross-entropy": CategoricalCrossentropy(),
    "label smoothing 0.1": CategoricalCrossentropy(label_smoothing=0.1),
    "focal, gamma 2": CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0),
}
formulas = {
    "cross-entropy": -np.log(p),
    "label smoothing 0.1": -0.95 * np.log(p) - 0.05 * np.log(1 - p),
    "focal, gamma 2": -0.25 * (1 - p) ** 2 * np.log(p),
}
curves = {name: loss.value_and_grad(y_true, y_pred)[1] for name, loss in losses.items()}  # per sample
for name in losses:
    print(f"{name:20s}: max |tinycnn - formula| = {np.abs(curves[name] - formulas[name]).max():.1e}")
    assert np.allclose(curves[name], formulas[name], rtol=1e-6, atol=1e-7)

best_smoothed = p[np.argmin(curves["label smoothing 0.1"])]
easy = curves["focal, gamma 2"][p == 0.9][0] / curves["cross-entropy"][p == 0.9][0]
print(f"label smoothing 0.1 is smallest at p = {best_smoothed:.2f}; "
      f"focal / cross-entropy at p = 0.9: {easy:.4f} (= 0.25 * 0.1^2)")

fig, ax = plt.subplots(figsize=(6, 4))
for name, curve in curves.items():
    ax.plot(p, curve, label=name)
ax.set_xlabel("p, probability of the true class")
ax.set_ylabel("loss of one sample")
ax.set_ylim(0, 3)
ax.legend()
ax.set_title("three losses of one prediction")
save(fig, "07_loss_curves.png")

# %% [markdown]
# All three are computed from the logits in training (softmax folded into the loss, stable for any
# logit); their gradients pass finite-difference checks like every layer:

# %%
logits = np.random.default_rng(0).standard_normal((6, 2)) * 3
labels6 = tinycnn.to_categorical([0, 1, 1, 0, 1, 0], 2)
for name, loss in losses.items():
    report = check_loss(loss, logits, labels6, logits=True)
    print(f"{name:20s}: {report}")
    report.assert_close(1e-6)

# %% [markdown]
# ## Training on a 1:9 set
# The same CNN (`(S, S, 3)` -> conv 16 -> BN -> pool -> conv 32 -> BN -> pool -> conv 32 -> global
# average -> 2-way softmax), the same seed, four losses. The fourth is focal loss with $\alpha$ per
# class, 0.1 for healthy and 0.9 for lesion (about the inverse class frequencies), so it combines
# focusing ($\gamma$) with rebalancing ($\alpha$). Batch-norm statistics are recalibrated after
# training (lesson 6). We threshold at 0.5.

# %%
size, n_train, n_test, epochs = pick(32, 16), pick(800, 160), pick(600, 200), pick(8, 2)
images, labels = make_lesion_images(n=n_train + n_test, image_size=size, positive_fraction=0.1, seed=1)
x_train, y_train = images[:n_train], tinycnn.to_categorical(labels[:n_train], 2)
x_test, labels_test = images[n_train:], labels[n_train:]
print(f"training: {n_train} images, {labels[:n_train].mean():.0%} lesions; test: {n_test}, "
      f"{labels_test.mean():.0%} lesions")
training_losses = dict(losses, **{"focal, alpha 0.1 / 0.9": CategoricalFocalCrossentropy(alpha=[0.1, 0.9], gamma=2.0)})
results = {}
for name, loss in training_losses.items():
    tinycnn.set_seed(0)
    model = tinycnn.Sequential([
        Conv2D(16, 3, padding="same", activation="relu", input_shape=images.shape[1:]), BatchNormalization(),
        MaxPooling2D(), Conv2D(32, 3, padding="same", activation="relu"), BatchNormalization(),
        MaxPooling2D(), Conv2D(32, 3, padding="same", activation="relu"), GlobalAveragePooling2D(),
        Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss=loss)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    model.recalibrate_batchnorm(x_train)
    prob = model.predict(x_test)[:, 1]
    results[name] = (prob, report_from_predictions(labels_test, np.stack([1 - prob, prob], axis=1)))

# %% [markdown]
# ## Sensitivity, specificity, calibration
# Sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), with "positive" = lesion.
# Calibration: sort the test predictions into bins of P(lesion) and plot, per bin, the share that
# really has a lesion; a calibrated model lies on the diagonal. The *expected calibration error*
# (ECE) is the mean distance from it, weighted by the bin counts.

# %%
bins = np.linspace(0, 1, 6)


def calibration(prob, truth):
    which = np.clip(np.digitize(prob, bins) - 1, 0, len(bins) - 2)
    centres, shares, counts = [], [], []
    for b in range(len(bins) - 1):
        if np.any(which == b):
            centres.append(prob[which == b].mean())
            shares.append(truth[which == b].mean())
            counts.append(np.sum(which == b))
    ece = float(np.sum(np.array(counts) * np.abs(np.array(centres) - np.array(shares))) / len(prob))
    return np.array(centres), np.array(shares), ece


fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
print(f"{'loss':24s} sensitivity specificity  AUC    ECE")
for k, (name, (prob, rep)) in enumerate(results.items()):
    centres, shares, ece = calibration(prob, labels_test)
    print(f"{name:24s} {rep.sensitivity:11.3f} {rep.specificity:11.3f} {rep.roc_auc:6.3f} {ece:6.3f}")
    ax1.plot(centres, shares, "o-", label=f"{name} (ECE {ece:.3f})")
    ax2.bar(np.array([0, 1]) + 0.2 * k - 0.3, [rep.sensitivity, rep.specificity], width=0.2, label=name)
    predicted = prob >= 0.5  # the report's numbers, recounted by hand
    assert rep.sensitivity == np.sum(predicted & (labels_test == 1)) / np.sum(labels_test == 1)
    assert rep.specificity == np.sum(~predicted & (labels_test == 0)) / np.sum(labels_test == 0)
ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
ax1.set_xlabel("mean predicted P(lesion) in the bin")
ax1.set_ylabel("share of real lesions in the bin")
ax1.set_title("calibration (reliability diagram)")
ax1.legend(fontsize=7)
ax2.set_xticks([0, 1], ["sensitivity", "specificity"])
ax2.set_ylim(0, 1.05)
ax2.set_title("at threshold 0.5, 10% lesions")
save(fig, "07_imbalance.png")

# %% [markdown]
# ## The claims, checked
# The three formulas are what `tinycnn.losses` computes (and their gradients pass finite
# differences); label smoothing 0.1 is smallest at $p = 0.95$, not 1; focal loss with $\gamma = 2$
# weighs an easy example ($p = 0.9$) $\alpha (1-p)^2 = 0.0025$ times as much as cross-entropy; and
# the report's sensitivity and specificity are the counts above. In the full lesson (quick mode
# is too small to learn), rebalancing with a per-class $\alpha$ finds clearly more lesions than
# plain cross-entropy, at some cost in specificity, and its probabilities are no longer
# calibrated: focal loss stops pushing easy healthy images towards 0, so their P(lesion) stays
# high (the curves below the diagonal). If you need probabilities you can trust, train with
# cross-entropy and move the threshold instead (choose it on validation data).

# %%
assert abs(best_smoothed - 0.95) < 0.006 and abs(easy - 0.25 * 0.1 ** 2) < 1e-6
if not QUICK:
    assert results["focal, alpha 0.1 / 0.9"][1].sensitivity > results["cross-entropy"][1].sensitivity + 0.1
    assert (calibration(results["focal, alpha 0.1 / 0.9"][0], labels_test)[2]
            > calibration(results["cross-entropy"][0], labels_test)[2] + 0.05)
print("lesson 7: claims hold")
